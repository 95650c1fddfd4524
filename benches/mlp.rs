//! Full `verify` of an MLP 784-256-256-10 (≈ 270k parameters), batch 64, wrt params, with about
//! 100 exact kinks planted across samples (one first-layer unit on its kink for every sample,
//! 36 further units each on its kink for one sample). Criterion times one forward+backward pass
//! and the whole `verify`; the summary prints their ratio and the peak resident memory.

use criterion::{criterion_group, criterion_main, Criterion};
use kinkcheck::eval::{self, ReverseSweeper, Seed};
use kinkcheck::frontend::network::{Data, Layer, Loss, Network, Wrt};
use kinkcheck::frontend::Problem;
use kinkcheck::{Convention, VerifyOptions};
use std::time::Instant;

struct Lcg(u64);
impl Lcg {
    fn int(&mut self, m: i64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % (2 * m as u64 + 1)) as i64 - m
    }
}

/// Dyadic weights (m/64) and inputs (m/4) keep every first-layer dot product exact, so
/// `b = −w·x` plants an exact zero.
pub fn planted(batch: usize, single: usize) -> (Problem, Vec<f64>, usize) {
    let sizes = [784usize, 256, 256, 10];
    let mut r = Lcg(7);
    let xs: Vec<Vec<f64>> = (0..batch)
        .map(|_| (0..sizes[0]).map(|_| (r.int(2) + 2) as f64 / 4.0).collect())
        .collect();
    let mut dense = |i: usize, o: usize| -> (Vec<Vec<f64>>, Vec<f64>) {
        let w = (0..o)
            .map(|_| (0..i).map(|_| r.int(2) as f64 / 64.0).collect())
            .collect();
        let b = (0..o).map(|_| 0.25 + r.int(8) as f64 / 64.0).collect();
        (w, b)
    };
    let (mut w1, mut b1) = dense(sizes[0], sizes[1]);
    let (w2, b2) = dense(sizes[1], sizes[2]);
    let (w3, b3) = dense(sizes[2], sizes[3]);
    w1[0] = vec![0.0; sizes[0]];
    b1[0] = 0.0;
    for u in 1..=single {
        let s = u % batch;
        b1[u] = -w1[u].iter().zip(&xs[s]).map(|(a, b)| a * b).sum::<f64>();
    }
    let net = Network {
        layers: vec![
            Layer::Dense {
                weights: w1,
                bias: b1,
            },
            Layer::Relu,
            Layer::Dense {
                weights: w2,
                bias: b2,
            },
            Layer::Relu,
            Layer::Dense {
                weights: w3,
                bias: b3,
            },
        ],
        loss: Some(Loss::CrossEntropy),
        data: Some(Data {
            inputs: xs,
            targets: Some(
                (0..batch)
                    .map(|k| (0..10).map(|c| f64::from(u8::from(c == k % 10))).collect())
                    .collect(),
            ),
        }),
        wrt: Some(Wrt::Params),
    };
    let p = net.problem(None, None, None).expect("network");
    let x = p.point.clone().expect("point");
    (p, x, batch + single)
}

fn pass(p: &Problem, x: &[f64]) -> Vec<f64> {
    let g = &p.graph;
    let ev = eval::evaluate(g, x).unwrap();
    let states = eval::switch_states(g, &ev, eval::TAU_ACT);
    let rules = eval::convention_rules(&states, &Convention::pytorch());
    ReverseSweeper::new(g, &ev)
        .sweep(Seed::Output, &rules)
        .unwrap()
        .grad
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn bench(c: &mut Criterion) {
    let (p, x, planted_kinks) = planted(64, 36);
    let mut group = c.benchmark_group("mlp_784_256_256_10_batch64");
    group.sample_size(10);
    group.bench_function("forward_backward", |b| b.iter(|| pass(&p, &x)));
    for conv in ["pytorch", "sigma=0"] {
        let opts = VerifyOptions::new(Convention::parse(conv).unwrap());
        group.bench_function(format!("verify_{conv}"), |b| {
            b.iter(|| kinkcheck::verify(&p, &x, &opts).unwrap())
        });
    }
    group.finish();
    let t = Instant::now();
    for _ in 0..3 {
        pass(&p, &x);
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
