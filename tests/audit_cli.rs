//! `kinkcheck audit RUN.jsonl`: the table, `--json`, and the exit codes (0 all IN, 1 some OUT,
//! 2 input error naming the line). Run files here use network descriptions, so no Python is
//! needed (the Python package's tests cover ONNX run files written by `Audit.save`).

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kinkcheck"))
}

/// One step of a 1-1-1 ReLU network on two samples at x = 0: the hidden unit sits on its kink
/// exactly when `bias` is 0. Variables: W1, b1, W2, b2.
fn line(step: u64, bias: f64, framework: Option<&str>) -> String {
    let fw = framework
        .map(|g| format!(r#", "framework_gradient": {g}"#))
        .unwrap_or_default();
    format!(
        r#"{{"step": {step}, "network": {{"layers": [{{"type": "dense", "weights": [[1]], "bias": [{bias}]}}, {{"type": "relu"}}, {{"type": "dense", "weights": [[1]], "bias": [0]}}]}}, "data": {{"inputs": [[0], [0]]}}, "loss": "none"{fw}}}"#
    )
}

fn write(name: &str, lines: &[String]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn audit_prints_the_table_and_exits_0_when_every_step_is_in() {
    let run = write(
        "audit_in.jsonl",
        &[
            line(0, 0.0, Some("[0, 0, 0, 2]")),
            "# a comment".into(),
            line(1, 0.5, None),
            line(2, 0.0, None),
        ],
    );
    let out = bin().arg("audit").arg(&run).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("steps audited               3"), "{text}");
    assert!(text.contains("steps with kinks            2"), "{text}");
    assert!(text.contains("exact kink hits: 4 (relu 4)"), "{text}");

    let out = bin().arg("audit").arg(&run).arg("--json").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["steps_in"], 3);
    assert_eq!(v["summary"]["kinks"], 4);
    let kinks: Vec<u64> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kinks"].as_u64().unwrap())
        .collect();
    assert_eq!(kinks, [2, 0, 2]);
    assert_eq!(v["steps"][0]["matches_framework"], true);
}

#[test]
fn audit_exits_1_when_a_framework_vector_is_refuted() {
    // relu'(0) = 2 on each sample: b1's slope 4 lies outside [0, 2]
    let run = write(
        "audit_out.jsonl",
        &[line(0, 0.0, None), line(5, 0.0, Some("[0, 4, 0, 2]"))],
    );
    let out = bin().arg("audit").arg(&run).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("first at step 5"), "{text}");
    assert!(text.contains("framework ≠ convention      1"), "{text}");
}

#[test]
fn audit_input_errors_exit_2_and_name_the_line() {
    let run = write(
        "audit_bad.jsonl",
        &[
            line(0, 0.0, None),
            r#"{"step": 1, "data": {"inputs": [[0]]}, "nope": 1}"#.into(),
        ],
    );
    let out = bin().arg("audit").arg(&run).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("line 2: unknown field `nope`"), "{err}");
    // a well-formed line whose model is wrong: the step is named
    let run = write("audit_bad2.jsonl", &[line(0, 0.0, Some("[1, 2]"))]);
    let out = bin().arg("audit").arg(&run).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("step 0: framework_gradient has 2 entries"),
        "{err}"
    );
    let out = bin()
        .arg("audit")
        .arg("/nonexistent/run.jsonl")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
