//! Real PyTorch models (exported by `tools/gen_torch_models.py` with both exporters, committed
//! under `fixtures/torch/`): kinkcheck's AD vector under the `pytorch` convention must equal
//! the gradient PyTorch's own backward pass computed, to 1e-9 relative, with respect to the
//! inputs and to the parameters, at points with planted, exactly active kinks.

use kinkcheck::eval::{self, Activity};
use kinkcheck::frontend::{self, network::Loss, network::Wrt, onnx::ClipRule};
use kinkcheck::Convention;
use serde_json::Value;
use std::path::{Path, PathBuf};

const MODELS: &[&str] = &[
    "lenet",
    "conv1d",
    "stride",
    "avgpool",
    "residual",
    "batchnorm",
    "relu6_hardtanh",
    "clamp",
    "maxmin",
    "softmax",
    "gelu_elu",
    "layout",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torch")
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(format!("{name}_expected.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// (AD vector under pytorch, number of exactly active switches, f(x̂)).
fn ad(name: &str, exporter: &str, wrt: Wrt, clip: ClipRule) -> (Vec<f64>, usize, f64) {
    let d = dir();
    let p = frontend::load_with(
        &d.join(format!("{name}_{exporter}.onnx")),
        Some(&d.join(format!("{name}_data.json"))),
        Some(wrt),
        Some(Loss::Mse),
        clip,
    )
    .unwrap_or_else(|e| panic!("{name} ({exporter}): {e}"));
    let x = p.point.clone().unwrap();
    let ev = eval::evaluate(&p.graph, &x).unwrap();
    let st = eval::switch_states(&p.graph, &ev, eval::TAU_ACT);
    let active = st.iter().filter(|s| s.activity == Activity::Active).count();
    let g = eval::ad(&p.graph, &ev, &st, &Convention::pytorch()).unwrap();
    (g, active, ev.output(&p.graph).unwrap())
}

fn clip_of(e: &Value) -> ClipRule {
    e["clip"].as_str().unwrap().parse().unwrap()
}

/// |a − e| ≤ 1e-9 · max(|e|, ‖e‖∞, 1e-300) entrywise, with `mask` selecting entries.
fn compare(what: &str, got: &[f64], want: &[f64], mask: Option<&[bool]>) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} vs {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, e)) in got.iter().zip(want).enumerate() {
        if mask.is_some_and(|m| !m[i]) {
            continue;
        }
        if (a - e).abs() > 1e-9 * e.abs().max(scale).max(1e-300) {
            return Err(format!("{what}: entry {i}: kinkcheck {a}, torch {e}"));
        }
    }
    Ok(())
}

#[test]
fn ad_vector_matches_torch_wrt_inputs() {
    let mut failures = Vec::new();
    for name in MODELS {
        let e = expected(name);
        for exporter in ["classic", "dynamo"] {
            let (g, active, value) = ad(name, exporter, Wrt::Inputs, clip_of(&e));
            assert!(active > 0, "{name} ({exporter}): no active switch");
            let v = e["value"].as_f64().unwrap();
            assert!(
                (value - v).abs() <= 1e-9 * v.abs().max(1.0),
                "{name}: f = {value} vs {v}"
            );
            if let Err(m) = compare(
                &format!("{name} ({exporter}) wrt inputs"),
                &g,
                &floats(&e["wrt_inputs"]),
                None,
            ) {
                failures.push(m);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn ad_vector_matches_torch_wrt_params() {
    let mut failures = Vec::new();
    for name in MODELS {
        let e = expected(name);
        for exporter in ["classic", "dynamo"] {
            let pe = &e["params"][exporter];
            let (g, active, _) = ad(name, exporter, Wrt::Params, clip_of(&e));
            assert!(active > 0, "{name} ({exporter}): no active switch");
            let mask: Vec<bool> = pe["compare"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_bool().unwrap())
                .collect();
            // most entries are compared: only exporter-made constants are skipped
            assert!(
                mask.iter().filter(|&&b| b).count() * 10 >= mask.len() * 9,
                "{name} ({exporter}): too few mapped parameters: {}",
                pe["mapping"]
            );
            if let Err(m) = compare(
                &format!("{name} ({exporter}) wrt params"),
                &g,
                &floats(&pe["grad"]),
                Some(&mask),
            ) {
                failures.push(m);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn planted_kinks_were_confirmed_in_float64() {
    for name in MODELS {
        let e = expected(name);
        let kinks = e["kinks"].as_array().unwrap();
        assert!(
            kinks.iter().any(|k| k["count"].as_u64().unwrap() > 0),
            "{name}: no planted kink recorded"
        );
    }
}

fn kinkcheck(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kinkcheck"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn bad_models_are_input_errors_naming_the_node_or_tensor() {
    let cases = [
        ("conv_shapes", "node 'conv1' (Conv): W of shape [2, 3, 3, 3] with group = 1 does not fit 1 input channels"),
        ("conv_negative_pads", "node 'conv1' (Conv): negative pads [-1, 0, 0, 0]"),
        ("conv_big_kernel", "node 'conv1' (Conv): kernel [5, 5] (dilations [1, 1]) is larger than the padded input [4, 4]"),
        ("conv_auto_pad", "node 'conv1' (Conv): unknown auto_pad 'SAME_MIDDLE'"),
        ("maxpool_big_kernel", "node 'pool1' (MaxPool): kernel [3, 3] (dilations [2, 2]) is larger than the padded input"),
        ("ext_escape", "tensor 'W': external data location '../outside.bin' must be a relative path inside the model's folder"),
        ("ext_absolute", "tensor 'W': external data location '/etc/hostname' must be a relative path"),
        ("ext_short", "tensor 'W': external data file 'ext_short.onnx.data' has 40 bytes, too short for offset 0 and length 72"),
    ];
    for (name, msg) in cases {
        let model = format!("fixtures/onnx/bad/{name}.onnx");
        let out = kinkcheck(&[
            "verify",
            &model,
            "--data",
            "fixtures/onnx/bad/data.json",
            "--wrt",
            "inputs",
            "--loss",
            "none",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(err.contains(msg), "{name}: {err}");
    }
}

#[test]
fn cli_reports_the_clip_assumption() {
    let run = |clip: Option<&str>| {
        let mut args = vec![
            "verify",
            "fixtures/torch/relu6_hardtanh_dynamo.onnx",
            "--data",
            "fixtures/torch/relu6_hardtanh_data.json",
            "--wrt",
            "inputs",
            "--json",
        ];
        if let Some(c) = clip {
            args.extend(["--clip", c]);
        }
        let out = kinkcheck(&args);
        assert!(
            out.status.code().is_some_and(|c| c != 2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let e = expected("relu6_hardtanh");
    let v = run(None);
    let a = v["assumptions"].as_array().unwrap();
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(a
        .iter()
        .all(|s| s.as_str().unwrap().contains("hardtanh rule")));
    // the default reproduces torch; the clamp rule (derivative 1 at a bound) does not
    compare(
        "cli",
        &floats(&v["gradient"]),
        &floats(&e["wrt_inputs"]),
        None,
    )
    .unwrap();
    let v = run(Some("clamp"));
    let a = v["assumptions"].as_array().unwrap();
    assert!(!a.is_empty() && a.iter().all(|s| s.as_str().unwrap().contains("clamp rule")));
    assert!(compare(
        "cli",
        &floats(&v["gradient"]),
        &floats(&e["wrt_inputs"]),
        None
    )
    .is_err());
    // no Clip: an empty list
    let out = kinkcheck(&[
        "verify",
        "fixtures/torch/lenet_classic.onnx",
        "--data",
        "fixtures/torch/lenet_data.json",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["assumptions"], serde_json::json!([]));
    let out = kinkcheck(&[
        "verify",
        "fixtures/torch/lenet_classic.onnx",
        "--data",
        "fixtures/torch/lenet_data.json",
        "--clip",
        "relu",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bytes_api_needs_a_base_folder_for_external_data() {
    use kinkcheck::frontend::network::Data;
    let d = dir();
    let bytes = std::fs::read(d.join("lenet_dynamo.onnx")).unwrap();
    let data =
        Data::from_json(&std::fs::read_to_string(d.join("lenet_data.json")).unwrap()).unwrap();
    let e = frontend::load_onnx_bytes(&bytes, None, &data, None, None, ClipRule::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("uses external data, which needs the model's folder"),
        "{e}"
    );
    let p = frontend::load_onnx_bytes(&bytes, Some(&d), &data, None, None, ClipRule::default())
        .unwrap();
    let want = floats(&expected("lenet")["params"]["dynamo"]["grad"]);
    assert_eq!(p.var_names.len(), want.len());
}
