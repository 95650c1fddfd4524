//! Small dense linear programs behind kinkcheck's certificates (THEORY §6.2 and §6.5).
//!
//! Every LP lives in the reduced space: the caller passes the active gradients (or the
//! rows of a constraint system) as dense vectors of a common length `dim`. All LPs are
//! solved directly in primal form with the pure-Rust simplex solver `microlp` (through
//! `good_lp`), which returns no duals; each dual quantity we need is its own LP.
//!
//! * [`strict_margin`] (strict LP): `max t` s.t. `rows_i · e ≥ t`, `-1 ≤ e_j ≤ 1`, `t ≤ 1`.
//!   `t* > 0` iff the strict system `rows · e > 0` is solvable, with witness `e`.
//! * [`gordan`] (Gordan LP): `min ε` s.t. `‖Σ_i y_i rows_i‖_∞ ≤ ε`, `y ≥ 0`, `Σ y = 1`.
//!   By Gordan's alternative `ε* = 0` iff the strict system is infeasible; in fact
//!   `min(1, ε*) ≤ t* ≤ min(1, dim·ε*)` (LP duality with the dual norm `‖·‖_1`).
//! * [`stiemke`] (Stiemke test): find `y ≥ 1` with `Σ_i y_i rows_i = 0` exactly.
//! * [`hull_distance`] (hull LP): `min δ` s.t. `‖Σ_k λ_k points_k − target‖_∞ ≤ δ`,
//!   `λ` in the simplex: the ∞-norm distance from `target` to `conv(points)`.
//! * [`separate`] (separation LP): `max h·target − β` s.t. `h·points_k ≤ β`, `‖h‖_1 ≤ 1`.
//!   It is the LP dual of the hull LP, so `γ* = δ*`; `γ* > 0` gives a strictly
//!   separating normal `h`.
//!
//! Robustness: inputs are validated ([`LpError::Shape`]); each LP is solved on data
//! scaled to unit max-abs entry (an exact reformulation; the Stiemke equations are scaled
//! one by one); solver panics are caught; every returned point is re-checked against the
//! original constraints (relative tolerance 1e-7) and on failure the LP is solved once
//! more with variables and constraints in reverse order (which changes simplex pivoting)
//! before [`LpError::Solver`] is returned. Every reported value (`t`, `eps`, `delta`,
//! `gamma`, `beta`) is recomputed from the returned certificate, so the two agree exactly;
//! since any feasible certificate gives a valid bound (`t`, `gamma` from below, `eps`,
//! `delta` from above), solver inaccuracy can only make a bound weaker, never wrong.

use good_lp::{
    variable, Expression, ProblemVariables, ResolutionError, Solution, SolutionStatus, SolverModel,
};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Errors from the LP layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LpError {
    /// The solver failed, panicked, or returned a point that violates the constraints, or
    /// an LP that is always feasible and bounded was reported otherwise (one-line message).
    #[error("LP solver failure: {0}")]
    Solver(String),
    /// Malformed input: mismatched lengths or a NaN/infinite entry.
    #[error("bad LP input: {0}")]
    Shape(String),
}

/// Result of [`strict_margin`]: optimal margin `t` and the witness direction `e`.
#[derive(Debug, Clone, PartialEq)]
pub struct Margin {
    /// `min(1, min_i rows_i · e)`, recomputed from `e`; `> 0` means `rows · e > 0` holds.
    pub t: f64,
    /// Witness direction with `-1 ≤ e_j ≤ 1`.
    pub e: Vec<f64>,
}

/// Result of [`gordan`]: the multipliers `y` and the residual `eps`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gordan {
    /// `max_j |Σ_i y_i rows_ij|`, recomputed from `y` (`+∞` when there are no rows).
    pub eps: f64,
    /// Convex multipliers (`y ≥ 0`, `Σ y = 1`), one per row.
    pub y: Vec<f64>,
}

/// Result of [`hull_distance`].
#[derive(Debug, Clone, PartialEq)]
pub struct Hull {
    /// `max_j |Σ_k λ_k points_kj − target_j|`, recomputed from `weights` (`+∞` if no points).
    pub delta: f64,
    /// Convex weights `λ` (non-negative, summing to 1), one per point.
    pub weights: Vec<f64>,
}

/// Result of [`separate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Separation {
    /// `h · target − beta`; `> 0` means `target` is strictly separated from the hull.
    pub gamma: f64,
    /// Separating normal with `‖h‖_1 ≤ 1`.
    pub h: Vec<f64>,
    /// `max_k h · points_k`, recomputed from `h`.
    pub beta: f64,
}

/// Relative feasibility tolerance used to accept the solver's primal point.
const FEAS_TOL: f64 = 1e-7;
/// Marks the internal "Stiemke residual too large" failure, which maps to `Ok(None)`.
const RESIDUAL: &str = "residual above tolerance";
const INF: f64 = f64::INFINITY;

type R<T> = Result<T, LpError>;
type Rows = [Vec<f64>];
/// A constraint `(terms, is_equality, rhs)`: `Σ coef·var (= or ≤) rhs`.
type Con = (Vec<(usize, f64)>, bool, f64);

/// Largest absolute entry of `v` (0 for an empty slice, NaN if any entry is NaN).
pub fn max_abs(v: &[f64]) -> f64 {
    let m = v.iter().fold(0.0, |m: f64, x| m.max(x.abs()));
    if v.iter().any(|x| x.is_nan()) {
        f64::NAN
    } else {
        m
    }
}

/// `v` divided by its largest absolute entry; returned unchanged if that is 0 or not finite.
pub fn normalize_inf(v: &[f64]) -> Vec<f64> {
    let m = max_abs(v);
    let ok = m > 0.0 && m.is_finite();
    v.iter().map(|x| if ok { x / m } else { *x }).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn solver_err(what: &str, msg: impl std::fmt::Display) -> LpError {
    LpError::Solver(format!("{what}: {msg}").replace('\n', " "))
}

/// `return Err(LpError::Solver("<what>: <formatted message>"))`.
macro_rules! fail {
    ($what:expr, $($arg:tt)*) => { return Err(solver_err($what, format!($($arg)*))) };
}

/// Checks that all rows have length `dim` and finite entries; returns the max-abs entry.
fn check_rows(rows: &[Vec<f64>], dim: usize, what: &str) -> R<f64> {
    for (i, r) in rows.iter().enumerate() {
        let shape = |msg: String| Err(LpError::Shape(format!("{what}: row {i} {msg}")));
        if r.len() != dim {
            return shape(format!("has length {} but dim is {dim}", r.len()));
        }
        if let Some(j) = r.iter().position(|x| !x.is_finite()) {
            return shape(format!("entry {j} is not finite"));
        }
    }
    Ok(rows.iter().map(|r| max_abs(r)).fold(0.0, f64::max))
}

/// Checks `points` against `target` and returns the max-abs entry over both.
fn check_points(points: &[Vec<f64>], target: &[f64], what: &str) -> R<f64> {
    if let Some(j) = target.iter().position(|x| !x.is_finite()) {
        return Err(LpError::Shape(format!("{what}: target {j} is not finite")));
    }
    Ok(check_rows(points, target.len(), what)?.max(max_abs(target)))
}

/// Runs `f(false)`; on a solver error runs `f(true)` (reversed model), keeping the first
/// error if both fail.
fn retry<T>(f: impl Fn(bool) -> R<T>) -> R<T> {
    match f(false) {
        Err(LpError::Solver(first)) => f(true).map_err(|_| LpError::Solver(first)),
        r => r,
    }
}

/// A tiny dense LP: bounded variables (numbered from 0 in creation order) and `≤`/`=` rows.
#[derive(Default)]
struct Model {
    vars: Vec<(f64, f64, f64)>, // (lower, upper, objective coefficient)
    cons: Vec<Con>,
}

impl Model {
    /// Adds `n` variables in `[lo, hi]` with objective coefficients `obj(k)`; returns the
    /// index of the first one.
    fn vars(&mut self, n: usize, lo: f64, hi: f64, obj: impl Fn(usize) -> f64) -> usize {
        let first = self.vars.len();
        self.vars.extend((0..n).map(|k| (lo, hi, obj(k))));
        first
    }

    /// Adds `Σ coef·var (= or ≤) rhs`, dropping zero coefficients.
    fn con(&mut self, terms: impl IntoIterator<Item = (usize, f64)>, eq: bool, rhs: f64) {
        let terms = terms.into_iter().filter(|t| t.1 != 0.0).collect();
        self.cons.push((terms, eq, rhs));
    }

    /// Solves the LP (`rev`: create variables and constraints in reverse order, which
    /// changes simplex pivoting); `Ok(None)` means the solver proved it infeasible.
    fn solve(&self, what: &str, maximize: bool, rev: bool) -> R<Option<Vec<f64>>> {
        // Constraints without variables are decided here (microlp is not asked about them).
        let bad = |(t, eq, rhs): &Con| t.is_empty() && (*rhs < 0.0 || *eq && *rhs != 0.0);
        if self.cons.iter().any(bad) {
            return Ok(None);
        }
        match catch_unwind(AssertUnwindSafe(|| self.solve_inner(maximize, rev))) {
            Err(_) => fail!(what, "microlp panicked"),
            Ok(Err(ResolutionError::Infeasible)) => Ok(None),
            Ok(Err(e)) => fail!(what, "{e}"),
            Ok(Ok(x)) if x.iter().all(|v| v.is_finite()) => Ok(Some(x)),
            Ok(Ok(_)) => fail!(what, "non-finite value in solution"),
        }
    }

    /// Like [`Model::solve`] for LPs that are always feasible.
    fn solve_some(&self, what: &str, maximize: bool, rev: bool) -> R<Vec<f64>> {
        self.solve(what, maximize, rev)?
            .ok_or_else(|| solver_err(what, "reported infeasible"))
    }

    fn solve_inner(&self, maximize: bool, rev: bool) -> Result<Vec<f64>, ResolutionError> {
        let mut order: Vec<usize> = (0..self.vars.len()).collect();
        if rev {
            order.reverse();
        }
        let mut pv = ProblemVariables::new();
        let mut xs: Vec<_> = order
            .iter()
            .map(|&i| pv.add(variable().bounds(self.vars[i].0..=self.vars[i].1)))
            .collect();
        if rev {
            xs.reverse();
        }
        let mut objective = Expression::with_capacity(xs.len());
        order
            .iter()
            .filter(|&&i| self.vars[i].2 != 0.0)
            .for_each(|&i| objective.add_mul(self.vars[i].2, xs[i]));
        let problem = if maximize {
            pv.maximise(objective)
        } else {
            pv.minimise(objective)
        };
        let mut model = problem.using(good_lp::microlp);
        let mut cons: Vec<_> = self.cons.iter().filter(|c| !c.0.is_empty()).collect();
        if rev {
            cons.reverse();
        }
        for (terms, eq, rhs) in cons {
            let mut e = Expression::with_capacity(terms.len());
            terms.iter().for_each(|&(i, c)| e.add_mul(c, xs[i]));
            model.add_constraint(if *eq { e.eq(*rhs) } else { e.leq(*rhs) });
        }
        let sol = model.solve()?;
        if !matches!(sol.status(), SolutionStatus::Optimal) {
            return Err(ResolutionError::Other("solution not proven optimal"));
        }
        Ok(xs.iter().map(|&x| sol.value(x)).collect())
    }
}

/// Minimizes `max_j |Σ_k w_k vecs_kj − target_j|` over the simplex (shared by the Gordan
/// and hull LPs); returns the recomputed ∞-norm residual and the cleaned weights.
fn simplex_linf(vecs: &Rows, target: &[f64], m: f64, what: &str, rev: bool) -> R<(f64, Vec<f64>)> {
    let (n, sc) = (vecs.len(), if m > 0.0 { m } else { 1.0 });
    let mut lp = Model::default();
    lp.vars(n, 0.0, INF, |_| 0.0); // weights: variables 0..n
    let d = lp.vars(1, 0.0, INF, |_| 1.0);
    lp.con((0..n).map(|k| (k, 1.0)), true, 1.0);
    for (j, &x) in target.iter().enumerate() {
        for s in [1.0, -1.0] {
            let col = vecs.iter().enumerate().map(|(k, v)| (k, s * v[j] / sc));
            lp.con(col.chain([(d, -1.0)]), false, s * x / sc);
        }
    }
    let x = lp.solve_some(what, false, rev)?;
    // Clean the weights: tolerate tiny negatives and a sum slightly off 1, then normalize.
    if let Some(v) = x[..n].iter().find(|&&v| v < -FEAS_TOL) {
        fail!(what, "negative weight {v:e}");
    }
    let s: f64 = x[..n].iter().map(|v| v.max(0.0)).sum();
    if (s - 1.0).abs() > FEAS_TOL * (1.0 + n as f64) {
        fail!(what, "weights sum to {s} instead of 1");
    }
    let weights: Vec<f64> = x[..n].iter().map(|v| v.max(0.0) / s).collect();
    let d_solver = x[d] * sc;
    let mut delta = 0.0_f64;
    for (j, &x) in target.iter().enumerate() {
        let (mut s, mut vmax) = (-x, 0.0_f64);
        for (wk, v) in weights.iter().zip(vecs) {
            s += wk * v[j];
            vmax = vmax.max(v[j].abs());
        }
        if s.abs() > d_solver + FEAS_TOL * (1.0 + vmax + x.abs() + d_solver.abs()) {
            fail!(what, "coordinate {j} residual {s:e} > bound {d_solver:e}");
        }
        delta = delta.max(s.abs());
    }
    if !delta.is_finite() {
        fail!(what, "non-finite residual");
    }
    Ok((delta, weights))
}

/// Strict LP: `max t` s.t. `rows_i · e ≥ t` for all `i`, `-1 ≤ e_j ≤ 1`, `t ≤ 1`.
///
/// `t > 0` certifies that `rows · e > 0` is solvable with witness `e`; when `t* = 0` the
/// recomputed `t` may be a rounding error below 0. No rows: `t = 1`, `e = 0`. `dim = 0`
/// with rows: `t = 0`, `e` empty.
pub fn strict_margin(rows: &[Vec<f64>], dim: usize) -> R<Margin> {
    let m = check_rows(rows, dim, "strict_margin")?;
    let (t, e) = match (rows.is_empty(), dim) {
        (true, _) => (1.0, vec![0.0; dim]),
        (false, 0) => (0.0, vec![]),
        _ => retry(|rev| strict_lp(rows, dim, m, rev))?,
    };
    Ok(Margin { t, e })
}

fn strict_lp(rows: &[Vec<f64>], dim: usize, m: f64, rev: bool) -> R<(f64, Vec<f64>)> {
    const WHAT: &str = "strict_margin";
    let sc = if m > 0.0 { m } else { 1.0 };
    let mut lp = Model::default();
    // e: variables 0..dim. Scaled t' = t / sc with cap max(1, 1/sc): a cap below 1 would
    // drown in microlp's absolute tolerance, and for sc ≥ 1 a capped t' = 1 still certifies
    // t = 1. Since min_i rows'_i · e ≥ -dim, the lower bound is inactive.
    lp.vars(dim, -1.0, 1.0, |_| 0.0);
    let t = lp.vars(1, -(dim as f64) - 1.0, (1.0 / sc).max(1.0), |_| 1.0);
    for r in rows {
        let terms = r.iter().enumerate().map(|(k, &c)| (k, -c / sc));
        lp.con(terms.chain([(t, 1.0)]), false, 0.0);
    }
    let x = lp.solve_some(WHAT, true, rev)?;
    if let Some(v) = x[..dim].iter().find(|v| v.abs() > 1.0 + FEAS_TOL) {
        fail!(WHAT, "witness entry {v} outside [-1, 1]");
    }
    let e: Vec<f64> = x[..dim].iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    let t_solver = x[t] * sc;
    let mut tv = 1.0_f64;
    for (i, r) in rows.iter().enumerate() {
        let (v, l1) = (dot(r, &e), r.iter().map(|c| c.abs()).sum::<f64>());
        if v < t_solver - FEAS_TOL * (1.0 + l1 + t_solver.abs()) {
            fail!(WHAT, "row {i}: rows·e = {v:e} < t = {t_solver:e}");
        }
        tv = tv.min(v);
    }
    if !tv.is_finite() {
        fail!(WHAT, "non-finite margin");
    }
    Ok((tv, e))
}

/// Gordan LP: `min ε` s.t. `-ε ≤ (Σ_i y_i rows_i)_j ≤ ε`, `y ≥ 0`, `Σ y = 1`.
///
/// `eps ≈ 0` certifies that `rows · e > 0` is infeasible. No rows: `eps = +∞`, `y` empty.
/// `dim = 0`: `eps = 0` with uniform `y`.
pub fn gordan(rows: &[Vec<f64>], dim: usize) -> R<Gordan> {
    let m = check_rows(rows, dim, "gordan")?;
    let (eps, y) = match (rows.len(), dim) {
        (0, _) => (INF, vec![]),
        (n, 0) => (0.0, vec![1.0 / n as f64; n]),
        _ => retry(|rev| simplex_linf(rows, &vec![0.0; dim], m, "gordan", rev))?,
    };
    Ok(Gordan { eps, y })
}

/// Stiemke test: finds `y` with `y_i ≥ 1` and `Σ_i y_i rows_i = 0` (minimizing `Σ y`).
///
/// Returns `Ok(None)` if the solver proves infeasibility, if the returned `y` has a
/// max-abs residual above `1e-9 · (1 + max|row entry| · max y)`, or if the solver fails
/// but [`strict_margin`] finds `t > 0` (which rules out any such `y`). No rows:
/// `Some(vec![])`; `dim = 0`: `Some` of all ones.
pub fn stiemke(rows: &[Vec<f64>], dim: usize) -> R<Option<Vec<f64>>> {
    let m = check_rows(rows, dim, "stiemke")?;
    if rows.is_empty() || dim == 0 {
        return Ok(Some(vec![1.0; rows.len()]));
    }
    match retry(|rev| stiemke_lp(rows, dim, m, rev)) {
        Err(LpError::Solver(msg)) if msg.ends_with(RESIDUAL) => Ok(None),
        Err(e) => match strict_margin(rows, dim) {
            Ok(s) if s.t > 0.0 => Ok(None),
            _ => Err(e),
        },
        r => r,
    }
}

fn stiemke_lp(rows: &[Vec<f64>], dim: usize, m: f64, rev: bool) -> R<Option<Vec<f64>>> {
    let mut lp = Model::default();
    lp.vars(rows.len(), 1.0, INF, |_| 1.0); // y: variables 0..n
    for j in 0..dim {
        // Each equation `Σ_i y_i rows_ij = 0` is scaled on its own (exact).
        let cj = rows.iter().map(|r| r[j].abs()).fold(0.0, f64::max);
        let terms = rows.iter().enumerate().map(|(k, r)| (k, r[j] / cj));
        lp.con(terms.filter(|_| cj > 0.0), true, 0.0);
    }
    let Some(x) = lp.solve("stiemke", false, rev)? else {
        return Ok(None);
    };
    if let Some(v) = x.iter().find(|&&v| v < 1.0 - FEAS_TOL) {
        fail!("stiemke", "multiplier {v} below 1");
    }
    let y: Vec<f64> = x.iter().map(|&v| v.max(1.0)).collect();
    // Residual test `|Σ_i y_i rows_ij| ≤ 1e-9 (1 + m·max y)`, divided by m against overflow.
    let sc = if m > 0.0 { m } else { 1.0 };
    let tol = 1e-9 * (1.0 / sc + y.iter().fold(1.0, |a: f64, &b| a.max(b)));
    let resid = |j: usize| {
        y.iter()
            .zip(rows)
            .map(|(w, r)| w * (r[j] / sc))
            .sum::<f64>()
            .abs()
    };
    if (0..dim).any(|j| resid(j) > tol || resid(j).is_nan()) {
        fail!("stiemke", "{RESIDUAL}");
    }
    Ok(Some(y))
}

/// Hull LP: `min δ` s.t. `-δ ≤ (Σ_k λ_k points_k − target)_j ≤ δ`, `Σ λ = 1`, `λ ≥ 0`.
///
/// `delta` is the ∞-norm distance from `target` to `conv(points)`. No points:
/// `delta = +∞`, `weights` empty. Empty `target` (dimension 0): `delta = 0`, uniform weights.
pub fn hull_distance(points: &[Vec<f64>], target: &[f64]) -> R<Hull> {
    let m = check_points(points, target, "hull_distance")?;
    let (delta, weights) = match (points.len(), target.len()) {
        (0, _) => (INF, vec![]),
        (n, 0) => (0.0, vec![1.0 / n as f64; n]),
        _ => retry(|rev| simplex_linf(points, target, m, "hull_distance", rev))?,
    };
    Ok(Hull { delta, weights })
}

/// Grouped hull LP (THEORY §6.4–§6.5 in full coordinates): the ∞-norm distance from `target`
/// to the Minkowski sum `conv(groups[0]) + conv(groups[1]) + …`, i.e.
/// `min δ` s.t. `-δ ≤ (Σ_b Σ_k λ_bk groups[b][k] − target)_j ≤ δ`, `Σ_k λ_bk = 1` for every
/// group `b`, `λ ≥ 0`. With one group it is [`hull_distance`]. Coordinates on which every group
/// is constant (common in R^n: variables no active switch reaches) do not enter the LP; they
/// bound δ from below and are counted in the recomputed `delta`. Weights are returned group
/// after group (flattened). A group without points: `delta = +∞`, weights empty.
pub fn hull_distance_groups(groups: &[Vec<Vec<f64>>], target: &[f64]) -> R<Hull> {
    let mut m = max_abs(target);
    for g in groups {
        m = m.max(check_points(g, target, "hull_distance_groups")?);
    }
    if groups.iter().any(|g| g.is_empty()) {
        return Ok(Hull {
            delta: INF,
            weights: vec![],
        });
    }
    let dim = target.len();
    // per coordinate: the constant sum over groups when every group is constant there
    let constant: Vec<Option<f64>> = (0..dim)
        .map(|j| {
            groups.iter().try_fold(0.0, |acc, g| {
                let c = g[0][j];
                g.iter().all(|p| p[j] == c).then_some(acc + c)
            })
        })
        .collect();
    retry(|rev| hull_groups_lp(groups, target, &constant, m, rev))
}

fn hull_groups_lp(
    groups: &[Vec<Vec<f64>>],
    target: &[f64],
    constant: &[Option<f64>],
    m: f64,
    rev: bool,
) -> R<Hull> {
    const WHAT: &str = "hull_distance_groups";
    let sc = if m > 0.0 { m } else { 1.0 };
    let total: usize = groups.iter().map(|g| g.len()).sum();
    let lb = target
        .iter()
        .zip(constant)
        .filter_map(|(x, c)| c.map(|c| (c - x).abs() / sc))
        .fold(0.0, f64::max);
    let mut lp = Model::default();
    lp.vars(total, 0.0, INF, |_| 0.0);
    let d = lp.vars(1, lb, INF, |_| 1.0);
    let mut first = 0;
    for g in groups {
        lp.con((first..first + g.len()).map(|k| (k, 1.0)), true, 1.0);
        first += g.len();
    }
    let flat: Vec<&Vec<f64>> = groups.iter().flatten().collect();
    for (j, &x) in target.iter().enumerate() {
        if constant[j].is_some() {
            continue;
        }
        for s in [1.0, -1.0] {
            let col = flat.iter().enumerate().map(|(k, p)| (k, s * p[j] / sc));
            lp.con(col.chain([(d, -1.0)]), false, s * x / sc);
        }
    }
    let x = lp.solve_some(WHAT, false, rev)?;
    let mut weights = Vec::with_capacity(total);
    let mut first = 0;
    for g in groups {
        let w = &x[first..first + g.len()];
        if let Some(v) = w.iter().find(|&&v| v < -FEAS_TOL) {
            fail!(WHAT, "negative weight {v:e}");
        }
        let sum: f64 = w.iter().map(|v| v.max(0.0)).sum();
        if (sum - 1.0).abs() > FEAS_TOL * (1.0 + g.len() as f64) {
            fail!(WHAT, "weights of a group sum to {sum} instead of 1");
        }
        weights.extend(w.iter().map(|v| v.max(0.0) / sum));
        first += g.len();
    }
    // recompute δ from the weights, over every coordinate
    let mut delta = 0.0_f64;
    for (j, &t) in target.iter().enumerate() {
        let v: f64 = flat.iter().zip(&weights).map(|(p, w)| w * p[j]).sum();
        delta = delta.max((v - t).abs());
    }
    if !delta.is_finite() {
        fail!(WHAT, "non-finite residual");
    }
    let d_solver = x[d] * sc;
    if delta > d_solver + FEAS_TOL * (1.0 + m + d_solver.abs()) {
        fail!(WHAT, "residual {delta:e} > bound {d_solver:e}");
    }
    Ok(Hull { delta, weights })
}

/// Separation LP: `max h·target − β` s.t. `h·points_k ≤ β` for all `k`, `‖h‖_1 ≤ 1`.
///
/// The LP dual of [`hull_distance`] (so `gamma == delta` at optimality); `gamma > 0` means
/// `target` is strictly separated from `conv(points)` by the normal `h`. No points:
/// `Separation { gamma: +∞, h: zeros, beta: -∞ }` (the max over an empty set is `-∞`).
/// Empty `target`: `gamma = 0`, `h` empty, `beta = 0`.
pub fn separate(points: &[Vec<f64>], target: &[f64]) -> R<Separation> {
    let m = check_points(points, target, "separate")?;
    let (gamma, h, beta) = match (points.is_empty(), target.len()) {
        (true, d) => (INF, vec![0.0; d], f64::NEG_INFINITY),
        (false, 0) => (0.0, vec![], 0.0),
        _ => retry(|rev| separate_lp(points, target, m, rev))?,
    };
    Ok(Separation { gamma, h, beta })
}

fn separate_lp(points: &Rows, target: &[f64], m: f64, rev: bool) -> R<(f64, Vec<f64>, f64)> {
    const WHAT: &str = "separate";
    let (dim, sc) = (target.len(), if m > 0.0 { m } else { 1.0 });
    // Variables 0..dim are h⁺, dim..2·dim are h⁻ (sign `sg(k)`), then β.
    let sg = |k: usize| if k < dim { 1.0 } else { -1.0 };
    let mut lp = Model::default();
    lp.vars(2 * dim, 0.0, INF, |k| sg(k) * target[k % dim] / sc);
    // Scaled |h · points'_k| ≤ 1, so β' ∈ [-1, 1] loses nothing.
    let beta = lp.vars(1, -1.0, 1.0, |_| -1.0);
    lp.con((0..2 * dim).map(|k| (k, 1.0)), false, 1.0);
    for p in points {
        let terms = (0..2 * dim).map(|k| (k, sg(k) * p[k % dim] / sc));
        lp.con(terms.chain([(beta, -1.0)]), false, 0.0);
    }
    let x = lp.solve_some(WHAT, true, rev)?;
    if let Some(v) = x[..2 * dim].iter().find(|&&v| v < -FEAS_TOL) {
        fail!(WHAT, "negative split part {v:e}");
    }
    let l1_split: f64 = x[..2 * dim].iter().map(|v| v.max(0.0)).sum();
    if l1_split > 1.0 + FEAS_TOL * (1.0 + 2.0 * dim as f64) {
        fail!(WHAT, "‖h‖_1 = {l1_split} exceeds 1");
    }
    let mut h: Vec<f64> = (0..dim)
        .map(|k| x[k].max(0.0) - x[k + dim].max(0.0))
        .collect();
    let l1: f64 = h.iter().map(|v| v.abs()).sum();
    if l1 > 1.0 {
        h.iter_mut().for_each(|v| *v /= l1);
    }
    let b_solver = x[beta] * sc;
    let mut bv = f64::NEG_INFINITY;
    for (k, p) in points.iter().enumerate() {
        let v = dot(&h, p);
        if v > b_solver + FEAS_TOL * (1.0 + max_abs(p) + b_solver.abs()) {
            fail!(WHAT, "point {k}: h·p = {v:e} > beta = {b_solver:e}");
        }
        bv = bv.max(v);
    }
    let gamma = dot(&h, target) - bv;
    if !gamma.is_finite() {
        fail!(WHAT, "non-finite gap");
    }
    Ok((gamma, h, bv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn simplex_ok(w: &[f64]) -> bool {
        w.iter().all(|&v| v >= 0.0) && (w.iter().sum::<f64>() - 1.0).abs() < 1e-12
    }

    /// Same operation order as `simplex_linf`, so results agree bit for bit.
    fn linf_resid(vecs: &[Vec<f64>], w: &[f64], target: &[f64]) -> f64 {
        let coord = |j: usize| {
            vecs.iter()
                .zip(w)
                .fold(-target[j], |s, (v, c)| s + c * v[j])
        };
        let abs: Vec<f64> = (0..target.len()).map(|j| coord(j).abs()).collect();
        abs.into_iter().fold(0.0, f64::max)
    }

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn hand_examples() {
        let opp = vec![vec![1.0], vec![-1.0]];
        assert!(strict_margin(&opp, 1).unwrap().t.abs() <= 1e-12);
        let g = gordan(&opp, 1).unwrap();
        assert!(g.eps <= 1e-12 && close(&g.y, &[0.5, 0.5], 1e-12));
        let y = stiemke(&opp, 1).unwrap().unwrap();
        assert!(close(&y, &[1.0, 1.0], 1e-9));

        let id = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let s = strict_margin(&id, 2).unwrap();
        assert_eq!((s.t, s.e), (1.0, vec![1.0, 1.0]));
        assert!((gordan(&id, 2).unwrap().eps - 0.5).abs() < 1e-12);
        assert_eq!(stiemke(&id, 2).unwrap(), None);

        let pts = vec![vec![0.0], vec![2.0]];
        let h = hull_distance(&pts, &[1.0]).unwrap();
        assert!(h.delta.abs() < 1e-12 && close(&h.weights, &[0.5, 0.5], 1e-12));
        assert!((hull_distance(&pts, &[3.0]).unwrap().delta - 1.0).abs() < 1e-12);
        let sep = separate(&pts, &[3.0]).unwrap();
        assert!(sep.gamma > 0.0 && (sep.gamma - 1.0).abs() < 1e-12);
        assert_eq!((sep.h, sep.beta), (vec![1.0], 2.0));
        assert!(separate(&pts, &[1.0]).unwrap().gamma.abs() < 1e-12);
    }

    #[test]
    fn edge_cases() {
        let m = strict_margin(&[], 3).unwrap();
        assert_eq!((m.t, m.e), (1.0, vec![0.0; 3]));
        assert_eq!(strict_margin(&[vec![], vec![]], 0).unwrap().t, 0.0);
        assert_eq!(strict_margin(&[vec![0.0, 0.0]], 2).unwrap().t, 0.0);
        assert_eq!(gordan(&[], 2).unwrap().eps, INF);
        assert_eq!(gordan(&[vec![], vec![]], 0).unwrap().y, vec![0.5, 0.5]);
        assert_eq!(gordan(&[vec![0.0]], 1).unwrap().eps, 0.0);
        assert_eq!(stiemke(&[], 2).unwrap(), Some(vec![]));
        assert_eq!(stiemke(&[vec![]], 0).unwrap(), Some(vec![1.0]));
        assert_eq!(stiemke(&[vec![0.0, 0.0]], 2).unwrap(), Some(vec![1.0]));
        assert_eq!(hull_distance(&[], &[1.0]).unwrap().delta, INF);
        assert_eq!(hull_distance(&[vec![]], &[]).unwrap().delta, 0.0);
        let s = separate(&[], &[1.0, 2.0]).unwrap();
        assert_eq!((s.gamma, s.beta, s.h), (INF, -INF, vec![0.0; 2]));
        assert_eq!(separate(&[vec![]], &[]).unwrap().gamma, 0.0);
        assert!(separate(&[vec![1.0]], &[1.0]).unwrap().gamma.abs() < 1e-12);
        assert_eq!((max_abs(&[]), max_abs(&[1.0, -3.0])), (0.0, 3.0));
        assert!(max_abs(&[1.0, f64::NAN]).is_nan());
        assert_eq!(normalize_inf(&[2.0, -4.0]), vec![0.5, -1.0]);
        assert_eq!(normalize_inf(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn shape_errors() {
        let bad = |r: R<()>| assert!(matches!(r, Err(LpError::Shape(_))));
        bad(strict_margin(&[vec![1.0]], 2).map(|_| ()));
        bad(gordan(&[vec![f64::NAN]], 1).map(|_| ()));
        bad(stiemke(&[vec![INF]], 1).map(|_| ()));
        bad(hull_distance(&[vec![1.0, 2.0]], &[1.0]).map(|_| ()));
        bad(separate(&[vec![1.0]], &[f64::NAN]).map(|_| ()));
    }

    #[test]
    fn scaling_is_harmless() {
        for s in [1e-12, 1e-6, 1.0, 1e6, 1e12] {
            let rows = vec![vec![s, 0.5 * s], vec![-s, 0.25 * s], vec![0.0, -s]];
            assert!(gordan(&rows, 2).unwrap().eps <= 1e-9 * s);
            assert!(strict_margin(&rows, 2).unwrap().t <= 1e-9 * s);
            assert!(stiemke(&rows, 2).unwrap().is_some());
            assert_eq!(strict_margin(&[vec![s, 0.0]], 2).unwrap().t, s.min(1.0));
            let (pts, x) = (vec![vec![0.0, 0.0], vec![s, s]], [2.0 * s, s]);
            let d = hull_distance(&pts, &x).unwrap().delta;
            let g = separate(&pts, &x).unwrap().gamma;
            assert!((d - s).abs().max((g - s).abs()) <= 1e-9 * s, "{s}: {d} {g}");
        }
    }

    fn instance() -> impl Strategy<Value = (Vec<Vec<f64>>, Vec<f64>)> {
        let entry = || prop_oneof![-3.0..3.0_f64, (-3i32..=3).prop_map(f64::from)];
        (1usize..=4).prop_flat_map(move |d| {
            let pts = proptest::collection::vec(proptest::collection::vec(entry(), d), 2..=6);
            (pts, proptest::collection::vec(entry(), d))
        })
    }

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(256, 0x6b63_0301, "proptest-regressions/lp.txt"))]

        #[test]
        fn duality_and_certificates((pts, x) in instance()) {
            let d = x.len();
            let h = hull_distance(&pts, &x).unwrap();
            let s = separate(&pts, &x).unwrap();
            prop_assert!((h.delta - s.gamma).abs() <= 1e-7, "delta {} gamma {}", h.delta, s.gamma);
            prop_assert!(simplex_ok(&h.weights));
            prop_assert_eq!(h.delta, linf_resid(&pts, &h.weights, &x));
            prop_assert!(s.h.iter().map(|v| v.abs()).sum::<f64>() <= 1.0 + 1e-12);
            let bmax = pts.iter().map(|p| dot(&s.h, p)).fold(f64::NEG_INFINITY, f64::max);
            prop_assert_eq!((s.beta, s.gamma), (bmax, dot(&s.h, &x) - bmax));

            let m = strict_margin(&pts, d).unwrap();
            let g = gordan(&pts, d).unwrap();
            prop_assert!(m.e.iter().all(|v| v.abs() <= 1.0));
            prop_assert_eq!(m.t, pts.iter().map(|r| dot(r, &m.e)).fold(1.0, f64::min));
            prop_assert!(simplex_ok(&g.y));
            prop_assert_eq!(g.eps, linf_resid(&pts, &g.y, &vec![0.0; d]));
            prop_assert!(!(m.t > 1e-7 && g.eps < 1e-9), "t {} eps {}", m.t, g.eps);
            prop_assert!(!(g.eps > 1e-7 && m.t < 1e-9), "t {} eps {}", m.t, g.eps);
            // LP duality: t* = min(1, min_y ‖Rᵀy‖₁), so min(1, ε*) ≤ t* ≤ min(1, dim·ε*).
            prop_assert!(m.t >= g.eps.min(1.0) - 1e-7 && m.t <= (d as f64 * g.eps).min(1.0) + 1e-7);

            if let Some(y) = stiemke(&pts, d).unwrap() {
                prop_assert!(y.iter().all(|&v| v >= 1.0));
                let ymax = y.iter().fold(1.0, |a: f64, &b| a.max(b));
                let sum = |j: usize| y.iter().zip(&pts).map(|(w, r)| w * r[j]).sum::<f64>();
                prop_assert!((0..d).all(|j| sum(j).abs() <= 1e-9 * (1.0 + 3.0 * ymax)));
                prop_assert!(g.eps <= 1e-9 && m.t <= 1e-9);
            }
            // one group is the plain hull LP; two groups: the Minkowski sum, whose distance is
            // at most that of any one sum of points and at least the hull LP's on the sums
            let one = hull_distance_groups(std::slice::from_ref(&pts), &x).unwrap();
            prop_assert!((one.delta - h.delta).abs() <= 1e-7, "{} {}", one.delta, h.delta);
            let (ga, gb) = pts.split_at(1);
            let two = hull_distance_groups(&[ga.to_vec(), gb.to_vec()], &x).unwrap();
            let sums: Vec<Vec<f64>> = gb.iter().map(|q| q.iter().zip(&ga[0]).map(|(a, b)| a + b).collect()).collect();
            let hs = hull_distance(&sums, &x).unwrap();
            prop_assert!((two.delta - hs.delta).abs() <= 1e-7, "{} {}", two.delta, hs.delta);
            prop_assert!(simplex_ok(&two.weights[..1]) && simplex_ok(&two.weights[1..]));
            // rows ∪ −rows always admits a Stiemke certificate.
            let neg = pts.iter().map(|r| r.iter().map(|v| -v).collect());
            let sym: Vec<Vec<f64>> = pts.iter().cloned().chain(neg).collect();
            prop_assert!(stiemke(&sym, d).unwrap().is_some());
        }
    }
}
