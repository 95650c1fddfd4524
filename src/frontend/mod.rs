//! Front ends: the `.kc` program language ([`kc`] parses, [`program`] lowers), network
//! descriptions ([`network`], `.json`) and ONNX models ([`onnx_proto`] decodes, [`onnx`]
//! lowers). Each produces a [`Problem`]: an evaluation graph
//! with named variables and, for networks, the point carried by the description.

pub mod kc;
pub mod network;
pub mod onnx;
pub mod onnx_proto;
pub mod program;

pub use program::compile;

use crate::graph::Graph;

/// A scalar objective ready for checking: its graph, the names of its variables (in the
/// order of the gradient), and the point the source carries, if any (network weights).
#[derive(Debug, Clone)]
pub struct Problem {
    pub graph: Graph,
    pub var_names: Vec<String>,
    pub point: Option<Vec<f64>>,
}
