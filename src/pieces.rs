//! The LP checker (THEORY.md §6): the pieces really active near the kinks and Clarke
//! membership of a vector v, with a certificate.
//!
//! ∂^C f(x̂) = conv{ g(σ) : σ realized } (§4). Every piece gradient is g(σ) = g0 + c(σ)Qᵀ with
//! c(σ) ∈ R^r (§6.1), so all LPs live in the reduced space of the active rows:
//!
//! * realizability of a pattern (§6.2): strict LP `max t, ρ_i·e ≥ t` (REALIZED with witness),
//!   else Gordan LP (not PL-realized: UNREALIZED when the switches are abs-affine or the closed
//!   cone is trivial, otherwise UNDECIDED: the cusp case);
//! * prefix search in evaluation order with structural relations forcing signs (§6.3), on
//!   independent blocks of switches (§6.4);
//! * hull LP (IN, convex weights) and separation LP (OUT, direction h and bound c with
//!   h·v > c ≥ h·g for every realized or undecided piece), §6.5.
//!
//! Margins inside the tolerance band give UNDECIDED, never IN or OUT (§6.6); budgets give
//! UNDECIDED with the budget named, and OUT needs a complete enumeration (§6.7).

use crate::anf::{ActiveData, Structure};
use crate::graph::RelationKind;
use crate::lp;
use crate::reduced::{ReducedSpace, TAU_LP};
use nalgebra::DMatrix;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The verdict of the checker.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    In,
    Out,
    Undecided,
}

/// Realizability of a pattern.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Realized,
    Unrealized,
    Undecided,
}

/// A piece: a sign pattern σ of the switches of one block, its status, its reduced gradient
/// offset c(σ) (g(σ) = g0 + c(σ)Qᵀ) and, when realized, a reduced witness e (d = Qe).
#[derive(Debug, Clone)]
pub struct Piece {
    pub block: usize,
    /// Signs on the block's switches (0 = don't-care: the switch's row vanishes).
    pub signs: Vec<i8>,
    pub status: Status,
    pub offset: Vec<f64>,
    pub witness: Option<Vec<f64>>,
}

/// The certificate of a verdict.
#[derive(Debug, Clone)]
pub enum Certificate {
    /// IN: convex weights over realized pieces, per block (`(piece index, weight)`); the
    /// product over blocks is a joint convex combination.
    Weights(Vec<(usize, f64)>),
    /// OUT: h (in R^n) and c with h·v > c ≥ h·g(σ) for every realized or undecided σ.
    Direction { h: Vec<f64>, bound: f64 },
}

/// Budgets and tolerances of the checker (THEORY §6.6–§6.7).
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub max_pieces: usize,
    pub max_lps: usize,
    pub timeout: Duration,
    /// Gordan tolerance τ_g.
    pub tau_g: f64,
    /// Relative hull / separation tolerance (× max(1, ‖v‖∞, max‖g‖∞)).
    pub tau_rel: f64,
    /// Show a progress spinner on stderr during long searches (the CLI sets it on a terminal).
    pub progress: bool,
    /// Apply the abs-affine sub-system test of THEORY §6.2 (on by default; off reproduces the
    /// earlier checker, for comparisons in tests and benches).
    pub abs_affine_subsystem: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_pieces: 4096,
            max_lps: 20000,
            timeout: Duration::from_secs(10),
            tau_g: 1e-9,
            tau_rel: 1e-9,
            progress: false,
            abs_affine_subsystem: true,
        }
    }
}

/// The checker's result.
#[derive(Debug, Clone)]
pub struct Check {
    pub verdict: Verdict,
    pub reason: String,
    pub certificate: Option<Certificate>,
    /// Realized and undecided pieces (and unrealized ones while few), per block.
    pub pieces: Vec<Piece>,
    /// Blocks of active-switch indices (into α).
    pub blocks: Vec<Vec<usize>>,
    pub lps: usize,
    /// Did the enumeration finish within the budgets?
    pub complete: bool,
    /// Per block, the reduced hull LP's convex weights over the block's realized pieces
    /// (`(piece index, weight)`; None when the block has no realized piece or the LP failed):
    /// the point of their hull nearest to the block's part of v in the reduced ∞-norm (§6.5).
    pub hull: Vec<Option<Vec<(usize, f64)>>>,
}

struct Search<'a> {
    data: &'a ActiveData,
    space: &'a ReducedSpace,
    st: &'a Structure,
    opts: &'a CheckOptions,
    start: Instant,
    lps: usize,
    leaves: usize,
    truncated: Option<String>,
    pieces: Vec<Piece>,
    unrealized_listed: usize,
    bar: Option<indicatif::ProgressBar>,
}

const LIST_UNREALIZED: usize = 64;

/// Outcome of the abs-affine sub-system test.
enum Sub {
    /// The restricted strict system holds at this reduced witness.
    Feasible(Vec<f64>),
    /// Gordan certifies it infeasible: the prefix is UNREALIZED exactly.
    Infeasible,
    /// Inside the tolerance band, or an LP failure.
    Unknown,
}

impl Search<'_> {
    fn over_budget(&mut self) -> bool {
        if self.truncated.is_some() {
            return true;
        }
        if self.bar.is_none() && self.opts.progress && self.start.elapsed().as_millis() > 300 {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("enumerating pieces");
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "enumerating pieces: {} found, {} LPs",
                self.leaves, self.lps
            ));
            bar.tick();
        }
        if self.leaves >= self.opts.max_pieces {
            self.truncated = Some(format!("piece budget ({}) reached", self.opts.max_pieces));
        } else if self.lps >= self.opts.max_lps {
            self.truncated = Some(format!("LP budget ({}) reached", self.opts.max_lps));
        } else if self.start.elapsed() > self.opts.timeout {
            self.truncated = Some(format!("time budget ({:?}) reached", self.opts.timeout));
        }
        self.truncated.is_some()
    }

    /// Rows u_i(σ) for i in `block[..=d]` given signs (full-length σ vector over α).
    fn row(&self, rows: &[Vec<f64>], sigma: &[f64], i: usize) -> Vec<f64> {
        let mut row: Vec<f64> = (0..self.space.r).map(|c| self.space.u[(i, c)]).collect();
        for t in 0..i {
            let c = self.data.lhat[i][t] * sigma[t];
            if c != 0.0 && !rows[t].is_empty() {
                for (a, b) in row.iter_mut().zip(&rows[t]) {
                    *a += c * b;
                }
            }
        }
        row
    }

    fn forced(&self, block: &[usize], d: usize, sigma: &[f64]) -> Option<f64> {
        let i = block[d];
        for &(a, b, kind) in &self.st.relations {
            if b == i && block[..d].contains(&a) {
                let s = sigma[a];
                return Some(if kind == RelationKind::Identical {
                    s
                } else {
                    -s
                });
            }
        }
        None
    }

    fn strict(&mut self, rho: &[Vec<f64>]) -> Option<(f64, Vec<f64>)> {
        self.lps += 1;
        lp::strict_margin(rho, self.space.r)
            .ok()
            .map(|m| (m.t, m.e))
    }

    fn leaf(
        &mut self,
        b: usize,
        block: &[usize],
        sigma: &[f64],
        rows: &[Vec<f64>],
        status: Status,
        witness: Option<Vec<f64>>,
    ) {
        if status == Status::Unrealized {
            if self.unrealized_listed >= LIST_UNREALIZED {
                return;
            }
            self.unrealized_listed += 1;
        } else {
            self.leaves += 1;
        }
        let tol = self.space.zero_tol();
        let signs = block
            .iter()
            .map(|&i| {
                if lp::max_abs(&rows[i]) <= tol {
                    0
                } else {
                    sigma[i] as i8
                }
            })
            .collect();
        let mut offset = vec![0.0; self.space.r];
        for &i in block {
            let f = self.data.bhat[i] * sigma[i];
            if f != 0.0 {
                for (a, v) in offset.iter_mut().zip(&rows[i]) {
                    *a += f * v;
                }
            }
        }
        self.pieces.push(Piece {
            block: b,
            signs,
            status,
            offset,
            witness,
        });
    }

    /// Depth-first search over the block's switches. `mode`: realized prefix with witness,
    /// or a non-PL-realized prefix whose leaves are undecided unless the cone is trivial.
    #[allow(clippy::too_many_arguments)]
    fn dfs(
        &mut self,
        b: usize,
        block: &[usize],
        d: usize,
        sigma: &mut Vec<f64>,
        rows: &mut Vec<Vec<f64>>,
        witness: Option<&[f64]>,
        undecided: bool,
    ) {
        if self.over_budget() {
            return;
        }
        if d == block.len() {
            if undecided {
                let status = if self.trivial_cone(block, sigma, rows) {
                    Status::Unrealized
                } else {
                    Status::Undecided
                };
                self.leaf(b, block, sigma, rows, status, None);
            } else {
                self.leaf(
                    b,
                    block,
                    sigma,
                    rows,
                    Status::Realized,
                    witness.map(|w| w.to_vec()),
                );
            }
            return;
        }
        let i = block[d];
        let row = self.row(rows, sigma, i);
        let zero = lp::max_abs(&row) <= self.space.zero_tol();
        rows[i] = row;
        let forced = self.forced(block, d, sigma);
        let mut order: Vec<f64> = match (forced, zero) {
            (Some(s), _) => vec![s],
            (None, true) => vec![1.0],
            (None, false) => {
                // the sign of the new row at the parent's witness first: it needs no LP
                let s = witness
                    .map(|w| rows[i].iter().zip(w).map(|(a, b)| a * b).sum::<f64>())
                    .unwrap_or(1.0);
                if s < 0.0 {
                    vec![-1.0, 1.0]
                } else {
                    vec![1.0, -1.0]
                }
            }
        };
        if let (Some(s), false) = (forced, zero) {
            // the other sign violates a structural relation: unrealized, no LP
            sigma[i] = -s;
            self.list_unrealized_subtree(b, block, d + 1, sigma, rows);
        }
        for s in order.drain(..) {
            sigma[i] = s;
            if undecided {
                // `witness` is a witness of the abs-affine sub-system of the prefix (or None)
                if !self.st.affine[i] || zero || !self.opts.abs_affine_subsystem {
                    self.dfs(b, block, d + 1, sigma, rows, witness, true);
                    continue;
                }
                match self.affine_subsystem(block, d, sigma, rows, witness) {
                    Sub::Infeasible => self.list_unrealized_subtree(b, block, d + 1, sigma, rows),
                    Sub::Feasible(e) => self.dfs(b, block, d + 1, sigma, rows, Some(&e), true),
                    Sub::Unknown => self.dfs(b, block, d + 1, sigma, rows, None, true),
                }
                continue;
            }
            let prefix: Vec<usize> = block[..=d].to_vec();
            let rho = self.space.strict_rows(rows, sigma, &prefix);
            // witness shortcut
            if let Some(w) = witness {
                let t = rho
                    .iter()
                    .map(|r| r.iter().zip(w).map(|(a, b)| a * b).sum::<f64>())
                    .fold(f64::INFINITY, f64::min);
                if t > TAU_LP {
                    let w = w.to_vec();
                    self.dfs(b, block, d + 1, sigma, rows, Some(&w), false);
                    continue;
                }
            }
            let strict = self.strict(&rho);
            if let Some((t, e)) = &strict {
                if *t > TAU_LP {
                    self.dfs(b, block, d + 1, sigma, rows, Some(e), false);
                    continue;
                }
            }
            let affine = prefix.iter().all(|&j| self.st.affine[j]);
            if strict.is_some() {
                self.lps += 1;
                let gordan = lp::gordan(&rho, self.space.r).ok();
                let eps = gordan.as_ref().map_or(f64::INFINITY, |g| g.eps);
                // Gordan multipliers on abs-affine rows only certify the abs-affine
                // sub-system infeasible as well (THEORY §6.2): no further LP
                let on_affine = || {
                    let tol = self.space.zero_tol();
                    let live = prefix.iter().filter(|&&j| lp::max_abs(&rows[j]) > tol);
                    let y = gordan.as_ref().map_or(&[][..], |g| &g.y[..]);
                    live.zip(y).all(|(&j, &yj)| yj <= 0.0 || self.st.affine[j])
                };
                if eps <= self.opts.tau_g
                    && (affine || (self.opts.abs_affine_subsystem && on_affine()))
                {
                    self.list_unrealized_subtree(b, block, d + 1, sigma, rows);
                    continue;
                }
            }
            // Not PL-realized (or an LP failure): the abs-affine part of the prefix may still
            // decide exactly (THEORY §6.2); its witness lets the descent skip LPs.
            if affine || !self.opts.abs_affine_subsystem {
                self.dfs(b, block, d + 1, sigma, rows, None, true);
                continue;
            }
            match self.affine_subsystem(block, d, sigma, rows, None) {
                Sub::Infeasible => self.list_unrealized_subtree(b, block, d + 1, sigma, rows),
                Sub::Feasible(e) => self.dfs(b, block, d + 1, sigma, rows, Some(&e), true),
                Sub::Unknown => self.dfs(b, block, d + 1, sigma, rows, None, true),
            }
        }
    }

    /// The abs-affine sub-system of the prefix `block[..=d]` (THEORY §6.2): the strict system
    /// restricted to its abs-affine switches. Every switch upstream of an abs-affine switch is
    /// abs-affine, so those rows depend only on the signs of abs-affine switches and the PL
    /// model of z_A is exact near x̂: if the restricted strict system is infeasible (Gordan
    /// ε* ≤ τ_g), no completion of the prefix is realized, whatever the other switches do.
    /// `hint`: a witness of the sub-system without the newest row (no LP if it still works).
    fn affine_subsystem(
        &mut self,
        block: &[usize],
        d: usize,
        sigma: &[f64],
        rows: &[Vec<f64>],
        hint: Option<&[f64]>,
    ) -> Sub {
        let a: Vec<usize> = block[..=d]
            .iter()
            .copied()
            .filter(|&j| self.st.affine[j])
            .collect();
        let rho = self.space.strict_rows(rows, sigma, &a);
        if let Some(w) = hint {
            let t = rho.iter().map(|r| dot(r, w)).fold(f64::INFINITY, f64::min);
            if t > TAU_LP {
                return Sub::Feasible(w.to_vec());
            }
        }
        match self.strict(&rho) {
            Some((t, e)) if t > TAU_LP => return Sub::Feasible(e),
            Some(_) => {}
            None => return Sub::Unknown,
        }
        self.lps += 1;
        match lp::gordan(&rho, self.space.r) {
            Ok(g) if g.eps <= self.opts.tau_g => Sub::Infeasible,
            _ => Sub::Unknown,
        }
    }

    fn list_unrealized_subtree(
        &mut self,
        b: usize,
        block: &[usize],
        d: usize,
        sigma: &mut [f64],
        rows: &mut [Vec<f64>],
    ) {
        if self.unrealized_listed >= LIST_UNREALIZED {
            return;
        }
        if d == block.len() {
            self.leaf(b, block, sigma, rows, Status::Unrealized, None);
            return;
        }
        let i = block[d];
        rows[i] = self.row(rows, sigma, i);
        for s in [1.0, -1.0] {
            sigma[i] = s;
            self.list_unrealized_subtree(b, block, d + 1, sigma, rows);
        }
    }

    /// The closed cone {e : ρ·e ≥ 0} is {0}: rank of the rows = r = n_anc and a strictly
    /// positive y with Σ y_i ρ_i = 0 exists (Stiemke). Then the pattern is not realized even
    /// beyond first order (THEORY §6.2).
    fn trivial_cone(&mut self, block: &[usize], sigma: &[f64], rows: &[Vec<f64>]) -> bool {
        let r = self.space.r;
        if r != self.st.n_anc || self.data.k() != block.len() {
            return false;
        }
        let rho = self.space.strict_rows(rows, sigma, block);
        let m = DMatrix::from_fn(rho.len(), r, |i, j| rho[i][j]);
        if rho.is_empty() || m.rank(1e-9) < r {
            return false;
        }
        self.lps += 1;
        matches!(lp::stiemke(&rho, r), Ok(Some(_)))
    }
}

/// Blocks (THEORY §6.4), for k > [`SINGLE_BLOCK_K`]: connected components of "L̂_ij ≠ 0, structurally nested or related";
/// kept separate only when their row spaces form a direct sum (Σ rank = r), else one block.
/// Up to this many active switches (2^k ≤ the default piece budget) the switches stay one
/// block, so that pieces and certificates are joint patterns over all of α.
pub const SINGLE_BLOCK_K: usize = 12;

fn blocks(data: &ActiveData, space: &ReducedSpace, st: &Structure) -> Vec<Vec<usize>> {
    let k = data.k();
    if k <= SINGLE_BLOCK_K {
        return vec![(0..k).collect()];
    }
    let mut parent: Vec<usize> = (0..k).collect();
    fn find(p: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while p[r] != r {
            r = p[r];
        }
        p[i] = r;
        r
    }
    let join = |a: usize, b: usize, p: &mut Vec<usize>| {
        let (x, y) = (find(p, a), find(p, b));
        if x != y {
            p[x.max(y)] = x.min(y);
        }
    };
    for i in 0..k {
        for j in 0..i {
            if data.lhat[i][j] != 0.0 || st.nested[i][j] {
                join(i, j, &mut parent);
            }
        }
    }
    for &(a, b, _) in &st.relations {
        join(a, b, &mut parent);
    }
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut idx = vec![usize::MAX; k];
    for i in 0..k {
        let r = find(&mut parent, i);
        if idx[r] == usize::MAX {
            idx[r] = out.len();
            out.push(vec![]);
        }
        out[idx[r]].push(i);
    }
    // (D): the row spaces must form a direct sum. While they do not, a null vector of the
    // stacked bases names the dependent blocks; merge those (THEORY §6.4).
    while out.len() > 1 {
        let bases: Vec<DMatrix<f64>> = out.iter().map(|b| block_basis(space, b)).collect();
        let total: usize = bases.iter().map(|m| m.ncols()).sum();
        if total <= space.r {
            break;
        }
        let mut stacked = DMatrix::zeros(space.r, total);
        let mut owner = Vec::with_capacity(total);
        let mut c0 = 0;
        for (b, m) in bases.iter().enumerate() {
            stacked.view_mut((0, c0), (space.r, m.ncols())).copy_from(m);
            owner.extend(std::iter::repeat_n(b, m.ncols()));
            c0 += m.ncols();
        }
        let (vals, vecs) = crate::reduced::sym_eigen(&(stacked.transpose() * &stacked));
        let imin = (0..vals.len())
            .min_by(|&a, &b| vals[a].total_cmp(&vals[b]))
            .unwrap_or(0);
        let null = vecs.column(imin);
        let mut merge: Vec<usize> = (0..total)
            .filter(|&c| null[c].abs() > 1e-8)
            .map(|c| owner[c])
            .collect();
        merge.sort_unstable();
        merge.dedup();
        if merge.len() < 2 {
            return vec![(0..k).collect()];
        }
        let mut merged: Vec<usize> = merge.iter().flat_map(|&b| out[b].clone()).collect();
        merged.sort_unstable();
        let mut next: Vec<Vec<usize>> = out
            .iter()
            .enumerate()
            .filter(|(b, _)| !merge.contains(b))
            .map(|(_, v)| v.clone())
            .collect();
        next.push(merged);
        next.sort_by_key(|b| b[0]);
        out = next;
    }
    out
}

/// An orthonormal basis (r × r_B) of the span of the block's reduced rows U_B: eigenvectors
/// of U_Bᵀ U_B (r × r) with eigenvalues above the rank threshold.
fn block_basis(space: &ReducedSpace, block: &[usize]) -> DMatrix<f64> {
    let m = DMatrix::from_fn(space.r, block.len(), |c, j| space.u[(block[j], c)]);
    let (vals, vecs) = crate::reduced::sym_eigen(&(&m * m.transpose()));
    let vmax = vals.iter().cloned().fold(0.0, f64::max);
    let cols: Vec<usize> = (0..vals.len())
        .filter(|&i| vmax > 0.0 && vals[i] > 1e-14 * vmax)
        .collect();
    DMatrix::from_fn(space.r, cols.len(), |i, j| vecs[(i, cols[j])])
}

/// The pieces found by [`enumerate`].
#[derive(Debug, Clone)]
pub struct Enumeration {
    /// Realized, undecided and (some) unrealized pieces, per block.
    pub pieces: Vec<Piece>,
    /// Blocks of active-switch indices (into α).
    pub blocks: Vec<Vec<usize>>,
    pub lps: usize,
    /// The budget that cut the search short, if any.
    pub truncated: Option<String>,
}

/// The prefix search (THEORY §6.3) on each independent block (§6.4) under the budgets of
/// `opts`. With `first_only`, each block stops at its first realized piece (a few LPs per
/// block: the witness shortcut decides most switches), which is enough to offer a certified
/// Clarke gradient when the analyzer's guarantee made the full enumeration unnecessary.
pub fn enumerate(
    data: &ActiveData,
    space: &ReducedSpace,
    st: &Structure,
    opts: &CheckOptions,
    first_only: bool,
) -> Enumeration {
    let blocks = blocks(data, space, st);
    let k = data.k();
    let mut first_opts = opts.clone();
    first_opts.max_pieces = 1;
    let start = Instant::now();
    let mut out = Enumeration {
        pieces: vec![],
        blocks: vec![],
        lps: 0,
        truncated: None,
    };
    let mut search = Search {
        data,
        space,
        st,
        opts: if first_only { &first_opts } else { opts },
        start,
        lps: 0,
        leaves: 0,
        truncated: None,
        pieces: vec![],
        unrealized_listed: 0,
        bar: None,
    };
    for (b, block) in blocks.iter().enumerate() {
        let mut sigma = vec![0.0; k];
        let mut rows = vec![vec![]; k];
        if first_only {
            // a fresh piece budget per block; the LP and time budgets stay global
            search.leaves = 0;
            search.truncated = None;
            if search.lps >= opts.max_lps || start.elapsed() > opts.timeout {
                out.truncated = Some("budget reached".into());
                break;
            }
        }
        search.dfs(b, block, 0, &mut sigma, &mut rows, None, false);
    }
    if let Some(bar) = search.bar.take() {
        bar.finish_and_clear();
    }
    out.lps = search.lps;
    out.truncated = if first_only {
        Some("first realized piece of each block only".into())
    } else {
        search.truncated.take()
    };
    out.pieces = std::mem::take(&mut search.pieces);
    out.blocks = blocks;
    out
}

/// Decide whether `v` lies in the Clarke subdifferential of the first-order model.
pub fn check(
    data: &ActiveData,
    space: &ReducedSpace,
    st: &Structure,
    v: &[f64],
    opts: &CheckOptions,
) -> Check {
    let w: Vec<f64> = v.iter().zip(&data.g0).map(|(a, b)| a - b).collect();
    let scale0 = lp::max_abs(v).max(lp::max_abs(&data.g0)).max(1.0);
    let mut out = Check {
        verdict: Verdict::Undecided,
        reason: String::new(),
        certificate: None,
        pieces: vec![],
        blocks: vec![],
        lps: 0,
        complete: false,
        hull: vec![],
    };
    // Off the row space (or no active switch): every piece has ρ·g = ρ·g0.
    let (cv, dist) = space.project(data, &w);
    let qcv = space.lift(data, &cv);
    let rho: Vec<f64> = w.iter().zip(&qcv).map(|(a, b)| a - b).collect();
    let rho_inf = lp::max_abs(&rho);
    let tau0 = opts.tau_rel * scale0;
    if rho_inf > 1e3 * tau0 && dist > 1e3 * tau0 {
        let h: Vec<f64> = rho.iter().map(|x| x / rho_inf).collect();
        let bound = dot(&h, &data.g0);
        out.verdict = Verdict::Out;
        out.reason = format!(
            "v − g0 leaves the row space of the active switching rows (distance {dist:.3e}): every piece has the same slope along h"
        );
        out.certificate = Some(Certificate::Direction { h, bound });
        out.complete = true;
        return out;
    }
    if rho_inf > tau0 {
        out.reason = format!("distance of v − g0 from the active row space ({dist:.3e}) is inside the tolerance band");
        return out;
    }
    if data.k() == 0 {
        out.verdict = Verdict::In;
        out.reason = "no active switch: f is differentiable here and v is its gradient".into();
        out.certificate = Some(Certificate::Weights(vec![]));
        out.complete = true;
        return out;
    }
    let e = enumerate(data, space, st, opts, false);
    let (blocks, truncated) = (e.blocks, e.truncated);
    out.lps = e.lps;
    out.complete = truncated.is_none();
    out.pieces = e.pieces;
    // decompose c_v over the blocks (direct sum)
    let bases: Vec<DMatrix<f64>> = blocks.iter().map(|b| block_basis(space, b)).collect();
    let parts: Vec<Vec<f64>> = if blocks.len() == 1 {
        vec![cv.clone()]
    } else {
        let total: usize = bases.iter().map(|m| m.ncols()).sum();
        let mut stacked = DMatrix::zeros(space.r, total);
        let mut c0 = 0;
        for m in &bases {
            stacked.view_mut((0, c0), (space.r, m.ncols())).copy_from(m);
            c0 += m.ncols();
        }
        let coef = stacked
            .clone()
            .lu()
            .solve(&nalgebra::DVector::from_column_slice(&cv))
            .unwrap_or_else(|| nalgebra::DVector::zeros(total));
        let mut parts = vec![];
        let mut c0 = 0;
        for m in &bases {
            let n = m.ncols();
            let p = m * coef.rows(c0, n);
            parts.push(p.iter().cloned().collect());
            c0 += n;
        }
        parts
    };
    let gmax = out
        .pieces
        .iter()
        .map(|p| lp::max_abs(&p.offset))
        .fold(0.0, f64::max);
    let tau = opts.tau_rel * scale0.max(gmax);
    // IN: hull LP per block on realized pieces
    let mut weights = vec![];
    let mut all_in = true;
    let mut worst_in = 0.0f64;
    for (b, part) in parts.iter().enumerate() {
        let idx: Vec<usize> = (0..out.pieces.len())
            .filter(|&i| out.pieces[i].block == b && out.pieces[i].status == Status::Realized)
            .collect();
        let pts: Vec<Vec<f64>> = idx.iter().map(|&i| out.pieces[i].offset.clone()).collect();
        out.lps += 1;
        let hull = lp::hull_distance(&pts, part);
        out.hull.push(
            hull.as_ref()
                .ok()
                .filter(|_| !idx.is_empty())
                .map(|h| idx.iter().copied().zip(h.weights.iter().copied()).collect()),
        );
        match hull {
            Ok(h) if h.delta <= tau => {
                worst_in = worst_in.max(h.delta);
                for (&i, &wt) in idx.iter().zip(&h.weights) {
                    if wt > 0.0 {
                        weights.push((i, wt));
                    }
                }
            }
            Ok(h) => {
                worst_in = worst_in.max(h.delta);
                all_in = false;
            }
            Err(_) => all_in = false,
        }
    }
    if all_in {
        out.verdict = Verdict::In;
        out.reason = format!(
            "v is a convex combination of realized piece gradients (hull distance {worst_in:.1e}){}",
            if blocks.len() > 1 {
                format!(" in each of {} independent blocks", blocks.len())
            } else {
                String::new()
            }
        );
        out.certificate = Some(Certificate::Weights(weights));
        out.blocks = blocks;
        return out;
    }
    // OUT: separation on realized ∪ undecided, per block, only with a complete enumeration
    if let Some(t) = truncated {
        out.reason = format!("{t} before v was shown to be in the hull; OUT needs every piece");
        out.blocks = blocks;
        return out;
    }
    let mut best_gamma = f64::NEG_INFINITY;
    for (b, part) in parts.iter().enumerate() {
        let pts: Vec<Vec<f64>> = out
            .pieces
            .iter()
            .filter(|p| p.block == b && p.status != Status::Unrealized)
            .map(|p| p.offset.clone())
            .collect();
        out.lps += 1;
        let Ok(sep) = lp::separate(&pts, part) else {
            continue;
        };
        best_gamma = best_gamma.max(sep.gamma);
        if sep.gamma > tau && sep.gamma.is_finite() {
            // lift h_b: vanish on the other blocks' spaces, act as h_b on block b's space
            let hr: Vec<f64> = if blocks.len() == 1 {
                sep.h.clone()
            } else {
                lift_block_functional(&bases, b, &sep.h)
            };
            let h = space.lift(data, &hr);
            let scale = lp::max_abs(&h);
            if scale == 0.0 {
                continue;
            }
            let h: Vec<f64> = h.iter().map(|x| x / scale).collect();
            let bound = sep.beta / scale + dot(&h, &data.g0);
            out.verdict = Verdict::Out;
            out.reason = format!(
                "v claims a slope along h above every realized or undecided piece (margin {:.3e})",
                sep.gamma / scale
            );
            out.certificate = Some(Certificate::Direction { h, bound });
            out.blocks = blocks;
            return out;
        }
    }
    let undecided = out
        .pieces
        .iter()
        .filter(|p| p.status == Status::Undecided)
        .count();
    out.reason = if undecided > 0 {
        format!(
            "v is in the hull of realized and undecided pieces but not of the realized ones alone ({undecided} undecided pieces: cusp case, first-order data cannot tell)"
        )
    } else {
        format!("margins inside the tolerance band (hull distance {worst_in:.1e}, separation {best_gamma:.1e})")
    };
    out.blocks = blocks;
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// h ∈ R^r with h·P_b = h_b·P_b and h·P_l = 0 (l ≠ b), for the block bases P (direct sum).
fn lift_block_functional(bases: &[DMatrix<f64>], b: usize, hb: &[f64]) -> Vec<f64> {
    let r = bases[0].nrows();
    let total: usize = bases.iter().map(|m| m.ncols()).sum();
    let mut stacked = DMatrix::zeros(r, total);
    let mut rhs = nalgebra::DVector::zeros(total);
    let mut c0 = 0;
    let hbv = nalgebra::DVector::from_column_slice(hb);
    for (l, m) in bases.iter().enumerate() {
        stacked.view_mut((0, c0), (r, m.ncols())).copy_from(m);
        if l == b {
            let t = m.transpose() * &hbv;
            rhs.rows_mut(c0, m.ncols()).copy_from(&t);
        }
        c0 += m.ncols();
    }
    // stackedᵀ h = rhs
    stacked
        .transpose()
        .lu()
        .solve(&rhs)
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_else(|| vec![0.0; r])
}

impl Check {
    /// No enumeration was run (the analyzer's guarantee decides; THEORY §6.7).
    pub fn skipped(reason: &str) -> Check {
        Check {
            verdict: Verdict::Undecided,
            reason: reason.to_string(),
            certificate: None,
            pieces: vec![],
            blocks: vec![],
            lps: 0,
            complete: false,
            hull: vec![],
        }
    }
}

/// The weight-support shortcut for AD vectors (THEORY §3, §6.5): AD(σ̃) = Σ_σ w(σ) g(σ) with
/// w(σ) = Π_i (1 + σ_i σ̃_i)/2, supported on the completions that agree with σ̃ wherever
/// |σ̃_i| = 1. If that support has at most `max_support` patterns and each is shown realized by a
/// strict LP, the product weights are an IN certificate without any enumeration.
pub fn support_certificate(
    data: &ActiveData,
    space: &ReducedSpace,
    sigma: &[f64],
    v: &[f64],
    max_support: usize,
) -> Option<Check> {
    let k = data.k();
    let free: Vec<usize> = (0..k).filter(|&i| sigma[i].abs() < 1.0).collect();
    if free.len() >= 20 || (1usize << free.len()) > max_support {
        return None;
    }
    let mut pieces = vec![];
    let mut weights = vec![];
    let mut lps = 0;
    let mut combo = vec![0.0; space.r];
    for t in 0..(1usize << free.len()) {
        let mut s: Vec<f64> = sigma.iter().map(|x| x.signum()).collect();
        let mut w = 1.0;
        for (b, &i) in free.iter().enumerate() {
            s[i] = if t >> b & 1 == 1 { 1.0 } else { -1.0 };
            w *= (1.0 + s[i] * sigma[i]) / 2.0;
        }
        if w == 0.0 {
            continue;
        }
        lps += 1;
        // under LIKQ every pattern is realized (Theorem A) and a linear solve gives the
        // witness; the strict LP (k + 1 variables) is for the other cases
        let (margin, e) = match space.likq_witness(data, &s) {
            Some(w) => w,
            None => space.strict_margin(data, &s).ok()?,
        };
        if margin <= TAU_LP {
            return None;
        }
        let rows = space.rows(data, &s);
        let offset = space.offset(data, &s, &rows);
        for (c, o) in combo.iter_mut().zip(&offset) {
            *c += w * o;
        }
        let tol = space.zero_tol();
        pieces.push(Piece {
            block: 0,
            signs: (0..k)
                .map(|i| {
                    if lp::max_abs(&rows[i]) <= tol {
                        0
                    } else {
                        s[i] as i8
                    }
                })
                .collect(),
            status: Status::Realized,
            offset,
            witness: Some(e),
        });
        weights.push((pieces.len() - 1, w));
    }
    // sanity: the weights reproduce v
    let w: Vec<f64> = v.iter().zip(&data.g0).map(|(a, b)| a - b).collect();
    let (cv, _) = space.project(data, &w);
    // the distance from the row space as the largest entry of the residual w − Q c_w (as
    // `check` does): the `project` distance, √(‖w‖² − ‖c_w‖²), cancels to noise of order
    // √ε·‖w‖ (6e-7 on the 269 322 variables of `tools/bench_mlp_vs_torch.py`'s MLP, which then
    // had no certificate)
    let dist = w
        .iter()
        .zip(&space.lift(data, &cv))
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    let scale = lp::max_abs(v).max(1.0);
    let err = combo
        .iter()
        .zip(&cv)
        .map(|(a, b)| (a - b).abs())
        .fold(dist, f64::max);
    if err > 1e-8 * scale {
        return None;
    }
    Some(Check {
        verdict: Verdict::In,
        reason: format!(
            "v = Σ w(σ) g(σ) over {} realized completions with product weights",
            pieces.len()
        ),
        certificate: Some(Certificate::Weights(weights)),
        pieces,
        blocks: vec![(0..k).collect()],
        lps,
        complete: false,
        hull: vec![],
    })
}
