//! Analysis time against graph size, with a plot.
//!
//! ```sh
//! cargo run --release --example size_sweep            # 10^3 … 10^6 nodes (about 20 s)
//! cargo run --release --example size_sweep -- --large # also 3·10^6 and 10^7 nodes (~1 min, ~2 GB)
//! cargo run --release --example size_sweep -- --quick # smoke run, small sizes, into target/
//! cargo run --release --example size_sweep -- --out DIR
//! ```
//!
//! For graphs of 10^3 … 10^6 nodes with a fixed number |α| ∈ {8, 32} of active kinks (the
//! `kinked_chain` program of `benches/common/mod.rs`), it measures the median time of one
//! forward+backward pass and of the analysis `verify` runs before the LP checker (reduced
//! active data, switch structure, reduced space, analyzer), fits the log-log slope of the
//! analysis time over 10^3 … 10^6 nodes, prints the table, and writes `target/size_sweep.csv`
//! and the plot `docs/size_sweep.svg` (both into DIR with `--out DIR`; `--quick` writes into
//! `target/` unless `--out` is given). It then measures the throughput of dense layers (ns per
//! multiply-add of evaluation plus backward sweep, beside nalgebra's gemv/ger on the same
//! shapes) and the whole `verify` of the 784-256-256-10 MLP at batch 64.

#[path = "../benches/common/mod.rs"]
mod common;

use common::{
    analysis, kinked_chain, loglog_fit, median_time, mlp_macs, pass, planted_mlp, tanh_mlp,
};
use kinkcheck::eval::{self, ReverseSweeper, Seed};
use kinkcheck::{Convention, VerifyOptions};
use nalgebra::{DMatrix, DVector};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::PathBuf;

const KINKS: [usize; 2] = [8, 32];

struct Args {
    csv: PathBuf,
    svg: PathBuf,
    large: bool,
    quick: bool,
}

fn args() -> Result<Args, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (mut out, mut large, mut quick) = (None, false, false);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(it.next().ok_or("--out needs a directory")?)),
            "--large" => large = true,
            "--quick" => quick = true,
            "-h" | "--help" => {
                return Err("usage: size_sweep [--out DIR] [--large] [--quick]".into())
            }
            _ => return Err(format!("unknown argument '{a}' (try --help)")),
        }
    }
    let (csv_dir, svg_dir) = match out {
        Some(d) => (d.clone(), d),
        None if quick => (root.join("target"), root.join("target")),
        None => (root.join("target"), root.join("docs")),
    };
    Ok(Args {
        csv: csv_dir.join("size_sweep.csv"),
        svg: svg_dir.join("size_sweep.svg"),
        large,
        quick,
    })
}

/// One measured point of the sweep.
struct Row {
    nodes: usize,
    k: usize,
    pass: f64,
    analysis: f64,
}

fn sweep(sizes: &[usize], quick: bool) -> Vec<Row> {
    let conv = Convention::pytorch();
    let (min, max, budget) = if quick { (1, 3, 0.1) } else { (3, 15, 1.5) };
    // Warm up (CPU clock, allocator, caches) so that the first, smallest sizes are not inflated.
    let (g, x) = kinked_chain(sizes[0], KINKS[0]);
    median_time(
        || drop(pass(&g, &x)),
        1,
        100_000,
        if quick { 0.05 } else { 0.5 },
    );
    let mut rows = vec![];
    for &size in sizes {
        for &k in &KINKS {
            let (g, x) = kinked_chain(size, k);
            let ev = eval::evaluate(&g, &x).unwrap();
            let states = eval::switch_states(&g, &ev, eval::TAU_ACT);
            let a = analysis(&g, &ev, &states, &conv);
            assert!(a.guaranteed, "LIKQ holds by construction: {}", a.reason);
            assert_eq!(states.iter().filter(|s| s.z == 0.0).count(), k);
            let tp = median_time(|| drop(pass(&g, &x)), min, max, budget);
            let ta = median_time(|| drop(analysis(&g, &ev, &states, &conv)), min, max, budget);
            eprintln!(
                "  {:>9} nodes, |α| = {k:>2}: pass {:>9.3} ms, analysis {:>9.3} ms",
                g.nodes().len(),
                tp * 1e3,
                ta * 1e3
            );
            rows.push(Row {
                nodes: g.nodes().len(),
                k,
                pass: tp,
                analysis: ta,
            });
        }
    }
    rows
}

/// Fitted log-log slopes of (analysis, pass) time over 10^3 … 10^6 nodes, for |α| = k.
fn slopes(rows: &[Row], k: usize) -> (f64, f64) {
    let pts = |f: fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.k == k && (1_000..=1_000_000).contains(&r.nodes))
            .map(|r| (r.nodes as f64, f(r)))
            .collect()
    };
    (
        loglog_fit(&pts(|r| r.analysis)).0,
        loglog_fit(&pts(|r| r.pass)).0,
    )
}

fn write_csv(path: &PathBuf, rows: &[Row]) -> std::io::Result<()> {
    let mut s = String::from("nodes,active_kinks,pass_ms,analysis_ms,ratio,budget_passes\n");
    for r in rows {
        writeln!(
            s,
            "{},{},{:.6},{:.6},{:.3},{}",
            r.nodes,
            r.k,
            r.pass * 1e3,
            r.analysis * 1e3,
            r.analysis / r.pass,
            r.k + 3
        )
        .unwrap();
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, s)
}

/// "10³" for powers of ten, else the number itself.
fn tick(v: f64) -> String {
    let e = v.log10().round();
    if (v / 10f64.powf(e) - 1.0).abs() < 1e-9 {
        let sup: String = format!("{}", e as i64)
            .chars()
            .map(|c| match c {
                '-' => '⁻',
                d => ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'][d as usize - '0' as usize],
            })
            .collect();
        format!("10{sup}")
    } else {
        format!("{v}")
    }
}

fn plot(path: &PathBuf, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let nmin = rows.iter().map(|r| r.nodes).min().unwrap() as f64;
    let nmax = rows.iter().map(|r| r.nodes).max().unwrap() as f64;
    let tmin = rows.iter().map(|r| r.pass).fold(f64::MAX, f64::min) * 1e3;
    let tmax = rows
        .iter()
        .map(|r| r.pass * (r.k + 3) as f64)
        .fold(0.0, f64::max)
        * 1e3;
    let xr = nmin / 1.6..nmax * 1.6;
    let yr = 10f64.powf((tmin.log10() - 0.1).floor())..10f64.powf((tmax.log10() + 0.1).ceil());

    let root = SVGBackend::new(path, (900, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "kinkcheck: analysis time against graph size (log-log)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(xr.log_scale(), yr.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("graph nodes")
        .y_desc("median time per call (ms)")
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .draw()?;

    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
    let grey = RGBColor(90, 90, 90);
    for (i, &k) in KINKS.iter().enumerate() {
        let c = colors[i];
        let series: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.k == k)
            .map(|r| (r.nodes as f64, r.analysis * 1e3))
            .collect();
        let (slope, _) = slopes(rows, k);
        chart
            .draw_series(LineSeries::new(series.clone(), c.stroke_width(2)))?
            .label(format!(
                "analysis, |α| = {k}: fitted slope {slope:.2} (10³…10⁶ nodes)"
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2)));
        chart.draw_series(series.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        let budget: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.k == k)
            .map(|r| (r.nodes as f64, r.pass * (k + 3) as f64 * 1e3))
            .collect();
        chart
            .draw_series(DashedLineSeries::new(budget, 6, 5, c.stroke_width(1)))?
            .label(format!("target: (|α| + 3) × pass = {} passes", k + 3))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (7, 0)], c.stroke_width(1))
                    + PathElement::new(vec![(12, 0), (19, 0)], c.stroke_width(1))
            });
    }
    let pass: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.k == KINKS[0])
        .map(|r| (r.nodes as f64, r.pass * 1e3))
        .collect();
    let (_, pslope) = slopes(rows, KINKS[0]);
    chart
        .draw_series(LineSeries::new(pass.clone(), grey.stroke_width(2)))?
        .label(format!(
            "one forward+backward pass (for scale): slope {pslope:.2}"
        ))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(2)));
    chart.draw_series(pass.iter().map(|&(x, y)| {
        Rectangle::new([(x / 1.06, y / 1.12), (x * 1.06, y * 1.12)], grey.filled())
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// One forward+backward pass of a tanh MLP with cross-entropy loss wrt params, written with
/// nalgebra's gemv / gemv_tr / ger: the matrix-vector reference for the same multiply-adds.
struct Reference {
    w: Vec<DMatrix<f64>>,
    b: Vec<DVector<f64>>,
    xs: Vec<DVector<f64>>,
}

impl Reference {
    fn new(widths: &[usize], batch: usize) -> Self {
        let mut r = common::Lcg(99);
        let w = widths
            .windows(2)
            .map(|io| {
                let s = (3.0 / io[0] as f64).sqrt();
                DMatrix::from_fn(io[1], io[0], |_, _| s * r.unit())
            })
            .collect();
        let b = widths[1..]
            .iter()
            .map(|&o| DVector::from_fn(o, |_, _| 0.1 * r.unit()))
            .collect();
        let xs = (0..batch)
            .map(|_| DVector::from_fn(widths[0], |_, _| 0.5 * (r.unit() + 1.0)))
            .collect();
        Reference { w, b, xs }
    }

    fn pass(&self) -> Vec<DMatrix<f64>> {
        let depth = self.w.len();
        let mut dw: Vec<DMatrix<f64>> = self
            .w
            .iter()
            .map(|w| DMatrix::zeros(w.nrows(), w.ncols()))
            .collect();
        for (s, x) in self.xs.iter().enumerate() {
            let mut h = vec![x.clone()];
            for l in 0..depth {
                let mut a = self.b[l].clone();
                a.gemv(1.0, &self.w[l], &h[l], 1.0);
                if l + 1 < depth {
                    a.apply(|v| *v = v.tanh());
                }
                h.push(a);
            }
            let out = &h[depth];
            let m = out.max();
            let e = out.map(|v| (v - m).exp());
            let mut delta = &e / e.sum();
            delta[s % out.len()] -= 1.0;
            for l in (0..depth).rev() {
                dw[l].ger(1.0, &delta, &h[l], 1.0);
                if l > 0 {
                    let mut d = DVector::zeros(h[l].len());
                    d.gemv_tr(1.0, &self.w[l], &delta, 0.0);
                    delta = d.zip_map(&h[l], |g, t| g * (1.0 - t * t));
                }
            }
        }
        dw
    }
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut sizes = if args.quick {
        vec![1_000, 10_000, 100_000]
    } else {
        vec![1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]
    };
    if args.large {
        sizes.extend([3_000_000, 10_000_000]);
    }

    eprintln!("size sweep (kinked chain, PyTorch convention):");
    let rows = sweep(&sizes, args.quick);
    println!(
        "\n{:>10} {:>4} {:>11} {:>15} {:>7} {:>8}",
        "nodes", "|α|", "pass (ms)", "analysis (ms)", "ratio", "(|α|+3)"
    );
    for r in &rows {
        println!(
            "{:>10} {:>4} {:>11.3} {:>15.3} {:>7.1} {:>8}",
            r.nodes,
            r.k,
            r.pass * 1e3,
            r.analysis * 1e3,
            r.analysis / r.pass,
            r.k + 3
        );
    }
    println!();
    for &k in &KINKS {
        let (sa, sp) = slopes(&rows, k);
        let worst = rows
            .iter()
            .filter(|r| r.k == k)
            .map(|r| r.analysis / r.pass)
            .fold(0.0, f64::max);
        println!(
            "|α| = {k:>2}: fitted log-log slope over 10³…10⁶ nodes: analysis {sa:.3}, pass {sp:.3}; \
             worst ratio {worst:.1} passes (target ≤ {})",
            k + 3
        );
    }

    if let Err(e) = write_csv(&args.csv, &rows) {
        eprintln!("cannot write {}: {e}", args.csv.display());
        std::process::exit(1);
    }
    if let Err(e) = plot(&args.svg, &rows) {
        eprintln!("cannot write {}: {e}", args.svg.display());
        std::process::exit(1);
    }
    println!("wrote {} and {}", args.csv.display(), args.svg.display());

    // Dense-layer throughput: evaluation plus backward sweep on smooth MLPs.
    println!(
        "\ndense layers (tanh MLP, cross-entropy, wrt params); multiply-adds of one pass: \
         forward B·Σ r·k, backward B·Σ r·k (weights) + B·Σ_(l≥2) r·k (activations)"
    );
    println!(
        "{:<22} {:>9} {:>18} {:>18} {:>18} {:>18}",
        "network x batch",
        "M mul-add",
        "eval+sweep ms(ns)",
        "warm ms(ns)",
        "full pass ms(ns)",
        "nalgebra ms(ns)"
    );
    let nets: Vec<(Vec<usize>, usize)> = if args.quick {
        vec![(vec![784, 256, 256, 10], 4)]
    } else {
        vec![
            (vec![784, 256, 256, 10], 64),
            (vec![784, 1024, 1024, 10], 16),
        ]
    };
    let (min, max, budget) = if args.quick {
        (1, 3, 0.1)
    } else {
        (5, 31, 2.0)
    };
    for (widths, batch) in nets {
        let (p, x) = tanh_mlp(&widths, batch);
        let g = &p.graph;
        let (fwd, bwd) = mlp_macs(&widths, batch);
        let macs = (fwd + bwd) as f64;
        let rules: Vec<eval::AbsRule> = vec![]; // a tanh MLP has no switches
        let t_call = median_time(
            || {
                let ev = eval::evaluate(g, &x).unwrap();
                drop(
                    ReverseSweeper::new(g, &ev)
                        .sweep(Seed::Output, &rules)
                        .unwrap(),
                );
            },
            min,
            max,
            budget,
        );
        let t_eval = median_time(|| drop(eval::evaluate(g, &x).unwrap()), min, max, budget);
        let ev = eval::evaluate(g, &x).unwrap();
        let mut sweeper = ReverseSweeper::new(g, &ev);
        let t_sweep = median_time(
            || drop(sweeper.sweep(Seed::Output, &rules).unwrap()),
            min,
            max,
            budget,
        );
        let t_pass = median_time(|| drop(pass(g, &x)), min, max, budget);
        let reference = Reference::new(&widths, batch);
        let t_ref = median_time(|| drop(reference.pass()), min, max, budget);
        let arch = widths
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("-");
        let cell = |t: f64| format!("{:.2} ({:.3})", t * 1e3, t * 1e9 / macs);
        println!(
            "{:<22} {:>9.1} {:>18} {:>18} {:>18} {:>18}",
            format!("{arch} x{batch}"),
            macs / 1e6,
            cell(t_call),
            cell(t_eval + t_sweep),
            cell(t_pass),
            cell(t_ref)
        );
    }
    println!(
        "eval+sweep: eval::evaluate and one reverse sweep, fresh buffers as in one call (includes \
         the kernel's first-touch page faults);\nwarm: evaluate alone plus a sweep on a reused \
         ReverseSweeper (the arithmetic); full pass: eval+sweep plus the switch states, whose \
         magnitude sweep is a second forward matrix-vector product; nalgebra: gemv, gemv_tr and \
         ger on the same shapes"
    );

    // The whole verify of the planted 784-256-256-10 MLP (benches/mlp.rs).
    let batch = if args.quick { 8 } else { 64 };
    let (p, x, planted) = planted_mlp(&[784, 256, 256, 10], batch, 36);
    let opts = VerifyOptions::new(Convention::pytorch());
    let tp = median_time(|| drop(pass(&p.graph, &x)), min, max, budget);
    let t = std::time::Instant::now();
    let r = kinkcheck::verify(&p, &x, &opts).unwrap();
    let first = t.elapsed().as_secs_f64();
    let tv = median_time(
        || drop(kinkcheck::verify(&p, &x, &opts).unwrap()),
        if args.quick { 1 } else { 3 },
        if args.quick { 1 } else { 7 },
        budget,
    );
    println!(
        "\nverify, MLP 784-256-256-10 x{batch} (relu, cross-entropy, wrt {} params, {planted} \
         planted kinks, {} active; one pass {:.1} ms): first call {:.1} ms = {:.1} passes, \
         median of repeats {:.1} ms; verdict {:?} by {:?}; peak memory {:.0} MB",
        p.graph.n_vars(),
        r.active.len(),
        tp * 1e3,
        first * 1e3,
        first / tp,
        tv * 1e3,
        r.verdict,
        r.analyzer.by,
        common::peak_rss_mb()
    );
}
