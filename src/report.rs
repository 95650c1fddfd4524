//! The report of `verify`: the checked vector, the active switches, and (as the later stages
//! produce them) the analyzer's outcome, the pieces and the verdict with its certificate
//! (CONTRACT.md §3). [`verify`] runs the pipeline of THEORY.md §1 on a [`Problem`].

use crate::analyze::{self, Analysis, AnalyzeOptions};
use crate::anf::{ActiveData, Structure};
use crate::convention::Convention;
use crate::error::Error;
use crate::eval::{self, Activity, SwitchState};
use crate::frontend::Problem;
use crate::graph::{Graph, SwitchId};
use crate::reduced::ReducedSpace;
use serde::Serialize;
use std::fmt::Write as _;

/// Options of [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The convention that decides which vector AD returns.
    pub convention: Convention,
    /// Check this vector instead of the convention's AD vector.
    pub gradient: Option<Vec<f64>>,
    /// Relative width of the near-active band, τ_act (THEORY §6.6).
    pub tau_act: f64,
}

impl VerifyOptions {
    /// Defaults for a convention.
    pub fn new(convention: Convention) -> Self {
        VerifyOptions {
            convention,
            gradient: None,
            tau_act: eval::TAU_ACT,
        }
    }
}

/// One active (or near-active) switch as reported.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActiveSwitch {
    /// Switch index in evaluation order.
    pub switch: usize,
    /// The kink operation it was lowered from.
    pub op: String,
    /// Its role in that op (`"relu"`, `"clamp.lo"`, …).
    pub role: String,
    /// z(x̂).
    pub z: f64,
    /// Where it comes from (`"line 2:5"`, `"sample 0, layer 1 (relu), unit 3"`).
    #[serde(rename = "where")]
    pub place: String,
    /// `"active"` (z = 0 exactly), `"near"` (inside the tolerance band) or `"degenerate"`
    /// (active, but ż ≡ 0 on every piece, so it is dropped from α).
    pub status: String,
    /// The derivative σ̃ that AD used at |z| (absent with `--gradient`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
}

/// The verdict (exit status 0, 1, 3).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    In,
    Out,
    Undecided,
}

/// The result of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The verdict, once the checker has computed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The vector that was checked, in the source's variable order.
    pub gradient: Vec<f64>,
    /// The convention's name, or `"explicit"` with `--gradient`.
    pub convention: String,
    /// The active and near-active switches.
    pub active: Vec<ActiveSwitch>,
    /// Variable names, in order.
    #[serde(skip)]
    pub var_names: Vec<String>,
    /// The value f(x̂).
    pub value: f64,
    /// Number of switches s and of variables n.
    pub switches: usize,
    pub variables: usize,
    /// The analyzer's outcome (THEORY §5).
    pub analyzer: Analysis,
}

/// Run the pipeline on `problem` at `point`.
pub fn verify(problem: &Problem, point: &[f64], opts: &VerifyOptions) -> Result<Report, Error> {
    let g = &problem.graph;
    let ev = eval::evaluate(g, point)?;
    let states = eval::switch_states(g, &ev, opts.tau_act);
    let gradient = match &opts.gradient {
        Some(v) => {
            if v.len() != g.n_vars() {
                return Err(Error::input(format!(
                    "--gradient has {} entries, the problem has {} variables",
                    v.len(),
                    g.n_vars()
                )));
            }
            if v.iter().any(|c| !c.is_finite()) {
                return Err(Error::input("--gradient contains NaN or infinity"));
            }
            v.clone()
        }
        None => eval::ad(g, &ev, &states, &opts.convention)?,
    };
    let exact: Vec<SwitchId> = states
        .iter()
        .filter(|s| s.activity == Activity::Active)
        .map(|s| s.id)
        .collect();
    let z: Vec<f64> = states.iter().map(|s| s.z).collect();
    let data = ActiveData::compute(g, &ev, &z, &exact)?;
    let structure = Structure::compute(g, &data.active);
    let space = ReducedSpace::new(&data);
    let sigma_alpha: Option<Vec<f64>> = opts.gradient.is_none().then(|| {
        structure
            .roles
            .iter()
            .map(|&r| opts.convention.sigma_tilde(r))
            .collect()
    });
    let analysis = analyze::analyze(
        &data,
        &space,
        &structure,
        sigma_alpha.as_deref(),
        &AnalyzeOptions::default(),
    );
    let sigma = |s: &SwitchState| {
        opts.gradient.is_none().then(|| {
            if s.z == 0.0 {
                opts.convention.sigma_tilde(s.role)
            } else {
                s.z.signum()
            }
        })
    };
    let active = states
        .iter()
        .filter(|s| s.activity != Activity::Inactive)
        .map(|s| {
            let status = match s.activity {
                Activity::Near => "near",
                _ if data.degenerate.contains(&s.id) => "degenerate",
                _ => "active",
            };
            describe_switch(g, s, status, sigma(s))
        })
        .collect();
    Ok(Report {
        verdict: None,
        gradient,
        convention: if opts.gradient.is_some() {
            "explicit".into()
        } else {
            opts.convention.name().to_string()
        },
        active,
        var_names: problem.var_names.clone(),
        value: ev.output(g)?,
        switches: g.n_switches(),
        variables: g.n_vars(),
        analyzer: analysis,
    })
}

fn describe_switch(g: &Graph, s: &SwitchState, status: &str, sigma: Option<f64>) -> ActiveSwitch {
    let (k, e) = g.switch_location(s.id);
    let an = &g.abs_nodes()[k];
    ActiveSwitch {
        switch: s.id.0,
        op: an.role.op_name().to_string(),
        role: an.role.name().to_string(),
        z: s.z,
        place: an.origin.describe(e, g.len(an.node)),
        status: status.to_string(),
        sigma,
    }
}

fn fmt_vec(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|c| format!("{c}")).collect();
    format!("[{}]", parts.join(", "))
}

impl Report {
    /// The human-readable report.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "f(x̂) = {}   ({} variables, {} switches)",
            self.value, self.variables, self.switches
        );
        let _ = writeln!(
            s,
            "gradient ({}): {}",
            self.convention,
            fmt_vec(&self.gradient)
        );
        if self.active.is_empty() {
            let _ = writeln!(s, "no switch is at a kink: f is smooth here");
        } else {
            let _ = writeln!(s, "switches at a kink:");
            for a in &self.active {
                let sig = a
                    .sigma
                    .map(|v| format!(", AD used σ̃ = {v}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  #{:<3} {:<12} z = {:<10} {} ({}{})",
                    a.switch, a.role, a.z, a.place, a.status, sig
                );
            }
        }
        let _ = writeln!(
            s,
            "analyzer: {}",
            if self.analyzer.guaranteed {
                format!("guaranteed ({})", self.analyzer.reason)
            } else {
                format!("not guaranteed ({})", self.analyzer.reason)
            }
        );
        if self.verdict.is_none() {
            let _ = writeln!(s, "verdict: not computed");
        }
        s
    }
}
