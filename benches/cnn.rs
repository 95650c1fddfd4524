//! Whole `verify` of two CNNs exported by `tools/bench_vs_torch.py` (committed under
//! `fixtures/torch/bench/`, dyadic weights, planted exact kinks), against kinkcheck's own
//! forward+backward pass of the same graph:
//! * LeNet-5 (1×28×28; conv 6@5×5, max-pool 2, conv 16@5×5, max-pool 2, 120-84-10, relu),
//!   batch 4, wrt params;
//! * a residual CNN (3×32×32, stem conv 3→16, three residual blocks of two 16-channel 3×3
//!   convs, global average pool, linear 16→10), batch 32, wrt params.
//!
//! The summary prints variables, switches, active switches, one pass, verify, their ratio and
//! the peak resident memory. (The comparison with PyTorch itself is `tools/bench_vs_torch.py`.)

mod common;

use common::{pass, peak_rss_mb};
use criterion::{criterion_group, criterion_main, Criterion};
use kinkcheck::{frontend, Convention, VerifyOptions};
use std::path::Path;
use std::time::Instant;

fn load(name: &str) -> (kinkcheck::Problem, Vec<f64>) {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torch/bench");
    let p = frontend::load(
        &d.join(format!("{name}.onnx")),
        Some(&d.join(format!("{name}_data.json"))),
        None,
        None,
    )
    .unwrap();
    let x = p.point.clone().unwrap();
    (p, x)
}

fn bench(c: &mut Criterion) {
    let opts = VerifyOptions::new(Convention::pytorch());
    let mut summary = Vec::new();
    for name in ["lenet5", "resnet_small"] {
        let (p, x) = load(name);
        let mut group = c.benchmark_group(format!("cnn_{name}"));
        group.sample_size(10);
        group.bench_function("forward_backward", |b| b.iter(|| pass(&p.graph, &x)));
        group.bench_function("verify_pytorch", |b| {
            b.iter(|| kinkcheck::verify(&p, &x, &opts).unwrap())
        });
        group.finish();
        let t = Instant::now();
        for _ in 0..3 {
            pass(&p.graph, &x);
        }
        let tp = t.elapsed().as_secs_f64() / 3.0;
        let t = Instant::now();
        let r = kinkcheck::verify(&p, &x, &opts).unwrap();
        let tv = t.elapsed().as_secs_f64();
        summary.push(format!(
            "{name}: {} variables, {} switches, {} active; one pass {:.1} ms, verify {:.0} ms = {:.0} passes; verdict {:?}",
            p.graph.n_vars(),
            p.graph.n_switches(),
            r.active.len(),
            tp * 1e3,
            tv * 1e3,
            tv / tp,
            r.verdict
        ));
    }
    for s in summary {
        eprintln!("{s}");
    }
    eprintln!("peak resident memory: {:.0} MB", peak_rss_mb());
}

criterion_group!(benches, bench);
criterion_main!(benches);
