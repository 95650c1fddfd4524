//! Lowering of kink operations into smooth operations plus `abs` (THEORY.md §1, table
//! "Lowering").
//!
//! | op | lowered form | switches |
//! |---|---|---|
//! | abs(u) | \|u\| | z = u |
//! | relu(u) | (u + \|u\|)/2 | z = u |
//! | max(a,b) | (a + b + \|a−b\|)/2 | z = a − b |
//! | min(a,b) | (a + b − \|a−b\|)/2 | z = a − b |
//! | clamp(x,lo,hi) | (lo + hi + \|x−lo\| − \|x−hi\|)/2 | z1 = x − lo, z2 = x − hi |
//! | hardtanh(x) | clamp(x,−1,1) | z1 = x + 1, z2 = x − 1 |
//! | relu6(x) | clamp(x,0,6) | z1 = x, z2 = x − 6 |
//! | leaky_relu(x,a) | ((1+a)x + (1−a)\|x\|)/2 | z = x |
//! | hardsigmoid(x) | clamp(x/6 + 1/2, 0, 1) | z1 = x/6 + 1/2, z2 = x/6 − 1/2 |
//! | max(a1..ak), max-pool | left fold m_j = max(m_(j−1), a_j) | z_j = m_(j−1) − a_j |
//!
//! The orientation of each switch is part of the specification: the framework conventions of
//! [`crate::convention`] act on it. Arguments are never reordered (TensorFlow gives a `max` tie
//! to its first argument). All functions work elementwise on vector nodes.

use crate::graph::{Graph, GraphError, NodeId, Origin, Role};

/// `|u|` (role [`Role::Abs`]).
pub fn abs(g: &mut Graph, u: NodeId, origin: Origin) -> NodeId {
    g.abs(u, Role::Abs, origin)
}

fn half(g: &mut Graph, a: NodeId) -> Result<NodeId, GraphError> {
    g.scale(0.5, a)
}

/// `relu(u) = (u + |u|)/2`, switch `z = u`.
pub fn relu(g: &mut Graph, u: NodeId, origin: Origin) -> Result<NodeId, GraphError> {
    relu_role(g, u, Role::Relu, origin)
}

/// `(u + |u|)/2` with a chosen role for the switch.
pub fn relu_role(
    g: &mut Graph,
    u: NodeId,
    role: Role,
    origin: Origin,
) -> Result<NodeId, GraphError> {
    let a = g.abs(u, role, origin);
    let s = g.add(u, a)?;
    half(g, s)
}

/// `max(a,b) = (a + b + |a−b|)/2`, switch `z = a − b`. `role` is [`Role::Max`] for `max`
/// and [`Role::MaxPool`] for a max-pool step.
pub fn max2(
    g: &mut Graph,
    a: NodeId,
    b: NodeId,
    role: Role,
    origin: Origin,
) -> Result<NodeId, GraphError> {
    let z = g.sub(a, b)?;
    let u = g.abs(z, role, origin);
    let s = g.add(a, b)?;
    let s = g.add(s, u)?;
    half(g, s)
}

/// `min(a,b) = (a + b − |a−b|)/2`, switch `z = a − b`.
pub fn min2(g: &mut Graph, a: NodeId, b: NodeId, origin: Origin) -> Result<NodeId, GraphError> {
    let z = g.sub(a, b)?;
    let u = g.abs(z, Role::Min, origin);
    let s = g.add(a, b)?;
    let s = g.sub(s, u)?;
    half(g, s)
}

/// `max(a1, ..., ak)` folded left to right with the binary rule (role [`Role::Max`]).
pub fn max_fold(g: &mut Graph, args: &[NodeId], origin: Origin) -> Result<NodeId, GraphError> {
    fold(g, args, origin, |g, m, a, o| max2(g, m, a, Role::Max, o))
}

/// `min(a1, ..., ak)` folded left to right.
pub fn min_fold(g: &mut Graph, args: &[NodeId], origin: Origin) -> Result<NodeId, GraphError> {
    fold(g, args, origin, min2)
}

fn fold(
    g: &mut Graph,
    args: &[NodeId],
    origin: Origin,
    step: impl Fn(&mut Graph, NodeId, NodeId, Origin) -> Result<NodeId, GraphError>,
) -> Result<NodeId, GraphError> {
    let (&first, rest) = args.split_first().ok_or_else(|| GraphError::Shape {
        place: crate::graph::describe_origin(&origin),
        msg: "max/min of nothing".into(),
    })?;
    let mut m = first;
    for &a in rest {
        m = step(g, m, a, origin.clone())?;
    }
    Ok(m)
}

/// The clamp form `(lo + hi + |z1| − |z2|)/2` with given switch arguments `z1 = x − lo`,
/// `z2 = x − hi` (built by the caller in the orientation THEORY §1 prescribes).
#[allow(clippy::too_many_arguments)]
fn clamp_form(
    g: &mut Graph,
    lo: NodeId,
    hi: NodeId,
    z1: NodeId,
    z2: NodeId,
    roles: (Role, Role),
    origin: Origin,
) -> Result<NodeId, GraphError> {
    let u1 = g.abs(z1, roles.0, origin.clone());
    let u2 = g.abs(z2, roles.1, origin);
    let s = g.add(lo, hi)?;
    let s = g.add(s, u1)?;
    let s = g.sub(s, u2)?;
    half(g, s)
}

/// `clamp(x, lo, hi) = (lo + hi + |x−lo| − |x−hi|)/2`, switches `z1 = x − lo`, `z2 = x − hi`.
/// Constant bounds with `lo > hi` are rejected (the formula is the clamp only for lo ≤ hi).
pub fn clamp(
    g: &mut Graph,
    x: NodeId,
    lo: NodeId,
    hi: NodeId,
    origin: Origin,
) -> Result<NodeId, GraphError> {
    if let (Some(l), Some(h)) = (g.const_value(lo), g.const_value(hi)) {
        let bad = if l.len() == h.len() {
            l.iter().zip(h).any(|(a, b)| a > b)
        } else {
            let lmax = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let hmin = h.iter().cloned().fold(f64::INFINITY, f64::min);
            lmax > hmin
        };
        if bad {
            return Err(GraphError::Shape {
                place: crate::graph::describe_origin(&origin),
                msg: "clamp with lower bound above upper bound".into(),
            });
        }
    }
    let z1 = g.sub(x, lo)?;
    let z2 = g.sub(x, hi)?;
    clamp_form(g, lo, hi, z1, z2, (Role::ClampLo, Role::ClampHi), origin)
}

/// `hardtanh(x) = clamp(x, −1, 1)`, switches `z1 = x + 1`, `z2 = x − 1`.
pub fn hardtanh(g: &mut Graph, x: NodeId, origin: Origin) -> Result<NodeId, GraphError> {
    let one = g.scalar(1.0)?;
    let m1 = g.scalar(-1.0)?;
    let z1 = g.add(x, one)?;
    let z2 = g.sub(x, one)?;
    clamp_form(
        g,
        m1,
        one,
        z1,
        z2,
        (Role::HardtanhLo, Role::HardtanhHi),
        origin,
    )
}

/// `relu6(x) = clamp(x, 0, 6)`, switches `z1 = x`, `z2 = x − 6`.
pub fn relu6(g: &mut Graph, x: NodeId, origin: Origin) -> Result<NodeId, GraphError> {
    let zero = g.scalar(0.0)?;
    let six = g.scalar(6.0)?;
    let z2 = g.sub(x, six)?;
    clamp_form(g, zero, six, x, z2, (Role::Relu6Lo, Role::Relu6Hi), origin)
}

/// `leaky_relu(x, a) = ((1+a)x + (1−a)|x|)/2`, switch `z = x`.
pub fn leaky_relu(
    g: &mut Graph,
    x: NodeId,
    slope: f64,
    origin: Origin,
) -> Result<NodeId, GraphError> {
    let u = g.abs(x, Role::LeakyRelu, origin);
    let p = g.scale(0.5 * (1.0 + slope), x)?;
    let q = g.scale(0.5 * (1.0 - slope), u)?;
    g.add(p, q)
}

/// `hardsigmoid(x) = clamp(x/6 + 1/2, 0, 1)`, switches `z1 = x/6 + 1/2`, `z2 = x/6 − 1/2`.
pub fn hardsigmoid(g: &mut Graph, x: NodeId, origin: Origin) -> Result<NodeId, GraphError> {
    let six = g.scalar(6.0)?;
    let xs = g.div(x, six)?;
    hardsigmoid_from(g, xs, 0.5, origin)
}

/// ONNX `HardSigmoid`: `clamp(αx + β, 0, 1)` (α > 0 assumed), switches `z1 = αx + β`,
/// `z2 = αx + β − 1`, with the hardsigmoid roles.
pub fn hardsigmoid_affine(
    g: &mut Graph,
    x: NodeId,
    alpha: f64,
    beta: f64,
    origin: Origin,
) -> Result<NodeId, GraphError> {
    if alpha.is_nan() || alpha <= 0.0 {
        return Err(GraphError::Shape {
            place: crate::graph::describe_origin(&origin),
            msg: format!("HardSigmoid with alpha = {alpha} (alpha > 0 is required)"),
        });
    }
    let xs = g.scale(alpha, x)?;
    hardsigmoid_from(g, xs, beta, origin)
}

fn hardsigmoid_from(
    g: &mut Graph,
    xs: NodeId,
    beta: f64,
    origin: Origin,
) -> Result<NodeId, GraphError> {
    let b = g.scalar(beta)?;
    let b1 = g.scalar(beta - 1.0)?;
    let z1 = g.add(xs, b)?;
    let z2 = g.add(xs, b1)?;
    let zero = g.scalar(0.0)?;
    let one = g.scalar(1.0)?;
    clamp_form(
        g,
        zero,
        one,
        z1,
        z2,
        (Role::HardsigmoidLo, Role::HardsigmoidHi),
        origin,
    )
}

/// Max-pooling of the vector `x` over `windows` (each a list of indices into `x`, all of the
/// same size): output element `w` is the left fold of `max` over window `w`, with max-pool
/// steps `z_j = m_(j−1) − a_j` ([`Role::MaxPool`]). Step `j` of all windows is one vector
/// `abs` node, so switches are ordered by step, then window.
pub fn maxpool(
    g: &mut Graph,
    x: NodeId,
    windows: &[Vec<usize>],
    origin: Origin,
) -> Result<NodeId, GraphError> {
    let size = windows.first().map_or(0, |w| w.len());
    if size == 0 || windows.iter().any(|w| w.len() != size) {
        return Err(GraphError::Shape {
            place: crate::graph::describe_origin(&origin),
            msg: "max-pool windows must be non-empty and of equal size".into(),
        });
    }
    let mut m = g.gather(x, windows.iter().map(|w| w[0]).collect())?;
    for j in 1..size {
        let a = g.gather(x, windows.iter().map(|w| w[j]).collect())?;
        m = max2(g, m, a, Role::MaxPool, origin.clone())?;
    }
    Ok(m)
}
