//! `kinkcheck._kinkcheck`: the native half of the Python package (PyO3).
//!
//! Thin on purpose: sources are loaded with the same library calls as the CLI (`src/main.rs`),
//! verification runs with the GIL released, and reports cross over as the very JSON text the
//! CLI prints (`verify --json`), so every field the library adds to [`kinkcheck::Report`]
//! reaches Python without a change here. The checked vector also crosses as a NumPy array that
//! takes over the Rust buffer (no copy); a point or vector coming in is copied once, into the
//! `Vec` the library reads while Python runs on.

use kinkcheck::frontend::network::{Data, Loss, Network, Wrt};
use kinkcheck::frontend::{self, onnx};
use kinkcheck::{audit, Convention, Error, Problem, VerifyOptions};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::Path;
use std::sync::Arc;

create_exception!(
    _kinkcheck,
    InputError,
    PyValueError,
    "Bad input: a malformed program, network, ONNX model or batch, a point of the wrong length, NaN. The message is the CLI's."
);

/// The CLI's message for network options given with a program.
const NETWORK_FLAGS: &str = "--data, --wrt and --loss apply to network descriptions (.json) and ONNX models (.onnx) only (and --clip to ONNX models)";

fn input_err(e: Error) -> PyErr {
    InputError::new_err(e.to_string())
}

/// A compiled objective: its graph, its variable names and, for networks, its point.
#[pyclass(frozen, name = "Problem", module = "kinkcheck._kinkcheck")]
struct PyProblem {
    inner: Arc<Problem>,
}

#[pymethods]
impl PyProblem {
    /// Names of the variables, in the order of the gradient.
    #[getter]
    fn var_names(&self) -> Vec<String> {
        self.inner.var_names.to_vec()
    }
    /// Number of variables n.
    #[getter]
    fn n_vars(&self) -> usize {
        self.inner.var_names.len()
    }
    /// Number of switches s (absolute values after lowering).
    #[getter]
    fn n_switches(&self) -> usize {
        self.inner.graph.n_switches()
    }
    /// The point the source carries (network weights), or None for programs.
    #[getter]
    fn point<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f64>>> {
        self.inner
            .point
            .as_ref()
            .map(|x| PyArray1::from_slice(py, x))
    }
    fn __repr__(&self) -> String {
        format!(
            "<kinkcheck.Problem: {} variables, {} switches>",
            self.inner.var_names.len(),
            self.inner.graph.n_switches()
        )
    }
}

fn wrap(p: Problem) -> PyProblem {
    PyProblem { inner: Arc::new(p) }
}

type Opts = (Option<Wrt>, Option<Loss>, onnx::ClipRule);

fn parse_opts(wrt: Option<&str>, loss: Option<&str>, clip: Option<&str>) -> Result<Opts, Error> {
    let clip: Option<onnx::ClipRule> = clip.map(str::parse).transpose()?;
    Ok((
        wrt.map(str::parse).transpose()?,
        loss.map(str::parse).transpose()?,
        clip.unwrap_or_default(),
    ))
}

/// Compile `.kc` program text.
#[pyfunction]
fn compile(py: Python<'_>, text: &str) -> PyResult<PyProblem> {
    py.detach(|| kinkcheck::compile(text))
        .map(wrap)
        .map_err(input_err)
}

/// Load a source file as the CLI does (`.kc`, `.json` network, `.onnx`). `data_path` is the
/// CLI's `--data FILE`; `data_json` a batch given as JSON text instead.
#[pyfunction]
#[pyo3(signature = (path, data_path=None, data_json=None, wrt=None, loss=None, clip=None))]
fn load_path(
    py: Python<'_>,
    path: &str,
    data_path: Option<&str>,
    data_json: Option<&str>,
    wrt: Option<&str>,
    loss: Option<&str>,
    clip: Option<&str>,
) -> PyResult<PyProblem> {
    py.detach(|| -> Result<Problem, Error> {
        let (wrt, loss, clip) = parse_opts(wrt, loss, clip)?;
        let path = Path::new(path);
        let Some(text) = data_json else {
            return frontend::load_with(path, data_path.map(Path::new), wrt, loss, clip);
        };
        let data = Data::from_json(text)?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let at = |e: Error| Error::input(format!("{}: {e}", path.display()));
        match ext.as_str() {
            "json" => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::input(format!("cannot read {}: {e}", path.display())))?;
                Network::from_json(&text)
                    .and_then(|n| n.problem(Some(&data), wrt, loss))
                    .map_err(at)
            }
            "onnx" => onnx::load(path)
                .and_then(|m| onnx::problem_with(&m, &data, wrt, loss, clip))
                .map_err(at),
            _ => Err(Error::input(NETWORK_FLAGS)),
        }
    })
    .map(wrap)
    .map_err(input_err)
}

/// Load a network description given as JSON text, optionally with a batch (JSON text).
#[pyfunction]
#[pyo3(signature = (text, data_json=None, wrt=None, loss=None))]
fn load_network(
    py: Python<'_>,
    text: &str,
    data_json: Option<&str>,
    wrt: Option<&str>,
    loss: Option<&str>,
) -> PyResult<PyProblem> {
    py.detach(|| -> Result<Problem, Error> {
        let (wrt, loss, _) = parse_opts(wrt, loss, None)?;
        let data = data_json.map(Data::from_json).transpose()?;
        Network::from_json(text)?.problem(data.as_ref(), wrt, loss)
    })
    .map(wrap)
    .map_err(input_err)
}

/// Load an ONNX model from its bytes with a batch (JSON text); external data is read from
/// `base_dir` (none: external data is an input error).
#[pyfunction]
#[pyo3(signature = (model, data_json, wrt=None, loss=None, clip=None, base_dir=None))]
fn load_onnx_bytes(
    py: Python<'_>,
    model: &[u8],
    data_json: &str,
    wrt: Option<&str>,
    loss: Option<&str>,
    clip: Option<&str>,
    base_dir: Option<&str>,
) -> PyResult<PyProblem> {
    py.detach(|| -> Result<Problem, Error> {
        let (wrt, loss, clip) = parse_opts(wrt, loss, clip)?;
        let data = Data::from_json(data_json)?;
        frontend::load_onnx_bytes(model, base_dir.map(Path::new), &data, wrt, loss, clip)
    })
    .map(wrap)
    .map_err(input_err)
}

/// The CLI's point rule (`--at` or the source's own point) and its messages.
fn point(p: &Problem, at: Option<Vec<f64>>) -> Result<Vec<f64>, Error> {
    let x = match (at, &p.point) {
        (Some(x), _) => {
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return Err(Error::input(format!(
                    "--at: entry {} is {} (NaN and infinities are not allowed)",
                    i + 1,
                    x[i]
                )));
            }
            x
        }
        (None, Some(x)) => x.clone(),
        (None, None) => return Err(Error::input("--at is required for programs")),
    };
    if x.len() != p.var_names.len() {
        let names = if p.var_names.len() <= 8 {
            format!(" ({})", p.var_names.to_vec().join(", "))
        } else {
            String::new()
        };
        return Err(Error::input(format!(
            "--at has {} values, the problem has {} variables{names}",
            x.len(),
            p.var_names.len(),
        )));
    }
    Ok(x)
}

fn to_vec(a: Option<PyReadonlyArray1<'_, f64>>) -> PyResult<Option<Vec<f64>>> {
    Ok(a.map(|a| a.to_vec()).transpose()?)
}

/// Verify: returns (the CLI's `verify --json` text, the checked vector as a NumPy array).
#[pyfunction]
#[pyo3(signature = (problem, at=None, convention="pytorch", gradient=None, max_pieces=4096, max_lps=20000, timeout=10.0))]
#[allow(clippy::too_many_arguments)]
fn verify<'py>(
    py: Python<'py>,
    problem: &PyProblem,
    at: Option<PyReadonlyArray1<'py, f64>>,
    convention: &str,
    gradient: Option<PyReadonlyArray1<'py, f64>>,
    max_pieces: usize,
    max_lps: usize,
    timeout: f64,
) -> PyResult<(String, Bound<'py, PyArray1<f64>>)> {
    let at = to_vec(at)?;
    let gradient = to_vec(gradient)?;
    let p = Arc::clone(&problem.inner);
    let (text, g) = py
        .detach(move || -> Result<(String, Vec<f64>), Error> {
            let x = point(&p, at)?;
            let mut opts = VerifyOptions::new(Convention::parse(convention)?);
            if let Some(g) = gradient {
                if let Some(i) = g.iter().position(|v| !v.is_finite()) {
                    return Err(Error::input(format!(
                        "--gradient: entry {} is {} (NaN and infinities are not allowed)",
                        i + 1,
                        g[i]
                    )));
                }
                opts.gradient = Some(g);
            }
            opts.check.max_pieces = max_pieces;
            opts.check.max_lps = max_lps;
            if !(timeout.is_finite() && timeout > 0.0) {
                return Err(Error::input(
                    "--timeout must be a positive number of seconds",
                ));
            }
            opts.check.timeout = std::time::Duration::from_secs_f64(timeout.min(1e6));
            let mut report = kinkcheck::verify(&p, &x, &opts)?;
            let mut text = Vec::new();
            report
                .write_json(&mut text)
                .map_err(|e| Error::input(e.to_string()))?;
            // the writer writes UTF-8 only (serde_json's text and ASCII)
            let text = String::from_utf8(text).map_err(|e| Error::input(e.to_string()))?;
            Ok((text, std::mem::take(&mut report.gradient)))
        })
        .map_err(input_err)?;
    Ok((text, PyArray1::from_vec(py, g)))
}

/// The abs-normal form at the point: the CLI's `anf --json` text.
#[pyfunction]
#[pyo3(signature = (problem, at=None))]
fn anf<'py>(
    py: Python<'py>,
    problem: &PyProblem,
    at: Option<PyReadonlyArray1<'py, f64>>,
) -> PyResult<String> {
    let at = to_vec(at)?;
    let p = Arc::clone(&problem.inner);
    py.detach(move || -> Result<String, Error> {
        let x = point(&p, at)?;
        let ev = kinkcheck::eval::evaluate(&p.graph, &x)?;
        let form = kinkcheck::anf::abs_normal_form(&p.graph, &ev)?.export();
        serde_json::to_string(&form).map_err(|e| Error::input(e.to_string()))
    })
    .map_err(input_err)
}

/// Verify one line of an audit run file; returns the step record as JSON text.
#[pyfunction]
#[pyo3(signature = (line, timeout=10.0))]
fn audit_step(py: Python<'_>, line: &str, timeout: f64) -> PyResult<String> {
    py.detach(|| -> Result<String, Error> {
        let step = audit::parse_line(line)?;
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(Error::input(
                "--timeout must be a positive number of seconds",
            ));
        }
        let mut opts = VerifyOptions::new(Convention::pytorch());
        opts.check.timeout = std::time::Duration::from_secs_f64(timeout.min(1e6));
        let (rec, _) = audit::run_step(&step, &opts)
            .map_err(|e| Error::input(format!("step {}: {e}", step.step)))?;
        serde_json::to_string(&rec).map_err(|e| Error::input(e.to_string()))
    })
    .map_err(input_err)
}

/// Aggregate step records (a JSON array of them): (table text, summary JSON, exit code).
#[pyfunction]
fn audit_summary(records_json: &str) -> PyResult<(String, String, u8)> {
    let recs: Vec<audit::StepRecord> = serde_json::from_str(records_json)
        .map_err(|e| InputError::new_err(format!("audit records: {e}")))?;
    let s = audit::Summary::new(&recs);
    let json = serde_json::to_string(&s).map_err(|e| InputError::new_err(e.to_string()))?;
    Ok((s.table(), json, s.exit_code()))
}

#[pymodule]
fn _kinkcheck(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("InputError", m.py().get_type::<InputError>())?;
    m.add_class::<PyProblem>()?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(load_path, m)?)?;
    m.add_function(wrap_pyfunction!(load_network, m)?)?;
    m.add_function(wrap_pyfunction!(load_onnx_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(anf, m)?)?;
    m.add_function(wrap_pyfunction!(audit_step, m)?)?;
    m.add_function(wrap_pyfunction!(audit_summary, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
