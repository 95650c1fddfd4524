//! The crate's error type: every failure a user can cause is one of these, with a one-line
//! message naming the place (`line:col`, layer, ONNX node). The CLI prints it and exits 2.

use thiserror::Error;

/// Any input or usage error.
#[derive(Debug, Error)]
pub enum Error {
    /// A `.kc` program failed to parse.
    #[error("{0}")]
    Parse(#[from] crate::frontend::kc::ParseError),
    /// A program or network could not be built (shapes, bounds).
    #[error("{0}")]
    Graph(#[from] crate::graph::GraphError),
    /// The program cannot be evaluated at the point.
    #[error("{0}")]
    Eval(#[from] crate::eval::EvalError),
    /// A convention name is not understood.
    #[error("{0}")]
    Convention(#[from] crate::convention::ConventionError),
    /// A network description, its data, or an ONNX model cannot be lowered into an objective
    /// (the message names the layer, data entry or ONNX node).
    #[error("{0}")]
    Network(String),
    /// An ONNX file cannot be decoded.
    #[error("{0}")]
    Onnx(#[from] crate::frontend::onnx_proto::OnnxError),
    /// Anything else about the input (files, JSON, options), with its message.
    #[error("{0}")]
    Input(String),
}

impl Error {
    /// An input error with a message.
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
}
