//! # kinkcheck
//!
//! Is the gradient that backward-mode AD returned at this point a true Clarke generalized
//! gradient? kinkcheck lowers a program or network into smooth operations plus absolute values
//! ([`graph`], [`lower`]), evaluates it and runs AD under a framework convention ([`eval`],
//! [`convention`]), builds the abs-normal form ([`anf`]), tries the algebraic sufficient
//! conditions ([`analyze`]) and decides membership in the Clarke subdifferential with linear
//! programs ([`pieces`]), returning a certificate. The mathematics is in `THEORY.md`.
//!
//! ```
//! use kinkcheck::{verify, Convention, VerifyOptions};
//! let problem = kinkcheck::compile("vars x; f = relu(x) - relu(-x)").unwrap();
//! let report = verify(&problem, &[0.0], &VerifyOptions::new(Convention::pytorch())).unwrap();
//! assert_eq!(report.gradient, vec![0.0]); // what PyTorch returns: not the true slope 1
//! ```

// Index loops mirror the matrix formulas of THEORY.md; iterator chains would hide them.
#![allow(clippy::needless_range_loop)]

pub mod analyze;
pub mod anf;
pub mod audit;
pub mod convention;
pub mod error;
pub mod eval;
pub mod flat;
pub mod frontend;
pub mod graph;
pub mod lower;
pub mod lp;
pub mod par;
pub mod pieces;
pub mod reduced;
pub mod report;
pub mod tensor;
#[cfg(test)]
mod test_support;

pub use convention::Convention;
pub use error::Error;
pub use frontend::{compile, Problem};
pub use report::{verify, Report, VerifyOptions};
