//! Builders and timers shared by the benches and by `examples/size_sweep.rs` (which includes
//! this file with `#[path = "../benches/common/mod.rs"]`, since an example cannot import from
//! `benches/`). Each target uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use kinkcheck::analyze::{self, Analysis, AnalyzeOptions};
use kinkcheck::anf::{ActiveData, Structure};
use kinkcheck::eval::{self, Evaluation, ReverseSweeper, Seed, SwitchState};
use kinkcheck::frontend::network::{Data, Layer, Loss, Network, Wrt};
use kinkcheck::frontend::Problem;
use kinkcheck::graph::{Graph, Origin, Role, Smooth};
use kinkcheck::reduced::ReducedSpace;
use kinkcheck::{lower, Convention};
use std::time::Instant;

/// A deterministic pseudo-random stream (64-bit LCG; no dependency needed).
pub struct Lcg(pub u64);

impl Lcg {
    fn step(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
    /// An integer in −m ..= m.
    pub fn int(&mut self, m: i64) -> i64 {
        ((self.step() >> 33) % (2 * m as u64 + 1)) as i64 - m
    }
    /// A float in [−1, 1).
    pub fn unit(&mut self) -> f64 {
        ((self.step() >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// A scalar program of ~`nodes` graph nodes with exactly `k` active kinks: a smooth-and-max
/// chain `u` over variables 64..128 (nonzero at the point, so no max of the chain sits on a
/// tie), then `k` relu switches `z_i = x_i · u` with `x_i = 0`, each on its kink and each
/// depending on the whole chain. `J_α` = `u · [e_0 … e_{k−1}]` has full rank (LIKQ), so the
/// analyzer decides and the checker is not needed. Returns the graph and the point.
pub fn kinked_chain(nodes: usize, k: usize) -> (Graph, Vec<f64>) {
    assert!(k <= 64, "at most 64 kinks (variables 0..64)");
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
    for &xi in &xs[..k] {
        let z = g.mul(xi, u).unwrap();
        let r = lower::relu(&mut g, z, Origin::Internal).unwrap();
        out = g.add(out, r).unwrap();
    }
    g.set_output(out).unwrap();
    let x: Vec<f64> = (0..n)
        .map(|i| if i < k { 0.0 } else { 0.3 + 0.01 * i as f64 })
        .collect();
    (g, x)
}

/// One forward+backward pass under the PyTorch convention: evaluation, switch states,
/// convention rules and one reverse sweep (what `eval::ad` does).
pub fn pass(g: &Graph, x: &[f64]) -> Vec<f64> {
    let ev = eval::evaluate(g, x).unwrap();
    let states = eval::switch_states(g, &ev, eval::TAU_ACT);
    let rules = eval::convention_rules(&states, &Convention::pytorch());
    ReverseSweeper::new(g, &ev)
        .sweep(Seed::Output, &rules)
        .unwrap()
        .grad
}

/// The analysis stages `verify` runs before the LP checker, on the exactly active switches:
/// reduced active data (k + 1 reverse sweeps), switch structure, reduced space (Gram matrix
/// and its eigendecomposition) and the analyzer with the convention's σ̃.
pub fn analysis(g: &Graph, ev: &Evaluation, states: &[SwitchState], conv: &Convention) -> Analysis {
    let z: Vec<f64> = states.iter().map(|s| s.z).collect();
    let act: Vec<_> = states.iter().filter(|s| s.z == 0.0).map(|s| s.id).collect();
    let data = ActiveData::compute(g, ev, &z, &act).unwrap();
    let st = Structure::compute(g, &data.active);
    let space = ReducedSpace::new(&data);
    let sigma: Vec<f64> = st.roles.iter().map(|&r| conv.sigma_tilde(r)).collect();
    analyze::analyze(&data, &space, &st, Some(&sigma), &AnalyzeOptions::default())
}

/// Median wall time (seconds) of `f`, repeated until `budget` seconds have passed, at least
/// `min` and at most `max` times.
pub fn median_time(mut f: impl FnMut(), min: usize, max: usize, budget: f64) -> f64 {
    let start = Instant::now();
    let mut t = vec![];
    while t.len() < min || (t.len() < max && start.elapsed().as_secs_f64() < budget) {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Least-squares fit of `ln y = slope · ln x + c`; returns `(slope, c)`.
pub fn loglog_fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let (lx, ly): (Vec<f64>, Vec<f64>) = points.iter().map(|&(x, y)| (x.ln(), y.ln())).unzip();
    let mx = lx.iter().sum::<f64>() / n;
    let my = ly.iter().sum::<f64>() / n;
    let sxy: f64 = lx.iter().zip(&ly).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = lx.iter().map(|x| (x - mx) * (x - mx)).sum();
    let slope = sxy / sxx;
    (slope, my - slope * mx)
}

/// An MLP `widths[0] − … − widths[last]` (relu between dense layers, cross-entropy loss over a
/// batch, wrt params) with exact kinks planted. Dyadic weights (m/64) and inputs (m/4) keep
/// every first-layer dot product exact, so `b = −w·x` plants an exact zero: first-layer unit 0
/// sits on its kink for every sample (zero weights and bias), and units 1..=`single` each on
/// its kink for sample `unit % batch`. Returns the problem, its point and the number of
/// planted kinks (`batch + single`; deeper layers can add a few exact zeros by chance, so count
/// the report's active switches for the real number).
///
/// `planted_mlp(&[784, 256, 256, 10], 64, 36)` is the network of `benches/mlp.rs`.
pub fn planted_mlp(widths: &[usize], batch: usize, single: usize) -> (Problem, Vec<f64>, usize) {
    assert!(widths.len() >= 2 && single < widths[1]);
    let mut r = Lcg(7);
    let xs: Vec<Vec<f64>> = (0..batch)
        .map(|_| {
            (0..widths[0])
                .map(|_| (r.int(2) + 2) as f64 / 4.0)
                .collect()
        })
        .collect();
    let mut dense: Vec<(Vec<Vec<f64>>, Vec<f64>)> = widths
        .windows(2)
        .map(|io| {
            let w = (0..io[1])
                .map(|_| (0..io[0]).map(|_| r.int(2) as f64 / 64.0).collect())
                .collect();
            let b = (0..io[1]).map(|_| 0.25 + r.int(8) as f64 / 64.0).collect();
            (w, b)
        })
        .collect();
    let (w1, b1) = &mut dense[0];
    w1[0] = vec![0.0; widths[0]];
    b1[0] = 0.0;
    for u in 1..=single {
        let s = u % batch;
        b1[u] = -w1[u].iter().zip(&xs[s]).map(|(a, b)| a * b).sum::<f64>();
    }
    let net = network(dense, Layer::Relu, xs);
    let p = net.problem(None, None, None).expect("network");
    let x = p.point.clone().expect("point");
    (p, x, batch + single)
}

/// A smooth (tanh) MLP with random weights, for dense-layer throughput: no switches, so every
/// adjoint row is nonzero and the backward sweep does all its multiply-adds.
pub fn tanh_mlp(widths: &[usize], batch: usize) -> (Problem, Vec<f64>) {
    let mut r = Lcg(2024);
    let xs: Vec<Vec<f64>> = (0..batch)
        .map(|_| (0..widths[0]).map(|_| 0.5 * (r.unit() + 1.0)).collect())
        .collect();
    let dense = widths
        .windows(2)
        .map(|io| {
            let scale = (3.0 / io[0] as f64).sqrt();
            let w = (0..io[1])
                .map(|_| (0..io[0]).map(|_| scale * r.unit()).collect())
                .collect();
            let b = (0..io[1]).map(|_| 0.1 * r.unit()).collect();
            (w, b)
        })
        .collect();
    let net = network(dense, Layer::Tanh, xs);
    let p = net.problem(None, None, None).expect("network");
    let x = p.point.clone().expect("point");
    (p, x)
}

fn network(dense: Vec<(Vec<Vec<f64>>, Vec<f64>)>, act: Layer, xs: Vec<Vec<f64>>) -> Network {
    let out = dense.last().unwrap().1.len();
    let depth = dense.len();
    let mut layers = vec![];
    for (l, (weights, bias)) in dense.into_iter().enumerate() {
        layers.push(Layer::Dense { weights, bias });
        if l + 1 < depth {
            layers.push(act.clone());
        }
    }
    let batch = xs.len();
    Network {
        layers,
        loss: Some(Loss::CrossEntropy),
        data: Some(Data {
            inputs: xs,
            targets: Some(
                (0..batch)
                    .map(|k| {
                        (0..out)
                            .map(|c| f64::from(u8::from(c == k % out)))
                            .collect()
                    })
                    .collect(),
            ),
        }),
        wrt: Some(Wrt::Params),
    }
}

/// Multiply-adds of one forward+backward pass of an MLP wrt params with constant inputs:
/// forward `B · Σ r·k`; backward `B · Σ r·k` for the weight adjoints plus `B · Σ_{l≥2} r·k` for
/// the adjoints of the hidden activations (the first layer's inputs are constants).
pub fn mlp_macs(widths: &[usize], batch: usize) -> (u64, u64) {
    let per: Vec<u64> = widths.windows(2).map(|io| (io[0] * io[1]) as u64).collect();
    let fwd: u64 = per.iter().sum::<u64>() * batch as u64;
    let bwd = fwd + per[1..].iter().sum::<u64>() * batch as u64;
    (fwd, bwd)
}

/// Peak resident memory of this process in MB (Linux; NaN elsewhere).
pub fn peak_rss_mb() -> f64 {
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
