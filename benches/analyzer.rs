//! The analyzer's cost against one forward+backward pass of the same graph (issue target:
//! analysis ≤ (|α| + 3) passes, |α| ≤ 64, 10^3 … 10^6 nodes). Criterion measures both; a summary
//! table of the ratios, measured in the same run, is printed at the end.

#![allow(clippy::needless_range_loop)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kinkcheck::analyze::{self, AnalyzeOptions};
use kinkcheck::anf::{ActiveData, Structure};
use kinkcheck::eval::{self, ReverseSweeper, Seed};
use kinkcheck::graph::{Graph, Origin, Role, Smooth};
use kinkcheck::reduced::ReducedSpace;
use kinkcheck::{lower, Convention};
use std::time::Instant;

/// A smooth chain of ~`nodes` nodes over variables 64..128 (nonzero at the point), plus `k` relu switches
/// z_i = x_i · u_end that sit exactly on their kink at x_i = 0 and depend on the whole chain.
fn graph(nodes: usize, k: usize) -> (Graph, Vec<f64>) {
    let n = 128;
    let mut g = Graph::new(n);
    let xs: Vec<_> = (0..n).map(|i| g.var(i, 1).unwrap()).collect();
    let mut u = xs[64];
    let mut t = 0;
    while g.nodes().len() + 6 * k + 4 < nodes {
        let c = g.scalar(0.5 + (t % 5) as f64 * 0.1).unwrap();
        let a = g.mul(c, u).unwrap();
        let a = g.add(a, xs[64 + t % 64]).unwrap();
        u = if t % 2 == 0 {
            g.unary(Smooth::Tanh, a)
        } else {
            lower::max2(
                &mut g,
                a,
                xs[64 + (t + 1) % 64],
                Role::Max,
                Origin::Internal,
            )
            .unwrap()
        };
        t += 1;
    }
    let mut out = u;
    for i in 0..k {
        let z = g.mul(xs[i], u).unwrap();
        let r = lower::relu(&mut g, z, Origin::Internal).unwrap();
        out = g.add(out, r).unwrap();
    }
    g.set_output(out).unwrap();
    let x: Vec<f64> = (0..n)
        .map(|i| if i < k { 0.0 } else { 0.3 + 0.01 * i as f64 })
        .collect();
    (g, x)
}

fn pass(g: &Graph, x: &[f64]) -> Vec<f64> {
    let ev = eval::evaluate(g, x).unwrap();
    let states = eval::switch_states(g, &ev, eval::TAU_ACT);
    let rules = eval::convention_rules(&states, &Convention::pytorch());
    ReverseSweeper::new(g, &ev)
        .sweep(Seed::Output, &rules)
        .unwrap()
        .grad
}

fn analysis(g: &Graph, ev: &eval::Evaluation, states: &[eval::SwitchState]) -> bool {
    let z: Vec<f64> = states.iter().map(|s| s.z).collect();
    let act: Vec<_> = states.iter().filter(|s| s.z == 0.0).map(|s| s.id).collect();
    let data = ActiveData::compute(g, ev, &z, &act).unwrap();
    let st = Structure::compute(g, &data.active);
    let space = ReducedSpace::new(&data);
    let sigma: Vec<f64> = vec![0.0; data.k()];
    analyze::analyze(&data, &space, &st, Some(&sigma), &AnalyzeOptions::default()).guaranteed
}

fn median(mut f: impl FnMut(), reps: usize) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("analyzer");
    group.sample_size(10);
    let mut table = vec![];
    for &nodes in &[1_000usize, 10_000, 100_000, 1_000_000] {
        for &k in &[8usize, 64] {
            let (g, x) = graph(nodes, k);
            let ev = eval::evaluate(&g, &x).unwrap();
            let states = eval::switch_states(&g, &ev, eval::TAU_ACT);
            assert!(analysis(&g, &ev, &states), "LIKQ holds by construction");
            let id = format!("{nodes}n_{k}k");
            group.bench_with_input(BenchmarkId::new("fwd_bwd", &id), &(), |b, _| {
                b.iter(|| pass(&g, &x))
            });
            group.bench_with_input(BenchmarkId::new("analysis", &id), &(), |b, _| {
                b.iter(|| analysis(&g, &ev, &states))
            });
            let reps = if nodes >= 1_000_000 { 3 } else { 11 };
            let tp = median(|| drop(pass(&g, &x)), reps);
            let ta = median(
                || {
                    let _ = analysis(&g, &ev, &states);
                },
                reps,
            );
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
