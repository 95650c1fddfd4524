//! The LP checker against the naive baseline on programs with many active kinks in
//! independent pairs (THEORY §6.3–§6.4, §7).
//!
//! Programs: k active switches at 0 in k/2 independent pairs over distinct variables, cycling
//! through `relu(x) - relu(-x)` (opposite switches; the AD vector 0 is not a Clarke gradient),
//! `abs(x) - abs(x)` (identical switches) and `max(x, y) - min(x, y)` (identical switches on
//! x − y). kinkcheck splits them into k/2 blocks of 2 switches and solves a few LPs per block.
//! The naive baseline other tools use enumerates all 2^k completions σ and their gradients g(σ)
//! (no realizability test), which is only feasible for small k: it runs at k = 12, 16, 20 and
//! is extrapolated. It is also wrong: for `abs(x) - abs(x)` at 0 the naive hull is [−2, 2], so
//! it accepts the vector 1; kinkcheck refutes it.
//!
//! Before the criterion groups run, a table is printed (stderr): k, blocks, checker LPs, 2^k,
//! ratio, checker wall time, naive time; then what the repair (`clarke_gradient`, the ∞-norm
//! hull LP in R^n over the realized pieces) adds to the OUT verdicts: LPs and wall time against
//! `Repair::Off`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kinkcheck::report::Repair;
use kinkcheck::{anf, eval, lp, Convention, Problem, VerifyOptions};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// A program with `k` active switches at 0 in `k/2` independent pairs.
fn pairs_program(k: usize) -> (Problem, Vec<f64>) {
    assert!(k.is_multiple_of(2));
    let mut vars = Vec::new();
    let mut terms = Vec::new();
    for i in 0..k / 2 {
        match i % 3 {
            0 => {
                vars.push(format!("a{i}"));
                terms.push(format!("relu(a{i}) - relu(-a{i})"));
            }
            1 => {
                vars.push(format!("a{i}"));
                terms.push(format!("abs(a{i}) - abs(a{i})"));
            }
            _ => {
                vars.push(format!("a{i}"));
                vars.push(format!("b{i}"));
                terms.push(format!("max(a{i}, b{i}) - min(a{i}, b{i})"));
            }
        }
    }
    let src = format!("vars {}\nf = {}", vars.join(", "), terms.join(" + "));
    let p = kinkcheck::compile(&src).expect("pairs program");
    let x = vec![0.0; vars.len()];
    (p, x)
}

/// The true gradient-like vector that lies in the Clarke set: slope 1 for each odd relu pair,
/// 0 elsewhere.
fn clarke_vector(k: usize) -> Vec<f64> {
    let mut v = Vec::new();
    for i in 0..k / 2 {
        match i % 3 {
            0 => v.push(1.0),
            1 => v.push(0.0),
            _ => v.extend([0.0, 0.0]),
        }
    }
    v
}

fn options(gradient: Option<Vec<f64>>) -> VerifyOptions {
    let mut o = VerifyOptions::new(Convention::pytorch());
    o.gradient = gradient;
    o
}

/// The same without the repair (no `clarke_gradient`), to measure what it costs.
fn options_no_repair(gradient: Option<Vec<f64>>) -> VerifyOptions {
    let mut o = options(gradient);
    o.repair = Repair::Off;
    o
}

fn reduced_data(p: &Problem, x: &[f64]) -> anf::ActiveData {
    let g = &p.graph;
    let ev = eval::evaluate(g, x).unwrap();
    let st = eval::switch_states(g, &ev, eval::TAU_ACT);
    let z: Vec<f64> = st.iter().map(|s| s.z).collect();
    let act: Vec<_> = st.iter().filter(|s| s.z == 0.0).map(|s| s.id).collect();
    anf::ActiveData::compute(g, &ev, &z, &act).unwrap()
}

/// The naive baseline: the gradient g(σ) of every completion σ ∈ {±1}^k, no realizability
/// test. Returns a checksum so that the work is not optimized away.
fn naive_enumeration(data: &anf::ActiveData) -> f64 {
    let k = data.k();
    let mut sigma = vec![-1.0; k];
    let mut acc = 0.0;
    for mask in 0u64..(1u64 << k) {
        for (i, s) in sigma.iter_mut().enumerate() {
            *s = if mask >> i & 1 == 1 { 1.0 } else { -1.0 };
        }
        let g = data.ad(&sigma);
        acc += g[0];
    }
    acc
}

fn median(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}

fn time_it<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let s = Instant::now();
                black_box(f());
                s.elapsed()
            })
            .collect(),
    )
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 86_400.0 * 365.0 {
        format!("{:.1e} years", s / (86_400.0 * 365.0))
    } else if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

/// The comparison table, printed once (stderr).
fn table() {
    // naive cost per completion, measured at k = 12, 16, 20
    let mut per_completion = Vec::new();
    eprintln!();
    eprintln!("naive baseline (all 2^k completion gradients, no realizability test):");
    eprintln!(
        "{:>4} {:>10} {:>12} {:>14}",
        "k", "2^k", "time", "per completion"
    );
    for k in [12usize, 16, 20] {
        let (p, x) = pairs_program(k);
        let data = reduced_data(&p, &x);
        assert_eq!(data.k(), k);
        let runs = if k >= 20 { 1 } else { 3 };
        let t = time_it(runs, || naive_enumeration(&data));
        let per = t.as_secs_f64() / (1u64 << k) as f64;
        per_completion.push((k, per));
        eprintln!(
            "{k:>4} {:>10} {:>12} {:>11.1} ns",
            1u64 << k,
            fmt_duration(t),
            per * 1e9
        );
    }
    let per_20 = per_completion.last().unwrap().1;

    eprintln!();
    eprintln!(
        "kinkcheck verify (pytorch AD = 0 on every pair: OUT) and an explicit Clarke vector (IN):"
    );
    eprintln!(
        "{:>4} {:>6} {:>8} {:>12} {:>10} {:>9} {:>11} | {:>8} {:>11} | {:>16}",
        "k",
        "blocks",
        "verdict",
        "checker LPs",
        "2^k",
        "2^k/LPs",
        "wall",
        "IN LPs",
        "IN wall",
        "naive"
    );
    for k in [12usize, 16, 20, 24, 40] {
        let (p, x) = pairs_program(k);
        let r = kinkcheck::verify(&p, &x, &options(None)).unwrap();
        let t = time_it(5, || kinkcheck::verify(&p, &x, &options(None)).unwrap());
        let v = clarke_vector(k);
        let ri = kinkcheck::verify(&p, &x, &options(Some(v.clone()))).unwrap();
        let ti = time_it(5, || {
            kinkcheck::verify(&p, &x, &options(Some(v.clone()))).unwrap()
        });
        let two_k = 2f64.powi(k as i32);
        let naive = per_completion
            .iter()
            .find(|(kk, _)| *kk == k)
            .map(|(_, per)| (per * two_k, ""))
            .unwrap_or((per_20 * two_k, " (extrap.)"));
        // (the cost per completion grows with k, so the extrapolation is a lower bound)
        eprintln!(
            "{k:>4} {:>6} {:>8} {:>12} {:>10.3e} {:>9.2e} {:>11} | {:>8} {:>11} | {:>16}",
            r.blocks.len(),
            format!("{:?}", r.verdict).to_lowercase(),
            r.lps,
            two_k,
            two_k / r.lps.max(1) as f64,
            fmt_duration(t),
            format!("{}/{:?}", ri.lps, ri.verdict).to_lowercase(),
            fmt_duration(ti),
            format!(
                "{}{}",
                fmt_duration(Duration::from_secs_f64(naive.0)),
                naive.1
            ),
        );
    }

    eprintln!();
    eprintln!("the repair (clarke_gradient) on the OUT verdicts above, against Repair::Off:");
    eprintln!(
        "{:>4} {:>11} {:>10} {:>12} {:>12} {:>8} {:>10}",
        "k", "checker LPs", "repair LPs", "wall off", "wall on", "extra", "distance"
    );
    for k in [12usize, 16, 20, 24, 40] {
        let (p, x) = pairs_program(k);
        let r = kinkcheck::verify(&p, &x, &options(None)).unwrap();
        let c = r.clarke_gradient.as_ref().expect("a clarke_gradient");
        // interleave the two, so that machine load hits both alike
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..61 {
            off.push(time_it(1, || {
                kinkcheck::verify(&p, &x, &options_no_repair(None)).unwrap()
            }));
            on.push(time_it(1, || {
                kinkcheck::verify(&p, &x, &options(None)).unwrap()
            }));
        }
        let (on, off) = (median(on), median(off));
        eprintln!(
            "{k:>4} {:>11} {:>10} {:>12} {:>12} {:>7.0}% {:>10}",
            r.lps,
            c.lps,
            fmt_duration(off),
            fmt_duration(on),
            100.0 * (on.as_secs_f64() / off.as_secs_f64() - 1.0),
            c.distance
        );
    }

    // |x| − |x| at 0: the naive hull over all completions is [−2, 2] and accepts 1
    let p = kinkcheck::compile("vars x\nf = abs(x) - abs(x)").unwrap();
    let data = reduced_data(&p, &[0.0]);
    let all: Vec<Vec<f64>> = [[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]
        .iter()
        .map(|s| data.ad(s))
        .collect();
    let naive_in = lp::hull_distance(&all, &[1.0]).unwrap().delta <= 1e-9;
    let r = kinkcheck::verify(&p, &[0.0], &options(Some(vec![1.0]))).unwrap();
    eprintln!();
    eprintln!(
        "abs(x) - abs(x) at 0, --gradient 1: naive hull of all 2^2 completions {:?} says {}; kinkcheck says {:?} ({})",
        all.iter().map(|g| g[0]).collect::<Vec<_>>(),
        if naive_in { "IN" } else { "OUT" },
        r.verdict,
        r.reason
    );
    assert!(naive_in);
    assert_eq!(r.verdict, kinkcheck::report::Verdict::Out);
    eprintln!();
}

fn bench(c: &mut Criterion) {
    table();
    let mut group = c.benchmark_group("checker");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for k in [24usize, 40] {
        let (p, x) = pairs_program(k);
        group.bench_with_input(BenchmarkId::new("verify_pytorch", k), &k, |b, _| {
            b.iter(|| kinkcheck::verify(&p, &x, &options(None)).unwrap())
        });
        let v = clarke_vector(k);
        group.bench_with_input(BenchmarkId::new("verify_clarke_vector", k), &k, |b, _| {
            b.iter(|| kinkcheck::verify(&p, &x, &options(Some(v.clone()))).unwrap())
        });
    }
    for k in [12usize, 16] {
        let (p, x) = pairs_program(k);
        let data = reduced_data(&p, &x);
        group.bench_with_input(BenchmarkId::new("naive_all_completions", k), &k, |b, _| {
            b.iter(|| naive_enumeration(&data))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
