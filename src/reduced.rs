//! The reduced space of the active rows (THEORY.md §6.1) and per-pattern switch rows.
//!
//! Factor J_α = U Qᵀ with Q (n×r) orthonormal, r = rank J_α. Every constraint row and every
//! piece-gradient offset lies in the row space of J_α, so all linear programs live in R^r:
//!
//! ```text
//! u_i(σ) = U_i + Σ_{j<i} L̂_ij σ_j u_j(σ)          (then ż_i(σ) = u_i(σ) Qᵀ)
//! c(σ)   = Σ_i b̂_i σ_i u_i(σ)                     (then g(σ) = g0 + c(σ) Qᵀ)
//! ```
//!
//! The factorization works from the Gram matrix G = J_α J_αᵀ (k×k) and its symmetric
//! eigendecomposition G = V Λ Vᵀ: U = V_r Λ_r^{1/2}, Q = J_αᵀ V_r Λ_r^{−1/2}. Q is never formed:
//! a witness e ∈ R^r lifts to d = J_αᵀ (V_r Λ_r^{−1/2} e), and a vector w ∈ R^n projects to
//! c_w = (J_α w) V_r Λ_r^{−1/2}, with ‖w‖² − ‖c_w‖² its squared distance from the row space.
//! The singular values of J_α are √λ; the smallest one decides LIKQ (THEORY §5.1).

use crate::anf::ActiveData;
use crate::lp::{self, LpError};
use nalgebra::{DMatrix, SymmetricEigen};

/// Symmetric eigendecomposition `a = V diag(λ) Vᵀ` (columns of V are eigenvectors), checked:
/// nalgebra's `SymmetricEigen` is tried first and its reconstruction verified (it mispairs
/// eigenvalues and eigenvectors on some sparse matrices, e.g. the Gram matrix of
/// `[3, 1, 0, 2]ᵀ ⊕ [1]`); on failure, cyclic Jacobi rotations, which are slower but reliable.
pub fn sym_eigen(a: &DMatrix<f64>) -> (Vec<f64>, DMatrix<f64>) {
    let n = a.nrows();
    let scale = a
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let ok = |vals: &[f64], vecs: &DMatrix<f64>| {
        let d = DMatrix::from_diagonal(&nalgebra::DVector::from_column_slice(vals));
        let r = vecs * d * vecs.transpose() - a;
        let orth = vecs.transpose() * vecs - DMatrix::identity(n, n);
        vals.iter().all(|v| v.is_finite())
            && r.iter().all(|v| v.abs() <= 1e-10 * scale)
            && orth.iter().all(|v| v.abs() <= 1e-10)
    };
    let e = SymmetricEigen::new(a.clone());
    let vals: Vec<f64> = e.eigenvalues.iter().copied().collect();
    if ok(&vals, &e.eigenvectors) {
        return (vals, e.eigenvectors);
    }
    jacobi(a)
}

/// Block size of [`blocked_cholesky`] and [`lower_triangular_inverse`].
const CHOL_BLOCK: usize = 64;

/// The Cholesky factor L (lower, G = L Lᵀ) of a symmetric matrix, by blocks of
/// [`CHOL_BLOCK`] columns: each diagonal block by nalgebra's Cholesky, the panel below it
/// by a triangular solve, and the trailing matrix updated by one GEMM (most of the k³/3
/// multiply-adds at matrix-product speed). `None` when G is not (numerically) positive
/// definite.
fn blocked_cholesky(g: &DMatrix<f64>) -> Option<DMatrix<f64>> {
    let n = g.nrows();
    let mut m = g.clone();
    let mut j = 0;
    while j < n {
        let b = CHOL_BLOCK.min(n - j);
        let l11 = nalgebra::Cholesky::new(m.view((j, j), (b, b)).clone_owned())?.unpack();
        m.view_mut((j, j), (b, b)).copy_from(&l11);
        let r = n - j - b;
        if r > 0 {
            // L21 = A21 L11⁻ᵀ, i.e. L11 L21ᵀ = A21ᵀ
            let a21t = m.view((j + b, j), (r, b)).transpose();
            let l21 = l11.solve_lower_triangular(&a21t)?.transpose();
            m.view_mut((j + b, j), (r, b)).copy_from(&l21);
            // A22 ← A22 − L21 L21ᵀ
            m.view_mut((j + b, j + b), (r, r))
                .gemm(-1.0, &l21, &l21.transpose(), 1.0);
        }
        j += b;
    }
    m.fill_upper_triangle(0.0, 1);
    m.iter().all(|v| v.is_finite()).then_some(m)
}

/// L⁻¹ of a lower-triangular L with a nonzero diagonal, by block rows of [`CHOL_BLOCK`]:
/// X_ii = L_ii⁻¹ and X_i,<i = −L_ii⁻¹ (L_i,<i X_<i,<i), the product by one GEMM per block
/// row. `None` on a zero or non-finite pivot.
fn lower_triangular_inverse(l: &DMatrix<f64>) -> Option<DMatrix<f64>> {
    let k = l.nrows();
    if (0..k).any(|i| !(l[(i, i)].is_finite() && l[(i, i)] != 0.0)) {
        return None;
    }
    let mut x = DMatrix::zeros(k, k);
    let mut i = 0;
    while i < k {
        let b = CHOL_BLOCK.min(k - i);
        let lii = l.view((i, i), (b, b)).clone_owned();
        let xii = lii.solve_lower_triangular(&DMatrix::identity(b, b))?;
        if i > 0 {
            let s = l.view((i, 0), (b, i)) * x.view((0, 0), (i, i));
            let xi = &xii * s;
            x.view_mut((i, 0), (b, i)).copy_from(&(-xi));
        }
        x.view_mut((i, i), (b, b)).copy_from(&xii);
        i += b;
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// The largest eigenvalue of a symmetric positive semidefinite operator `apply` on R^k, by
/// Lanczos iteration with full reorthogonalization from a fixed start: the largest Ritz value
/// (a lower estimate) once it settles to `tol` relative, checked every 5 steps (at most 150
/// steps). Lanczos needs far fewer steps than power iteration when the top of the spectrum
/// is clustered (inverse iteration for λ_min of a 1234-row Gram matrix had not settled after
/// 200 power steps).
fn extreme_eigenvalue(k: usize, tol: f64, apply: impl Fn(&DMatrix<f64>) -> DMatrix<f64>) -> f64 {
    // a start with a component along every eigenvector, deterministically
    let mut q = DMatrix::from_fn(k, 1, |i, _| {
        1.0 + ((i as f64) * 0.618_033_988_749_895).fract()
    });
    q /= q.norm();
    let mut basis: Vec<DMatrix<f64>> = Vec::new();
    let (mut alpha, mut beta): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut last = f64::NAN;
    let ritz = |alpha: &[f64], beta: &[f64]| {
        let m = alpha.len();
        let t = DMatrix::from_fn(m, m, |i, j| {
            if i == j {
                alpha[i]
            } else if i == j + 1 || j == i + 1 {
                beta[i.min(j)]
            } else {
                0.0
            }
        });
        sym_eigen(&t)
            .0
            .into_iter()
            .fold(f64::NEG_INFINITY, f64::max)
    };
    for step in 0..150.min(k) {
        let mut w = apply(&q);
        let a = q.dot(&w);
        alpha.push(a);
        basis.push(q.clone());
        // full reorthogonalization (twice is enough) keeps the basis orthonormal
        for _ in 0..2 {
            for v in &basis {
                let c = v.dot(&w);
                w -= v * c;
            }
        }
        let b = w.norm();
        let done = !(b.is_finite() && b > 1e-14 * a.abs().max(f64::MIN_POSITIVE));
        if done || (step + 1) % 5 == 0 || step + 1 == 150.min(k) {
            let r = ritz(&alpha, &beta);
            if done || (r - last).abs() <= tol * r.abs() {
                return r;
            }
            last = r;
        }
        beta.push(b);
        q = w / b;
    }
    last
}

/// Cyclic Jacobi eigenvalue iteration for a symmetric matrix.
fn jacobi(a0: &DMatrix<f64>) -> (Vec<f64>, DMatrix<f64>) {
    let n = a0.nrows();
    let mut a = a0.clone();
    let mut v = DMatrix::<f64>::identity(n, n);
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let mut off = 0.0;
        for p in 0..n {
            for q in 0..n {
                if p != q {
                    off += a[(p, q)] * a[(p, q)];
                }
            }
        }
        if off <= 1e-32 * total || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[(p, q)];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[(q, q)] - a[(p, p)]) / (2.0 * apq);
                let t = if theta == 0.0 {
                    1.0
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[(k, p)], a[(k, q)]);
                    a[(k, p)] = c * akp - s * akq;
                    a[(k, q)] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[(p, k)], a[(q, k)]);
                    a[(p, k)] = c * apk - s * aqk;
                    a[(q, k)] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[(k, p)], v[(k, q)]);
                    v[(k, p)] = c * vkp - s * vkq;
                    v[(k, q)] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[(i, i)]).collect(), v)
}

/// Call `each(i, p, J_α[i,p])` for every nonzero, in chunks of `width` columns (ascending),
/// the rows in order within a chunk.
fn by_chunks(data: &ActiveData, width: usize, mut each: impl FnMut(usize, usize, f64)) {
    let n = data.j.first().map_or(0, |r| r.len);
    let mut cur = vec![0usize; data.j.len()];
    let mut c0 = 0;
    while c0 < n {
        let c1 = (c0 + width).min(n);
        for (i, row) in data.j.iter().enumerate() {
            let mut t = cur[i];
            while t < row.idx.len() && row.idx[t] < c1 {
                each(i, row.idx[t], row.val[t]);
                t += 1;
            }
            cur[i] = t;
        }
        c0 = c1;
    }
}

/// Shortest run of columns that [`gram_matrix`] adds as one dense product.
pub const GRAM_RUN: usize = 8;
/// Longest such run (bounds the dense block at k × 1024: a dense layer's weight row of up to
/// 1024 inputs is one run).
pub const GRAM_RUN_MAX: usize = 1024;

/// The Gram matrix G = J_α J_αᵀ of the sparse rows (THEORY §6.1, "sparse rows"), column by
/// column: G = Σ_p J_α[:,p] J_α[:,p]ᵀ over the columns p that some row touches, at a cost of
/// Σ_p nnz(column p)² instead of k² sparse merges. A run of at least [`GRAM_RUN`] columns
/// (consecutive among the touched ones) with nearly the same rows (the inputs of one unit's
/// weight row in a dense layer, touched by every switch downstream of that unit) is one dense
/// product B Bᵀ over the union of its rows (`matrixmultiply`'s GEMM) when that costs at most
/// twice the column-by-column products; other columns are visited in ascending p, their
/// products added in the order the merge [`ActiveData::row_dot`] uses. (The sums are the
/// same up to rounding, not bitwise.)
pub fn gram_matrix(data: &ActiveData) -> DMatrix<f64> {
    let k = data.k();
    let n = data.j.first().map_or(0, |r| r.len);
    // The touched columns, numbered 0..nc in ascending order: a bitmap of the n columns
    // (n/8 bytes, in cache) and the count of set bits before each word give a column's
    // number, so that the column lists below have nc entries, not n.
    let words = n.div_ceil(64);
    let mut bits = vec![0u64; words];
    for row in &data.j {
        for &p in &row.idx {
            bits[p >> 6] |= 1u64 << (p & 63);
        }
    }
    let mut before = vec![0u32; words + 1];
    for w in 0..words {
        before[w + 1] = before[w] + bits[w].count_ones();
    }
    let nc = before[words] as usize;
    let number = |p: usize| {
        let below = bits[p >> 6] & ((1u64 << (p & 63)) - 1);
        (before[p >> 6] + below.count_ones()) as usize
    };
    // column lists (CSC) of the rows: counts, then (row, value) pairs grouped by column. Both
    // passes go through the columns in chunks holding about 2¹⁵ nonzeros, every row's
    // entries of one chunk at a time, so that the scattered writes stay within a cache-sized
    // part of the arrays (row by row over millions of columns, nearly every write missed).
    let total: usize = data.j.iter().map(|r| r.idx.len()).sum();
    let width = ((n as u128 * (1 << 15)) / total.max(1) as u128).max(64) as usize;
    let mut start = vec![0u32; nc + 1];
    by_chunks(data, width, |_, p, _| start[number(p) + 1] += 1);
    for c in 0..nc {
        start[c + 1] += start[c];
    }
    let nnz = start[nc] as usize;
    let mut fill = start.clone();
    let mut rows = vec![0u32; nnz];
    let mut vals = vec![0.0f64; nnz];
    by_chunks(data, width, |i, p, v| {
        let c = number(p);
        let at = fill[c] as usize;
        rows[at] = i as u32;
        vals[at] = v;
        fill[c] += 1;
    });
    // lower triangle, row-major k×k (rows within a column are ascending)
    let mut lower = vec![0.0f64; k * k];
    let pattern = |c: usize| &rows[start[c] as usize..start[c + 1] as usize];
    // A run of touched columns whose rows mostly coincide (the inputs of one unit's weight
    // row, touched by every switch downstream of that unit, save where an input is 0)
    // is added as one dense product B Bᵀ over the union of their rows, as long as that costs
    // at most twice the column-by-column products.
    let mut slot = vec![u32::MAX; k];
    let mut union: Vec<u32> = Vec::new();
    // only the columns some row touches (a run is any set of columns: the product does not
    // care whether they are adjacent, and the empty ones of a layer no switch reaches cost
    // nothing this way)
    let mut p = 0;
    while p < nc {
        union.clear();
        let mut sparse_cost = 0usize;
        let mut q = p;
        while q < nc && q - p < GRAM_RUN_MAX {
            let col = pattern(q);
            let fresh = col
                .iter()
                .filter(|&&r| slot[r as usize] == u32::MAX)
                .count();
            let m = union.len() + fresh;
            let cost = sparse_cost + col.len() * col.len();
            if q > p && m * m * (q - p + 1) > 2 * cost {
                break;
            }
            for &r in col {
                if slot[r as usize] == u32::MAX {
                    slot[r as usize] = union.len() as u32;
                    union.push(r);
                }
            }
            sparse_cost = cost;
            q += 1;
        }
        let m = union.len();
        if q - p >= GRAM_RUN && m >= 2 {
            // rows in ascending order, so that the lower triangle of B Bᵀ is that of G
            union.sort_unstable();
            for (x, &r) in union.iter().enumerate() {
                slot[r as usize] = x as u32;
            }
            let mut block = DMatrix::zeros(m, q - p);
            for (b, c) in (p..q).enumerate() {
                let (a, e) = (start[c] as usize, start[c + 1] as usize);
                for x in a..e {
                    block[(slot[rows[x] as usize] as usize, b)] = vals[x];
                }
            }
            let prod = &block * block.transpose();
            for y in 0..m {
                let iy = union[y] as usize;
                let col = &prod.as_slice()[y * m..(y + 1) * m];
                for x in y..m {
                    lower[union[x] as usize * k + iy] += col[x];
                }
            }
        } else {
            for c in p..q {
                let (a, b) = (start[c] as usize, start[c + 1] as usize);
                for x in a..b {
                    let (i, vi) = (rows[x] as usize, vals[x]);
                    let base = i * k;
                    for y in a..=x {
                        lower[base + rows[y] as usize] += vi * vals[y];
                    }
                }
            }
        }
        for &r in &union {
            slot[r as usize] = u32::MAX;
        }
        p = q;
    }
    let mut gram = DMatrix::zeros(k, k);
    for i in 0..k {
        for j in 0..=i {
            let v = lower[i * k + j];
            gram[(i, j)] = v;
            gram[(j, i)] = v;
        }
    }
    gram
}

/// Relative threshold under which a singular value of J_α counts as zero for the rank.
pub const RANK_TOL: f64 = 1e-7;
/// Relative smallest singular value needed for LIKQ; between [`RANK_TOL`] and this value the
/// rank is too close to call and LIKQ counts as failed (THEORY §6.6).
pub const LIKQ_TOL: f64 = 1e-6;
/// The Cholesky fast path certifies LIKQ only when λ_min(G) ≥ this · tr(G) (THEORY §6.6:
/// far enough above LIKQ_TOL² that the rounding of G and of its factor cannot matter).
pub const CHOL_MARGIN: f64 = 1e-8;
/// Strict-LP margin above which a pattern is PL-realized, τ_lp.
pub const TAU_LP: f64 = 1e-9;

/// The reduced coordinates of the active rows.
#[derive(Debug, Clone)]
pub struct ReducedSpace {
    /// Number of active switches k.
    pub k: usize,
    /// rank J_α = r.
    pub r: usize,
    /// U (k×r): J_α = U Qᵀ.
    pub u: DMatrix<f64>,
    /// W (k×r) with Wᵀ J_α = Qᵀ, i.e. Uᵀ W = I: lifting and projection through J_α
    /// (V_r Λ_r^{−1/2} from the eigendecomposition, L⁻ᵀ from the Cholesky factor).
    w: DMatrix<f64>,
    /// Singular values of J_α, descending: all of them from the eigendecomposition; on the
    /// Cholesky path (LIKQ certified, see [`ReducedSpace::new`]) only σ_max and σ_min,
    /// Lanczos estimates within the certified bounds.
    pub singular: Vec<f64>,
}

impl ReducedSpace {
    /// Factor J_α from its Gram matrix.
    pub fn new(data: &ActiveData) -> Self {
        let k = data.k();
        if k == 0 {
            return ReducedSpace {
                k,
                r: 0,
                u: DMatrix::zeros(0, 0),
                w: DMatrix::zeros(0, 0),
                singular: vec![],
            };
        }
        let gram = gram_matrix(data);
        if let Some(space) = Self::by_cholesky(&gram) {
            return space;
        }
        let (evals, evecs) = sym_eigen(&gram);
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| evals[b].total_cmp(&evals[a]));
        let singular: Vec<f64> = order.iter().map(|&i| evals[i].max(0.0).sqrt()).collect();
        let smax = singular[0];
        let keep: Vec<usize> = order
            .iter()
            .zip(&singular)
            .filter(|(_, &s)| smax > 0.0 && s > RANK_TOL * smax)
            .map(|(&i, _)| i)
            .collect();
        let r = keep.len();
        let mut u = DMatrix::zeros(k, r);
        let mut w = DMatrix::zeros(k, r);
        for (c, &i) in keep.iter().enumerate() {
            let s = evals[i].sqrt();
            for row in 0..k {
                let v = evecs[(row, i)];
                u[(row, c)] = v * s;
                w[(row, c)] = v / s;
            }
        }
        ReducedSpace {
            k,
            r,
            u,
            w,
            singular,
        }
    }

    /// The LIKQ fast path: when the Gram matrix G = J_α J_αᵀ = L Lᵀ has a Cholesky factor
    /// and the certified bound λ_min(G) ≥ 1/‖L⁻¹‖²_F (since ‖L⁻¹‖²_F = tr G⁻¹ = Σ 1/λᵢ) is
    /// at least [`CHOL_MARGIN`] · tr G ≥ [`CHOL_MARGIN`] · λ_max, J_α has full rank far above
    /// the LIKQ threshold (λ_min/λ_max > LIKQ_TOL² = 10⁻¹² with ten thousand times to spare
    /// for rounding), and U = L, W = L⁻ᵀ give the reduced coordinates
    /// (Q = L⁻¹ J_α has orthonormal rows). This costs k³/3 + k³/3 instead of the
    /// eigendecomposition and its check (about 9 k³). Otherwise `None`: the caller takes the
    /// eigendecomposition, which decides rank and LIKQ near the threshold.
    fn by_cholesky(gram: &DMatrix<f64>) -> Option<Self> {
        let k = gram.nrows();
        let trace: f64 = (0..k).map(|i| gram[(i, i)]).sum();
        if !(trace.is_finite() && trace > 0.0) {
            return None;
        }
        let l = blocked_cholesky(gram)?;
        let linv = lower_triangular_inverse(&l)?;
        let frob2: f64 = linv.iter().map(|v| v * v).sum();
        let lower = 1.0 / frob2;
        if !(lower.is_finite() && lower >= CHOL_MARGIN * trace) {
            return None;
        }
        // Reported values: λ_max by Lanczos on G, λ_min by Lanczos on G⁻¹ (x ← L⁻ᵀ L⁻¹ x,
        // two triangular solves; the pivots are nonzero, as L⁻¹ exists); Ritz values,
        // clamped into the certified ranges λ_min ≥ lower, λ_max ≤ tr G.
        let (lmax, lmin) = (
            extreme_eigenvalue(k, 1e-8, |x| gram * x),
            1.0 / extreme_eigenvalue(k, 1e-12, |x| {
                let y = l.solve_lower_triangular(x).unwrap_or_else(|| x.clone());
                l.tr_solve_lower_triangular(&y).unwrap_or(y)
            }),
        );
        // (max/min, not clamp: with k = 1 the bounds can cross by a rounding)
        let lmax = lmax.min(trace).max(lower);
        let lmin = lmin.min(lmax).max(lower);
        Some(ReducedSpace {
            k,
            r: k,
            u: l,
            w: linv.transpose(),
            singular: vec![lmax.sqrt(), lmin.sqrt()],
        })
    }

    /// σ_min(J_α) (0 when k = 0).
    pub fn sigma_min(&self) -> f64 {
        self.singular.last().copied().unwrap_or(0.0)
    }

    /// σ_max(J_α).
    pub fn sigma_max(&self) -> f64 {
        self.singular.first().copied().unwrap_or(0.0)
    }

    /// LIKQ: rank J_α = k, with σ_min clearly above the rank threshold.
    pub fn likq(&self) -> bool {
        self.k == 0 || (self.r == self.k && self.sigma_min() > LIKQ_TOL * self.sigma_max())
    }

    /// Lift a reduced direction e ∈ R^r to d = Q e ∈ R^n.
    pub fn lift(&self, data: &ActiveData, e: &[f64]) -> Vec<f64> {
        let n = data.g0.len();
        let mut d = vec![0.0; n];
        for i in 0..self.k {
            let coef: f64 = (0..self.r).map(|c| self.w[(i, c)] * e[c]).sum();
            if coef != 0.0 {
                for (p, v) in data.j[i].entries() {
                    d[p] += coef * v;
                }
            }
        }
        d
    }

    /// Project w ∈ R^n: `(c_w, distance of w from the row space)` with c_w = w Q.
    pub fn project(&self, data: &ActiveData, wv: &[f64]) -> (Vec<f64>, f64) {
        let jw: Vec<f64> = (0..self.k).map(|i| data.row_dot_dense(i, wv)).collect();
        let c: Vec<f64> = (0..self.r)
            .map(|col| (0..self.k).map(|i| jw[i] * self.w[(i, col)]).sum())
            .collect();
        let n2: f64 = wv.iter().map(|v| v * v).sum();
        let c2: f64 = c.iter().map(|v| v * v).sum();
        (c, (n2 - c2).max(0.0).sqrt())
    }

    /// Reduced switch rows u_i(σ) for a sign vector σ ∈ [−1,1]^k.
    pub fn rows(&self, data: &ActiveData, sigma: &[f64]) -> Vec<Vec<f64>> {
        let mut rows: Vec<Vec<f64>> = Vec::with_capacity(self.k);
        for i in 0..self.k {
            let mut row: Vec<f64> = (0..self.r).map(|c| self.u[(i, c)]).collect();
            for t in 0..i {
                let c = data.lhat[i][t] * sigma[t];
                if c != 0.0 {
                    for (a, b) in row.iter_mut().zip(&rows[t]) {
                        *a += c * b;
                    }
                }
            }
            rows.push(row);
        }
        rows
    }

    /// The reduced gradient offset c(σ) = Σ b̂_i σ_i u_i(σ), from rows of [`Self::rows`].
    pub fn offset(&self, data: &ActiveData, sigma: &[f64], rows: &[Vec<f64>]) -> Vec<f64> {
        let mut c = vec![0.0; self.r];
        for i in 0..self.k {
            let f = data.bhat[i] * sigma[i];
            if f != 0.0 {
                for (a, b) in c.iter_mut().zip(&rows[i]) {
                    *a += f * b;
                }
            }
        }
        c
    }

    /// Scale below which a reduced row counts as zero (a don't-care switch, THEORY §4).
    pub fn zero_tol(&self) -> f64 {
        1e-12 * self.sigma_max().max(1e-300)
    }

    /// The normalized strict-system rows ρ_i = σ_i u_i/‖u_i‖_∞ of the switches in `which`
    /// (zero rows are skipped: don't-care).
    pub fn strict_rows(&self, rows: &[Vec<f64>], sigma: &[f64], which: &[usize]) -> Vec<Vec<f64>> {
        let tol = self.zero_tol();
        which
            .iter()
            .filter_map(|&i| {
                let m = lp::max_abs(&rows[i]);
                (m > tol).then(|| rows[i].iter().map(|v| sigma[i] * v / m).collect())
            })
            .collect()
    }

    /// Under LIKQ, a witness of the sign pattern σ ∈ {±1}^k without a linear program (the
    /// construction of Theorem A, THEORY §5.1): the rows u_i(σ) are independent, so R e = σ
    /// (R the k×k matrix of the rows) has a solution, scaled to ‖e‖∞ = 1. Returns the strict
    /// margin min_i σ_i u_i·e / ‖u_i‖∞ computed from the rows (a checked number, not an
    /// assumption) and e; `None` when LIKQ fails or the margin is not above τ_lp.
    pub fn likq_witness(&self, data: &ActiveData, sigma: &[f64]) -> Option<(f64, Vec<f64>)> {
        if !self.likq() || self.k == 0 || self.r != self.k {
            return None;
        }
        let rows = self.rows(data, sigma);
        let k = self.k;
        // The rows are R = (I − L̂Σ)⁻¹ U, so R e = σ is U e = (I − L̂Σ) σ, and with U square
        // and Uᵀ W = I, e = Wᵀ (I − L̂Σ) σ: one product instead of a factorization of R.
        let rhs: Vec<f64> = (0..k)
            .map(|i| {
                let below: f64 = (0..i).map(|t| data.lhat[i][t] * sigma[t] * sigma[t]).sum();
                sigma[i] - below
            })
            .collect();
        let e: Vec<f64> = (0..k)
            .map(|c| (0..k).map(|i| self.w[(i, c)] * rhs[i]).sum())
            .collect();
        let scale = e.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        if !(scale.is_finite() && scale > 0.0) {
            return None;
        }
        let e: Vec<f64> = e.iter().map(|v| v / scale).collect();
        let mut margin = f64::INFINITY;
        for i in 0..k {
            let norm = lp::max_abs(&rows[i]);
            if norm <= self.zero_tol() {
                return None;
            }
            let v: f64 = rows[i].iter().zip(&e).map(|(a, b)| a * b).sum();
            margin = margin.min(sigma[i] * v / norm);
        }
        (margin > TAU_LP).then_some((margin, e))
    }

    /// Is the sign pattern σ ∈ {±1}^k PL-realized (strict LP margin above τ_lp)? Returns the
    /// margin and the reduced witness.
    pub fn strict_margin(
        &self,
        data: &ActiveData,
        sigma: &[f64],
    ) -> Result<(f64, Vec<f64>), LpError> {
        let rows = self.rows(data, sigma);
        let all: Vec<usize> = (0..self.k).collect();
        let rho = self.strict_rows(&rows, sigma, &all);
        let m = lp::strict_margin(&rho, self.r)?;
        Ok((m.t, m.e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Active data with only these rows of J_α (over n variables): L̂, g0, b̂ zero.
    fn rows_only(rows: Vec<crate::anf::SparseRow>, n: usize) -> ActiveData {
        let k = rows.len();
        ActiveData {
            active: (0..k).map(crate::graph::SwitchId).collect(),
            degenerate: vec![],
            j: rows,
            lhat: vec![vec![0.0; k]; k],
            g0: vec![0.0; n],
            bhat: vec![0.0; k],
        }
    }

    #[test]
    fn gram_by_columns_equals_row_merges() {
        // sparse rows with overlapping and disjoint supports, non-dyadic values
        let n = 40;
        let rows: Vec<crate::anf::SparseRow> = (0..7)
            .map(|i| {
                let d: Vec<f64> = (0..n)
                    .map(|p| {
                        if (p * (i + 3) + i) % 5 < 2 {
                            ((p * 7 + i * 13) % 11) as f64 / 3.0 - 1.7
                        } else {
                            0.0
                        }
                    })
                    .collect();
                crate::anf::SparseRow::from_dense(&d)
            })
            .collect();
        let k = rows.len();
        let data = rows_only(rows, n);
        let g = gram_matrix(&data);
        for i in 0..k {
            for j in 0..k {
                // bitwise: the patterns differ too much from column to column for a dense
                // run to pay, so the same products are added in the same order
                assert_eq!(
                    g[(i, j)].to_bits(),
                    data.row_dot(i.max(j), i.min(j)).to_bits()
                );
            }
        }
    }

    #[test]
    fn blocked_cholesky_and_inverse() {
        // sizes around the block size, SPD with non-dyadic entries
        for n in [1, 5, 64, 65, 150] {
            let b = DMatrix::from_fn(n, n + 3, |i, j| ((i * 31 + j * 17) % 23) as f64 / 7.0 - 1.5);
            let g = &b * b.transpose() + DMatrix::identity(n, n) * 0.1;
            let l = blocked_cholesky(&g).unwrap();
            let want = nalgebra::Cholesky::new(g.clone()).unwrap().unpack();
            let scale = g.amax();
            assert!((&l - &want).amax() <= 1e-10 * scale.sqrt(), "n = {n}");
            assert!((&l * l.transpose() - &g).amax() <= 1e-12 * scale, "n = {n}");
            let x = lower_triangular_inverse(&l).unwrap();
            let id = &x * &l - DMatrix::identity(n, n);
            assert!(id.amax() <= 1e-10, "n = {n}: {}", id.amax());
            assert!((0..n).all(|i| (i + 1..n).all(|j| x[(i, j)] == 0.0)));
        }
        // not positive definite
        let mut g = DMatrix::identity(70, 70);
        g[(69, 69)] = -1.0;
        assert!(blocked_cholesky(&g).is_none());
        let mut l = DMatrix::identity(3, 3);
        l[(1, 1)] = 0.0;
        assert!(lower_triangular_inverse(&l).is_none());
    }

    #[test]
    fn gram_with_runs_of_one_pattern() {
        // rows 0, 2, 3 share columns 5..40 (a run), row 1 has columns 0..12 and 38..50, row 4
        // is empty; non-dyadic values
        let n = 50;
        let dense = |i: usize, p: usize| -> f64 {
            let on = match i {
                0 | 2 | 3 => (5..40).contains(&p) || (i == 2 && p == 45),
                1 => p < 12 || (38..50).contains(&p),
                _ => false,
            };
            if on {
                ((p * 7 + i * 13) % 11) as f64 / 3.0 - 1.7 + 1e-3 * i as f64
            } else {
                0.0
            }
        };
        let rows: Vec<crate::anf::SparseRow> = (0..5)
            .map(|i| {
                crate::anf::SparseRow::from_dense(&(0..n).map(|p| dense(i, p)).collect::<Vec<_>>())
            })
            .collect();
        let g = gram_matrix(&rows_only(rows, n));
        let k = g.nrows();
        for i in 0..k {
            for j in 0..k {
                let want: f64 = (0..n).map(|p| dense(i, p) * dense(j, p)).sum();
                assert!(
                    (g[(i, j)] - want).abs() <= 1e-13 * want.abs().max(1.0),
                    "{i},{j}"
                );
                assert_eq!(g[(i, j)], g[(j, i)]);
            }
        }
        assert_eq!(g[(4, 4)], 0.0);
        assert_eq!(g[(1, 4)], 0.0);
    }

    #[test]
    fn eigen_is_checked_and_repaired() {
        // nalgebra 0.33 mispairs this one
        let m = DMatrix::from_row_slice(
            4,
            4,
            &[
                9., 3., 0., 6., 3., 1., 0., 2., 0., 0., 1., 0., 6., 2., 0., 4.,
            ],
        );
        let (vals, vecs) = sym_eigen(&m);
        let r = &vecs
            * DMatrix::from_diagonal(&nalgebra::DVector::from_vec(vals.clone()))
            * vecs.transpose();
        assert!((r - &m).abs().max() < 1e-10);
        let mut v = vals;
        v.sort_by(f64::total_cmp);
        assert!(v[0].abs() < 1e-12 && v[1].abs() < 1e-12);
        assert!((v[2] - 1.0).abs() < 1e-12 && (v[3] - 14.0).abs() < 1e-12);
        let (jv, jvec) = jacobi(&m);
        let r = &jvec * DMatrix::from_diagonal(&nalgebra::DVector::from_vec(jv)) * jvec.transpose();
        assert!((r - m).abs().max() < 1e-12);
    }
}
