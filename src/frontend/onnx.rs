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
//! `Gemm` (`alpha`, `beta`, `transB`; `transA` = 0), `MatMul` (a per-sample vector times a
//! weight matrix or vector), `Add`, `Sub`, `Mul`, `Div` (NumPy broadcasting, never across the
//! batch axis), `Neg`, `Relu`, `LeakyRelu` (`alpha`), `Abs`, `Max`, `Min` (n-ary, folded left
//! to right with the binary rule), `Clip` (bounds from inputs for opset ≥ 11, from attributes
//! before; a missing bound does not clamp that side), `HardSigmoid` (`alpha` > 0, `beta`),
//! `Tanh`, `Sigmoid`, `Exp`, `Log`, `Sqrt`, `Softplus`, `Sin`, `Cos`, `Flatten`, `Reshape`
//! (shape from an integer initializer or `Constant`; `0` and `−1` as in ONNX; the batch axis
//! must stay first), `Identity`, `MaxPool` (windows over the trailing axes of a per-sample
//! `[C, L]` or `[C, H, W]` tensor; `kernel_shape`, `strides`; no padding, dilation or
//! `ceil_mode`). Kink operators go through [`crate::lower`] (THEORY §1): `Max`/`Min` use the
//! binary max/min rule, `MaxPool` the max-pool rule, `Clip` the clamp rule (also with one
//! bound: `Clip(x, lo)` is `max(x, lo)` with the clamp's lower switch `z = x − lo`, and
//! `Clip(x, None, hi)` is `min(x, hi)` with the upper switch `z = x − hi`), so the framework
//! conventions of THEORY §3 apply as for the corresponding PyTorch operators. Anything else is
//! an error naming the operator and the node.

use super::network::{sample_loss, Data, Loss, Wrt};
use super::onnx_proto::{Model, Node};
use super::Problem;
use crate::error::Error;
use crate::graph::{Graph, NodeId, Origin, Role, Smooth};
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

fn fmt_index(idx: &[usize]) -> String {
    idx.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
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

/// Names of the elements of a tensor `base` with `shape`: `base[i,j]`, or `base` for a
/// scalar.
fn element_names(base: &str, shape: &[usize]) -> Vec<String> {
    if shape.is_empty() {
        return vec![base.to_string()];
    }
    multi_indices(shape)
        .iter()
        .map(|i| format!("{base}[{}]", fmt_index(i)))
        .collect()
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

/// Which PyTorch operator an ONNX `Clip` with two bounds stands for (`--clip`, CONTRACT §2).
///
/// `torch.clamp`, `nn.Hardtanh`/`F.hardtanh` and `nn.ReLU6` all export as `Clip`, but their
/// backward passes differ exactly at a bound. Checked in torch 2.15 (float64, CPU) with
/// `tools/gen_torch_models.py --check-rules`: the gradient of `F.hardtanh(x, lo, hi)` and of
/// `nn.ReLU6()(x)` is 0 at `x = lo` and at `x = hi` (for lo, hi = −1, 1; 0, 6; −0.5, 2.25),
/// that of `torch.clamp(x, lo, hi)` is 1 at both bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClipRule {
    /// `nn.Hardtanh`/`nn.ReLU6` (the default, activation layers): derivative 0 at a bound;
    /// the switches get the hardtanh roles ([`Role::HardtanhLo`]/[`Role::HardtanhHi`],
    /// [`Role::Relu6Lo`]/[`Role::Relu6Hi`] when the bounds are 0 and 6).
    #[default]
    Hardtanh,
    /// `torch.clamp`: derivative 1 at a bound ([`Role::ClampLo`]/[`Role::ClampHi`]).
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
            let mut names = Vec::new();
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
                names.extend(element_names(&t.name, &t.dims));
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
            let mut names = Vec::with_capacity(n_samples * k);
            for s in 0..n_samples {
                names.extend(element_names(&format!("{}[{s}]", input.name), &in_shape));
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
                (Some(lo), None) => lower::max2(g, x.node, lo, Role::ClampLo, origin)?,
                (None, Some(hi)) => clamp_hi_only(g, x.node, hi, origin)?,
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
            if !a.batched || b.batched || a.shape.len() != 1 {
                return Err(err(
                    "only (per-sample vector) × (weight matrix or vector) is supported",
                ));
            }
            let k = a.shape[0];
            match b.shape.as_slice() {
                &[kb, r] if kb == k => {
                    let w = transpose(g, b.node, kb, r)?;
                    Value {
                        node: g.matvec(w, a.node, r)?,
                        shape: vec![r],
                        batched: true,
                    }
                }
                &[kb] if kb == k => Value {
                    node: g.matvec(b.node, a.node, 1)?,
                    shape: vec![],
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
            let t = model
                .tensor(sname)
                .ok_or_else(|| err("the shape must be an initializer or a Constant"))?;
            if t.data.iter().any(|v| v.fract() != 0.0) {
                return Err(err(format!("shape '{sname}' is not an integer tensor")));
            }
            let target: Vec<i64> = t.data.iter().map(|&v| v as i64).collect();
            let allow_zero = node.attr_i("allowzero").unwrap_or(0) != 0;
            if a.batched {
                let resolve = |b: usize| {
                    let mut full = vec![b];
                    full.extend_from_slice(&a.shape);
                    reshape_dims(&full, &target, allow_zero)
                };
                let (one, two) = (resolve(1)?, resolve(2)?);
                if one.first() != Some(&1) || two.first() != Some(&2) || one[1..] != two[1..] {
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
        "MaxPool" => {
            let a = need(g, ctx, 0)?;
            if !a.batched {
                return Err(err("the pooled tensor must be per-sample"));
            }
            if node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
                return Err(err("the Indices output is not supported"));
            }
            let kernel: Vec<usize> = node
                .attr_ints("kernel_shape")
                .ok_or_else(|| err("kernel_shape is missing"))?
                .iter()
                .map(|&v| usize::try_from(v).unwrap_or(0))
                .collect();
            let d = kernel.len();
            if d == 0 || a.shape.len() != d + 1 {
                return Err(err(format!(
                    "kernel_shape {kernel:?} does not fit a per-sample input of shape {:?} \
                     (channels first)",
                    a.shape
                )));
            }
            let strides: Vec<usize> = match node.attr_ints("strides") {
                Some(s) if s.len() == d => {
                    s.iter().map(|&v| usize::try_from(v).unwrap_or(0)).collect()
                }
                Some(s) => return Err(err(format!("strides {s:?} do not match kernel_shape"))),
                None => vec![1; d],
            };
            if kernel.contains(&0) || strides.contains(&0) {
                return Err(err("kernel_shape and strides must be positive"));
            }
            if node
                .attr_ints("pads")
                .is_some_and(|p| p.iter().any(|&v| v != 0))
            {
                return Err(err("padding is not supported (pads must be 0)"));
            }
            if node
                .attr_ints("dilations")
                .is_some_and(|p| p.iter().any(|&v| v != 1))
            {
                return Err(err("dilations are not supported (must be 1)"));
            }
            if node.attr_i("ceil_mode").unwrap_or(0) != 0 {
                return Err(err("ceil_mode = 1 is not supported"));
            }
            match node.attr_s("auto_pad").unwrap_or("NOTSET") {
                "NOTSET" | "VALID" | "" => {}
                other => return Err(err(format!("auto_pad = {other} is not supported"))),
            }
            let spatial = &a.shape[1..];
            let mut out_sp = Vec::with_capacity(d);
            for i in 0..d {
                if kernel[i] > spatial[i] {
                    return Err(err(format!(
                        "kernel_shape {kernel:?} is larger than the input {spatial:?}"
                    )));
                }
                out_sp.push((spatial[i] - kernel[i]) / strides[i] + 1);
            }
            // Row-major strides of the per-sample input.
            let mut step = vec![1; d];
            for i in (0..d.saturating_sub(1)).rev() {
                step[i] = step[i + 1] * spatial[i + 1];
            }
            let plane = numel(spatial);
            let outs = multi_indices(&out_sp);
            let offs = multi_indices(&kernel);
            let mut windows = Vec::with_capacity(a.shape[0] * outs.len());
            for c in 0..a.shape[0] {
                for o in &outs {
                    windows.push(
                        offs.iter()
                            .map(|j| {
                                c * plane
                                    + (0..d)
                                        .map(|i| (o[i] * strides[i] + j[i]) * step[i])
                                        .sum::<usize>()
                            })
                            .collect(),
                    );
                }
            }
            let node = lower::maxpool(g, a.node, &windows, origin)?;
            let mut shape = vec![a.shape[0]];
            shape.extend(out_sp);
            Value {
                node,
                shape,
                batched: true,
            }
        }
        _ => return Err(unsupported(node)),
    })
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
fn clamp_hi_only(g: &mut Graph, x: NodeId, hi: NodeId, origin: Origin) -> Result<NodeId, Error> {
    let z = g.sub(x, hi)?;
    let u = g.abs(z, Role::ClampHi, origin);
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
        assert_eq!(element_names("W", &[1, 2]), ["W[0,0]", "W[0,1]"]);
        assert_eq!(element_names("c", &[]), ["c"]);
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
        // min only: max(x, lo) with the clamp's lower switch; pytorch passes the gradient
        let p = one(
            node("Clip", &["x", "lo"], "y", vec![]),
            vec![tensor("lo", &[], &[0.5])],
            13,
        );
        assert_eq!(roles(&p), ["clamp.lo"]);
        assert_eq!(run(&p), (0.5, vec![1.0]));
        // max only (empty min name)
        let p = one(
            node("Clip", &["x", "", "hi"], "y", vec![]),
            vec![tensor("hi", &[], &[0.5])],
            13,
        );
        assert_eq!(roles(&p), ["clamp.hi"]);
        assert_eq!(run(&p), (0.5, vec![1.0]));
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
        assert_eq!(roles(&p), ["clamp.lo", "clamp.hi"]);
        assert_eq!(run(&p).0, 0.25);
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
                    ("pads", AttrValue::Ints(vec![1, 1])),
                ],
            )],
        );
        assert_eq!(
            lowering_error(&m, &[1.0, 2.0, 3.0, 4.0]),
            "node 'MaxPool_y' (MaxPool): padding is not supported (pads must be 0)"
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
