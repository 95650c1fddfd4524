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
            assert!((value - v).abs() <= 1e-9 * v.abs().max(1.0), "{name}: f = {value} vs {v}");
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
