//! Bench-scale sanity check: an MLP 784-256-256-10 (relu) with a cross-entropy loss over a
//! batch of 64, differentiated with respect to its 269,322 parameters. Builds the objective,
//! evaluates it, and runs one reverse sweep under the PyTorch convention, printing the times.
//!
//! Run with `cargo run --release --example big_mlp`.

use kinkcheck::eval::{self, ReverseSweeper, Seed};
use kinkcheck::frontend::network::{Data, Layer, Loss, Network, Wrt};
use kinkcheck::Convention;
use std::time::Instant;

/// A deterministic pseudo-random stream in [-1, 1) (a 64-bit LCG; no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

fn dense(r: &mut Lcg, inputs: usize, outputs: usize) -> Layer {
    let scale = (3.0 / inputs as f64).sqrt();
    Layer::Dense {
        weights: (0..outputs)
            .map(|_| (0..inputs).map(|_| scale * r.next()).collect())
            .collect(),
        bias: (0..outputs).map(|_| 0.1 * r.next()).collect(),
    }
}

fn main() -> Result<(), kinkcheck::Error> {
    let (sizes, batch) = ([784, 256, 256, 10], 64);
    let mut r = Lcg(2024);
    let net = Network {
        layers: vec![
            dense(&mut r, sizes[0], sizes[1]),
            Layer::Relu,
            dense(&mut r, sizes[1], sizes[2]),
            Layer::Relu,
            dense(&mut r, sizes[2], sizes[3]),
        ],
        loss: Some(Loss::CrossEntropy),
        data: Some(Data {
            inputs: (0..batch)
                .map(|_| (0..sizes[0]).map(|_| 0.5 * (r.next() + 1.0)).collect())
                .collect(),
            targets: Some(
                (0..batch)
                    .map(|k| {
                        (0..sizes[3])
                            .map(|c| f64::from(u8::from(c == k % 10)))
                            .collect()
                    })
                    .collect(),
            ),
        }),
        wrt: Some(Wrt::Params),
    };

    let t = Instant::now();
    let p = net.problem(None, None, None)?;
    let build = t.elapsed();
    let x = p.point.clone().unwrap_or_default();

    let t = Instant::now();
    let ev = eval::evaluate(&p.graph, &x)?;
    let f = ev.output(&p.graph)?;
    let evaluate = t.elapsed();

    let t = Instant::now();
    let states = eval::switch_states(&p.graph, &ev, eval::TAU_ACT);
    let rules = eval::convention_rules(&states, &Convention::pytorch());
    let states_time = t.elapsed();

    let t = Instant::now();
    let mut sweeper = ReverseSweeper::new(&p.graph, &ev);
    let grad = sweeper.sweep(Seed::Output, &rules)?.grad;
    let backward = t.elapsed();

    // Sanity: the directional derivative along a random direction d, by central differences.
    let d: Vec<f64> = (0..x.len()).map(|_| r.next()).collect();
    let h = 1e-6;
    let shifted = |s: f64| -> Result<f64, kinkcheck::Error> {
        let xs: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + s * h * b).collect();
        Ok(eval::evaluate(&p.graph, &xs)?.output(&p.graph)?)
    };
    let fd = (shifted(1.0)? - shifted(-1.0)?) / (2.0 * h);
    let gd: f64 = grad.iter().zip(&d).map(|(a, b)| a * b).sum();

    // The same network through its JSON description (what the command line reads).
    let text = serde_json::to_string(&net).map_err(|e| kinkcheck::Error::input(e.to_string()))?;
    let t = Instant::now();
    let parsed = Network::from_json(&text)?;
    let parse = t.elapsed();
    assert_eq!(parsed.n_params(), net.n_params());

    let norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
    println!(
        "MLP {sizes:?}, batch {batch}, wrt params: {} variables, {} switches, {} graph nodes",
        p.graph.n_vars(),
        p.graph.n_switches(),
        p.graph.nodes().len()
    );
    println!("f = {f:.6}, |grad| = {norm:.6}");
    println!("grad·d = {gd:.6}, central difference along d = {fd:.6}");
    println!("build     {:>9.2} ms", build.as_secs_f64() * 1e3);
    println!("evaluate  {:>9.2} ms", evaluate.as_secs_f64() * 1e3);
    println!("switches  {:>9.2} ms", states_time.as_secs_f64() * 1e3);
    println!("backward  {:>9.2} ms", backward.as_secs_f64() * 1e3);
    println!(
        "total     {:>9.2} ms",
        (build + evaluate + states_time + backward).as_secs_f64() * 1e3
    );
    println!(
        "(parsing the {:.1} MB JSON description: {:.2} ms)",
        text.len() as f64 / 1e6,
        parse.as_secs_f64() * 1e3
    );
    Ok(())
}
