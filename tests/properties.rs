//! Property tests of the core stages on random abs-smooth programs placed on (and off) kinks:
//! forward and reverse sweeps agree; the abs-linear model from the exported abs-normal form is
//! exact for affine smooth parts and second-order accurate otherwise; AD under `sigma=S` equals
//! a + bΣ̃(I − LΣ̃)⁻¹Z computed from the exported matrices.

#![allow(clippy::needless_range_loop)]

use kinkcheck::eval::{self, AbsRule, ReverseSweeper, Seed};
use kinkcheck::{anf, Convention};
use nalgebra::{DMatrix, DVector};
use proptest::prelude::*;

mod common;

/// A random expression over x1..x3; `affine` restricts it to abs-affine operations.
fn expr(affine: bool) -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("x1".to_string()),
        Just("x2".to_string()),
        Just("x3".to_string()),
        prop_oneof![Just("1"), Just("2"), Just("0.5"), Just("3")].prop_map(|s| s.to_string()),
    ];
    leaf.prop_recursive(5, 40, 3, move |inner| {
        let lin = prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} - {b})")),
            (
                prop_oneof![Just("2"), Just("-1"), Just("0.5"), Just("-3")],
                inner.clone()
            )
                .prop_map(|(c, a)| format!("{c}*({a})")),
            inner.clone().prop_map(|a| format!("abs({a})")),
            inner.clone().prop_map(|a| format!("relu({a})")),
            inner.clone().prop_map(|a| format!("-({a})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("max({a}, {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("min({a}, {b})")),
            inner.clone().prop_map(|a| format!("hardtanh({a})")),
            inner.clone().prop_map(|a| format!("leaky_relu({a}, 0.1)")),
        ];
        if affine {
            lin.boxed()
        } else {
            prop_oneof![
                3 => lin,
                1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} * {b})")),
                1 => inner.clone().prop_map(|a| format!("tanh({a})")),
                1 => inner.clone().prop_map(|a| format!("sin({a})")),
                1 => inner.clone().prop_map(|a| format!("sigmoid({a})")),
            ]
            .boxed()
        }
    })
}

fn program(affine: bool) -> impl Strategy<Value = String> {
    expr(affine).prop_map(|e| format!("vars x1, x2, x3\nf = {e}"))
}

/// Programs rich in ties among flat values: max-pool-like folds and clamps of kink outputs that
/// are often dead (relu of a negative argument) or saturated at the point.
fn tie_program() -> impl Strategy<Value = String> {
    let kink = prop_oneof![
        expr(false).prop_map(|e| format!("relu({e})")),
        expr(false).prop_map(|e| format!("relu6({e})")),
        expr(false).prop_map(|e| format!("hardtanh({e})")),
        expr(false).prop_map(|e| format!("clamp({e}, 0, 1)")),
        expr(false).prop_map(|e| format!("leaky_relu({e}, 0.25)")),
        Just("0".to_string()),
    ];
    (
        prop::collection::vec(kink, 2..5),
        expr(false),
        prop_oneof![Just("max"), Just("min")],
    )
        .prop_map(|(ks, e, op)| {
            let fold = format!("{op}({})", ks.join(", "));
            format!("vars x1, x2, x3\nu = {fold}\nf = u * ({e}) + abs(u) + relu(u - 1)")
        })
}

fn point() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(prop_oneof![Just(0.0), Just(1.0), Just(-1.0), Just(0.5)], 3)
}

fn sigma_vec(s: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        prop_oneof![Just(-1.0), Just(1.0), Just(0.0), -1.0..1.0f64],
        s,
    )
}

proptest! {
    #![proptest_config(common::proptest_config(300, 0x6b63_0101, "proptest-regressions/properties.txt"))]

    #[test]
    fn forward_and_reverse_sweeps_agree(src in program(false), x in point(), seed in any::<u64>()) {
        let p = kinkcheck::compile(&src).unwrap();
        let ev = eval::evaluate(&p.graph, &x).unwrap();
        let s = p.graph.n_switches();
        // arbitrary per-switch factors in [-1, 1], some stops
        let rules: Vec<AbsRule> = (0..s)
            .map(|i| {
                let h = seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64 * 1442695040888963407);
                match h % 5 {
                    0 => AbsRule::Stop,
                    k => AbsRule::Factor(k as f64 / 2.0 - 1.5),
                }
            })
            .collect();
        let rev = ReverseSweeper::new(&p.graph, &ev).sweep(Seed::Output, &rules).unwrap();
        for j in 0..3 {
            let mut d = vec![0.0; 3];
            d[j] = 1.0;
            let t = eval::tangent(&p.graph, &ev, &d, &rules).unwrap();
            prop_assert!((t.dy - rev.grad[j]).abs() <= 1e-10 * (1.0 + t.dy.abs()),
                "{src}: tangent {} vs adjoint {}", t.dy, rev.grad[j]);
        }
    }

    #[test]
    fn abs_linear_model_is_exact_for_affine_programs(src in program(true), x in point(),
                                                    d in prop::collection::vec(-1.0..1.0f64, 3),
                                                    h in prop_oneof![Just(1e-3), Just(0.1), Just(1.0)]) {
        let p = kinkcheck::compile(&src).unwrap();
        let ev = eval::evaluate(&p.graph, &x).unwrap();
        let form = anf::abs_normal_form(&p.graph, &ev).unwrap();
        let dx: Vec<f64> = d.iter().map(|v| v * h).collect();
        let (y, _) = form.abs_linear(&dx);
        let xp: Vec<f64> = x.iter().zip(&dx).map(|(a, b)| a + b).collect();
        let f = eval::evaluate(&p.graph, &xp).unwrap().output(&p.graph).unwrap();
        prop_assert!((y - f).abs() <= 1e-9 * (1.0 + f.abs()), "{src}: model {y} vs f {f}");
    }

    #[test]
    fn abs_linear_model_is_second_order(src in program(false), x in point(),
                                        d in prop::collection::vec(-1.0..1.0f64, 3)) {
        let p = kinkcheck::compile(&src).unwrap();
        let ev = eval::evaluate(&p.graph, &x).unwrap();
        let form = anf::abs_normal_form(&p.graph, &ev).unwrap();
        let err = |h: f64| {
            let dx: Vec<f64> = d.iter().map(|v| v * h).collect();
            let (y, _) = form.abs_linear(&dx);
            let xp: Vec<f64> = x.iter().zip(&dx).map(|(a, b)| a + b).collect();
            (eval::evaluate(&p.graph, &xp).unwrap().output(&p.graph).unwrap() - y).abs()
        };
        let (e1, e2) = (err(1e-3), err(1e-4));
        // quadratic error shrinks 100x per decade, a first-order error only 10x
        prop_assert!(e2 <= 1e-11 + e1 / 30.0, "{src}: err(1e-3) = {e1}, err(1e-4) = {e2}");
    }

    #[test]
    fn ad_equals_anf_formula(src in program(false), x in point(), sig in sigma_vec(64),
                             s_conv in -1.0..1.0f64) {
        let p = kinkcheck::compile(&src).unwrap();
        let g = &p.graph;
        let ev = eval::evaluate(g, &x).unwrap();
        let e = anf::abs_normal_form(g, &ev).unwrap().export();
        let s = e.s;
        prop_assume!(s <= 64);
        let states = eval::switch_states(g, &ev, eval::TAU_ACT);
        // per-switch σ̃: sign off the kink, an arbitrary value at exact kinks
        let st: Vec<f64> = states.iter().enumerate()
            .map(|(i, q)| if q.z == 0.0 { sig[i] } else { q.z.signum() }).collect();
        let formula = |st: &[f64]| -> Vec<f64> {
            let z = DMatrix::from_fn(s, 3, |i, j| e.big_z[i][j]);
            let l = DMatrix::from_fn(s, s, |i, j| e.big_l[i][j]);
            let sg = DMatrix::from_diagonal(&DVector::from_column_slice(st));
            let a = DVector::from_column_slice(&e.big_y[0]);
            let b = DVector::from_column_slice(&e.big_j[0]);
            let m = (DMatrix::identity(s, s) - &l * &sg).try_inverse().unwrap();
            let g = a.transpose() + b.transpose() * &sg * m * z;
            g.iter().cloned().collect()
        };
        let rules: Vec<AbsRule> = st.iter().map(|&v| AbsRule::Factor(v)).collect();
        let rev = ReverseSweeper::new(g, &ev).sweep(Seed::Output, &rules).unwrap();
        let want = formula(&st);
        for j in 0..3 {
            prop_assert!((rev.grad[j] - want[j]).abs() <= 1e-9 * (1.0 + want[j].abs()));
        }
        // and the named convention sigma=S
        let c = Convention::sigma(s_conv).unwrap();
        let ad = eval::ad(g, &ev, &states, &c).unwrap();
        let stc: Vec<f64> = states.iter().map(|q| if q.z == 0.0 { s_conv } else { q.z.signum() }).collect();
        let want = formula(&stc);
        for j in 0..3 {
            prop_assert!((ad[j] - want[j]).abs() <= 1e-9 * (1.0 + want[j].abs()));
        }
    }

    #[test]
    fn reduced_data_reproduces_ad(src in program(false), x in point(), sig in sigma_vec(64)) {
        // Self-test of THEORY §2: AD(σ̃) from (J_α, L̂, g0, b̂) equals the direct reverse sweep.
        let p = kinkcheck::compile(&src).unwrap();
        let g = &p.graph;
        let ev = eval::evaluate(g, &x).unwrap();
        let states = eval::switch_states(g, &ev, eval::TAU_ACT);
        let z: Vec<f64> = states.iter().map(|q| q.z).collect();
        let act: Vec<_> = states.iter().filter(|q| q.z == 0.0).map(|q| q.id).collect();
        prop_assume!(act.len() <= 64);
        let data = anf::ActiveData::compute(g, &ev, &z, &act).unwrap();
        let st: Vec<f64> = states.iter().enumerate()
            .map(|(i, q)| if q.z == 0.0 { sig[i % 64] } else { q.z.signum() }).collect();
        let rules: Vec<AbsRule> = st.iter().map(|&v| AbsRule::Factor(v)).collect();
        let direct = ReverseSweeper::new(g, &ev).sweep(Seed::Output, &rules).unwrap().grad;
        let sig_alpha: Vec<f64> = data.active.iter().map(|s| st[s.0]).collect();
        let reduced = data.ad(&sig_alpha);
        // the back-substitution form `verify` uses for its AD vector
        let sparse = data.ad_sparse(&sig_alpha);
        for j in 0..3 {
            prop_assert!((direct[j] - reduced[j]).abs() <= 1e-9 * (1.0 + direct[j].abs()),
                "{src}: direct {direct:?} reduced {reduced:?}");
            prop_assert!((direct[j] - sparse[j]).abs() <= 1e-9 * (1.0 + direct[j].abs()),
                "{src}: direct {direct:?} sparse {sparse:?}");
        }
    }

    #[test]
    fn flat_switches_have_zero_rows(src in prop_oneof![program(false), tie_program()], x in point()) {
        // Soundness of the Flatness pre-pass (THEORY §4): a switch it proves flat has a zero
        // J_α row and an L̂ row that refers only to flat switches, as the sweep computes them.
        let p = kinkcheck::compile(&src).unwrap();
        let g = &p.graph;
        let ev = eval::evaluate(g, &x).unwrap();
        let z = ev.switches(g);
        let rules: Vec<AbsRule> = z.iter()
            .map(|&v| if v == 0.0 { AbsRule::Stop } else { AbsRule::Factor(v.signum()) })
            .collect();
        let flat = kinkcheck::flat::Flatness::compute(g, &ev, &rules).unwrap();
        let mut sw = ReverseSweeper::new(g, &ev);
        for s in (0..z.len()).map(kinkcheck::graph::SwitchId) {
            if !flat.switch_is_flat(g, s) {
                continue;
            }
            let adj = sw.sweep_sparse(Seed::Switch(s), &rules).unwrap();
            prop_assert!(adj.idx.is_empty(), "{}: flat switch {} has J row {:?}", &src, s.0, adj.val);
            for (t, v) in &adj.stopped {
                prop_assert!(flat.switch_is_flat(g, *t), "{}: flat {} reaches {} ({})", &src, s.0, t.0, v);
            }
        }
    }
}
