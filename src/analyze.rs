//! The switching-structure analyzer (THEORY.md §5): sufficient conditions under which the AD
//! vector AD(σ̃) is a Clarke generalized gradient, checked without enumerating pieces.
//!
//! * **LIKQ** (Theorem A): rank J_α = k ⇒ every completion is realized, so AD(σ̃) ∈ ∂^C f(x̂)
//!   for every σ̃ ∈ [−1,1]^α (a B-subgradient when σ̃ ∈ {±1}^α).
//! * **Extreme choices** (Theorem B′): σ̃ ∈ {±1}^α ⇒ AD(σ̃) = g(σ̃); one strict LP shows σ̃'s
//!   own pattern is PL-realized, hence realized.
//! * **Grouped condition** (Theorem B): a partition of α into classes G_c with orientations
//!   o_i and values τ_c, σ̃_i = o_i τ_c; GC1 (no nesting inside a free class) and GC2 (every
//!   class pattern σ^t realized, shown by the private-direction test or by strict LPs) ⇒
//!   AD(σ̃) = Σ_t Π_c (1 + t_c τ_c)/2 · g(σ^t) ∈ ∂^C f(x̂).
//!
//! The conditions are sufficient, not necessary: "not guaranteed" means "ask the LP checker".
//!
//! ```
//! use kinkcheck::{analyze, anf, eval, reduced::ReducedSpace, Convention};
//! let p = kinkcheck::compile("vars x; f = abs(x) - abs(x)").unwrap();
//! let ev = eval::evaluate(&p.graph, &[0.0]).unwrap();
//! let st = eval::switch_states(&p.graph, &ev, eval::TAU_ACT);
//! let z: Vec<f64> = st.iter().map(|s| s.z).collect();
//! let act: Vec<_> = st.iter().filter(|s| s.z == 0.0).map(|s| s.id).collect();
//! let data = anf::ActiveData::compute(&p.graph, &ev, &z, &act).unwrap();
//! let structure = anf::Structure::compute(&p.graph, &data.active);
//! let space = ReducedSpace::new(&data);
//! let jax = Convention::jax();
//! let sigma: Vec<f64> = structure.roles.iter().map(|&r| jax.sigma_tilde(r)).collect();
//! let a = analyze::analyze(&data, &space, &structure, Some(&sigma), &Default::default());
//! assert_eq!(a.by, Some(analyze::By::Extreme));
//! ```

use crate::anf::{ActiveData, Structure};
use crate::graph::RelationKind;
use crate::reduced::{ReducedSpace, TAU_LP};
use serde::Serialize;

/// Which theorem guarantees the AD vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    Likq,
    Grouped,
    Extreme,
}

/// The analyzer's outcome: `guaranteed` with `by`, or not, with a one-line reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub guaranteed: bool,
    pub by: Option<By>,
    pub reason: String,
    /// rank J_α and its smallest singular value.
    pub rank: usize,
    pub sigma_min: f64,
    /// Number of strict LPs the analyzer solved.
    pub lps: usize,
}

/// Budgets of the analyzer.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Most strict LPs spent on GC2 when the private-direction test fails.
    pub max_lps: usize,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions { max_lps: 1024 }
    }
}

/// One class of the grouped condition.
#[derive(Debug, Clone)]
struct Class {
    members: Vec<usize>,
    orient: Vec<f64>,
    tau: f64,
}

impl Class {
    fn free(&self) -> bool {
        self.tau.abs() < 1.0
    }
}

/// Run the analyzer on the reduced data with the convention's choices σ̃ on α (`None` for an
/// explicit gradient, which is never guaranteed).
pub fn analyze(
    data: &ActiveData,
    space: &ReducedSpace,
    st: &Structure,
    sigma: Option<&[f64]>,
    opts: &AnalyzeOptions,
) -> Analysis {
    let mut a = analyze_active(data, space, st, sigma, opts);
    if !data.degenerate.is_empty() {
        // Listing tens of thousands of ids (a CNN's dead units) would make the
        // reason unreadable and the JSON huge: name the first few, count the rest.
        const SHOWN: usize = 10;
        let mut ids: Vec<String> = data
            .degenerate
            .iter()
            .take(SHOWN)
            .map(|s| format!("#{}", s.0))
            .collect();
        if data.degenerate.len() > SHOWN {
            ids.push(format!("… and {} more", data.degenerate.len() - SHOWN));
        }
        a.reason = format!(
            "{}; {} degenerate switch{} {} dropped (ż ≡ 0 on every piece, their σ̃ has no effect)",
            a.reason,
            data.degenerate.len(),
            if data.degenerate.len() == 1 { "" } else { "es" },
            ids.join(", ")
        );
    }
    a
}

fn analyze_active(
    data: &ActiveData,
    space: &ReducedSpace,
    st: &Structure,
    sigma: Option<&[f64]>,
    opts: &AnalyzeOptions,
) -> Analysis {
    let mut out = Analysis {
        guaranteed: false,
        by: None,
        reason: String::new(),
        rank: space.r,
        sigma_min: space.sigma_min(),
        lps: 0,
    };
    let k = data.k();
    let Some(sigma) = sigma else {
        out.reason = "explicit gradient: there is no convention to reason about".into();
        return out;
    };
    let guaranteed = |mut out: Analysis, by: By, reason: String| {
        out.guaranteed = true;
        out.by = Some(by);
        out.reason = reason;
        out
    };
    if k == 0 {
        return guaranteed(
            out,
            By::Likq,
            "no active switch: f is smooth at the point".into(),
        );
    }
    if space.likq() {
        let reason = format!(
            "LIKQ: rank J_α = {k} = number of active switches (σ_min = {:.3e})",
            space.sigma_min()
        );
        return guaranteed(out, By::Likq, reason);
    }
    let lik = format!(
        "LIKQ fails (rank J_α = {} < {k}, σ_min = {:.3e})",
        space.r,
        space.sigma_min()
    );
    // Theorem B′: extreme choices.
    if sigma.iter().all(|s| s.abs() == 1.0) {
        out.lps += 1;
        return match space.strict_margin(data, sigma) {
            Ok((t, _)) if t > TAU_LP => guaranteed(
                out,
                By::Extreme,
                format!(
                    "extreme choice σ̃ = {} is realized (strict margin {t:.3e})",
                    signs(sigma)
                ),
            ),
            Ok((t, _)) => {
                out.reason = format!(
                    "{lik}; extreme choice σ̃ = {} is not PL-realized (strict margin {t:.3e})",
                    signs(sigma)
                );
                out
            }
            Err(e) => {
                out.reason = format!("{lik}; strict LP failed: {e}");
                out
            }
        };
    }
    // Theorem B: grouped condition, merged classes first, then singletons.
    let closure = nesting_closure(data, st);
    let mut why = String::new();
    for merged in [true, false] {
        let classes = if merged {
            merged_classes(data, st, sigma)
        } else {
            singleton_classes(sigma)
        };
        if merged && classes.iter().all(|c| c.members.len() == 1) {
            continue; // identical to the singleton attempt
        }
        if let Some(pair) = gc1_violation(&classes, &closure) {
            why = format!(
                "GC1 fails: switches #{} and #{} of one free class are nested",
                data.active[pair.0].0, data.active[pair.1].0
            );
            continue;
        }
        if let Some(p) = private_directions(data, &classes, &closure) {
            let n_free = classes.iter().filter(|c| c.free()).count();
            return guaranteed(
                out,
                By::Grouped,
                format!(
                    "grouped: {} classes ({n_free} free), every class pattern realized by private directions ({})",
                    classes.len(),
                    p
                ),
            );
        }
        match gc2_by_lp(data, space, &classes, opts.max_lps, &mut out.lps) {
            Ok(()) => {
                let n_free = classes.iter().filter(|c| c.free()).count();
                return guaranteed(
                    out,
                    By::Grouped,
                    format!(
                        "grouped: {} classes ({n_free} free), all {} class patterns realized (strict LPs)",
                        classes.len(),
                        1usize << n_free
                    ),
                );
            }
            Err(e) => why = e,
        }
    }
    out.reason = format!("{lik}; {why}");
    out
}

fn signs(s: &[f64]) -> String {
    let v: Vec<&str> = s.iter().map(|&x| if x > 0.0 { "+" } else { "-" }).collect();
    format!("({})", v.join(","))
}

/// reach[i][j]: z_j is upstream of z_i through L̂ (transitively) or structurally.
fn nesting_closure(data: &ActiveData, st: &Structure) -> Vec<Vec<bool>> {
    let k = data.k();
    let mut reach = vec![vec![false; k]; k];
    for i in 0..k {
        for j in 0..i {
            if data.lhat[i][j] != 0.0 || st.nested[i][j] {
                reach[i][j] = true;
            }
        }
        // transitive: anything upstream of an upstream switch (j < i, rows already closed)
        for j in 0..i {
            if reach[i][j] {
                for m in 0..j {
                    if reach[j][m] {
                        reach[i][m] = true;
                    }
                }
            }
        }
    }
    reach
}

fn singleton_classes(sigma: &[f64]) -> Vec<Class> {
    sigma
        .iter()
        .enumerate()
        .map(|(i, &s)| Class {
            members: vec![i],
            orient: vec![1.0],
            tau: s,
        })
        .collect()
}

fn find(parent: &mut [usize], i: usize) -> usize {
    let mut r = i;
    while parent[r] != r {
        r = parent[r];
    }
    let mut c = i;
    while parent[c] != r {
        let next = parent[c];
        parent[c] = r;
        c = next;
    }
    r
}

/// If rows i and j of J_α are parallel (J_j = λ J_i, λ ≠ 0), the sign of λ.
fn parallel(data: &ActiveData, i: usize, j: usize) -> Option<f64> {
    let (ni, nj) = (&data.j[i].idx, &data.j[j].idx);
    if ni.is_empty() || ni.len() != nj.len() || ni[0] != nj[0] {
        return None;
    }
    let (a, b) = (&data.j[i], &data.j[j]);
    let ia = *ni
        .iter()
        .max_by(|&&x, &&y| a[x].abs().total_cmp(&a[y].abs()))?;
    let lambda = b[ia] / a[ia];
    if lambda == 0.0 || !lambda.is_finite() {
        return None;
    }
    let scale = a[ia].abs().max(b[ia].abs());
    (ni == nj
        && ni
            .iter()
            .all(|&p| (b[p] - lambda * a[p]).abs() <= 1e-12 * scale))
    .then_some(lambda.signum())
}

/// Classes of THEORY §5.2: fixed switches alone; free switches with equal |σ̃| merged when
/// they are structurally related, share an op site, or have parallel J_α rows.
fn merged_classes(data: &ActiveData, st: &Structure, sigma: &[f64]) -> Vec<Class> {
    let k = data.k();
    let free = |i: usize| sigma[i].abs() < 1.0;
    // hint edges (i, j, relative orientation)
    let mut edges: Vec<(usize, usize, f64)> = Vec::new();
    for &(i, j, kind) in &st.relations {
        edges.push((
            i,
            j,
            if kind == RelationKind::Identical {
                1.0
            } else {
                -1.0
            },
        ));
    }
    for i in 0..k {
        for j in i + 1..k {
            if st.sites[i].is_some() && st.sites[i] == st.sites[j] {
                edges.push((i, j, 1.0));
            } else if let Some(s) = parallel(data, i, j) {
                edges.push((i, j, s));
            }
        }
    }
    edges.retain(|&(i, j, _)| free(i) && free(j) && sigma[i].abs() == sigma[j].abs());
    let mut parent: Vec<usize> = (0..k).collect();
    for &(i, j, _) in &edges {
        let (a, b) = (find(&mut parent, i), find(&mut parent, j));
        if a != b {
            parent[b.max(a)] = a.min(b);
        }
    }
    let mut classes: Vec<Class> = Vec::new();
    let mut class_of = vec![usize::MAX; k];
    for i in 0..k {
        let r = find(&mut parent, i);
        if class_of[r] == usize::MAX {
            class_of[r] = classes.len();
            classes.push(Class {
                members: vec![],
                orient: vec![],
                tau: sigma[i],
            });
        }
        let c = class_of[r];
        classes[c].members.push(i);
    }
    // orientations: forced by σ̃ when τ ≠ 0; otherwise propagated along hint edges
    for c in classes.iter_mut() {
        let m = c.members.len();
        if c.tau != 0.0 {
            let t = c.tau;
            c.orient = c
                .members
                .iter()
                .map(|&i| sigma[i].signum() * t.signum())
                .collect();
            continue;
        }
        let mut o: Vec<f64> = vec![0.0; m];
        o[0] = 1.0;
        let idx = |i: usize| c.members.iter().position(|&x| x == i);
        let mut changed = true;
        while changed {
            changed = false;
            for &(i, j, s) in &edges {
                if let (Some(a), Some(b)) = (idx(i), idx(j)) {
                    if o[a] != 0.0 && o[b] == 0.0 {
                        o[b] = o[a] * s;
                        changed = true;
                    } else if o[b] != 0.0 && o[a] == 0.0 {
                        o[a] = o[b] * s;
                        changed = true;
                    }
                }
            }
        }
        c.orient = o.iter().map(|&v| if v == 0.0 { 1.0 } else { v }).collect();
    }
    classes
}

fn gc1_violation(classes: &[Class], reach: &[Vec<bool>]) -> Option<(usize, usize)> {
    for c in classes.iter().filter(|c| c.free()) {
        for &i in &c.members {
            for &j in &c.members {
                if i != j && reach[i][j] {
                    return Some((j, i));
                }
            }
        }
    }
    None
}

/// The private-direction test for GC2 (THEORY §5.2): order the classes so that no class is
/// upstream of an earlier one; each class needs a coordinate p with J_α[j,p] = 0 for every
/// switch j of an earlier class and J_α[i,p] ≠ 0 with sign ε·o_i on its members. Returns a
/// short description of the coordinates used.
fn private_directions(data: &ActiveData, classes: &[Class], reach: &[Vec<bool>]) -> Option<String> {
    let k = data.k();
    let m = classes.len();
    let mut class_of = vec![0usize; k];
    for (c, cl) in classes.iter().enumerate() {
        for &i in &cl.members {
            class_of[i] = c;
        }
    }
    // no nesting inside any class, and a topological order of classes
    let mut indeg = vec![0usize; m];
    let mut succ: Vec<Vec<usize>> = vec![vec![]; m];
    for i in 0..k {
        for j in 0..k {
            if reach[i][j] {
                let (ci, cj) = (class_of[i], class_of[j]);
                if ci == cj {
                    return None;
                }
                succ[cj].push(ci);
                indeg[ci] += 1;
            }
        }
    }
    let mut order = Vec::with_capacity(m);
    let mut ready: Vec<usize> = (0..m).filter(|&c| indeg[c] == 0).collect();
    while let Some(c) = ready.pop() {
        order.push(c);
        for &s in &succ[c] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.push(s);
            }
        }
    }
    if order.len() < m {
        return None;
    }
    let mut rank_of = vec![0usize; m];
    for (r, &c) in order.iter().enumerate() {
        rank_of[c] = r;
    }
    let n = data.g0.len();
    let mut first = vec![usize::MAX; n];
    for i in 0..k {
        let r = rank_of[class_of[i]];
        for &p in &data.j[i].idx {
            if r < first[p] {
                first[p] = r;
            }
        }
    }
    let mut used = Vec::with_capacity(m);
    for (r, &c) in order.iter().enumerate() {
        let cl = &classes[c];
        let p = data.j[cl.members[0]].idx.iter().copied().find(|&p| {
            if first[p] != r {
                return false;
            }
            let s0 = data.j[cl.members[0]][p].signum() * cl.orient[0];
            cl.members
                .iter()
                .zip(&cl.orient)
                .all(|(&i, &o)| data.j[i][p] != 0.0 && data.j[i][p].signum() * o == s0)
        })?;
        used.push(p);
    }
    let shown: Vec<String> = used.iter().take(4).map(|p| format!("x[{p}]")).collect();
    Some(if used.len() > 4 {
        format!("{}, …", shown.join(", "))
    } else {
        shown.join(", ")
    })
}

/// GC2 by strict LPs: every pattern t of the free classes (fixed ones at τ) must be
/// PL-realized.
fn gc2_by_lp(
    data: &ActiveData,
    space: &ReducedSpace,
    classes: &[Class],
    max_lps: usize,
    lps: &mut usize,
) -> Result<(), String> {
    let free: Vec<usize> = (0..classes.len()).filter(|&c| classes[c].free()).collect();
    if free.len() >= usize::BITS as usize - 1 || (1usize << free.len()) > max_lps {
        return Err(format!(
            "GC2 would need 2^{} strict LPs (budget {max_lps}) and the private-direction test fails",
            free.len()
        ));
    }
    let k = data.k();
    for t in 0..(1usize << free.len()) {
        let mut sigma = vec![0.0; k];
        for (c, cl) in classes.iter().enumerate() {
            let tc = match free.iter().position(|&f| f == c) {
                Some(b) => {
                    if t >> b & 1 == 1 {
                        1.0
                    } else {
                        -1.0
                    }
                }
                None => cl.tau.signum(),
            };
            for (&i, &o) in cl.members.iter().zip(&cl.orient) {
                sigma[i] = o * tc;
            }
        }
        *lps += 1;
        match space.strict_margin(data, &sigma) {
            Ok((m, _)) if m > TAU_LP => {}
            Ok((m, _)) => {
                return Err(format!(
                    "GC2 fails: class pattern {} is not PL-realized (strict margin {m:.3e})",
                    signs(&sigma)
                ))
            }
            Err(e) => return Err(format!("GC2: strict LP failed: {e}")),
        }
    }
    Ok(())
}
