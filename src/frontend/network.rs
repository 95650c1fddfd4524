//! Network descriptions (`.json`, CONTRACT.md §4): a feed-forward network, a loss and a batch
//! of data, lowered into one scalar objective over the parameters or over the inputs.
//!
//! # The objective
//!
//! For layers `N = L_m ∘ … ∘ L_1` and data `(x_k, y_k)`, k = 0..B−1, the objective is the sum
//! of the per-sample losses (THEORY.md §1, "Networks"):
//!
//! ```text
//! f = Σ_k ℓ(N(x_k), y_k)
//!   mse            ℓ = ½ ‖N(x) − y‖²
//!   l1             ℓ = Σᵢ |N(x)ᵢ − yᵢ|                     (one abs switch per output, role abs)
//!   hinge          ℓ = Σᵢ relu(1 − yᵢ N(x)ᵢ), yᵢ ∈ {−1, +1}  (one relu switch per output)
//!   cross_entropy  ℓ = −Σᵢ yᵢ log softmax(N(x))ᵢ = Σᵢ yᵢ (logsumexp(N(x)) − N(x)ᵢ),  yᵢ ≥ 0
//!   none           ℓ = N(x)                                 (N(x) must be a scalar)
//! ```
//!
//! The default loss is `mse` when the data have targets and `none` otherwise.
//!
//! # Layers
//!
//! `dense` (`weights` r×k, row i feeds output i; `bias` of length r) computes `W·x + b` as one
//! matrix–vector node per sample; the activations `relu`, `leaky_relu` (`slope`, default
//! 0.01), `hardtanh`, `relu6`, `hardsigmoid` (PyTorch's `clamp(x/6 + 1/2, 0, 1)`) and `abs` are
//! lowered through [`crate::lower`] with the switch orientations of THEORY §1; `tanh` and
//! `sigmoid` are smooth. `maxpool1d` (`size`, optional `stride` defaulting to `size`) takes
//! the maximum over the windows `[o·stride, o·stride + size)` of the vector, no padding; like
//! PyTorch it keeps `⌊(len − size)/stride⌋ + 1` windows and ignores a trailing partial window.
//! Each window is a left-to-right max-pool scan (role `maxpool`).
//!
//! # Variables and their order (CONTRACT §4)
//!
//! * `wrt params`: all weights then the bias of each dense layer, layer by layer, weights
//!   row-major: `[W1, b1, W2, b2, …]`, named `W1[i,j]`, `b1[i]` (dense layers numbered from 1,
//!   indices from 0). The point is the description's weights; the inputs are constants.
//! * `wrt inputs`: the inputs of all samples, sample after sample, named `x[s][j]`. The point
//!   is the data's inputs; the weights are constants.
//!
//! # Switch order
//!
//! The graph is built sample by sample: all layers of sample 0, then its loss, then sample 1,
//! … Inside a sample, layers come in order and the units of a layer in index order (a
//! two-kink activation lists all its lower switches, then all its upper switches). Switches
//! report `sample s, layer l (kind), unit i` with `l` the index in the `layers` list (from 0),
//! or `sample s, loss (kind)`.
//!
//! Sharing the parameters across the batch couples the kinks of different samples; THEORY
//! §5.3 discusses when AD's choices at such kinks are still Clarke gradients (E12, E13, E14
//! of THEORY §8 are tests of this module).

use super::{Problem, VarNames};
use crate::error::Error;
use crate::graph::{Graph, NodeId, Origin, Smooth};
use crate::lower;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

fn err(msg: impl Into<String>) -> Error {
    Error::Network(msg.into())
}

/// What the gradient is taken with respect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wrt {
    /// The weights and biases (the default).
    Params,
    /// The inputs of all samples.
    Inputs,
}

impl FromStr for Wrt {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "params" => Ok(Wrt::Params),
            "inputs" => Ok(Wrt::Inputs),
            _ => Err(Error::input(format!(
                "unknown --wrt '{s}' (expected params or inputs)"
            ))),
        }
    }
}

impl fmt::Display for Wrt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Wrt::Params => "params",
            Wrt::Inputs => "inputs",
        })
    }
}

/// The per-sample loss (see the module documentation for the formulas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// ½‖N(x) − y‖².
    Mse,
    /// ‖N(x) − y‖₁.
    L1,
    /// Σᵢ max(0, 1 − yᵢN(x)ᵢ), yᵢ ∈ {−1, +1}.
    Hinge,
    /// −Σᵢ yᵢ log softmax(N(x))ᵢ, y a one-hot or probability vector.
    CrossEntropy,
    /// N(x) itself (a scalar per sample).
    None,
}

impl Loss {
    /// The loss's name as written in descriptions and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Mse => "mse",
            Loss::L1 => "l1",
            Loss::Hinge => "hinge",
            Loss::CrossEntropy => "cross_entropy",
            Loss::None => "none",
        }
    }

    /// Does the loss need targets?
    pub fn needs_targets(self) -> bool {
        self != Loss::None
    }
}

impl FromStr for Loss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "mse" => Ok(Loss::Mse),
            "l1" => Ok(Loss::L1),
            "hinge" => Ok(Loss::Hinge),
            "cross_entropy" => Ok(Loss::CrossEntropy),
            "none" => Ok(Loss::None),
            _ => Err(Error::input(format!(
                "unknown --loss '{s}' (expected mse, l1, hinge, cross_entropy or none)"
            ))),
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn default_slope() -> f64 {
    0.01
}

/// One layer of a network description (`{"type": ..., ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// `W·x + b` with `weights` r×k (row i feeds output i) and `bias` of length r.
    Dense {
        weights: Vec<Vec<f64>>,
        bias: Vec<f64>,
    },
    /// `max(0, x)` elementwise.
    Relu,
    /// `x` for `x ≥ 0`, `slope·x` otherwise, lowered as `((1+a)x + (1−a)|x|)/2`.
    LeakyRelu {
        #[serde(default = "default_slope")]
        slope: f64,
    },
    /// `clamp(x, −1, 1)`.
    Hardtanh,
    /// `clamp(x, 0, 6)`.
    Relu6,
    /// `clamp(x/6 + 1/2, 0, 1)`.
    Hardsigmoid,
    /// `|x|`.
    Abs,
    /// `tanh(x)`.
    Tanh,
    /// `1/(1 + e^(−x))`.
    Sigmoid,
    /// Max over windows `[o·stride, o·stride + size)`; `stride` defaults to `size`.
    Maxpool1d {
        size: usize,
        #[serde(default)]
        stride: Option<usize>,
    },
}

impl Layer {
    /// The layer's `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense { .. } => "dense",
            Layer::Relu => "relu",
            Layer::LeakyRelu { .. } => "leaky_relu",
            Layer::Hardtanh => "hardtanh",
            Layer::Relu6 => "relu6",
            Layer::Hardsigmoid => "hardsigmoid",
            Layer::Abs => "abs",
            Layer::Tanh => "tanh",
            Layer::Sigmoid => "sigmoid",
            Layer::Maxpool1d { .. } => "maxpool1d",
        }
    }
}

/// A batch: one input vector per sample and, optionally, one target vector per sample.
///
/// In JSON (`{"inputs": [[..], ..], "targets": [[..], ..]}`) a sample may also be written as
/// a number (a vector of length 1) or as a nested array, which is flattened row-major (so
/// `x.tolist()` of a NumPy batch works for any sample shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawData")]
pub struct Data {
    pub inputs: Vec<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<Vec<f64>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatData {
    inputs: Vec<Vec<f64>>,
    #[serde(default)]
    targets: Option<Vec<Vec<f64>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    inputs: Vec<Value>,
    #[serde(default)]
    targets: Option<Vec<Value>>,
}

impl TryFrom<RawData> for Data {
    type Error = String;
    fn try_from(raw: RawData) -> Result<Self, String> {
        let flat = |vs: &[Value], what: &str| -> Result<Vec<Vec<f64>>, String> {
            vs.iter()
                .enumerate()
                .map(|(k, v)| flatten(v).map_err(|m| format!("data.{what}[{k}]: {m}")))
                .collect()
        };
        let inputs = flat(&raw.inputs, "inputs")?;
        let targets = match &raw.targets {
            Some(t) => Some(flat(t, "targets")?),
            None => None,
        };
        Ok(Data { inputs, targets })
    }
}

/// Flatten a number or a rectangular nested array of numbers, row-major.
fn flatten(v: &Value) -> Result<Vec<f64>, String> {
    fn shape(v: &Value) -> Result<Vec<usize>, String> {
        match v {
            Value::Number(_) => Ok(vec![]),
            Value::Array(items) => {
                let first = items.first().ok_or("empty array")?;
                let inner = shape(first)?;
                for it in &items[1..] {
                    if shape(it)? != inner {
                        return Err("ragged nested array".into());
                    }
                }
                let mut s = vec![items.len()];
                s.extend(inner);
                Ok(s)
            }
            Value::Null => Err("null where a number was expected".into()),
            other => Err(format!("expected a number or an array, found {other}")),
        }
    }
    fn push(v: &Value, out: &mut Vec<f64>) -> Result<(), String> {
        match v {
            Value::Number(n) => {
                let x = n
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or("number out of range")?;
                out.push(x);
                Ok(())
            }
            Value::Array(items) => items.iter().try_for_each(|it| push(it, out)),
            _ => Err("expected a number".into()),
        }
    }
    shape(v)?;
    let mut out = Vec::new();
    push(v, &mut out)?;
    Ok(out)
}

impl Data {
    /// Parse a batch from JSON (`{"inputs": .., "targets": ..}`).
    pub fn from_json(text: &str) -> Result<Data, Error> {
        // Fast path for the common flat form (one vector of numbers per sample), parsed
        // straight into vectors; anything else (nested arrays, errors) takes the general
        // path through `serde_json::Value`, which also words the error messages.
        if let Ok(flat) = serde_json::from_str::<FlatData>(text) {
            let rows_ok = |rows: &[Vec<f64>]| {
                rows.iter()
                    .all(|r| !r.is_empty() && r.iter().all(|v| v.is_finite()))
            };
            if rows_ok(&flat.inputs) && flat.targets.as_deref().is_none_or(rows_ok) {
                return Ok(Data {
                    inputs: flat.inputs,
                    targets: flat.targets,
                });
            }
        }
        serde_json::from_str(text).map_err(|e| err(format!("data: {e}")))
    }

    /// Check the batch: non-empty, every entry finite, inputs of equal length (returned),
    /// targets (when present) one per input. Target lengths are checked against the output
    /// by the caller.
    pub(crate) fn check(&self) -> Result<usize, Error> {
        let first = self
            .inputs
            .first()
            .ok_or_else(|| err("data.inputs is empty (at least one sample is needed)"))?;
        let k = first.len();
        for (s, x) in self.inputs.iter().enumerate() {
            if x.is_empty() {
                return Err(err(format!("data.inputs[{s}] is empty")));
            }
            if x.len() != k {
                return Err(err(format!(
                    "data.inputs[{s}] has length {}, data.inputs[0] has length {k}",
                    x.len()
                )));
            }
            if let Some(j) = x.iter().position(|v| !v.is_finite()) {
                return Err(err(format!("data.inputs[{s}][{j}] is NaN or infinite")));
            }
        }
        if let Some(t) = &self.targets {
            if t.len() != self.inputs.len() {
                return Err(err(format!(
                    "data has {} inputs but {} targets",
                    self.inputs.len(),
                    t.len()
                )));
            }
            for (s, y) in t.iter().enumerate() {
                if let Some(j) = y.iter().position(|v| !v.is_finite()) {
                    return Err(err(format!("data.targets[{s}][{j}] is NaN or infinite")));
                }
            }
        }
        Ok(k)
    }

    /// Check the targets against a loss and the output length `m`.
    pub(crate) fn check_targets(&self, loss: Loss, m: usize) -> Result<(), Error> {
        if loss == Loss::None {
            if m != 1 {
                return Err(err(format!(
                    "loss none needs a scalar output per sample, the network output has length {m}"
                )));
            }
            return Ok(());
        }
        let t = self.targets.as_ref().ok_or_else(|| {
            err(format!(
                "loss {} needs targets, but the data have none",
                loss.name()
            ))
        })?;
        for (s, y) in t.iter().enumerate() {
            if y.len() != m {
                return Err(err(format!(
                    "data.targets[{s}] has length {}, the network output has length {m}",
                    y.len()
                )));
            }
            match loss {
                Loss::Hinge => {
                    if let Some(j) = y.iter().position(|&v| v != 1.0 && v != -1.0) {
                        return Err(err(format!(
                            "data.targets[{s}][{j}] is {}; hinge targets must be -1 or +1",
                            y[j]
                        )));
                    }
                }
                Loss::CrossEntropy => {
                    if let Some(j) = y.iter().position(|&v| v < 0.0) {
                        return Err(err(format!(
                            "data.targets[{s}][{j}] is {}; cross_entropy targets must be \
                             non-negative (one-hot or probabilities)",
                            y[j]
                        )));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A network description (CONTRACT §4): layers, an optional loss, optional data, and what to
/// differentiate with respect to (default `params`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub layers: Vec<Layer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Loss>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrt: Option<Wrt>,
}

/// Shape information of a dense layer once checked: (rows r, columns k).
fn dense_shape(l: usize, weights: &[Vec<f64>], bias: &[f64]) -> Result<(usize, usize), Error> {
    let r = weights.len();
    let k = weights.first().map_or(0, Vec::len);
    if r == 0 || k == 0 {
        return Err(err(format!("layer {l} (dense): weights are empty")));
    }
    for (i, row) in weights.iter().enumerate() {
        if row.len() != k {
            return Err(err(format!(
                "layer {l} (dense): weights row {i} has {} entries, row 0 has {k}",
                row.len()
            )));
        }
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return Err(err(format!(
                "layer {l} (dense): weights[{i}][{j}] is NaN or infinite"
            )));
        }
    }
    if bias.len() != r {
        return Err(err(format!(
            "layer {l} (dense): bias has {} entries, weights have {r} rows",
            bias.len()
        )));
    }
    if let Some(i) = bias.iter().position(|v| !v.is_finite()) {
        return Err(err(format!(
            "layer {l} (dense): bias[{i}] is NaN or infinite"
        )));
    }
    Ok((r, k))
}

/// Number of windows of a max-pool of `size`/`stride` over `len` (PyTorch's floor rule).
fn pool_windows(l: usize, len: usize, size: usize, stride: Option<usize>) -> Result<usize, Error> {
    let stride = stride.unwrap_or(size);
    if size == 0 {
        return Err(err(format!(
            "layer {l} (maxpool1d): size must be at least 1"
        )));
    }
    if stride == 0 {
        return Err(err(format!(
            "layer {l} (maxpool1d): stride must be at least 1"
        )));
    }
    if size > len {
        return Err(err(format!(
            "layer {l} (maxpool1d): size {size} is larger than the input length {len}"
        )));
    }
    Ok((len - size) / stride + 1)
}

impl Network {
    /// Parse a description. Errors are one line and name the place (`layer 2: unknown variant
    /// `conv` ...`, `layer 0 (dense): bias has 2 entries, weights have 3 rows`). Layers are
    /// numbered from 0, as in the `layers` list.
    pub fn from_json(text: &str) -> Result<Network, Error> {
        let v: Value = serde_json::from_str(text).map_err(|e| err(format!("network: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| err("network: expected a JSON object with \"layers\""))?;
        for key in obj.keys() {
            if !["layers", "loss", "data", "wrt"].contains(&key.as_str()) {
                return Err(err(format!(
                    "network: unknown field `{key}`, expected one of `layers`, `loss`, `data`, `wrt`"
                )));
            }
        }
        let layers_v = obj
            .get("layers")
            .ok_or_else(|| err("network: missing field `layers`"))?
            .as_array()
            .ok_or_else(|| err("network: `layers` must be an array"))?;
        let mut layers = Vec::with_capacity(layers_v.len());
        for (l, lv) in layers_v.iter().enumerate() {
            let layer: Layer = serde_json::from_value(lv.clone()).map_err(|e| {
                let kind = lv.get("type").and_then(Value::as_str);
                match kind {
                    Some(k) => err(format!("layer {l} ({k}): {e}")),
                    None => err(format!("layer {l}: {e}")),
                }
            })?;
            layers.push(layer);
        }
        let field = |name: &str| obj.get(name).filter(|v| !v.is_null()).cloned();
        let loss = field("loss")
            .map(serde_json::from_value::<Loss>)
            .transpose()
            .map_err(|e| err(format!("loss: {e}")))?;
        let wrt = field("wrt")
            .map(serde_json::from_value::<Wrt>)
            .transpose()
            .map_err(|e| err(format!("wrt: {e}")))?;
        let data = field("data")
            .map(serde_json::from_value::<Data>)
            .transpose()
            .map_err(|e| err(format!("data: {e}")))?;
        let net = Network {
            layers,
            loss,
            data,
            wrt,
        };
        net.check_layers()?;
        Ok(net)
    }

    /// Checks that do not depend on the data.
    fn check_layers(&self) -> Result<(), Error> {
        if self.layers.is_empty() {
            return Err(err("network: `layers` is empty"));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            match layer {
                Layer::Dense { weights, bias } => {
                    dense_shape(l, weights, bias)?;
                }
                Layer::LeakyRelu { slope } if !slope.is_finite() => {
                    return Err(err(format!(
                        "layer {l} (leaky_relu): slope is NaN or infinite"
                    )));
                }
                Layer::Maxpool1d { size, stride } => {
                    if *size == 0 {
                        return Err(err(format!(
                            "layer {l} (maxpool1d): size must be at least 1"
                        )));
                    }
                    if *stride == Some(0) {
                        return Err(err(format!(
                            "layer {l} (maxpool1d): stride must be at least 1"
                        )));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The output length for inputs of length `k`, checking every layer's shape.
    pub fn output_len(&self, k: usize) -> Result<usize, Error> {
        self.check_layers()?;
        let mut len = k;
        for (l, layer) in self.layers.iter().enumerate() {
            match layer {
                Layer::Dense { weights, bias } => {
                    let (r, cols) = dense_shape(l, weights, bias)?;
                    if cols != len {
                        return Err(err(format!(
                            "layer {l} (dense): weights have {cols} columns but the input has length {len}"
                        )));
                    }
                    len = r;
                }
                Layer::Maxpool1d { size, stride } => {
                    len = pool_windows(l, len, *size, *stride)?;
                }
                _ => {}
            }
        }
        Ok(len)
    }

    /// The number of parameters (all weights and biases).
    pub fn n_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                Layer::Dense { weights, bias } => {
                    weights.iter().map(Vec::len).sum::<usize>() + bias.len()
                }
                _ => 0,
            })
            .sum()
    }

    /// The parameters in variable order `[W1 (row-major), b1, W2, b2, …]`.
    pub fn params(&self) -> Vec<f64> {
        let mut p = Vec::with_capacity(self.n_params());
        for l in &self.layers {
            if let Layer::Dense { weights, bias } = l {
                for row in weights {
                    p.extend_from_slice(row);
                }
                p.extend_from_slice(bias);
            }
        }
        p
    }

    /// The names of the parameters, in variable order: `W1[i,j]`, `b1[i]`, `W2[i,j]`, …
    pub fn param_names(&self) -> VarNames {
        let mut names = VarNames::default();
        let mut d = 0;
        for l in &self.layers {
            if let Layer::Dense { weights, bias } = l {
                d += 1;
                let k = weights.first().map_or(0, Vec::len);
                names.push_tensor(format!("W{d}"), &[weights.len(), k]);
                names.push_tensor(format!("b{d}"), &[bias.len()]);
            }
        }
        names
    }

    /// Lower the network, loss and data into one scalar objective (see the module docs).
    ///
    /// `data`, `wrt` and `loss` override the description's `data`, `wrt` and `loss` (the
    /// command line's `--data`, `--wrt`, `--loss`). Without a loss anywhere, the loss is `mse`
    /// when the data have targets and `none` otherwise; `wrt` defaults to `params`.
    ///
    /// ```
    /// use kinkcheck::frontend::network::{Network, Wrt};
    /// use kinkcheck::{eval, Convention};
    /// // THEORY §8, E12: one relu neuron at zero input, mse loss, gradient w.r.t. the weights.
    /// let net = Network::from_json(r#"{
    ///     "layers": [{"type": "dense", "weights": [[1]], "bias": [0]}, {"type": "relu"},
    ///                {"type": "dense", "weights": [[1]], "bias": [0]}],
    ///     "loss": "mse",
    ///     "data": {"inputs": [[0]], "targets": [[1]]}
    /// }"#).unwrap();
    /// let p = net.problem(None, None, None).unwrap();
    /// assert_eq!(p.var_names, ["W1[0,0]", "b1[0]", "W2[0,0]", "b2[0]"]);
    /// let x = p.point.clone().unwrap();
    /// let ev = eval::evaluate(&p.graph, &x).unwrap();
    /// let states = eval::switch_states(&p.graph, &ev, eval::TAU_ACT);
    /// let g = eval::ad(&p.graph, &ev, &states, &Convention::pytorch()).unwrap();
    /// assert_eq!(g, [0.0, 0.0, 0.0, -1.0]);
    /// // The same network with the inputs as variables:
    /// let p = net.problem(None, Some(Wrt::Inputs), None).unwrap();
    /// assert_eq!(p.var_names, ["x[0][0]"]);
    /// ```
    pub fn problem(
        &self,
        data: Option<&Data>,
        wrt: Option<Wrt>,
        loss: Option<Loss>,
    ) -> Result<Problem, Error> {
        let data = data
            .or(self.data.as_ref())
            .ok_or_else(|| err("no data: give \"data\" in the description or a --data file"))?;
        let wrt = wrt.or(self.wrt).unwrap_or(Wrt::Params);
        let loss = loss.or(self.loss).unwrap_or(if data.targets.is_some() {
            Loss::Mse
        } else {
            Loss::None
        });
        let k0 = data.check()?;
        let m = self.output_len(k0)?;
        data.check_targets(loss, m)?;
        let n_samples = data.inputs.len();

        let (n_vars, var_names, point) = match wrt {
            Wrt::Params => {
                let n = self.n_params();
                if n == 0 {
                    return Err(err(
                        "wrt params, but the network has no dense layers (no parameters)",
                    ));
                }
                (n, self.param_names(), self.params())
            }
            Wrt::Inputs => {
                let mut names = VarNames::default();
                for s in 0..n_samples {
                    names.push_tensor(format!("x[{s}]"), &[k0]);
                }
                (n_samples * k0, names, data.inputs.concat())
            }
        };
        let mut g = Graph::new(n_vars);

        // Weight and bias nodes of each dense layer, shared by all samples.
        let mut dense: Vec<Option<(NodeId, NodeId, usize)>> = Vec::with_capacity(self.layers.len());
        let mut offset = 0;
        for (l, layer) in self.layers.iter().enumerate() {
            g.set_origin(Origin::Layer {
                sample: 0,
                layer: l,
                kind: layer.kind().to_string(),
            });
            dense.push(match layer {
                Layer::Dense { weights, bias } => {
                    let (r, k) = (weights.len(), weights[0].len());
                    let (w, b) = match wrt {
                        Wrt::Params => {
                            let w = g.var(offset, r * k)?;
                            let b = g.var(offset + r * k, r)?;
                            offset += r * k + r;
                            (w, b)
                        }
                        Wrt::Inputs => {
                            let w = g.constant(weights.concat())?;
                            let b = g.constant(bias.clone())?;
                            (w, b)
                        }
                    };
                    Some((w, b, r))
                }
                _ => None,
            });
        }

        let mut losses = Vec::with_capacity(n_samples);
        for (s, input) in data.inputs.iter().enumerate() {
            let mut h = match wrt {
                Wrt::Params => g.constant(input.clone())?,
                Wrt::Inputs => g.var(s * k0, k0)?,
            };
            for (l, layer) in self.layers.iter().enumerate() {
                let origin = Origin::Layer {
                    sample: s,
                    layer: l,
                    kind: layer.kind().to_string(),
                };
                g.set_origin(origin.clone());
                h = match layer {
                    Layer::Dense { .. } => {
                        let (w, b, r) = dense[l].ok_or_else(|| err("internal: dense layer"))?;
                        let wx = g.matvec(w, h, r)?;
                        g.add(wx, b)?
                    }
                    Layer::Relu => lower::relu(&mut g, h, origin)?,
                    Layer::LeakyRelu { slope } => lower::leaky_relu(&mut g, h, *slope, origin)?,
                    Layer::Hardtanh => lower::hardtanh(&mut g, h, origin)?,
                    Layer::Relu6 => lower::relu6(&mut g, h, origin)?,
                    Layer::Hardsigmoid => lower::hardsigmoid(&mut g, h, origin)?,
                    Layer::Abs => lower::abs(&mut g, h, origin),
                    Layer::Tanh => g.unary(Smooth::Tanh, h),
                    Layer::Sigmoid => g.unary(Smooth::Sigmoid, h),
                    Layer::Maxpool1d { size, stride } => {
                        let len = g.len(h);
                        let n = pool_windows(l, len, *size, *stride)?;
                        let st = stride.unwrap_or(*size);
                        let windows: Vec<Vec<usize>> =
                            (0..n).map(|o| (o * st..o * st + size).collect()).collect();
                        lower::maxpool(&mut g, h, &windows, origin)?
                    }
                };
            }
            let target = data.targets.as_ref().map(|t| t[s].as_slice());
            losses.push(sample_loss(&mut g, s, h, target, loss)?);
        }
        objective(g, losses, var_names, point)
    }
}

/// The objective of CONTRACT §4: the sum of the per-sample losses, as a [`Problem`] carrying
/// its point.
pub(crate) fn objective(
    mut g: Graph,
    losses: Vec<NodeId>,
    var_names: VarNames,
    point: Vec<f64>,
) -> Result<Problem, Error> {
    g.set_origin(Origin::Internal);
    let all = g.concat(losses)?;
    let total = g.sum(all);
    g.set_output(total)?;
    Ok(Problem {
        graph: g,
        var_names,
        point: Some(point),
    })
}

/// The loss of one sample with output node `out` (checked against the target beforehand by
/// [`Data::check_targets`]). Shared with the ONNX front end.
pub(crate) fn sample_loss(
    g: &mut Graph,
    sample: usize,
    out: NodeId,
    target: Option<&[f64]>,
    loss: Loss,
) -> Result<NodeId, Error> {
    let origin = Origin::Loss {
        sample,
        kind: loss.name().to_string(),
    };
    g.set_origin(origin.clone());
    let target = || {
        target.ok_or_else(|| {
            err(format!(
                "loss {} needs targets, but the data have none",
                loss.name()
            ))
        })
    };
    Ok(match loss {
        Loss::None => g.sum(out),
        Loss::Mse => {
            let y = g.constant(target()?.to_vec())?;
            let r = g.sub(out, y)?;
            let sq = g.powi(r, 2);
            let s = g.sum(sq);
            g.scale(0.5, s)?
        }
        Loss::L1 => {
            let y = g.constant(target()?.to_vec())?;
            let r = g.sub(out, y)?;
            let a = lower::abs(g, r, origin);
            g.sum(a)
        }
        Loss::Hinge => {
            let y = g.constant(target()?.to_vec())?;
            let one = g.scalar(1.0)?;
            let yo = g.mul(y, out)?;
            let margin = g.sub(one, yo)?;
            let h = lower::relu(g, margin, origin)?;
            g.sum(h)
        }
        Loss::CrossEntropy => {
            let t = target()?;
            let total: f64 = t.iter().sum();
            let y = g.constant(t.to_vec())?;
            let lse = g.logsumexp(out);
            let a = g.scale(total, lse)?;
            let yo = g.mul(y, out)?;
            let b = g.sum(yo);
            g.sub(a, b)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<Network, Error>) -> String {
        let m = r.expect_err("expected an error").to_string();
        assert!(!m.contains('\n'), "multi-line: {m}");
        m
    }

    #[test]
    fn parse_errors_name_the_place() {
        let m = msg(Network::from_json(
            r#"{"layers":[{"type":"relu"},{"type":"conv"}]}"#,
        ));
        assert!(
            m.starts_with("layer 1 (conv): unknown variant `conv`"),
            "{m}"
        );
        let m = msg(Network::from_json(
            r#"{"layers":[{"type":"dense","weights":[[1,2],[3]],"bias":[0,0]}]}"#,
        ));
        assert_eq!(
            m,
            "layer 0 (dense): weights row 1 has 1 entries, row 0 has 2"
        );
        let m = msg(Network::from_json(
            r#"{"layers":[{"type":"dense","weights":[[1,2]],"bias":[0,0]}]}"#,
        ));
        assert_eq!(
            m,
            "layer 0 (dense): bias has 2 entries, weights have 1 rows"
        );
        let m = msg(Network::from_json(
            r#"{"layers":[{"type":"leaky_relu","slop":0.1}]}"#,
        ));
        assert!(m.contains("unknown field `slop`"), "{m}");
        let m = msg(Network::from_json(
            r#"{"layers":[{"type":"relu"}],"loss":"foo"}"#,
        ));
        assert!(m.starts_with("loss: unknown variant `foo`"), "{m}");
        let m = msg(Network::from_json(r#"{"layers":[],"loss":"mse"}"#));
        assert_eq!(m, "network: `layers` is empty");
        let m = msg(Network::from_json(r#"{"layers":[{"type":"relu"}],"x":1}"#));
        assert!(m.contains("unknown field `x`"), "{m}");
        let m = msg(Network::from_json(
            r#"{"layers":[{"type":"maxpool1d","size":0}]}"#,
        ));
        assert_eq!(m, "layer 0 (maxpool1d): size must be at least 1");
        let m = msg(Network::from_json(
            r#"{"layers":[{"type":"dense","weights":[[1e400]],"bias":[0]}]}"#,
        ));
        assert!(m.starts_with("network: "), "{m}");
        let m = msg(Network::from_json(
            r#"{"layers":[{"type":"dense","weights":[[NaN]],"bias":[0]}]}"#,
        ));
        assert!(m.starts_with("network: "), "{m}");
        let m = msg(Network::from_json(
            r#"{"layers":[{"type":"dense","weights":[[1]]}]}"#,
        ));
        assert!(m.contains("missing field `bias`"), "{m}");
    }

    #[test]
    fn data_flattens_nested_samples() {
        let d = Data::from_json(r#"{"inputs":[[[1,2],[3,4]], 5],"targets":[1,[2]]}"#).unwrap();
        assert_eq!(d.inputs, vec![vec![1.0, 2.0, 3.0, 4.0], vec![5.0]]);
        assert_eq!(d.targets, Some(vec![vec![1.0], vec![2.0]]));
        let e = Data::from_json(r#"{"inputs":[[[1,2],[3]]]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.inputs[0]: ragged nested array"), "{e}");
        let e = Data::from_json(r#"{"inputs":[[1,null]]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.inputs[0]: null"), "{e}");
    }

    #[test]
    fn maxpool_floor_rule() {
        assert_eq!(pool_windows(0, 5, 2, None).unwrap(), 2);
        assert_eq!(pool_windows(0, 5, 3, Some(1)).unwrap(), 3);
        assert!(pool_windows(0, 2, 3, None).is_err());
    }
}
