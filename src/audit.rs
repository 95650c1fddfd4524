//! Auditing a training run: how often did the framework's gradient sit on an exact kink, and
//! was it a Clarke gradient each time? (issue 12)
//!
//! A run is a file of JSON lines ([`AuditStep`]), one per audited training step, written by the
//! Python package's `kinkcheck.torch.Audit.save` (or by hand). Each line carries the model at
//! that step (an ONNX model in base64 or a network description, CONTRACT §4), the batch, the
//! loss, `wrt`, the convention, and optionally the vector the framework's backward pass really
//! returned. [`run_step`] verifies one line (the pipeline of THEORY.md §1 through
//! [`crate::verify`]) and keeps a [`StepRecord`]: the exact kink hits (switches with z = 0
//! exactly, by kink operation), the verdict on the framework's gradient, the analyzer's outcome
//! and the time taken. [`Summary`] aggregates the records into the table the CLI
//! (`kinkcheck audit RUN.jsonl`) and the Python `Audit.summary()` print.
//!
//! # Which vector is checked
//!
//! The convention's AD vector (THEORY §3) is computed and checked. When the line also gives the
//! framework's own vector (`framework_gradient`, on the scale of kinkcheck's objective: the SUM
//! of per-sample losses, `mse` = ½‖N(x)−y‖²), the two are compared entrywise with the line's
//! relative `tolerance`: if they agree (`matches_framework: true`) the verdict stands for the
//! framework's vector; if not, the framework's vector itself is verified (as with
//! `--gradient`) and the record says `matches_framework: false`.
//!
//! # The line format (one JSON object per line; blank lines and lines starting with `#` are
//! skipped)
//!
//! ```text
//! {"step": 3,                                  // training step (any non-negative integer)
//!  "onnx_base64": "CAcSB...",                  // the model: ONNX protobuf in base64, or
//!  "network": {"layers": [..]},                //   a network description (one of the two)
//!  "data": {"inputs": [[..],..], "targets": [[..],..]},
//!  "loss": "mse", "wrt": "params",             // optional (defaults of CONTRACT §2/§4)
//!  "convention": "pytorch",                    // optional, default pytorch
//!  "framework_gradient": [..],                 // optional: what the framework returned
//!  "tolerance": 1e-8,                          // optional: relative, for the comparison
//!  "dtype": "float32"}                         // optional, informational
//! ```

use crate::error::Error;
use crate::frontend::network::{Data, Loss, Network, Wrt};
use crate::frontend::{onnx, onnx_proto, Problem};
use crate::report::{verify, Report, Verdict, VerifyOptions};
use crate::Convention;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

/// Default relative tolerance for comparing the framework's vector with the AD vector.
pub const DEFAULT_TOLERANCE: f64 = 1e-8;

/// One audited training step: the model, its batch and how to differentiate (module docs).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditStep {
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<serde_json::Value>,
    pub data: Data,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convention: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_gradient: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}

/// What was found at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    /// Switches with z = 0 exactly (active or degenerate), the exact kink hits.
    pub kinks: usize,
    /// The same, by kink operation (`relu`, `abs`, `max`, `clamp`, `maxpool`, …).
    pub kinks_by_op: BTreeMap<String, usize>,
    /// Switches inside the tolerance band, 0 < |z| ≤ τ_act·scale.
    pub near: usize,
    /// The verdict on the framework's vector: `in`, `out` or `undecided`.
    pub verdict: String,
    /// Did the analyzer guarantee the vector, and by which condition?
    pub guaranteed: bool,
    pub by: Option<String>,
    /// The convention used, and whether its AD vector equals the framework's (when given).
    pub convention: String,
    pub matches_framework: Option<bool>,
    /// max |framework − AD| / (1 + max |AD|), when the framework's vector is given.
    pub framework_difference: Option<f64>,
    pub variables: usize,
    pub switches: usize,
    /// Wall time of the verification(s) of this step, in seconds.
    pub seconds: f64,
}

/// Decode standard base64 (RFC 4648, `+/`, optional `=` padding; whitespace ignored).
pub fn decode_base64(text: &str) -> Result<Vec<u8>, Error> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a') as u32 + 26),
            b'0'..=b'9' => Some((c - b'0') as u32 + 52),
            b'+' | b'-' => Some(62),
            b'/' | b'_' => Some(63),
            _ => None,
        }
    }
    let body: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let trimmed = body.strip_suffix(b"==").or_else(|| body.strip_suffix(b"="));
    let body = trimmed.unwrap_or(&body);
    if body.len() % 4 == 1 {
        return Err(Error::input("onnx_base64: truncated base64 text"));
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for (k, chunk) in body.chunks(4).enumerate() {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = val(c).ok_or_else(|| {
                Error::input(format!(
                    "onnx_base64: character {} ('{}') is not base64",
                    4 * k + i + 1,
                    c as char
                ))
            })?;
            acc |= v << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

/// Parse a run file: one [`AuditStep`] per non-blank line (lines starting with `#` are
/// comments). Errors name the line: `line 3: data.inputs[0]: empty array`.
pub fn parse_run(text: &str) -> Result<Vec<AuditStep>, Error> {
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        steps.push(parse_line(t).map_err(|e| Error::input(format!("line {}: {e}", i + 1)))?);
    }
    if steps.is_empty() {
        return Err(Error::input("the run file has no audited step"));
    }
    Ok(steps)
}

/// Parse one line of a run file.
pub fn parse_line(line: &str) -> Result<AuditStep, Error> {
    serde_json::from_str(line).map_err(|e| Error::input(e.to_string()))
}

/// Build the step's objective.
pub fn problem(step: &AuditStep) -> Result<Problem, Error> {
    let wrt: Option<Wrt> = step.wrt.as_deref().map(str::parse).transpose()?;
    let loss: Option<Loss> = step.loss.as_deref().map(str::parse).transpose()?;
    match (&step.onnx_base64, &step.network) {
        (Some(b64), None) => {
            let bytes = decode_base64(b64)?;
            let model = onnx_proto::decode(&bytes).map_err(Error::from)?;
            onnx::problem(&model, &step.data, wrt, loss)
        }
        (None, Some(net)) => {
            let net = Network::from_json(&net.to_string())?;
            net.problem(Some(&step.data), wrt, loss)
        }
        (Some(_), Some(_)) => Err(Error::input(
            "give either \"onnx_base64\" or \"network\", not both",
        )),
        (None, None) => Err(Error::input(
            "the step has no model: give \"onnx_base64\" or \"network\"",
        )),
    }
}

fn count(report: &Report) -> (usize, BTreeMap<String, usize>, usize) {
    let mut by = BTreeMap::new();
    let (mut kinks, mut near) = (0, 0);
    for a in &report.active {
        if a.z == 0.0 {
            kinks += 1;
            *by.entry(a.op.clone()).or_insert(0) += 1;
        } else {
            near += 1;
        }
    }
    (kinks, by, near)
}

fn verdict_name(v: Verdict) -> String {
    match v {
        Verdict::In => "in",
        Verdict::Out => "out",
        Verdict::Undecided => "undecided",
    }
    .to_string()
}

/// Verify one step (module docs) with `base` options (budgets; its convention is replaced by
/// the line's). Returns the record and the report of the vector the verdict is about.
pub fn run_step(step: &AuditStep, base: &VerifyOptions) -> Result<(StepRecord, Report), Error> {
    let start = Instant::now();
    let p = problem(step)?;
    let x = p
        .point
        .clone()
        .ok_or_else(|| Error::input("the step's model carries no point"))?;
    let mut opts = base.clone();
    opts.convention = Convention::parse(step.convention.as_deref().unwrap_or("pytorch"))?;
    opts.gradient = None;
    let mut report = verify(&p, &x, &opts)?;
    let (mut matches, mut difference) = (None, None);
    if let Some(fw) = &step.framework_gradient {
        if fw.len() != report.gradient.len() {
            return Err(Error::input(format!(
                "framework_gradient has {} entries, the problem has {} variables",
                fw.len(),
                report.gradient.len()
            )));
        }
        let tol = step.tolerance.unwrap_or(DEFAULT_TOLERANCE);
        if !(tol.is_finite() && tol >= 0.0) {
            return Err(Error::input("tolerance must be a non-negative number"));
        }
        let scale = 1.0 + report.gradient.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = fw
            .iter()
            .zip(&report.gradient)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        if !diff.is_finite() {
            return Err(Error::input("framework_gradient contains NaN or infinity"));
        }
        difference = Some(diff);
        matches = Some(diff <= tol);
        if diff > tol {
            let mut o = opts.clone();
            o.gradient = Some(fw.clone());
            report = verify(&p, &x, &o)?;
        }
    }
    let (kinks, kinks_by_op, near) = count(&report);
    let record = StepRecord {
        step: step.step,
        kinks,
        kinks_by_op,
        near,
        verdict: verdict_name(report.verdict),
        guaranteed: report.analyzer.guaranteed,
        by: report
            .analyzer
            .by
            .and_then(|b| serde_json::to_value(b).ok())
            .and_then(|v| v.as_str().map(str::to_string)),
        convention: opts.convention.name().to_string(),
        matches_framework: matches,
        framework_difference: difference,
        variables: report.variables.len(),
        switches: report.switches,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((record, report))
}

/// The aggregate of a run: the audit table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub steps_with_kinks: usize,
    pub kinks: usize,
    pub kinks_by_op: BTreeMap<String, usize>,
    pub steps_in: usize,
    pub steps_out: usize,
    pub steps_undecided: usize,
    pub steps_guaranteed: usize,
    /// Steps where the framework's vector was given and differed from the convention's.
    pub framework_mismatches: usize,
    /// Steps where the framework's vector was given at all.
    pub framework_compared: usize,
    pub first_out: Option<u64>,
    pub seconds: f64,
}

impl Summary {
    /// Aggregate step records.
    ///
    /// ```
    /// use kinkcheck::audit::{self, Summary};
    /// let line = r#"{"step": 0, "network": {"layers": [{"type": "dense", "weights": [[1]], "bias": [0]},
    ///   {"type": "relu"}], "loss": "none"}, "data": {"inputs": [[0]]}}"#;
    /// let step = audit::parse_line(line).unwrap();
    /// let opts = kinkcheck::VerifyOptions::new(kinkcheck::Convention::pytorch());
    /// let (rec, _) = audit::run_step(&step, &opts).unwrap();
    /// assert_eq!(rec.kinks, 1);
    /// let s = Summary::new(&[rec]);
    /// assert_eq!((s.steps, s.steps_with_kinks), (1, 1));
    /// assert_eq!(s.exit_code(), 0); // relu'(0) = 0 at relu(w·0 + b): a Clarke gradient
    /// ```
    pub fn new(records: &[StepRecord]) -> Summary {
        let mut kinks_by_op = BTreeMap::new();
        for r in records {
            for (op, n) in &r.kinks_by_op {
                *kinks_by_op.entry(op.clone()).or_insert(0) += n;
            }
        }
        let with = |v: &str| records.iter().filter(|r| r.verdict == v).count();
        Summary {
            steps: records.len(),
            steps_with_kinks: records.iter().filter(|r| r.kinks > 0).count(),
            kinks: records.iter().map(|r| r.kinks).sum(),
            kinks_by_op,
            steps_in: with("in"),
            steps_out: with("out"),
            steps_undecided: with("undecided"),
            steps_guaranteed: records.iter().filter(|r| r.guaranteed).count(),
            framework_mismatches: records
                .iter()
                .filter(|r| r.matches_framework == Some(false))
                .count(),
            framework_compared: records
                .iter()
                .filter(|r| r.matches_framework.is_some())
                .count(),
            first_out: records.iter().find(|r| r.verdict == "out").map(|r| r.step),
            seconds: records.iter().map(|r| r.seconds).sum(),
        }
    }

    /// Exit status of `kinkcheck audit`: 0 every step IN, 1 some step OUT, 3 some UNDECIDED
    /// and none OUT (2, input errors, is the CLI's).
    pub fn exit_code(&self) -> u8 {
        if self.steps_out > 0 {
            1
        } else if self.steps_undecided > 0 {
            3
        } else {
            0
        }
    }

    /// The table, one row per line.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let by: Vec<String> = self
            .kinks_by_op
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        let by = if by.is_empty() {
            String::new()
        } else {
            format!(" ({})", by.join(", "))
        };
        let _ = writeln!(s, "steps audited          {:>6}", self.steps);
        let _ = writeln!(
            s,
            "steps with kinks       {:>6}   exact kink hits: {}{by}",
            self.steps_with_kinks, self.kinks
        );
        let _ = writeln!(
            s,
            "steps IN               {:>6}   ({} guaranteed by the analyzer)",
            self.steps_in, self.steps_guaranteed
        );
        let first = self
            .first_out
            .map(|st| format!("   first at step {st}"))
            .unwrap_or_default();
        let _ = writeln!(s, "steps OUT              {:>6}{first}", self.steps_out);
        let _ = writeln!(s, "steps UNDECIDED        {:>6}", self.steps_undecided);
        if self.framework_compared > 0 {
            let _ = writeln!(
                s,
                "framework ≠ convention {:>6}   (of {} compared)",
                self.framework_mismatches, self.framework_compared
            );
        }
        let per = if self.steps > 0 {
            self.seconds / self.steps as f64
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "time                   {:>6.3} s ({:.4} s per step)",
            self.seconds, per
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_vectors() {
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("Zg==").unwrap(), b"f");
        assert_eq!(decode_base64("Zm8=").unwrap(), b"fo");
        assert_eq!(decode_base64("Zm9v").unwrap(), b"foo");
        assert_eq!(decode_base64("Zm9vYmFy\n").unwrap(), b"foobar");
        assert!(decode_base64("Zm9v!").is_err());
        assert!(decode_base64("Z").is_err());
    }

    fn line(bias: f64, fw: Option<&str>) -> String {
        format!(
            r#"{{"step": 7, "network": {{"layers": [{{"type": "dense", "weights": [[1]], "bias": [{bias}]}},
              {{"type": "relu"}}, {{"type": "dense", "weights": [[1]], "bias": [0]}}], "loss": "none"}},
              "data": {{"inputs": [[0], [0]]}}{}}}"#,
            fw.map(|g| format!(r#", "framework_gradient": {g}"#))
                .unwrap_or_default()
        )
    }

    #[test]
    fn counts_exact_kinks_and_compares_the_framework_vector() {
        let opts = VerifyOptions::new(Convention::pytorch());
        let (r, _) = run_step(&parse_line(&line(0.0, None)).unwrap(), &opts).unwrap();
        assert_eq!((r.step, r.kinks, r.near), (7, 2, 0));
        assert_eq!(r.kinks_by_op.get("relu"), Some(&2));
        assert_eq!(r.matches_framework, None);
        // variables W1, b1, W2, b2; PyTorch: relu'(0) = 0 everywhere
        let (r, _) = run_step(
            &parse_line(&line(0.0, Some("[0, 0, 0, 2]"))).unwrap(),
            &opts,
        )
        .unwrap();
        assert_eq!(r.matches_framework, Some(true));
        assert_eq!(r.verdict, "in");
        // a framework that said relu'(0) = 2: not what PyTorch does, and not a Clarke gradient
        let (r, rep) = run_step(
            &parse_line(&line(0.0, Some("[0, 4, 0, 2]"))).unwrap(),
            &opts,
        )
        .unwrap();
        assert_eq!(r.matches_framework, Some(false));
        assert_eq!(rep.convention, "explicit");
        assert_eq!(r.verdict, "out");
        let (r, _) = run_step(&parse_line(&line(1.0, None)).unwrap(), &opts).unwrap();
        assert_eq!(r.kinks, 0);
        let s = Summary::new(&[r.clone(), r]);
        assert_eq!((s.steps, s.steps_with_kinks, s.steps_in), (2, 0, 2));
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = parse_run("\n# c\n{\"step\": 1}\n").unwrap_err().to_string();
        assert!(e.starts_with("line 3: "), "{e}");
        assert!(parse_run("").is_err());
        let step =
            parse_line(r#"{"step": 0, "onnx_base64": "AAAA", "data": {"inputs": [[0]]}}"#).unwrap();
        let opts = VerifyOptions::new(Convention::pytorch());
        assert!(run_step(&step, &opts).is_err());
        let step = parse_line(r#"{"step": 0, "data": {"inputs": [[0]]}}"#).unwrap();
        assert!(run_step(&step, &opts)
            .unwrap_err()
            .to_string()
            .contains("no model"));
    }
}
