//! End-to-end `kinkcheck::verify` (PyTorch convention) on relu MLPs with cross-entropy loss,
//! wrt params, with exact kinks planted (first-layer unit 0 on its kink for every sample, 36
//! further first-layer units each on its kink for one sample; see `common::planted_mlp`), as
//! the network grows in three directions from 784-256-256-10 at batch 64:
//!
//! * `width`: 784-w-w-10, w ∈ {64, 256, 512}, batch 64;
//! * `depth`: 2, 3, 4 hidden layers of 256, batch 64;
//! * `batch`: 784-256-256-10 at batch 1, 16, 64.
//!
//! A summary table (parameters, switches, active switches, one forward+backward pass, verify,
//! their ratio and the verdict) is printed at the end.

mod common;

use common::{median_time, pass, peak_rss_mb, planted_mlp};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kinkcheck::{Convention, VerifyOptions};

/// The three sweeps: (group, parameter, widths, batch).
fn configs() -> Vec<(&'static str, usize, Vec<usize>, usize)> {
    let mut v = vec![];
    for w in [64, 256, 512] {
        v.push(("width", w, vec![784, w, w, 10], 64));
    }
    for d in [2, 3, 4] {
        let mut widths = vec![784];
        widths.extend(std::iter::repeat_n(256, d));
        widths.push(10);
        v.push(("depth", d, widths, 64));
    }
    for b in [1, 16, 64] {
        v.push(("batch", b, vec![784, 256, 256, 10], b));
    }
    v
}

fn bench(c: &mut Criterion) {
    let opts = VerifyOptions::new(Convention::pytorch());
    let mut table = vec![];
    let mut group = c.benchmark_group("verify_mlp");
    group.sample_size(10);
    for (sweep, param, widths, batch) in configs() {
        let (p, x, _) = planted_mlp(&widths, batch, 36);
        // The first call on a fresh problem, before criterion's loop: like one command-line run,
        // it pays the first-touch page faults of its large buffers (the dense rows of J_α).
        let t = std::time::Instant::now();
        let r = kinkcheck::verify(&p, &x, &opts).unwrap();
        let first = t.elapsed().as_secs_f64();
        group.bench_with_input(BenchmarkId::new(sweep, param), &(), |b, _| {
            b.iter(|| kinkcheck::verify(&p, &x, &opts).unwrap())
        });
        let tp = median_time(|| drop(pass(&p.graph, &x)), 3, 11, 1.0);
        let tv = median_time(
            || drop(kinkcheck::verify(&p, &x, &opts).unwrap()),
            3,
            5,
            2.0,
        );
        let arch = widths
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("-");
        table.push((
            format!("{sweep}={param}"),
            format!("{arch} x{batch}"),
            p.graph.n_vars(),
            p.graph.n_switches(),
            r.active.len(),
            tp,
            first,
            tv,
            format!("{:?} ({:?})", r.verdict, r.analyzer.by),
        ));
    }
    group.finish();
    eprintln!(
        "\n{:<9} {:<27} {:>7} {:>8} {:>6} {:>8} {:>9} {:>9} {:>6}  verdict",
        "sweep",
        "network x batch",
        "params",
        "switches",
        "active",
        "pass ms",
        "1st call",
        "median",
        "passes"
    );
    for (s, a, n, sw, act, tp, first, tv, verdict) in table {
        eprintln!(
            "{s:<9} {a:<27} {n:>7} {sw:>8} {act:>6} {:>8.1} {:>9.1} {:>9.1} {:>6.1}  {verdict}",
            tp * 1e3,
            first * 1e3,
            tv * 1e3,
            first / tp
        );
    }
    eprintln!(
        "verify times in ms: the first call on each network (as one command-line run) and the \
         median of repeated calls; passes = first call / one forward+backward pass"
    );
    eprintln!("peak resident memory: {:.0} MB", peak_rss_mb());
}

criterion_group!(benches, bench);
criterion_main!(benches);
