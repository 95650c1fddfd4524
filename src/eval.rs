//! Evaluation at a point, forward tangents, reverse adjoints and AD under a convention
//! (THEORY.md §2–§3).
//!
//! All sweeps work on flat buffers (one `f64` per element of every node). The reverse sweep
//! treats each switch by an [`AbsRule`]: propagate with a factor (abs′(zᵢ) = σ̃ᵢ) or *stop*
//! and record the adjoint arriving at `|zᵢ|` (treating uᵢ = |zᵢ| as an independent input,
//! which is how the abs-normal data Z, L, a, b and the reduced data J_α, L̂, g0, b̂ are read
//! off). Backward-mode AD under a convention is the reverse sweep with
//! abs′(zᵢ) = sign(zᵢ) off the kinks and the convention's σ̃ at exact zeros:
//!
//! ```text
//! AD(σ̃) = a + b Σ̃ (I − L Σ̃)⁻¹ Z
//! ```

use crate::convention::Convention;
use crate::graph::{describe_origin, ConvSpec, Graph, NodeId, Op, Role, Smooth, SwitchId};
use crate::tensor::{self, ConvGeometry};
use nalgebra::{DMatrix, DMatrixView, DMatrixViewMut};
use thiserror::Error;

/// A failure to evaluate the program at the point.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum EvalError {
    #[error("the point has {got} coordinates, the program has {want} variables")]
    PointLength { got: usize, want: usize },
    #[error("coordinate {index} of the point is {value} (NaN and infinities are not allowed)")]
    NonFinitePoint { index: usize, value: f64 },
    #[error("{place}: {what}")]
    Undefined { place: String, what: String },
    #[error("the graph has no scalar output")]
    NoOutput,
}

/// Values of every node at a point x̂ (flat, node `i` at `graph.node(i).offset`).
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The point x̂.
    pub x: Vec<f64>,
    /// Flat node values.
    pub values: Vec<f64>,
}

impl Evaluation {
    /// The value of a node.
    pub fn value<'a>(&'a self, g: &Graph, id: NodeId) -> &'a [f64] {
        let n = g.node(id);
        &self.values[n.offset..n.offset + n.len]
    }

    /// The scalar output y(x̂).
    pub fn output(&self, g: &Graph) -> Result<f64, EvalError> {
        let y = g.output().ok_or(EvalError::NoOutput)?;
        Ok(self.value(g, y)[0])
    }

    /// The switching variables z(x̂) in evaluation order.
    pub fn switches(&self, g: &Graph) -> Vec<f64> {
        let mut z = Vec::with_capacity(g.n_switches());
        for an in g.abs_nodes() {
            z.extend_from_slice(self.value(g, an.arg));
        }
        z
    }
}

#[inline]
fn bidx(len: usize, k: usize) -> usize {
    if len == 1 {
        0
    } else {
        k
    }
}

fn sigmoid(t: f64) -> f64 {
    if t >= 0.0 {
        1.0 / (1.0 + (-t).exp())
    } else {
        let e = t.exp();
        e / (1.0 + e)
    }
}

fn softplus(t: f64) -> f64 {
    if t > 30.0 {
        t + (-t).exp().ln_1p()
    } else {
        t.exp().ln_1p()
    }
}

fn smooth_value(f: Smooth, t: f64) -> f64 {
    match f {
        Smooth::Exp => t.exp(),
        Smooth::Log => t.ln(),
        Smooth::Sqrt => t.sqrt(),
        Smooth::Tanh => t.tanh(),
        Smooth::Sigmoid => sigmoid(t),
        Smooth::Softplus => softplus(t),
        Smooth::Sin => t.sin(),
        Smooth::Cos => t.cos(),
        Smooth::Erf => erf(t),
    }
}

/// Derivative of a smooth elemental at `t` (with value `v`).
fn smooth_deriv(f: Smooth, t: f64, v: f64) -> f64 {
    match f {
        Smooth::Exp => v,
        Smooth::Log => 1.0 / t,
        Smooth::Sqrt => 0.5 / v,
        Smooth::Tanh => 1.0 - v * v,
        Smooth::Sigmoid => v * (1.0 - v),
        Smooth::Softplus => sigmoid(t),
        Smooth::Sin => t.cos(),
        Smooth::Cos => -t.sin(),
        Smooth::Erf => std::f64::consts::FRAC_2_SQRT_PI * (-t * t).exp(),
    }
}

/// The error function, to a few units in the last place: for |t| < 3 the series
/// erf(t) = (2/√π) e^(−t²) Σ_{n≥0} 2ⁿ t^(2n+1) / (1·3·5···(2n+1)), whose terms are all
/// positive (no cancellation); beyond, 1 − erfc(t) with the continued fraction
/// erfc(t) = (e^(−t²)/√π) / (t + (1/2)/(t + 1/(t + (3/2)/(t + 2/(t + …))))).
pub fn erf(t: f64) -> f64 {
    if t.is_nan() || t == 0.0 {
        return t;
    }
    let a = t.abs();
    let r = if a < 3.0 {
        let a2 = a * a;
        let (mut term, mut sum) = (a, a);
        for n in 1..400 {
            term *= 2.0 * a2 / (2 * n + 1) as f64;
            sum += term;
            if term <= 1e-17 * sum {
                break;
            }
        }
        std::f64::consts::FRAC_2_SQRT_PI * (-a2).exp() * sum
    } else if a < 6.5 {
        let mut f = a;
        for n in (1..=120).rev() {
            f = a + (n as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    } else {
        1.0
    };
    r.copysign(t)
}

/// Evaluate every node at `x`. Fails with a message naming the place when a value is
/// undefined (log of a non-positive number, division by zero, overflow) or when a smooth
/// elemental is not differentiable there (sqrt at 0).
///
/// Dense layers over a batch (matrix–vector nodes sharing one weight node, see [`Schedule`])
/// are evaluated as one matrix–matrix product per layer.
pub fn evaluate(g: &Graph, x: &[f64]) -> Result<Evaluation, EvalError> {
    let mut values = Vec::new();
    evaluate_on(g, x, &vec![true; g.nodes().len()], &mut values)?;
    Ok(Evaluation {
        x: x.to_vec(),
        values,
    })
}

/// A point of the right length with finite entries.
fn check_point(g: &Graph, x: &[f64]) -> Result<(), EvalError> {
    if x.len() != g.n_vars() {
        return Err(EvalError::PointLength {
            got: x.len(),
            want: g.n_vars(),
        });
    }
    if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EvalError::NonFinitePoint { index, value });
    }
    Ok(())
}

/// The nodes the values of `targets` depend on (themselves included), as a mask by node.
pub fn ancestors(g: &Graph, targets: &[NodeId]) -> Vec<bool> {
    let mut seen = vec![false; g.nodes().len()];
    let mut stack: Vec<usize> = targets.iter().map(|t| t.index()).collect();
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut seen[i], true) {
            stack.extend(g.nodes()[i].op.operands().iter().map(|o| o.index()));
        }
    }
    seen
}

/// [`evaluate`] restricted to the nodes of `mask` (closed under operands, e.g. from
/// [`ancestors`]), into `vals` (resized to the value buffer's length; the values of the other
/// nodes are left as they were, so one buffer serves many points). Errors are those of the
/// masked nodes, as in node order. Like [`evaluate`], the masked members of a batched dense
/// layer are one matrix–matrix product.
pub fn evaluate_on(
    g: &Graph,
    x: &[f64],
    mask: &[bool],
    vals: &mut Vec<f64>,
) -> Result<(), EvalError> {
    check_point(g, x)?;
    vals.resize(g.total_len(), 0.0);
    if let Some(sched) = Schedule::new(g) {
        let mut ok = true;
        let mut live = Vec::new();
        for step in &sched.steps {
            match step {
                Step::Node(i) if mask[*i] => ok = eval_node(g, vals, x, *i).is_ok(),
                Step::Node(_) => {}
                Step::Group(members) => {
                    live.clear();
                    live.extend(members.iter().copied().filter(|&i| mask[i]));
                    if live.len() >= GEMM_MIN_DIM {
                        gemm_forward(g, vals, &live);
                        ok = live.iter().all(|&i| {
                            let n = &g.nodes()[i];
                            vals[n.offset..n.offset + n.len]
                                .iter()
                                .all(|v| v.is_finite())
                        });
                    } else {
                        for &i in &live {
                            ok = ok && eval_node(g, vals, x, i).is_ok();
                        }
                    }
                }
            }
            if !ok {
                break;
            }
        }
        if ok {
            return Ok(());
        }
        // an error: the evaluation in node order reports the first one in node order
    }
    for i in (0..g.nodes().len()).filter(|&i| mask[i]) {
        eval_node(g, vals, x, i)?;
    }
    Ok(())
}

/// The value of node `i` from its operands' values.
fn eval_node(g: &Graph, vals: &mut [f64], x: &[f64], i: usize) -> Result<(), EvalError> {
    let node = &g.nodes()[i];
    let off = node.offset;
    let len = node.len;
    let get = |_: &[f64], id: NodeId| -> (usize, usize) {
        let n = g.node(id);
        (n.offset, n.len)
    };
    let undefined = |what: String| EvalError::Undefined {
        place: describe_origin(g.origin_of(NodeId(i as u32))),
        what,
    };
    match &node.op {
        Op::Var { offset } => vals[off..off + len].copy_from_slice(&x[*offset..offset + len]),
        Op::Const(c) => vals[off..off + len].copy_from_slice(c),
        Op::Add(a, b) | Op::Sub(a, b) | Op::Mul(a, b) | Op::Div(a, b) => {
            let (oa, la) = get(vals, *a);
            let (ob, lb) = get(vals, *b);
            for k in 0..len {
                let va = vals[oa + bidx(la, k)];
                let vb = vals[ob + bidx(lb, k)];
                vals[off + k] = match &node.op {
                    Op::Add(..) => va + vb,
                    Op::Sub(..) => va - vb,
                    Op::Mul(..) => va * vb,
                    _ => {
                        if vb == 0.0 {
                            return Err(undefined("division by zero".into()));
                        }
                        va / vb
                    }
                };
            }
        }
        Op::Neg(a) => {
            let (oa, _) = get(vals, *a);
            for k in 0..len {
                vals[off + k] = -vals[oa + k];
            }
        }
        Op::PowI(a, p) => {
            let (oa, _) = get(vals, *a);
            for k in 0..len {
                let t = vals[oa + k];
                if t == 0.0 && *p < 0 {
                    return Err(undefined(format!("0 raised to the power {p}")));
                }
                vals[off + k] = t.powi(*p);
            }
        }
        Op::Unary(f, a) => {
            let (oa, _) = get(vals, *a);
            for k in 0..len {
                let t = vals[oa + k];
                match f {
                    Smooth::Log if t <= 0.0 => {
                        return Err(undefined(format!("log of {t} is undefined")))
                    }
                    Smooth::Sqrt if t < 0.0 => {
                        return Err(undefined(format!("sqrt of {t} is undefined")))
                    }
                    Smooth::Sqrt if t == 0.0 => {
                        return Err(undefined(
                            "sqrt is not differentiable at 0 (not locally Lipschitz)".into(),
                        ))
                    }
                    _ => {}
                }
                vals[off + k] = smooth_value(*f, t);
            }
        }
        Op::Abs(a) => {
            let (oa, _) = get(vals, *a);
            for k in 0..len {
                vals[off + k] = vals[oa + k].abs();
            }
        }
        Op::MatVec { w, x: xv, rows } => {
            let (ow, _) = get(vals, *w);
            let (ox, lx) = get(vals, *xv);
            for r in 0..*rows {
                let row = &vals[ow + r * lx..ow + (r + 1) * lx];
                let xs = &vals[ox..ox + lx];
                vals[off + r] = dot(row, xs);
            }
        }
        Op::Sum(a) => {
            let (oa, la) = get(vals, *a);
            vals[off] = vals[oa..oa + la].iter().sum();
        }
        Op::Gather(..) | Op::Concat(_) => {
            g.move_elements(&node.op, vals, off);
        }
        Op::LogSumExp(a) => {
            let (oa, la) = get(vals, *a);
            vals[off] = logsumexp(&vals[oa..oa + la]);
        }
        Op::Conv { x, w, bias, spec } => conv_forward_at(g, vals, off, *x, *w, *bias, spec),
    }
    if let Some(v) = vals[off..off + len].iter().find(|v| !v.is_finite()) {
        return Err(undefined(format!(
            "value {v} is not finite (overflow or undefined operation)"
        )));
    }
    Ok(())
}

/// Smallest weight matrix (rows × columns) whose matrix–vector nodes are batched into one
/// matrix–matrix product; smaller products stay per node.
const GEMM_MIN: usize = 4096;

/// Fewest members of a group, and fewest rows and columns of its weight matrix: nalgebra's
/// `gemm` hands products with every dimension above 5 to `matrixmultiply` (runtime SIMD
/// detection); smaller ones would take its generic loops, no faster than the node kernels.
const GEMM_MIN_DIM: usize = 6;

/// One step of a batched schedule: a node, or a group of matrix–vector nodes `W·x_s` sharing
/// their weight node `W` (one per sample of a batch), computed as one product `W·[x_1 … x_B]`.
#[derive(Debug, Clone)]
enum Step {
    Node(usize),
    Group(Vec<usize>),
}

/// A topological order by levels (a node's level is one more than its operands' highest), in
/// which the matrix–vector nodes of one level that share a weight node form one group. The
/// front ends build a batch sample after sample, so the same dense layer of all samples sits
/// on one level: evaluating it level by level turns B matrix–vector products into one
/// matrix–matrix product (and the same for the adjoints). Only graphs with such a group of
/// at least [`GEMM_MIN_DIM`] members of [`GEMM_MIN`] weights or more get a schedule; the others keep
/// the node order.
#[derive(Debug, Clone)]
struct Schedule {
    steps: Vec<Step>,
    /// For each node, the index of the step that computes it (a reverse sweep seeded at a
    /// node starts there: the later steps only hold nodes that do not reach it).
    step_of: Vec<u32>,
}

impl Schedule {
    fn new(g: &Graph) -> Option<Schedule> {
        let big = |op: &Op| match op {
            Op::MatVec { w, x, rows } => {
                w != x
                    && rows * g.len(*x) >= GEMM_MIN
                    && *rows >= GEMM_MIN_DIM
                    && g.len(*x) >= GEMM_MIN_DIM
            }
            _ => false,
        };
        if g.nodes().iter().filter(|n| big(&n.op)).count() < GEMM_MIN_DIM {
            return None;
        }
        let n = g.nodes().len();
        let mut level = vec![0u32; n];
        let mut top = 0;
        for (i, node) in g.nodes().iter().enumerate() {
            let l = node
                .op
                .operands()
                .iter()
                .map(|o| level[o.index()] + 1)
                .max()
                .unwrap_or(0);
            level[i] = l;
            top = top.max(l);
        }
        let mut by_level: Vec<Vec<usize>> = vec![vec![]; top as usize + 1];
        for i in 0..n {
            by_level[level[i] as usize].push(i);
        }
        let mut steps = Vec::with_capacity(n);
        let mut grouped = false;
        for nodes in by_level {
            let mut groups: Vec<((NodeId, usize, usize), Vec<usize>)> = vec![];
            for &i in &nodes {
                match &g.nodes()[i].op {
                    op @ Op::MatVec { w, x, rows } if big(op) => {
                        let key = (*w, *rows, g.len(*x));
                        match groups.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, m)) => m.push(i),
                            None => groups.push((key, vec![i])),
                        }
                    }
                    _ => steps.push(Step::Node(i)),
                }
            }
            for (_, m) in groups {
                if m.len() >= GEMM_MIN_DIM {
                    grouped = true;
                    steps.push(Step::Group(m));
                } else {
                    steps.extend(m.into_iter().map(Step::Node));
                }
            }
        }
        let mut step_of = vec![0u32; n];
        for (t, step) in steps.iter().enumerate() {
            match step {
                Step::Node(i) => step_of[*i] = t as u32,
                Step::Group(m) => m.iter().for_each(|&i| step_of[i] = t as u32),
            }
        }
        grouped.then_some(Schedule { steps, step_of })
    }
}

/// The weight slot and the `(x, out)` slots of a group of matrix–vector nodes.
fn group_slots(g: &Graph, members: &[usize]) -> (NodeId, usize, usize, Vec<(usize, usize)>) {
    let Op::MatVec { w, x, rows } = &g.nodes()[members[0]].op else {
        unreachable!("groups hold matrix–vector nodes only")
    };
    let lx = g.len(*x);
    let slots = members
        .iter()
        .map(|&i| match &g.nodes()[i].op {
            Op::MatVec { x, .. } => (g.node(*x).offset, g.nodes()[i].offset),
            _ => unreachable!("groups hold matrix–vector nodes only"),
        })
        .collect();
    (*w, *rows, lx, slots)
}

/// `out_s = W x_s` for every member of a group, as one product on `buf` (values, or the
/// magnitudes of [`magnitudes`]).
fn gemm_forward(g: &Graph, buf: &mut [f64], members: &[usize]) {
    let (w, rows, lx, slots) = group_slots(g, members);
    let ow = g.node(w).offset;
    let b = slots.len();
    let mut xs = Vec::with_capacity(lx * b);
    for &(ox, _) in &slots {
        xs.extend_from_slice(&buf[ox..ox + lx]);
    }
    let xm = DMatrixView::from_slice(&xs, lx, b);
    let wm = DMatrixView::from_slice_with_strides(&buf[ow..ow + rows * lx], rows, lx, lx, 1);
    let mut out = DMatrix::<f64>::zeros(rows, b);
    out.gemm(1.0, &wm, &xm, 0.0);
    for (s, &(_, oo)) in slots.iter().enumerate() {
        buf[oo..oo + rows].copy_from_slice(&out.as_slice()[s * rows..(s + 1) * rows]);
    }
}

/// The bound of node `i` for [`switch_states_bounded`]: a convolution's output channel c is
/// bounded by `‖w_c‖₁ · max m(x) + m(b_c)` (its window's terms, padding included, are at most
/// that), every other node as in [`magnitude_node`].
fn bound_node(g: &Graph, ev: &Evaluation, m: &mut [f64], i: usize) {
    let node = &g.nodes()[i];
    let Op::Conv { x, w, bias, spec } = &node.op else {
        return magnitude_node(g, ev, m, i);
    };
    let (lo, hi) = m.split_at_mut(node.offset);
    let out = &mut hi[..node.len];
    let top = lo[window(g, *x)].iter().fold(0.0f64, |a, &v| a.max(v));
    let wm = &lo[window(g, *w)];
    let per = wm.len() / spec.out_channels.max(1);
    let size = node.len / spec.out_channels.max(1);
    for c in 0..spec.out_channels {
        let norm: f64 = wm[c * per..(c + 1) * per].iter().sum();
        let b = bias.map_or(0.0, |b| lo[window(g, b)][c]);
        out[c * size..(c + 1) * size].fill(norm * top + b);
    }
}

/// `out_s,r = ‖W_r‖₁ · maxⱼ x_sj` for every member of a group, on magnitudes `buf` (all ≥ 0):
/// an upper bound of `(W x_s)_r`, at the cost of reading W once.
fn group_bound(g: &Graph, buf: &mut [f64], members: &[usize]) {
    let (w, rows, lx, slots) = group_slots(g, members);
    let ow = g.node(w).offset;
    let norms: Vec<f64> = (0..rows)
        .map(|r| buf[ow + r * lx..ow + (r + 1) * lx].iter().sum())
        .collect();
    for &(ox, oo) in &slots {
        let top = buf[ox..ox + lx].iter().fold(0.0f64, |a, &v| a.max(v));
        for (o, &nr) in buf[oo..oo + rows].iter_mut().zip(&norms) {
            *o = nr * top;
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    // independent accumulators over exact chunks: lets the compiler vectorize
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0.0f64; 8];
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `y += a·x`.
fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Two disjoint mutable windows `(offset, len)` of `v` (the slots of two different nodes).
fn disjoint_mut(v: &mut [f64], a: (usize, usize), b: (usize, usize)) -> (&mut [f64], &mut [f64]) {
    if a.0 < b.0 {
        let (lo, hi) = v.split_at_mut(b.0);
        (&mut lo[a.0..a.0 + a.1], &mut hi[..b.1])
    } else {
        let (lo, hi) = v.split_at_mut(a.0);
        (&mut hi[..a.1], &mut lo[b.0..b.0 + b.1])
    }
}

fn logsumexp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + v.iter().map(|t| (t - m).exp()).sum::<f64>().ln()
}

/// Magnitude of the terms that produced each value: linear operations add the magnitudes of
/// their terms, products multiply them, other nodes use |value|. Used for the near-active band
/// `0 < |zᵢ| ≤ τ_act · scaleᵢ` (THEORY §6.6): a cancellation to a tiny nonzero is then
/// recognised as a possible rounding of an exact kink.
pub fn magnitudes(g: &Graph, ev: &Evaluation) -> Vec<f64> {
    magnitudes_by(g, ev, Schedule::new(g).as_ref(), false)
}

/// [`magnitudes`] over the schedule `sched`; with `bound`, each batched product and each
/// convolution is replaced by its bound (see [`switch_states_bounded`]).
fn magnitudes_by(g: &Graph, ev: &Evaluation, sched: Option<&Schedule>, bound: bool) -> Vec<f64> {
    let mut m = vec![0.0; g.total_len()];
    let node = if bound { bound_node } else { magnitude_node };
    match sched {
        Some(sched) => {
            for step in &sched.steps {
                match step {
                    Step::Node(i) => node(g, ev, &mut m, *i),
                    Step::Group(members) if bound => group_bound(g, &mut m, members),
                    Step::Group(members) => gemm_forward(g, &mut m, members),
                }
            }
        }
        None => (0..g.nodes().len()).for_each(|i| node(g, ev, &mut m, i)),
    }
    m
}

/// The magnitude of node `i` from its operands' magnitudes.
fn magnitude_node(g: &Graph, ev: &Evaluation, m: &mut [f64], i: usize) {
    let node = &g.nodes()[i];
    let (off, len) = (node.offset, node.len);
    let slot = |id: NodeId| {
        let n = g.node(id);
        (n.offset, n.len)
    };
    match &node.op {
        Op::Add(a, b) | Op::Sub(a, b) | Op::Mul(a, b) => {
            let ((oa, la), (ob, lb)) = (slot(*a), slot(*b));
            for k in 0..len {
                let (ma, mb) = (m[oa + bidx(la, k)], m[ob + bidx(lb, k)]);
                m[off + k] = if matches!(node.op, Op::Mul(..)) {
                    ma * mb
                } else {
                    ma + mb
                };
            }
        }
        Op::Neg(a) | Op::Abs(a) => {
            let (oa, _) = slot(*a);
            for k in 0..len {
                m[off + k] = m[oa + k];
            }
        }
        Op::Div(a, b) => {
            let ((oa, la), (ob, lb)) = (slot(*a), slot(*b));
            for k in 0..len {
                m[off + k] = m[oa + bidx(la, k)] / ev.values[ob + bidx(lb, k)].abs();
            }
        }
        Op::MatVec { w, x, rows } => {
            let ((ow, _), (ox, lx)) = (slot(*w), slot(*x));
            let (lo, hi) = m.split_at_mut(off);
            let xm = &lo[ox..ox + lx];
            for r in 0..*rows {
                hi[r] = dot(&lo[ow + r * lx..ow + (r + 1) * lx], xm);
            }
        }
        Op::Sum(a) => {
            let (oa, la) = slot(*a);
            m[off] = m[oa..oa + la].iter().sum();
        }
        Op::Gather(..) | Op::Concat(_) => {
            g.move_elements(&node.op, m, off);
        }
        Op::Conv { x, w, bias, spec } => conv_forward_at(g, m, off, *x, *w, *bias, spec),
        _ => {
            for k in 0..len {
                m[off + k] = ev.values[off + k].abs();
            }
        }
    }
}

/// How a sweep treats switch i: propagate through |·| with the factor abs′(zᵢ), or stop there
/// (uᵢ = |zᵢ| is then an independent input whose adjoint is recorded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AbsRule {
    Factor(f64),
    Stop,
}

/// Result of a reverse sweep: the adjoint reaching x (a row vector of length n) and the
/// adjoints reaching the outputs of the stopped switches.
#[derive(Debug, Clone, Default)]
pub struct Adjoint {
    pub grad: Vec<f64>,
    /// `(switch, adjoint arriving at |z_switch|)`, nonzero entries only, ascending switch.
    pub stopped: Vec<(SwitchId, f64)>,
}

/// Where a reverse sweep is seeded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seed {
    /// The scalar output y.
    Output,
    /// The argument zᵢ of a switch.
    Switch(SwitchId),
}

/// Granularity (elements) of the dirty map of the adjoint buffer: a matrix–vector node's
/// weight adjoint is written row by row, and only the chunks of the rows it wrote are read
/// back (into the gradient) and cleared after the sweep.
const CHUNK: usize = 64;

/// Which parts of the adjoint buffer a sweep wrote, so that the next sweep starts from a zero
/// buffer without clearing all of it: sweeps seeded at one switch of a batched network reach
/// one sample's nodes and a few weight rows, and cost that, not the whole graph (THEORY §2,
/// "computing the reduced data by sweeps").
struct Marks {
    /// Node to be visited (its adjoint may be nonzero).
    touched: Vec<bool>,
    /// Node whose whole slot may have been written (else only its dirty chunks).
    full: Vec<bool>,
    /// Chunks of the adjoint buffer written by weight-row updates.
    dirty: Vec<bool>,
    /// Touched nodes, in the order they were first touched.
    visited: Vec<usize>,
}

impl Marks {
    fn new(nodes: usize, total: usize) -> Self {
        Marks {
            touched: vec![false; nodes],
            full: vec![false; nodes],
            dirty: vec![false; total.div_ceil(CHUNK)],
            visited: Vec::new(),
        }
    }

    fn touch(&mut self, i: usize) {
        if !self.touched[i] {
            self.touched[i] = true;
            self.visited.push(i);
        }
    }

    /// The adjoint of node `id` may be nonzero anywhere in its slot.
    fn mark(&mut self, id: NodeId) {
        self.touch(id.index());
        self.full[id.index()] = true;
    }

    /// `len` elements at buffer position `at`, inside the slot of node `id`, were written.
    fn mark_range(&mut self, id: NodeId, at: usize, len: usize) {
        self.touch(id.index());
        if len > 0 {
            for c in at / CHUNK..=(at + len - 1) / CHUNK {
                self.dirty[c] = true;
            }
        }
    }

    /// Call `f(start, end)` on the written sub-ranges of a slot: all of it for a `full` node,
    /// else its dirty chunks (clipped to the slot, adjacent ones merged).
    fn for_ranges(&self, full: bool, off: usize, len: usize, mut f: impl FnMut(usize, usize)) {
        if full || len == 0 {
            return f(off, off + len);
        }
        let end = off + len;
        let mut run: Option<(usize, usize)> = None;
        for c in off / CHUNK..=(end - 1) / CHUNK {
            if self.dirty[c] {
                let (a, b) = ((c * CHUNK).max(off), ((c + 1) * CHUNK).min(end));
                run = match run {
                    Some((s, e)) if e == a => Some((s, b)),
                    Some((s, e)) => {
                        f(s, e);
                        Some((a, b))
                    }
                    None => Some((a, b)),
                };
            }
        }
        if let Some((s, e)) = run {
            f(s, e);
        }
    }

    /// Zero what the sweep wrote and forget the marks. Chunks may straddle two nodes, so all
    /// slots are cleared before any chunk flag is reset.
    fn clear(&mut self, g: &Graph, adj: &mut [f64]) {
        if 4 * self.visited.len() >= g.nodes().len() {
            // a sweep that reached most of the graph: clearing everything is cheaper
            adj.iter_mut().for_each(|v| *v = 0.0);
            self.touched.iter_mut().for_each(|t| *t = false);
            self.full.iter_mut().for_each(|t| *t = false);
            self.dirty.iter_mut().for_each(|t| *t = false);
            self.visited.clear();
            return;
        }
        for &i in &self.visited {
            let node = &g.nodes()[i];
            self.for_ranges(self.full[i], node.offset, node.len, |a, b| {
                adj[a..b].iter_mut().for_each(|v| *v = 0.0)
            });
        }
        for &i in &self.visited {
            let node = &g.nodes()[i];
            let (off, len) = (node.offset, node.len);
            if len > 0 {
                for c in off / CHUNK..=(off + len - 1) / CHUNK {
                    self.dirty[c] = false;
                }
            }
            self.touched[i] = false;
            self.full[i] = false;
        }
        self.visited.clear();
    }
}

/// The gradient of a sweep, as the sweep produces it: dense, or as `(index, value)` entries
/// of the variables it reached.
enum GradSink {
    Dense(Vec<f64>),
    Entries(Vec<(usize, f64)>),
}

/// Result of a reverse sweep with a sparse gradient: the nonzero entries of the adjoint
/// reaching x (ascending indices) and the adjoints at the stopped switches.
#[derive(Debug, Clone, Default)]
pub struct SparseAdjoint {
    /// Indices of the nonzero gradient entries, ascending.
    pub idx: Vec<usize>,
    /// Their values.
    pub val: Vec<f64>,
    /// `(switch, adjoint arriving at |z_switch|)`, nonzero entries only, ascending switch.
    pub stopped: Vec<(SwitchId, f64)>,
}

/// Reusable buffers for many reverse sweeps over one graph and point. The adjoint buffer is
/// kept zero between sweeps; a sweep visits only the nodes its seed reaches and clears only
/// what it wrote.
pub struct ReverseSweeper<'a> {
    g: &'a Graph,
    ev: &'a Evaluation,
    adj: Vec<f64>,
    marks: Marks,
    /// For each node, if it is an abs node: its index in `g.abs_nodes()`.
    abs_index: Vec<u32>,
    /// The batched schedule, for graphs with dense layers over a batch.
    sched: Option<Schedule>,
}

impl<'a> ReverseSweeper<'a> {
    /// Buffers for sweeps over `g` at the point of `ev`.
    pub fn new(g: &'a Graph, ev: &'a Evaluation) -> Self {
        let mut abs_index = vec![u32::MAX; g.nodes().len()];
        for (k, an) in g.abs_nodes().iter().enumerate() {
            abs_index[an.node.index()] = k as u32;
        }
        ReverseSweeper {
            g,
            ev,
            adj: vec![0.0; g.total_len()],
            marks: Marks::new(g.nodes().len(), g.total_len()),
            abs_index,
            sched: Schedule::new(g),
        }
    }

    /// The graph the sweeps run over.
    pub fn graph(&self) -> &'a Graph {
        self.g
    }

    /// The evaluation (point) the sweeps run at.
    pub fn evaluation(&self) -> &'a Evaluation {
        self.ev
    }

    /// One reverse sweep from `seed` with `rules[i]` applied at switch i.
    pub fn sweep(&mut self, seed: Seed, rules: &[AbsRule]) -> Result<Adjoint, EvalError> {
        let (sink, stopped) = self.run(seed, rules, GradSink::Dense(vec![0.0; self.g.n_vars()]))?;
        let GradSink::Dense(grad) = sink else {
            unreachable!("a dense sink stays dense")
        };
        Ok(Adjoint { grad, stopped })
    }

    /// One reverse sweep from `seed`, returning only the nonzero gradient entries (the same
    /// numbers as [`Self::sweep`]; the cost is that of the nodes the seed reaches).
    pub fn sweep_sparse(
        &mut self,
        seed: Seed,
        rules: &[AbsRule],
    ) -> Result<SparseAdjoint, EvalError> {
        let (sink, stopped) = self.run(seed, rules, GradSink::Entries(Vec::new()))?;
        let GradSink::Entries(mut e) = sink else {
            unreachable!("an entry sink stays one")
        };
        // The entries come in strictly ascending runs, one per variable node reached. When the
        // runs' index ranges do not overlap (distinct parameter tensors), no index repeats and
        // putting the runs in order is the sort.
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        let mut start = 0;
        for t in 1..=e.len() {
            if t == e.len() || e[t].0 <= e[t - 1].0 {
                runs.push(start..t);
                start = t;
            }
        }
        runs.sort_unstable_by_key(|r| e[r.start].0);
        if runs.windows(2).all(|w| e[w[0].end - 1].0 < e[w[1].start].0) {
            let (mut idx, mut val) = (Vec::with_capacity(e.len()), Vec::with_capacity(e.len()));
            for r in runs {
                for &(p, v) in &e[r] {
                    idx.push(p);
                    val.push(v);
                }
            }
            return Ok(SparseAdjoint { idx, val, stopped });
        }
        // stable: entries of one index (overlapping variable nodes) keep the visiting order,
        // so their sum is the dense sweep's, bit for bit
        e.sort_by_key(|t| t.0);
        let (mut idx, mut val) = (Vec::with_capacity(e.len()), Vec::with_capacity(e.len()));
        let mut t = 0;
        while t < e.len() {
            let p = e[t].0;
            let mut s = 0.0;
            while t < e.len() && e[t].0 == p {
                s += e[t].1;
                t += 1;
            }
            if s != 0.0 {
                idx.push(p);
                val.push(s);
            }
        }
        Ok(SparseAdjoint { idx, val, stopped })
    }

    fn run(
        &mut self,
        seed: Seed,
        rules: &[AbsRule],
        mut grad: GradSink,
    ) -> Result<(GradSink, Vec<(SwitchId, f64)>), EvalError> {
        let g = self.g;
        let vals = &self.ev.values;
        let (start, seed_off) = match seed {
            Seed::Output => {
                let y = g.output().ok_or(EvalError::NoOutput)?;
                (y, g.node(y).offset)
            }
            Seed::Switch(s) => {
                let (k, e) = g.switch_location(s);
                let arg = g.abs_nodes()[k].arg;
                (arg, g.node(arg).offset + e)
            }
        };
        let mut stopped = Vec::new();
        let adj = &mut self.adj;
        let m = &mut self.marks;
        adj[seed_off] = 1.0;
        m.mark(start);
        let abs_index = &self.abs_index;
        let mut visit = |i: usize, adj: &mut Vec<f64>, m: &mut Marks| {
            adjoint_node(
                g,
                vals,
                abs_index,
                adj,
                m,
                i,
                rules,
                &mut grad,
                &mut stopped,
            )
        };
        match &self.sched {
            Some(sched) => {
                let last = sched.step_of[start.index()] as usize;
                for step in sched.steps[..=last].iter().rev() {
                    match step {
                        Step::Node(i) if m.touched[*i] => visit(*i, adj, m),
                        Step::Node(_) => {}
                        Step::Group(members) => {
                            let live: Vec<usize> =
                                members.iter().copied().filter(|&i| m.touched[i]).collect();
                            if live.len() >= GEMM_MIN_DIM {
                                gemm_adjoint(g, vals, adj, m, &live);
                            } else {
                                for &i in live.iter().rev() {
                                    visit(i, adj, m);
                                }
                            }
                        }
                    }
                }
            }
            None => {
                for i in (0..=start.index()).rev() {
                    if m.touched[i] {
                        visit(i, adj, m);
                    }
                }
            }
        }
        m.clear(g, adj);
        stopped.sort_by_key(|s| s.0);
        Ok((grad, stopped))
    }
}

/// The reverse step of node `i`: its adjoint, complete, flows to its operands (THEORY §2).
#[allow(clippy::too_many_arguments)]
fn adjoint_node(
    g: &Graph,
    vals: &[f64],
    abs_index: &[u32],
    adj: &mut Vec<f64>,
    m: &mut Marks,
    i: usize,
    rules: &[AbsRule],
    grad: &mut GradSink,
    stopped: &mut Vec<(SwitchId, f64)>,
) {
    let node = &g.nodes()[i];
    let (off, len) = (node.offset, node.len);
    let slot = |id: NodeId| {
        let n = g.node(id);
        (n.offset, n.len)
    };
    match &node.op {
        Op::Var { offset } => {
            let xo = offset.wrapping_sub(off);
            let adj = &*adj;
            m.for_ranges(m.full[i], off, len, |a, b| match &mut *grad {
                GradSink::Dense(d) => {
                    for p in a..b {
                        d[p.wrapping_add(xo)] += adj[p];
                    }
                }
                GradSink::Entries(e) => e.extend(
                    (a..b)
                        .filter(|&p| adj[p] != 0.0)
                        .map(|p| (p.wrapping_add(xo), adj[p])),
                ),
            });
        }
        Op::Const(_) => {}
        Op::Add(a, b) | Op::Sub(a, b) => {
            let ((oa, la), (ob, lb)) = (slot(*a), slot(*b));
            let sb = if matches!(node.op, Op::Sub(..)) {
                -1.0
            } else {
                1.0
            };
            for k in 0..len {
                let l = adj[off + k];
                adj[oa + bidx(la, k)] += l;
                adj[ob + bidx(lb, k)] += sb * l;
            }
            m.mark(*a);
            m.mark(*b);
        }
        Op::Mul(a, b) => {
            let ((oa, la), (ob, lb)) = (slot(*a), slot(*b));
            for k in 0..len {
                let l = adj[off + k];
                let (va, vb) = (vals[oa + bidx(la, k)], vals[ob + bidx(lb, k)]);
                adj[oa + bidx(la, k)] += l * vb;
                adj[ob + bidx(lb, k)] += l * va;
            }
            m.mark(*a);
            m.mark(*b);
        }
        Op::Div(a, b) => {
            let ((oa, la), (ob, lb)) = (slot(*a), slot(*b));
            for k in 0..len {
                let l = adj[off + k];
                let vb = vals[ob + bidx(lb, k)];
                let v = vals[off + k];
                adj[oa + bidx(la, k)] += l / vb;
                adj[ob + bidx(lb, k)] -= l * v / vb;
            }
            m.mark(*a);
            m.mark(*b);
        }
        Op::Neg(a) => {
            let (oa, _) = slot(*a);
            for k in 0..len {
                adj[oa + k] -= adj[off + k];
            }
            m.mark(*a);
        }
        Op::PowI(a, p) => {
            let (oa, _) = slot(*a);
            for k in 0..len {
                let t = vals[oa + k];
                adj[oa + k] += adj[off + k] * (*p as f64) * t.powi(p - 1);
            }
            m.mark(*a);
        }
        Op::Unary(f, a) => {
            let (oa, _) = slot(*a);
            for k in 0..len {
                adj[oa + k] += adj[off + k] * smooth_deriv(*f, vals[oa + k], vals[off + k]);
            }
            m.mark(*a);
        }
        Op::Abs(a) => {
            let an = &g.abs_nodes()[abs_index[i] as usize];
            let (oa, _) = slot(*a);
            let mut any = false;
            for k in 0..len {
                let l = adj[off + k];
                if l == 0.0 {
                    continue;
                }
                match rules[an.first_switch + k] {
                    AbsRule::Factor(f) => {
                        adj[oa + k] += l * f;
                        any = true;
                    }
                    AbsRule::Stop => stopped.push((SwitchId(an.first_switch + k), l)),
                }
            }
            if any {
                m.mark(*a);
            }
        }
        Op::MatVec { w, x, rows } => {
            let ((ow, _), (ox, lx)) = (slot(*w), slot(*x));
            let wdep = g.node(*w).depends;
            let xdep = g.node(*x).depends;
            if w != x {
                // The slots of the output, W and x are disjoint: split the adjoint
                // buffer so that both updates are plain (vectorized) axpys. Only the
                // rows of W with a nonzero output adjoint are written (and marked).
                let (lo, hi) = adj.split_at_mut(off);
                let ladj = &hi[..*rows];
                let (aw, ax) = disjoint_mut(lo, (ow, rows * lx), (ox, lx));
                let xv = &vals[ox..ox + lx];
                let mut any = false;
                for (r, &l) in ladj.iter().enumerate() {
                    if l == 0.0 {
                        continue;
                    }
                    any = true;
                    if wdep {
                        axpy(l, xv, &mut aw[r * lx..(r + 1) * lx]);
                        m.mark_range(*w, ow + r * lx, lx);
                    }
                    if xdep {
                        axpy(l, &vals[ow + r * lx..ow + (r + 1) * lx], ax);
                    }
                }
                if any && xdep {
                    m.mark(*x);
                }
            } else {
                for r in 0..*rows {
                    let l = adj[off + r];
                    if l == 0.0 {
                        continue;
                    }
                    for j in 0..lx {
                        adj[ow + r * lx + j] += l * vals[ox + j];
                        adj[ox + j] += l * vals[ow + r * lx + j];
                    }
                }
                if wdep {
                    m.mark(*w);
                }
            }
        }
        Op::Sum(a) => {
            let (oa, la) = slot(*a);
            let l = adj[off];
            for k in 0..la {
                adj[oa + k] += l;
            }
            m.mark(*a);
        }
        Op::Gather(a, idx) => {
            let (oa, _) = slot(*a);
            for (k, &j) in idx.iter().enumerate() {
                adj[oa + j] += adj[off + k];
            }
            m.mark(*a);
        }
        Op::Concat(parts) => {
            let mut k = off;
            for p in parts {
                let (op_, lp) = slot(*p);
                for t in 0..lp {
                    adj[op_ + t] += adj[k + t];
                }
                k += lp;
                m.mark(*p);
            }
        }
        Op::LogSumExp(a) => {
            let (oa, la) = slot(*a);
            let l = adj[off];
            let v = vals[off];
            for k in 0..la {
                adj[oa + k] += l * (vals[oa + k] - v).exp();
            }
            m.mark(*a);
        }
        Op::Conv { x, w, bias, spec } => {
            for id in conv_reverse_at(g, vals, adj, off, *x, *w, *bias, spec) {
                m.mark(id);
            }
        }
    }
}

/// The reverse step of a group of matrix–vector nodes `out_s = W x_s` as two products: with
/// L = [l_1 … l_B] the output adjoints, `adj W += L Xᵀ` and `adj X += Wᵀ L` (only the weight
/// rows with a nonzero adjoint are marked as written).
fn gemm_adjoint(g: &Graph, vals: &[f64], adj: &mut [f64], m: &mut Marks, members: &[usize]) {
    let (w, rows, lx, slots) = group_slots(g, members);
    let ow = g.node(w).offset;
    let b = slots.len();
    let mut ls = Vec::with_capacity(rows * b);
    for &(_, oo) in &slots {
        ls.extend_from_slice(&adj[oo..oo + rows]);
    }
    let lm = DMatrixView::from_slice(&ls, rows, b);
    if g.node(w).depends {
        let mut xs = Vec::with_capacity(lx * b);
        for &(ox, _) in &slots {
            xs.extend_from_slice(&vals[ox..ox + lx]);
        }
        let xt = DMatrixView::from_slice_with_strides(&xs, b, lx, lx, 1);
        let mut aw = DMatrixViewMut::from_slice_with_strides_mut(
            &mut adj[ow..ow + rows * lx],
            rows,
            lx,
            lx,
            1,
        );
        aw.gemm(1.0, &lm, &xt, 1.0);
        for r in 0..rows {
            if (0..b).any(|s| ls[s * rows + r] != 0.0) {
                m.mark_range(w, ow + r * lx, lx);
            }
        }
    }
    let xdep: Vec<bool> = members
        .iter()
        .map(|&i| match &g.nodes()[i].op {
            Op::MatVec { x, .. } => g.node(*x).depends,
            _ => false,
        })
        .collect();
    if xdep.iter().any(|&d| d) {
        let wt = DMatrixView::from_slice_with_strides(&vals[ow..ow + rows * lx], lx, rows, 1, lx);
        let mut ax = DMatrix::<f64>::zeros(lx, b);
        ax.gemm(1.0, &wt, &lm, 0.0);
        for (s, (&(ox, _), &i)) in slots.iter().zip(members).enumerate() {
            if !xdep[s] || ls[s * rows..(s + 1) * rows].iter().all(|&l| l == 0.0) {
                continue;
            }
            for (a, v) in adj[ox..ox + lx]
                .iter_mut()
                .zip(&ax.as_slice()[s * lx..(s + 1) * lx])
            {
                *a += v;
            }
            if let Op::MatVec { x, .. } = &g.nodes()[i].op {
                m.mark(*x);
            }
        }
    }
}

/// Forward tangent sweep: the directional derivative of every switch argument and of the
/// output along `dx`, with `rules` at the switches (`Stop` means abs′ = 0 and |zᵢ| gets the
/// tangent `du[i]` instead, if given).
pub struct Tangent {
    /// ż for every switch (derivative of zᵢ along dx).
    pub dz: Vec<f64>,
    /// ẏ.
    pub dy: f64,
}

/// One forward tangent sweep along `dx`; switch i propagates `rules[i]` (`Stop` ↦ factor 0).
pub fn tangent(
    g: &Graph,
    ev: &Evaluation,
    dx: &[f64],
    rules: &[AbsRule],
) -> Result<Tangent, EvalError> {
    let y = g.output().ok_or(EvalError::NoOutput)?;
    let vals = &ev.values;
    let mut t = vec![0.0; g.total_len()];
    let mut dz = vec![0.0; g.n_switches()];
    let mut absk = 0usize;
    for node in g.nodes() {
        let (off, len) = (node.offset, node.len);
        let slot = |id: NodeId| {
            let n = g.node(id);
            (n.offset, n.len)
        };
        match &node.op {
            Op::Var { offset } => t[off..off + len].copy_from_slice(&dx[*offset..offset + len]),
            Op::Const(_) => {}
            Op::Add(a, b) | Op::Sub(a, b) | Op::Mul(a, b) | Op::Div(a, b) => {
                let ((oa, la), (ob, lb)) = (slot(*a), slot(*b));
                for k in 0..len {
                    let (ia, ib) = (oa + bidx(la, k), ob + bidx(lb, k));
                    t[off + k] = match node.op {
                        Op::Add(..) => t[ia] + t[ib],
                        Op::Sub(..) => t[ia] - t[ib],
                        Op::Mul(..) => t[ia] * vals[ib] + vals[ia] * t[ib],
                        _ => (t[ia] - vals[off + k] * t[ib]) / vals[ib],
                    };
                }
            }
            Op::Neg(a) => {
                let (oa, _) = slot(*a);
                for k in 0..len {
                    t[off + k] = -t[oa + k];
                }
            }
            Op::PowI(a, p) => {
                let (oa, _) = slot(*a);
                for k in 0..len {
                    t[off + k] = t[oa + k] * (*p as f64) * vals[oa + k].powi(p - 1);
                }
            }
            Op::Unary(f, a) => {
                let (oa, _) = slot(*a);
                for k in 0..len {
                    t[off + k] = t[oa + k] * smooth_deriv(*f, vals[oa + k], vals[off + k]);
                }
            }
            Op::Abs(a) => {
                let an = &g.abs_nodes()[absk];
                absk += 1;
                let (oa, _) = slot(*a);
                for k in 0..len {
                    let s = an.first_switch + k;
                    dz[s] = t[oa + k];
                    t[off + k] = match rules[s] {
                        AbsRule::Factor(f) => f * t[oa + k],
                        AbsRule::Stop => 0.0,
                    };
                }
            }
            Op::MatVec { w, x, rows } => {
                let ((ow, _), (ox, lx)) = (slot(*w), slot(*x));
                for r in 0..*rows {
                    let mut s = 0.0;
                    for j in 0..lx {
                        s += t[ow + r * lx + j] * vals[ox + j] + vals[ow + r * lx + j] * t[ox + j];
                    }
                    t[off + r] = s;
                }
            }
            Op::Sum(a) => {
                let (oa, la) = slot(*a);
                t[off] = t[oa..oa + la].iter().sum();
            }
            Op::Gather(..) | Op::Concat(_) => {
                g.move_elements(&node.op, &mut t, off);
            }
            Op::LogSumExp(a) => {
                let (oa, la) = slot(*a);
                let v = vals[off];
                t[off] = (0..la).map(|k| t[oa + k] * (vals[oa + k] - v).exp()).sum();
            }
            Op::Conv { x, w, bias, spec } => {
                conv_tangent_at(g, vals, &mut t, off, *x, *w, *bias, spec)
            }
        }
    }
    Ok(Tangent {
        dz,
        dy: t[g.node(y).offset],
    })
}

/// The activity status of one switch at the point (THEORY §6.6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activity {
    /// zᵢ = ±0 exactly: at the kink.
    Active,
    /// 0 < |zᵢ| ≤ τ_act · scaleᵢ: possibly a rounded kink.
    Near,
    /// Clearly off the kink.
    Inactive,
}

/// One switch at the point: its value, the scale of the terms that produced it, and status.
#[derive(Debug, Clone)]
pub struct SwitchState {
    pub id: SwitchId,
    pub z: f64,
    pub scale: f64,
    pub activity: Activity,
    pub role: Role,
}

/// Default relative tolerance of the near-active band, τ_act.
pub const TAU_ACT: f64 = 1e-12;

/// The switches at the point, with their activity (`τ_act` relative band).
pub fn switch_states(g: &Graph, ev: &Evaluation, tau_act: f64) -> Vec<SwitchState> {
    classify(g, ev, tau_act, &magnitudes(g, ev))
}

/// [`switch_states`] without the product of every dense layer with the magnitudes, where
/// bounds decide: the same `id`, `z`, `activity` and `role` for every switch; `scale` is the
/// magnitude of [`switch_states`] when some switch needs it, else an upper bound of it.
///
/// The bounds are [`magnitudes`] with each batched product `Σⱼ |W_rj| m(x_sj)` replaced by
/// `‖W_r‖₁ · maxⱼ m(x_sj)` and each convolution's channel c by `‖w_c‖₁ · max m(x) + m(b_c)`
/// (every other node as there, each monotone in its operands' magnitudes, all ≥ 0), so every
/// bound is at least the magnitude, up to rounding of relative size (depth × width × ε). When every switch with zᵢ ≠ 0 has `|zᵢ| > 2 τ_act · boundᵢ`
/// (the factor 2 covers that rounding many times over) they are all inactive under the exact
/// magnitudes too, and switches with zᵢ = 0 are active whatever the scale: the answer is that
/// of [`switch_states`]. Otherwise the exact magnitudes are computed and used.
///
/// ```
/// use kinkcheck::eval;
/// let g = kinkcheck::compile("vars x, y; f = relu(x - y) + abs(x)").unwrap().graph;
/// let ev = eval::evaluate(&g, &[1.0, 1.0]).unwrap();
/// let fast = eval::switch_states_bounded(&g, &ev, eval::TAU_ACT);
/// let exact = eval::switch_states(&g, &ev, eval::TAU_ACT);
/// let act = |v: &[eval::SwitchState]| v.iter().map(|s| s.activity).collect::<Vec<_>>();
/// assert_eq!(act(&fast), act(&exact));
/// ```
pub fn switch_states_bounded(g: &Graph, ev: &Evaluation, tau_act: f64) -> Vec<SwitchState> {
    let sched = Schedule::new(g);
    if sched.is_none() && !g.nodes().iter().any(|n| matches!(n.op, Op::Conv { .. })) {
        // no batched products and no convolutions: the bounds would cost what the
        // magnitudes cost
        return switch_states(g, ev, tau_act);
    }
    let bounds = magnitudes_by(g, ev, sched.as_ref(), true);
    let decided = g.abs_nodes().iter().all(|an| {
        let n = g.node(an.arg);
        (n.offset..n.offset + n.len).all(|i| {
            let z = ev.values[i];
            z == 0.0 || z.abs() > 2.0 * tau_act * bounds[i]
        })
    });
    if decided {
        classify(g, ev, tau_act, &bounds)
    } else {
        classify(g, ev, tau_act, &magnitudes_by(g, ev, sched.as_ref(), false))
    }
}

/// The switch states with the scales `mags` (one per value of the graph).
fn classify(g: &Graph, ev: &Evaluation, tau_act: f64, mags: &[f64]) -> Vec<SwitchState> {
    let mut out = Vec::with_capacity(g.n_switches());
    for an in g.abs_nodes() {
        let n = g.node(an.arg);
        for e in 0..n.len {
            let z = ev.values[n.offset + e];
            let scale = mags[n.offset + e];
            let activity = if z == 0.0 {
                Activity::Active
            } else if z.abs() <= tau_act * scale {
                Activity::Near
            } else {
                Activity::Inactive
            };
            out.push(SwitchState {
                id: SwitchId(an.first_switch + e),
                z,
                scale,
                activity,
                role: an.role,
            });
        }
    }
    out
}

/// The AD rule of every switch under a convention: abs′ = sign(zᵢ) off the kink (also inside
/// the near-active band, which is what a framework's float comparison does) and the
/// convention's σ̃ for the switch's role at exact zeros.
pub fn convention_rules(states: &[SwitchState], conv: &Convention) -> Vec<AbsRule> {
    states
        .iter()
        .map(|s| AbsRule::Factor(conv.abs_derivative(s.role, s.z)))
        .collect()
}

/// Backward-mode AD at the point of `ev` under a convention: exactly the vector the framework's
/// backward pass returns, AD(σ̃) = a + bΣ̃(I − LΣ̃)⁻¹Z.
///
/// ```
/// use kinkcheck::{convention::Convention, eval};
/// let g = kinkcheck::compile("vars x; f = relu(x) - relu(-x)").unwrap().graph;
/// let ev = eval::evaluate(&g, &[0.0]).unwrap();
/// let states = eval::switch_states(&g, &ev, eval::TAU_ACT);
/// assert_eq!(eval::ad(&g, &ev, &states, &Convention::pytorch()).unwrap(), vec![0.0]);
/// assert_eq!(eval::ad(&g, &ev, &states, &Convention::sigma(0.0).unwrap()).unwrap(), vec![1.0]);
/// ```
pub fn ad(
    g: &Graph,
    ev: &Evaluation,
    states: &[SwitchState],
    conv: &Convention,
) -> Result<Vec<f64>, EvalError> {
    let rules = convention_rules(states, conv);
    Ok(ReverseSweeper::new(g, ev).sweep(Seed::Output, &rules)?.grad)
}

/// The slot `offset .. offset + len` of a node in a flat buffer.
fn window(g: &Graph, id: NodeId) -> std::ops::Range<usize> {
    let n = g.node(id);
    n.offset..n.offset + n.len
}

fn conv_geometry(spec: &ConvSpec) -> ConvGeometry {
    // Graph::conv validated the spec when it built the node.
    ConvGeometry::new(spec).expect("convolution spec validated by Graph::conv")
}

/// `buf[out] = conv(buf[x], buf[w]) + buf[bias]` for a conv node whose slot starts at `off`
/// (after its operands' slots: node order is topological). Used for values and magnitudes.
fn conv_forward_at(
    g: &Graph,
    buf: &mut [f64],
    off: usize,
    x: NodeId,
    w: NodeId,
    bias: Option<NodeId>,
    spec: &ConvSpec,
) {
    let geo = conv_geometry(spec);
    let (lo, hi) = buf.split_at_mut(off);
    let b = bias.map(|b| &lo[window(g, b)]);
    tensor::conv_forward(
        &geo,
        &lo[window(g, x)],
        &lo[window(g, w)],
        b,
        &mut hi[..geo.y_len()],
    );
}

/// Tangent of a conv node: `t[out] = conv(t[x], w) + conv(x, t[w]) + t[bias]`.
#[allow(clippy::too_many_arguments)]
fn conv_tangent_at(
    g: &Graph,
    vals: &[f64],
    t: &mut [f64],
    off: usize,
    x: NodeId,
    w: NodeId,
    bias: Option<NodeId>,
    spec: &ConvSpec,
) {
    let geo = conv_geometry(spec);
    let (lo, hi) = t.split_at_mut(off);
    let (wx, ww) = (window(g, x), window(g, w));
    tensor::conv_tangent(
        &geo,
        &vals[wx.clone()],
        &vals[ww.clone()],
        &lo[wx],
        &lo[ww],
        bias.map(|b| &lo[window(g, b)]),
        &mut hi[..geo.y_len()],
    );
}

/// Reverse step of a conv node: adds its adjoint contributions to the operands that depend on
/// the variables and returns them (to be marked as touched). Nothing when `ȳ = 0`.
#[allow(clippy::too_many_arguments)]
fn conv_reverse_at(
    g: &Graph,
    vals: &[f64],
    adj: &mut [f64],
    off: usize,
    x: NodeId,
    w: NodeId,
    bias: Option<NodeId>,
    spec: &ConvSpec,
) -> Vec<NodeId> {
    let geo = conv_geometry(spec);
    let (lo, hi) = adj.split_at_mut(off);
    let ybar = &hi[..geo.y_len()];
    if ybar.iter().all(|&l| l == 0.0) {
        return vec![];
    }
    let dep = |id: NodeId| g.node(id).depends;
    let (wx, ww) = (window(g, x), window(g, w));
    let (xv, wv) = (&vals[wx.clone()], &vals[ww.clone()]);
    let bias = bias.filter(|&b| dep(b));
    let mut bbar = bias.map(|_| vec![0.0; geo.out_channels]);
    match (dep(x), dep(w)) {
        (true, true) if x != w => {
            let (xb, wb) = disjoint_mut(lo, (wx.start, wx.len()), (ww.start, ww.len()));
            tensor::conv_adjoint(&geo, xv, wv, ybar, Some(xb), Some(wb), bbar.as_deref_mut());
        }
        (true, true) => {
            // x and w are one node: accumulate both adjoints, then add them to its slot
            let (mut xb, mut wb) = (vec![0.0; wx.len()], vec![0.0; ww.len()]);
            tensor::conv_adjoint(
                &geo,
                xv,
                wv,
                ybar,
                Some(&mut xb),
                Some(&mut wb),
                bbar.as_deref_mut(),
            );
            for ((a, u), v) in lo[wx].iter_mut().zip(&xb).zip(&wb) {
                *a += u + v;
            }
        }
        (false, false) => {
            tensor::conv_adjoint(&geo, xv, wv, ybar, None, None, bbar.as_deref_mut());
        }
        (dx, _) => {
            let target = if dx { wx } else { ww };
            let tb = Some(&mut lo[target]);
            let (xb, wb) = if dx { (tb, None) } else { (None, tb) };
            tensor::conv_adjoint(&geo, xv, wv, ybar, xb, wb, bbar.as_deref_mut());
        }
    }
    let mut marked: Vec<NodeId> = [(x, dep(x)), (w, dep(w))]
        .into_iter()
        .filter_map(|(id, d)| d.then_some(id))
        .collect();
    if let (Some(b), Some(bb)) = (bias, bbar) {
        for (a, v) in lo[window(g, b)].iter_mut().zip(&bb) {
            *a += v;
        }
        marked.push(b);
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anf::SparseRow;

    /// Every sweep of one reused sweeper (so the partial clearing between sweeps is exercised)
    /// gives, sparse, exactly the nonzeros of a dense sweep on fresh buffers.
    fn sparse_equals_dense(g: &Graph, x: &[f64]) {
        let ev = evaluate(g, x).unwrap();
        let s = g.n_switches();
        let mut seeds: Vec<Seed> = (0..s).map(|i| Seed::Switch(SwitchId(i))).collect();
        seeds.push(Seed::Output);
        let rule_sets: Vec<Vec<AbsRule>> = vec![
            vec![AbsRule::Stop; s],
            (0..s)
                .map(|i| match i % 3 {
                    0 => AbsRule::Stop,
                    1 => AbsRule::Factor(1.0),
                    _ => AbsRule::Factor(-0.5),
                })
                .collect(),
        ];
        let mut sw = ReverseSweeper::new(g, &ev);
        for rules in &rule_sets {
            for &seed in seeds.iter().chain(seeds.iter().rev()) {
                let dense = ReverseSweeper::new(g, &ev).sweep(seed, rules).unwrap();
                let sp = sw.sweep_sparse(seed, rules).unwrap();
                let want = SparseRow::from_dense(&dense.grad);
                assert_eq!(sp.idx, want.idx);
                let bits = |v: &[f64]| v.iter().map(|c| c.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&sp.val), bits(&want.val));
                assert_eq!(sp.stopped, dense.stopped);
                let again = sw.sweep(seed, rules).unwrap();
                assert_eq!(bits(&again.grad), bits(&dense.grad));
            }
        }
    }

    #[test]
    fn sparse_sweeps_equal_dense_sweeps_on_programs() {
        for (src, x) in [
            ("vars x; u = abs(x); f = abs(x + 2*u) - 2*u", vec![0.0]),
            (
                "vars x, y; f = max(relu(x - y), abs(x*y)) + relu(-x)",
                vec![0.0, 0.0],
            ),
            (
                "vars a, b, c; f = tanh(relu(a + b) - relu(b - c)) * abs(c)",
                vec![1.0, -1.0, 0.5],
            ),
        ] {
            sparse_equals_dense(&crate::compile(src).unwrap().graph, &x);
        }
    }

    #[test]
    fn sparse_sweeps_equal_dense_sweeps_over_overlapping_variable_nodes() {
        // x[0..4], x[2..5] and x[1..2] as three nodes: their entries overlap (summed in
        // visiting order) or interleave, unlike the runs of distinct tensors
        use crate::graph::{Origin, Role};
        let mut g = Graph::new(5);
        let a = g.var(0, 4).unwrap();
        let b = g.var(2, 3).unwrap();
        let c = g.var(1, 1).unwrap();
        let a3 = g.gather(a, vec![1, 2, 3]).unwrap();
        let s = g.sub(a3, b).unwrap();
        let u = g.abs(s, Role::Abs, Origin::Internal);
        let cb = g.gather(c, vec![0, 0, 0]).unwrap();
        let t = g.mul(cb, b).unwrap();
        let v = g.add(u, t).unwrap();
        let w = g.abs(v, Role::Abs, Origin::Internal);
        let y = g.sum(w);
        g.set_output(y).unwrap();
        for x in [[0.0, 1.0, 1.0, 2.0, 2.0], [0.5, -1.0, 3.0, 0.25, 1.0]] {
            sparse_equals_dense(&g, &x);
        }
    }

    #[test]
    fn sparse_sweeps_equal_dense_sweeps_on_a_batched_network() {
        // wide enough that weight rows span several chunks and straddle chunk borders
        use crate::frontend::network::{Data, Layer, Loss, Network, Wrt};
        let (k, r, batch) = (150, 30, 7);
        let w = |rows: usize, cols: usize, s: usize| -> Vec<Vec<f64>> {
            (0..rows)
                .map(|i| {
                    (0..cols)
                        .map(|j| ((i * 31 + j * 17 + s) % 9) as f64 / 8.0 - 0.5)
                        .collect()
                })
                .collect()
        };
        let mut inputs = w(batch, k, 5);
        inputs[1] = inputs[0].clone();
        let mut w1 = w(r, k, 1);
        w1[2] = vec![0.0; k];
        let net = Network {
            layers: vec![
                Layer::Dense {
                    weights: w1,
                    bias: (0..r)
                        .map(|u| [0.0, 0.25, 0.0, -0.5, 0.125][u % 5])
                        .collect(),
                },
                Layer::Relu,
                Layer::Dense {
                    weights: w(2, r, 3),
                    bias: vec![0.0, 0.5],
                },
            ],
            loss: Some(Loss::CrossEntropy),
            data: Some(Data {
                inputs,
                targets: Some(
                    (0..batch)
                        .map(|s| vec![[1.0, 0.0, 0.5][s % 3], [0.0, 1.0, 0.5][s % 3]])
                        .collect(),
                ),
            }),
            wrt: Some(Wrt::Params),
        };
        let p = net.problem(None, None, None).unwrap();
        assert!(
            Schedule::new(&p.graph).is_some(),
            "the first layer is batched"
        );
        sparse_equals_dense(&p.graph, p.point.as_ref().unwrap());
        batched_equals_node_order(&p.graph, p.point.as_ref().unwrap());
        let net = Network {
            wrt: Some(Wrt::Inputs),
            ..net
        };
        let p = net.problem(None, None, None).unwrap();
        sparse_equals_dense(&p.graph, p.point.as_ref().unwrap());
        batched_equals_node_order(&p.graph, p.point.as_ref().unwrap());
    }

    /// The batched schedule (products per layer) against the node-by-node evaluation and
    /// sweep: values and magnitudes exactly (the data are dyadic, so every product is exact),
    /// adjoints to rounding.
    fn batched_equals_node_order(g: &Graph, x: &[f64]) {
        let ev = evaluate(g, x).unwrap();
        let mut seq = vec![0.0; g.total_len()];
        for i in 0..g.nodes().len() {
            eval_node(g, &mut seq, x, i).unwrap();
        }
        assert_eq!(ev.values, seq);
        let mut mseq = vec![0.0; g.total_len()];
        for i in 0..g.nodes().len() {
            magnitude_node(g, &ev, &mut mseq, i);
        }
        assert_eq!(magnitudes(g, &ev), mseq);
        let s = g.n_switches();
        let rules: Vec<AbsRule> = (0..s)
            .map(|i| match i % 3 {
                0 => AbsRule::Stop,
                1 => AbsRule::Factor(1.0),
                _ => AbsRule::Factor(-0.5),
            })
            .collect();
        let mut batched = ReverseSweeper::new(g, &ev);
        assert!(batched.sched.is_some());
        let mut plain = ReverseSweeper::new(g, &ev);
        plain.sched = None;
        let mut seeds: Vec<Seed> = (0..s).map(|i| Seed::Switch(SwitchId(i))).collect();
        seeds.push(Seed::Output);
        for seed in seeds {
            let (a, b) = (
                batched.sweep(seed, &rules).unwrap(),
                plain.sweep(seed, &rules).unwrap(),
            );
            let scale = b.grad.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (u, v) in a.grad.iter().zip(&b.grad) {
                assert!((u - v).abs() <= 1e-13 * scale, "{u} vs {v}");
            }
            assert_eq!(a.stopped.len(), b.stopped.len());
            for (u, v) in a.stopped.iter().zip(&b.stopped) {
                assert_eq!(u.0, v.0);
                assert!((u.1 - v.1).abs() <= 1e-13 * scale);
            }
        }
    }
}
