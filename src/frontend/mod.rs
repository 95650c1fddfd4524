//! Front ends: the `.kc` program language ([`kc`] parses, [`program`] lowers), network
//! descriptions ([`network`], `.json`) and ONNX models ([`onnx_proto`] decodes, [`onnx`]
//! lowers). Each produces a [`Problem`]: an evaluation graph
//! with named variables and, for networks, the point carried by the description.

pub mod kc;
pub mod names;
pub mod network;
pub mod onnx;
pub mod onnx_proto;
pub mod program;

pub use names::VarNames;
pub use program::compile;

use crate::error::Error;
use crate::graph::Graph;
use network::{Data, Loss, Network, Wrt};
use std::path::Path;

/// A scalar objective ready for checking: its graph, the names of its variables (in the
/// order of the gradient), and the point the source carries, if any (network weights).
#[derive(Debug, Clone)]
pub struct Problem {
    pub graph: Graph,
    pub var_names: VarNames,
    pub point: Option<Vec<f64>>,
}

fn read_text(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::input(format!("cannot read {}: {e}", path.display())))
}

fn at_path(path: &Path, e: Error) -> Error {
    Error::input(format!("{}: {e}", path.display()))
}

/// Load a source file by its extension: a network description (`.json`), an ONNX model
/// (`.onnx`, which needs `data`), or a `.kc` program (anything else). `data` (a
/// `{"inputs":..,"targets":..}` file), `wrt` and `loss` override the description's own
/// (CONTRACT §2, §4); they are an error for programs.
///
/// ```
/// use kinkcheck::{frontend, report::Verdict, Convention, VerifyOptions};
/// use std::path::Path;
/// let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
/// // THEORY E13: two identical samples sharing a bias; PyTorch's choice is safe
/// let p = frontend::load(&dir.join("networks/e13.json"), None, None, None).unwrap();
/// let x = p.point.clone().unwrap();
/// let r = kinkcheck::verify(&p, &x, &VerifyOptions::new(Convention::pytorch())).unwrap();
/// assert_eq!(r.verdict, Verdict::In);
/// // THEORY E14 as an ONNX model with a batch, differentiated with respect to its inputs
/// let p = frontend::load(
///     &dir.join("onnx/e14_maxpool.onnx"),
///     Some(&dir.join("networks/e14_data.json")),
///     Some(frontend::network::Wrt::Inputs),
///     None,
/// )
/// .unwrap();
/// let r = kinkcheck::verify(&p, &p.point.clone().unwrap(), &VerifyOptions::new(Convention::pytorch())).unwrap();
/// assert_eq!(r.gradient, vec![2.0, 0.0]);
/// assert_eq!(r.verdict, Verdict::Out);
/// ```
pub fn load(
    path: &Path,
    data: Option<&Path>,
    wrt: Option<Wrt>,
    loss: Option<Loss>,
) -> Result<Problem, Error> {
    load_with(path, data, wrt, loss, onnx::ClipRule::default())
}

/// [`load`] with the rule for ONNX `Clip` nodes (`--clip`, CONTRACT §2; ignored for other
/// sources). ONNX tensors stored as external data are read from the model's folder.
///
/// ```
/// use kinkcheck::{frontend, frontend::onnx::ClipRule, report::Verdict, Convention, VerifyOptions};
/// use std::path::Path;
/// let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torch");
/// // a small CNN exported by torch.onnx.export (Conv, ReLU, MaxPool, Flatten, Gemm) with a
/// // batch whose planted kinks are exactly active; PyTorch's gradient wrt the parameters
/// let p = frontend::load_with(
///     &dir.join("lenet_classic.onnx"),
///     Some(&dir.join("lenet_data.json")),
///     None,
///     None,
///     ClipRule::Hardtanh,
/// )
/// .unwrap();
/// let x = p.point.clone().unwrap();
/// let r = kinkcheck::verify(&p, &x, &VerifyOptions::new(Convention::pytorch())).unwrap();
/// assert!(r.active.len() > 0);
/// assert_ne!(r.verdict, Verdict::Out);
/// ```
pub fn load_with(
    path: &Path,
    data: Option<&Path>,
    wrt: Option<Wrt>,
    loss: Option<Loss>,
    clip: onnx::ClipRule,
) -> Result<Problem, Error> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    // the batch and the model are read and parsed at the same time (on two cores, when
    // there are two); an error in the batch is reported first, as if it had been read first
    let parse_data = || match data {
        Some(d) => Data::from_json(&read_text(d)?)
            .map(Some)
            .map_err(|e| at_path(d, e)),
        None => Ok(None),
    };
    let (data, source) = if data.is_some() {
        crate::par::join(parse_data, || read_source(path, &ext))
    } else {
        (parse_data(), read_source(path, &ext))
    };
    let data = data?;
    match source? {
        Source::Network(net) => net
            .problem(data.as_ref(), wrt, loss)
            .map_err(|e| at_path(path, e)),
        Source::Onnx(model) => {
            let data = data.ok_or_else(|| {
                Error::input(format!(
                    "{}: ONNX models need a batch: give --data FILE",
                    path.display()
                ))
            })?;
            onnx::problem_with(&model, &data, wrt, loss, clip).map_err(|e| at_path(path, e))
        }
        Source::Program => {
            if data.is_some() || wrt.is_some() || loss.is_some() {
                return Err(Error::input(
                    "--data, --wrt and --loss apply to network descriptions (.json) and ONNX models (.onnx) only",
                ));
            }
            let text = read_text(path)?;
            compile(&text).map_err(|e| Error::input(format!("{}:{e}", path.display())))
        }
    }
}

/// A source file, read and parsed as far as it can be without the batch.
enum Source {
    Network(Network),
    Onnx(onnx_proto::Model),
    /// A `.kc` program (read once the options are checked).
    Program,
}

/// Read and parse the source at `path` by its extension `ext` (lower case).
fn read_source(path: &Path, ext: &str) -> Result<Source, Error> {
    match ext {
        "json" => Network::from_json(&read_text(path)?)
            .map(Source::Network)
            .map_err(|e| at_path(path, e)),
        "onnx" => {
            let bytes = std::fs::read(path)
                .map_err(|e| Error::input(format!("cannot read {}: {e}", path.display())))?;
            let base = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            onnx_proto::decode_owned(bytes, Some(base))
                .map(Source::Onnx)
                .map_err(|e| at_path(path, e.into()))
        }
        _ => Ok(Source::Program),
    }
}

/// Lower the bytes of an ONNX model (for callers that hold the file in memory, such as the
/// Python package) over the batch `data`. Tensors stored as external data are read from
/// `base_dir`, the folder the model came from; without it, external data is an input error.
/// `wrt`, `loss` and `clip` as in [`load_with`].
pub fn load_onnx_bytes(
    bytes: &[u8],
    base_dir: Option<&Path>,
    data: &Data,
    wrt: Option<Wrt>,
    loss: Option<Loss>,
    clip: onnx::ClipRule,
) -> Result<Problem, Error> {
    let model = onnx_proto::decode_with_base(bytes, base_dir)?;
    onnx::problem_with(&model, data, wrt, loss, clip)
}
