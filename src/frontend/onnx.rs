//! Lowering a decoded ONNX model ([`super::onnx_proto::Model`]) and a batch of data into one
//! scalar objective (CONTRACT.md §2 and §4).
//!
//! # The objective
//!
//! Exactly as for network descriptions ([`super::network`]): `f = Σ_k ℓ(N(x_k), y_k)`, the sum
//! over the samples of the data of the per-sample loss (`mse`, `l1`, `hinge`,
//! `cross_entropy`, `none`); the default loss is `mse` when the data have targets and `none`
//! otherwise.
//!
//! # Samples
//!
//! The model's first axis of its (single) graph input is the batch axis. Each sample is run
//! through the graph separately with batch size 1, so every per-sample tensor is one vector
//! node of the evaluation graph, with its shape (batch axis removed) tracked alongside.
//! Samples come in data order and the nodes of a sample in file order, so switches are
//! ordered sample by sample, node by node, element by element (THEORY.md §1). A sample is
//! written in the data file as a flat vector of the input's per-sample size or as a nested
//! array (`x.tolist()` of one sample), flattened row-major.
//!
//! # Variables and their order (CONTRACT §4)
//!
//! * `wrt params` (the default): every floating-point initializer, in file order, each tensor
//!   row-major, named `W1[i,j]` after the tensor (a scalar tensor is named after itself).
//!   Integer initializers (shapes) and folded `Constant` nodes are constants. The point is
//!   the stored initializer values; the inputs are constants.
//! * `wrt inputs`: the graph input of every sample, sample after sample, named `x[s][j]`
//!   (`x[s][c,j]` for a per-sample shape `[C, L]`). The weights are constants.
//!
//! # Supported operators
//!
//! What `torch.onnx.export` emits for ordinary MLPs and CNNs, with both the classic
//! exporter (opset 17) and the default dynamo one (opset 18+: axes, pads and shapes as
//! inputs). Shapes are inferred per sample (the batch axis removed):
//!
//! * dense: `Gemm` (`alpha`, `beta`, `transB`; `transA` = 0), `MatMul` (per-sample vector
//!   times a weight matrix or vector);
//! * convolution and pooling over per-sample `[C, L]` or `[C, H, W]` tensors: `Conv`
//!   (1-D/2-D, `pads`, `strides`, `dilations`, `group`, `auto_pad`, bias or not; one
//!   [`Graph::conv`] node per sample), `MaxPool` (`pads`, `strides`, `dilations`,
//!   `ceil_mode`; padding is −∞, so padded cells are simply not candidates),
//!   `AveragePool` (`count_include_pad` 0 or 1, `ceil_mode`), `GlobalAveragePool`,
//!   `GlobalMaxPool` (pools are sums of window cells, one constant matrix–vector product);
//! * elementwise: `Add`, `Sub`, `Mul`, `Div` (NumPy broadcasting, never across the batch
//!   axis), `Neg`, `Relu`, `LeakyRelu`, `Abs`, `Max`, `Min` (n-ary), `Clip` (bounds from
//!   inputs for opset ≥ 11, attributes before), `HardSigmoid`, `Elu`, and the smooth `Tanh`,
//!   `Sigmoid`, `Exp`, `Log`, `Sqrt`, `Softplus`, `Sin`, `Cos`, `Erf`, `Gelu` (exact and
//!   `tanh`); `BatchNormalization` (inference form), `Dropout` (inference: the identity),
//!   `Cast` (the identity: values are `f64`);
//! * `Softmax`, `LogSoftmax` (any axis but the batch axis), `ReduceMean`, `ReduceSum`,
//!   `ReduceMax` (left fold with the max-pool rule: the dynamo exporter's global max pool),
//!   `ReduceMin` (binary min rule) — axes as attribute or input, `keepdims`;
//! * layout: `Flatten`, `Reshape` (`0` and `−1`; the shape stored or computed from `Shape`),
//!   `Transpose`, `Squeeze`, `Unsqueeze`, `Concat`, `Slice`, `Pad` (constant mode; pads as
//!   attribute or input), `Identity`, and the constant subgraphs the classic exporter writes
//!   for `F.pad` (`Shape`, `ConstantOfShape`, `Concat`, `Slice`, `Cast` on constants, folded),
//!   plus folded `Constant`s.
//!
//! Kink operators lower through [`crate::lower`] (THEORY §1): `Relu`, `Abs`, `LeakyRelu`,
//! `HardSigmoid` as their rows say; `Max`/`Min` fold left to right with the binary max/min
//! rule; each `MaxPool`/`GlobalMaxPool` window is a left fold over its cells in row-major
//! order with the max-pool rule, whose PyTorch value (σ̃ = +1: a tie goes to the running
//! maximum, i.e. to the first maximal cell of the scan) was checked against
//! `torch.nn.functional.max_pool1d/2d` backward with tied candidates in torch 2.15
//! (`tools/gen_torch_models.py --check-rules`: all four of a 2×2 window tied → gradient
//! `[1, 0, 0, 0]`; cells (0,1), (1,0) tied → `[0, 1, 0, 0]`; three of a 1-D window tied →
//! `[1, 0, 0]`). `Clip` follows the [`ClipRule`] (`--clip`). `Elu` is
//! `relu(x) + α(exp(x − relu(x)) − 1)` with one relu switch `z = x` shared by both parts
//! (`x − relu(x) = min(x, 0)`): its derivative at 0 is `r + α(1 − r)` with `r = relu′(0)`,
//! which is α under PyTorch (r = 0), as `torch.nn.functional.elu` computes (it takes the
//! `x ≤ 0` branch at 0). Anything else is an error naming the operator and the node; so
//! are bad attributes (negative pads, an unknown `auto_pad`, a kernel larger than the
//! padded input, mismatched weight shapes), each naming the node.

use super::network::{sample_loss, Data, Loss, Wrt};
use super::onnx_proto::{AttrValue, Model, Node};
use super::{Problem, VarNames};
use crate::error::Error;
use crate::graph::{ConvSpec, Graph, NodeId, Origin, Role, Smooth};
use crate::lower;
use std::collections::HashMap;
use std::path::Path;

fn err(msg: impl Into<String>) -> Error {
    Error::Network(msg.into())
}

/// Read and decode an ONNX file.
pub fn load(path: &Path) -> Result<Model, Error> {
    Ok(super::onnx_proto::load(path)?)
}

/// A tensor during lowering: its graph node (flat, row-major), its shape, and whether it is
/// per-sample (`batched`: the batch axis, of size 1, was removed from `shape`) or shared by
/// all samples (an initializer or something computed from initializers only).
#[derive(Debug, Clone, PartialEq)]
struct Value {
    node: NodeId,
    shape: Vec<usize>,
    batched: bool,
}

/// Number of elements of a shape (saturating, so absurd declared shapes give a mismatch
/// error instead of an overflow).
fn numel(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |a, &b| a.saturating_mul(b))
}

/// Row-major multi-indices of a shape.
fn multi_indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n = numel(shape);
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0; shape.len()];
    for _ in 0..n {
        out.push(idx.clone());
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Lowering state shared by all samples.
struct Ctx<'m> {
    model: &'m Model,
    /// Offsets of the float initializers among the variables (`wrt params`).
    offsets: HashMap<&'m str, usize>,
    /// Tensor values built so far (shared by all samples).
    cache: HashMap<String, Value>,
    /// The rule for two-sided `Clip` nodes.
    clip: ClipRule,
}

impl<'m> Ctx<'m> {
    /// The initializer or constant `name` as a value, if it is one.
    fn tensor(&mut self, g: &mut Graph, name: &str) -> Result<Option<Value>, Error> {
        if let Some(v) = self.cache.get(name) {
            return Ok(Some(v.clone()));
        }
        let Some(t) = self.model.tensor(name) else {
            return Ok(None);
        };
        if t.data.is_empty() {
            return Err(err(format!("tensor '{name}' is empty")));
        }
        let node = match self.offsets.get(name) {
            Some(&off) => g.var(off, t.data.len())?,
            None => g.constant(t.data.clone())?,
        };
        let v = Value {
            node,
            shape: t.dims.clone(),
            batched: false,
        };
        self.cache.insert(name.to_string(), v.clone());
        Ok(Some(v))
    }
}

/// The AD rule assumed for ONNX `Clip` at a bound (`--clip`, CONTRACT §2).
///
/// `torch.clamp`, `nn.Hardtanh`/`F.hardtanh` and `nn.ReLU6` all export as `Clip`. Checked
/// in torch 2.15 (float64, CPU; `python3 tools/gen_torch_models.py --check-rules`, recorded
/// in `fixtures/torch/torch_rules.json`): the gradient of `F.hardtanh(x, lo, hi)` and
/// `nn.ReLU6()(x)` is 0 at `x = lo` and at `x = hi` (lo, hi = −1, 1; 0, 6; −0.5, 2.25) —
/// and so is that of `torch.clamp(x, lo, hi)` with number bounds and of
/// `torch.clamp(x, min=lo)` / `torch.clamp(x, max=hi)`. (`torch.clamp` with *tensor* bounds
/// gives ½, a min/max tie; the derivative 1 of [`ClipRule::Clamp`] is what THEORY §3 lists
/// for clamp, but torch 2.15 no longer computes it for number bounds.) One-sided `Clip`s
/// follow the same rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClipRule {
    /// `nn.Hardtanh`/`nn.ReLU6` (the default; in torch 2.15 also `torch.clamp` with number
    /// bounds): derivative 0 at a bound;
    /// the switches get the hardtanh roles ([`Role::HardtanhLo`]/[`Role::HardtanhHi`],
    /// [`Role::Relu6Lo`]/[`Role::Relu6Hi`] when the bounds are 0 and 6).
    #[default]
    Hardtanh,
    /// The clamp rule of THEORY §3: derivative 1 at a bound ([`Role::ClampLo`]/
    /// [`Role::ClampHi`] under the `pytorch` convention).
    Clamp,
}

impl std::str::FromStr for ClipRule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hardtanh" | "relu6" => Ok(ClipRule::Hardtanh),
            "clamp" => Ok(ClipRule::Clamp),
            other => Err(Error::input(format!(
                "unknown --clip rule '{other}' (expected clamp or hardtanh)"
            ))),
        }
    }
}

/// Lower `model` over the batch `data` into an objective. `wrt` defaults to `params`, `loss`
/// to `mse` when the data have targets and `none` otherwise. `Clip` nodes use the default
/// [`ClipRule`] (see [`problem_with`]).
///
/// ```
/// use kinkcheck::frontend::{network::Data, onnx};
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/onnx/e12_one_neuron.onnx");
/// let model = onnx::load(path.as_ref()).unwrap();
/// let data = Data::from_json(r#"{"inputs": [[0]], "targets": [[1]]}"#).unwrap();
/// let p = onnx::problem(&model, &data, None, None).unwrap();
/// assert_eq!(p.var_names, ["W1[0,0]", "b1[0]", "W2[0,0]", "b2[0]"]);
/// ```
pub fn problem(
    model: &Model,
    data: &Data,
    wrt: Option<Wrt>,
    loss: Option<Loss>,
) -> Result<Problem, Error> {
    problem_with(model, data, wrt, loss, ClipRule::default())
}

/// [`problem`] with an explicit rule for two-sided `Clip` nodes.
pub fn problem_with(
    model: &Model,
    data: &Data,
    wrt: Option<Wrt>,
    loss: Option<Loss>,
    clip: ClipRule,
) -> Result<Problem, Error> {
    let wrt = wrt.unwrap_or(Wrt::Params);
    let loss = loss.unwrap_or(if data.targets.is_some() {
        Loss::Mse
    } else {
        Loss::None
    });
    check_ops(model)?;
    let k = data.check()?;
    let input = match model.inputs.as_slice() {
        [one] => one,
        [] => return Err(err("the ONNX model has no graph input")),
        many => {
            return Err(err(format!(
                "the ONNX model has {} graph inputs; kinkcheck supports exactly one",
                many.len()
            )))
        }
    };
    let output_name = match model.outputs.as_slice() {
        [one] => one.name.clone(),
        [] => return Err(err("the ONNX model has no graph output")),
        many => {
            return Err(err(format!(
                "the ONNX model has {} graph outputs; kinkcheck supports exactly one",
                many.len()
            )))
        }
    };
    let in_shape = sample_shape(&input.name, &input.dims, k)?;
    let n_samples = data.inputs.len();

    // Variables.
    let mut offsets = HashMap::new();
    let (n_vars, var_names, point) = match wrt {
        Wrt::Params => {
            let mut names = VarNames::default();
            let mut point = Vec::new();
            for t in model
                .initializers
                .iter()
                .filter(|t| !t.elem_type.is_integer())
            {
                if t.data.is_empty() {
                    continue;
                }
                offsets.insert(t.name.as_str(), point.len());
                names.push_tensor(t.name.as_str(), &t.dims);
                point.extend_from_slice(&t.data);
            }
            if point.is_empty() {
                return Err(err(
                    "wrt params, but the ONNX model has no floating-point initializers",
                ));
            }
            (point.len(), names, point)
        }
        Wrt::Inputs => {
            let mut names = VarNames::default();
            for s in 0..n_samples {
                names.push_tensor(format!("{}[{s}]", input.name), &in_shape);
            }
            (n_samples * k, names, data.inputs.concat())
        }
    };
    let mut g = Graph::new(n_vars);
    let mut ctx = Ctx {
        model,
        offsets,
        cache: HashMap::new(),
        clip,
    };

    let mut losses = Vec::with_capacity(n_samples);
    for (s, x) in data.inputs.iter().enumerate() {
        g.set_origin(Origin::OnnxNode {
            sample: s,
            name: input.name.clone(),
        });
        let xnode = match wrt {
            Wrt::Params => g.constant(x.clone())?,
            Wrt::Inputs => g.var(s * k, k)?,
        };
        let mut env: HashMap<&str, Value> = HashMap::new();
        env.insert(
            input.name.as_str(),
            Value {
                node: xnode,
                shape: in_shape.clone(),
                batched: true,
            },
        );
        for node in &model.nodes {
            let name = node.display_name();
            g.set_origin(Origin::OnnxNode {
                sample: s,
                name: name.clone(),
            });
            let v = lower_node(&mut g, &mut ctx, &env, node, s).map_err(|e| match e {
                Error::Network(m) if !m.starts_with("unsupported ONNX op") => {
                    err(format!("node '{name}' ({}): {m}", node.op_type))
                }
                other => other,
            })?;
            if let Some(out) = node.outputs.first().filter(|o| !o.is_empty()) {
                env.insert(out.as_str(), v);
            }
        }
        let out = match env.get(output_name.as_str()) {
            Some(v) => v.clone(),
            None => ctx.tensor(&mut g, &output_name)?.ok_or_else(|| {
                err(format!(
                    "the graph output '{output_name}' is not produced by any node"
                ))
            })?,
        };
        if s == 0 {
            data.check_targets(loss, g.len(out.node))?;
        }
        let target = data.targets.as_ref().map(|t| t[s].as_slice());
        losses.push(sample_loss(&mut g, s, out.node, target, loss)?);
    }
    super::network::objective(g, losses, var_names, point)
}

/// The operators [`problem`] lowers.
pub const SUPPORTED_OPS: &[&str] = &[
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Relu",
    "LeakyRelu",
    "Abs",
    "Max",
    "Min",
    "Clip",
    "HardSigmoid",
    "Tanh",
    "Sigmoid",
    "Exp",
    "Log",
    "Sqrt",
    "Softplus",
    "Sin",
    "Cos",
    "Flatten",
    "Reshape",
    "Identity",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Conv",
    "BatchNormalization",
    "Dropout",
    "Cast",
    "Erf",
    "Gelu",
    "Elu",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "Concat",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Pad",
    "Shape",
    "ConstantOfShape",
    "Slice",
    "ReduceMax",
    "ReduceMin",
];

fn is_default_domain(node: &Node) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

fn unsupported(node: &Node) -> Error {
    let op = if is_default_domain(node) {
        node.op_type.clone()
    } else {
        format!("{}.{}", node.domain, node.op_type)
    };
    err(format!(
        "unsupported ONNX op '{op}' at node '{}'",
        node.display_name()
    ))
}

/// Reject the first node whose operator is not supported, before looking at any data.
fn check_ops(model: &Model) -> Result<(), Error> {
    match model
        .nodes
        .iter()
        .find(|n| !is_default_domain(n) || !SUPPORTED_OPS.contains(&n.op_type.as_str()))
    {
        Some(n) => Err(unsupported(n)),
        None => Ok(()),
    }
}

/// The per-sample shape of the graph input (declared dims without the batch axis), with at
/// most one unknown size inferred from the sample length `k`.
fn sample_shape(name: &str, dims: &[Option<usize>], k: usize) -> Result<Vec<usize>, Error> {
    if dims.is_empty() {
        return Ok(vec![k]);
    }
    if dims.len() == 1 {
        return Err(err(format!(
            "graph input '{name}' has rank 1; kinkcheck expects the batch axis first, then \
             the sample's axes"
        )));
    }
    let rest = &dims[1..];
    let known = rest
        .iter()
        .flatten()
        .fold(1usize, |a, &b| a.saturating_mul(b));
    let unknown = rest.iter().filter(|d| d.is_none()).count();
    let shape: Vec<usize> = match unknown {
        0 => rest.iter().map(|d| d.unwrap_or(0)).collect(),
        1 if known > 0 && k.is_multiple_of(known) => {
            rest.iter().map(|d| d.unwrap_or(k / known)).collect()
        }
        1 => {
            return Err(err(format!(
                "data samples have length {k}, which does not fit the shape of graph input '{name}'"
            )))
        }
        _ => {
            return Err(err(format!(
                "graph input '{name}' has {unknown} unknown sizes besides the batch axis"
            )))
        }
    };
    if numel(&shape) != k {
        return Err(err(format!(
            "data samples have length {k}, graph input '{name}' needs {} per sample (shape {shape:?})",
            numel(&shape)
        )));
    }
    Ok(shape)
}

/// Input `i` of `node`: a value of this sample, or an initializer/constant; `None` when the
/// input is absent or has the empty name (an omitted optional input).
fn input(
    g: &mut Graph,
    ctx: &mut Ctx,
    env: &HashMap<&str, Value>,
    node: &Node,
    i: usize,
) -> Result<Option<Value>, Error> {
    let Some(name) = node.inputs.get(i).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if let Some(v) = env.get(name.as_str()) {
        return Ok(Some(v.clone()));
    }
    match ctx.tensor(g, name)? {
        Some(v) => Ok(Some(v)),
        None => Err(err(format!("input '{name}' is not defined"))),
    }
}

fn lower_node(
    g: &mut Graph,
    ctx: &mut Ctx,
    env: &HashMap<&str, Value>,
    node: &Node,
    sample: usize,
) -> Result<Value, Error> {
    let origin = Origin::OnnxNode {
        sample,
        name: node.display_name(),
    };
    if !is_default_domain(node) {
        return Err(unsupported(node));
    }
    let model = ctx.model;
    // Optional input `i`: None when absent or the empty name.
    let get = |g: &mut Graph, ctx: &mut Ctx, i: usize| input(g, ctx, env, node, i);
    let need = |g: &mut Graph, ctx: &mut Ctx, i: usize| -> Result<Value, Error> {
        input(g, ctx, env, node, i)?.ok_or_else(|| err(format!("input {i} is missing")))
    };
    let same = |v: &Value, node: NodeId| Value {
        node,
        shape: v.shape.clone(),
        batched: v.batched,
    };
    let op = node.op_type.as_str();
    Ok(match op {
        "Identity" => need(g, ctx, 0)?,
        "Neg" => {
            let a = need(g, ctx, 0)?;
            same(&a, g.neg(a.node))
        }
        "Relu" => {
            let a = need(g, ctx, 0)?;
            same(&a, lower::relu(g, a.node, origin)?)
        }
        "LeakyRelu" => {
            let a = need(g, ctx, 0)?;
            let alpha = node.attr_f("alpha").unwrap_or(0.01);
            same(&a, lower::leaky_relu(g, a.node, alpha, origin)?)
        }
        "Abs" => {
            let a = need(g, ctx, 0)?;
            same(&a, lower::abs(g, a.node, origin))
        }
        "HardSigmoid" => {
            let a = need(g, ctx, 0)?;
            let alpha = node.attr_f("alpha").unwrap_or(0.2);
            let beta = node.attr_f("beta").unwrap_or(0.5);
            same(
                &a,
                lower::hardsigmoid_affine(g, a.node, alpha, beta, origin)?,
            )
        }
        "Tanh" | "Sigmoid" | "Exp" | "Log" | "Sqrt" | "Softplus" | "Sin" | "Cos" => {
            let f = match op {
                "Tanh" => Smooth::Tanh,
                "Sigmoid" => Smooth::Sigmoid,
                "Exp" => Smooth::Exp,
                "Log" => Smooth::Log,
                "Sqrt" => Smooth::Sqrt,
                "Softplus" => Smooth::Softplus,
                "Sin" => Smooth::Sin,
                _ => Smooth::Cos,
            };
            let a = need(g, ctx, 0)?;
            same(&a, g.unary(f, a.node))
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let a = need(g, ctx, 0)?;
            let b = need(g, ctx, 1)?;
            let (na, nb, shape, batched) = broadcast(g, &a, &b)?;
            let node = match op {
                "Add" => g.add(na, nb)?,
                "Sub" => g.sub(na, nb)?,
                "Mul" => g.mul(na, nb)?,
                _ => g.div(na, nb)?,
            };
            Value {
                node,
                shape,
                batched,
            }
        }
        "Max" | "Min" => {
            if node.inputs.is_empty() {
                return Err(err("no inputs"));
            }
            let mut m = need(g, ctx, 0)?;
            for i in 1..node.inputs.len() {
                let b = need(g, ctx, i)?;
                let (na, nb, shape, batched) = broadcast(g, &m, &b)?;
                let node = if op == "Max" {
                    lower::max2(g, na, nb, Role::Max, origin.clone())?
                } else {
                    lower::min2(g, na, nb, origin.clone())?
                };
                m = Value {
                    node,
                    shape,
                    batched,
                };
            }
            m
        }
        "Clip" => {
            let x = need(g, ctx, 0)?;
            let bound = |g: &mut Graph, v: Option<Value>, which: &str| -> Result<_, Error> {
                match v {
                    Some(v) if g.len(v.node) != 1 => Err(err(format!(
                        "the {which} bound must be a scalar, it has {} elements",
                        g.len(v.node)
                    ))),
                    Some(v) => Ok(Some(v.node)),
                    None => Ok(None),
                }
            };
            let (lo, hi) = if model.opset_version.unwrap_or(1) >= 11 {
                // Bounds stored in the file (possibly parameters): check lo ≤ hi at the
                // stored values, since the clamp formula needs it (THEORY §1).
                let stored = |i: usize| {
                    node.inputs
                        .get(i)
                        .and_then(|n| model.tensor(n))
                        .and_then(|t| t.data.first().copied())
                };
                if let (Some(l), Some(h)) = (stored(1), stored(2)) {
                    if l > h {
                        return Err(err(format!("min {l} is above max {h}")));
                    }
                }
                let lo = get(g, ctx, 1)?;
                let hi = get(g, ctx, 2)?;
                (bound(g, lo, "min")?, bound(g, hi, "max")?)
            } else {
                let c = |g: &mut Graph, a: Option<f64>| -> Result<Option<NodeId>, Error> {
                    match a {
                        Some(v) if v.is_finite() => Ok(Some(g.scalar(v)?)),
                        _ => Ok(None),
                    }
                };
                (c(g, node.attr_f("min"))?, c(g, node.attr_f("max"))?)
            };
            let out = match (lo, hi) {
                (Some(lo), Some(hi)) if ctx.clip == ClipRule::Hardtanh => {
                    clip_hardtanh(g, x.node, lo, hi, origin)?
                }
                (Some(lo), Some(hi)) => lower::clamp(g, x.node, lo, hi, origin)?,
                (Some(lo), None) => {
                    let role = match ctx.clip {
                        ClipRule::Hardtanh => Role::HardtanhLo,
                        ClipRule::Clamp => Role::ClampLo,
                    };
                    lower::max2(g, x.node, lo, role, origin)?
                }
                (None, Some(hi)) => {
                    let role = match ctx.clip {
                        ClipRule::Hardtanh => Role::HardtanhHi,
                        ClipRule::Clamp => Role::ClampHi,
                    };
                    clamp_hi_only(g, x.node, hi, role, origin)?
                }
                (None, None) => x.node,
            };
            same(&x, out)
        }
        "Gemm" => {
            let a = need(g, ctx, 0)?;
            let b = need(g, ctx, 1)?;
            let c = get(g, ctx, 2)?;
            let alpha = node.attr_f("alpha").unwrap_or(1.0);
            let beta = node.attr_f("beta").unwrap_or(1.0);
            if node.attr_i("transA").unwrap_or(0) != 0 {
                return Err(err(
                    "transA = 1 is not supported (A must be the per-sample input)",
                ));
            }
            let trans_b = node.attr_i("transB").unwrap_or(0) != 0;
            if !a.batched || b.batched {
                return Err(err("A must be the per-sample input and B a weight matrix"));
            }
            if a.shape.len() != 1 {
                return Err(err(format!(
                    "A has per-sample shape {:?}; a vector per sample is required",
                    a.shape
                )));
            }
            if b.shape.len() != 2 {
                return Err(err(format!(
                    "B has shape {:?}; a matrix is required",
                    b.shape
                )));
            }
            let k = a.shape[0];
            let (r, kb) = if trans_b {
                (b.shape[0], b.shape[1])
            } else {
                (b.shape[1], b.shape[0])
            };
            if kb != k {
                return Err(err(format!(
                    "B has shape {:?} (transB = {}), which does not fit an input of length {k}",
                    b.shape, trans_b as u8
                )));
            }
            let w = if trans_b {
                b.node
            } else {
                transpose(g, b.node, kb, r)?
            };
            let mut y = g.matvec(w, a.node, r)?;
            if alpha != 1.0 {
                y = g.scale(alpha, y)?;
            }
            let yv = Value {
                node: y,
                shape: vec![r],
                batched: true,
            };
            match c {
                Some(c) if beta != 0.0 => {
                    let cn = if beta != 1.0 {
                        g.scale(beta, c.node)?
                    } else {
                        c.node
                    };
                    let c = Value { node: cn, ..c };
                    let (ny, nc, shape, batched) = broadcast(g, &yv, &c)?;
                    if shape != [r] {
                        return Err(err(format!(
                            "C of shape {:?} does not broadcast to the output length {r}",
                            c.shape
                        )));
                    }
                    Value {
                        node: g.add(ny, nc)?,
                        shape,
                        batched,
                    }
                }
                _ => yv,
            }
        }
        "MatMul" => {
            let a = need(g, ctx, 0)?;
            let b = need(g, ctx, 1)?;
            // a per-sample vector, possibly with leading axes of size 1 (kept)
            let lead_ok =
                !a.shape.is_empty() && a.shape[..a.shape.len() - 1].iter().all(|&d| d == 1);
            if !a.batched || b.batched || !lead_ok {
                return Err(err(
                    "only (per-sample vector) × (weight matrix or vector) is supported",
                ));
            }
            let k = a.shape[a.shape.len() - 1];
            let lead = a.shape[..a.shape.len() - 1].to_vec();
            let with_lead = |tail: &[usize]| {
                let mut sh = lead.clone();
                sh.extend_from_slice(tail);
                sh
            };
            match b.shape.as_slice() {
                &[kb, r] if kb == k => {
                    let w = transpose(g, b.node, kb, r)?;
                    Value {
                        node: g.matvec(w, a.node, r)?,
                        shape: with_lead(&[r]),
                        batched: true,
                    }
                }
                &[kb] if kb == k => Value {
                    node: g.matvec(b.node, a.node, 1)?,
                    shape: lead.clone(),
                    batched: true,
                },
                other => {
                    return Err(err(format!(
                        "B has shape {other:?}, which does not fit an input of length {k}"
                    )))
                }
            }
        }
        "Flatten" => {
            let a = need(g, ctx, 0)?;
            let full = full_shape(&a);
            let rank = full.len() as i64;
            let mut axis = node.attr_i("axis").unwrap_or(1);
            if axis < 0 {
                axis += rank;
            }
            if axis < 0 || axis > rank {
                return Err(err(format!("axis {axis} is out of range for rank {rank}")));
            }
            let axis = axis as usize;
            if a.batched {
                if axis == 0 || numel(&full[1..axis]) != 1 {
                    return Err(err(format!(
                        "flattening at axis {axis} would merge the batch axis into the sample"
                    )));
                }
                Value {
                    node: a.node,
                    shape: vec![numel(&a.shape)],
                    batched: true,
                }
            } else {
                Value {
                    node: a.node,
                    shape: vec![numel(&full[..axis]), numel(&full[axis..])],
                    batched: false,
                }
            }
        }
        "Reshape" => {
            let a = need(g, ctx, 0)?;
            let sname = node.inputs.get(1).map(String::as_str).unwrap_or("");
            // A stored shape (initializer or Constant) keeps the batch axis symbolic; a
            // computed one (from Shape) saw the batch size 1 of the per-sample lowering.
            let stored = model.tensor(sname).is_some();
            let data = const_input(g, ctx, env, node, 1)?
                .ok_or_else(|| err("the shape input is missing"))?;
            if data.iter().any(|v| v.fract() != 0.0) {
                return Err(err(format!("shape '{sname}' is not an integer tensor")));
            }
            let target: Vec<i64> = data.iter().map(|&v| v as i64).collect();
            let allow_zero = node.attr_i("allowzero").unwrap_or(0) != 0;
            if a.batched {
                let resolve = |b: usize| {
                    let mut full = vec![b];
                    full.extend_from_slice(&a.shape);
                    reshape_dims(&full, &target, allow_zero)
                };
                let one = resolve(1)?;
                let keeps = if stored {
                    let two = resolve(2)?;
                    one.first() == Some(&1) && two.first() == Some(&2) && one[1..] == two[1..]
                } else {
                    one.first() == Some(&1)
                };
                if !keeps {
                    return Err(err(format!(
                        "shape {target:?} does not keep the batch axis first"
                    )));
                }
                Value {
                    node: a.node,
                    shape: one[1..].to_vec(),
                    batched: true,
                }
            } else {
                Value {
                    node: a.node,
                    shape: reshape_dims(&a.shape, &target, allow_zero)?,
                    batched: false,
                }
            }
        }
        "Dropout" => {
            // Inference: the identity. A training_mode input must be a constant 0.
            if let Some(t) = const_input(g, ctx, env, node, 2)? {
                if t.iter().any(|&v| v != 0.0) {
                    return Err(err("training_mode = 1 is not supported (inference only)"));
                }
            }
            if node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
                return Err(err("the mask output is not supported"));
            }
            need(g, ctx, 0)?
        }
        "Cast" => {
            // Values are f64 throughout; a cast to another float type is the identity.
            need(g, ctx, 0)?
        }
        "Erf" => {
            let a = need(g, ctx, 0)?;
            same(&a, g.unary(Smooth::Erf, a.node))
        }
        "Gelu" => {
            let a = need(g, ctx, 0)?;
            let x = a.node;
            let inner = match node.attr_s("approximate").unwrap_or("none") {
                "none" | "" => {
                    // erf(x/√2)
                    let t = g.scale(std::f64::consts::FRAC_1_SQRT_2, x)?;
                    g.unary(Smooth::Erf, t)
                }
                "tanh" => {
                    // tanh(√(2/π)(x + 0.044715 x³))
                    let x3 = g.powi(x, 3);
                    let c = g.scale(0.044715, x3)?;
                    let t = g.add(x, c)?;
                    let t = g.scale((2.0 / std::f64::consts::PI).sqrt(), t)?;
                    g.unary(Smooth::Tanh, t)
                }
                other => return Err(err(format!("approximate = '{other}' is not supported"))),
            };
            let one = g.scalar(1.0)?;
            let p = g.add(one, inner)?;
            let h = g.scale(0.5, x)?;
            same(&a, g.mul(h, p)?)
        }
        "Elu" => {
            // elu(x) = relu(x) + α(exp(x − relu(x)) − 1), one relu switch z = x shared by
            // both parts (x − relu(x) = min(x, 0)). At x = 0 the derivative is
            // r + α(1 − r) with r = relu′(0): α for PyTorch (r = 0), whose elu backward
            // uses the x ≤ 0 branch there (α·e⁰).
            let a = need(g, ctx, 0)?;
            let alpha = node.attr_f("alpha").unwrap_or(1.0);
            let r = lower::relu(g, a.node, origin)?;
            let m = g.sub(a.node, r)?;
            let e = g.unary(Smooth::Exp, m);
            let one = g.scalar(1.0)?;
            let e = g.sub(e, one)?;
            let e = g.scale(alpha, e)?;
            same(&a, g.add(r, e)?)
        }
        "Softmax" | "LogSoftmax" => {
            let a = need(g, ctx, 0)?;
            let opset = model.opset_version.unwrap_or(13);
            let default_axis = if opset >= 13 { -1 } else { 1 };
            let axis = node.attr_i("axis").unwrap_or(default_axis);
            let (ax, _) = sample_axis(&a, axis)?;
            let shape = a.shape.clone();
            // rows: all indices but the softmax axis (or, before opset 13, all trailing
            // axes from `axis` on, flattened)
            let rows: Vec<Vec<usize>> = if opset < 13 {
                // before opset 13: the input is coerced to 2-D at `axis`
                let inner: usize = numel(&shape[ax..]);
                let outer = numel(&shape[..ax]);
                (0..outer)
                    .map(|o| (0..inner).map(|i| o * inner + i).collect())
                    .collect()
            } else {
                let len = shape[ax];
                let step = numel(&shape[ax + 1..]);
                let mut rows = Vec::new();
                for o in 0..numel(&shape[..ax]) {
                    for i in 0..step {
                        rows.push((0..len).map(|j| (o * len + j) * step + i).collect());
                    }
                }
                rows
            };
            let mut parts = Vec::with_capacity(rows.len());
            let mut order = Vec::with_capacity(numel(&shape));
            for row in rows {
                let r = g.gather(a.node, row.clone())?;
                let lse = g.logsumexp(r);
                let l = g.sub(r, lse)?;
                parts.push(if op == "Softmax" {
                    g.unary(Smooth::Exp, l)
                } else {
                    l
                });
                order.extend(row);
            }
            let cat = g.concat(parts)?;
            // back to row-major order: element order[k] of the input sits at position k
            let mut inv = vec![0; order.len()];
            for (k, &o) in order.iter().enumerate() {
                inv[o] = k;
            }
            same(&a, g.gather(cat, inv)?)
        }
        "BatchNormalization" => {
            // Inference form: y = scale·(x − mean)/√(var + ε) + B, per channel (axis 1).
            if node.attr_i("training_mode").unwrap_or(0) != 0
                || node.outputs.iter().skip(1).any(|o| !o.is_empty())
            {
                return Err(err(
                    "only the inference form (training_mode = 0, one output) is supported",
                ));
            }
            let x = need(g, ctx, 0)?;
            let eps = node.attr_f("epsilon").unwrap_or(1e-5);
            let c = channels(&x)?;
            let mut p = Vec::with_capacity(4);
            for (i, what) in [(1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")] {
                let v = need(g, ctx, i)?;
                if v.batched || g.len(v.node) != c {
                    return Err(err(format!(
                        "{what} has {} elements, the input has {c} channels",
                        g.len(v.node)
                    )));
                }
                p.push(v.node);
            }
            let e = g.scalar(eps)?;
            let ve = g.add(p[3], e)?;
            let sd = g.unary(Smooth::Sqrt, ve);
            let k = g.div(p[0], sd)?; // scale / √(var + ε)
            let km = g.mul(k, p[2])?;
            let shift = g.sub(p[1], km)?; // B − k·mean
            let kk = expand_channels(g, k, &x)?;
            let ss = expand_channels(g, shift, &x)?;
            let y = g.mul(x.node, kk)?;
            same(&x, g.add(y, ss)?)
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = need(g, ctx, 0)?;
            let c = channels(&x)?;
            let plane = numel(&x.shape[1..]);
            let windows: Vec<Vec<usize>> = (0..c)
                .map(|ch| (ch * plane..(ch + 1) * plane).collect())
                .collect();
            let out = if op == "GlobalMaxPool" {
                lower::maxpool(g, x.node, &windows, origin)?
            } else {
                mean_windows(g, x.node, &windows, plane as f64)?
            };
            let mut shape = vec![c];
            shape.extend(std::iter::repeat_n(1, x.shape.len() - 1));
            Value {
                node: out,
                shape,
                batched: true,
            }
        }
        "MaxPool" | "AveragePool" => {
            let a = need(g, ctx, 0)?;
            if !a.batched {
                return Err(err("the pooled tensor must be per-sample"));
            }
            if node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
                return Err(err("the Indices output is not supported"));
            }
            let kernel = positive_ints(node, "kernel_shape")?
                .ok_or_else(|| err("kernel_shape is missing"))?;
            let d = kernel.len();
            if d == 0 || a.shape.len() != d + 1 {
                return Err(err(format!(
                    "kernel_shape {kernel:?} does not fit a per-sample input of shape {:?} \
                     (channels first)",
                    a.shape
                )));
            }
            let w = window_geometry(node, &a.shape[1..], &kernel, op == "MaxPool")?;
            let c = a.shape[0];
            let plane = numel(&a.shape[1..]);
            let (out_sp, cells) = w.cells();
            let mut shape = vec![c];
            shape.extend(out_sp.iter().copied());
            let node_out = if op == "MaxPool" {
                // Padding is −∞: padded cells never win, so each window is the left fold over
                // its cells inside the input, in row-major order (THEORY §1, max-pool row).
                // Tie rule: PyTorch's max_pool1d/2d backward gives a tie to the FIRST maximal
                // cell of the row-major scan — checked in torch 2.15 by
                // `tools/gen_torch_models.py --check-rules` (2×2 all tied → [1,0,0,0];
                // (0,1),(1,0) tied → [0,1,0,0]) — which is σ̃ = +1 on every fold step
                // (the running maximum keeps the tie), Role::MaxPool under `pytorch`.
                let windows: Vec<Vec<usize>> = (0..c)
                    .flat_map(|ch| {
                        cells.iter().map(move |cell| {
                            cell.iter()
                                .flatten()
                                .map(|&o| ch * plane + o)
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                maxpool_ragged(g, a.node, &windows, origin)?
            } else {
                let include = node.attr_i("count_include_pad").unwrap_or(0) != 0;
                avgpool(g, a.node, c, plane, &cells, &w, include)?
            };
            Value {
                node: node_out,
                shape,
                batched: true,
            }
        }
        "Conv" => {
            let x = need(g, ctx, 0)?;
            let wv = need(g, ctx, 1)?;
            let b = get(g, ctx, 2)?;
            if !x.batched || wv.batched {
                return Err(err("X must be the per-sample input and W a weight tensor"));
            }
            let d = x.shape.len().saturating_sub(1);
            if d == 0 || wv.shape.len() != d + 2 {
                return Err(err(format!(
                    "W has shape {:?}, which does not fit a per-sample input of shape {:?} \
                     (channels first)",
                    wv.shape, x.shape
                )));
            }
            let group = node.attr_i("group").unwrap_or(1);
            if group < 1 {
                return Err(err(format!("group = {group} must be positive")));
            }
            let group = group as usize;
            let (c_in, c_out) = (x.shape[0], wv.shape[0]);
            if wv.shape[1] * group != c_in || c_out % group != 0 {
                return Err(err(format!(
                    "W of shape {:?} with group = {group} does not fit {c_in} input channels \
                     (X has per-sample shape {:?})",
                    wv.shape, x.shape
                )));
            }
            let kernel = wv.shape[2..].to_vec();
            if let Some(k) = positive_ints(node, "kernel_shape")? {
                if k != kernel {
                    return Err(err(format!(
                        "kernel_shape {k:?} does not match W of shape {:?}",
                        wv.shape
                    )));
                }
            }
            if let Some(b) = &b {
                if g.len(b.node) != c_out || b.batched {
                    return Err(err(format!(
                        "B has {} elements, W has {c_out} output channels",
                        g.len(b.node)
                    )));
                }
            }
            let geo = window_geometry(node, &x.shape[1..], &kernel, false)?;
            let spec = ConvSpec {
                in_channels: c_in,
                out_channels: c_out,
                in_spatial: x.shape[1..].to_vec(),
                kernel,
                strides: geo.strides.clone(),
                pads_begin: geo.pads_begin.clone(),
                pads_end: geo.pads_end.clone(),
                dilations: geo.dilations.clone(),
                group,
            };
            let out_sp = geo.out.clone();
            let y = conv_node(g, x.node, wv.node, b.map(|b| b.node), spec)?;
            let mut shape = vec![c_out];
            shape.extend(out_sp);
            Value {
                node: y,
                shape,
                batched: true,
            }
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => {
            let a = need(g, ctx, 0)?;
            let opset = model.opset_version.unwrap_or(13);
            let from_input = (op == "ReduceSum" && opset >= 13) || opset >= 18;
            let extreme = op == "ReduceMax" || op == "ReduceMin";
            let axes: Option<Vec<i64>> = if from_input {
                const_input(g, ctx, env, node, 1)?.map(|v| v.iter().map(|&x| x as i64).collect())
            } else {
                node.attr_ints("axes").map(<[i64]>::to_vec)
            };
            let keep = node.attr_i("keepdims").unwrap_or(1) != 0;
            let noop = node.attr_i("noop_with_empty_axes").unwrap_or(0) != 0;
            let full_rank = full_shape(&a).len();
            let axes: Vec<usize> = match axes {
                Some(v) if !v.is_empty() => {
                    let mut out = Vec::new();
                    for ax in v {
                        let n = if ax < 0 { ax + full_rank as i64 } else { ax };
                        if n < 0 || n as usize >= full_rank {
                            return Err(err(format!(
                                "axis {ax} is out of range for rank {full_rank}"
                            )));
                        }
                        out.push(n as usize);
                    }
                    out
                }
                _ if noop => return Ok(a),
                _ => (0..full_rank).collect(),
            };
            let off = usize::from(a.batched);
            if a.batched && axes.contains(&0) {
                return Err(err("reducing over the batch axis is not supported"));
            }
            let red: Vec<usize> = axes.iter().map(|&x| x - off).collect();
            let (node_out, shape) = if extreme {
                // each output is a left fold over its cells in row-major order; ReduceMax
                // uses the max-pool rule (torch's global max pool, exported by the dynamo
                // exporter as ReduceMax, gives a tie to the first cell), ReduceMin the
                // binary min rule
                let (windows, shape) = reduce_windows(&a.shape, &red, keep);
                let node = if op == "ReduceMax" {
                    lower::maxpool(g, a.node, &windows, origin)?
                } else {
                    let mut m = g.gather(a.node, windows.iter().map(|w| w[0]).collect())?;
                    for j in 1..windows[0].len() {
                        let b = g.gather(a.node, windows.iter().map(|w| w[j]).collect())?;
                        m = lower::min2(g, m, b, origin.clone())?;
                    }
                    m
                };
                (node, shape)
            } else {
                reduce(g, &a, &red, keep, op == "ReduceMean")?
            };
            Value {
                node: node_out,
                shape,
                batched: a.batched,
            }
        }
        "Concat" => {
            let axis = node.attr_i("axis").ok_or_else(|| err("axis is missing"))?;
            let mut vals = Vec::new();
            for i in 0..node.inputs.len() {
                vals.push(need(g, ctx, i)?);
            }
            let first = vals.first().ok_or_else(|| err("no inputs"))?.clone();
            let batched = vals.iter().any(|v| v.batched);
            if batched && vals.iter().any(|v| !v.batched) {
                return Err(err("mixing per-sample and shared tensors is not supported"));
            }
            let (ax, _) = sample_axis(&first, axis)?;
            let rank = first.shape.len();
            for v in &vals {
                if v.shape.len() != rank
                    || (0..rank).any(|i| i != ax && v.shape[i] != first.shape[i])
                {
                    return Err(err(format!(
                        "shapes {:?} and {:?} do not concatenate along axis {axis}",
                        first.shape, v.shape
                    )));
                }
            }
            let outer = numel(&first.shape[..ax]);
            let inner = numel(&first.shape[ax + 1..]);
            // positions of each part's elements in the concatenation of the parts
            let mut starts = Vec::new();
            let mut acc = 0;
            for v in &vals {
                starts.push(acc);
                acc += numel(&v.shape);
            }
            let mut idx = Vec::with_capacity(acc);
            for o in 0..outer {
                for (v, &st) in vals.iter().zip(&starts) {
                    let blk = v.shape[ax] * inner;
                    idx.extend(st + o * blk..st + (o + 1) * blk);
                }
            }
            let cat = concat_fold(g, vals.iter().map(|v| v.node).collect())?;
            let mut shape = first.shape.clone();
            shape[ax] = vals.iter().map(|v| v.shape[ax]).sum();
            Value {
                node: permute(g, cat, idx)?,
                shape,
                batched,
            }
        }
        "Transpose" => {
            let a = need(g, ctx, 0)?;
            let full = full_shape(&a);
            let perm: Vec<usize> = match node.attr_ints("perm") {
                Some(p) => p
                    .iter()
                    .map(|&v| usize::try_from(v).unwrap_or(usize::MAX))
                    .collect(),
                None => (0..full.len()).rev().collect(),
            };
            let mut seen = vec![false; full.len()];
            if perm.len() != full.len()
                || perm
                    .iter()
                    .any(|&p| p >= full.len() || std::mem::replace(&mut seen[p], true))
            {
                return Err(err(format!(
                    "perm {perm:?} is not a permutation of rank {}",
                    full.len()
                )));
            }
            if a.batched && perm[0] != 0 {
                return Err(err(format!("perm {perm:?} moves the batch axis")));
            }
            let off = usize::from(a.batched);
            let sp: Vec<usize> = perm[off..].iter().map(|&p| p - off).collect();
            let in_shape = a.shape.clone();
            let out_shape: Vec<usize> = sp.iter().map(|&p| in_shape[p]).collect();
            let step = row_major_steps(&in_shape);
            let idx = multi_indices(&out_shape)
                .iter()
                .map(|o| o.iter().zip(&sp).map(|(&i, &p)| i * step[p]).sum())
                .collect();
            Value {
                node: permute(g, a.node, idx)?,
                shape: out_shape,
                batched: a.batched,
            }
        }
        "Squeeze" | "Unsqueeze" => {
            let a = need(g, ctx, 0)?;
            let opset = model.opset_version.unwrap_or(13);
            let axes: Option<Vec<i64>> = if opset >= 13 {
                const_input(g, ctx, env, node, 1)?.map(|v| v.iter().map(|&x| x as i64).collect())
            } else {
                node.attr_ints("axes").map(<[i64]>::to_vec)
            };
            let full = full_shape(&a);
            let new_full: Vec<usize> = if op == "Squeeze" {
                let rank = full.len() as i64;
                let axes: Vec<usize> = match axes {
                    Some(v) => v
                        .iter()
                        .map(|&x| if x < 0 { x + rank } else { x })
                        .map(|x| usize::try_from(x).unwrap_or(usize::MAX))
                        .collect(),
                    None => (0..full.len())
                        .filter(|&i| full[i] == 1 && !(a.batched && i == 0))
                        .collect(),
                };
                if axes.iter().any(|&x| x >= full.len() || full[x] != 1) {
                    return Err(err(format!(
                        "cannot squeeze axes {axes:?} of shape {full:?}"
                    )));
                }
                if a.batched && axes.contains(&0) {
                    return Err(err("squeezing the batch axis is not supported"));
                }
                full.iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, &d)| d)
                    .collect()
            } else {
                let axes = axes.ok_or_else(|| err("axes are missing"))?;
                let rank = (full.len() + axes.len()) as i64;
                let mut norm: Vec<usize> = Vec::new();
                for x in axes {
                    let n = if x < 0 { x + rank } else { x };
                    if n < 0 || n >= rank {
                        return Err(err(format!("axis {x} is out of range for rank {rank}")));
                    }
                    norm.push(n as usize);
                }
                if a.batched && norm.contains(&0) {
                    return Err(err("unsqueezing before the batch axis is not supported"));
                }
                let mut it = full.iter();
                (0..rank as usize)
                    .map(|i| {
                        if norm.contains(&i) {
                            1
                        } else {
                            *it.next().unwrap_or(&1)
                        }
                    })
                    .collect()
            };
            let shape = if a.batched {
                new_full[1..].to_vec()
            } else {
                new_full
            };
            Value {
                node: a.node,
                shape,
                batched: a.batched,
            }
        }
        "Pad" => {
            let a = need(g, ctx, 0)?;
            let opset = model.opset_version.unwrap_or(13);
            let mode = node.attr_s("mode").unwrap_or("constant");
            if mode != "constant" {
                return Err(err(format!(
                    "mode = '{mode}' is not supported (constant only)"
                )));
            }
            let (pads, value): (Vec<i64>, f64) = if opset >= 11 {
                let pads = const_input(g, ctx, env, node, 1)?
                    .ok_or_else(|| err("pads are missing"))?
                    .iter()
                    .map(|&v| v as i64)
                    .collect();
                let value = match const_input(g, ctx, env, node, 2)? {
                    Some(v) if v.len() == 1 => v[0],
                    Some(_) => return Err(err("constant_value must be a scalar")),
                    None => 0.0,
                };
                if node.inputs.get(3).is_some_and(|s| !s.is_empty()) {
                    return Err(err("the axes input is not supported"));
                }
                (pads, value)
            } else {
                (
                    node.attr_ints("pads")
                        .ok_or_else(|| err("pads are missing"))?
                        .to_vec(),
                    node.attr_f("value").unwrap_or(0.0),
                )
            };
            let full = full_shape(&a);
            let r = full.len();
            if pads.len() != 2 * r {
                return Err(err(format!("pads {pads:?} do not fit rank {r}")));
            }
            if pads.iter().any(|&p| p < 0) {
                return Err(err(format!("negative pads {pads:?} are not supported")));
            }
            if a.batched && (pads[0] != 0 || pads[r] != 0) {
                return Err(err("padding the batch axis is not supported"));
            }
            let off = usize::from(a.batched);
            let pb: Vec<usize> = pads[off..r].iter().map(|&p| p as usize).collect();
            let pe: Vec<usize> = pads[r + off..].iter().map(|&p| p as usize).collect();
            let in_shape = a.shape.clone();
            let out_shape: Vec<usize> = (0..in_shape.len())
                .map(|i| in_shape[i] + pb[i] + pe[i])
                .collect();
            let step = row_major_steps(&in_shape);
            let n = numel(&in_shape);
            let cv = g.scalar(value)?;
            let ext = g.concat(vec![a.node, cv])?;
            let idx = multi_indices(&out_shape)
                .iter()
                .map(|o| {
                    let mut flat = 0;
                    for i in 0..o.len() {
                        if o[i] < pb[i] || o[i] >= pb[i] + in_shape[i] {
                            return n;
                        }
                        flat += (o[i] - pb[i]) * step[i];
                    }
                    flat
                })
                .collect();
            Value {
                node: permute(g, ext, idx)?,
                shape: out_shape,
                batched: a.batched,
            }
        }
        "ConstantOfShape" => {
            let dims =
                const_input(g, ctx, env, node, 0)?.ok_or_else(|| err("input 0 is missing"))?;
            let value = match node.attr("value") {
                Some(AttrValue::Tensor(t)) if t.data.len() == 1 => t.data[0],
                Some(_) => return Err(err("value must be a one-element tensor")),
                None => 0.0,
            };
            let shape: Vec<usize> = dims.iter().map(|&d| d.max(0.0) as usize).collect();
            let n = numel(&shape);
            if n == 0 || n > 1 << 24 {
                return Err(err(format!("shape {shape:?} is empty or too large")));
            }
            Value {
                node: g.constant(vec![value; n])?,
                shape,
                batched: false,
            }
        }
        "Slice" => {
            let a = need(g, ctx, 0)?;
            let ints =
                |g: &mut Graph, ctx: &mut Ctx, i: usize| -> Result<Option<Vec<i64>>, Error> {
                    Ok(const_input(g, ctx, env, node, i)?
                        .map(|v| v.iter().map(|&x| x as i64).collect()))
                };
            let starts = ints(g, ctx, 1)?.ok_or_else(|| err("starts are missing"))?;
            let ends = ints(g, ctx, 2)?.ok_or_else(|| err("ends are missing"))?;
            let full = full_shape(&a);
            let r = full.len() as i64;
            let axes = ints(g, ctx, 3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = ints(g, ctx, 4)?.unwrap_or_else(|| vec![1; starts.len()]);
            if ends.len() != starts.len()
                || axes.len() != starts.len()
                || steps.len() != starts.len()
            {
                return Err(err("starts, ends, axes and steps differ in length"));
            }
            // per axis: the selected indices
            let mut sel: Vec<Vec<usize>> = full.iter().map(|&d| (0..d).collect()).collect();
            for i in 0..starts.len() {
                let ax = if axes[i] < 0 { axes[i] + r } else { axes[i] };
                if ax < 0 || ax >= r {
                    return Err(err(format!(
                        "axis {} is out of range for rank {r}",
                        axes[i]
                    )));
                }
                let ax = ax as usize;
                let d = full[ax] as i64;
                let step = steps[i];
                if step == 0 {
                    return Err(err("a step of 0"));
                }
                let norm = |v: i64| if v < 0 { v + d } else { v };
                let (lo, hi) = if step > 0 { (0, d) } else { (-1, d - 1) };
                let st = norm(starts[i].clamp(-d - 1, d)).clamp(lo, hi);
                let en = norm(ends[i].clamp(-d - 1, d)).clamp(lo, hi);
                let mut v = Vec::new();
                let mut k = st;
                while (step > 0 && k < en) || (step < 0 && k > en) {
                    v.push(k as usize);
                    k += step;
                }
                if a.batched && ax == 0 && v != [0] {
                    return Err(err("slicing the batch axis is not supported"));
                }
                sel[ax] = v;
            }
            if sel.iter().any(Vec::is_empty) {
                return Err(err("the slice is empty"));
            }
            let off = usize::from(a.batched);
            let step = row_major_steps(&a.shape);
            let out_shape: Vec<usize> = sel[off..].iter().map(Vec::len).collect();
            let idx = multi_indices(&out_shape)
                .iter()
                .map(|o| {
                    o.iter()
                        .enumerate()
                        .map(|(i, &j)| sel[i + off][j] * step[i])
                        .sum()
                })
                .collect();
            Value {
                node: permute(g, a.node, idx)?,
                shape: out_shape,
                batched: a.batched,
            }
        }
        "Shape" => {
            let a = need(g, ctx, 0)?;
            let full = full_shape(&a);
            let r = full.len() as i64;
            let norm = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = norm(node.attr_i("start").unwrap_or(0));
            let end = norm(node.attr_i("end").unwrap_or(r));
            let dims: Vec<f64> = full[start..end.max(start)]
                .iter()
                .map(|&d| d as f64)
                .collect();
            if dims.is_empty() {
                return Err(err("an empty shape is not supported"));
            }
            let len = dims.len();
            Value {
                node: g.constant(dims)?,
                shape: vec![len],
                batched: false,
            }
        }
        _ => return Err(unsupported(node)),
    })
}

/// The values of input `i` when it is a constant (an initializer that is not a variable, a
/// folded `Constant`, or a value computed from constants such as `Shape`); `None` when the
/// input is absent. An input that depends on the variables is an error.
fn const_input(
    g: &mut Graph,
    ctx: &mut Ctx,
    env: &HashMap<&str, Value>,
    node: &Node,
    i: usize,
) -> Result<Option<Vec<f64>>, Error> {
    let Some(name) = node.inputs.get(i).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if let Some(t) = ctx.model.tensor(name) {
        return Ok(Some(t.data.clone()));
    }
    let v = input(g, ctx, env, node, i)?.ok_or_else(|| err(format!("input {i} is missing")))?;
    match g.const_value(v.node) {
        Some(c) => Ok(Some(c.to_vec())),
        None => Err(err(format!("input '{name}' must be a constant"))),
    }
}

/// The axis `axis` (ONNX numbering, the batch axis first for a per-sample value) as an axis
/// of the value's own shape; the flag says whether it was coerced from the full rank.
fn sample_axis(v: &Value, axis: i64) -> Result<(usize, bool), Error> {
    let rank = full_shape(v).len() as i64;
    let a = if axis < 0 { axis + rank } else { axis };
    if a < 0 || a >= rank {
        return Err(err(format!("axis {axis} is out of range for rank {rank}")));
    }
    if v.batched {
        if a == 0 {
            return Err(err("operating along the batch axis is not supported"));
        }
        Ok((a as usize - 1, false))
    } else {
        Ok((a as usize, false))
    }
}

/// The channel count of a per-sample `[C, ...]` value.
fn channels(v: &Value) -> Result<usize, Error> {
    if !v.batched || v.shape.is_empty() {
        return Err(err(format!(
            "a per-sample input of shape [C, ...] is required, got {:?}",
            v.shape
        )));
    }
    Ok(v.shape[0])
}

/// A per-channel vector `c` (length C) repeated over the spatial positions of `x`.
fn expand_channels(g: &mut Graph, c: NodeId, x: &Value) -> Result<NodeId, Error> {
    let plane = numel(&x.shape[1..]);
    if plane == 1 {
        return Ok(c);
    }
    let idx = (0..x.shape[0])
        .flat_map(|ch| std::iter::repeat_n(ch, plane))
        .collect();
    permute(g, c, idx)
}

/// Row-major strides of a shape.
fn row_major_steps(shape: &[usize]) -> Vec<usize> {
    let mut step = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        step[i] = step[i + 1] * shape[i + 1];
    }
    step
}

/// `out[k] = a[idx[k]]`, folded when `a` is a constant.
fn permute(g: &mut Graph, a: NodeId, idx: Vec<usize>) -> Result<NodeId, Error> {
    if let Some(c) = g.const_value(a) {
        let len = c.len();
        if idx.iter().any(|&i| i >= len) {
            return Err(err("index out of range"));
        }
        let v: Vec<f64> = idx.iter().map(|&i| c[i]).collect();
        return Ok(g.constant(v)?);
    }
    Ok(g.gather(a, idx)?)
}

/// `Σ_{j ∈ window} x_j / divisor` for each window, as one matrix–vector product with a
/// constant (sparse in spirit) averaging matrix when it is small, else as a sum of gathers.
fn mean_windows(
    g: &mut Graph,
    x: NodeId,
    windows: &[Vec<usize>],
    divisor: f64,
) -> Result<NodeId, Error> {
    let divs = vec![divisor; windows.len()];
    sum_windows(g, x, windows, &divs)
}

/// `Σ_{j ∈ window_w} x_j / div_w` for each window `w` (windows may differ in size).
fn sum_windows(
    g: &mut Graph,
    x: NodeId,
    windows: &[Vec<usize>],
    divs: &[f64],
) -> Result<NodeId, Error> {
    let n = g.len(x);
    let rows = windows.len();
    if rows.saturating_mul(n) <= 1 << 22 {
        let mut m = vec![0.0; rows * n];
        for (r, (w, &d)) in windows.iter().zip(divs).enumerate() {
            for &j in w {
                m[r * n + j] += 1.0 / d;
            }
        }
        let m = g.constant(m)?;
        return Ok(g.matvec(m, x, rows)?);
    }
    // large: one gather per window position (windows padded with a zero element)
    let zero = g.scalar(0.0)?;
    let ext = g.concat(vec![x, zero])?;
    let size = windows.iter().map(Vec::len).max().unwrap_or(0);
    let mut acc: Option<NodeId> = None;
    for j in 0..size {
        let idx = windows
            .iter()
            .map(|w| w.get(j).copied().unwrap_or(n))
            .collect();
        let part = g.gather(ext, idx)?;
        acc = Some(match acc {
            Some(a) => g.add(a, part)?,
            None => part,
        });
    }
    let acc = acc.ok_or_else(|| err("empty windows"))?;
    let inv = g.constant(divs.iter().map(|d| 1.0 / d).collect())?;
    Ok(g.mul(acc, inv)?)
}

/// The cells (row-major) of each output of a reduction over the axes `red` of `shape`, and
/// the output shape.
fn reduce_windows(shape: &[usize], red: &[usize], keep: bool) -> (Vec<Vec<usize>>, Vec<usize>) {
    let out_full: Vec<usize> = (0..shape.len())
        .map(|i| if red.contains(&i) { 1 } else { shape[i] })
        .collect();
    let out_steps = row_major_steps(&out_full);
    let mut windows = vec![Vec::new(); numel(&out_full)];
    for (flat, idx) in multi_indices(shape).iter().enumerate() {
        let o: usize = (0..shape.len())
            .map(|i| {
                if red.contains(&i) {
                    0
                } else {
                    idx[i] * out_steps[i]
                }
            })
            .sum();
        windows[o].push(flat);
    }
    let out_shape = if keep {
        out_full
    } else {
        (0..shape.len())
            .filter(|i| !red.contains(i))
            .map(|i| shape[i])
            .collect()
    };
    (windows, out_shape)
}

/// Concatenation, folded when every part is a constant.
fn concat_fold(g: &mut Graph, parts: Vec<NodeId>) -> Result<NodeId, Error> {
    if parts.iter().all(|&p| g.const_value(p).is_some()) {
        let mut v = Vec::new();
        for &p in &parts {
            v.extend_from_slice(g.const_value(p).unwrap_or(&[]));
        }
        return Ok(g.constant(v)?);
    }
    Ok(g.concat(parts)?)
}

/// Sum (or mean) over the axes `red` of a value's own shape.
fn reduce(
    g: &mut Graph,
    a: &Value,
    red: &[usize],
    keep: bool,
    mean: bool,
) -> Result<(NodeId, Vec<usize>), Error> {
    let (windows, out_shape) = reduce_windows(&a.shape, red, keep);
    // every window holds the same number of cells
    let count = numel(&a.shape) / windows.len().max(1);
    let node = mean_windows(g, a.node, &windows, if mean { count as f64 } else { 1.0 })?;
    Ok((node, out_shape))
}

/// A non-negative INTS attribute (`None` when absent).
fn positive_ints(node: &Node, name: &str) -> Result<Option<Vec<usize>>, Error> {
    match node.attr_ints(name) {
        None => Ok(None),
        Some(v) => v
            .iter()
            .map(|&x| {
                usize::try_from(x).map_err(|_| err(format!("{name} {v:?} has a negative entry")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

/// The window geometry of a `Conv`, `MaxPool` or `AveragePool` node over the spatial shape
/// `input`: strides, dilations, explicit pads (after `auto_pad`) and the output size.
#[derive(Debug, Clone)]
struct Geometry {
    input: Vec<usize>,
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pads_begin: Vec<usize>,
    pads_end: Vec<usize>,
    out: Vec<usize>,
}

fn window_geometry(
    node: &Node,
    input: &[usize],
    kernel: &[usize],
    allow_ceil: bool,
) -> Result<Geometry, Error> {
    let d = kernel.len();
    let per_axis = |name: &str, default: usize| -> Result<Vec<usize>, Error> {
        match positive_ints(node, name)? {
            Some(v) if v.len() == d => Ok(v),
            Some(v) => Err(err(format!(
                "{name} {v:?} does not match the {d} spatial axes"
            ))),
            None => Ok(vec![default; d]),
        }
    };
    let strides = per_axis("strides", 1)?;
    let dilations = per_axis("dilations", 1)?;
    if kernel.contains(&0) || strides.contains(&0) || dilations.contains(&0) {
        return Err(err("kernel_shape, strides and dilations must be positive"));
    }
    let ceil = node.attr_i("ceil_mode").unwrap_or(0) != 0;
    if ceil && !allow_ceil && node.op_type == "Conv" {
        return Err(err("ceil_mode is not an attribute of Conv"));
    }
    let eff: Vec<usize> = (0..d).map(|i| (kernel[i] - 1) * dilations[i] + 1).collect();
    let (pads_begin, pads_end) = match node.attr_s("auto_pad").unwrap_or("NOTSET") {
        "NOTSET" | "" => match node.attr_ints("pads") {
            None => (vec![0; d], vec![0; d]),
            Some(p) if p.len() == 2 * d => {
                if p.iter().any(|&v| v < 0) {
                    return Err(err(format!("negative pads {p:?} are not supported")));
                }
                let p: Vec<usize> = p.iter().map(|&v| v as usize).collect();
                (p[..d].to_vec(), p[d..].to_vec())
            }
            Some(p) => return Err(err(format!("pads {p:?} do not fit {d} spatial axes"))),
        },
        "VALID" => (vec![0; d], vec![0; d]),
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let mut b = vec![0; d];
            let mut e = vec![0; d];
            for i in 0..d {
                let out = input[i].div_ceil(strides[i]);
                let total =
                    ((out.saturating_sub(1)) * strides[i] + eff[i]).saturating_sub(input[i]);
                let small = total / 2;
                if mode == "SAME_UPPER" {
                    b[i] = small;
                    e[i] = total - small;
                } else {
                    b[i] = total - small;
                    e[i] = small;
                }
            }
            (b, e)
        }
        other => return Err(err(format!("unknown auto_pad '{other}'"))),
    };
    let mut out = Vec::with_capacity(d);
    for i in 0..d {
        let padded = input[i] + pads_begin[i] + pads_end[i];
        if eff[i] > padded {
            return Err(err(format!(
                "kernel {kernel:?} (dilations {dilations:?}) is larger than the padded input \
                 {input:?} (pads {pads_begin:?} + {pads_end:?})"
            )));
        }
        let span = padded - eff[i];
        let mut o = if ceil {
            span.div_ceil(strides[i])
        } else {
            span / strides[i]
        } + 1;
        // PyTorch (and ONNX) drop a last window that would start inside the end padding.
        if ceil && (o - 1) * strides[i] >= input[i] + pads_begin[i] {
            o -= 1;
        }
        out.push(o);
    }
    Ok(Geometry {
        input: input.to_vec(),
        kernel: kernel.to_vec(),
        strides,
        dilations,
        pads_begin,
        pads_end,
        out,
    })
}

impl Geometry {
    /// The output shape and, for each output position (row-major), its window's cells in the
    /// kernel's row-major order: `Some(flat input offset)` inside the input, `None` in the
    /// padding (or beyond it, for `ceil_mode` windows).
    fn cells(&self) -> (Vec<usize>, Vec<Vec<Option<usize>>>) {
        let d = self.kernel.len();
        let step = row_major_steps(&self.input);
        let offs = multi_indices(&self.kernel);
        let cells = multi_indices(&self.out)
            .iter()
            .map(|o| {
                offs.iter()
                    .map(|k| {
                        let mut flat = 0;
                        for i in 0..d {
                            let p = (o[i] * self.strides[i] + k[i] * self.dilations[i]) as i64
                                - self.pads_begin[i] as i64;
                            if p < 0 || p >= self.input[i] as i64 {
                                return None;
                            }
                            flat += p as usize * step[i];
                        }
                        Some(flat)
                    })
                    .collect()
            })
            .collect();
        (self.out.clone(), cells)
    }

    /// Number of a window's cells inside the padded input (PyTorch's divisor with
    /// `count_include_pad`).
    fn padded_count(&self, o: &[usize]) -> usize {
        (0..self.kernel.len())
            .map(|i| {
                let lim = (self.input[i] + self.pads_begin[i] + self.pads_end[i]) as i64;
                (0..self.kernel[i])
                    .filter(|&k| ((o[i] * self.strides[i] + k * self.dilations[i]) as i64) < lim)
                    .count()
            })
            .product()
    }
}

/// Max-pooling over windows of possibly different sizes (cells in the padding dropped):
/// windows are grouped by size, each group pooled by [`lower::maxpool`] (left fold with the
/// max-pool rule), and the results put back in window order.
fn maxpool_ragged(
    g: &mut Graph,
    x: NodeId,
    windows: &[Vec<usize>],
    origin: Origin,
) -> Result<NodeId, Error> {
    if windows.iter().any(Vec::is_empty) {
        return Err(err("a pooling window lies entirely in the padding"));
    }
    let mut sizes: Vec<usize> = windows.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.len() == 1 {
        return Ok(lower::maxpool(g, x, windows, origin)?);
    }
    let mut parts = Vec::with_capacity(sizes.len());
    let mut order = Vec::with_capacity(windows.len());
    for &sz in sizes.iter().rev() {
        let ids: Vec<usize> = (0..windows.len())
            .filter(|&w| windows[w].len() == sz)
            .collect();
        let group: Vec<Vec<usize>> = ids.iter().map(|&w| windows[w].clone()).collect();
        parts.push(lower::maxpool(g, x, &group, origin.clone())?);
        order.extend(ids);
    }
    let cat = g.concat(parts)?;
    let mut inv = vec![0; order.len()];
    for (k, &w) in order.iter().enumerate() {
        inv[w] = k;
    }
    permute(g, cat, inv)
}

/// Average pooling: the window sums over the cells inside the input, divided by the number
/// of cells inside the padded input (`count_include_pad = 1`) or inside the input (`0`).
fn avgpool(
    g: &mut Graph,
    x: NodeId,
    c: usize,
    plane: usize,
    cells: &[Vec<Option<usize>>],
    geo: &Geometry,
    include_pad: bool,
) -> Result<NodeId, Error> {
    let outs = multi_indices(&geo.out);
    let mut windows = Vec::with_capacity(c * cells.len());
    let mut divs = Vec::with_capacity(c * cells.len());
    for ch in 0..c {
        for (cell, o) in cells.iter().zip(&outs) {
            let w: Vec<usize> = cell.iter().flatten().map(|&j| ch * plane + j).collect();
            let div = if include_pad {
                geo.padded_count(o)
            } else {
                w.len()
            };
            if div == 0 {
                return Err(err("a pooling window lies entirely in the padding"));
            }
            windows.push(w);
            divs.push(div as f64);
        }
    }
    sum_windows(g, x, &windows, &divs)
}

/// One sample's convolution `y = conv(x, w) + bias` (zero padding, ONNX layouts): one
/// [`Graph::conv`] node (smooth and bilinear, no switch).
fn conv_node(
    g: &mut Graph,
    x: NodeId,
    w: NodeId,
    bias: Option<NodeId>,
    spec: ConvSpec,
) -> Result<NodeId, Error> {
    Ok(g.conv(x, w, bias, spec)?)
}

/// The same convolution from elementary nodes (im2col: per group, one gather of the
/// zero-extended input into the `P × K` patch matrix, then one matrix–vector product per
/// output channel); the tests check [`Graph::conv`] against it.
#[cfg(test)]
fn conv_im2col(
    g: &mut Graph,
    x: NodeId,
    w: NodeId,
    bias: Option<NodeId>,
    spec: ConvSpec,
) -> Result<NodeId, Error> {
    let d = spec.kernel.len();
    let geo = Geometry {
        input: spec.in_spatial.clone(),
        kernel: spec.kernel.clone(),
        strides: spec.strides.clone(),
        dilations: spec.dilations.clone(),
        pads_begin: spec.pads_begin.clone(),
        pads_end: spec.pads_end.clone(),
        out: (0..d)
            .map(|i| {
                let padded = spec.in_spatial[i] + spec.pads_begin[i] + spec.pads_end[i];
                (padded - ((spec.kernel[i] - 1) * spec.dilations[i] + 1)) / spec.strides[i] + 1
            })
            .collect(),
    };
    let (_, cells) = geo.cells();
    let plane = numel(&spec.in_spatial);
    let n = spec.in_channels * plane;
    let zero = g.scalar(0.0)?;
    let ext = g.concat(vec![x, zero])?;
    let cg = spec.in_channels / spec.group;
    let og = spec.out_channels / spec.group;
    let kcells = numel(&spec.kernel);
    let k = cg * kcells;
    let p = cells.len();
    let mut outs = Vec::with_capacity(spec.out_channels);
    for gi in 0..spec.group {
        let mut idx = Vec::with_capacity(p * k);
        for cell in &cells {
            for ci in 0..cg {
                let base = (gi * cg + ci) * plane;
                idx.extend(cell.iter().map(|c| c.map_or(n, |j| base + j)));
            }
        }
        let cols = g.gather(ext, idx)?;
        for co in gi * og..(gi + 1) * og {
            let row = permute(g, w, (co * k..(co + 1) * k).collect())?;
            outs.push(g.matvec(cols, row, p)?);
        }
    }
    let y = g.concat(outs)?;
    match bias {
        Some(b) => {
            let idx = (0..spec.out_channels)
                .flat_map(|c| std::iter::repeat_n(c, p))
                .collect();
            let bb = permute(g, b, idx)?;
            Ok(g.add(y, bb)?)
        }
        None => Ok(y),
    }
}

/// A two-sided `Clip` under [`ClipRule::Hardtanh`]: the clamp form
/// `(lo + hi + |x − lo| − |x − hi|)/2` of THEORY §1 with switches `z1 = x − lo`,
/// `z2 = x − hi`, whose roles are the hardtanh ones (the relu6 ones for the bounds 0 and 6),
/// so PyTorch's rule gives derivative 0 at a bound as `F.hardtanh` and `nn.ReLU6` do.
fn clip_hardtanh(
    g: &mut Graph,
    x: NodeId,
    lo: NodeId,
    hi: NodeId,
    origin: Origin,
) -> Result<NodeId, Error> {
    if let (Some(l), Some(h)) = (g.const_value(lo), g.const_value(hi)) {
        if l.iter().zip(h).any(|(a, b)| a > b) {
            return Err(err("clamp with lower bound above upper bound"));
        }
    }
    let relu6 = g.const_value(lo) == Some(&[0.0][..]) && g.const_value(hi) == Some(&[6.0][..]);
    let roles = if relu6 {
        (Role::Relu6Lo, Role::Relu6Hi)
    } else {
        (Role::HardtanhLo, Role::HardtanhHi)
    };
    let z1 = g.sub(x, lo)?;
    let z2 = g.sub(x, hi)?;
    let u1 = g.abs(z1, roles.0, origin.clone());
    let u2 = g.abs(z2, roles.1, origin);
    let s = g.add(lo, hi)?;
    let s = g.add(s, u1)?;
    let s = g.sub(s, u2)?;
    Ok(g.scale(0.5, s)?)
}

/// `min(x, hi) = (x + hi − |x − hi|)/2` with the clamp's upper switch `z = x − hi`
/// ([`Role::ClampHi`]), so that a one-sided `Clip` follows the clamp convention.
fn clamp_hi_only(
    g: &mut Graph,
    x: NodeId,
    hi: NodeId,
    role: Role,
    origin: Origin,
) -> Result<NodeId, Error> {
    let z = g.sub(x, hi)?;
    let u = g.abs(z, role, origin);
    let s = g.add(x, hi)?;
    let s = g.sub(s, u)?;
    Ok(g.scale(0.5, s)?)
}

/// The transpose of a `rows × cols` row-major matrix node: a constant when `m` is constant,
/// else a permutation (`gather`) of it.
fn transpose(g: &mut Graph, m: NodeId, rows: usize, cols: usize) -> Result<NodeId, Error> {
    let idx: Vec<usize> = (0..cols)
        .flat_map(|i| (0..rows).map(move |j| j * cols + i))
        .collect();
    if let Some(c) = g.const_value(m) {
        let t: Vec<f64> = idx.iter().map(|&p| c[p]).collect();
        Ok(g.constant(t)?)
    } else {
        Ok(g.gather(m, idx)?)
    }
}

/// The shape of a value including its batch axis (of size 1) when it is per-sample.
fn full_shape(v: &Value) -> Vec<usize> {
    if v.batched {
        let mut s = vec![1];
        s.extend_from_slice(&v.shape);
        s
    } else {
        v.shape.clone()
    }
}

/// NumPy broadcasting of two values; returns their nodes expanded to the common shape
/// (length-1 operands are left to the graph's own broadcasting), the shape, and whether the
/// result is per-sample. A shared operand may not broadcast across the batch axis.
fn broadcast(
    g: &mut Graph,
    a: &Value,
    b: &Value,
) -> Result<(NodeId, NodeId, Vec<usize>, bool), Error> {
    let batched = a.batched || b.batched;
    let sample_rank = [a, b]
        .iter()
        .filter(|v| v.batched)
        .map(|v| v.shape.len())
        .max()
        .unwrap_or(0);
    let eff = |v: &Value| -> Result<Vec<usize>, Error> {
        if !batched || v.batched || v.shape.len() <= sample_rank {
            return Ok(v.shape.clone());
        }
        // A shared operand of higher rank: its leading axis meets the batch axis.
        if v.shape.len() == sample_rank + 1 && v.shape[0] == 1 {
            Ok(v.shape[1..].to_vec())
        } else {
            Err(err(format!(
                "a tensor of shape {:?} would broadcast across the batch axis",
                v.shape
            )))
        }
    };
    let (sa, sb) = (eff(a)?, eff(b)?);
    let rank = sa.len().max(sb.len());
    let pad = |s: &[usize]| {
        let mut p = vec![1; rank - s.len()];
        p.extend_from_slice(s);
        p
    };
    let (pa, pb) = (pad(&sa), pad(&sb));
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        out.push(match (pa[i], pb[i]) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(err(format!("shapes {sa:?} and {sb:?} do not broadcast"))),
        });
    }
    let n = numel(&out);
    let expand = |g: &mut Graph, v: &Value, p: &[usize]| -> Result<NodeId, Error> {
        let len = g.len(v.node);
        if len == n || len == 1 {
            return Ok(v.node);
        }
        let mut step = vec![0; rank];
        let mut acc = 1;
        for i in (0..rank).rev() {
            step[i] = if p[i] == 1 { 0 } else { acc };
            acc *= p[i];
        }
        let idx = multi_indices(&out)
            .iter()
            .map(|o| o.iter().zip(&step).map(|(i, s)| i * s).sum())
            .collect();
        Ok(g.gather(v.node, idx)?)
    };
    let na = expand(g, a, &pa)?;
    let nb = expand(g, b, &pb)?;
    Ok((na, nb, out, batched))
}

/// Resolve an ONNX `Reshape` target against the input dims (`0` copies the input's size
/// unless `allowzero`, `−1` is inferred).
fn reshape_dims(input: &[usize], target: &[i64], allow_zero: bool) -> Result<Vec<usize>, Error> {
    let total = numel(input);
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        out.push(match t {
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            0 if !allow_zero => *input
                .get(i)
                .ok_or_else(|| err(format!("shape {target:?}: 0 at axis {i} has no input axis")))?,
            t if t >= 0 => t as usize,
            _ => return Err(err(format!("invalid shape {target:?}"))),
        });
    }
    let known = numel(&out);
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(err(format!("cannot reshape {input:?} to {target:?}")));
        }
        out[i] = total / known;
    }
    if numel(&out) != total {
        return Err(err(format!("cannot reshape {input:?} to {target:?}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_rules() {
        assert_eq!(
            reshape_dims(&[1, 4], &[-1, 1, 4], false).unwrap(),
            [1, 1, 4]
        );
        assert_eq!(reshape_dims(&[2, 3], &[0, -1], false).unwrap(), [2, 3]);
        assert!(reshape_dims(&[2, 3], &[4, -1], false).is_err());
        assert!(reshape_dims(&[2, 3], &[-1, -1], false).is_err());
    }

    #[test]
    fn multi_index_order() {
        assert_eq!(
            multi_indices(&[2, 2]),
            [vec![0, 0], vec![0, 1], vec![1, 0], vec![1, 1]]
        );
        let names = |base: &str, shape: &[usize]| {
            let mut v = VarNames::default();
            v.push_tensor(base, shape);
            v
        };
        assert_eq!(names("W", &[1, 2]), ["W[0,0]", "W[0,1]"]);
        assert_eq!(names("c", &[]), ["c"]);
        let t = names("t", &[2, 11, 3]).to_vec();
        assert_eq!(t.len(), 66);
        assert_eq!(t[0], "t[0,0,0]");
        assert_eq!(t[32], "t[0,10,2]");
        assert_eq!(t[65], "t[1,10,2]");
        assert!(names("e", &[3, 0]).is_empty());
    }

    #[test]
    fn broadcasting_expands_with_gather() {
        let mut g = Graph::new(6);
        let x = g.var(0, 6).unwrap();
        let c = g.constant(vec![10.0, 20.0]).unwrap();
        let a = Value {
            node: x,
            shape: vec![2, 3],
            batched: true,
        };
        let b = Value {
            node: c,
            shape: vec![1, 2, 1],
            batched: false,
        };
        let (na, nb, shape, batched) = broadcast(&mut g, &a, &b).unwrap();
        assert_eq!(shape, [2, 3]);
        assert!(batched);
        assert_eq!(na, x);
        // the constant is expanded to [10,10,10,20,20,20]
        let s = g.add(na, nb).unwrap();
        let ev = crate::eval::evaluate(&g, &[0.0; 6]).unwrap();
        assert_eq!(ev.value(&g, s), [10.0, 10.0, 10.0, 20.0, 20.0, 20.0]);
        let bad = Value {
            node: c,
            shape: vec![2, 1, 1],
            batched: false,
        };
        assert!(broadcast(&mut g, &a, &bad).is_err());
    }

    use crate::convention::Convention;
    use crate::eval;
    use crate::frontend::onnx_proto::{AttrValue, Attribute, ElemType, Tensor, ValueInfo};

    fn tensor(name: &str, dims: &[usize], data: &[f64]) -> Tensor {
        Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            data: data.to_vec(),
            elem_type: ElemType::Float,
        }
    }

    fn int_tensor(name: &str, data: &[f64]) -> Tensor {
        Tensor {
            elem_type: ElemType::Int64,
            ..tensor(name, &[data.len()], data)
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, AttrValue)>) -> Node {
        Node {
            name: format!("{op}_{output}"),
            op_type: op.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.into()],
            attributes: attrs
                .into_iter()
                .map(|(n, v)| Attribute {
                    name: n.into(),
                    value: v,
                })
                .collect(),
            index: 0,
        }
    }

    fn model(opset: i64, in_dims: &[Option<usize>], inits: Vec<Tensor>, nodes: Vec<Node>) -> Model {
        let out = nodes
            .last()
            .map(|n| n.outputs[0].clone())
            .unwrap_or_default();
        Model {
            graph_name: "t".into(),
            ir_version: 8,
            opset_version: Some(opset),
            initializers: inits,
            constants: vec![],
            inputs: vec![ValueInfo {
                name: "x".into(),
                dims: in_dims.to_vec(),
            }],
            outputs: vec![ValueInfo {
                name: out,
                dims: vec![],
            }],
            nodes,
        }
    }

    fn data(inputs: &[&[f64]]) -> Data {
        Data {
            inputs: inputs.iter().map(|x| x.to_vec()).collect(),
            targets: None,
        }
    }

    /// (value, pytorch AD) at the problem's point.
    fn run(p: &Problem) -> (f64, Vec<f64>) {
        let x = p.point.clone().unwrap();
        let ev = eval::evaluate(&p.graph, &x).unwrap();
        let st = eval::switch_states(&p.graph, &ev, eval::TAU_ACT);
        let g = eval::ad(&p.graph, &ev, &st, &Convention::pytorch()).unwrap();
        (ev.output(&p.graph).unwrap(), g)
    }

    fn roles(p: &Problem) -> Vec<&'static str> {
        p.graph.abs_nodes().iter().map(|a| a.role.name()).collect()
    }

    #[test]
    fn clip_bounds_from_inputs_and_attributes() {
        let one = |n: Node, inits: Vec<Tensor>, opset: i64| {
            let m = model(opset, &[None, Some(1)], inits, vec![n]);
            problem(&m, &data(&[&[0.5]]), Some(Wrt::Inputs), None).unwrap()
        };
        // min only: max(x, lo) with the hardtanh lower switch; at the bound pytorch gives 0
        // (torch.clamp(x, min=lo) in torch 2.15)
        let p = one(
            node("Clip", &["x", "lo"], "y", vec![]),
            vec![tensor("lo", &[], &[0.5])],
            13,
        );
        assert_eq!(roles(&p), ["hardtanh.lo"]);
        assert_eq!(run(&p), (0.5, vec![0.0]));
        // max only (empty min name)
        let p = one(
            node("Clip", &["x", "", "hi"], "y", vec![]),
            vec![tensor("hi", &[], &[0.5])],
            13,
        );
        assert_eq!(roles(&p), ["hardtanh.hi"]);
        assert_eq!(run(&p), (0.5, vec![0.0]));
        // neither: identity
        let p = one(node("Clip", &["x"], "y", vec![]), vec![], 13);
        assert_eq!(p.graph.n_switches(), 0);
        // opset 6: attributes
        let p = one(
            node(
                "Clip",
                &["x"],
                "y",
                vec![
                    ("min", AttrValue::Float(0.0)),
                    ("max", AttrValue::Float(0.25)),
                ],
            ),
            vec![],
            6,
        );
        assert_eq!(roles(&p), ["hardtanh.lo", "hardtanh.hi"]);
        assert_eq!(run(&p).0, 0.25);
        // at a bound: hardtanh's rule (0) by default, clamp's (1) with ClipRule::Clamp
        let m = model(
            13,
            &[None, Some(1)],
            vec![tensor("lo", &[], &[0.0]), tensor("hi", &[], &[6.0])],
            vec![node("Clip", &["x", "lo", "hi"], "y", vec![])],
        );
        for (rule, names, grad) in [
            (ClipRule::Hardtanh, ["relu6.lo", "relu6.hi"], 0.0),
            (ClipRule::Clamp, ["clamp.lo", "clamp.hi"], 1.0),
        ] {
            for x in [0.0, 6.0] {
                let p = problem_with(&m, &data(&[&[x]]), Some(Wrt::Inputs), None, rule).unwrap();
                assert_eq!(roles(&p), names);
                assert_eq!(run(&p), (x, vec![grad]));
            }
        }
        // lo > hi is rejected
        let m = model(
            6,
            &[None, Some(1)],
            vec![],
            vec![node(
                "Clip",
                &["x"],
                "y",
                vec![
                    ("min", AttrValue::Float(1.0)),
                    ("max", AttrValue::Float(0.0)),
                ],
            )],
        );
        let e = problem(&m, &data(&[&[0.5]]), Some(Wrt::Inputs), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lower bound above upper bound"), "{e}");
        // opset 13 with stored bounds that are parameters
        let m = model(
            13,
            &[None, Some(1)],
            vec![tensor("lo", &[], &[1.0]), tensor("hi", &[], &[0.0])],
            vec![node("Clip", &["x", "lo", "hi"], "y", vec![])],
        );
        let e = problem(&m, &data(&[&[0.5]]), Some(Wrt::Params), None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "node 'Clip_y' (Clip): min 1 is above max 0");
    }

    #[test]
    fn gemm_trans_b_zero_uses_the_transpose() {
        // B is k×r = 2×3 (transB = 0); y = x·B + c, then summed by a MatMul with a vector
        let b = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let m = model(
            13,
            &[None, Some(2)],
            vec![
                tensor("B", &[2, 3], &b),
                tensor("c", &[1, 3], &[0.5, 0.0, -0.5]),
                tensor("v", &[3], &[1.0, 1.0, 1.0]),
            ],
            vec![
                node(
                    "Gemm",
                    &["x", "B", "c"],
                    "h",
                    vec![("beta", AttrValue::Float(2.0))],
                ),
                node("MatMul", &["h", "v"], "y", vec![]),
            ],
        );
        let d = data(&[&[1.0, -1.0]]);
        // x·B = (1−4, 2−5, 3−6) = (−3, −3, −3); + 2c = (−2, −3, −4); sum = −9
        let p = problem(&m, &d, Some(Wrt::Params), None).unwrap();
        let (v, g) = run(&p);
        assert_eq!(v, -9.0);
        // ∂/∂B[i,j] = x_i, ∂/∂c = 2, ∂/∂v = h
        assert_eq!(
            g,
            [1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 2.0, 2.0, 2.0, -2.0, -3.0, -4.0]
        );
        let p = problem(&m, &d, Some(Wrt::Inputs), None).unwrap();
        assert_eq!(run(&p), (-9.0, vec![6.0, 15.0]));
    }

    #[test]
    fn broadcasting_binary_ops_and_activations() {
        // per-sample [2, 2]: Sub a [2,1] column, Div by a scalar, LeakyRelu, Reshape, Flatten
        let m = model(
            13,
            &[None, Some(2), Some(2)],
            vec![
                tensor("col", &[2, 1], &[1.0, -1.0]),
                tensor("two", &[], &[2.0]),
                int_tensor("shape", &[0.0, 4.0]),
                tensor("ones", &[4], &[1.0, 1.0, 1.0, 1.0]),
            ],
            vec![
                node("Sub", &["x", "col"], "a", vec![]),
                node("Div", &["a", "two"], "b", vec![]),
                node(
                    "LeakyRelu",
                    &["b"],
                    "c",
                    vec![("alpha", AttrValue::Float(0.5))],
                ),
                node("Reshape", &["c", "shape"], "d", vec![]),
                node("MatMul", &["d", "ones"], "y", vec![]),
            ],
        );
        let p = problem(
            &m,
            &data(&[&[3.0, 5.0, -3.0, 1.0]]),
            Some(Wrt::Inputs),
            None,
        )
        .unwrap();
        // a = (2, 4, −2, 2); b = (1, 2, −1, 1); leaky = (1, 2, −0.5, 1) → 3.5
        let (v, g) = run(&p);
        assert_eq!(v, 3.5);
        assert_eq!(g, [0.5, 0.5, 0.25, 0.5]);
        // int64 shape tensors are not parameters
        let p = problem(
            &m,
            &data(&[&[3.0, 5.0, -3.0, 1.0]]),
            Some(Wrt::Params),
            None,
        )
        .unwrap();
        assert_eq!(
            p.var_names,
            ["col[0,0]", "col[1,0]", "two", "ones[0]", "ones[1]", "ones[2]", "ones[3]"]
        );
    }

    fn lowering_error(m: &Model, x: &[f64]) -> String {
        let e = problem(m, &data(&[x]), Some(Wrt::Inputs), None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn unsupported_constructions_are_one_line_errors() {
        let w = || tensor("W", &[1, 2], &[1.0, 1.0]);
        // batch axis must stay first
        let m = model(
            13,
            &[None, Some(2)],
            vec![int_tensor("s", &[1.0, -1.0])],
            vec![node("Reshape", &["x", "s"], "y", vec![])],
        );
        assert_eq!(
            lowering_error(&m, &[1.0, 2.0]),
            "node 'Reshape_y' (Reshape): shape [1, -1] does not keep the batch axis first"
        );
        let m = model(
            13,
            &[None, Some(2)],
            vec![],
            vec![node(
                "Flatten",
                &["x"],
                "y",
                vec![("axis", AttrValue::Int(0))],
            )],
        );
        assert!(lowering_error(&m, &[1.0, 2.0]).contains("would merge the batch axis"));
        let m = model(
            13,
            &[None, Some(1), Some(4)],
            vec![],
            vec![node(
                "MaxPool",
                &["x"],
                "y",
                vec![
                    ("kernel_shape", AttrValue::Ints(vec![2])),
                    ("auto_pad", AttrValue::String("SAME_MIDDLE".into())),
                ],
            )],
        );
        assert_eq!(
            lowering_error(&m, &[1.0, 2.0, 3.0, 4.0]),
            "node 'MaxPool_y' (MaxPool): unknown auto_pad 'SAME_MIDDLE'"
        );
        let m = model(
            13,
            &[None, Some(2)],
            vec![w()],
            vec![node(
                "Gemm",
                &["x", "W"],
                "y",
                vec![("transA", AttrValue::Int(1))],
            )],
        );
        assert!(lowering_error(&m, &[1.0, 2.0]).contains("transA = 1 is not supported"));
        let m = model(
            13,
            &[None, Some(2)],
            vec![w()],
            vec![node("Gemm", &["x", "W"], "y", vec![])],
        );
        assert!(lowering_error(&m, &[1.0, 2.0]).contains("does not fit an input of length 2"));
        let m = model(
            13,
            &[None, Some(2)],
            vec![],
            vec![node("Add", &["x", "nope"], "y", vec![])],
        );
        assert_eq!(
            lowering_error(&m, &[1.0, 2.0]),
            "node 'Add_y' (Add): input 'nope' is not defined"
        );
        let mut n = node("Relu", &["x"], "y", vec![]);
        n.domain = "com.example".into();
        let m = model(13, &[None, Some(2)], vec![], vec![n]);
        assert_eq!(
            lowering_error(&m, &[1.0, 2.0]),
            "unsupported ONNX op 'com.example.Relu' at node 'Relu_y'"
        );
        let m = model(
            13,
            &[None, Some(2)],
            vec![tensor("c", &[3], &[1.0, 2.0, 3.0])],
            vec![node("Mul", &["x", "c"], "y", vec![])],
        );
        assert!(lowering_error(&m, &[1.0, 2.0]).contains("shapes [2] and [3] do not broadcast"));
    }

    #[test]
    fn erf_matches_reference_values() {
        // math.erf of CPython (C library erf)
        for (x, e) in [
            (1e-8, 1.1283791670955126e-08),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (1.5, 0.9661051464753108),
            (2.5, 0.999593047982555),
            (2.99, 0.9999764743969194),
            (3.0, 0.9999779095030014),
            (3.5, 0.9999992569016276),
            (4.5, 0.9999999998033839),
            (6.0, 1.0),
        ] {
            let got = crate::eval::erf(x);
            assert!(
                (got - e).abs() <= 1e-14 * e,
                "erf({x}) = {got}, expected {e}"
            );
            assert_eq!(crate::eval::erf(-x), -got);
        }
        assert_eq!(crate::eval::erf(0.0), 0.0);
    }

    #[test]
    fn conv_node_matches_im2col() {
        // 2-D, padding, stride, dilation, groups; values and AD of a weighted sum agree
        let spec = ConvSpec {
            in_channels: 4,
            out_channels: 6,
            in_spatial: vec![5, 6],
            kernel: vec![3, 2],
            strides: vec![2, 1],
            pads_begin: vec![1, 0],
            pads_end: vec![2, 1],
            dilations: vec![1, 2],
            group: 2,
        };
        let (nx, nw) = (4 * 5 * 6, 6 * 2 * 3 * 2);
        let point: Vec<f64> = (0..nx + nw + 6)
            .map(|i| ((i * 37 % 23) as f64 - 11.0) / 8.0)
            .collect();
        let mut outs = Vec::new();
        for im2col in [false, true] {
            let mut g = Graph::new(point.len());
            let x = g.var(0, nx).unwrap();
            let w = g.var(nx, nw).unwrap();
            let b = g.var(nx + nw, 6).unwrap();
            let y = if im2col {
                conv_im2col(&mut g, x, w, Some(b), spec.clone()).unwrap()
            } else {
                conv_node(&mut g, x, w, Some(b), spec.clone()).unwrap()
            };
            let n = g.len(y);
            let c = g
                .constant((0..n).map(|i| (i % 5) as f64 - 2.0).collect())
                .unwrap();
            let s = g.mul(y, c).unwrap();
            let s = g.sum(s);
            g.set_output(s).unwrap();
            let ev = eval::evaluate(&g, &point).unwrap();
            let st = eval::switch_states(&g, &ev, eval::TAU_ACT);
            let grad = eval::ad(&g, &ev, &st, &Convention::pytorch()).unwrap();
            outs.push((n, ev.value(&g, y).to_vec(), grad));
        }
        assert_eq!(outs[0].0, 6 * 3 * 5);
        for (a, b) in outs[0]
            .1
            .iter()
            .zip(&outs[1].1)
            .chain(outs[0].2.iter().zip(&outs[1].2))
        {
            assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn maxpool_2d_windows() {
        // per-sample [1, 2, 4], kernel 2×2, stride 2: two windows
        let m = model(
            13,
            &[None, Some(1), Some(2), Some(4)],
            vec![tensor("v", &[2], &[1.0, 10.0])],
            vec![
                node(
                    "MaxPool",
                    &["x"],
                    "p",
                    vec![
                        ("kernel_shape", AttrValue::Ints(vec![2, 2])),
                        ("strides", AttrValue::Ints(vec![2, 2])),
                    ],
                ),
                node("Flatten", &["p"], "f", vec![]),
                node("MatMul", &["f", "v"], "y", vec![]),
            ],
        );
        let p = problem(
            &m,
            &data(&[&[1.0, 2.0, 3.0, 0.0, 5.0, 1.0, 2.0, 8.0]]),
            Some(Wrt::Inputs),
            None,
        )
        .unwrap();
        let (v, g) = run(&p);
        assert_eq!(v, 5.0 + 80.0);
        assert_eq!(g, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 10.0]);
        assert_eq!(p.graph.n_switches(), 2 * 3);
    }
}
