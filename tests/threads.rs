//! The report does not depend on the number of threads (`KINKCHECK_THREADS`, `par`): the
//! sweeps of J_α run on several threads and the JSON text of a long gradient is spelled on
//! another core during the analysis; both must give the bytes of one thread.

use kinkcheck::frontend::{self, VarNames};
use kinkcheck::{par, report::PAR_JSON_MIN, Convention, VerifyOptions};
use std::process::Command;

/// A relu MLP `ins`-`hidden`-`outs` over `batch` samples as a network description, with
/// dyadic weights and inputs (exact dot products) and `planted` first-layer units on their
/// kink, unit u for sample u % batch (`b = −w·x`); cross-entropy, wrt params.
fn planted_network(ins: usize, hidden: usize, outs: usize, batch: usize, planted: usize) -> String {
    let mut s: u64 = 11;
    let mut int = |m: i64| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % (2 * m as u64 + 1)) as i64 - m
    };
    let xs: Vec<Vec<f64>> = (0..batch)
        .map(|_| (0..ins).map(|_| (int(2) + 2) as f64 / 4.0).collect())
        .collect();
    let mut w1: Vec<Vec<f64>> = (0..hidden)
        .map(|_| (0..ins).map(|_| int(2) as f64 / 64.0).collect())
        .collect();
    let mut b1: Vec<f64> = (0..hidden).map(|_| 0.25 + int(8) as f64 / 64.0).collect();
    w1[0] = vec![0.0; ins];
    b1[0] = 0.0;
    for u in 1..=planted {
        b1[u] = -w1[u]
            .iter()
            .zip(&xs[u % batch])
            .map(|(a, b)| a * b)
            .sum::<f64>();
    }
    let w2: Vec<Vec<f64>> = (0..outs)
        .map(|_| (0..hidden).map(|_| int(2) as f64 / 64.0).collect())
        .collect();
    let b2: Vec<f64> = (0..outs).map(|_| int(8) as f64 / 64.0).collect();
    let targets: Vec<Vec<f64>> = (0..batch)
        .map(|i| {
            (0..outs)
                .map(|k| f64::from(u8::from(k == i % outs)))
                .collect()
        })
        .collect();
    serde_json::json!({
        "layers": [
            {"type": "dense", "weights": w1, "bias": b1},
            {"type": "relu"},
            {"type": "dense", "weights": w2, "bias": b2},
        ],
        "loss": "cross_entropy",
        "data": {"inputs": xs, "targets": targets},
        "wrt": "params",
    })
    .to_string()
}

/// The network written to a file of its own for each test (the tests run at the same time).
fn write_network(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kinkcheck-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.json"));
    // 200·160 + 160 + 160·10 + 10 = 33 770 parameters ≥ PAR_JSON_MIN
    std::fs::write(&path, planted_network(200, 160, 10, 16, 24)).unwrap();
    path
}

#[test]
fn cli_report_is_the_same_on_one_two_and_three_threads() {
    let path = write_network("cli");
    let run = |threads: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_kinkcheck"))
            .args(["verify", path.to_str().unwrap(), "--json"])
            .env("KINKCHECK_THREADS", threads)
            .output()
            .unwrap();
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), out.stdout)
    };
    let one = run("1");
    let r: serde_json::Value = serde_json::from_slice(&one.1).unwrap();
    let n = r["gradient"].as_array().unwrap().len();
    let active = r["active"].as_array().unwrap().len();
    // big enough that the threaded paths run (sweeps: ≥ 8; JSON: ≥ PAR_JSON_MIN)
    assert!(n >= PAR_JSON_MIN && active >= 16, "n {n}, {active} active");
    assert_eq!(r["variables"].as_array().unwrap().len(), n);
    // verdict in with its certificate: the weight-support shortcut's one realized piece
    // (before, its check of v − g0 against the row space cancelled to noise of order √ε·‖v‖ at
    // this size and the report had no certificate)
    assert_eq!(r["verdict"], "in");
    let weights = r["certificate"]["weights"]
        .as_array()
        .expect("IN certificate");
    let total: f64 = weights.iter().map(|w| w.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-12, "weights sum to {total}");
    assert_eq!(r["pieces"][0]["status"], "realized");
    for t in ["2", "3"] {
        let other = run(t);
        assert_eq!(other.0, one.0, "exit status, {t} threads");
        assert!(
            other.1 == one.1,
            "report on {t} threads differs from one thread's"
        );
    }
}

/// A change of a gradient in place.
type Edit = dyn Fn(&mut Vec<f64>);

#[test]
fn spelled_text_is_serde_jsons_and_is_not_used_once_stale() {
    let path = write_network("library");
    let p = frontend::load(&path, None, None, None).unwrap();
    let x = p.point.clone().unwrap();
    let opts = VerifyOptions::new(Convention::pytorch());
    let mut texts = vec![];
    for threads in [1, 2, 4] {
        par::set_threads(threads);
        let mut r = kinkcheck::verify(&p, &x, &opts).unwrap();
        let mut text = Vec::new();
        r.write_json(&mut text).unwrap();
        assert!(text == serde_json::to_vec(&r).unwrap(), "{threads} threads");
        texts.push(text);
        // the public fields changed after verify, one entry of the gradient (its sign bit, a
        // tiny change of its last bit, or swapping two entries), then one name: the text
        // follows them
        let g = r.gradient.clone();
        let swap = |v: &mut Vec<f64>| {
            let j = (1..v.len())
                .find(|&j| v[j].to_bits() != v[0].to_bits())
                .unwrap();
            v.swap(0, j)
        };
        let edits: [&Edit; 4] = [
            &|v| v[7] += 0.5,
            &|v| v[11] = -v[11],
            &|v| {
                let last = v.len() - 1;
                v[last] = f64::from_bits(v[last].to_bits() ^ 1)
            },
            &swap,
        ];
        for (e, edit) in edits.iter().enumerate() {
            r.gradient = g.clone();
            edit(&mut r.gradient);
            follows(
                &r,
                &texts[0],
                &format!("{threads} threads, gradient edit {e}"),
            );
        }
        r.gradient = g;
        let mut names: Vec<String> = r.variables.to_vec();
        names[3] = "renamed \"w\"".into();
        r.variables = VarNames::from_iter(names);
        follows(&r, &texts[0], &format!("{threads} threads, names changed"));
    }
    par::set_threads(0);
    assert!(texts.iter().all(|t| *t == texts[0]));
}

/// The text `write_json` gives for `r`, changed after `verify`, is serde_json's for it and not
/// the `original` text.
fn follows(r: &kinkcheck::Report, original: &[u8], what: &str) {
    let mut changed = Vec::new();
    r.write_json(&mut changed).unwrap();
    assert!(changed == serde_json::to_vec(r).unwrap(), "{what}");
    assert!(changed != original, "{what}");
}
