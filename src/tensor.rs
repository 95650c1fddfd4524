//! Tensor kernels for graph nodes that hold a whole tensor of one sample: N-d convolution
//! (N = 1, 2, 3), forward, tangent and adjoint.
//!
//! A convolution is a *smooth* elemental of the evaluation procedure (THEORY.md §2): it is
//! bilinear in (x, w) (affine with its bias), so it contributes to the partial derivatives
//! Z, L, a, b of the abs-normal form through its Jacobians and never creates a switch
//! (THEORY §1: only `abs` nodes are switches; a following relu or max-pool is lowered
//! separately). It is abs-affine in x when the weights are constants and vice versa (THEORY §4,
//! the same rule as a matrix–vector product). One convolution over one sample is one graph
//! node, so a sweep costs a few dense products, never one scalar node per multiply-add.
//!
//! Layout (ONNX without the batch axis, row-major): input `x` is `(C_in, *in_spatial)`,
//! weight `w` is `(C_out, C_in/group, *kernel)`, bias `(C_out)`, output
//! `(C_out, *out_spatial)`, with zero padding (asymmetric pads allowed), strides, dilations and
//! groups.
//!
//! Kernels (im2col + dense products). For group `g`, let `X_g` be the im2col matrix
//! (`(C_in/group)·|kernel|` rows, one column per output position, zero where a tap falls in the
//! padding), `W_g` the weight block (`C_out/group` rows) and `Y_g` the output block. Then
//!
//! ```text
//! forward   Y_g  = W_g X_g + b 1ᵀ
//! tangent   Ẏ_g  = W_g Ẋ_g + Ẇ_g X_g + ḃ 1ᵀ
//! adjoint   W̄_g += Ȳ_g X_gᵀ,   X̄_g = W_gᵀ Ȳ_g then scattered back (col2im) into x̄,
//!           b̄   += Ȳ 1
//! ```
//!
//! The products run through nalgebra's `gemm` on strided views of the flat buffers (no copy
//! of `w` or `y`, and transposes are just swapped strides); the im2col matrix lives in a
//! reused per-thread buffer. Pointwise convolutions (1×…×1 kernel, unit strides, no padding)
//! skip im2col. The adjoint does nothing when `Ȳ = 0` and, when `Ȳ` has few nonzeros (a
//! reverse sweep seeded at one switch reaches few outputs of the layer below), loops over the
//! nonzeros directly instead of forming `X_g`.

use crate::graph::ConvSpec;
use nalgebra::{Dyn, MatrixView, MatrixViewMut};
use std::cell::RefCell;

/// The validated geometry of one convolution (see [`ConvSpec`]), normalised to three spatial
/// axes: 1-d and 2-d convolutions get leading axes of size 1 (kernel 1, stride 1, no padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvGeometry {
    /// C_in.
    pub in_channels: usize,
    /// C_out.
    pub out_channels: usize,
    /// Number of groups.
    pub group: usize,
    /// Output spatial sizes, in the spec's own number of dimensions.
    pub out_spatial: Vec<usize>,
    inp: [usize; 3],
    k: [usize; 3],
    s: [usize; 3],
    pb: [usize; 3],
    d: [usize; 3],
    out: [usize; 3],
    /// Π in_spatial.
    in_size: usize,
    /// Π kernel.
    k_size: usize,
    /// Π out_spatial (output positions per channel).
    out_size: usize,
}

impl ConvGeometry {
    /// Validate a spec and derive its sizes. The error is a one-line message naming the field.
    pub fn new(spec: &ConvSpec) -> Result<ConvGeometry, String> {
        let n = spec.in_spatial.len();
        if !(1..=3).contains(&n) {
            return Err(format!(
                "a convolution needs 1 to 3 spatial dimensions, got {n}"
            ));
        }
        for (name, v) in [
            ("kernel", &spec.kernel),
            ("strides", &spec.strides),
            ("pads_begin", &spec.pads_begin),
            ("pads_end", &spec.pads_end),
            ("dilations", &spec.dilations),
        ] {
            if v.len() != n {
                return Err(format!(
                    "{name} has {} entries but the input has {n} spatial dimensions",
                    v.len()
                ));
            }
        }
        for (name, c) in [
            ("in_channels", spec.in_channels),
            ("out_channels", spec.out_channels),
            ("group", spec.group),
        ] {
            if c == 0 {
                return Err(format!("{name} is 0"));
            }
        }
        for (name, v) in [
            ("in_spatial", &spec.in_spatial),
            ("kernel", &spec.kernel),
            ("strides", &spec.strides),
            ("dilations", &spec.dilations),
        ] {
            if let Some(i) = v.iter().position(|&t| t == 0) {
                return Err(format!("{name}[{i}] is 0"));
            }
        }
        for (name, c) in [
            ("in_channels", spec.in_channels),
            ("out_channels", spec.out_channels),
        ] {
            if c % spec.group != 0 {
                return Err(format!("group {} does not divide {name} = {c}", spec.group));
            }
        }
        let overflow = || "convolution sizes overflow".to_string();
        let mut g = ConvGeometry {
            in_channels: spec.in_channels,
            out_channels: spec.out_channels,
            group: spec.group,
            out_spatial: Vec::with_capacity(n),
            inp: [1; 3],
            k: [1; 3],
            s: [1; 3],
            pb: [0; 3],
            d: [1; 3],
            out: [1; 3],
            in_size: 1,
            k_size: 1,
            out_size: 1,
        };
        for i in 0..n {
            let padded = spec.in_spatial[i]
                .checked_add(spec.pads_begin[i])
                .and_then(|t| t.checked_add(spec.pads_end[i]))
                .ok_or_else(overflow)?;
            let span = spec.dilations[i]
                .checked_mul(spec.kernel[i] - 1)
                .and_then(|t| t.checked_add(1))
                .ok_or_else(overflow)?;
            if span > padded {
                return Err(format!(
                    "the kernel spans {span} positions along spatial axis {i} (kernel {}, dilation {}) \
                     but the padded input has only {padded}",
                    spec.kernel[i], spec.dilations[i]
                ));
            }
            let o = (padded - span) / spec.strides[i] + 1;
            g.out_spatial.push(o);
            let j = 3 - n + i;
            g.inp[j] = spec.in_spatial[i];
            g.k[j] = spec.kernel[i];
            g.s[j] = spec.strides[i];
            g.pb[j] = spec.pads_begin[i];
            g.d[j] = spec.dilations[i];
            g.out[j] = o;
        }
        let prod = |v: &[usize]| {
            v.iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
                .ok_or_else(overflow)
        };
        g.in_size = prod(&g.inp)?;
        g.k_size = prod(&g.k)?;
        g.out_size = prod(&g.out)?;
        // every buffer length must be representable
        for v in [
            [spec.in_channels, g.in_size],
            [spec.out_channels, g.out_size],
            [spec.out_channels, spec.in_channels / spec.group * g.k_size],
            [spec.in_channels / spec.group * g.k_size, g.out_size],
        ] {
            prod(&v)?;
        }
        Ok(g)
    }

    /// C_in / group.
    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.group
    }
    /// C_out / group.
    pub fn out_per_group(&self) -> usize {
        self.out_channels / self.group
    }
    /// Length of the input `x`: C_in · Π in_spatial.
    pub fn x_len(&self) -> usize {
        self.in_channels * self.in_size
    }
    /// Length of the weight `w`: C_out · C_in/group · Π kernel.
    pub fn w_len(&self) -> usize {
        self.out_channels * self.kg()
    }
    /// Length of the output: C_out · Π out_spatial.
    pub fn y_len(&self) -> usize {
        self.out_channels * self.out_size
    }
    /// Multiply-adds of one forward product: C_out · Π out_spatial · C_in/group · Π kernel.
    pub fn macs(&self) -> usize {
        self.y_len() * self.kg()
    }
    /// Rows of the im2col matrix of one group.
    fn kg(&self) -> usize {
        self.in_per_group() * self.k_size
    }
    /// 1×…×1 kernel, unit strides, no padding: the im2col matrix of a group is its input.
    fn pointwise(&self) -> bool {
        self.k_size == 1 && self.s == [1; 3] && self.pb == [0; 3] && self.out == self.inp
    }
}

/// A strided matrix inside a flat buffer: element (i, j) at `i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    d: &'a [f64],
    r: usize,
    c: usize,
    rs: usize,
    cs: usize,
}

/// Row-major `r × c` matrix.
fn rm(d: &[f64], r: usize, c: usize) -> Mat<'_> {
    Mat {
        d,
        r,
        c,
        rs: c,
        cs: 1,
    }
}

/// Transpose of a row-major `c × r` matrix (a view, no copy).
fn tr(d: &[f64], r: usize, c: usize) -> Mat<'_> {
    Mat {
        d,
        r,
        c,
        rs: 1,
        cs: r,
    }
}

/// `C = A·B + β·C` with `C` row-major `a.r × b.c`: nalgebra's gemm (matrixmultiply) when every
/// dimension exceeds the size below which nalgebra itself would fall back to column-by-column
/// loops; direct loops otherwise (depthwise convolutions, tiny shapes).
fn gemm(beta: f64, c: &mut [f64], a: Mat, b: Mat) {
    debug_assert_eq!(a.c, b.r);
    let (m, k, n) = (a.r, a.c, b.c);
    debug_assert!(c.len() >= m * n);
    if m > 5 && k > 5 && n > 5 {
        let av = MatrixView::<f64, Dyn, Dyn, Dyn, Dyn>::from_slice_with_strides(
            a.d, a.r, a.c, a.rs, a.cs,
        );
        let bv = MatrixView::<f64, Dyn, Dyn, Dyn, Dyn>::from_slice_with_strides(
            b.d, b.r, b.c, b.rs, b.cs,
        );
        let mut cv = MatrixViewMut::<f64, Dyn, Dyn, Dyn, Dyn>::from_slice_with_strides_mut(
            &mut c[..m * n],
            m,
            n,
            n,
            1,
        );
        cv.gemm(1.0, &av, &bv, beta);
        return;
    }
    let c = &mut c[..m * n];
    if beta == 0.0 {
        c.fill(0.0);
    } else if beta != 1.0 {
        c.iter_mut().for_each(|t| *t *= beta);
    }
    if a.cs == 1 && b.rs == 1 {
        // rows of A and columns of B are contiguous: dot products
        for i in 0..m {
            let ar = &a.d[i * a.rs..][..k];
            for j in 0..n {
                let bc = &b.d[j * b.cs..][..k];
                c[i * n + j] += ar.iter().zip(bc).map(|(x, y)| x * y).sum::<f64>();
            }
        }
    } else {
        // C row i += a_il · (row l of B)
        for i in 0..m {
            let ci = &mut c[i * n..(i + 1) * n];
            for l in 0..k {
                let ail = a.d[i * a.rs + l * a.cs];
                if ail == 0.0 {
                    continue;
                }
                if b.cs == 1 {
                    for (t, &bv) in ci.iter_mut().zip(&b.d[l * b.rs..][..n]) {
                        *t += ail * bv;
                    }
                } else {
                    for (j, t) in ci.iter_mut().enumerate() {
                        *t += ail * b.d[l * b.rs + j * b.cs];
                    }
                }
            }
        }
    }
}

thread_local! {
    /// Reused im2col buffers (the matrix X_g and its adjoint), per thread.
    static SCRATCH: RefCell<(Vec<f64>, Vec<f64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Output positions `o < o_len` whose tap `o·s + off` lies inside `0 .. in_len`: `lo .. hi`.
#[inline]
fn valid_range(o_len: usize, s: usize, off: isize, in_len: usize) -> (usize, usize) {
    let lo = if off >= 0 {
        0
    } else {
        (off.unsigned_abs()).div_ceil(s)
    };
    let lim = in_len as isize - off;
    let hi = if lim <= 0 {
        0
    } else {
        (lim as usize).div_ceil(s).min(o_len)
    };
    (lo.min(hi), hi)
}

/// Does the im2col row of kernel offset `kk` cover every output position (no tap in the
/// padding)?
#[inline]
fn row_full(g: &ConvGeometry, kk: [usize; 3]) -> bool {
    (0..3).all(|a| {
        let off = (kk[a] * g.d[a]) as isize - g.pb[a] as isize;
        valid_range(g.out[a], g.s[a], off, g.inp[a]) == (0, g.out[a])
    })
}

/// Walk the taps of one im2col row (kernel offset `kk`): calls `f(output position, input
/// position, count)` for each run of valid output positions along the last axis (input
/// positions advance by the stride `s[2]`).
#[inline]
fn for_runs(g: &ConvGeometry, kk: [usize; 3], mut f: impl FnMut(usize, usize, usize)) {
    let off = |a: usize| (kk[a] * g.d[a]) as isize - g.pb[a] as isize;
    let r = [
        valid_range(g.out[0], g.s[0], off(0), g.inp[0]),
        valid_range(g.out[1], g.s[1], off(1), g.inp[1]),
        valid_range(g.out[2], g.s[2], off(2), g.inp[2]),
    ];
    if r[2].1 <= r[2].0 {
        return;
    }
    let n = r[2].1 - r[2].0;
    // valid: the first valid position has a nonnegative tap
    let i2 = ((r[2].0 * g.s[2]) as isize + off(2)) as usize;
    for o0 in r[0].0..r[0].1 {
        let i0 = ((o0 * g.s[0]) as isize + off(0)) as usize;
        for o1 in r[1].0..r[1].1 {
            let i1 = ((o1 * g.s[1]) as isize + off(1)) as usize;
            f(
                (o0 * g.out[1] + o1) * g.out[2] + r[2].0,
                (i0 * g.inp[1] + i1) * g.inp[2] + i2,
                n,
            );
        }
    }
}

/// The im2col matrix of group `gi` (row-major, `kg × out_size`) into `cols`.
fn im2col(g: &ConvGeometry, x: &[f64], gi: usize, cols: &mut [f64]) {
    let p = g.out_size;
    let s2 = g.s[2];
    let mut row = 0;
    for cl in 0..g.in_per_group() {
        let xc = &x[(gi * g.in_per_group() + cl) * g.in_size..][..g.in_size];
        for k0 in 0..g.k[0] {
            for k1 in 0..g.k[1] {
                for k2 in 0..g.k[2] {
                    let dst = &mut cols[row * p..(row + 1) * p];
                    if !row_full(g, [k0, k1, k2]) {
                        dst.fill(0.0);
                    }
                    for_runs(g, [k0, k1, k2], |o, i, n| {
                        if s2 == 1 {
                            dst[o..o + n].copy_from_slice(&xc[i..i + n]);
                        } else {
                            for (t, v) in dst[o..o + n].iter_mut().enumerate() {
                                *v = xc[i + t * s2];
                            }
                        }
                    });
                    row += 1;
                }
            }
        }
    }
}

/// `x̄ += col2im(cols)` for group `gi`: the transpose of [`im2col`].
fn col2im_add(g: &ConvGeometry, cols: &[f64], gi: usize, xbar: &mut [f64]) {
    let p = g.out_size;
    let s2 = g.s[2];
    let mut row = 0;
    for cl in 0..g.in_per_group() {
        let xc = &mut xbar[(gi * g.in_per_group() + cl) * g.in_size..][..g.in_size];
        for k0 in 0..g.k[0] {
            for k1 in 0..g.k[1] {
                for k2 in 0..g.k[2] {
                    let src = &cols[row * p..(row + 1) * p];
                    for_runs(g, [k0, k1, k2], |o, i, n| {
                        if s2 == 1 {
                            for (a, b) in xc[i..i + n].iter_mut().zip(&src[o..o + n]) {
                                *a += b;
                            }
                        } else {
                            for (t, b) in src[o..o + n].iter().enumerate() {
                                xc[i + t * s2] += b;
                            }
                        }
                    });
                    row += 1;
                }
            }
        }
    }
}

fn check_lens(g: &ConvGeometry, x: usize, w: usize, b: Option<usize>, y: usize) {
    assert!(
        x == g.x_len() && w == g.w_len() && b.is_none_or(|b| b == g.out_channels) && y == g.y_len(),
        "convolution buffers do not match the geometry"
    );
}

/// `Y += W_g · X_g(x)` for every group (`y` already holds the initial values).
fn add_products(g: &ConvGeometry, x: &[f64], w: &[f64], y: &mut [f64], cols: &mut Vec<f64>) {
    let (p, kg, cg) = (g.out_size, g.kg(), g.out_per_group());
    for gi in 0..g.group {
        let wg = &w[gi * cg * kg..][..cg * kg];
        let yg = &mut y[gi * cg * p..][..cg * p];
        if g.pointwise() {
            let xg = &x[gi * kg * p..][..kg * p];
            gemm(1.0, yg, rm(wg, cg, kg), rm(xg, kg, p));
        } else {
            cols.resize(kg * p, 0.0);
            im2col(g, x, gi, cols);
            gemm(1.0, yg, rm(wg, cg, kg), rm(cols, kg, p));
        }
    }
}

fn fill_bias(g: &ConvGeometry, bias: Option<&[f64]>, y: &mut [f64]) {
    match bias {
        Some(b) => {
            for (row, &bc) in y.chunks_exact_mut(g.out_size).zip(b) {
                row.fill(bc);
            }
        }
        None => y.fill(0.0),
    }
}

/// Forward: `y = conv(x, w) + bias` (overwrites `y`).
///
/// # Panics
/// If a buffer length does not match the geometry (the graph checks them when the node is
/// built).
pub fn conv_forward(g: &ConvGeometry, x: &[f64], w: &[f64], bias: Option<&[f64]>, y: &mut [f64]) {
    check_lens(g, x.len(), w.len(), bias.map(<[f64]>::len), y.len());
    fill_bias(g, bias, y);
    SCRATCH.with_borrow_mut(|(cols, _)| add_products(g, x, w, y, cols));
}

/// Tangent: `ẏ = conv(ẋ, w) + conv(x, ẇ) + ḃ` (overwrites `dy`); a zero `ẋ` or `ẇ` costs
/// nothing beyond the check.
///
/// # Panics
/// As [`conv_forward`].
#[allow(clippy::too_many_arguments)]
pub fn conv_tangent(
    g: &ConvGeometry,
    x: &[f64],
    w: &[f64],
    dx: &[f64],
    dw: &[f64],
    dbias: Option<&[f64]>,
    dy: &mut [f64],
) {
    check_lens(g, x.len(), w.len(), dbias.map(<[f64]>::len), dy.len());
    check_lens(g, dx.len(), dw.len(), None, dy.len());
    fill_bias(g, dbias, dy);
    let nz = |v: &[f64]| v.iter().any(|&t| t != 0.0);
    SCRATCH.with_borrow_mut(|(cols, _)| {
        if nz(dx) {
            add_products(g, dx, w, dy, cols);
        }
        if nz(dw) {
            add_products(g, x, dw, dy, cols);
        }
    });
}

/// Below this fraction of nonzeros in `Ȳ` the adjoint loops over the nonzeros directly.
const SPARSE_FRACTION: usize = 16;

/// Adjoint: accumulate `x̄ += J_xᵀ ȳ`, `w̄ += J_wᵀ ȳ`, `b̄ += J_bᵀ ȳ` for the requested ones
/// (`None` skips that operand). Returns at once when `ȳ = 0`.
///
/// # Panics
/// As [`conv_forward`].
#[allow(clippy::too_many_arguments)]
pub fn conv_adjoint(
    g: &ConvGeometry,
    x: &[f64],
    w: &[f64],
    ybar: &[f64],
    mut xbar: Option<&mut [f64]>,
    mut wbar: Option<&mut [f64]>,
    bbar: Option<&mut [f64]>,
) {
    check_lens(g, x.len(), w.len(), None, ybar.len());
    if let Some(xb) = &xbar {
        assert_eq!(xb.len(), x.len(), "x̄ does not match x");
    }
    if let Some(wb) = &wbar {
        assert_eq!(wb.len(), w.len(), "w̄ does not match w");
    }
    let p = g.out_size;
    if let Some(bb) = bbar {
        assert_eq!(bb.len(), g.out_channels, "b̄ does not match the bias");
        for (b, row) in bb.iter_mut().zip(ybar.chunks_exact(p)) {
            *b += row.iter().sum::<f64>();
        }
    }
    if xbar.is_none() && wbar.is_none() {
        return;
    }
    // one pass: the positions of the nonzeros, abandoned once there are too many
    let limit = ybar.len() / SPARSE_FRACTION;
    let mut nonzeros = Vec::new();
    for (i, &t) in ybar.iter().enumerate() {
        if t != 0.0 {
            if nonzeros.len() == limit {
                nonzeros.clear();
                nonzeros.push(usize::MAX); // marks "dense"
                break;
            }
            nonzeros.push(i);
        }
    }
    match nonzeros.first() {
        None => return,
        Some(&usize::MAX) => {}
        Some(_) => {
            sparse_adjoint(g, x, w, ybar, &nonzeros, xbar, wbar);
            return;
        }
    }
    let (kg, cg) = (g.kg(), g.out_per_group());
    SCRATCH.with_borrow_mut(|(cols, colsbar)| {
        for gi in 0..g.group {
            let yg = &ybar[gi * cg * p..][..cg * p];
            if yg.iter().all(|&t| t == 0.0) {
                continue;
            }
            let wg = &w[gi * cg * kg..][..cg * kg];
            if let Some(wb) = wbar.as_deref_mut() {
                let wbg = &mut wb[gi * cg * kg..][..cg * kg];
                let xg: &[f64] = if g.pointwise() {
                    &x[gi * kg * p..][..kg * p]
                } else {
                    cols.resize(kg * p, 0.0);
                    im2col(g, x, gi, cols);
                    cols
                };
                // W̄_g += Ȳ_g X_gᵀ
                gemm(1.0, wbg, rm(yg, cg, p), tr(xg, p, kg));
            }
            if let Some(xb) = xbar.as_deref_mut() {
                // X̄_g = W_gᵀ Ȳ_g, then col2im
                if g.pointwise() {
                    let xbg = &mut xb[gi * kg * p..][..kg * p];
                    gemm(1.0, xbg, tr(wg, kg, cg), rm(yg, cg, p));
                } else {
                    colsbar.resize(kg * p, 0.0);
                    gemm(0.0, colsbar, tr(wg, kg, cg), rm(yg, cg, p));
                    col2im_add(g, colsbar, gi, xb);
                }
            }
        }
    });
}

/// Kernel offsets `k < k_len` whose tap `o·s + k·d − pb` lies inside `0 .. in_len`.
#[inline]
fn tap_range(
    o: usize,
    s: usize,
    d: usize,
    pb: usize,
    k_len: usize,
    in_len: usize,
) -> (usize, usize) {
    // 0 ≤ o·s + k·d − pb < in_len  ⇔  pb − o·s ≤ k·d < in_len + pb − o·s
    let base = (o * s) as isize - pb as isize;
    valid_range(k_len, d, base, in_len)
}

/// The adjoint by direct loops over the nonzeros of `ȳ` (few of them, at `nonzeros`).
fn sparse_adjoint(
    g: &ConvGeometry,
    x: &[f64],
    w: &[f64],
    ybar: &[f64],
    nonzeros: &[usize],
    mut xbar: Option<&mut [f64]>,
    mut wbar: Option<&mut [f64]>,
) {
    let (p, kg, cg, cig) = (g.out_size, g.kg(), g.out_per_group(), g.in_per_group());
    for &idx in nonzeros {
        let l = ybar[idx];
        let (co, q) = (idx / p, idx % p);
        let gi = co / cg;
        let o = [
            q / (g.out[1] * g.out[2]),
            (q / g.out[2]) % g.out[1],
            q % g.out[2],
        ];
        let r: [(usize, usize); 3] =
            std::array::from_fn(|a| tap_range(o[a], g.s[a], g.d[a], g.pb[a], g.k[a], g.inp[a]));
        if (0..3).any(|a| r[a].0 >= r[a].1) {
            continue;
        }
        let i = |a: usize, k: usize| o[a] * g.s[a] + k * g.d[a] - g.pb[a];
        let wrow = &w[co * kg..][..kg];
        for cl in 0..cig {
            let xo = (gi * cig + cl) * g.in_size;
            for k0 in r[0].0..r[0].1 {
                let i0 = i(0, k0);
                for k1 in r[1].0..r[1].1 {
                    let i1 = i(1, k1);
                    let xrow = xo + (i0 * g.inp[1] + i1) * g.inp[2];
                    let wo = ((cl * g.k[0] + k0) * g.k[1] + k1) * g.k[2];
                    for k2 in r[2].0..r[2].1 {
                        let xi = xrow + i(2, k2);
                        if let Some(xb) = xbar.as_deref_mut() {
                            xb[xi] += l * wrow[wo + k2];
                        }
                        if let Some(wb) = wbar.as_deref_mut() {
                            wb[co * kg + wo + k2] += l * x[xi];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec2(cin: usize, cout: usize, hw: [usize; 2], k: [usize; 2]) -> ConvSpec {
        ConvSpec {
            in_channels: cin,
            out_channels: cout,
            in_spatial: hw.to_vec(),
            kernel: k.to_vec(),
            strides: vec![1, 1],
            pads_begin: vec![0, 0],
            pads_end: vec![0, 0],
            dilations: vec![1, 1],
            group: 1,
        }
    }

    /// Both gemm paths (nalgebra above 5 in every dimension, loops below) on all four
    /// transpose combinations, against the definition.
    #[test]
    fn gemm_paths_and_transposes() {
        for (m, k, n) in [(7, 9, 8), (2, 9, 8), (7, 3, 8), (7, 9, 1), (1, 1, 1)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.73).cos()).collect();
            let want: Vec<f64> = (0..m * n)
                .map(|ij| {
                    (0..k)
                        .map(|l| a[ij / n * k + l] * b[l * n + ij % n])
                        .sum::<f64>()
                        + 0.5
                })
                .collect();
            // transposed copies: at is k×m row-major, bt is n×k row-major
            let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let am = if ta { tr(&at, m, k) } else { rm(&a, m, k) };
                let bm = if tb { tr(&bt, k, n) } else { rm(&b, k, n) };
                let mut c = vec![1.0; m * n];
                gemm(0.5, &mut c, am, bm);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-12, "{m}×{k}×{n} {ta} {tb}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn valid_ranges() {
        // o·1 − 2 ∈ [0, 5) for o ∈ [2, 7) (o_len 6 clamps to 6)
        assert_eq!(valid_range(6, 1, -2, 5), (2, 6));
        // o·2 + 1 ∈ [0, 5): o ∈ {0, 1}
        assert_eq!(valid_range(4, 2, 1, 5), (0, 2));
        // all taps in the padding
        assert_eq!(valid_range(3, 1, 7, 5), (0, 0));
        assert_eq!(valid_range(3, 2, -9, 5), (3, 3));
    }

    #[test]
    fn tiny_2d_by_hand() {
        // 1 channel 3×3 input 1..9, 2×2 kernel of ones, pad 1 on the left/top only, stride 2
        let mut s = spec2(1, 1, [3, 3], [2, 2]);
        s.pads_begin = vec![1, 1];
        s.strides = vec![2, 2];
        let g = ConvGeometry::new(&s).unwrap();
        assert_eq!(g.out_spatial, vec![2, 2]);
        let x: Vec<f64> = (1..=9).map(f64::from).collect();
        let mut y = vec![0.0; 4];
        conv_forward(&g, &x, &[1.0; 4], Some(&[0.5]), &mut y);
        // windows: {1}, {2,3}, {4,7}, {5,6,8,9}
        assert_eq!(y, vec![1.5, 5.5, 11.5, 28.5]);
    }
}
