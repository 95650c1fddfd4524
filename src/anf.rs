//! The abs-normal form at a point and the reduced active data (THEORY.md §2).
//!
//! With uᵢ = |zᵢ| treated as independent inputs, the program is `z = F(x, u)`, `y = f(x, u)`,
//! and at x̂
//!
//! ```text
//! Z = ∂F/∂x (s×n),  L = ∂F/∂u (s×s, strictly lower),  a = ∂f/∂x (1×n),  b = ∂f/∂u (1×s).
//! ```
//!
//! [`abs_normal_form`] reads them off with one reverse sweep per switch plus one from y, every
//! `abs` stopping propagation. The ADOL-C export uses Y = a, J = b, `cz = z − L|z|`,
//! `cy = y − J|z|`.
//!
//! Eliminating the inactive switches (which keep their sign σ near x̂) gives the reduced model
//! on the active set α:
//!
//! ```text
//! Δz_α = J_α d + L̂ |Δz_α|,   Δy = g0 d + b̂ |Δz_α|,
//! J_α = [(I − LΣ)⁻¹Z]_α,  L̂ = [(I − LΣ)⁻¹L]_αα,  g0 = a + bΣ(I − LΣ)⁻¹Z,  b̂ = b_α + bΣ(I − LΣ)⁻¹L_α.
//! ```
//!
//! [`ActiveData::compute`] gets them by k + 1 reverse sweeps (abs′ = sign at inactive switches,
//! stop at active ones), never forming (I − LΣ)⁻¹.

use crate::eval::{AbsRule, EvalError, Evaluation, ReverseSweeper, Seed};
use crate::flat::Flatness;
use crate::graph::{Graph, RelationKind, Role, SwitchId};
use serde::Serialize;

/// Fewest active switches for which [`ActiveData::compute`] runs the [`Flatness`] pre-pass
/// (one forward pass over the graph) to spare the sweeps of the flat ones.
pub const FLAT_MIN_K: usize = 64;

/// When [`ActiveData::compute_with`] runs the [`Flatness`] pre-pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FlatPlan {
    /// Not at all: one sweep per active switch.
    Off,
    /// Beside the sweep from the output (on another thread when there is one).
    Beside,
    /// On this thread, once the row sweeps have taken this long (`None`: as long as the sweep
    /// from the output), if the sweeps left would take longer than that again at the rate so
    /// far (`Some(ZERO)`: before the first row sweep).
    Later(Option<std::time::Duration>),
}

/// Time the sweeps of [`ActiveData::compute_in`] run on the calling thread before the rest
/// are spread over threads (below it, starting a thread costs more than it saves).
pub const PAR_AFTER: std::time::Duration = std::time::Duration::from_micros(500);
/// Fewest sweeps left after [`PAR_AFTER`] for which threads are started.
pub const PAR_MIN_SWEEPS: usize = 8;

/// The abs-normal form at x̂ (sparse rows), in kinkcheck's scalar-output setting (m = 1).
#[derive(Debug, Clone)]
pub struct AbsNormalForm {
    pub n: usize,
    pub s: usize,
    pub x: Vec<f64>,
    pub y: f64,
    pub z: Vec<f64>,
    /// Rows of Z = ∂z/∂x, sparse `(column, value)`.
    pub z_rows: Vec<Vec<(usize, f64)>>,
    /// Rows of L = ∂z/∂|z|, sparse, strictly lower triangular.
    pub l_rows: Vec<Vec<(usize, f64)>>,
    /// a = ∂y/∂x (exported as Y).
    pub a: Vec<f64>,
    /// b = ∂y/∂|z| (exported as J).
    pub b: Vec<f64>,
}

/// Compute the abs-normal form of `g` at the point of `ev` (s + 1 reverse sweeps).
///
/// ```
/// use kinkcheck::{eval, anf};
/// let g = kinkcheck::compile("vars x; u = abs(x); f = abs(x + 2*u) - 2*u").unwrap().graph;
/// let ev = eval::evaluate(&g, &[0.0]).unwrap();
/// let form = anf::abs_normal_form(&g, &ev).unwrap();
/// let e = form.export();
/// assert_eq!(e.s, 2);
/// assert_eq!(e.big_l, vec![vec![0.0, 0.0], vec![2.0, 0.0]]);
/// assert_eq!(e.big_j, vec![vec![-2.0, 1.0]]);
/// ```
pub fn abs_normal_form(g: &Graph, ev: &Evaluation) -> Result<AbsNormalForm, EvalError> {
    let s = g.n_switches();
    let rules = vec![AbsRule::Stop; s];
    let mut sw = ReverseSweeper::new(g, ev);
    let mut z_rows = Vec::with_capacity(s);
    let mut l_rows = Vec::with_capacity(s);
    for i in 0..s {
        let adj = sw.sweep_sparse(Seed::Switch(SwitchId(i)), &rules)?;
        z_rows.push(
            adj.idx
                .iter()
                .copied()
                .zip(adj.val.iter().copied())
                .collect(),
        );
        l_rows.push(adj.stopped.iter().map(|&(j, v)| (j.0, v)).collect());
    }
    let out = sw.sweep(Seed::Output, &rules)?;
    let mut b = vec![0.0; s];
    for (j, v) in out.stopped {
        b[j.0] = v;
    }
    Ok(AbsNormalForm {
        n: g.n_vars(),
        s,
        x: ev.x.clone(),
        y: ev.output(g)?,
        z: ev.switches(g),
        z_rows,
        l_rows,
        a: out.grad,
        b,
    })
}

/// The ADOL-C-convention export of CONTRACT §3:
/// `z = cz + Z·Δx + L·|z|`, `y = cy + Y·Δx + J·|z|`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnfExport {
    pub n: usize,
    pub m: usize,
    pub s: usize,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub z: Vec<f64>,
    pub cz: Vec<f64>,
    pub cy: Vec<f64>,
    #[serde(rename = "Y")]
    pub big_y: Vec<Vec<f64>>,
    #[serde(rename = "J")]
    pub big_j: Vec<Vec<f64>>,
    #[serde(rename = "Z")]
    pub big_z: Vec<Vec<f64>>,
    #[serde(rename = "L")]
    pub big_l: Vec<Vec<f64>>,
}

fn dense(row: &[(usize, f64)], len: usize) -> Vec<f64> {
    let mut v = vec![0.0; len];
    for &(j, c) in row {
        v[j] = c;
    }
    v
}

impl AbsNormalForm {
    /// Dense ADOL-C-style export (`cz = z − L|z|`, `cy = y − J|z|`).
    pub fn export(&self) -> AnfExport {
        let absz: Vec<f64> = self.z.iter().map(|v| v.abs()).collect();
        let cz = (0..self.s)
            .map(|i| {
                self.z[i]
                    - self.l_rows[i]
                        .iter()
                        .map(|&(j, c)| c * absz[j])
                        .sum::<f64>()
            })
            .collect();
        let cy = self.y - self.b.iter().zip(&absz).map(|(b, u)| b * u).sum::<f64>();
        AnfExport {
            n: self.n,
            m: 1,
            s: self.s,
            x: self.x.clone(),
            y: vec![self.y],
            z: self.z.clone(),
            cz,
            cy: vec![cy],
            big_y: vec![self.a.clone()],
            big_j: vec![self.b.clone()],
            big_z: self.z_rows.iter().map(|r| dense(r, self.n)).collect(),
            big_l: self.l_rows.iter().map(|r| dense(r, self.s)).collect(),
        }
    }

    /// Evaluate the abs-linear model at x̂ + Δx: solve `z = cz + ZΔx + L|z|` by forward
    /// substitution, then `y = cy + aΔx + b|z|`. Returns `(y, z)`.
    pub fn abs_linear(&self, dx: &[f64]) -> (f64, Vec<f64>) {
        let e = self.export();
        let mut z: Vec<f64> = vec![0.0; self.s];
        for i in 0..self.s {
            let mut v = e.cz[i];
            for &(j, c) in &self.z_rows[i] {
                v += c * dx[j];
            }
            for &(j, c) in &self.l_rows[i] {
                v += c * z[j].abs();
            }
            z[i] = v;
        }
        let mut y = e.cy[0];
        y += self.a.iter().zip(dx).map(|(a, d)| a * d).sum::<f64>();
        y += self.b.iter().zip(&z).map(|(b, z)| b * z.abs()).sum::<f64>();
        (y, z)
    }
}

/// A sparse row of length `len`: the nonzero entries at ascending indices `idx`. Rows of J_α
/// are sparse in networks (a first-layer switch of one sample touches only its unit's weights
/// and bias), so they are stored this way; `row[p]` reads an entry (0 where none is stored).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseRow {
    pub len: usize,
    pub idx: Vec<usize>,
    pub val: Vec<f64>,
}

impl SparseRow {
    /// The nonzero entries of a dense row.
    pub fn from_dense(v: &[f64]) -> Self {
        let idx: Vec<usize> = (0..v.len()).filter(|&p| v[p] != 0.0).collect();
        let val = idx.iter().map(|&p| v[p]).collect();
        SparseRow {
            len: v.len(),
            idx,
            val,
        }
    }

    /// The dense row.
    pub fn to_dense(&self) -> Vec<f64> {
        let mut d = vec![0.0; self.len];
        for (&p, &v) in self.idx.iter().zip(&self.val) {
            d[p] = v;
        }
        d
    }

    /// Is every entry zero?
    pub fn is_zero(&self) -> bool {
        self.idx.is_empty()
    }

    /// `(index, value)` of the nonzero entries.
    pub fn entries(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.idx.iter().copied().zip(self.val.iter().copied())
    }
}

impl std::ops::Index<usize> for SparseRow {
    type Output = f64;
    fn index(&self, p: usize) -> &f64 {
        match self.idx.binary_search(&p) {
            Ok(k) => &self.val[k],
            Err(_) => &0.0,
        }
    }
}

/// The reduced active data (J_α, L̂, g0, b̂) on an active set α, in evaluation order.
#[derive(Debug, Clone)]
pub struct ActiveData {
    /// α: the active switches kept (degenerate ones removed), ascending.
    pub active: Vec<SwitchId>,
    /// Active switches removed because ż ≡ 0 on every piece (zero rows of J_α and L̂).
    pub degenerate: Vec<SwitchId>,
    /// Rows of J_α = [(I − LΣ)⁻¹Z]_α (k × n, sparse rows).
    pub j: Vec<SparseRow>,
    /// L̂ = [(I − LΣ)⁻¹L]_αα (k × k, strictly lower), row-major.
    pub lhat: Vec<Vec<f64>>,
    /// g0 = a + bΣ(I − LΣ)⁻¹Z.
    pub g0: Vec<f64>,
    /// b̂ = b_α + bΣ(I − LΣ)⁻¹L_α.
    pub bhat: Vec<f64>,
}

impl ActiveData {
    /// k + 1 reverse sweeps: seeded at each active switch (row of J_α and of L̂), then at y
    /// (g0 and b̂). `z` are the switch values; switches in `active` stop the sweeps, the others
    /// propagate with sign(zᵢ).
    pub fn compute(
        g: &Graph,
        ev: &Evaluation,
        z: &[f64],
        active: &[SwitchId],
    ) -> Result<ActiveData, EvalError> {
        Self::compute_in(&mut ReverseSweeper::new(g, ev), z, active)
    }

    /// [`Self::compute`] with the buffers of `sw` (a pipeline that sweeps the same graph and
    /// point several times allocates them once). The [`Flatness`] pre-pass costs about one
    /// forward pass, so it runs only when there are at least [`FLAT_MIN_K`] active switches to
    /// spare a sweep each; the data are the same either way.
    ///
    /// On more than one thread the pre-pass runs beside the sweep from the output. On one
    /// thread it would be paid for in full, so it waits: the row sweeps start without it, and
    /// once they have taken as long as the sweep from the output (about what the pre-pass
    /// costs), it runs only if the sweeps left would, at the rate so far, take longer than
    /// that again; the flat switches among those left are then spared.
    pub fn compute_in(
        sw: &mut ReverseSweeper,
        z: &[f64],
        active: &[SwitchId],
    ) -> Result<ActiveData, EvalError> {
        let flat = if active.len() < FLAT_MIN_K {
            FlatPlan::Off
        } else if crate::par::threads() >= 2 {
            FlatPlan::Beside
        } else {
            FlatPlan::Later(None)
        };
        Self::compute_with(sw, z, active, flat, PAR_AFTER)
    }

    /// [`Self::compute_in`] with the [`Flatness`] pre-pass as `plan` says (the tests check
    /// that every plan gives the same data).
    pub(crate) fn compute_with(
        sw: &mut ReverseSweeper,
        z: &[f64],
        active: &[SwitchId],
        plan: FlatPlan,
        par_after: std::time::Duration,
    ) -> Result<ActiveData, EvalError> {
        let (g, ev) = (sw.graph(), sw.evaluation());
        let mut pos = vec![usize::MAX; g.n_switches()];
        let mut rules: Vec<AbsRule> = z.iter().map(|v| AbsRule::Factor(v.signum())).collect();
        for (k, s) in active.iter().enumerate() {
            rules[s.0] = AbsRule::Stop;
            pos[s.0] = k;
        }
        let k = active.len();
        // Switches whose argument the forward pass of [`Flatness`] proves flat are degenerate
        // without a sweep: their rows are zero (an L̂ row of a flat switch only refers to flat
        // switches, which are dropped with it).
        // with FlatPlan::Beside, the sweep from the output (the longest) runs beside the
        // flatness pre-pass
        let t_out = std::time::Instant::now();
        let (mut flat, out) = if plan == FlatPlan::Beside {
            crate::par::join(
                || Flatness::compute(g, ev, &rules),
                || sw.sweep(Seed::Output, &rules),
            )
        } else {
            (None, sw.sweep(Seed::Output, &rules))
        };
        let out = out?;
        let is_flat = |flat: &Option<Flatness>, s: SwitchId| {
            flat.as_ref().is_some_and(|f| f.switch_is_flat(g, s))
        };
        if let FlatPlan::Later(after) = plan {
            // one thread: sweep in order, and decide on the pre-pass once the sweeps have taken
            // `after` (default: as long as the output sweep)
            let after = after.unwrap_or_else(|| t_out.elapsed());
            let started = std::time::Instant::now();
            let mut decided = false;
            let mut rows = Vec::with_capacity(k);
            for (i, &s) in active.iter().enumerate() {
                if !decided && started.elapsed() >= after {
                    decided = true;
                    let spent = started.elapsed().as_secs_f64();
                    let rate = if i == 0 {
                        f64::INFINITY
                    } else {
                        spent / i as f64
                    };
                    if rate * (k - i) as f64 > after.as_secs_f64() {
                        flat = Flatness::compute(g, ev, &rules);
                    }
                }
                rows.push((!is_flat(&flat, s)).then(|| sw.sweep_sparse(Seed::Switch(s), &rules)));
            }
            return Self::assemble(g, active, &pos, out, rows);
        }
        let swept: Vec<SwitchId> = active
            .iter()
            .copied()
            .filter(|&s| !is_flat(&flat, s))
            .collect();
        // The sweeps are independent. They run on this thread until they have taken
        // PAR_AFTER; the ones left then go to the machine's cores (crate::par), each thread
        // with its own buffers, when there are enough of them. The rows come back in order,
        // the same numbers either way (only the time depends on the clock).
        let started = std::time::Instant::now();
        let mut rows = Vec::with_capacity(swept.len());
        while rows.len() < swept.len() && started.elapsed() < par_after {
            rows.push(sw.sweep_sparse(Seed::Switch(swept[rows.len()]), &rules));
        }
        let (done, left) = (rows.len(), swept.len() - rows.len());
        let threads = if left >= PAR_MIN_SWEEPS {
            crate::par::threads().min(left / 2)
        } else {
            1
        };
        // each other thread builds its own buffers while this one goes on sweeping
        rows.extend(crate::par::map_with_helpers(
            sw,
            threads - 1,
            || ReverseSweeper::new(g, ev),
            left,
            |sw, q| sw.sweep_sparse(Seed::Switch(swept[done + q]), &rules),
        ));
        let mut swept_rows = rows.into_iter();
        let rows = active
            .iter()
            .map(|&s| (!is_flat(&flat, s)).then(|| swept_rows.next()).flatten())
            .collect();
        Self::assemble(g, active, &pos, out, rows)
    }

    /// The reduced data from the sweep from the output and, per active switch, its row sweep
    /// (`None`: a flat switch, whose row is zero).
    fn assemble(
        g: &Graph,
        active: &[SwitchId],
        pos: &[usize],
        out: crate::eval::Adjoint,
        rows: Vec<Option<Result<crate::eval::SparseAdjoint, EvalError>>>,
    ) -> Result<ActiveData, EvalError> {
        let k = active.len();
        let mut j = Vec::with_capacity(k);
        // L̂ rows are kept sparse (the entries a sweep stopped at) until the degenerate switches
        // are gone: a max-pool over dead relu units has thousands of exact ties whose rows are
        // all zero, and a dense k × k L̂ over them would not fit in memory.
        let mut lhat_rows: Vec<Vec<(usize, f64)>> = Vec::with_capacity(k);
        for row in rows {
            let Some(adj) = row.transpose()? else {
                j.push(SparseRow {
                    len: g.n_vars(),
                    idx: Vec::new(),
                    val: Vec::new(),
                });
                lhat_rows.push(Vec::new());
                continue;
            };
            j.push(SparseRow {
                len: g.n_vars(),
                idx: adj.idx,
                val: adj.val,
            });
            lhat_rows.push(adj.stopped.iter().map(|&(t, v)| (pos[t.0], v)).collect());
        }
        let finite = |v: &[f64]| v.iter().all(|c| c.is_finite());
        if !finite(&out.grad)
            || j.iter().any(|r| !finite(&r.val))
            || lhat_rows.iter().flatten().any(|(_, v)| !v.is_finite())
        {
            return Err(EvalError::Undefined {
                place: "abs-normal form".into(),
                what: "a derivative overflows (is not finite) at this point".into(),
            });
        }
        let mut bhat = vec![0.0; k];
        for (t, v) in out.stopped {
            bhat[pos[t.0]] = v;
        }
        // Degenerate switches (THEORY §4): a zero row of J_α whose L̂ row only refers to
        // switches that are themselves degenerate. L̂ is strictly lower, so one pass in
        // evaluation order decides them all.
        let mut degen = vec![false; k];
        for i in 0..k {
            degen[i] = j[i].is_zero() && lhat_rows[i].iter().all(|&(t, v)| v == 0.0 || degen[t]);
        }
        let keep: Vec<usize> = (0..k).filter(|&i| !degen[i]).collect();
        let mut new_pos = vec![usize::MAX; k];
        for (q, &i) in keep.iter().enumerate() {
            new_pos[i] = q;
        }
        let mut lhat = vec![vec![0.0; keep.len()]; keep.len()];
        for (q, &i) in keep.iter().enumerate() {
            for &(t, v) in &lhat_rows[i] {
                if new_pos[t] != usize::MAX {
                    lhat[q][new_pos[t]] = v;
                }
            }
        }
        let mut j_kept = Vec::with_capacity(keep.len());
        for (i, row) in j.into_iter().enumerate() {
            if !degen[i] {
                j_kept.push(row);
            }
        }
        Ok(ActiveData {
            active: keep.iter().map(|&i| active[i]).collect(),
            degenerate: (0..k).filter(|&i| degen[i]).map(|i| active[i]).collect(),
            j: j_kept,
            lhat,
            g0: out.grad,
            bhat: keep.iter().map(|&i| bhat[i]).collect(),
        })
    }

    /// Number of active switches k.
    pub fn k(&self) -> usize {
        self.active.len()
    }

    /// `J_α[i] · J_α[j]` over the sparse nonzeros.
    pub fn row_dot(&self, i: usize, j: usize) -> f64 {
        let (a, b) = (&self.j[i], &self.j[j]);
        // merge of two ascending index lists
        let (mut x, mut y, mut s) = (0, 0, 0.0);
        while x < a.idx.len() && y < b.idx.len() {
            match a.idx[x].cmp(&b.idx[y]) {
                std::cmp::Ordering::Less => x += 1,
                std::cmp::Ordering::Greater => y += 1,
                std::cmp::Ordering::Equal => {
                    s += a.val[x] * b.val[y];
                    x += 1;
                    y += 1;
                }
            }
        }
        s
    }

    /// `J_α[i] · w` for a dense w.
    pub fn row_dot_dense(&self, i: usize, w: &[f64]) -> f64 {
        self.j[i].entries().map(|(p, v)| v * w[p]).sum()
    }

    /// Switch gradients ż_α(σ̃) = (I − L̂Σ̃)⁻¹J_α by forward substitution, for any σ̃ ∈ [−1,1]^α.
    pub fn switch_gradients(&self, sigma: &[f64]) -> Vec<Vec<f64>> {
        let k = self.k();
        let mut zd: Vec<Vec<f64>> = Vec::with_capacity(k);
        for i in 0..k {
            let mut row = self.j[i].to_dense();
            for t in 0..i {
                let c = self.lhat[i][t] * sigma[t];
                if c != 0.0 {
                    for (r, v) in row.iter_mut().zip(&zd[t]) {
                        *r += c * v;
                    }
                }
            }
            zd.push(row);
        }
        zd
    }

    /// AD(σ̃) = g0 + c·J_α with the row vector c = b̂Σ̃(I − L̂Σ̃)⁻¹ (THEORY §3), by back
    /// substitution over the strictly lower L̂: cᵢ = σ̃ᵢ(b̂ᵢ + Σ_{t>i} c_t L̂_{ti}). The same
    /// vector as [`Self::ad`] (up to rounding) at the cost of k² + nnz(J_α), without the k
    /// dense rows ż_α: this is how `verify` gets the AD vector from the data it needs anyway,
    /// without one more reverse sweep over the graph. (Degenerate switches, dropped from α,
    /// have ż ≡ 0 and contribute nothing.)
    ///
    /// ```
    /// use kinkcheck::{anf::ActiveData, eval};
    /// // relu(x) − relu(−x) at 0: PyTorch's σ̃ = −1 at both kinks gives slope 0
    /// let g = kinkcheck::compile("vars x; f = relu(x) - relu(-x)").unwrap().graph;
    /// let ev = eval::evaluate(&g, &[0.0]).unwrap();
    /// let z = ev.switches(&g);
    /// let active: Vec<_> = (0..z.len()).map(kinkcheck::graph::SwitchId).collect();
    /// let data = ActiveData::compute(&g, &ev, &z, &active).unwrap();
    /// assert_eq!(data.ad_sparse(&[-1.0, -1.0]), vec![0.0]);
    /// assert_eq!(data.ad_sparse(&[-1.0, 1.0]), data.ad(&[-1.0, 1.0]));
    /// ```
    pub fn ad_sparse(&self, sigma: &[f64]) -> Vec<f64> {
        let k = self.k();
        let mut c = vec![0.0; k];
        for i in (0..k).rev() {
            let mut acc = self.bhat[i];
            for (t, ct) in c.iter().enumerate().skip(i + 1) {
                acc += ct * self.lhat[t][i];
            }
            c[i] = sigma[i] * acc;
        }
        let mut g = self.g0.clone();
        for (i, &ci) in c.iter().enumerate() {
            if ci != 0.0 {
                for (p, v) in self.j[i].entries() {
                    g[p] += ci * v;
                }
            }
        }
        g
    }

    /// AD(σ̃) = g0 + b̂Σ̃(I − L̂Σ̃)⁻¹J_α (THEORY §3); at a vertex σ ∈ {±1}^α it is the piece
    /// gradient g(σ) (§4).
    pub fn ad(&self, sigma: &[f64]) -> Vec<f64> {
        let zd = self.switch_gradients(sigma);
        let mut g = self.g0.clone();
        for i in 0..self.k() {
            let c = self.bhat[i] * sigma[i];
            if c != 0.0 {
                for (r, v) in g.iter_mut().zip(&zd[i]) {
                    *r += c * v;
                }
            }
        }
        g
    }
}

/// Structural facts about the active switches, read off the graph (not the numbers): the
/// identical/opposite relations, structural nesting, and op sites.
#[derive(Debug, Clone)]
pub struct Structure {
    /// `(i, j, kind)` with indices into α, i < j.
    pub relations: Vec<(usize, usize, RelationKind)>,
    /// `nested[i][j]`: |z_j| is (structurally) an ancestor of z_i.
    pub nested: Vec<Vec<bool>>,
    /// Op-site key of each active switch (a network unit across samples).
    pub sites: Vec<Option<String>>,
    /// Is each active switch abs-affine in x (THEORY §4)?
    pub affine: Vec<bool>,
    /// The role of each active switch.
    pub roles: Vec<Role>,
    /// Number of variables that structurally reach some active switch (n_anc of THEORY §6.2;
    /// counted per variable node, so an over-count, which only makes the checker more careful).
    pub n_anc: usize,
}

impl Structure {
    /// Compute the structure of the active switches `active` (ascending switch ids).
    pub fn compute(g: &Graph, active: &[SwitchId]) -> Structure {
        let k = active.len();
        let mut pos = std::collections::HashMap::new();
        for (i, s) in active.iter().enumerate() {
            pos.insert(*s, i);
        }
        let relations = g
            .relations_among(active)
            .into_iter()
            .filter_map(|r| Some((*pos.get(&r.a)?, *pos.get(&r.b)?, r.kind)))
            .collect();
        // abs nodes holding active switches, numbered 0..m
        let locs: Vec<(usize, usize)> = active.iter().map(|&s| g.switch_location(s)).collect();
        let mut abs_ids: Vec<usize> = locs.iter().map(|l| l.0).collect();
        abs_ids.dedup();
        let bit_of: std::collections::HashMap<usize, usize> =
            abs_ids.iter().enumerate().map(|(b, &a)| (a, b)).collect();
        let words = abs_ids.len().div_ceil(64).max(1);
        // bitset per node: which active abs nodes feed it
        let nn = g.nodes().len();
        let mut sets = vec![0u64; nn * words];
        let mut node_bit = vec![usize::MAX; nn];
        for (&a, &b) in &bit_of {
            node_bit[g.abs_nodes()[a].node.index()] = b;
        }
        for (i, node) in g.nodes().iter().enumerate() {
            for op in node.op.operands() {
                let o = op.index();
                for w in 0..words {
                    sets[i * words + w] |= sets[o * words + w];
                }
            }
            if node_bit[i] != usize::MAX {
                let b = node_bit[i];
                sets[i * words + b / 64] |= 1 << (b % 64);
            }
        }
        let mut nested = vec![vec![false; k]; k];
        for i in 0..k {
            let arg = g.abs_nodes()[locs[i].0].arg.index();
            for j in 0..k {
                if locs[j].0 == locs[i].0 {
                    continue;
                }
                let b = bit_of[&locs[j].0];
                nested[i][j] = sets[arg * words + b / 64] & (1 << (b % 64)) != 0;
            }
        }
        let sites = locs
            .iter()
            .map(|&(a, e)| g.abs_nodes()[a].origin.site(e))
            .collect();
        let affine = locs
            .iter()
            .map(|&(a, _)| g.node(g.abs_nodes()[a].arg).affine)
            .collect();
        let roles = locs.iter().map(|&(a, _)| g.abs_nodes()[a].role).collect();
        // variables reaching an active switch: walk back from the active arguments
        let mut seen = vec![false; nn];
        let mut stack: Vec<usize> = locs
            .iter()
            .map(|&(a, _)| g.abs_nodes()[a].arg.index())
            .collect();
        let mut n_anc = 0;
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            let node = &g.nodes()[i];
            if matches!(node.op, crate::graph::Op::Var { .. }) {
                n_anc += node.len;
            }
            stack.extend(
                node.op
                    .operands()
                    .into_iter()
                    .map(|o| o.index())
                    .filter(|&o| g.nodes()[o].depends),
            );
        }
        Structure {
            n_anc,
            relations,
            nested,
            sites,
            affine,
            roles,
        }
    }
}
