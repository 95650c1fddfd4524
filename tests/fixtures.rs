//! The fixture corpus: every file in `fixtures/programs/` is one case (program, point, AD
//! vector per convention, and optionally the abs-normal matrices). This test discovers them all.

use kinkcheck::{anf, eval, Convention};
use serde_json::Value;
use std::path::PathBuf;

mod common;

fn vecf(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn matf(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().expect("matrix").iter().map(vecf).collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

fn cases() -> Vec<(PathBuf, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/programs");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/programs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn corpus_is_not_empty() {
    assert!(cases().len() >= 25, "fixture corpus went missing");
}

#[test]
fn ad_vectors_match_every_convention() {
    let mut checked = 0;
    for (path, case) in cases() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let p = kinkcheck::compile(case["program"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let x = vecf(&case["at"]);
        let ev = eval::evaluate(&p.graph, &x).unwrap_or_else(|e| panic!("{name}: {e}"));
        let states = eval::switch_states(&p.graph, &ev, eval::TAU_ACT);
        match case.get("ad").filter(|v| !v.is_null()) {
            Some(ad) => {
                for (conv, want) in ad.as_object().unwrap() {
                    let c = Convention::parse(conv).unwrap();
                    let got = eval::ad(&p.graph, &ev, &states, &c).unwrap();
                    assert!(
                        close(&got, &vecf(want), 1e-12),
                        "{name} under {conv}: AD {got:?}, expected {want}"
                    );
                    checked += 1;
                }
            }
            None => {
                // smooth programs: compare with central differences
                let got = eval::ad(&p.graph, &ev, &states, &Convention::pytorch()).unwrap();
                for i in 0..x.len() {
                    let h = 1e-6;
                    let (mut xp, mut xm) = (x.clone(), x.clone());
                    xp[i] += h;
                    xm[i] -= h;
                    let fp = eval::evaluate(&p.graph, &xp)
                        .unwrap()
                        .output(&p.graph)
                        .unwrap();
                    let fm = eval::evaluate(&p.graph, &xm)
                        .unwrap()
                        .output(&p.graph)
                        .unwrap();
                    let fd = (fp - fm) / (2.0 * h);
                    assert!(
                        (fd - got[i]).abs() < 1e-7,
                        "{name}: d/dx{i} {} vs fd {fd}",
                        got[i]
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 100, "only {checked} checks ran");
}

#[test]
fn analyzer_outcomes_match_theory() {
    let mut checked = 0;
    for (path, case) in cases() {
        let Some(want) = case.get("analyzer") else {
            continue;
        };
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let p = kinkcheck::compile(case["program"].as_str().unwrap()).unwrap();
        for (conv, by) in want.as_object().unwrap() {
            let opts = common::verify_options(Convention::parse(conv).unwrap());
            let r = kinkcheck::verify(&p, &vecf(&case["at"]), &opts).unwrap();
            let got = serde_json::to_value(&r.analyzer).unwrap();
            assert_eq!(
                got["guaranteed"].as_bool().unwrap(),
                !by.is_null(),
                "{name} {conv}: {}",
                r.analyzer.reason
            );
            assert_eq!(&got["by"], by, "{name} {conv}: {}", r.analyzer.reason);
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} analyzer checks ran");
}

fn verdict_name(v: kinkcheck::report::Verdict) -> &'static str {
    match v {
        kinkcheck::report::Verdict::In => "in",
        kinkcheck::report::Verdict::Out => "out",
        kinkcheck::report::Verdict::Undecided => "undecided",
    }
}

#[test]
fn verdicts_and_certificates_match_theory() {
    let mut checked = 0;
    for (path, case) in cases() {
        let Some(want) = case.get("verdict") else {
            continue;
        };
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let p = kinkcheck::compile(case["program"].as_str().unwrap()).unwrap();
        let x = vecf(&case["at"]);
        for (conv, v) in want.as_object().unwrap() {
            let opts = common::verify_options(Convention::parse(conv).unwrap());
            let r = kinkcheck::verify(&p, &x, &opts).unwrap();
            assert_eq!(
                verdict_name(r.verdict),
                v.as_str().unwrap(),
                "{name} {conv}: {}",
                r.reason
            );
            if let Some(cert) = case.get("certificate").and_then(|c| c.get(conv)) {
                let got = serde_json::to_value(&r).unwrap();
                let dir = vecf(&got["certificate"]["direction"]);
                let m = dir.iter().fold(0.0f64, |a, b| a.max(b.abs()));
                let want_dir = vecf(&cert["direction"]);
                let wm = want_dir.iter().fold(0.0f64, |a, b| a.max(b.abs()));
                let scaled: Vec<f64> = dir.iter().map(|d| d / m).collect();
                let want_scaled: Vec<f64> = want_dir.iter().map(|d| d / wm).collect();
                assert!(
                    close(&scaled, &want_scaled, 1e-9),
                    "{name} {conv}: direction {dir:?}"
                );
                let bound = got["certificate"]["bound"].as_f64().unwrap() / m;
                let want_bound = cert["bound"].as_f64().unwrap() / wm;
                assert!(
                    (bound - want_bound).abs() < 1e-9,
                    "{name} {conv}: bound {bound}"
                );
            }
            checked += 1;
        }
        for gcase in case
            .get("gradients")
            .and_then(|g| g.as_array())
            .into_iter()
            .flatten()
        {
            let mut opts = common::verify_options(Convention::pytorch());
            opts.gradient = Some(vecf(&gcase["gradient"]));
            let r = kinkcheck::verify(&p, &x, &opts).unwrap();
            assert_eq!(
                verdict_name(r.verdict),
                gcase["verdict"].as_str().unwrap(),
                "{name} --gradient {}: {}",
                gcase["gradient"],
                r.reason
            );
            checked += 1;
        }
    }
    assert!(checked >= 120, "only {checked} verdict checks ran");
}

#[test]
fn abs_normal_forms_match() {
    let mut checked = 0;
    for (path, case) in cases() {
        let Some(want) = case.get("anf") else {
            continue;
        };
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let p = kinkcheck::compile(case["program"].as_str().unwrap()).unwrap();
        let ev = eval::evaluate(&p.graph, &vecf(&case["at"])).unwrap();
        let e = anf::abs_normal_form(&p.graph, &ev).unwrap().export();
        assert_eq!(e.s as u64, want["s"].as_u64().unwrap(), "{name}: s");
        assert_eq!(e.m, 1);
        assert_eq!(e.n, p.var_names.len());
        let got = serde_json::to_value(&e).unwrap();
        for key in ["Z", "L", "Y", "J"] {
            assert_eq!(matf(&got[key]), matf(&want[key]), "{name}: {key}");
        }
        for key in ["z", "cz", "cy", "y"] {
            if let Some(w) = want.get(key) {
                assert!(close(&vecf(&got[key]), &vecf(w), 1e-12), "{name}: {key}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} ANF checks ran");
}

/// `Report::write_json` (the CLI's streaming writer) writes the same text as serde_json, on
/// every fixture and convention: reports with and without a certificate and a Clarke gradient.
#[test]
fn streamed_json_is_serde_jsons() {
    let (mut with_cert, mut with_clarke, mut without) = (0, 0, 0);
    for (path, case) in cases() {
        let p = kinkcheck::compile(case["program"].as_str().unwrap()).unwrap();
        let x = vecf(&case["at"]);
        for conv in ["pytorch", "jax", "tensorflow", "sigma=0"] {
            let opts = common::verify_options(Convention::parse(conv).unwrap());
            let Ok(r) = kinkcheck::verify(&p, &x, &opts) else {
                continue;
            };
            with_cert += usize::from(r.certificate.is_some());
            with_clarke += usize::from(r.clarke_gradient.is_some());
            // the optional fields are skipped the same way
            let mut bare = r.clone();
            bare.certificate = None;
            bare.clarke_gradient = None;
            for r in [r, bare] {
                let mut text = Vec::new();
                r.write_json(&mut text).unwrap();
                let want = serde_json::to_string(&r).unwrap();
                assert_eq!(String::from_utf8(text).unwrap(), want, "{path:?} {conv}");
                without += usize::from(r.certificate.is_none() || r.clarke_gradient.is_none());
            }
        }
    }
    assert!(
        with_cert > 10 && with_clarke > 10 && without > 0,
        "{with_cert} {with_clarke} {without}"
    );
}
