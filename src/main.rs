//! The `kinkcheck` command line (CONTRACT.md §2): a thin layer over the library.

use clap::{Args, Parser, Subcommand};
use kinkcheck::frontend;
use kinkcheck::frontend::network::{Loss, Wrt};
use kinkcheck::{anf, eval, Convention, Error, Problem, Report, VerifyOptions};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

mod huge;

#[global_allocator]
static ALLOC: huge::HugePages = huge::HugePages;

#[derive(Parser)]
#[command(
    name = "kinkcheck",
    version,
    about = "Is the gradient that backward-mode AD returned a Clarke generalized gradient?"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the AD vector (or --gradient) at a point: exit 0 = IN, 1 = OUT, 3 = UNDECIDED.
    Verify(VerifyArgs),
    /// Print the abs-normal form at the point (ADOL-C convention).
    Anf(SourceArgs),
    /// Audit a training run (JSON lines, one per step, as written by the Python package's
    /// `kinkcheck.torch.Audit.save`): exit 0 = every step IN, 1 = some step OUT,
    /// 3 = some UNDECIDED and none OUT.
    Audit(AuditArgs),
}

#[derive(Args)]
struct AuditArgs {
    /// The run file: one JSON object per audited step.
    run: PathBuf,
    /// Print JSON on stdout: {"summary": {..}, "steps": [..]}.
    #[arg(long)]
    json: bool,
    /// Wall-time budget of the LP checker per step, in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

#[derive(Args)]
struct SourceArgs {
    /// A `.kc` program, a network description `.json` or an `.onnx` model.
    source: Option<PathBuf>,
    /// The program text instead of a file.
    #[arg(long, conflicts_with = "source")]
    expr: Option<String>,
    /// The point, comma-separated, in the order of `vars` (for networks: replaces the
    /// point the description carries).
    #[arg(long, allow_hyphen_values = true)]
    at: Option<String>,
    /// A batch `{"inputs": [..], "targets": [..]}` for a network or ONNX model (required for
    /// ONNX; replaces a network description's `data`).
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Differentiate with respect to `params` or `inputs` (networks and ONNX models).
    #[arg(long, value_name = "params|inputs")]
    wrt: Option<String>,
    /// The per-sample loss: mse, l1, hinge, cross_entropy or none (networks and ONNX models).
    #[arg(long, value_name = "NAME")]
    loss: Option<String>,
    /// ONNX `Clip` with two bounds: `hardtanh` (default; nn.Hardtanh/nn.ReLU6, derivative 0
    /// at a bound) or `clamp` (torch.clamp, derivative 1 at a bound).
    #[arg(long, value_name = "clamp|hardtanh")]
    clip: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    src: SourceArgs,
    /// pytorch (default), jax, tensorflow, or sigma=S with S in [-1,1].
    #[arg(long, default_value = "pytorch")]
    convention: String,
    /// Check this vector (comma-separated, or a file holding it) instead of the convention's.
    #[arg(long, allow_hyphen_values = true)]
    gradient: Option<String>,
    /// Most pieces (realized or undecided) the LP checker enumerates.
    #[arg(long, default_value_t = 4096)]
    max_pieces: usize,
    /// Most linear programs the LP checker solves.
    #[arg(long, default_value_t = 20000)]
    max_lps: usize,
    /// Wall-time budget of the LP checker, in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Write the reported Clarke gradient (`clarke_gradient.vector`) to FILE as a JSON array.
    #[arg(long, value_name = "FILE")]
    write_gradient: Option<PathBuf>,
}

fn parse_numbers(text: &str, what: &str) -> Result<Vec<f64>, Error> {
    let t = text.trim().trim_start_matches('[').trim_end_matches(']');
    if t.trim().is_empty() {
        return Ok(vec![]);
    }
    t.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(i, p)| {
            let v: f64 = p.trim().parse().map_err(|_| {
                Error::input(format!("{what}: entry {} ('{p}') is not a number", i + 1))
            })?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(Error::input(format!(
                    "{what}: entry {} is {v} (NaN and infinities are not allowed)",
                    i + 1
                )))
            }
        })
        .collect()
}

fn load(src: &SourceArgs) -> Result<Problem, Error> {
    let wrt: Option<Wrt> = src.wrt.as_deref().map(str::parse).transpose()?;
    let loss: Option<Loss> = src.loss.as_deref().map(str::parse).transpose()?;
    let clip: Option<frontend::onnx::ClipRule> = src.clip.as_deref().map(str::parse).transpose()?;
    let network_flags = src.data.is_some() || wrt.is_some() || loss.is_some() || clip.is_some();
    match (&src.expr, &src.source) {
        (Some(_), _) if network_flags => Err(Error::input(
            "--data, --wrt and --loss apply to network descriptions (.json) and ONNX models (.onnx) only (and --clip to ONNX models)",
        )),
        (Some(text), _) => kinkcheck::compile(text),
        (None, Some(path)) => {
            frontend::load_with(path, src.data.as_deref(), wrt, loss, clip.unwrap_or_default())
        }
        (None, None) => Err(Error::input("give a SOURCE file or --expr 'TEXT'")),
    }
}

/// The point: `--at`, else the one the source carries (borrowed: a network's parameters can
/// be megabytes).
fn point<'p>(src: &SourceArgs, p: &'p Problem) -> Result<std::borrow::Cow<'p, [f64]>, Error> {
    let x: std::borrow::Cow<[f64]> = match (&src.at, &p.point) {
        (Some(at), _) => parse_numbers(at, "--at")?.into(),
        (None, Some(x)) => x.as_slice().into(),
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

fn audit(args: &AuditArgs) -> Result<ExitCode, Error> {
    use kinkcheck::audit;
    let text = std::fs::read_to_string(&args.run)
        .map_err(|e| Error::input(format!("cannot read {}: {e}", args.run.display())))?;
    let steps = audit::parse_run(&text)
        .map_err(|e| Error::input(format!("{}: {e}", args.run.display())))?;
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(Error::input(
            "--timeout must be a positive number of seconds",
        ));
    }
    let mut opts = VerifyOptions::new(Convention::pytorch());
    opts.check.timeout = std::time::Duration::from_secs_f64(args.timeout.min(1e6));
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(steps.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut records = Vec::with_capacity(steps.len());
    for step in &steps {
        let (rec, _) = audit::run_step(step, &opts).map_err(|e| {
            Error::input(format!("{}: step {}: {e}", args.run.display(), step.step))
        })?;
        bar.inc(1);
        records.push(rec);
    }
    bar.finish_and_clear();
    let summary = audit::Summary::new(&records);
    if args.json {
        let v = serde_json::json!({ "summary": summary, "steps": records });
        emit(&format!("{v}\n"));
    } else {
        emit(&summary.table());
    }
    Ok(ExitCode::from(summary.exit_code()))
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.cmd {
        Cmd::Audit(args) => audit(&args),
        Cmd::Anf(src) => {
            let p = load(&src)?;
            let x = point(&src, &p)?;
            let ev = eval::evaluate(&p.graph, &x)?;
            let form = anf::abs_normal_form(&p.graph, &ev)?.export();
            let text = if src.json {
                serde_json::to_string(&form)
            } else {
                serde_json::to_string_pretty(&form)
            }
            .map_err(|e| Error::input(e.to_string()))?;
            emit(&format!("{text}\n"));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify(args) => {
            let p = load(&args.src)?;
            let x = point(&args.src, &p)?;
            let mut opts = VerifyOptions::new(Convention::parse(&args.convention)?);
            if let Some(gtext) = &args.gradient {
                let text = if std::path::Path::new(gtext).is_file() {
                    std::fs::read_to_string(gtext)
                        .map_err(|e| Error::input(format!("cannot read {gtext}: {e}")))?
                } else {
                    gtext.clone()
                };
                opts.gradient = Some(parse_numbers(&text, "--gradient")?);
            }
            opts.check.max_pieces = args.max_pieces;
            opts.check.max_lps = args.max_lps;
            if !(args.timeout.is_finite() && args.timeout > 0.0) {
                return Err(Error::input(
                    "--timeout must be a positive number of seconds",
                ));
            }
            opts.check.timeout = std::time::Duration::from_secs_f64(args.timeout.min(1e6));
            opts.check.progress = std::io::stderr().is_terminal();
            if args.write_gradient.is_some() {
                opts.repair = kinkcheck::report::Repair::Always;
            }
            let report = kinkcheck::verify(&p, &x, &opts)?;
            if let Some(path) = &args.write_gradient {
                match &report.clarke_gradient {
                    Some(c) => {
                        let text = serde_json::to_string(&c.vector)
                            .map_err(|e| Error::input(e.to_string()))?;
                        std::fs::write(path, format!("{text}\n")).map_err(|e| {
                            Error::input(format!("cannot write {}: {e}", path.display()))
                        })?;
                    }
                    None => eprintln!(
                        "kinkcheck: no realized piece is known ({}); {} not written",
                        report.reason,
                        path.display()
                    ),
                }
            }
            if args.src.json {
                emit_report(&report)?;
            } else {
                emit(&report.human());
            }
            Ok(ExitCode::from(report.exit_code()))
        }
    }
}

/// Write to stdout; a closed pipe (`kinkcheck … | head`) is not an error worth a panic.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Stream the JSON report to stdout ([`Report::write_json`]: a large network's report holds
/// hundreds of thousands of numbers and names); a closed pipe is not an error.
fn emit_report(report: &Report) -> Result<(), Error> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, raw_stdout());
    match report.write_json(&mut out) {
        // a serialization error; an error of writing is a closed pipe
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(Error::input(e.to_string())),
        _ => {
            let _ = out.write_all(b"\n").and_then(|_| out.flush());
            Ok(())
        }
    }
}

/// Stdout without its line buffering, for a long text with no newlines (stdout's line
/// writer searches every chunk for one): a duplicate of its descriptor, where there is one
/// (nothing was written through `stdout()` before, so nothing is reordered).
fn raw_stdout() -> Box<dyn Write> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() {
            return Box::new(std::fs::File::from(fd));
        }
    }
    Box::new(std::io::stdout().lock())
}

fn main() -> ExitCode {
    huge::tune();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kinkcheck: {e}");
            ExitCode::from(2)
        }
    }
}
