//! Convolution kernels (`kinkcheck::tensor`) per sample against nalgebra matrix products of the
//! same shapes (the im2col matrix times the weight matrix), as for dense layers:
//!
//! * `lenet.conv1`: 1×28×28 → 6@5×5 (6×24×24);
//! * `lenet.conv2`: 6×12×12 → 16@5×5 (16×8×8);
//! * `res.3x3`: 16×32×32 → 16@3×3, pad 1 (16×32×32).
//!
//! Variants: forward (`conv_forward` vs one product `Y = W·X`), forward+backward with adjoints
//! to x and w (`conv_forward` + `conv_adjoint` on a dense ȳ vs the three products `W·X`,
//! `Ȳ·Xᵀ`, `Wᵀ·Ȳ`, im2col/col2im not counted for nalgebra), and the adjoint of one output
//! element (a reverse sweep seeded at one switch). The table at the end gives ns per
//! multiply-add (forward: C_out·P·C_in·|k| of them, forward+backward: three times as many) and
//! the ratio kinkcheck / nalgebra.

mod common;

use common::{median_time, Lcg};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kinkcheck::graph::ConvSpec;
use kinkcheck::tensor::{conv_adjoint, conv_forward, ConvGeometry};
use nalgebra::DMatrix;
use std::hint::black_box;
use std::time::Duration;

fn shapes() -> Vec<(&'static str, ConvSpec)> {
    let mut res = ConvSpec::new_2d(16, 16, [32, 32], [3, 3]);
    res.pads_begin = vec![1, 1];
    res.pads_end = vec![1, 1];
    vec![
        ("lenet.conv1", ConvSpec::new_2d(1, 6, [28, 28], [5, 5])),
        ("lenet.conv2", ConvSpec::new_2d(6, 16, [12, 12], [5, 5])),
        ("res.3x3", res),
    ]
}

struct Bufs {
    geo: ConvGeometry,
    x: Vec<f64>,
    w: Vec<f64>,
    b: Vec<f64>,
    y: Vec<f64>,
    ybar: Vec<f64>,
    xbar: Vec<f64>,
    wbar: Vec<f64>,
    one: Vec<f64>,
    // nalgebra: W (Cout×K), Wᵀ, X (K×P), Xᵀ, Ȳ (Cout×P), outputs
    nw: DMatrix<f64>,
    nwt: DMatrix<f64>,
    nx: DMatrix<f64>,
    nxt: DMatrix<f64>,
    nybar: DMatrix<f64>,
    ny: DMatrix<f64>,
    nwbar: DMatrix<f64>,
    nxbar: DMatrix<f64>,
}

fn bufs(spec: &ConvSpec) -> Bufs {
    let geo = ConvGeometry::new(spec).unwrap();
    let mut rng = Lcg(42);
    let mut v = |n: usize| (0..n).map(|_| rng.unit()).collect::<Vec<f64>>();
    let (cout, p) = (spec.out_channels, geo.y_len() / spec.out_channels);
    let k = geo.w_len() / cout;
    let mut one = vec![0.0; geo.y_len()];
    one[geo.y_len() / 2 + 3] = 1.0;
    Bufs {
        x: v(geo.x_len()),
        w: v(geo.w_len()),
        b: v(cout),
        y: vec![0.0; geo.y_len()],
        ybar: v(geo.y_len()),
        xbar: vec![0.0; geo.x_len()],
        wbar: vec![0.0; geo.w_len()],
        one,
        nw: DMatrix::from_vec(cout, k, v(cout * k)),
        nwt: DMatrix::from_vec(k, cout, v(cout * k)),
        nx: DMatrix::from_vec(k, p, v(k * p)),
        nxt: DMatrix::from_vec(p, k, v(k * p)),
        nybar: DMatrix::from_vec(cout, p, v(cout * p)),
        ny: DMatrix::zeros(cout, p),
        nwbar: DMatrix::zeros(cout, k),
        nxbar: DMatrix::zeros(k, p),
        geo,
    }
}

fn forward(s: &mut Bufs) {
    conv_forward(&s.geo, &s.x, &s.w, Some(&s.b), &mut s.y);
    black_box(&s.y);
}

fn forward_backward(s: &mut Bufs) {
    conv_forward(&s.geo, &s.x, &s.w, Some(&s.b), &mut s.y);
    conv_adjoint(
        &s.geo,
        &s.x,
        &s.w,
        &s.ybar,
        Some(&mut s.xbar),
        Some(&mut s.wbar),
        None,
    );
    black_box((&s.y, &s.xbar, &s.wbar));
}

fn one_output_adjoint(s: &mut Bufs) {
    conv_adjoint(
        &s.geo,
        &s.x,
        &s.w,
        &s.one,
        Some(&mut s.xbar),
        Some(&mut s.wbar),
        None,
    );
    black_box((&s.xbar, &s.wbar));
}

fn na_forward(s: &mut Bufs) {
    s.ny.gemm(1.0, &s.nw, &s.nx, 0.0);
    black_box(&s.ny);
}

fn na_forward_backward(s: &mut Bufs) {
    s.ny.gemm(1.0, &s.nw, &s.nx, 0.0);
    s.nwbar.gemm(1.0, &s.nybar, &s.nxt, 0.0);
    s.nxbar.gemm(1.0, &s.nwt, &s.nybar, 0.0);
    black_box((&s.ny, &s.nwbar, &s.nxbar));
}

type Variant = (&'static str, fn(&mut Bufs));

const VARIANTS: [Variant; 5] = [
    ("forward", forward),
    ("nalgebra.forward", na_forward),
    ("fwd+bwd", forward_backward),
    ("nalgebra.fwd+bwd", na_forward_backward),
    ("adjoint.one_output", one_output_adjoint),
];

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800));
    let mut table = vec![];
    for (name, spec) in shapes() {
        let mut s = bufs(&spec);
        for (v, f) in VARIANTS {
            group.bench_with_input(BenchmarkId::new(v, name), &(), |b, _| b.iter(|| f(&mut s)));
        }
        let t: Vec<f64> = VARIANTS
            .iter()
            .map(|(_, f)| median_time(|| f(&mut s), 20, 400, 0.5))
            .collect();
        table.push((name, s.geo.macs(), t));
    }
    group.finish();
    eprintln!(
        "\n{:<12} {:>8} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>9}",
        "shape", "MACs", "fwd", "nalg fwd", "ratio", "fwd+bwd", "nalg f+b", "ratio", "1 output"
    );
    for (name, macs, t) in table {
        let per = |t: f64, k: f64| t * 1e9 / (k * macs as f64);
        eprintln!(
            "{name:<12} {macs:>8} | {:>9.3} {:>9.3} {:>6.2} | {:>9.3} {:>9.3} {:>6.2} | {:>7.1}µs",
            per(t[0], 1.0),
            per(t[1], 1.0),
            t[0] / t[1],
            per(t[2], 3.0),
            per(t[3], 3.0),
            t[2] / t[3],
            t[4] * 1e6
        );
    }
    eprintln!(
        "ns per multiply-add, one sample (fwd+bwd: 3 products); ratio = kinkcheck / nalgebra; \
         1 output = adjoint to x and w of a single output element"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
