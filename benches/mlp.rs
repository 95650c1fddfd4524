//! Full `verify` of an MLP 784-256-256-10 (≈ 270k parameters), batch 64, wrt params, with about
//! 100 exact kinks planted across samples (one first-layer unit on its kink for every sample,
//! 36 further units each on its kink for one sample). Criterion times one forward+backward pass
//! and the whole `verify`; the summary prints their ratio and the peak resident memory.

mod common;

use common::{pass, peak_rss_mb, planted_mlp};
use criterion::{criterion_group, criterion_main, Criterion};
use kinkcheck::{Convention, VerifyOptions};
use std::time::Instant;

fn bench(c: &mut Criterion) {
    let (p, x, planted_kinks) = planted_mlp(&[784, 256, 256, 10], 64, 36);
    let mut group = c.benchmark_group("mlp_784_256_256_10_batch64");
    group.sample_size(10);
    group.bench_function("forward_backward", |b| b.iter(|| pass(&p.graph, &x)));
    for conv in ["pytorch", "sigma=0"] {
        let opts = VerifyOptions::new(Convention::parse(conv).unwrap());
        group.bench_function(format!("verify_{conv}"), |b| {
            b.iter(|| kinkcheck::verify(&p, &x, &opts).unwrap())
        });
    }
    group.finish();
    let t = Instant::now();
    for _ in 0..3 {
        pass(&p.graph, &x);
    }
    let tp = t.elapsed().as_secs_f64() / 3.0;
    eprintln!("\nMLP 784-256-256-10, batch 64, wrt params: {} variables, {} switches, {planted_kinks} planted kinks", p.graph.n_vars(), p.graph.n_switches());
    eprintln!("one forward+backward pass: {:.1} ms", tp * 1e3);
    for conv in ["pytorch", "jax", "tensorflow", "sigma=0"] {
        let opts = VerifyOptions::new(Convention::parse(conv).unwrap());
        let t = Instant::now();
        let r = kinkcheck::verify(&p, &x, &opts).unwrap();
        let tv = t.elapsed().as_secs_f64();
        eprintln!(
            "verify {conv:<10}: {:.1} ms = {:.1} passes; verdict {:?}, analyzer {:?}, {} active",
            tv * 1e3,
            tv / tp,
            r.verdict,
            r.analyzer.by,
            r.active.len()
        );
    }
    eprintln!("peak resident memory: {:.0} MB", peak_rss_mb());
}

criterion_group!(benches, bench);
criterion_main!(benches);
