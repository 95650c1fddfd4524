//! The analyzer's cost against one forward+backward pass of the same graph, at a fixed number
//! of active kinks as the graph grows (issue target: analysis ≤ (|α| + 3) passes, 10^3 … 10^6
//! nodes). Criterion measures both; a summary table of the ratios, measured in the same run, is
//! printed at the end. `cargo run --release --example size_sweep` runs the same measurement on
//! a finer grid and plots it.

mod common;

use common::{analysis, kinked_chain, median_time, pass};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kinkcheck::{eval, Convention};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("analyzer");
    group.sample_size(10);
    let conv = Convention::pytorch();
    let mut table = vec![];
    for &nodes in &[1_000usize, 10_000, 100_000, 1_000_000] {
        for &k in &[8usize, 64] {
            let (g, x) = kinked_chain(nodes, k);
            let ev = eval::evaluate(&g, &x).unwrap();
            let states = eval::switch_states(&g, &ev, eval::TAU_ACT);
            assert!(
                analysis(&g, &ev, &states, &conv).guaranteed,
                "LIKQ holds by construction"
            );
            let id = format!("{nodes}n_{k}k");
            group.bench_with_input(BenchmarkId::new("fwd_bwd", &id), &(), |b, _| {
                b.iter(|| pass(&g, &x))
            });
            group.bench_with_input(BenchmarkId::new("analysis", &id), &(), |b, _| {
                b.iter(|| analysis(&g, &ev, &states, &conv))
            });
            let tp = median_time(|| drop(pass(&g, &x)), 3, 11, 1.0);
            let ta = median_time(|| drop(analysis(&g, &ev, &states, &conv)), 3, 11, 1.0);
            table.push((g.nodes().len(), k, tp, ta));
        }
    }
    group.finish();
    eprintln!("\nnodes      |α|  fwd+bwd (ms)  analysis (ms)  ratio  target (|α|+3)");
    for (n, k, tp, ta) in table {
        eprintln!(
            "{n:<10} {k:<4} {:<13.3} {:<14.3} {:<6.1} {}",
            tp * 1e3,
            ta * 1e3,
            ta / tp,
            k + 3
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
