//! Evaluation plus one backward sweep on growing scalar programs (10^2 … 10^7 nodes), reported
//! by criterion as time per node (throughput in elements = graph nodes). The 10^7-node chain
//! takes about 2 GB and half a second per iteration; sizes from 10^6 up use flat sampling (the
//! same iteration count in each of the ten samples) so the whole bench takes about a minute.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use kinkcheck::eval::{self, ReverseSweeper, Seed};
use kinkcheck::graph::{Graph, Origin, Smooth};
use kinkcheck::{lower, Convention};
use std::time::Duration;

/// A scalar chain of `~nodes` nodes mixing smooth ops and kinks over 8 variables.
pub fn chain(nodes: usize) -> Graph {
    let n = 8;
    let mut g = Graph::new(n);
    let xs: Vec<_> = (0..n).map(|i| g.var(i, 1).unwrap()).collect();
    let mut u = xs[0];
    let mut k = 0;
    while g.nodes().len() < nodes {
        let x = xs[k % n];
        let c = g.scalar(0.5 + (k % 7) as f64 * 0.1).unwrap();
        let t = g.mul(c, u).unwrap();
        let t = g.add(t, x).unwrap();
        u = match k % 3 {
            0 => lower::relu(&mut g, t, Origin::Internal).unwrap(),
            1 => g.unary(Smooth::Tanh, t),
            _ => lower::max2(&mut g, t, x, kinkcheck::graph::Role::Max, Origin::Internal).unwrap(),
        };
        k += 1;
    }
    g.set_output(u).unwrap();
    g
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("eval_plus_backward");
    group.sample_size(10);
    for &size in &[100usize, 1_000, 10_000, 100_000, 1_000_000, 10_000_000] {
        let g = chain(size);
        if size >= 1_000_000 {
            group.sampling_mode(SamplingMode::Flat);
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(if size >= 10_000_000 { 12 } else { 5 }));
        }
        let x: Vec<f64> = (0..8).map(|i| 0.1 * i as f64 - 0.3).collect();
        group.throughput(Throughput::Elements(g.nodes().len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &g, |b, g| {
            b.iter(|| {
                let ev = eval::evaluate(g, &x).unwrap();
                let states = eval::switch_states(g, &ev, eval::TAU_ACT);
                let rules = eval::convention_rules(&states, &Convention::pytorch());
                ReverseSweeper::new(g, &ev)
                    .sweep(Seed::Output, &rules)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
