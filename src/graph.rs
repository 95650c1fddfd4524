//! The evaluation graph: a DAG of smooth operations and absolute values (THEORY.md §1–§2).
//!
//! Every node holds a *vector* value (length ≥ 1; scalars have length 1), so a dense layer
//! over one sample is one [`Op::MatVec`] node, not thousands of scalar nodes. Nodes are appended
//! after their operands, so node order is a topological order, and the order in which `abs`
//! nodes are created is the *evaluation order* of the switches.
//!
//! * Smooth nodes and constants are hash-consed: building the same expression twice returns
//!   the same node (constants compared bitwise).
//! * `abs` nodes are never merged. Every element of an `abs` node is one *switch*
//!   `u_i = |z_i|`, with `z_i` the matching element of the argument node. Structural relations
//!   between switches (identical or opposite arguments) are recorded by [`Graph::relations`].
//! * Each node carries flags used later: whether it depends on the variables at all, and whether
//!   it is *abs-affine* (piecewise affine in x: THEORY §4, "exactness in the abs-linear case").
//!
//! The graph is also a `petgraph` DAG (edges operand → user) for reachability questions.

use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::HashMap;
use thiserror::Error;

/// Index of a node of the evaluation graph (node order is a topological order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The position of the node in evaluation order.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Index of a switching variable `z_i` (the argument of one element of an `abs` node), in
/// evaluation order: `SwitchId(i)` is row `i` of `Z` and `L` in the abs-normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SwitchId(pub usize);

/// Smooth elementwise functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Smooth {
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
    Softplus,
    Sin,
    Cos,
    /// The error function erf (ONNX `Erf`, exact `Gelu`).
    Erf,
}

impl Smooth {
    /// The name used in programs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Smooth::Exp => "exp",
            Smooth::Log => "log",
            Smooth::Sqrt => "sqrt",
            Smooth::Tanh => "tanh",
            Smooth::Sigmoid => "sigmoid",
            Smooth::Softplus => "softplus",
            Smooth::Sin => "sin",
            Smooth::Cos => "cos",
            Smooth::Erf => "erf",
        }
    }
}

/// The role of a switch inside the kink operation it was lowered from (THEORY §1 and the
/// convention table of §3). A framework convention assigns a value σ̃ ∈ [−1, 1] to each role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `abs(u)`, `z = u`.
    Abs,
    /// `relu(u) = (u + |u|)/2`, `z = u`.
    Relu,
    /// `max(a,b) = (a + b + |a−b|)/2`, `z = a − b` (also each step of a multi-argument max).
    Max,
    /// `min(a,b) = (a + b − |a−b|)/2`, `z = a − b`.
    Min,
    /// `clamp(x,lo,hi)` lower switch `z1 = x − lo`.
    ClampLo,
    /// `clamp(x,lo,hi)` upper switch `z2 = x − hi`.
    ClampHi,
    /// `hardtanh` lower switch `z1 = x + 1`.
    HardtanhLo,
    /// `hardtanh` upper switch `z2 = x − 1`.
    HardtanhHi,
    /// `relu6` lower switch `z1 = x`.
    Relu6Lo,
    /// `relu6` upper switch `z2 = x − 6`.
    Relu6Hi,
    /// `leaky_relu(x,a) = ((1+a)x + (1−a)|x|)/2`, `z = x`.
    LeakyRelu,
    /// `hardsigmoid` lower switch `z1 = x/6 + 1/2` (generally `αx + β`).
    HardsigmoidLo,
    /// `hardsigmoid` upper switch `z2 = x/6 − 1/2` (generally `αx + β − 1`).
    HardsigmoidHi,
    /// One step of a max-pool scan, `z_j = m_(j−1) − a_j`.
    MaxPool,
}

impl Role {
    /// All roles, in the order of THEORY §3's table.
    pub const ALL: [Role; 14] = [
        Role::Abs,
        Role::Relu,
        Role::Max,
        Role::Min,
        Role::ClampLo,
        Role::ClampHi,
        Role::HardtanhLo,
        Role::HardtanhHi,
        Role::Relu6Lo,
        Role::Relu6Hi,
        Role::LeakyRelu,
        Role::HardsigmoidLo,
        Role::HardsigmoidHi,
        Role::MaxPool,
    ];

    /// The kink operation's name, as reported in `"op"`.
    pub fn op_name(self) -> &'static str {
        match self {
            Role::Abs => "abs",
            Role::Relu => "relu",
            Role::Max => "max",
            Role::Min => "min",
            Role::ClampLo | Role::ClampHi => "clamp",
            Role::HardtanhLo | Role::HardtanhHi => "hardtanh",
            Role::Relu6Lo | Role::Relu6Hi => "relu6",
            Role::LeakyRelu => "leaky_relu",
            Role::HardsigmoidLo | Role::HardsigmoidHi => "hardsigmoid",
            Role::MaxPool => "maxpool",
        }
    }

    /// A short name of the role (`"relu"`, `"clamp.lo"`, …), used in configuration and reports.
    pub fn name(self) -> &'static str {
        match self {
            Role::Abs => "abs",
            Role::Relu => "relu",
            Role::Max => "max",
            Role::Min => "min",
            Role::ClampLo => "clamp.lo",
            Role::ClampHi => "clamp.hi",
            Role::HardtanhLo => "hardtanh.lo",
            Role::HardtanhHi => "hardtanh.hi",
            Role::Relu6Lo => "relu6.lo",
            Role::Relu6Hi => "relu6.hi",
            Role::LeakyRelu => "leaky_relu",
            Role::HardsigmoidLo => "hardsigmoid.lo",
            Role::HardsigmoidHi => "hardsigmoid.hi",
            Role::MaxPool => "maxpool",
        }
    }

    /// Index of the role in [`Role::ALL`].
    pub fn index(self) -> usize {
        Role::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }
}

/// Where a node or switch came from, for messages and reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A position in a `.kc` program.
    Source { line: u32, col: u32 },
    /// A network layer: `unit` is the element index of the node (filled in per switch).
    Layer {
        sample: usize,
        layer: usize,
        kind: String,
    },
    /// A loss term of a network sample.
    Loss { sample: usize, kind: String },
    /// An ONNX node, by name.
    OnnxNode { sample: usize, name: String },
    /// Built by library code with no source position.
    Internal,
}

impl Origin {
    /// The source column, for program switches.
    pub fn column(&self) -> Option<u32> {
        match self {
            Origin::Source { col, .. } => Some(*col),
            _ => None,
        }
    }

    /// The *op site* of element `elem`: the same network unit, loss term or ONNX node element
    /// in every sample of a batch has the same site (THEORY §5.2, choosing classes). Program
    /// switches have no site.
    pub fn site(&self, elem: usize) -> Option<String> {
        match self {
            Origin::Layer { layer, kind, .. } => Some(format!("layer {layer} {kind} {elem}")),
            Origin::Loss { kind, .. } => Some(format!("loss {kind} {elem}")),
            Origin::OnnxNode { name, .. } => Some(format!("node {name} {elem}")),
            Origin::Source { .. } | Origin::Internal => None,
        }
    }

    /// Human description of element `elem` of a node with this origin (`"line 2"`, as in
    /// CONTRACT §3; `"sample 0, layer 1 (relu), unit 3"`). The column is in [`Origin::column`].
    pub fn describe(&self, elem: usize, len: usize) -> String {
        match self {
            Origin::Source { line, .. } => format!("line {line}"),
            Origin::Layer {
                sample,
                layer,
                kind,
            } => format!("sample {sample}, layer {layer} ({kind}), unit {elem}"),
            Origin::Loss { sample, kind } => {
                if len > 1 {
                    format!("sample {sample}, loss ({kind}), output {elem}")
                } else {
                    format!("sample {sample}, loss ({kind})")
                }
            }
            Origin::OnnxNode { sample, name } => {
                if len > 1 {
                    format!("sample {sample}, node '{name}', element {elem}")
                } else {
                    format!("sample {sample}, node '{name}'")
                }
            }
            Origin::Internal => format!("element {elem}"),
        }
    }
}

/// One operation of the graph. Binary elementwise operations accept operands of equal length,
/// or one operand of length 1 that is broadcast.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `x[offset .. offset + len]`.
    Var {
        offset: usize,
    },
    /// A constant vector.
    Const(Vec<f64>),
    Add(NodeId, NodeId),
    Sub(NodeId, NodeId),
    Mul(NodeId, NodeId),
    Div(NodeId, NodeId),
    Neg(NodeId),
    /// Integer power.
    PowI(NodeId, i32),
    Unary(Smooth, NodeId),
    /// `|arg|`, elementwise; every element is one switch. Never hash-consed.
    Abs(NodeId),
    /// `W·x` with `W` (`rows × cols`, row-major) the value of node `w`.
    MatVec {
        w: NodeId,
        x: NodeId,
        rows: usize,
    },
    /// Sum of all elements (length 1).
    Sum(NodeId),
    /// `out[k] = a[idx[k]]`.
    Gather(NodeId, Vec<usize>),
    /// Concatenation.
    Concat(Vec<NodeId>),
    /// `log Σ exp(a_k)` (length 1).
    LogSumExp(NodeId),
    /// `conv(x, w) + bias` over one sample ([`ConvSpec`] gives the layout): a smooth bilinear
    /// elemental, one node per sample (kernels in [`crate::tensor`]).
    Conv {
        x: NodeId,
        w: NodeId,
        bias: Option<NodeId>,
        spec: Box<ConvSpec>,
    },
}

/// Geometry of one N-d convolution (N = 1, 2 or 3) over ONE sample, ONNX layout without the
/// batch axis: input x is `(C_in, *in_spatial)` row-major, weight w is
/// `(C_out, C_in/group, *kernel)` row-major, optional bias `(C_out)`, output
/// `(C_out, *out_spatial)` row-major, with zero padding and
///
/// ```text
/// out_spatial[d] = (in_spatial[d] + pads_begin[d] + pads_end[d] − dilations[d]·(kernel[d]−1) − 1) / strides[d] + 1
/// ```
///
/// ```
/// use kinkcheck::graph::ConvSpec;
/// // LeNet-5 conv1: 1×28×28 → 6@5×5 → 6×24×24
/// let s = ConvSpec::new_2d(1, 6, [28, 28], [5, 5]);
/// assert_eq!(s.out_spatial().unwrap(), vec![24, 24]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub in_spatial: Vec<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads_begin: Vec<usize>,
    pub pads_end: Vec<usize>,
    pub dilations: Vec<usize>,
    pub group: usize,
}

impl ConvSpec {
    /// A 2-d convolution with unit strides and dilations, no padding, one group.
    pub fn new_2d(
        in_channels: usize,
        out_channels: usize,
        hw: [usize; 2],
        kernel: [usize; 2],
    ) -> Self {
        ConvSpec {
            in_channels,
            out_channels,
            in_spatial: hw.to_vec(),
            kernel: kernel.to_vec(),
            strides: vec![1, 1],
            pads_begin: vec![0, 0],
            pads_end: vec![0, 0],
            dilations: vec![1, 1],
            group: 1,
        }
    }

    /// Output spatial sizes; [`GraphError::Shape`] (place `"convolution"`) if the geometry is
    /// invalid: zero sizes, strides or dilations, a group not dividing both channel counts,
    /// fields of different numbers of dimensions, a (dilated) kernel larger than the padded
    /// input.
    pub fn out_spatial(&self) -> Result<Vec<usize>, GraphError> {
        crate::tensor::ConvGeometry::new(self)
            .map(|g| g.out_spatial)
            .map_err(|msg| GraphError::Shape {
                place: "convolution".into(),
                msg,
            })
    }
}

impl Op {
    /// Operands, in order.
    pub fn operands(&self) -> Vec<NodeId> {
        match self {
            Op::Var { .. } | Op::Const(_) => vec![],
            Op::Add(a, b) | Op::Sub(a, b) | Op::Mul(a, b) | Op::Div(a, b) => vec![*a, *b],
            Op::Neg(a)
            | Op::PowI(a, _)
            | Op::Unary(_, a)
            | Op::Abs(a)
            | Op::Sum(a)
            | Op::Gather(a, _)
            | Op::LogSumExp(a) => vec![*a],
            Op::MatVec { w, x, .. } => vec![*w, *x],
            Op::Concat(v) => v.clone(),
            Op::Conv { x, w, bias, .. } => {
                let mut v = vec![*x, *w];
                v.extend(*bias);
                v
            }
        }
    }
}

/// A node: its operation, its length, and structural flags.
#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    pub len: usize,
    /// Offset of the node's value in the flat value buffer of an evaluation.
    pub offset: usize,
    /// Does the value depend on the variables x at all?
    pub depends: bool,
    /// Is the node abs-affine, i.e. piecewise affine in x (THEORY §4)?
    pub affine: bool,
    /// Index into [`Graph::origins`] of the source place that created the node.
    pub origin: u32,
}

/// An `abs` node and the switches it holds.
#[derive(Debug, Clone)]
pub struct AbsNode {
    pub node: NodeId,
    pub arg: NodeId,
    pub role: Role,
    pub origin: Origin,
    /// Switch id of element 0; element `e` is switch `first_switch + e`.
    pub first_switch: usize,
}

/// Structural relation between two switches (THEORY §1 "graph hygiene").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// Same argument up to a positive factor: always the same sign.
    Identical,
    /// Arguments are negations of each other (`−p` vs `p`, `q−p` vs `p−q`, `c·p` with `c < 0`).
    Opposite,
}

/// A structural relation between switches `a < b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relation {
    pub a: SwitchId,
    pub b: SwitchId,
    pub kind: RelationKind,
}

/// Errors of graph construction (shape mismatches).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GraphError {
    /// A shape mismatch or invalid construction, at a place.
    #[error("{place}: {msg}")]
    Shape { place: String, msg: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Var(usize, usize),
    Const(Vec<u64>),
    Bin(u8, NodeId, NodeId),
    Neg(NodeId),
    PowI(NodeId, i32),
    Unary(Smooth, NodeId),
    MatVec(NodeId, NodeId, usize),
    Sum(NodeId),
    Gather(NodeId, Vec<usize>),
    Concat(Vec<NodeId>),
    LogSumExp(NodeId),
    Conv(NodeId, NodeId, Option<NodeId>, ConvSpec),
}

/// The evaluation graph. Build it with the methods below (smooth ops) and [`crate::lower`]
/// (kink ops); evaluate it with [`crate::eval`].
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    dag: DiGraph<(), ()>,
    cons: HashMap<Key, NodeId>,
    abs: Vec<AbsNode>,
    /// Source places of nodes, indexed by [`Node::origin`].
    pub origins: Vec<Origin>,
    current_origin: u32,
    n_vars: usize,
    total_len: usize,
    n_switches: usize,
    output: Option<NodeId>,
}

impl Graph {
    /// An empty graph over `n_vars` variables.
    pub fn new(n_vars: usize) -> Self {
        Graph {
            n_vars,
            origins: vec![Origin::Internal],
            ..Default::default()
        }
    }

    /// Number of variables n.
    pub fn n_vars(&self) -> usize {
        self.n_vars
    }
    /// Number of switches s.
    pub fn n_switches(&self) -> usize {
        self.n_switches
    }
    /// All nodes, in topological (evaluation) order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// Forward data movement of the pure-copy ops, on any per-element buffer laid out like the
    /// value buffer (values, tangents, magnitudes, the flat pre-pass's labels): `Gather` copies
    /// `out[k] = a[idx[k]]`, `Concat` copies its parts one after another into the slot at `off`.
    /// Touches nothing for every other op.
    pub(crate) fn move_elements<T: Copy>(&self, op: &Op, buf: &mut [T], off: usize) {
        match op {
            Op::Gather(a, idx) => {
                let oa = self.node(*a).offset;
                for (k, &j) in idx.iter().enumerate() {
                    buf[off + k] = buf[oa + j];
                }
            }
            Op::Concat(parts) => {
                let mut k = off;
                for p in parts {
                    let n = self.node(*p);
                    buf.copy_within(n.offset..n.offset + n.len, k);
                    k += n.len;
                }
            }
            _ => {}
        }
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }
    /// Length of the flat value buffer (sum of node lengths).
    pub fn total_len(&self) -> usize {
        self.total_len
    }
    /// The `abs` nodes in evaluation order.
    pub fn abs_nodes(&self) -> &[AbsNode] {
        &self.abs
    }
    /// The petgraph DAG (edges operand → user; node indices equal [`NodeId`]s).
    pub fn dag(&self) -> &DiGraph<(), ()> {
        &self.dag
    }
    /// The scalar output node, once set.
    pub fn output(&self) -> Option<NodeId> {
        self.output
    }
    /// Declare the scalar output.
    pub fn set_output(&mut self, y: NodeId) -> Result<(), GraphError> {
        if self.len(y) != 1 {
            return Err(self.shape_err(format!(
                "the output must be a scalar, got length {}",
                self.len(y)
            )));
        }
        self.output = Some(y);
        Ok(())
    }

    /// Set the origin recorded on the nodes built from now on (for error messages).
    pub fn set_origin(&mut self, origin: Origin) {
        if let Some(i) = self.origins.iter().rposition(|o| *o == origin) {
            self.current_origin = i as u32;
        } else {
            self.origins.push(origin);
            self.current_origin = (self.origins.len() - 1) as u32;
        }
    }

    /// The origin of a node.
    pub fn origin_of(&self, id: NodeId) -> &Origin {
        &self.origins[self.node(id).origin as usize]
    }

    /// The switch ↦ (abs node index, element) map.
    pub fn switch_location(&self, s: SwitchId) -> (usize, usize) {
        // abs nodes are sorted by first_switch
        let k = self.abs.partition_point(|a| a.first_switch <= s.0) - 1;
        (k, s.0 - self.abs[k].first_switch)
    }

    /// Length of a node's value.
    pub fn len(&self, id: NodeId) -> usize {
        self.nodes[id.index()].len
    }

    /// Is the graph empty?
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn shape_err(&self, msg: String) -> GraphError {
        GraphError::Shape {
            place: describe_origin(&self.origins[self.current_origin as usize]),
            msg,
        }
    }

    /// Fold an operation whose operands are all constants (elementwise arithmetic and smooth
    /// functions only; a non-finite result is left unfolded so evaluation reports it).
    fn fold(&self, op: &Op, len: usize) -> Option<Vec<f64>> {
        let c = |id: &NodeId| self.const_value(*id);
        let at = |v: &[f64], k: usize| if v.len() == 1 { v[0] } else { v[k] };
        let out: Vec<f64> = match op {
            Op::Add(a, b) | Op::Sub(a, b) | Op::Mul(a, b) | Op::Div(a, b) => {
                let (va, vb) = (c(a)?, c(b)?);
                (0..len)
                    .map(|k| {
                        let (x, y) = (at(va, k), at(vb, k));
                        match op {
                            Op::Add(..) => x + y,
                            Op::Sub(..) => x - y,
                            Op::Mul(..) => x * y,
                            _ => x / y,
                        }
                    })
                    .collect()
            }
            Op::Neg(a) => c(a)?.iter().map(|v| -v).collect(),
            Op::PowI(a, p) => c(a)?.iter().map(|v| v.powi(*p)).collect(),
            _ => return None,
        };
        out.iter().all(|v| v.is_finite()).then_some(out)
    }

    fn push(&mut self, op: Op, len: usize, key: Option<Key>) -> NodeId {
        if let Some(k) = &key {
            if let Some(&id) = self.cons.get(k) {
                return id;
            }
        }
        if let Some(v) = self.fold(&op, len) {
            let key = Key::Const(v.iter().map(|c| c.to_bits()).collect());
            if let Some(&id) = self.cons.get(&key) {
                return id;
            }
            return self.push(Op::Const(v), len, Some(key));
        }
        let operands = op.operands();
        let dep = |g: &Graph, a: NodeId| g.nodes[a.index()].depends;
        let aff = |g: &Graph, a: NodeId| g.nodes[a.index()].affine;
        let depends = match &op {
            Op::Var { .. } => true,
            Op::Const(_) => false,
            _ => operands.iter().any(|&a| dep(self, a)),
        };
        let affine = !depends
            || match &op {
                Op::Var { .. } | Op::Const(_) => true,
                Op::Add(..)
                | Op::Sub(..)
                | Op::Neg(_)
                | Op::Abs(_)
                | Op::Sum(_)
                | Op::Gather(..)
                | Op::Concat(_) => operands.iter().all(|&a| aff(self, a)),
                Op::Mul(a, b) | Op::MatVec { w: a, x: b, .. } => {
                    (!dep(self, *a) && aff(self, *b)) || (!dep(self, *b) && aff(self, *a))
                }
                Op::Conv { x, w, bias, .. } => {
                    ((!dep(self, *w) && aff(self, *x)) || (!dep(self, *x) && aff(self, *w)))
                        && bias.is_none_or(|b| aff(self, b))
                }
                Op::Div(a, b) => !dep(self, *b) && aff(self, *a),
                Op::PowI(a, p) => *p == 1 && aff(self, *a),
                Op::Unary(..) | Op::LogSumExp(_) => false,
            };
        let id = NodeId(self.nodes.len() as u32);
        let ix = self.dag.add_node(());
        debug_assert_eq!(ix.index(), id.index());
        for a in &operands {
            self.dag
                .add_edge(NodeIndex::new(a.index()), NodeIndex::new(id.index()), ());
        }
        self.nodes.push(Node {
            op,
            len,
            offset: self.total_len,
            depends,
            affine,
            origin: self.current_origin,
        });
        self.total_len += len;
        if let Some(k) = key {
            self.cons.insert(k, id);
        }
        id
    }

    /// The variables `x[offset .. offset+len]` as one node.
    pub fn var(&mut self, offset: usize, len: usize) -> Result<NodeId, GraphError> {
        if len == 0 || offset + len > self.n_vars {
            return Err(self.shape_err(format!(
                "variables {offset}..{} out of range (n = {})",
                offset + len,
                self.n_vars
            )));
        }
        Ok(self.push(Op::Var { offset }, len, Some(Key::Var(offset, len))))
    }

    /// A constant vector (hash-consed bitwise).
    pub fn constant(&mut self, v: Vec<f64>) -> Result<NodeId, GraphError> {
        if v.is_empty() {
            return Err(self.shape_err("empty constant".into()));
        }
        if v.iter().any(|c| !c.is_finite()) {
            return Err(self.shape_err("constant is NaN or infinite".into()));
        }
        let key = Key::Const(v.iter().map(|c| c.to_bits()).collect());
        let len = v.len();
        Ok(self.push(Op::Const(v), len, Some(key)))
    }

    /// A scalar constant.
    pub fn scalar(&mut self, c: f64) -> Result<NodeId, GraphError> {
        self.constant(vec![c])
    }

    /// The constant value of a node, if it is a constant node.
    pub fn const_value(&self, id: NodeId) -> Option<&[f64]> {
        match &self.nodes[id.index()].op {
            Op::Const(v) => Some(v),
            _ => None,
        }
    }

    fn is_const_all(&self, id: NodeId, c: f64) -> bool {
        self.const_value(id)
            .is_some_and(|v| v.iter().all(|&x| x == c))
    }

    fn bin_len(&self, a: NodeId, b: NodeId, what: &str) -> Result<usize, GraphError> {
        let (la, lb) = (self.len(a), self.len(b));
        if la == lb || lb == 1 {
            Ok(la)
        } else if la == 1 {
            Ok(lb)
        } else {
            Err(self.shape_err(format!("{what} of vectors of lengths {la} and {lb}")))
        }
    }

    /// `a + b` (elementwise). `a + 0` is `a`.
    pub fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, GraphError> {
        let len = self.bin_len(a, b, "sum")?;
        if self.is_const_all(b, 0.0) && self.len(a) == len {
            return Ok(a);
        }
        if self.is_const_all(a, 0.0) && self.len(b) == len {
            return Ok(b);
        }
        Ok(self.push(Op::Add(a, b), len, Some(Key::Bin(0, a, b))))
    }

    /// `a − b` (elementwise). `a − 0` is `a`.
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, GraphError> {
        let len = self.bin_len(a, b, "difference")?;
        if self.is_const_all(b, 0.0) && self.len(a) == len {
            return Ok(a);
        }
        Ok(self.push(Op::Sub(a, b), len, Some(Key::Bin(1, a, b))))
    }

    /// `a · b` (elementwise). `1·a` is `a`.
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, GraphError> {
        let len = self.bin_len(a, b, "product")?;
        if self.is_const_all(a, 1.0) && self.len(b) == len {
            return Ok(b);
        }
        if self.is_const_all(b, 1.0) && self.len(a) == len {
            return Ok(a);
        }
        Ok(self.push(Op::Mul(a, b), len, Some(Key::Bin(2, a, b))))
    }

    /// `a / b` (elementwise).
    pub fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, GraphError> {
        let len = self.bin_len(a, b, "quotient")?;
        if self.is_const_all(b, 1.0) && self.len(a) == len {
            return Ok(a);
        }
        Ok(self.push(Op::Div(a, b), len, Some(Key::Bin(3, a, b))))
    }

    /// `c · a` for a scalar constant `c`.
    pub fn scale(&mut self, c: f64, a: NodeId) -> Result<NodeId, GraphError> {
        let cn = self.scalar(c)?;
        self.mul(cn, a)
    }

    /// `−a`.
    pub fn neg(&mut self, a: NodeId) -> NodeId {
        let len = self.len(a);
        self.push(Op::Neg(a), len, Some(Key::Neg(a)))
    }

    /// `a^p` for an integer `p`.
    pub fn powi(&mut self, a: NodeId, p: i32) -> NodeId {
        if p == 1 {
            return a;
        }
        let len = self.len(a);
        self.push(Op::PowI(a, p), len, Some(Key::PowI(a, p)))
    }

    /// A smooth elementwise function.
    pub fn unary(&mut self, f: Smooth, a: NodeId) -> NodeId {
        let len = self.len(a);
        self.push(Op::Unary(f, a), len, Some(Key::Unary(f, a)))
    }

    /// `W·x` with `W` of shape `rows × (len(w)/rows)`, row-major.
    pub fn matvec(&mut self, w: NodeId, x: NodeId, rows: usize) -> Result<NodeId, GraphError> {
        let (lw, lx) = (self.len(w), self.len(x));
        if rows == 0 || lw != rows * lx {
            return Err(self.shape_err(format!(
                "matrix with {lw} entries and {rows} rows times a vector of length {lx}"
            )));
        }
        Ok(self.push(
            Op::MatVec { w, x, rows },
            rows,
            Some(Key::MatVec(w, x, rows)),
        ))
    }

    /// `y = conv(x, w) + bias` over one sample (layout in [`ConvSpec`]): one node of length
    /// `C_out · Π out_spatial`. Fails with [`GraphError::Shape`] at the current origin if the
    /// geometry is invalid or a node's length does not match it.
    ///
    /// ```
    /// use kinkcheck::graph::{ConvSpec, Graph};
    /// let mut g = Graph::new(9);
    /// let x = g.var(0, 9).unwrap(); // 1 channel, 3×3
    /// let w = g.constant(vec![1.0; 4]).unwrap(); // 1@2×2
    /// let y = g.conv(x, w, None, ConvSpec::new_2d(1, 1, [3, 3], [2, 2])).unwrap();
    /// assert_eq!(g.len(y), 4); // 1×2×2
    /// ```
    pub fn conv(
        &mut self,
        x: NodeId,
        w: NodeId,
        bias: Option<NodeId>,
        spec: ConvSpec,
    ) -> Result<NodeId, GraphError> {
        let geo = crate::tensor::ConvGeometry::new(&spec)
            .map_err(|m| self.shape_err(format!("convolution: {m}")))?;
        let shape = |v: &[usize]| {
            v.iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join("×")
        };
        let (lx, lw) = (self.len(x), self.len(w));
        if lx != geo.x_len() {
            return Err(self.shape_err(format!(
                "convolution input has {lx} elements, the geometry {}×{} needs {}",
                spec.in_channels,
                shape(&spec.in_spatial),
                geo.x_len()
            )));
        }
        if lw != geo.w_len() {
            return Err(self.shape_err(format!(
                "convolution weight has {lw} elements, the geometry {}×{}×{} needs {}",
                spec.out_channels,
                spec.in_channels / spec.group,
                shape(&spec.kernel),
                geo.w_len()
            )));
        }
        if let Some(b) = bias {
            if self.len(b) != spec.out_channels {
                return Err(self.shape_err(format!(
                    "convolution bias has {} elements, expected one per output channel ({})",
                    self.len(b),
                    spec.out_channels
                )));
            }
        }
        let len = geo.y_len();
        let key = Key::Conv(x, w, bias, spec.clone());
        Ok(self.push(
            Op::Conv {
                x,
                w,
                bias,
                spec: Box::new(spec),
            },
            len,
            Some(key),
        ))
    }

    /// Sum of the elements (a scalar).
    pub fn sum(&mut self, a: NodeId) -> NodeId {
        if self.len(a) == 1 {
            return a;
        }
        self.push(Op::Sum(a), 1, Some(Key::Sum(a)))
    }

    /// `out[k] = a[idx[k]]`.
    pub fn gather(&mut self, a: NodeId, idx: Vec<usize>) -> Result<NodeId, GraphError> {
        let la = self.len(a);
        if idx.is_empty() || idx.iter().any(|&i| i >= la) {
            return Err(self.shape_err(format!(
                "gather of indices {idx:?} from a vector of length {la}"
            )));
        }
        if la == idx.len() && idx.iter().enumerate().all(|(k, &i)| k == i) {
            return Ok(a);
        }
        let len = idx.len();
        Ok(self.push(Op::Gather(a, idx.clone()), len, Some(Key::Gather(a, idx))))
    }

    /// Concatenation of vectors.
    pub fn concat(&mut self, parts: Vec<NodeId>) -> Result<NodeId, GraphError> {
        if parts.is_empty() {
            return Err(self.shape_err("concatenation of nothing".into()));
        }
        if parts.len() == 1 {
            return Ok(parts[0]);
        }
        let len = parts.iter().map(|&p| self.len(p)).sum();
        Ok(self.push(Op::Concat(parts.clone()), len, Some(Key::Concat(parts))))
    }

    /// `log Σ exp(a_k)` (a scalar).
    pub fn logsumexp(&mut self, a: NodeId) -> NodeId {
        self.push(Op::LogSumExp(a), 1, Some(Key::LogSumExp(a)))
    }

    /// `|arg|`, elementwise: a new `abs` node (never merged) whose elements are new switches.
    /// Use [`crate::lower`] for kink operations; `role` and `origin` describe the switch.
    pub fn abs(&mut self, arg: NodeId, role: Role, origin: Origin) -> NodeId {
        let len = self.len(arg);
        let node = self.push(Op::Abs(arg), len, None);
        self.abs.push(AbsNode {
            node,
            arg,
            role,
            origin,
            first_switch: self.n_switches,
        });
        self.n_switches += len;
        node
    }

    /// Signed canonical form of element-wise sign behaviour: `(key, sign)` such that two nodes
    /// with the same key have values `c₁·p` and `c₂·p` with `sign(c₁)`, `sign(c₂)` the signs.
    fn canon(&self, id: NodeId) -> (CanonKey, i8) {
        match &self.nodes[id.index()].op {
            Op::Neg(p) => {
                let (k, s) = self.canon(*p);
                (k, -s)
            }
            Op::Mul(a, b) => {
                // c·p or p·c with a constant c of one strict sign.
                for (c, p) in [(*a, *b), (*b, *a)] {
                    if let Some(s) = self.const_sign(c) {
                        if self.len(p) == self.len(id) {
                            let (k, sp) = self.canon(p);
                            return (k, sp * s);
                        }
                    }
                }
                (CanonKey::Node(id), 1)
            }
            Op::Div(p, c) => match self.const_sign(*c) {
                Some(s) if self.len(*p) == self.len(id) => {
                    let (k, sp) = self.canon(*p);
                    (k, sp * s)
                }
                _ => (CanonKey::Node(id), 1),
            },
            Op::Sub(a, b) if self.len(*a) == self.len(*b) => {
                if a < b {
                    (CanonKey::Pair(*a, *b), 1)
                } else {
                    (CanonKey::Pair(*b, *a), -1)
                }
            }
            _ => (CanonKey::Node(id), 1),
        }
    }

    fn const_sign(&self, id: NodeId) -> Option<i8> {
        let v = self.const_value(id)?;
        if v.iter().all(|&c| c > 0.0) {
            Some(1)
        } else if v.iter().all(|&c| c < 0.0) {
            Some(-1)
        } else {
            None
        }
    }

    /// Structural relations between switches (THEORY §1): two switches are *identical* when
    /// their arguments are the same expression up to a positive constant factor, *opposite*
    /// when up to a negative one (`−p` vs `p`, `p−q` vs `q−p`, `c·p` with `c < 0`). Each
    /// switch is related to the first switch of its group; pairs are listed with `a < b`.
    pub fn relations(&self) -> Vec<Relation> {
        let all: Vec<SwitchId> = (0..self.n_switches()).map(SwitchId).collect();
        self.relations_among(&all)
    }

    /// The structural relations among the switches `among` only (ascending ids), each related
    /// to the first switch of `among` with the same canonical argument. Equal to
    /// [`Self::relations`] restricted to `among` when the first switch of every class is in
    /// `among` (always the case for the active set: identical and opposite switches have the
    /// same |z|), and costs O(|among|) instead of a pass over every switch of the graph.
    pub fn relations_among(&self, among: &[SwitchId]) -> Vec<Relation> {
        let mut first: HashMap<(CanonKey, usize), (SwitchId, i8)> = HashMap::new();
        let mut canon_of: HashMap<usize, (CanonKey, i8)> = HashMap::new();
        let mut out = Vec::new();
        for &sid in among {
            let (k, e) = self.switch_location(sid);
            let (key, sign) = *canon_of
                .entry(k)
                .or_insert_with(|| self.canon(self.abs[k].arg));
            match first.get(&(key, e)) {
                Some(&(a, s)) => out.push(Relation {
                    a,
                    b: sid,
                    kind: if s == sign {
                        RelationKind::Identical
                    } else {
                        RelationKind::Opposite
                    },
                }),
                None => {
                    first.insert((key, e), (sid, sign));
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CanonKey {
    Node(NodeId),
    Pair(NodeId, NodeId),
}

/// One-line description of an origin, for messages about a node.
pub fn describe_origin(o: &Origin) -> String {
    match o {
        Origin::Source { line, col } => format!("{line}:{col}"),
        Origin::Layer {
            sample,
            layer,
            kind,
        } => format!("sample {sample}, layer {layer} ({kind})"),
        Origin::Loss { sample, kind } => format!("sample {sample}, loss ({kind})"),
        Origin::OnnxNode { sample, name } => format!("node '{name}' (sample {sample})"),
        Origin::Internal => "graph".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_consing_shares_smooth_nodes_not_abs() {
        let mut g = Graph::new(2);
        let x = g.var(0, 1).unwrap();
        let y = g.var(1, 1).unwrap();
        let a = g.sub(x, y).unwrap();
        let b = g.sub(x, y).unwrap();
        assert_eq!(a, b);
        let c1 = g.scalar(2.0).unwrap();
        let c2 = g.scalar(2.0).unwrap();
        assert_eq!(c1, c2);
        let z1 = g.abs(a, Role::Abs, Origin::Internal);
        let z2 = g.abs(a, Role::Abs, Origin::Internal);
        assert_ne!(z1, z2);
        assert_eq!(g.n_switches(), 2);
        let r = g.relations();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, RelationKind::Identical);
    }

    #[test]
    fn opposite_relations() {
        let mut g = Graph::new(2);
        let x = g.var(0, 1).unwrap();
        let y = g.var(1, 1).unwrap();
        let a = g.sub(x, y).unwrap();
        let b = g.sub(y, x).unwrap();
        let na = g.neg(a);
        let m = g.scale(-3.0, x).unwrap();
        g.abs(a, Role::Abs, Origin::Internal);
        g.abs(b, Role::Abs, Origin::Internal);
        g.abs(na, Role::Abs, Origin::Internal);
        g.abs(x, Role::Abs, Origin::Internal);
        g.abs(m, Role::Abs, Origin::Internal);
        let r = g.relations();
        let kinds: Vec<_> = r.iter().map(|r| (r.a.0, r.b.0, r.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (0, 1, RelationKind::Opposite),
                (0, 2, RelationKind::Opposite),
                (3, 4, RelationKind::Opposite)
            ]
        );
        // restricted to a subset: the relations among its members, nothing else
        let some = [SwitchId(1), SwitchId(2), SwitchId(4)];
        let kinds: Vec<_> = g
            .relations_among(&some)
            .iter()
            .map(|r| (r.a.0, r.b.0, r.kind))
            .collect();
        assert_eq!(kinds, vec![(1, 2, RelationKind::Identical)]);
    }

    #[test]
    fn affine_flags() {
        let mut g = Graph::new(2);
        let x = g.var(0, 1).unwrap();
        let y = g.var(1, 1).unwrap();
        let xy = g.mul(x, y).unwrap();
        let two = g.scalar(2.0).unwrap();
        let x2 = g.mul(two, x).unwrap();
        let ax = g.abs(x2, Role::Abs, Origin::Internal);
        let e = g.unary(Smooth::Exp, two);
        assert!(!g.node(xy).affine);
        assert!(g.node(x2).affine);
        assert!(g.node(ax).affine);
        assert!(g.node(e).affine && !g.node(e).depends);
    }

    #[test]
    fn shape_errors_are_errors() {
        let mut g = Graph::new(3);
        let x = g.var(0, 2).unwrap();
        let y = g.var(2, 1).unwrap();
        assert!(g.add(x, y).is_ok()); // broadcast
        let w = g.constant(vec![1.0; 5]).unwrap();
        assert!(g.matvec(w, x, 2).is_err());
        assert!(g.var(2, 2).is_err());
        assert!(g.set_output(x).is_err());
    }
}
