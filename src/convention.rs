//! Framework conventions: the derivative σ̃ᵢ ∈ [−1, 1] that backward-mode AD uses at an `abs`
//! node sitting exactly on its kink (THEORY.md §3, table "Conventions").
//!
//! Frameworks do not lower kinks to `abs`, but for every op the framework's rule at the kink
//! equals the derivative of the lowered form for one σ̃ per switch *role*; e.g. PyTorch's
//! relu′(0) = 0 is σ̃ = −1 on the relu switch, since d/du (u + |u|)/2 = (1 + σ̃)/2.
//! Every value stays configurable per role through [`Convention::with_rule`].

use crate::graph::Role;
use std::fmt;
use thiserror::Error;

/// A named map role ↦ σ̃ ∈ [−1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Convention {
    name: String,
    sigma: [f64; Role::ALL.len()],
}

/// A convention name that is not understood.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("unknown convention '{0}' (expected pytorch, jax, tensorflow or sigma=S with S in [-1,1])")]
pub struct ConventionError(pub String);

impl Convention {
    fn from_table(name: &str, table: [(Role, f64); 14]) -> Self {
        let mut sigma = [0.0; Role::ALL.len()];
        for (r, v) in table {
            sigma[r.index()] = v;
        }
        Convention {
            name: name.to_string(),
            sigma,
        }
    }

    /// PyTorch (ATen kernels, derivatives.yaml): abs′(0) = 0, relu′(0) = 0, max/min ties ½ each,
    /// clamp passes the gradient at both bounds, hardtanh/relu6/hardsigmoid give 0 at their
    /// kinks, leaky_relu′(0) = slope, max-pool gives a tie to the first index.
    pub fn pytorch() -> Self {
        use Role::*;
        Self::from_table(
            "pytorch",
            [
                (Abs, 0.0),
                (Relu, -1.0),
                (Max, 0.0),
                (Min, 0.0),
                (ClampLo, 1.0),
                (ClampHi, -1.0),
                (HardtanhLo, -1.0),
                (HardtanhHi, 1.0),
                (Relu6Lo, -1.0),
                (Relu6Hi, 1.0),
                (LeakyRelu, -1.0),
                (HardsigmoidLo, -1.0),
                (HardsigmoidHi, 1.0),
                (MaxPool, 1.0),
            ],
        )
    }

    /// JAX: abs′(0) = +1, relu′(0) = 0 (custom rule), max/min ties ½, clamp ½ at the bounds,
    /// hardtanh 1 at ±1, leaky_relu′(0) = 1.
    pub fn jax() -> Self {
        use Role::*;
        Self::from_table(
            "jax",
            [
                (Abs, 1.0),
                (Relu, -1.0),
                (Max, 0.0),
                (Min, 0.0),
                (ClampLo, 0.0),
                (ClampHi, 0.0),
                (HardtanhLo, 1.0),
                (HardtanhHi, -1.0),
                (Relu6Lo, -1.0),
                (Relu6Hi, 1.0),
                (LeakyRelu, 1.0),
                (HardsigmoidLo, -1.0),
                (HardsigmoidHi, 1.0),
                (MaxPool, 1.0),
            ],
        )
    }

    /// TensorFlow: abs′(0) = 0, relu′(0) = 0, max/min ties go to the first argument,
    /// `clip_by_value` passes the gradient at both bounds.
    pub fn tensorflow() -> Self {
        use Role::*;
        Self::from_table(
            "tensorflow",
            [
                (Abs, 0.0),
                (Relu, -1.0),
                (Max, 1.0),
                (Min, -1.0),
                (ClampLo, 1.0),
                (ClampHi, -1.0),
                (HardtanhLo, 1.0),
                (HardtanhHi, -1.0),
                (Relu6Lo, -1.0),
                (Relu6Hi, 1.0),
                (LeakyRelu, -1.0),
                (HardsigmoidLo, -1.0),
                (HardsigmoidHi, 1.0),
                (MaxPool, 1.0),
            ],
        )
    }

    /// `sigma=S`: every `abs` at an exact kink uses derivative S, whatever op it came from.
    pub fn sigma(s: f64) -> Result<Self, ConventionError> {
        if !(-1.0..=1.0).contains(&s) {
            return Err(ConventionError(format!("sigma={s}")));
        }
        Ok(Convention {
            name: format!("sigma={s}"),
            sigma: [s; Role::ALL.len()],
        })
    }

    /// Parse `pytorch`, `jax`, `tensorflow` or `sigma=S`.
    pub fn parse(name: &str) -> Result<Self, ConventionError> {
        let n = name.trim();
        match n.to_ascii_lowercase().as_str() {
            "pytorch" | "torch" => Ok(Self::pytorch()),
            "jax" => Ok(Self::jax()),
            "tensorflow" | "tf" => Ok(Self::tensorflow()),
            other => {
                let s = other
                    .strip_prefix("sigma=")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| ConventionError(name.to_string()))?;
                Self::sigma(s).map_err(|_| ConventionError(name.to_string()))
            }
        }
    }

    /// The convention's name (`"pytorch"`, `"sigma=0"`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// σ̃ for a switch of this role at an exact kink.
    pub fn sigma_tilde(&self, role: Role) -> f64 {
        self.sigma[role.index()]
    }

    /// abs′ that AD uses at a switch of this role with argument `z`: sign(z) off the kink
    /// (inside the near-active band too, as a framework's float comparison does), σ̃ at an
    /// exact zero.
    pub fn abs_derivative(&self, role: Role, z: f64) -> f64 {
        if z == 0.0 {
            self.sigma_tilde(role)
        } else {
            z.signum()
        }
    }

    /// The same convention with σ̃ = `value` for one role (clamped to [−1, 1]).
    pub fn with_rule(mut self, role: Role, value: f64) -> Self {
        self.sigma[role.index()] = value.clamp(-1.0, 1.0);
        self.name = format!("{}+{}={}", self.name, role.name(), value);
        self
    }
}

impl Default for Convention {
    fn default() -> Self {
        Self::pytorch()
    }
}

impl fmt::Display for Convention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        assert_eq!(Convention::parse("pytorch").unwrap().name(), "pytorch");
        assert_eq!(
            Convention::parse("sigma=0.5")
                .unwrap()
                .sigma_tilde(Role::Relu),
            0.5
        );
        assert!(Convention::parse("sigma=2").is_err());
        assert!(Convention::parse("sigma=nan").is_err());
        assert!(Convention::parse("mxnet").is_err());
    }

    #[test]
    fn table_matches_theory_derivatives() {
        // relu′(0) = (1+σ̃)/2 = 0 for all three frameworks.
        for c in [
            Convention::pytorch(),
            Convention::jax(),
            Convention::tensorflow(),
        ] {
            assert_eq!((1.0 + c.sigma_tilde(Role::Relu)) / 2.0, 0.0);
        }
        // tensorflow: max tie all to a: ∂/∂a = (1+σ̃)/2 = 1.
        assert_eq!(Convention::tensorflow().sigma_tilde(Role::Max), 1.0);
        // pytorch hardtanh 0 at both kinks: ∂/∂x = (σ̃1 − σ̃2)/2 with the other switch inactive.
        let p = Convention::pytorch();
        assert_eq!((p.sigma_tilde(Role::HardtanhLo) - (-1.0)) / 2.0, 0.0);
        assert_eq!((1.0 - p.sigma_tilde(Role::HardtanhHi)) / 2.0, 0.0);
        let c = Convention::pytorch().with_rule(Role::Relu, 1.0);
        assert_eq!(c.sigma_tilde(Role::Relu), 1.0);
    }
}
