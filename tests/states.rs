//! `eval::switch_states_bounded` (what `verify` uses) classifies every switch as
//! `eval::switch_states` does: exact kinks, switches inside the near-active band and
//! switches just outside it, on batched networks (the graphs where the bounds replace the
//! products with the magnitudes) and on a program without a batch.

use kinkcheck::eval::{self, Activity, SwitchState, TAU_ACT};
use kinkcheck::frontend::network::Network;
use proptest::prelude::*;

/// A relu MLP 80-64-8-1 over `batch` samples (so that the first layer is one batched
/// product), with first-layer unit u of sample u % batch placed at `z = offsets[u] · Σ|w||x|`
/// (0: an exact kink, with dyadic weights and inputs; otherwise just inside or outside the
/// near-active band |z| ≤ τ_act · scale).
fn network(seed: u64, batch: usize, offsets: &[f64]) -> Network {
    let mut s = seed;
    let mut int = |m: i64| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % (2 * m as u64 + 1)) as i64 - m
    };
    let (ins, hidden) = (80, 64);
    let xs: Vec<Vec<f64>> = (0..batch)
        .map(|_| (0..ins).map(|_| (int(4) + 4) as f64 / 8.0).collect())
        .collect();
    let w1: Vec<Vec<f64>> = (0..hidden)
        .map(|_| (0..ins).map(|_| int(16) as f64 / 64.0).collect())
        .collect();
    let mut b1: Vec<f64> = (0..hidden).map(|_| int(8) as f64 / 16.0).collect();
    for (u, &off) in offsets.iter().enumerate().take(hidden) {
        let x = &xs[u % batch];
        let dot: f64 = w1[u].iter().zip(x).map(|(a, b)| a * b).sum();
        let mag: f64 = w1[u].iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
        // dyadic terms: −dot is exact, the offset is added on top
        b1[u] = -dot + off * mag;
    }
    let w2: Vec<Vec<f64>> = (0..8)
        .map(|_| (0..hidden).map(|_| int(8) as f64 / 64.0).collect())
        .collect();
    let w3: Vec<Vec<f64>> = vec![(0..8).map(|_| int(8) as f64 / 8.0).collect()];
    let text = serde_json::json!({
        "layers": [
            {"type": "dense", "weights": w1, "bias": b1},
            {"type": "relu"},
            {"type": "dense", "weights": w2, "bias": vec![0.125; 8]},
            {"type": "relu"},
            {"type": "dense", "weights": w3, "bias": [0.0]},
        ],
        "loss": "none",
        "data": {"inputs": xs},
        "wrt": "params",
    })
    .to_string();
    Network::from_json(&text).unwrap()
}

/// The two classifications agree; the bounded scales are upper bounds of the exact ones, and
/// equal to them when some switch needed its scale (a near-active one, or one close to the
/// band).
fn assert_same(exact: &[SwitchState], fast: &[SwitchState]) {
    assert_eq!(exact.len(), fast.len());
    for (e, f) in exact.iter().zip(fast) {
        assert_eq!(
            (e.id, e.z.to_bits(), e.activity, e.role),
            (f.id, f.z.to_bits(), f.activity, f.role)
        );
        assert!(
            f.scale >= e.scale * (1.0 - 1e-12),
            "bound {} below magnitude {}",
            f.scale,
            e.scale
        );
    }
    if exact.iter().any(|s| s.activity == Activity::Near) {
        let bits = |v: &[SwitchState]| v.iter().map(|s| s.scale.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(exact),
            bits(fast),
            "near-active switches: the exact scales are used"
        );
    }
}

/// Offsets (relative to the magnitude) that sit on the kink, deep inside the band, on both
/// sides of its edge τ_act, and far outside it.
fn offset() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        (-3.0f64..3.0).prop_map(|e| 10f64.powf(e) * TAU_ACT * 1e-2),
        (0.5f64..2.0).prop_map(|f| f * TAU_ACT),
        (0.5f64..2.0).prop_map(|f| -f * TAU_ACT),
        (1.0f64..100.0).prop_map(|f| f * TAU_ACT * 1e3),
        (0.01f64..1.0).prop_map(|f| f),
    ]
}

proptest! {
    #![proptest_config(kinkcheck_test_config(24))]

    #[test]
    fn bounded_states_classify_as_exact_ones(
        seed in 1u64..1000,
        batch in 6usize..12,
        offsets in proptest::collection::vec(offset(), 0..12),
    ) {
        let p = network(seed, batch, &offsets).problem(None, None, None).unwrap();
        let x = p.point.clone().unwrap();
        let ev = eval::evaluate(&p.graph, &x).unwrap();
        let exact = eval::switch_states(&p.graph, &ev, TAU_ACT);
        let fast = eval::switch_states_bounded(&p.graph, &ev, TAU_ACT);
        assert_same(&exact, &fast);
    }
}

fn kinkcheck_test_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        ..ProptestConfig::default()
    }
}

#[test]
fn near_active_and_far_switches_of_one_batch() {
    // one switch inside the band (the exact magnitudes are needed and used), the others exact
    // kinks or clearly inactive (the bounds alone decide)
    for offsets in [
        vec![0.0, 0.0, 0.5],
        vec![0.0, 0.3 * TAU_ACT, 0.5],
        vec![1.5 * TAU_ACT, -0.9 * TAU_ACT],
    ] {
        let p = network(7, 8, &offsets).problem(None, None, None).unwrap();
        let x = p.point.clone().unwrap();
        let ev = eval::evaluate(&p.graph, &x).unwrap();
        let exact = eval::switch_states(&p.graph, &ev, TAU_ACT);
        let fast = eval::switch_states_bounded(&p.graph, &ev, TAU_ACT);
        assert_same(&exact, &fast);
        let count = |a| exact.iter().filter(|s| s.activity == a).count();
        assert!(count(Activity::Active) >= offsets.iter().filter(|&&o| o == 0.0).count());
        if offsets.iter().any(|&o| o != 0.0 && o.abs() < TAU_ACT) {
            assert!(
                count(Activity::Near) >= 1,
                "{offsets:?}: a planted near-active switch"
            );
        }
    }
}

#[test]
fn a_program_without_batch_uses_the_magnitudes() {
    let g = kinkcheck::compile("vars x, y; f = relu(x - y) + abs(x) + max(x, 2*y)")
        .unwrap()
        .graph;
    for at in [[1.0, 1.0], [0.0, 0.0], [1.0, 0.5], [1e-13, 0.0]] {
        let ev = eval::evaluate(&g, &at).unwrap();
        let exact = eval::switch_states(&g, &ev, TAU_ACT);
        let fast = eval::switch_states_bounded(&g, &ev, TAU_ACT);
        assert_same(&exact, &fast);
    }
}

#[test]
fn cnns_from_torch_classify_as_with_the_magnitudes() {
    // convolutions (bounded by ‖w_c‖₁ · max m(x) + m(b_c)), max-pool ties, and the residual
    // CNN's near-active switches (the exact magnitudes are then used)
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torch");
    let mut near = 0;
    for (model, data) in [
        ("lenet_classic.onnx", "lenet_data.json"),
        ("bench/lenet5.onnx", "bench/lenet5_data.json"),
        ("bench/resnet_small.onnx", "bench/resnet_small_data.json"),
        ("conv1d_classic.onnx", "conv1d_data.json"),
        ("avgpool_classic.onnx", "avgpool_data.json"),
    ] {
        let p = kinkcheck::frontend::load(&dir.join(model), Some(&dir.join(data)), None, None)
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        let x = p.point.clone().unwrap();
        let ev = eval::evaluate(&p.graph, &x).unwrap();
        let exact = eval::switch_states(&p.graph, &ev, TAU_ACT);
        let fast = eval::switch_states_bounded(&p.graph, &ev, TAU_ACT);
        assert_same(&exact, &fast);
        near += exact
            .iter()
            .filter(|s| s.activity == Activity::Near)
            .count();
    }
    assert!(near > 0, "a model with near-active switches (the fallback)");
}
