//! Where the time of one `kinkcheck verify` goes: runs the stages of the command line one by
//! one on a source (and batch), with a timer around each, then the whole `verify` and the JSON
//! report, and prints a table (milliseconds, share of the sum of the stages before `verify`);
//! with `--repeat N` every stage is the median of N runs. It uses the command line's allocator.
//!
//! ```sh
//! cargo run --release --example verify_stages -- model.onnx --data batch.json --loss cross_entropy --repeat 9
//! ```
//!
//! (`tools/bench_mlp_vs_torch.py --keep DIR` writes such a model and batch.) The stages are
//! those of [`kinkcheck::verify`] under the PyTorch convention; the `verify` line runs the real
//! function once more, so it can be compared with the sum of the stages.

use kinkcheck::anf::{ActiveData, Structure};
use kinkcheck::eval::{self, Activity};
use kinkcheck::frontend::{self, network::Loss};
use kinkcheck::reduced::ReducedSpace;
use kinkcheck::{analyze, Convention, VerifyOptions};
use std::path::PathBuf;
use std::time::Instant;

#[path = "../src/huge.rs"]
#[allow(dead_code)]
mod huge;

/// The command line's allocator, so that the stages cost what they cost there.
#[global_allocator]
static ALLOC: huge::HugePages = huge::HugePages;

fn main() -> Result<(), kinkcheck::Error> {
    huge::tune();
    let mut args = std::env::args().skip(1);
    let mut source = None;
    let mut data = None;
    let mut loss = None;
    let mut repeat: usize = 1;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data" => data = args.next().map(PathBuf::from),
            "--loss" => loss = args.next(),
            "--repeat" => repeat = args.next().and_then(|v| v.parse().ok()).unwrap_or(1),
            _ => source = Some(PathBuf::from(a)),
        }
    }
    let source = source.ok_or_else(|| kinkcheck::Error::input("give a SOURCE"))?;
    let loss: Option<Loss> = loss.as_deref().map(str::parse).transpose()?;
    let mut runs: Vec<Vec<(&str, f64)>> = vec![];
    for run in 0..repeat.max(1) {
        let mut rows: Vec<(&str, f64)> = vec![];
        let mut t = Instant::now();
        let mut lap = |name: &'static str, rows: &mut Vec<(&str, f64)>| {
            rows.push((name, t.elapsed().as_secs_f64() * 1e3));
            t = Instant::now();
        };
        let p = frontend::load(&source, data.as_deref(), None, loss)?;
        lap("load (read, decode, lower)", &mut rows);
        let x = p.point.clone().unwrap_or_default();
        let g = &p.graph;
        let ev = eval::evaluate(g, &x)?;
        lap("evaluate", &mut rows);
        let states = eval::switch_states(g, &ev, eval::TAU_ACT);
        lap("switch states", &mut rows);
        let conv = Convention::pytorch();
        let z: Vec<f64> = states.iter().map(|s| s.z).collect();
        let act: Vec<_> = states
            .iter()
            .filter(|s| s.activity == Activity::Active)
            .map(|s| s.id)
            .collect();
        let data = ActiveData::compute(g, &ev, &z, &act)?;
        lap("reduced active data (J_α, L̂, g0, b̂)", &mut rows);
        let st = Structure::compute(g, &data.active);
        lap("structure", &mut rows);
        // as `verify` does: the AD vector from the reduced data, not one more sweep
        let sigma: Vec<f64> = st.roles.iter().map(|&r| conv.sigma_tilde(r)).collect();
        let grad = data.ad_sparse(&sigma);
        lap("AD vector (from the reduced data)", &mut rows);
        let space = ReducedSpace::new(&data);
        lap("reduced space (Gram, eigen)", &mut rows);
        let a = analyze::analyze(&data, &space, &st, Some(&sigma), &Default::default());
        lap("analyzer", &mut rows);
        let cert = kinkcheck::pieces::support_certificate(&data, &space, &sigma, &grad, 64);
        lap("weight-support certificate", &mut rows);
        let last = run + 1 == repeat.max(1);
        if last {
            println!(
                "support certificate: {:?}",
                cert.as_ref().map(|c| (&c.reason, c.pieces.len()))
            );
            println!(
                "LIKQ witness margin of σ̃: {:?}",
                space.likq_witness(&data, &sigma).map(|w| w.0)
            );
        }
        let opts = VerifyOptions::new(conv);
        let r = kinkcheck::verify(&p, &x, &opts)?;
        lap("verify (whole, again)", &mut rows);
        // written as the CLI writes it, to a sink that only counts (as to /dev/null)
        let mut text = Counted(0);
        r.write_json(&mut std::io::BufWriter::with_capacity(1 << 16, &mut text))
            .map_err(|e| kinkcheck::Error::input(e.to_string()))?;
        lap("JSON report", &mut rows);
        if last {
            println!(
            "{} variables, {} switches, {} nodes, {} active, analyzer {:?}, |grad| {:.6}, JSON {:.1} MB",
            g.n_vars(),
            g.n_switches(),
            g.nodes().len(),
            data.k(),
            a.by,
            grad.iter().map(|v| v * v).sum::<f64>().sqrt(),
            text.0 as f64 / 1e6
        );
            let nnz: Vec<usize> = data.j.iter().map(|r| r.idx.len()).collect();
            println!(
                "rows of J_α: {} nonzeros in all, largest row {}, {} rows over 10 000",
                nnz.iter().sum::<usize>(),
                nnz.iter().max().copied().unwrap_or(0),
                nnz.iter().filter(|&&c| c > 10_000).count()
            );
        }
        runs.push(rows);
    }
    // the median of every stage over the runs
    let mut rows: Vec<(&str, f64)> = runs[0].clone();
    for (q, row) in rows.iter_mut().enumerate() {
        let mut v: Vec<f64> = runs.iter().map(|r| r[q].1).collect();
        v.sort_by(f64::total_cmp);
        row.1 = v[v.len() / 2];
    }
    let sum: f64 = rows
        .iter()
        .take_while(|r| !r.0.starts_with("verify"))
        .map(|r| r.1)
        .sum();
    for (name, ms) in &rows {
        println!("{name:<40} {ms:>9.2} ms  {:>5.1}%", 100.0 * ms / sum);
    }
    Ok(())
}

/// A writer that counts the bytes written to it.
struct Counted(usize);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
