//! The analyzer on dense ReLU networks built in code (THEORY §5.3): a single sample is always
//! LIKQ; a batch with several samples on one neuron's kink is guaranteed by the extreme choice
//! (relu′(0) = 0 in every framework) or by the grouped condition with the private direction at
//! the neuron's bias (sigma=0, sigma=0.5); a per-sample mixed choice is refuted.

use kinkcheck::frontend::Problem;
use kinkcheck::graph::{Graph, Origin};
use kinkcheck::report::Verdict;
use kinkcheck::{analyze::By, lower, Convention};

mod common;

/// dense d→h (W1, b1), relu, dense h→1 (w2, c), mse; wrt params [W1, b1, w2, c].
fn net(d: usize, h: usize, xs: &[Vec<f64>], ys: &[f64]) -> Problem {
    let n = h * d + h + h + 1;
    let mut g = Graph::new(n);
    let w1 = g.var(0, h * d).unwrap();
    let b1 = g.var(h * d, h).unwrap();
    let w2 = g.var(h * d + h, h).unwrap();
    let c = g.var(h * d + 2 * h, 1).unwrap();
    let mut total = None;
    for (s, (x, &y)) in xs.iter().zip(ys).enumerate() {
        let xin = g.constant(x.clone()).unwrap();
        let a = g.matvec(w1, xin, h).unwrap();
        let a = g.add(a, b1).unwrap();
        let origin = Origin::Layer {
            sample: s,
            layer: 1,
            kind: "relu".into(),
        };
        let r = lower::relu(&mut g, a, origin).unwrap();
        let o = g.matvec(w2, r, 1).unwrap();
        let o = g.add(o, c).unwrap();
        let yc = g.scalar(y).unwrap();
        let e = g.sub(o, yc).unwrap();
        let e2 = g.powi(e, 2);
        let l = g.scale(0.5, e2).unwrap();
        total = Some(match total {
            None => l,
            Some(t) => g.add(t, l).unwrap(),
        });
    }
    g.set_output(total.unwrap()).unwrap();
    Problem {
        graph: g,
        var_names: (0..n).map(|i| format!("t{i}")).collect(),
        point: None,
    }
}

fn theta(w1: &[f64], b1: &[f64], w2: &[f64], c: f64) -> Vec<f64> {
    let mut t = w1.to_vec();
    t.extend_from_slice(b1);
    t.extend_from_slice(w2);
    t.push(c);
    t
}

fn run(p: &Problem, x: &[f64], conv: &str) -> kinkcheck::Report {
    kinkcheck::verify(
        p,
        x,
        &common::verify_options(Convention::parse(conv).unwrap()),
    )
    .unwrap()
}

#[test]
fn single_sample_is_likq_at_dead_neurons_and_zero_input() {
    // zero input, zero biases: every hidden unit sits on its kink
    let p = net(3, 4, &[vec![0.0, 0.0, 0.0]], &[1.0]);
    let x = theta(&[0.5; 12], &[0.0; 4], &[1.0, -1.0, 0.0, 2.0], 0.0);
    for conv in ["pytorch", "jax", "tensorflow", "sigma=0", "sigma=0.3"] {
        let r = run(&p, &x, conv);
        assert_eq!(r.active.len(), 4);
        assert!(r.analyzer.guaranteed, "{conv}: {}", r.analyzer.reason);
        assert_eq!(r.analyzer.by, Some(By::Likq), "{conv}");
        assert_eq!(r.verdict, Verdict::In);
    }
    // zero weights and dead neurons (negative bias) beside a unit on its kink
    let p = net(2, 3, &[vec![1.0, -2.0]], &[0.5]);
    let x = theta(&[0.0; 6], &[0.0, -1.0, -0.5], &[1.0, 1.0, 1.0], 0.0);
    let r = run(&p, &x, "pytorch");
    assert_eq!(r.active.len(), 1);
    assert_eq!(r.analyzer.by, Some(By::Likq));
}

/// Three samples on the hyperplane w·x + b = 0 of unit 0: LIKQ fails.
fn batch_on_one_kink() -> (Problem, Vec<f64>) {
    // unit 0: w = (1, 1), b = -1: samples (1,0), (0,1), (0.5,0.5) all give 0
    let xs = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.5, 0.5]];
    let p = net(2, 2, &xs, &[1.0, -1.0, 0.5]);
    let x = theta(&[1.0, 1.0, 0.3, -0.7], &[-1.0, 0.25], &[1.5, -0.5], 0.1);
    (p, x)
}

#[test]
fn batch_on_one_neuron_is_guaranteed_extreme_or_grouped() {
    let (p, x) = batch_on_one_kink();
    for conv in ["pytorch", "jax", "tensorflow"] {
        let r = run(&p, &x, conv);
        assert_eq!(r.active.len(), 3, "{conv}");
        assert!(r.analyzer.rank < 3, "LIKQ must fail here");
        assert_eq!(
            r.analyzer.by,
            Some(By::Extreme),
            "{conv}: {}",
            r.analyzer.reason
        );
        assert_eq!(r.verdict, Verdict::In);
    }
    for conv in ["sigma=0", "sigma=0.5", "sigma=-0.25"] {
        let r = run(&p, &x, conv);
        assert_eq!(
            r.analyzer.by,
            Some(By::Grouped),
            "{conv}: {}",
            r.analyzer.reason
        );
        assert!(
            r.analyzer.reason.contains("private"),
            "{}",
            r.analyzer.reason
        );
        assert_eq!(r.verdict, Verdict::In, "{conv}: {}", r.reason);
    }
}

#[test]
fn per_sample_mixed_choice_is_refuted_with_a_certificate() {
    // E13: two identical samples sharing the bias; relu' = 0 for sample 0 and 1 for sample 1
    let p = net(1, 1, &[vec![1.0], vec![1.0]], &[1.0, -1.0]);
    let x = theta(&[0.0], &[0.0], &[1.0], 0.0);
    let r = run(&p, &x, "pytorch");
    assert_eq!(r.verdict, Verdict::In);
    assert_eq!(r.analyzer.by, Some(By::Extreme));
    assert_eq!(r.gradient, vec![0.0; 4]);
    let r = run(&p, &x, "sigma=0");
    assert_eq!(r.analyzer.by, Some(By::Grouped));
    for v in [vec![1.0, 1.0, 0.0, 0.0], vec![-1.0, -1.0, 0.0, 0.0]] {
        let mut o = common::verify_options(Convention::pytorch());
        o.gradient = Some(v.clone());
        let r = kinkcheck::verify(&p, &x, &o).unwrap();
        assert_eq!(r.verdict, Verdict::Out, "{v:?}: {}", r.reason);
        let j = serde_json::to_value(&r).unwrap();
        let h: Vec<f64> = j["certificate"]["direction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_f64().unwrap())
            .collect();
        let c = j["certificate"]["bound"].as_f64().unwrap();
        let hv: f64 = h.iter().zip(&v).map(|(a, b)| a * b).sum();
        assert!(hv > c + 1e-9);
        // the true gradient 0 is on the right side
        assert!(c >= -1e-12);
    }
}
