//! Network descriptions and ONNX models: the worked examples E12–E14 of THEORY §8, variable
//! order (CONTRACT §4), every loss against finite differences, the ONNX fixtures against
//! equivalent descriptions, error messages, the command line, and property tests on random
//! MLPs.

#![allow(clippy::needless_range_loop)]

use kinkcheck::frontend::network::{Data, Loss, Network, Wrt};
use kinkcheck::frontend::{onnx, onnx_proto, Problem};
use kinkcheck::graph::RelationKind;
use kinkcheck::{eval, Convention};
use proptest::prelude::*;

mod common;
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn net_file(name: &str) -> Network {
    let text = std::fs::read_to_string(root().join("fixtures/networks").join(name)).unwrap();
    Network::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn data_file(name: &str) -> Data {
    let text = std::fs::read_to_string(root().join("fixtures/networks").join(name)).unwrap();
    Data::from_json(&text).unwrap()
}

fn onnx_model(name: &str) -> onnx_proto::Model {
    onnx::load(&root().join("fixtures/onnx").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn conventions() -> Vec<Convention> {
    vec![
        Convention::pytorch(),
        Convention::jax(),
        Convention::tensorflow(),
        Convention::sigma(0.0).unwrap(),
    ]
}

fn ad_at(p: &Problem, x: &[f64], c: &Convention) -> Vec<f64> {
    let ev = eval::evaluate(&p.graph, x).unwrap();
    let states = eval::switch_states(&p.graph, &ev, eval::TAU_ACT);
    eval::ad(&p.graph, &ev, &states, c).unwrap()
}

fn ad(p: &Problem, c: &Convention) -> Vec<f64> {
    ad_at(p, p.point.as_ref().unwrap(), c)
}

fn value(p: &Problem, x: &[f64]) -> f64 {
    eval::evaluate(&p.graph, x)
        .unwrap()
        .output(&p.graph)
        .unwrap()
}

/// Smallest |z_i| over the switches at x (∞ without switches).
fn min_switch(p: &Problem, x: &[f64]) -> f64 {
    let ev = eval::evaluate(&p.graph, x).unwrap();
    ev.switches(&p.graph)
        .iter()
        .fold(f64::INFINITY, |m, z| m.min(z.abs()))
}

fn central_fd(p: &Problem, x: &[f64], h: f64) -> Vec<f64> {
    (0..x.len())
        .map(|j| {
            let mut a = x.to_vec();
            let mut b = x.to_vec();
            a[j] += h;
            b[j] -= h;
            (value(p, &a) - value(p, &b)) / (2.0 * h)
        })
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: entry {i}: {x} vs {y}\n  {a:?}\n  {b:?}"
        );
    }
}

/// AD (pytorch) equals central differences at the problem's point, which must be smooth.
fn check_fd(p: &Problem, x: &[f64], what: &str) {
    assert!(
        min_switch(p, x) > 1e-3,
        "{what}: point is too close to a kink"
    );
    let g = ad_at(p, x, &Convention::pytorch());
    let fd = central_fd(p, x, 1e-6);
    assert_close(&g, &fd, 1e-5, what);
}

/// A deterministic pseudo-random stream in [-1, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

// ---------------------------------------------------------------- THEORY §8 examples

#[test]
fn e12_one_neuron() {
    let p = net_file("e12.json").problem(None, None, None).unwrap();
    assert_eq!(p.var_names, ["W1[0,0]", "b1[0]", "W2[0,0]", "b2[0]"]);
    assert_eq!(p.point.as_deref(), Some(&[1.0, 0.0, 1.0, 0.0][..]));
    assert_eq!(p.graph.n_switches(), 1);
    for c in &conventions()[..3] {
        assert_eq!(ad(&p, c), [0.0, 0.0, 0.0, -1.0], "{}", c.name());
    }
    assert_eq!(
        ad(&p, &Convention::sigma(0.0).unwrap()),
        [0.0, -0.5, 0.0, -1.0]
    );
}

#[test]
fn e13_duplicate_samples() {
    let p = net_file("e13.json").problem(None, None, None).unwrap();
    assert_eq!(p.point.as_deref(), Some(&[0.0, 0.0, 1.0, 0.0][..]));
    assert_eq!(p.graph.n_switches(), 2);
    for c in conventions() {
        assert_eq!(ad(&p, &c), [0.0; 4], "{}", c.name());
    }
    let rel = p.graph.relations();
    assert_eq!(rel.len(), 1);
    assert_eq!((rel[0].a.0, rel[0].b.0), (0, 1));
    assert_eq!(rel[0].kind, RelationKind::Identical);
    // f = (v relu(w+b) + c)² + 1 near θ: value 1 at θ
    assert_eq!(value(&p, p.point.as_ref().unwrap()), 1.0);
}

#[test]
fn e14_maxpool_tie() {
    let p = net_file("e14.json").problem(None, None, None).unwrap();
    assert_eq!(p.var_names, ["x[0][0]", "x[0][1]"]);
    assert_eq!(p.graph.n_switches(), 2);
    for c in &conventions()[..3] {
        assert_eq!(ad(&p, c), [2.0, 0.0], "{}", c.name());
    }
    assert_eq!(ad(&p, &Convention::sigma(0.0).unwrap()), [1.0, 0.0]);
    // f ≡ x1
    assert_eq!(value(&p, &[0.7, -0.3]), 0.7);
}

// ---------------------------------------------------------------- variable order

fn two_layer() -> Network {
    Network::from_json(
        &json!({
            "layers": [
                {"type": "dense", "weights": [[1, 2], [3, 4], [5, 6]], "bias": [7, 8, 9]},
                {"type": "relu"},
                {"type": "dense", "weights": [[10, 11, 12]], "bias": [13]}
            ],
            "data": {"inputs": [[0.5, -1], [1, 1], [2, 0]], "targets": [[1], [2], [3]]}
        })
        .to_string(),
    )
    .unwrap()
}

#[test]
fn variable_order_params() {
    let net = two_layer();
    let p = net.problem(None, None, None).unwrap();
    assert_eq!(
        p.var_names,
        [
            "W1[0,0]", "W1[0,1]", "W1[1,0]", "W1[1,1]", "W1[2,0]", "W1[2,1]", "b1[0]", "b1[1]",
            "b1[2]", "W2[0,0]", "W2[0,1]", "W2[0,2]", "b2[0]"
        ]
    );
    let want: Vec<f64> = (1..=13).map(f64::from).collect();
    assert_eq!(p.point.as_deref(), Some(&want[..]));
}

#[test]
fn variable_order_inputs() {
    let net = two_layer();
    let p = net.problem(None, Some(Wrt::Inputs), None).unwrap();
    assert_eq!(
        p.var_names,
        ["x[0][0]", "x[0][1]", "x[1][0]", "x[1][1]", "x[2][0]", "x[2][1]"]
    );
    assert_eq!(
        p.point.as_deref(),
        Some(&[0.5, -1.0, 1.0, 1.0, 2.0, 0.0][..])
    );
    // the same objective value either way
    let q = net.problem(None, Some(Wrt::Params), None).unwrap();
    let (a, b) = (
        value(&p, p.point.as_ref().unwrap()),
        value(&q, q.point.as_ref().unwrap()),
    );
    assert_eq!(a, b);
}

#[test]
fn switch_order_is_sample_layer_unit_then_loss() {
    let net = Network::from_json(
        &json!({
            "layers": [
                {"type": "dense", "weights": [[1], [-1]], "bias": [0.5, 0.25]},
                {"type": "relu"},
                {"type": "dense", "weights": [[1, 1]], "bias": [0]}
            ],
            "loss": "l1",
            "data": {"inputs": [[1], [2]], "targets": [[0], [0]]}
        })
        .to_string(),
    )
    .unwrap();
    let p = net.problem(None, None, None).unwrap();
    let places: Vec<String> = p
        .graph
        .abs_nodes()
        .iter()
        .flat_map(|a| (0..p.graph.len(a.node)).map(|e| a.origin.describe(e, p.graph.len(a.node))))
        .collect();
    assert_eq!(
        places,
        [
            "sample 0, layer 1 (relu), unit 0",
            "sample 0, layer 1 (relu), unit 1",
            "sample 0, loss (l1)",
            "sample 1, layer 1 (relu), unit 0",
            "sample 1, layer 1 (relu), unit 1",
            "sample 1, loss (l1)",
        ]
    );
}

#[test]
fn dense_layers_are_one_matvec_per_sample() {
    use kinkcheck::graph::Op;
    let p = two_layer().problem(None, None, None).unwrap();
    let matvecs = p
        .graph
        .nodes()
        .iter()
        .filter(|n| matches!(n.op, Op::MatVec { .. }))
        .count();
    assert_eq!(matvecs, 2 * 3);
}

// ---------------------------------------------------------------- losses vs finite differences

fn loss_net(loss: &str, targets: serde_json::Value) -> Network {
    let mut r = Lcg(7);
    let w1: Vec<Vec<f64>> = (0..4).map(|_| r.vec(3)).collect();
    let w2: Vec<Vec<f64>> = (0..3).map(|_| r.vec(4)).collect();
    let out_rows = if loss == "none" { 1 } else { 3 };
    let w3: Vec<Vec<f64>> = (0..out_rows).map(|_| r.vec(3)).collect();
    Network::from_json(
        &json!({
            "layers": [
                {"type": "dense", "weights": w1, "bias": r.vec(4)},
                {"type": "leaky_relu", "slope": 0.1},
                {"type": "dense", "weights": w2, "bias": r.vec(3)},
                {"type": "tanh"},
                {"type": "dense", "weights": w3, "bias": r.vec(out_rows)}
            ],
            "loss": loss,
            "data": {"inputs": [r.vec(3), r.vec(3)], "targets": targets}
        })
        .to_string(),
    )
    .unwrap()
}

#[test]
fn every_loss_matches_finite_differences() {
    let cases = [
        ("mse", json!([[0.5, -0.25, 1.0], [0.0, 0.125, -1.0]])),
        ("l1", json!([[3.0, -3.0, 3.0], [-3.0, 3.0, -3.0]])),
        ("hinge", json!([[1, -1, 1], [-1, -1, 1]])),
        ("cross_entropy", json!([[0, 1, 0], [0.25, 0.25, 0.5]])),
        ("none", json!(null)),
    ];
    for (loss, targets) in cases {
        let net = loss_net(loss, targets);
        for wrt in [Wrt::Params, Wrt::Inputs] {
            let p = net.problem(None, Some(wrt), None).unwrap();
            let x = p.point.clone().unwrap();
            check_fd(&p, &x, &format!("{loss} wrt {wrt}"));
        }
    }
}

#[test]
fn loss_values() {
    // N(x) = x (one dense identity layer); hand-computed losses
    let mk = |loss: &str, y: serde_json::Value| {
        Network::from_json(
            &json!({
                "layers": [{"type": "dense", "weights": [[1, 0], [0, 1]], "bias": [0, 0]}],
                "loss": loss,
                "data": {"inputs": [[1, -2]], "targets": y}
            })
            .to_string(),
        )
        .unwrap()
        .problem(None, None, None)
        .unwrap()
    };
    let v = |p: Problem| value(&p, p.point.as_ref().unwrap());
    assert_eq!(v(mk("mse", json!([[0, 0]]))), 2.5);
    assert_eq!(v(mk("l1", json!([[0, 1]]))), 4.0);
    assert_eq!(v(mk("hinge", json!([[1, -1]]))), 0.0 + 0.0);
    assert_eq!(v(mk("hinge", json!([[-1, 1]]))), 2.0 + 3.0);
    let ce = v(mk("cross_entropy", json!([[1, 0]])));
    let want = -(1f64.exp() / (1f64.exp() + (-2f64).exp())).ln();
    assert!((ce - want).abs() < 1e-12);
}

#[test]
fn activations_lower_with_their_roles() {
    let layers = [
        ("relu", vec!["relu"]),
        ("leaky_relu", vec!["leaky_relu"]),
        ("hardtanh", vec!["hardtanh.lo", "hardtanh.hi"]),
        ("relu6", vec!["relu6.lo", "relu6.hi"]),
        ("hardsigmoid", vec!["hardsigmoid.lo", "hardsigmoid.hi"]),
        ("abs", vec!["abs"]),
        ("tanh", vec![]),
        ("sigmoid", vec![]),
    ];
    for (kind, roles) in layers {
        let net = Network::from_json(
            &json!({
                "layers": [
                    {"type": "dense", "weights": [[1], [2]], "bias": [0, 0]},
                    {"type": kind},
                    {"type": "dense", "weights": [[1, 1]], "bias": [0]}
                ],
                "data": {"inputs": [[0.5]]}
            })
            .to_string(),
        )
        .unwrap();
        let p = net.problem(None, None, None).unwrap();
        let got: Vec<&str> = p.graph.abs_nodes().iter().map(|a| a.role.name()).collect();
        assert_eq!(got, roles, "{kind}");
    }
}

#[test]
fn maxpool_uses_floor_and_stride() {
    let net = Network::from_json(
        &json!({
            "layers": [{"type": "maxpool1d", "size": 2, "stride": 2},
                       {"type": "dense", "weights": [[1, 10]], "bias": [0]}],
            "loss": "none",
            "data": {"inputs": [[1, 3, 5, 2, 100]]},
            "wrt": "inputs"
        })
        .to_string(),
    )
    .unwrap();
    let p = net.problem(None, None, None).unwrap();
    // windows [1,3], [5,2]; the trailing 100 is dropped like PyTorch
    assert_eq!(value(&p, p.point.as_ref().unwrap()), 3.0 + 50.0);
    assert_eq!(ad(&p, &Convention::pytorch()), [0.0, 1.0, 10.0, 0.0, 0.0]);
    let net3 = Network::from_json(
        &json!({
            "layers": [{"type": "maxpool1d", "size": 3, "stride": 1},
                       {"type": "dense", "weights": [[1, 1, 1]], "bias": [0]}],
            "data": {"inputs": [[1, 3, 5, 2, 0]]}
        })
        .to_string(),
    )
    .unwrap();
    let p = net3.problem(None, Some(Wrt::Inputs), None).unwrap();
    assert_eq!(value(&p, p.point.as_ref().unwrap()), 15.0);
}

// ---------------------------------------------------------------- validation messages

fn problem_err(net: serde_json::Value) -> String {
    let r = Network::from_json(&net.to_string()).and_then(|n| n.problem(None, None, None));
    let msg = r.expect_err("expected an error").to_string();
    assert!(!msg.contains('\n'), "multi-line: {msg}");
    msg
}

#[test]
fn shape_and_data_errors_name_the_place() {
    let dense = |w: serde_json::Value, b: serde_json::Value| json!({"type": "dense", "weights": w, "bias": b});
    assert_eq!(
        problem_err(json!({"layers": [dense(json!([[1, 2, 3]]), json!([0]))],
                          "data": {"inputs": [[1, 2, 3, 4]]}})),
        "layer 0 (dense): weights have 3 columns but the input has length 4"
    );
    assert_eq!(
        problem_err(
            json!({"layers": [{"type": "relu"}, dense(json!([[1, 2]]), json!([0]))],
                          "data": {"inputs": [[1, 2]], "targets": [[1], [1, 2]]}})
        ),
        "data has 1 inputs but 2 targets"
    );
    assert_eq!(
        problem_err(json!({"layers": [dense(json!([[1, 2]]), json!([0]))],
                          "data": {"inputs": [[1, 2], [3, 4]], "targets": [[1], [1, 2]]}})),
        "data.targets[1] has length 2, the network output has length 1"
    );
    assert_eq!(
        problem_err(json!({"layers": [dense(json!([[1, 2]]), json!([0]))],
                          "data": {"inputs": [[1, 2], [3]]}})),
        "data.inputs[1] has length 1, data.inputs[0] has length 2"
    );
    assert_eq!(
        problem_err(json!({"layers": [dense(json!([[1, 2]]), json!([0]))],
                          "data": {"inputs": []}})),
        "data.inputs is empty (at least one sample is needed)"
    );
    assert_eq!(
        problem_err(json!({"layers": [dense(json!([[1, 2]]), json!([0]))]})),
        "no data: give \"data\" in the description or a --data file"
    );
    assert_eq!(
        problem_err(
            json!({"layers": [dense(json!([[1, 2]]), json!([0]))], "loss": "hinge",
                          "data": {"inputs": [[1, 2]], "targets": [[0.5]]}})
        ),
        "data.targets[0][0] is 0.5; hinge targets must be -1 or +1"
    );
    assert_eq!(
        problem_err(
            json!({"layers": [dense(json!([[1, 2], [3, 4]]), json!([0, 0]))],
                          "loss": "none", "data": {"inputs": [[1, 2]]}})
        ),
        "loss none needs a scalar output per sample, the network output has length 2"
    );
    assert_eq!(
        problem_err(
            json!({"layers": [dense(json!([[1, 2]]), json!([0]))], "loss": "mse",
                          "data": {"inputs": [[1, 2]]}})
        ),
        "loss mse needs targets, but the data have none"
    );
    assert_eq!(
        problem_err(json!({"layers": [{"type": "maxpool1d", "size": 3}],
                          "data": {"inputs": [[1, 2]]}})),
        "layer 0 (maxpool1d): size 3 is larger than the input length 2"
    );
    assert_eq!(
        problem_err(json!({"layers": [{"type": "relu"}], "data": {"inputs": [[1]]}})),
        "wrt params, but the network has no dense layers (no parameters)"
    );
    let m = problem_err(json!({"layers": [{"type": "softmax"}], "data": {"inputs": [[1]]}}));
    assert!(
        m.starts_with("layer 0 (softmax): unknown variant `softmax`"),
        "{m}"
    );
    let m = problem_err(json!({"layers": [{"type": "relu"}], "wrt": "weights"}));
    assert!(m.starts_with("wrt: unknown variant `weights`"), "{m}");
    let e = Network::from_json("{\"layers\": [")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("network: EOF while parsing"), "{e}");
}

#[test]
fn overrides_replace_the_description() {
    let net = net_file("e12.json");
    let data = Data::from_json(r#"{"inputs": [[2]], "targets": [[0]]}"#).unwrap();
    let p = net
        .problem(Some(&data), Some(Wrt::Inputs), Some(Loss::L1))
        .unwrap();
    assert_eq!(p.var_names, ["x[0][0]"]);
    assert_eq!(value(&p, &[2.0]), 2.0);
    assert_eq!(ad(&p, &Convention::pytorch()), [1.0]);
}

// ---------------------------------------------------------------- ONNX

#[test]
fn onnx_e12_matches_the_description() {
    let model = onnx_model("e12_one_neuron.onnx");
    let data = data_file("e12_data.json");
    let p = onnx::problem(&model, &data, None, None).unwrap();
    let q = net_file("e12.json").problem(None, None, None).unwrap();
    assert_eq!(p.var_names, ["W1[0,0]", "b1[0]", "W2[0,0]", "b2[0]"]);
    assert_eq!(p.point, q.point);
    for c in conventions() {
        assert_eq!(ad(&p, &c), ad(&q, &c), "{}", c.name());
    }
}

/// Parameters of mlp_small in mlp_matmul's order (W1 transposed, W2 transposed = same).
fn to_matmul_order(theta: &[f64]) -> Vec<f64> {
    let mut t = theta.to_vec();
    for i in 0..3 {
        for j in 0..2 {
            t[j * 3 + i] = theta[i * 2 + j];
        }
    }
    t
}

#[test]
fn onnx_mlp_gemm_matmul_and_json_agree() {
    let small = onnx_model("mlp_small.onnx");
    let matmul = onnx_model("mlp_matmul.onnx");
    let net = net_file("mlp_small.json");
    let mut r = Lcg(11);
    let mut datas = vec![data_file("mlp_data.json")];
    // a batch with kinks: h = b1 at x = 0 (unit 0 of layer 1 has bias 0)
    datas.push(
        Data::from_json(r#"{"inputs": [[0, 0], [0, 0], [1, 1]], "targets": [[1], [-1], [0]]}"#)
            .unwrap(),
    );
    datas.push(Data {
        inputs: (0..5).map(|_| r.vec(2)).collect(),
        targets: Some((0..5).map(|_| r.vec(1)).collect()),
    });
    for (d, data) in datas.iter().enumerate() {
        // wrt params, at the stored weights and at a perturbed point
        let pj = net.problem(Some(data), Some(Wrt::Params), None).unwrap();
        let ps = onnx::problem(&small, data, Some(Wrt::Params), None).unwrap();
        let pm = onnx::problem(&matmul, data, Some(Wrt::Params), None).unwrap();
        assert_eq!(pj.point, ps.point);
        assert_eq!(
            pm.point.clone().unwrap(),
            to_matmul_order(pj.point.as_ref().unwrap())
        );
        assert_eq!(pj.graph.n_switches(), ps.graph.n_switches());
        assert_eq!(pj.graph.n_switches(), pm.graph.n_switches());
        let theta0 = pj.point.clone().unwrap();
        let theta1: Vec<f64> = theta0.iter().map(|v| v + 0.25 * r.next()).collect();
        for theta in [theta0, theta1] {
            for c in conventions() {
                let gj = ad_at(&pj, &theta, &c);
                let gs = ad_at(&ps, &theta, &c);
                let gm = ad_at(&pm, &to_matmul_order(&theta), &c);
                assert_eq!(gj, gs, "data {d}, {}", c.name());
                assert_close(&to_matmul_order(&gj), &gm, 1e-14, "matmul");
            }
        }
        // wrt inputs: identical variable order everywhere
        let pj = net.problem(Some(data), Some(Wrt::Inputs), None).unwrap();
        let ps = onnx::problem(&small, data, Some(Wrt::Inputs), None).unwrap();
        let pm = onnx::problem(&matmul, data, Some(Wrt::Inputs), None).unwrap();
        assert_eq!(pj.var_names, ps.var_names);
        for c in conventions() {
            let gj = ad(&pj, &c);
            assert_eq!(gj, ad(&ps, &c), "data {d}, {}", c.name());
            assert_close(&gj, &ad(&pm, &c), 1e-14, "matmul inputs");
        }
    }
}

#[test]
fn onnx_e14_maxpool() {
    let model = onnx_model("e14_maxpool.onnx");
    let data = data_file("e14_data.json");
    let p = onnx::problem(&model, &data, Some(Wrt::Inputs), None).unwrap();
    assert_eq!(p.var_names, ["x[0][0]", "x[0][1]"]);
    assert_eq!(ad(&p, &Convention::pytorch()), [2.0, 0.0]);
    assert_eq!(ad(&p, &Convention::sigma(0.0).unwrap()), [1.0, 0.0]);
    let q = net_file("e14.json").problem(None, None, None).unwrap();
    for c in conventions() {
        assert_eq!(ad(&p, &c), ad(&q, &c), "{}", c.name());
    }
}

#[test]
fn onnx_maxpool_matches_the_description() {
    let model = onnx_model("maxpool.onnx");
    let net = Network::from_json(
        &json!({"layers": [{"type": "maxpool1d", "size": 2},
                           {"type": "dense", "weights": [[0.5, -1.0]], "bias": [0.25]}]})
        .to_string(),
    )
    .unwrap();
    // nested samples ([1, 4] each), as x.tolist() writes them, with ties
    let data = Data::from_json(
        r#"{"inputs": [[[1, -2, 0.5, 0.5]], [[-1, -3, 2, 4]], [[0, 0, 0, 0]]], "targets": [[0], [1], [2]]}"#,
    )
    .unwrap();
    for wrt in [Wrt::Params, Wrt::Inputs] {
        let p = onnx::problem(&model, &data, Some(wrt), None).unwrap();
        let q = net.problem(Some(&data), Some(wrt), None).unwrap();
        assert_eq!(p.var_names.len(), q.var_names.len());
        if wrt == Wrt::Inputs {
            assert_eq!(
                p.var_names.to_vec()[..4],
                ["x[0][0,0]", "x[0][0,1]", "x[0][0,2]", "x[0][0,3]"]
            );
        }
        assert_eq!(p.graph.n_switches(), q.graph.n_switches());
        for c in conventions() {
            assert_eq!(ad(&p, &c), ad(&q, &c), "{wrt} {}", c.name());
        }
    }
}

#[test]
fn onnx_gemm_alpha_beta() {
    let model = onnx_model("gemm_alpha.onnx");
    let data = Data::from_json(r#"{"inputs": [[1, 2]]}"#).unwrap();
    let p = onnx::problem(&model, &data, None, None).unwrap();
    // y = 0.5 (2·1 − 4·2) + 2·0.5 = −2
    assert_eq!(value(&p, p.point.as_ref().unwrap()), -2.0);
    // ∂/∂W = 0.5 x, ∂/∂b = 2
    assert_eq!(ad(&p, &Convention::pytorch()), [0.5, 1.0, 2.0]);
    let p = onnx::problem(&model, &data, Some(Wrt::Inputs), None).unwrap();
    assert_eq!(ad(&p, &Convention::pytorch()), [1.0, -2.0]);
}

#[test]
fn onnx_float_data_fixture() {
    let model = onnx_model("float_data.onnx");
    let data =
        Data::from_json(r#"{"inputs": [[1, 1], [0.5, -1]], "targets": [[0, 0], [1, 1]]}"#).unwrap();
    let p = onnx::problem(&model, &data, None, None).unwrap();
    assert_eq!(
        p.var_names,
        ["W[0,0]", "W[0,1]", "W[1,0]", "W[1,1]", "b[0]", "b[1]"]
    );
    check_fd(&p, p.point.as_ref().unwrap(), "float_data");
}

#[test]
fn onnx_ops_zoo_matches_finite_differences() {
    let model = onnx_model("ops_zoo.onnx");
    let mut r = Lcg(3);
    let mut tried = 0;
    loop {
        tried += 1;
        assert!(tried < 50, "no smooth point found");
        let data = Data {
            inputs: (0..3)
                .map(|_| r.vec(4).iter().map(|v| 1.5 * v).collect())
                .collect(),
            targets: Some((0..3).map(|_| r.vec(4)).collect()),
        };
        let pi = onnx::problem(&model, &data, Some(Wrt::Inputs), None).unwrap();
        let pp = onnx::problem(&model, &data, Some(Wrt::Params), None).unwrap();
        let (xi, xp) = (pi.point.clone().unwrap(), pp.point.clone().unwrap());
        if min_switch(&pi, &xi) < 1e-2 {
            continue;
        }
        // the same objective either way
        assert_eq!(value(&pi, &xi), value(&pp, &xp));
        // Max, Min, Clip, LeakyRelu, Abs, HardSigmoid all produced switches: 3 samples × 4
        // elements × (leaky, abs, max, min, clip lo, clip hi, hs lo, hs hi)
        assert_eq!(pi.graph.n_switches(), 3 * 4 * 8);
        // the float initializers are the variables; the int64 shape is not
        assert_eq!(pp.var_names.len(), 4 + 4 + 1 + 1);
        assert_eq!(pp.var_names.to_vec()[8..], ["clip_min", "clip_max"]);
        check_fd(&pi, &xi, "ops_zoo wrt inputs");
        check_fd(&pp, &xp, "ops_zoo wrt params");
        break;
    }
}

#[test]
fn onnx_models_match_the_reference_evaluator() {
    // fixtures/onnx/expected.json: objectives computed by onnx's ReferenceEvaluator
    // (tools/gen_onnx_fixtures.py), in float32, so compare with a relative tolerance.
    let text = std::fs::read_to_string(root().join("fixtures/onnx/expected.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let name = case["model"].as_str().unwrap();
        let model = onnx_model(name);
        let data: Data = serde_json::from_value(case["data"].clone()).unwrap();
        let want = case["mse"].as_f64().unwrap();
        for wrt in [Wrt::Params, Wrt::Inputs] {
            let p = onnx::problem(&model, &data, Some(wrt), Some(Loss::Mse))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = value(&p, p.point.as_ref().unwrap());
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{name} wrt {wrt}: {got} vs reference {want}"
            );
        }
    }
}

#[test]
fn onnx_ops_extra_matches_finite_differences() {
    let model = onnx_model("ops_extra.onnx");
    let mut r = Lcg(5);
    for _ in 0..50 {
        let data = Data {
            inputs: (0..2)
                .map(|_| r.vec(3).iter().map(|v| 2.0 * v).collect())
                .collect(),
            targets: Some((0..2).map(|_| r.vec(2)).collect()),
        };
        let pi = onnx::problem(&model, &data, Some(Wrt::Inputs), None).unwrap();
        let pp = onnx::problem(&model, &data, Some(Wrt::Params), None).unwrap();
        let (xi, xp) = (pi.point.clone().unwrap(), pp.point.clone().unwrap());
        if min_switch(&pi, &xi) < 1e-2 {
            continue;
        }
        assert_eq!(pp.var_names.to_vec()[..3], ["B[0,0]", "B[0,1]", "B[0,2]"]);
        assert_eq!(pp.var_names.to_vec()[16..18], ["lo", "hi"]);
        check_fd(&pi, &xi, "ops_extra wrt inputs");
        check_fd(&pp, &xp, "ops_extra wrt params");
        return;
    }
    panic!("no smooth point found");
}

#[test]
fn onnx_errors_are_one_line() {
    let e = onnx::load(&root().join("fixtures/onnx/external.onnx"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("tensor 'W': external data file 'weights.bin' cannot be read"),
        "{e}"
    );
    let model = onnx_model("unsupported_op.onnx");
    let data = Data::from_json(r#"{"inputs": [[1, 2, 3, 4]]}"#).unwrap();
    let e = onnx::problem(&model, &data, None, None)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "unsupported ONNX op 'Floor' at node 'floor1'");
    let model = onnx_model("mlp_small.onnx");
    let data = Data::from_json(r#"{"inputs": [[1, 2, 3]]}"#).unwrap();
    let e = onnx::problem(&model, &data, None, None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "data samples have length 3, graph input 'x' needs 2 per sample (shape [2])"
    );
    let data = Data::from_json(r#"{"inputs": [[1, 2]], "targets": [[1, 2]]}"#).unwrap();
    let e = onnx::problem(&model, &data, None, None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "data.targets[0] has length 2, the network output has length 1"
    );
}

// ---------------------------------------------------------------- command line

/// Run the binary; `verify` gets a generous `--timeout` so that no test depends on the speed
/// of the machine (issue 13).
fn with_timeout<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut a = args.to_vec();
    if a.first() == Some(&"verify") && !a.contains(&"--timeout") {
        a.extend(["--timeout", "3600"]);
    }
    a
}

fn kinkcheck(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kinkcheck"))
        .args(with_timeout(args))
        .current_dir(root())
        .output()
        .unwrap()
}

fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn assert_usage_error(out: &std::process::Output, contains: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");
    assert!(err.contains(contains), "stderr: {err}");
}

#[test]
fn cli_verify_network_json() {
    let out = kinkcheck(&["verify", "fixtures/networks/e12.json", "--json"]);
    let v = stdout_json(&out);
    assert_eq!(v["gradient"], json!([0.0, 0.0, 0.0, -1.0]));
    assert_eq!(v["active"][0]["where"], "sample 0, layer 1 (relu), unit 0");
    let out = kinkcheck(&[
        "verify",
        "fixtures/networks/e12.json",
        "--json",
        "--convention",
        "sigma=0",
    ]);
    assert_eq!(stdout_json(&out)["gradient"], json!([0.0, -0.5, 0.0, -1.0]));
}

#[test]
fn cli_overrides_and_at() {
    // --wrt inputs --loss l1 --data
    let out = kinkcheck(&[
        "verify",
        "fixtures/networks/e12.json",
        "--json",
        "--wrt",
        "inputs",
        "--loss",
        "l1",
        "--data",
        "fixtures/networks/e14_data.json",
    ]);
    // e14's data have 2 inputs per sample: a shape error
    assert_usage_error(
        &out,
        "layer 0 (dense): weights have 1 columns but the input has length 2",
    );
    // --at replaces the weights: θ = (1, 1, 1, 0) makes the relu inactive
    let out = kinkcheck(&[
        "verify",
        "fixtures/networks/e12.json",
        "--json",
        "--at",
        "1,1,1,0",
    ]);
    let v = stdout_json(&out);
    assert_eq!(v["gradient"], json!([0.0, 0.0, 0.0, 0.0]));
    let out = kinkcheck(&["verify", "fixtures/networks/e12.json", "--at", "1,1"]);
    assert_usage_error(&out, "--at has 2 values, the problem has 4 variables");
    let out = kinkcheck(&[
        "verify",
        "fixtures/networks/e14.json",
        "--json",
        "--wrt",
        "inputs",
    ]);
    assert_eq!(stdout_json(&out)["gradient"], json!([2.0, 0.0]));
}

#[test]
fn cli_onnx() {
    let out = kinkcheck(&[
        "verify",
        "fixtures/onnx/e12_one_neuron.onnx",
        "--data",
        "fixtures/networks/e12_data.json",
        "--json",
    ]);
    assert_eq!(stdout_json(&out)["gradient"], json!([0.0, 0.0, 0.0, -1.0]));
    let out = kinkcheck(&[
        "verify",
        "fixtures/onnx/e14_maxpool.onnx",
        "--data",
        "fixtures/networks/e14_data.json",
        "--wrt",
        "inputs",
        "--json",
    ]);
    assert_eq!(stdout_json(&out)["gradient"], json!([2.0, 0.0]));
    let out = kinkcheck(&[
        "anf",
        "fixtures/onnx/e14_maxpool.onnx",
        "--data",
        "fixtures/networks/e14_data.json",
        "--wrt",
        "inputs",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = stdout_json(&out);
    assert_eq!(v["s"], 2);
    assert_eq!(v["Z"], json!([[1.0, 0.0], [-1.0, 0.0]]));
    let out = kinkcheck(&["verify", "fixtures/onnx/e12_one_neuron.onnx"]);
    assert_usage_error(&out, "ONNX models need a batch: give --data FILE");
    let out = kinkcheck(&[
        "verify",
        "fixtures/onnx/unsupported_op.onnx",
        "--data",
        "fixtures/networks/e12_data.json",
    ]);
    assert_usage_error(&out, "unsupported ONNX op 'Floor' at node 'floor1'");
    let out = kinkcheck(&[
        "verify",
        "fixtures/onnx/external.onnx",
        "--data",
        "fixtures/networks/e12_data.json",
    ]);
    assert_usage_error(
        &out,
        "tensor 'W': external data file 'weights.bin' cannot be read",
    );
}

#[test]
fn cli_input_errors_exit_2() {
    let dir = std::env::temp_dir().join(format!("kinkcheck-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().to_string()
    };
    let malformed = write("malformed.json", "{\"layers\": [ {\"type\": \"relu\"} ");
    assert_usage_error(
        &kinkcheck(&["verify", &malformed]),
        "network: EOF while parsing",
    );
    let shapes = write(
        "shapes.json",
        r#"{"layers": [{"type": "dense", "weights": [[1, 2, 3]], "bias": [0]}],
            "data": {"inputs": [[1, 2, 3, 4]]}}"#,
    );
    assert_usage_error(
        &kinkcheck(&["verify", &shapes]),
        "layer 0 (dense): weights have 3 columns but the input has length 4",
    );
    let unknown = write(
        "unknown.json",
        r#"{"layers": [{"type": "conv1d", "size": 3}], "data": {"inputs": [[1]]}}"#,
    );
    assert_usage_error(
        &kinkcheck(&["verify", &unknown]),
        "layer 0 (conv1d): unknown variant `conv1d`",
    );
    let e12 = "fixtures/networks/e12.json";
    assert_usage_error(
        &kinkcheck(&["verify", e12, "--wrt", "weights"]),
        "unknown --wrt 'weights' (expected params or inputs)",
    );
    assert_usage_error(
        &kinkcheck(&["verify", e12, "--loss", "huber"]),
        "unknown --loss 'huber'",
    );
    assert_usage_error(
        &kinkcheck(&[
            "verify",
            "--expr",
            "vars x; f = x",
            "--at",
            "0",
            "--wrt",
            "inputs",
        ]),
        "--data, --wrt and --loss apply to network descriptions",
    );
    let bad_data = write("bad_data.json", r#"{"inputs": [[1, null]]}"#);
    assert_usage_error(
        &kinkcheck(&["verify", e12, "--data", &bad_data]),
        "data.inputs[0]: null where a number was expected",
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------- properties

const ACTS: [&str; 5] = ["relu", "leaky_relu", "hardtanh", "abs", "tanh"];

/// A random MLP description: sizes, activations, weights, a batch.
fn mlp() -> impl Strategy<Value = (serde_json::Value, usize)> {
    (
        prop::collection::vec(1usize..4, 3..5), // widths: input, hidden..., output
        prop::collection::vec(0usize..ACTS.len(), 3),
        1usize..4,
        any::<u64>(),
        prop_oneof![
            Just("mse"),
            Just("l1"),
            Just("hinge"),
            Just("cross_entropy"),
            Just("none")
        ],
    )
        .prop_map(|(widths, acts, batch, seed, loss)| {
            let mut r = Lcg(seed);
            let mut widths = widths;
            let n_layers = widths.len() - 1;
            if loss == "none" {
                widths[n_layers] = 1;
            }
            let mut layers = vec![];
            for l in 0..n_layers {
                let (k, rows) = (widths[l], widths[l + 1]);
                let w: Vec<Vec<f64>> = (0..rows).map(|_| r.vec(k)).collect();
                layers.push(json!({"type": "dense", "weights": w, "bias": r.vec(rows)}));
                if l + 1 < n_layers {
                    layers.push(json!({"type": ACTS[acts[l]]}));
                }
            }
            let out = widths[n_layers];
            let inputs: Vec<Vec<f64>> = (0..batch)
                .map(|_| r.vec(widths[0]).iter().map(|v| 2.0 * v).collect())
                .collect();
            let targets: Vec<Vec<f64>> = (0..batch)
                .map(|_| {
                    if loss == "cross_entropy" {
                        r.vec(out).iter().map(|v| v.abs()).collect()
                    } else if loss == "hinge" {
                        r.vec(out)
                            .iter()
                            .map(|v| if *v < 0.0 { -1.0 } else { 1.0 })
                            .collect()
                    } else {
                        r.vec(out).iter().map(|v| 3.0 * v).collect()
                    }
                })
                .collect();
            let mut net = json!({"layers": layers, "loss": loss,
                                 "data": {"inputs": inputs}});
            if loss != "none" {
                net["data"]["targets"] = json!(targets);
            }
            (net, batch)
        })
}

proptest! {
    #![proptest_config(common::proptest_config(150, 0x6b63_0201, "proptest-regressions/networks.txt"))]

    #[test]
    fn random_mlp_ad_matches_finite_differences((net, _batch) in mlp(), wrt_inputs in any::<bool>()) {
        let net = Network::from_json(&net.to_string()).unwrap();
        let wrt = if wrt_inputs { Wrt::Inputs } else { Wrt::Params };
        let p = net.problem(None, Some(wrt), None).unwrap();
        let x = p.point.clone().unwrap();
        prop_assume!(min_switch(&p, &x) > 1e-3);
        let g = ad_at(&p, &x, &Convention::pytorch());
        let fd = central_fd(&p, &x, 1e-6);
        for j in 0..x.len() {
            prop_assert!((g[j] - fd[j]).abs() <= 1e-5 * (1.0 + fd[j].abs()),
                "{wrt}: entry {j} ({}): AD {} vs FD {}", p.var_names.get(j).unwrap_or_default(), g[j], fd[j]);
        }
        // off the kinks every convention agrees
        prop_assert_eq!(ad_at(&p, &x, &Convention::jax()), g);
    }

    #[test]
    fn params_and_inputs_give_the_same_function((net, batch) in mlp(), seed in any::<u64>()) {
        let net = Network::from_json(&net.to_string()).unwrap();
        let pp = net.problem(None, Some(Wrt::Params), None).unwrap();
        let pi = net.problem(None, Some(Wrt::Inputs), None).unwrap();
        let (xp, xi) = (pp.point.clone().unwrap(), pi.point.clone().unwrap());
        prop_assert_eq!(xi.len() % batch, 0);
        prop_assert_eq!(value(&pp, &xp), value(&pi, &xi));
        prop_assert_eq!(pp.graph.n_switches(), pi.graph.n_switches());
        // moving the inputs = rebuilding with moved data
        let mut r = Lcg(seed);
        let xi2: Vec<f64> = xi.iter().map(|v| v + 0.5 * r.next()).collect();
        let k = xi.len() / batch;
        let data = Data {
            inputs: xi2.chunks(k).map(<[f64]>::to_vec).collect(),
            targets: net.data.as_ref().unwrap().targets.clone(),
        };
        let pp2 = net.problem(Some(&data), Some(Wrt::Params), None).unwrap();
        let a = value(&pi, &xi2);
        let b = value(&pp2, &xp);
        prop_assert!((a - b).abs() <= 1e-12 * (1.0 + a.abs()), "{a} vs {b}");
    }
}

/// The same network as a JSON description and as ONNX (Gemm and MatMul forms) gives the same
/// report: verdict, checked vector, analyzer outcome, pieces and certificate.
#[test]
fn onnx_and_json_give_identical_reports() {
    let net = net_file("mlp_small.json");
    let small = onnx_model("mlp_small.onnx");
    let data =
        Data::from_json(r#"{"inputs": [[0, 0], [0, 0], [1, 1]], "targets": [[1], [-1], [0]]}"#)
            .unwrap();
    let pj = net.problem(Some(&data), Some(Wrt::Params), None).unwrap();
    let ps = onnx::problem(&small, &data, Some(Wrt::Params), None).unwrap();
    let x = pj.point.clone().unwrap();
    let mut compared = 0;
    for c in conventions() {
        for gradient in [None, Some(vec![0.5; x.len()])] {
            let mut o = common::verify_options(c.clone());
            o.gradient = gradient.clone();
            let rj = serde_json::to_value(kinkcheck::verify(&pj, &x, &o).unwrap()).unwrap();
            let rs = serde_json::to_value(kinkcheck::verify(&ps, &x, &o).unwrap()).unwrap();
            for key in [
                "verdict",
                "gradient",
                "analyzer",
                "pieces",
                "certificate",
                "blocks",
            ] {
                assert_eq!(rj[key], rs[key], "{key} under {} ({gradient:?})", c.name());
            }
            assert_eq!(
                rj["active"].as_array().unwrap().len(),
                rs["active"].as_array().unwrap().len()
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 2 * conventions().len());
}
