//! Convolution nodes through the public graph API (`Graph::conv`, `eval::evaluate`,
//! `eval::tangent`, `ReverseSweeper`): forward against a naive loop, tangents against central
//! finite differences, adjoints against the transposition identity ⟨J u, r⟩ = ⟨u, Jᵀ r⟩, on
//! random small 1-d and 2-d geometries (strides, asymmetric pads, dilations, groups, with and
//! without bias). Then `kinkcheck::verify` on a conv → relu → sum program with exact kinks,
//! against a brute-force expectation.

mod common;

use kinkcheck::eval::{self, AbsRule, ReverseSweeper, Seed};
use kinkcheck::frontend::Problem;
use kinkcheck::graph::{ConvSpec, Graph, GraphError, NodeId, Origin, Role, SwitchId};
use kinkcheck::report::Verdict;
use kinkcheck::{lower, Convention};
use proptest::prelude::*;

/// A deterministic pseudo-random stream in [−1, 1).
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

/// Output sizes by the formula, independently of the library.
fn out_sizes(s: &ConvSpec) -> Vec<usize> {
    (0..s.in_spatial.len())
        .map(|d| {
            (s.in_spatial[d] + s.pads_begin[d] + s.pads_end[d]
                - s.dilations[d] * (s.kernel[d] - 1)
                - 1)
                / s.strides[d]
                + 1
        })
        .collect()
}

/// Row-major multi-indices of a box, in order.
fn indices(dims: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &n in dims {
        out = out
            .into_iter()
            .flat_map(|p| {
                (0..n).map(move |i| {
                    let mut q = p.clone();
                    q.push(i);
                    q
                })
            })
            .collect();
    }
    out
}

fn flat(idx: &[usize], dims: &[usize]) -> usize {
    idx.iter().zip(dims).fold(0, |a, (&i, &n)| a * n + i)
}

/// The textbook definition (ONNX Conv on one sample).
fn naive_conv(s: &ConvSpec, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let out = out_sizes(s);
    let (cig, cog) = (s.in_channels / s.group, s.out_channels / s.group);
    let (pin, pk, pout): (usize, usize, usize) = (
        s.in_spatial.iter().product(),
        s.kernel.iter().product(),
        out.iter().product(),
    );
    let mut y = vec![0.0; s.out_channels * pout];
    for co in 0..s.out_channels {
        let gi = co / cog;
        for o in indices(&out) {
            let mut acc = b.map_or(0.0, |b| b[co]);
            for cl in 0..cig {
                let ci = gi * cig + cl;
                for k in indices(&s.kernel) {
                    let pos: Vec<i64> = (0..o.len())
                        .map(|d| {
                            (o[d] * s.strides[d] + k[d] * s.dilations[d]) as i64
                                - s.pads_begin[d] as i64
                        })
                        .collect();
                    if pos
                        .iter()
                        .zip(&s.in_spatial)
                        .any(|(&p, &n)| p < 0 || p >= n as i64)
                    {
                        continue;
                    }
                    let pos: Vec<usize> = pos.iter().map(|&p| p as usize).collect();
                    acc += w[(co * cig + cl) * pk + flat(&k, &s.kernel)]
                        * x[ci * pin + flat(&pos, &s.in_spatial)];
                }
            }
            y[co * pout + flat(&o, &out)] = acc;
        }
    }
    y
}

#[derive(Debug, Clone)]
struct Case {
    spec: ConvSpec,
    /// Which of x and w are variables: 0 both, 1 x only, 2 w only.
    mode: u8,
    /// 0 no bias, 1 variable bias, 2 constant bias.
    bias: u8,
    /// Fraction of zeros in the output weights r (in 1/20).
    zeros: u32,
    seed: u64,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let axis = (
        1usize..=3,
        1usize..=2,
        1usize..=3,
        0usize..=2,
        0usize..=2,
        0usize..=4,
    );
    (
        1usize..=2,
        prop::collection::vec(axis, 2),
        1usize..=3,
        1usize..=4,
        1usize..=8,
        0u8..3,
        0u8..3,
        prop::sample::select(vec![0u32, 10, 19]),
        any::<u64>(),
    )
        .prop_map(|(n, axes, group, cig, cog, mode, bias, zeros, seed)| {
            let axes = &axes[..n];
            let mut spec = ConvSpec {
                in_channels: group * cig,
                out_channels: group * cog,
                in_spatial: vec![],
                kernel: vec![],
                strides: vec![],
                pads_begin: vec![],
                pads_end: vec![],
                dilations: vec![],
                group,
            };
            for &(k, d, s, pb, pe, extra) in axes {
                let span = d * (k - 1) + 1;
                spec.kernel.push(k);
                spec.dilations.push(d);
                spec.strides.push(s);
                spec.pads_begin.push(pb);
                spec.pads_end.push(pe);
                spec.in_spatial
                    .push(span.saturating_sub(pb + pe).max(1) + extra);
            }
            Case {
                spec,
                mode,
                bias,
                zeros,
                seed,
            }
        })
}

/// The graph of a case: `y = conv(x, w) + b`, `|y|` (so that the tangent sweep reports `J u`
/// as the switch tangents), output `f = Σ r_k y_k`.
struct Built {
    g: Graph,
    y: NodeId,
    point: Vec<f64>,
    r: Vec<f64>,
    x: Vec<f64>,
    w: Vec<f64>,
    b: Option<Vec<f64>>,
}

fn build(c: &Case) -> Built {
    let s = &c.spec;
    let mut rng = Lcg(c.seed);
    let pin: usize = s.in_spatial.iter().product();
    let pk: usize = s.kernel.iter().product();
    let lx = s.in_channels * pin;
    let lw = s.out_channels * (s.in_channels / s.group) * pk;
    let x = rng.vec(lx);
    let w = rng.vec(lw);
    let b = (c.bias != 0).then(|| rng.vec(s.out_channels));
    let (xv, wv, bv) = (c.mode != 2, c.mode != 1, c.bias == 1);
    let n = if xv { lx } else { 0 } + if wv { lw } else { 0 } + if bv { s.out_channels } else { 0 };
    let mut g = Graph::new(n);
    let mut point = vec![];
    let mut operand = |g: &mut Graph, is_var: bool, v: &[f64]| {
        if is_var {
            let id = g.var(point.len(), v.len()).unwrap();
            point.extend_from_slice(v);
            id
        } else {
            g.constant(v.to_vec()).unwrap()
        }
    };
    let xn = operand(&mut g, xv, &x);
    let wn = operand(&mut g, wv, &w);
    let bn = b.as_ref().map(|b| operand(&mut g, bv, b));
    let y = g.conv(xn, wn, bn, s.clone()).unwrap();
    // hash-consing: the same conv again is the same node
    assert_eq!(g.conv(xn, wn, bn, s.clone()).unwrap(), y);
    g.abs(y, Role::Abs, Origin::Internal);
    let ly = g.len(y);
    let r: Vec<f64> = (0..ly)
        .map(|k| {
            let t = rng.next();
            // a deterministic share of zeros (exercises the sparse adjoint path)
            if (k as u32 * 7 + c.seed as u32 % 20) % 20 < c.zeros {
                0.0
            } else {
                t
            }
        })
        .collect();
    let rn = g.constant(if r.iter().all(|&t| t == 0.0) {
        vec![1.0; ly]
    } else {
        r.clone()
    });
    let rn = rn.unwrap();
    let r = g.const_value(rn).unwrap().to_vec();
    let ry = g.mul(rn, y).unwrap();
    let f = g.sum(ry);
    g.set_output(f).unwrap();
    Built {
        g,
        y,
        point,
        r,
        x,
        w,
        b,
    }
}

fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-10 * (1.0 + scale)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

proptest! {
    #![proptest_config(common::proptest_config(400, 0x5eed_c0de, "proptest-regressions/conv.txt"))]

    /// Forward against the naive loop; tangent against central differences (exact up to
    /// rounding: the map is bilinear); adjoint (dense seed at the output, sparse seeds at
    /// single outputs) against ⟨J u, r⟩ = ⟨u, Jᵀ r⟩ with u over x, w and the bias jointly.
    #[test]
    fn conv_forward_tangent_adjoint(c in case_strategy()) {
        let bt = build(&c);
        let g = &bt.g;
        prop_assert_eq!(g.len(bt.y), c.spec.out_channels * out_sizes(&c.spec).iter().product::<usize>());
        prop_assert_eq!(c.spec.out_spatial().unwrap(), out_sizes(&c.spec));
        // abs-affine iff one of x, w is constant (bilinear elemental)
        prop_assert_eq!(g.node(bt.y).affine, c.mode != 0);
        let ev = eval::evaluate(g, &bt.point).unwrap();
        let y = ev.value(g, bt.y).to_vec();
        let want = naive_conv(&c.spec, &bt.x, &bt.w, bt.b.as_deref());
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs())) * 10.0;
        for (k, (a, b)) in y.iter().zip(&want).enumerate() {
            prop_assert!(close(*a, *b, scale), "forward y[{}] = {} vs naive {}", k, a, b);
        }
        // tangent along a random u
        let mut rng = Lcg(c.seed ^ 0x9e37_79b9);
        let u = rng.vec(g.n_vars());
        let rules = vec![AbsRule::Factor(1.0); g.n_switches()];
        let t = eval::tangent(g, &ev, &u, &rules).unwrap();
        let h = 0.25;
        let at = |sgn: f64| {
            let p: Vec<f64> = bt.point.iter().zip(&u).map(|(p, d)| p + sgn * h * d).collect();
            eval::evaluate(g, &p).unwrap().value(g, bt.y).to_vec()
        };
        let (yp, ym) = (at(1.0), at(-1.0));
        for k in 0..y.len() {
            let fd = (yp[k] - ym[k]) / (2.0 * h);
            prop_assert!(close(t.dz[k], fd, scale), "tangent {} vs central difference {} at {}", t.dz[k], fd, k);
        }
        prop_assert!(close(t.dy, dot(&bt.r, &t.dz), scale));
        // adjoint: dense seed r at the output
        let mut sw = ReverseSweeper::new(g, &ev);
        let a = sw.sweep(Seed::Output, &rules).unwrap();
        prop_assert!(close(dot(&a.grad, &u), dot(&bt.r, &t.dz), scale * 10.0),
            "<u, J^T r> = {} but <J u, r> = {}", dot(&a.grad, &u), dot(&bt.r, &t.dz));
        // adjoint: one output element (row of J), which takes the sparse path on large outputs
        let ly = y.len();
        for k in [0, ly / 2, ly - 1] {
            let a = sw.sweep(Seed::Switch(SwitchId(k)), &rules).unwrap();
            prop_assert!(close(dot(&a.grad, &u), t.dz[k], scale),
                "row {}: <u, J^T e> = {} but (J u) = {}", k, dot(&a.grad, &u), t.dz[k]);
        }
    }
}

#[test]
fn out_spatial_formula_and_errors() {
    let mut s = ConvSpec::new_2d(6, 16, [12, 12], [5, 5]);
    assert_eq!(s.out_spatial().unwrap(), vec![8, 8]);
    s.strides = vec![2, 3];
    s.pads_begin = vec![1, 0];
    s.pads_end = vec![2, 0];
    s.dilations = vec![2, 1];
    // (12 + 3 − 8 − 1)/2 + 1 = 4, (12 − 4 − 1)/3 + 1 = 3
    assert_eq!(s.out_spatial().unwrap(), vec![4, 3]);
    let msg = |s: &ConvSpec| match s.out_spatial() {
        Err(GraphError::Shape { place, msg }) => format!("{place}: {msg}"),
        Ok(v) => panic!("accepted {s:?} with output {v:?}"),
    };
    let base = ConvSpec::new_2d(4, 6, [5, 5], [3, 3]);
    let mut bad = base.clone();
    bad.group = 4;
    assert_eq!(
        msg(&bad),
        "convolution: group 4 does not divide out_channels = 6"
    );
    bad.group = 3;
    assert_eq!(
        msg(&bad),
        "convolution: group 3 does not divide in_channels = 4"
    );
    bad = base.clone();
    bad.group = 0;
    assert_eq!(msg(&bad), "convolution: group is 0");
    bad = base.clone();
    bad.strides = vec![1, 0];
    assert_eq!(msg(&bad), "convolution: strides[1] is 0");
    bad = base.clone();
    bad.dilations = vec![0, 1];
    assert_eq!(msg(&bad), "convolution: dilations[0] is 0");
    bad = base.clone();
    bad.in_spatial = vec![5, 0];
    assert_eq!(msg(&bad), "convolution: in_spatial[1] is 0");
    bad = base.clone();
    bad.kernel = vec![3];
    assert_eq!(
        msg(&bad),
        "convolution: kernel has 1 entries but the input has 2 spatial dimensions"
    );
    bad = base.clone();
    bad.kernel = vec![3, 6];
    assert!(msg(&bad).contains("kernel spans 6 positions along spatial axis 1"));
    bad.pads_end = vec![0, 1];
    assert_eq!(bad.out_spatial().unwrap(), vec![3, 1]);
    bad = base.clone();
    bad.dilations = vec![3, 1];
    assert!(msg(&bad).contains("spans 7 positions along spatial axis 0"));
    bad = base.clone();
    bad.in_spatial = vec![];
    bad.kernel = vec![];
    assert!(msg(&bad).contains("1 to 3 spatial dimensions, got 0"));
    bad = base;
    bad.in_spatial = vec![usize::MAX, 3];
    bad.pads_end = vec![1, 0];
    assert!(msg(&bad).contains("overflow"));
}

#[test]
fn graph_conv_checks_lengths_at_the_origin() {
    let mut g = Graph::new(30);
    g.set_origin(Origin::OnnxNode {
        sample: 0,
        name: "conv1".into(),
    });
    let spec = ConvSpec::new_2d(2, 3, [3, 4], [2, 2]);
    let x = g.var(0, 24).unwrap();
    let w = g.constant(vec![0.5; 24]).unwrap();
    let b = g.constant(vec![0.0; 3]).unwrap();
    let y = g.conv(x, w, Some(b), spec.clone()).unwrap();
    assert_eq!(g.len(y), 3 * 2 * 3);
    let x_bad = g.var(0, 23).unwrap();
    assert_eq!(
        g.conv(x_bad, w, None, spec.clone())
            .unwrap_err()
            .to_string(),
        "node 'conv1' (sample 0): convolution input has 23 elements, the geometry 2×3×4 needs 24"
    );
    let w_bad = g.constant(vec![0.5; 12]).unwrap();
    assert_eq!(
        g.conv(x, w_bad, None, spec.clone()).unwrap_err().to_string(),
        "node 'conv1' (sample 0): convolution weight has 12 elements, the geometry 3×2×2×2 needs 24"
    );
    let b_bad = g.constant(vec![0.0; 2]).unwrap();
    assert_eq!(
        g.conv(x, w, Some(b_bad), spec.clone()).unwrap_err().to_string(),
        "node 'conv1' (sample 0): convolution bias has 2 elements, expected one per output channel (3)"
    );
    let mut s = spec;
    s.group = 2;
    assert_eq!(
        g.conv(x, w, None, s).unwrap_err().to_string(),
        "node 'conv1' (sample 0): convolution: group 2 does not divide out_channels = 3"
    );
}

/// x and w the same node: conv(x, x) with a kernel as long as the input is ‖x‖².
#[test]
fn conv_of_a_node_with_itself() {
    let mut g = Graph::new(3);
    let x = g.var(0, 3).unwrap();
    let spec = ConvSpec {
        in_channels: 1,
        out_channels: 1,
        in_spatial: vec![3],
        kernel: vec![3],
        strides: vec![1],
        pads_begin: vec![0],
        pads_end: vec![0],
        dilations: vec![1],
        group: 1,
    };
    let y = g.conv(x, x, None, spec).unwrap();
    g.set_output(y).unwrap();
    assert!(!g.node(y).affine);
    let p = [1.0, -2.0, 0.5];
    let ev = eval::evaluate(&g, &p).unwrap();
    assert_eq!(ev.value(&g, y), &[5.25]);
    let a = ReverseSweeper::new(&g, &ev)
        .sweep(Seed::Output, &[])
        .unwrap();
    assert_eq!(a.grad, vec![2.0, -4.0, 1.0]);
    let t = eval::tangent(&g, &ev, &[1.0, 0.0, 0.0], &[]).unwrap();
    assert_eq!(t.dy, 2.0);
}

/// The gradients of f at random points very close to x̂: inside one piece each (a kink is hit
/// with probability 0), so AD there is the piece's gradient under any convention.
fn sampled_piece_gradients(p: &Problem, x: &[f64], samples: usize) -> Vec<Vec<f64>> {
    let g = &p.graph;
    let mut rng = Lcg(7);
    let mut out: Vec<Vec<f64>> = vec![];
    for _ in 0..samples {
        let q: Vec<f64> = x.iter().map(|v| v + 1e-6 * rng.next()).collect();
        let ev = eval::evaluate(g, &q).unwrap();
        let st = eval::switch_states(g, &ev, eval::TAU_ACT);
        assert!(st.iter().all(|s| s.z != 0.0));
        let v = eval::ad(g, &ev, &st, &Convention::pytorch()).unwrap();
        if !out
            .iter()
            .any(|u| u.iter().zip(&v).all(|(a, b)| (a - b).abs() < 1e-9))
        {
            out.push(v);
        }
    }
    out
}

/// conv (two output channels with opposite kernels) → relu → Σ relu(channel 0) − Σ
/// relu(channel 1): this is the linear map Σ conv(x, w₀), with all 8 switches on their kinks at
/// x̂ = 0. PyTorch's relu′(0) = 0 gives 0, not the slope: OUT. σ̃ = 0 gives the slope: IN.
#[test]
fn verify_conv_relu_linear_in_disguise() {
    let spec = ConvSpec::new_2d(1, 2, [3, 3], [2, 2]);
    let w0 = [1.0, 2.0, -1.0, 0.5];
    let w: Vec<f64> = w0
        .iter()
        .chain(w0.iter())
        .enumerate()
        .map(|(i, &v)| if i < 4 { v } else { -v })
        .collect();
    let mut g = Graph::new(9);
    let x = g.var(0, 9).unwrap();
    let wn = g.constant(w).unwrap();
    let y = g.conv(x, wn, None, spec).unwrap();
    let r = lower::relu(&mut g, y, Origin::Internal).unwrap();
    let a = g.gather(r, (0..4).collect()).unwrap();
    let b = g.gather(r, (4..8).collect()).unwrap();
    let (sa, sb) = (g.sum(a), g.sum(b));
    let f = g.sub(sa, sb).unwrap();
    g.set_output(f).unwrap();
    let p = Problem {
        graph: g,
        var_names: (0..9).map(|i| format!("x{i}")).collect(),
        point: None,
    };
    let xh = vec![0.0; 9];
    // brute force: the true slope Σ_windows w₀ (f is linear), and the sampled pieces agree
    let mut slope = vec![0.0; 9];
    for (o0, o1) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        for (k, &wk) in w0.iter().enumerate() {
            slope[(o0 + k / 2) * 3 + o1 + k % 2] += wk;
        }
    }
    let pieces = sampled_piece_gradients(&p, &xh, 200);
    assert_eq!(pieces.len(), 1);
    assert!(pieces[0]
        .iter()
        .zip(&slope)
        .all(|(a, b)| (a - b).abs() < 1e-12));
    let rt = kinkcheck::verify(&p, &xh, &common::verify_options(Convention::pytorch())).unwrap();
    assert_eq!(rt.active.len(), 8);
    assert_eq!(rt.gradient, vec![0.0; 9]);
    assert_eq!(rt.verdict, Verdict::Out);
    let rs = kinkcheck::verify(
        &p,
        &xh,
        &common::verify_options(Convention::sigma(0.0).unwrap()),
    )
    .unwrap();
    assert!(rs
        .gradient
        .iter()
        .zip(&slope)
        .all(|(a, b)| (a - b).abs() < 1e-12));
    assert_eq!(rs.verdict, Verdict::In);
}

/// 1-d conv with kernel (1, −1) → relu → sum at x̂ = (1, 1, 1, 0): switches x0 − x1 and
/// x1 − x2 are on their kinks with independent rows, so all four pieces are realized and
/// PyTorch's vector (both relu′ = 0) is one of them: IN. An explicit vector outside the hull
/// of the sampled pieces is OUT.
#[test]
fn verify_conv_relu_independent_kinks() {
    let spec = ConvSpec {
        in_channels: 1,
        out_channels: 1,
        in_spatial: vec![4],
        kernel: vec![2],
        strides: vec![1],
        pads_begin: vec![0],
        pads_end: vec![0],
        dilations: vec![1],
        group: 1,
    };
    let mut g = Graph::new(4);
    let x = g.var(0, 4).unwrap();
    let wn = g.constant(vec![1.0, -1.0]).unwrap();
    let y = g.conv(x, wn, None, spec).unwrap();
    let r = lower::relu(&mut g, y, Origin::Internal).unwrap();
    let f = g.sum(r);
    g.set_output(f).unwrap();
    let p = Problem {
        graph: g,
        var_names: (0..4).map(|i| format!("x{i}")).collect(),
        point: None,
    };
    let xh = vec![1.0, 1.0, 1.0, 0.0];
    let pieces = sampled_piece_gradients(&p, &xh, 400);
    assert_eq!(pieces.len(), 4, "{pieces:?}");
    let rt = kinkcheck::verify(&p, &xh, &common::verify_options(Convention::pytorch())).unwrap();
    assert_eq!(rt.active.len(), 2);
    assert_eq!(rt.gradient, vec![0.0, 0.0, 1.0, -1.0]);
    assert!(pieces.iter().any(|q| q == &rt.gradient));
    assert_eq!(rt.verdict, Verdict::In);
    // (2, −1, 0, −1)? no: every piece has entries summing to 0 and last entry −1; this one
    // has x0-slope 2 > 1, outside the hull
    let mut opts = common::verify_options(Convention::pytorch());
    opts.gradient = Some(vec![2.0, -2.0, 1.0, -1.0]);
    let ro = kinkcheck::verify(&p, &xh, &opts).unwrap();
    assert_eq!(ro.verdict, Verdict::Out);
}

/// The near-active band's scale of a conv output is Σ |w|·|x| + |b| over its window (the
/// magnitudes of the terms), so a cancellation to a tiny nonzero is recognised as near a kink.
#[test]
fn conv_switch_scale_is_the_sum_of_term_magnitudes() {
    let spec = ConvSpec {
        in_channels: 1,
        out_channels: 1,
        in_spatial: vec![3],
        kernel: vec![2],
        strides: vec![1],
        pads_begin: vec![0],
        pads_end: vec![0],
        dilations: vec![1],
        group: 1,
    };
    let mut g = Graph::new(3);
    let x = g.var(0, 3).unwrap();
    let w = g.constant(vec![2.0, -1.0]).unwrap();
    let b = g.constant(vec![-0.5]).unwrap();
    let y = g.conv(x, w, Some(b), spec).unwrap();
    let u = g.abs(y, Role::Abs, Origin::Internal);
    let f = g.sum(u);
    g.set_output(f).unwrap();
    // y0 = 2·0.75 − 1.0 − 0.5 = 0 exactly; y1 = 2·1.0 − (1.5 + 1e-15) − 0.5 ≈ −1e-15
    let ev = eval::evaluate(&g, &[0.75, 1.0, 1.5 + 1e-15]).unwrap();
    let st = eval::switch_states(&g, &ev, 1e-12);
    assert_eq!(st[0].z, 0.0);
    assert_eq!(st[0].scale, 2.0 * 0.75 + 1.0 + 0.5);
    assert_eq!(st[0].activity, eval::Activity::Active);
    assert!((st[1].scale - (2.0 + 1.5 + 0.5)).abs() < 1e-12);
    assert!(st[1].z != 0.0 && st[1].z.abs() < 1e-14);
    assert_eq!(st[1].activity, eval::Activity::Near);
}
