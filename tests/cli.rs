//! The command line as a user meets it (CONTRACT §2–§3): exit codes, the JSON report, errors.

use serde_json::Value;
use std::process::{Command, Output};

/// Run the binary; `verify` gets a generous `--timeout` so that no test depends on the speed
/// of the machine (issue 13).
fn with_timeout<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut a = args.to_vec();
    if a.first() == Some(&"verify") && !a.contains(&"--timeout") {
        a.extend(["--timeout", "3600"]);
    }
    a
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kinkcheck"))
        .args(with_timeout(args))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run kinkcheck")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn verify_json_report_has_the_contract_fields() {
    let out = run(&[
        "verify",
        "--expr",
        "vars x; f = relu(x) - relu(-x)",
        "--at",
        "0",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["verdict"], "out");
    assert_eq!(v["gradient"], serde_json::json!([0.0]));
    assert_eq!(v["convention"], "pytorch");
    assert_eq!(v["active"][0]["op"], "relu");
    assert_eq!(v["active"][0]["switch"], 0);
    assert_eq!(v["active"][0]["z"], 0.0);
    assert!(v["active"][0]["where"]
        .as_str()
        .unwrap()
        .starts_with("line 1"));
    assert_eq!(v["analyzer"]["guaranteed"], false);
    assert!(v["analyzer"]["by"].is_null());
    assert!(v["analyzer"]["reason"].is_string());
    for p in v["pieces"].as_array().unwrap() {
        assert!(["realized", "unrealized", "undecided"].contains(&p["status"].as_str().unwrap()));
        assert_eq!(p["signs"].as_array().unwrap().len(), 2);
    }
    let h = v["certificate"]["direction"][0].as_f64().unwrap();
    let c = v["certificate"]["bound"].as_f64().unwrap();
    assert!(h * 0.0 > c, "h·g > c for the checked g = 0");
}

#[test]
fn exit_codes_for_in_out_undecided() {
    let e = |args: &[&str]| run(args).status.code();
    assert_eq!(
        e(&["verify", "--expr", "vars x; f = relu(x)", "--at", "0"]),
        Some(0)
    );
    assert_eq!(
        e(&[
            "verify",
            "--expr",
            "vars x; f = relu(x) - relu(-x)",
            "--at",
            "0",
            "--convention",
            "sigma=0"
        ]),
        Some(0)
    );
    assert_eq!(
        e(&[
            "verify",
            "--expr",
            "vars x; f = abs(x) - abs(-x)",
            "--at",
            "0",
            "--convention",
            "jax"
        ]),
        Some(1)
    );
    assert_eq!(
        e(&[
            "verify",
            "--expr",
            "vars x1,x2,x3; f = relu(x1) - relu(x1 + x2*x3)",
            "--at",
            "0,0,0",
            "--gradient",
            "1,0,0"
        ]),
        Some(3)
    );
    assert_eq!(e(&["verify", "examples/relu_odd.kc", "--at", "0"]), Some(1));
}

#[test]
fn sigma_convention_and_gradient_file() {
    let out = run(&[
        "verify",
        "--expr",
        "vars x; f = relu(x) - relu(-x)",
        "--at",
        "0",
        "--convention",
        "sigma=0",
        "--json",
    ]);
    assert_eq!(json(&out)["gradient"], serde_json::json!([1.0]));
    let dir = std::env::temp_dir().join(format!("kc-grad-{}.txt", std::process::id()));
    std::fs::write(&dir, "[1, 0.5]").unwrap();
    let out = run(&[
        "verify",
        "--expr",
        "vars x, y; f = abs(x) + abs(y)",
        "--at",
        "0,0",
        "--gradient",
        dir.to_str().unwrap(),
        "--json",
    ]);
    let v = json(&out);
    assert_eq!(v["verdict"], "in");
    assert_eq!(v["convention"], "explicit");
    let w: f64 = v["certificate"]["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!((w - 1.0).abs() < 1e-9);
    std::fs::remove_file(dir).ok();
}

#[test]
fn anf_json_matches_theory_example() {
    let out = run(&[
        "anf",
        "--expr",
        "vars x; u = abs(x); f = abs(x + 2*u) - 2*u",
        "--at",
        "0",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["s"], 2);
    assert_eq!(v["Z"], serde_json::json!([[1.0], [1.0]]));
    assert_eq!(v["L"], serde_json::json!([[0.0, 0.0], [2.0, 0.0]]));
    assert_eq!(v["J"], serde_json::json!([[-2.0, 1.0]]));
    assert_eq!(v["Y"], serde_json::json!([[0.0]]));
    for key in ["n", "m", "x", "y", "z", "cz", "cy"] {
        assert!(v.get(key).is_some(), "{key}");
    }
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let cases: &[&[&str]] = &[
        &["verify", "--expr", "vars x; f = foo(x)", "--at", "0"],
        &["verify", "--expr", "vars x; f = max(x)", "--at", "0"],
        &["verify", "--expr", "vars x; f = y", "--at", "0"],
        &["verify", "--expr", "vars x; f = abs(x", "--at", "0"],
        &["verify", "--expr", "vars x; f = abs(x)", "--at", "0,1"],
        &["verify", "--expr", "vars x; f = abs(x)", "--at", "nan"],
        &["verify", "--expr", "vars x; f = abs(x)", "--at", "inf"],
        &["verify", "--expr", "vars x; f = abs(x)", "--at", "zero"],
        &["verify", "--expr", "vars x; f = log(x)", "--at", "-1"],
        &["verify", "--expr", "vars x; f = 1/x", "--at", "0"],
        &["verify", "--expr", "vars x; f = sqrt(x)", "--at", "0"],
        &[
            "verify",
            "--expr",
            "vars x; f = clamp(x, 1, 0)",
            "--at",
            "0",
        ],
        &[
            "verify",
            "--expr",
            "vars x; f = abs(x)",
            "--at",
            "0",
            "--convention",
            "mxnet",
        ],
        &[
            "verify",
            "--expr",
            "vars x; f = abs(x)",
            "--at",
            "0",
            "--convention",
            "sigma=3",
        ],
        &[
            "verify",
            "--expr",
            "vars x; f = abs(x)",
            "--at",
            "0",
            "--gradient",
            "1,2",
        ],
        &["verify", "--expr", "vars x; f = abs(x)"],
        &["verify", "no/such/file.kc", "--at", "0"],
        &["anf", "--expr", "vars x; f = x ^ 1.5", "--at", "0"],
        &["verify"],
    ];
    for args in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        let err = String::from_utf8_lossy(&out.stderr);
        if args.len() > 1 {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        }
    }
    let out = run(&["verify", "--expr", "vars x\nf = foo(x)", "--at", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("2:5"));
}

/// Budgets through the command line (issue 13: by count, with the reason named; nothing here
/// depends on the speed of the machine).
#[test]
fn budgets_by_count_name_the_reason() {
    let out = run(&[
        "verify",
        "--expr",
        "vars x; f = relu(x) - relu(-x)",
        "--at",
        "0",
        "--max-lps",
        "1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let v = json(&out);
    assert_eq!(v["verdict"], "undecided");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("LP budget (1) reached"),
        "{}",
        v["reason"]
    );
    let out = run(&[
        "verify",
        "--expr",
        "vars x1, x2; f = abs(x1) + abs(x2)",
        "--at",
        "0,0",
        "--gradient",
        "0.5,0.25",
        "--max-pieces",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("piece budget (1) reached"));
    for bad in ["0", "-1", "nan"] {
        let out = run(&[
            "verify",
            "--expr",
            "vars x; f = abs(x)",
            "--at",
            "0",
            "--timeout",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(2), "--timeout {bad}");
        assert!(out.stdout.is_empty());
    }
}

/// `clarke_gradient` in the JSON report and `--write-gradient FILE` (CONTRACT §2–§3).
#[test]
fn clarke_gradient_json_and_write_gradient() {
    let dir = std::env::temp_dir().join(format!("kinkcheck-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("g.json");
    let f = file.to_str().unwrap();
    let out = run(&[
        "verify",
        "--expr",
        "vars x; f = relu(x) - relu(-x)",
        "--at",
        "0",
        "--json",
        "--write-gradient",
        f,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let c = &v["clarke_gradient"];
    assert_eq!(c["vector"], serde_json::json!([1.0]));
    assert_eq!(c["distance"], 1.0);
    assert_eq!(c["norm"], "inf");
    assert_eq!(c["nearest"], true);
    let k = c["pieces"][0].as_u64().unwrap() as usize;
    assert_eq!(v["pieces"][k]["status"], "realized");
    assert_eq!(c["weights"], serde_json::json!([1.0]));
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written, serde_json::json!([1.0]));
    // human report: one line; IN writes the checked vector itself
    let out = run(&[
        "verify",
        "fixtures/networks/e13.json",
        "--gradient",
        "1,1,0,0",
        "--write-gradient",
        f,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("clarke gradient: [0, 0, 0, 0] (∞-distance 1 from v, nearest)"),
        "{text}"
    );
    let written: Vec<f64> = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written, vec![0.0; 4]);
    let out = run(&[
        "verify",
        "--expr",
        "vars x; f = abs(x)",
        "--at",
        "0",
        "--write-gradient",
        f,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let written: Vec<f64> = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written, vec![0.0]);
    // an unwritable file is an input error, with nothing on stdout
    let bad = dir.join("no/such/dir/g.json");
    let out = run(&[
        "verify",
        "--expr",
        "vars x; f = abs(x)",
        "--at",
        "0",
        "--write-gradient",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
