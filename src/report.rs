//! The report of `verify`: the checked vector, the active switches, and (as the later stages
//! produce them) the analyzer's outcome, the pieces and the verdict with its certificate
//! (CONTRACT.md §3). [`verify`] runs the pipeline of THEORY.md §1 on a [`Problem`].

use crate::analyze::{self, Analysis, AnalyzeOptions};
use crate::anf::{ActiveData, Structure};
use crate::convention::Convention;
use crate::error::Error;
use crate::eval::ReverseSweeper;
use crate::eval::{self, Activity, SwitchState};
use crate::frontend::{Problem, VarNames};
use crate::graph::{Graph, NodeId, SwitchId};
pub use crate::pieces::Verdict;
use crate::pieces::{self, Certificate, Check, CheckOptions, Status};
use crate::reduced::ReducedSpace;
use serde::Serialize;
use std::fmt::Write as _;

/// Options of [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The convention that decides which vector AD returns.
    pub convention: Convention,
    /// Check this vector instead of the convention's AD vector.
    pub gradient: Option<Vec<f64>>,
    /// Relative width of the near-active band, τ_act (THEORY §6.6).
    pub tau_act: f64,
    /// Budgets and tolerances of the LP checker.
    pub check: CheckOptions,
    /// Budgets of the analyzer.
    pub analyze: AnalyzeOptions,
    /// When to compute the [`ClarkeGradient`] (the repair of CONTRACT §3).
    pub repair: Repair,
}

/// When [`verify`] computes the [`ClarkeGradient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Never (saves the repair's LPs).
    Off,
    /// From the realized pieces the verdict needed anyway, plus an enumeration when v is
    /// refuted off the active row space before any (the default).
    Known,
    /// Also when the analyzer's guarantee made the enumeration unnecessary: then the first
    /// realized piece of each block is found. The CLI uses it with `--write-gradient`.
    Always,
}

impl VerifyOptions {
    /// Defaults for a convention.
    pub fn new(convention: Convention) -> Self {
        VerifyOptions {
            convention,
            gradient: None,
            tau_act: eval::TAU_ACT,
            check: CheckOptions::default(),
            analyze: AnalyzeOptions::default(),
            repair: Repair::Known,
        }
    }
}

/// One active (or near-active) switch as reported.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActiveSwitch {
    /// Switch index in evaluation order.
    pub switch: usize,
    /// The kink operation it was lowered from.
    pub op: String,
    /// Its role in that op (`"relu"`, `"clamp.lo"`, …).
    pub role: String,
    /// z(x̂).
    pub z: f64,
    /// Where it comes from (`"line 2:5"`, `"sample 0, layer 1 (relu), unit 3"`).
    #[serde(rename = "where")]
    pub place: String,
    /// The column of the kink function's name in the program line (programs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// `"active"` (z = 0 exactly), `"near"` (inside the tolerance band) or `"degenerate"`
    /// (active, but ż ≡ 0 on every piece, so it is dropped from α).
    pub status: String,
    /// The derivative σ̃ that AD used at |z| (absent with `--gradient`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
}

/// A piece as reported: signs over the active switches of `active` (in that order; 0 for a
/// don't-care switch or one outside the piece's block), its status, gradient and witness.
#[derive(Debug, Clone, Serialize)]
pub struct PieceReport {
    #[serde(serialize_with = "signs_json")]
    pub signs: Vec<i8>,
    pub status: Status,
    /// g(σ) (single block), or the block's contribution g(σ) − g0 when the switches split
    /// into independent blocks. Omitted for very large n.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gradient: Option<Vec<f64>>,
    /// A direction d with the piece's signs on x̂ + εd (realized pieces). Omitted, like the
    /// gradient, for very large n.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witness: Option<Vec<f64>>,
    /// Did the real program show the piece's signs at x̂ + εd for a small ε? (A check of the
    /// witness beside the LP or LIKQ argument that made the piece realized; it decides
    /// nothing. Omitted with the witness for very large n, where it costs as much as a
    /// forward pass over the batch.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witness_checked: Option<bool>,
    pub block: usize,
}

/// `signs` as a JSON array, written in one string: a report lists every active switch in each
/// piece's signs (tens of thousands in a CNN batch, most of them 0 for degenerate switches),
/// and element-by-element serialization of those arrays was a fifth of a whole `verify`.
fn signs_json<S: serde::Serializer>(signs: &[i8], s: S) -> Result<S::Ok, S::Error> {
    let mut t = String::with_capacity(2 + 3 * signs.len());
    t.push('[');
    for (i, &v) in signs.iter().enumerate() {
        if i > 0 {
            t.push(',');
        }
        match v {
            0 => t.push('0'),
            1 => t.push('1'),
            -1 => t.push_str("-1"),
            _ => {
                let _ = write!(t, "{v}");
            }
        }
    }
    t.push(']');
    serde_json::value::RawValue::from_string(t)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

/// The certificate of CONTRACT §3.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum CertificateReport {
    /// IN: convex weights over the listed pieces (`pieces[piece]`), summing to 1 in each block.
    Weights {
        weights: Vec<f64>,
        pieces: Vec<usize>,
    },
    /// OUT: h·v > bound ≥ h·g for every realized or undecided piece g.
    Separation { direction: Vec<f64>, bound: f64 },
}

/// The repair of CONTRACT §3: a certified Clarke gradient near the checked vector v.
///
/// `vector` is a convex combination of the gradients of REALIZED pieces only (never undecided
/// ones), with `weights` over `pieces` (indices into [`Report::pieces`]); when the switches split
/// into independent blocks (THEORY §6.4) the weights sum to 1 in each block and
/// `vector = g0 + Σ weights·gradient` (the pieces' gradients are then block contributions),
/// which is a convex combination of joint pieces (product weights). `distance` is
/// ‖vector − v‖_∞, computed from the vector itself, so it is never wrong.
///
/// Which point it is: for verdict IN with convex weights, v itself (distance 0). Otherwise the
/// ∞-norm hull LP in R^n over the realized pieces (blocks: over the Minkowski sum of the
/// blocks' hulls), which gives the exact ∞-nearest point of their hull; when that LP would be
/// too large (many variables reached by the switches times many pieces) the per-block hull
/// LPs of the reduced space (§6.5) are used instead, whose point is a Clarke gradient but not
/// necessarily the ∞-nearest one. `nearest` says whether `vector` is proven the point of
/// ∂^C f(x̂) = conv(all realized pieces) nearest to v: distance 0, or the exact LP after a
/// complete enumeration. Otherwise `distance` is an upper bound on the least distance.
#[derive(Debug, Clone, Serialize)]
pub struct ClarkeGradient {
    /// The Clarke gradient, in the source's variable order. Omitted from the JSON when
    /// n > 10 000 (`kinkcheck verify --write-gradient FILE` writes it as a JSON array).
    #[serde(skip_serializing_if = "too_long")]
    pub vector: Vec<f64>,
    /// Convex weights (positive), one per entry of `pieces`.
    pub weights: Vec<f64>,
    /// Indices into the report's `pieces` (all realized).
    pub pieces: Vec<usize>,
    /// δ = ‖vector − v‖_∞.
    pub distance: f64,
    /// The norm of `distance`: always `"inf"`.
    pub norm: &'static str,
    /// Is `vector` proven the point of ∂^C f(x̂) nearest to v in the ∞-norm?
    pub nearest: bool,
    /// How it was found: `"certificate"` (verdict IN: v itself), `"gradient"` (no active
    /// switch: ∇f), `"full"` (the ∞-norm hull LP in R^n) or `"reduced"` (the reduced-space
    /// hull LPs, when the full one would be too large).
    pub hull: &'static str,
    /// Linear programs solved for the repair alone (not counted in [`Report::lps`]).
    pub lps: usize,
}

fn too_long(v: &[f64]) -> bool {
    v.len() > PRINT_N
}

/// The result of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    /// One line on how the verdict was reached.
    pub reason: String,
    /// The vector that was checked, in the source's variable order.
    pub gradient: Vec<f64>,
    /// The convention's name, or `"explicit"` with `--gradient`.
    pub convention: String,
    /// The active and near-active switches.
    pub active: Vec<ActiveSwitch>,
    /// The analyzer's outcome (THEORY §5).
    pub analyzer: Analysis,
    /// Realized and undecided pieces (and some unrealized ones), from the LP checker.
    pub pieces: Vec<PieceReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateReport>,
    /// A certified Clarke gradient nearest to the checked vector (CONTRACT §3), present when
    /// at least one realized piece is known in every block (or no switch is active).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clarke_gradient: Option<ClarkeGradient>,
    /// Blocks of independent switches (indices into `active`).
    pub blocks: Vec<Vec<usize>>,
    /// Was the piece enumeration complete, and how many LPs did it take?
    pub complete: bool,
    pub lps: usize,
    /// Variable names, in order.
    pub variables: VarNames,
    /// The value f(x̂) and the number of switches s.
    pub value: f64,
    pub switches: usize,
    /// Modelling assumptions the verdict rests on, one line each (always present, possibly
    /// empty): the rule used for every ONNX `Clip` node with an active switch (CONTRACT §2,
    /// `--clip`).
    pub assumptions: Vec<String>,
    /// The JSON text of `gradient` and `variables`, when it was spelled during [`verify`].
    #[serde(skip)]
    spelled: Option<std::sync::Arc<Spelled>>,
}

impl Report {
    /// Write the report as JSON (CONTRACT §4): the text `serde_json` writes for `self`, but
    /// the two arrays with one entry per variable (`gradient`, `variables`) are streamed
    /// through one reused buffer, without serde's per-element calls; every other field goes
    /// through `serde_json`. A test compares both texts on reports with every field.
    ///
    /// ```
    /// use kinkcheck::{compile, verify, Convention, VerifyOptions};
    /// let p = compile("vars x\nf = relu(x) - relu(-x)\n").unwrap();
    /// let r = verify(&p, &[0.0], &VerifyOptions::new(Convention::pytorch())).unwrap();
    /// let mut text = Vec::new();
    /// r.write_json(&mut text).unwrap();
    /// assert_eq!(text, serde_json::to_vec(&r).unwrap());
    /// ```
    pub fn write_json<W: std::io::Write + ?Sized>(&self, w: &mut W) -> std::io::Result<()> {
        match self.spelled.as_deref().filter(|t| t.is_of(self)) {
            Some(t) => self.write_json_with(
                w,
                |w| {
                    w.write_all(b"[")?;
                    for part in &t.parts {
                        w.write_all(part)?;
                    }
                    w.write_all(b"]")
                },
                |w| t.names_text.iter().try_for_each(|c| w.write_all(c)),
            ),
            None => self.write_json_with(
                w,
                |w| write_json_floats(&self.gradient, w),
                |w| self.variables.write_json(w),
            ),
        }
    }

    /// The report's text with the gradient array and the names array written by `gradient`
    /// and `names`.
    fn write_json_with<W: std::io::Write + ?Sized>(
        &self,
        w: &mut W,
        gradient: impl FnOnce(&mut W) -> std::io::Result<()>,
        names: impl FnOnce(&mut W) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        fn field<W: std::io::Write + ?Sized, T: Serialize + ?Sized>(
            w: &mut W,
            first: bool,
            name: &str,
            value: &T,
        ) -> std::io::Result<()> {
            w.write_all(if first { b"{\"" } else { b",\"" })?;
            w.write_all(name.as_bytes())?;
            w.write_all(b"\":")?;
            serde_json::to_writer(&mut *w, value).map_err(std::io::Error::from)
        }
        field(w, true, "verdict", &self.verdict)?;
        field(w, false, "reason", &self.reason)?;
        w.write_all(b",\"gradient\":")?;
        gradient(w)?;
        field(w, false, "convention", &self.convention)?;
        field(w, false, "active", &self.active)?;
        field(w, false, "analyzer", &self.analyzer)?;
        field(w, false, "pieces", &self.pieces)?;
        if let Some(c) = &self.certificate {
            field(w, false, "certificate", c)?;
        }
        if let Some(c) = &self.clarke_gradient {
            field(w, false, "clarke_gradient", c)?;
        }
        field(w, false, "blocks", &self.blocks)?;
        field(w, false, "complete", &self.complete)?;
        field(w, false, "lps", &self.lps)?;
        w.write_all(b",\"variables\":")?;
        names(w)?;
        field(w, false, "value", &self.value)?;
        field(w, false, "switches", &self.switches)?;
        field(w, false, "assumptions", &self.assumptions)?;
        w.write_all(b"}")
    }
}

/// Gradients at least this long are spelled as JSON on another core while [`verify`] runs
/// the analysis (see [`Spelled`]); below, starting a thread costs more than it saves.
pub const PAR_JSON_MIN: usize = 1 << 15;

/// The JSON text of a long gradient (in consecutive parts, each but the first led by its
/// comma, no brackets), spelled by [`spell_jobs`] while [`verify`] runs the analysis, and of
/// the variable names (the whole array, in the chunks of [`Chunks`]), spelled from the start
/// of [`verify`], so that [`Report::write_json`] costs little more than the writes. It is
/// used only while the report's `gradient` and `variables` are still those it spells (the
/// fields are public): the names are compared, the gradient by its [`fingerprint`] (no copy
/// of it is kept: fresh memory is what costs most in a large `verify`).
#[derive(Clone)]
struct Spelled {
    fingerprint: [u64; 3],
    names: VarNames,
    parts: Vec<Vec<u8>>,
    names_text: Vec<Vec<u8>>,
}

impl Spelled {
    /// Whether this is the text of `r`'s gradient and names.
    fn is_of(&self, r: &Report) -> bool {
        self.fingerprint == fingerprint(&r.gradient) && self.names.same_runs(&r.variables)
    }
}

/// The length and two 64-bit hashes of the bits of `v`. Each step of a hash,
/// `h ← (rotl(h, r) ⊕ bits) · K` with K odd, is one-to-one in h and in the entry's bits, so a
/// vector that differs from `v` in one entry (or in length) always has another fingerprint;
/// vectors differing in several entries collide with chance about 2⁻¹²⁸.
fn fingerprint(v: &[f64]) -> [u64; 3] {
    let (mut a, mut b) = (0u64, 0u64);
    for x in v {
        let t = x.to_bits();
        a = (a.rotate_left(5) ^ t).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        b = (b.rotate_left(23) ^ t).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    }
    [v.len() as u64, a, b]
}

/// A writer that keeps what it is given in chunks of at least [`Chunks::SIZE`] bytes, each
/// allocated once at that size: no reallocation copies the text as it grows, and it is
/// written out in few large writes.
#[derive(Default)]
struct Chunks(Vec<Vec<u8>>);

impl Chunks {
    const SIZE: usize = 1 << 20;
}

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.last_mut() {
            Some(c) if c.capacity() - c.len() >= buf.len() => c.extend_from_slice(buf),
            _ => {
                let mut c = Vec::with_capacity(buf.len().max(Self::SIZE));
                c.extend_from_slice(buf);
                self.0.push(c);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for Spelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes: usize = self
            .parts
            .iter()
            .chain(&self.names_text)
            .map(Vec::len)
            .sum();
        write!(f, "Spelled({bytes} bytes of JSON)")
    }
}

/// Whether [`verify`] spells the report's long arrays on other cores: a gradient of at least
/// [`PAR_JSON_MIN`] entries and more than one thread ([`crate::par::threads`]).
fn spell_beside(n: usize) -> bool {
    n >= PAR_JSON_MIN && crate::par::threads() >= 2
}

/// Jobs that spell `gradient` as JSON in `4 × threads` parts; the bytes are those of the
/// one-thread writer.
fn spell_jobs(
    gradient: &[f64],
) -> crate::par::Jobs<Vec<u8>, impl Fn(usize) -> Vec<u8> + Sync + '_> {
    let n = gradient.len();
    let parts = 4 * crate::par::threads().max(1);
    let per = n.div_ceil(parts);
    crate::par::Jobs::new(parts, move |job| {
        let mut text = Vec::new();
        let (lo, hi) = ((job * per).min(n), ((job + 1) * per).min(n));
        push_json_floats(&gradient[lo..hi], job > 0, &mut text);
        text
    })
}

/// Append the elements of `v` as `write_json_floats` spells them, without the brackets, each
/// but the first led by a comma (the first too when `lead` is set).
fn push_json_floats(v: &[f64], lead: bool, out: &mut Vec<u8>) {
    out.reserve(25 * v.len() + 1);
    let mut buf = zmij::Buffer::new();
    for (i, &x) in v.iter().enumerate() {
        if i > 0 || lead {
            out.push(b',');
        }
        if x.is_finite() {
            out.extend_from_slice(buf.format_finite(x).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
}

/// Write `v` as a JSON array: the text `serde_json` writes for it (shortest round trip, by
/// the same `zmij` formatter; `null` for NaN and infinities), through one reused buffer.
pub fn write_json_floats<W: std::io::Write + ?Sized>(v: &[f64], w: &mut W) -> std::io::Result<()> {
    let mut out = crate::frontend::names::JsonBuf::new(w);
    let mut buf = zmij::Buffer::new();
    out.byte(b'[')?;
    for (i, &x) in v.iter().enumerate() {
        if i > 0 {
            out.byte(b',')?;
        }
        if x.is_finite() {
            out.push(buf.format_finite(x).as_bytes())?;
        } else {
            out.push(b"null")?;
        }
    }
    out.byte(b']')?;
    out.finish()
}

/// LP budget of the reporting-only enumeration after a guaranteed IN (k ≤ 12 switches, at most
/// 64 pieces: the prefix search needs at most 2k·64 = 1536 strict LPs, THEORY §6.3).
const REPORT_LPS: usize = 1024;

/// Largest n for which piece gradients and witnesses are printed in full.
const PRINT_N: usize = 10_000;

struct Stage {
    data: ActiveData,
    analysis: Analysis,
    check: Check,
    space: ReducedSpace,
    /// LPs of the enumeration run for the repair alone.
    repair_lps: usize,
}

/// The analyzer and checker on the reduced data of one active set (THEORY §6).
fn run_stage(
    g: &Graph,
    z: &[f64],
    data: ActiveData,
    v: &[f64],
    opts: &VerifyOptions,
) -> Result<Stage, Error> {
    let structure = Structure::compute(g, &data.active);
    let space = ReducedSpace::new(&data);
    let sigma_alpha: Option<Vec<f64>> = opts.gradient.is_none().then(|| {
        data.active
            .iter()
            .zip(&structure.roles)
            .map(|(s, &r)| opts.convention.abs_derivative(r, z[s.0]))
            .collect()
    });
    let analysis = analyze::analyze(
        &data,
        &space,
        &structure,
        sigma_alpha.as_deref(),
        &opts.analyze,
    );
    // When the analyzer guarantees IN, the enumeration is for reporting only and must not
    // delay the verdict (THEORY §6.7): small problems get a short enumeration, larger ones the
    // weight-support certificate when it is small, else none.
    let check = if analysis.guaranteed && data.k() > pieces::SINGLE_BLOCK_K {
        sigma_alpha
            .as_deref()
            .and_then(|s| pieces::support_certificate(&data, &space, s, v, 64))
            .unwrap_or_else(|| Check::skipped("the analyzer's guarantee decides; no enumeration"))
    } else {
        let mut copts = opts.check.clone();
        if analysis.guaranteed {
            // reporting only: a short enumeration bounded by counts, not by wall time, so
            // that the report does not depend on the speed of the machine (issue 13)
            copts.max_pieces = copts.max_pieces.min(64);
            copts.max_lps = copts.max_lps.min(REPORT_LPS);
        }
        pieces::check(&data, &space, &structure, v, &copts)
    };
    // The repair needs realized pieces: v off the active row space is OUT before any
    // enumeration, and the analyzer's guarantee may skip it; enumerate for the report then.
    let mut check = check;
    let mut repair_lps = 0;
    if data.k() > 0
        && check.blocks.is_empty()
        && ((check.verdict == Verdict::Out && opts.repair != Repair::Off)
            || (opts.repair == Repair::Always && analysis.guaranteed))
    {
        let e = pieces::enumerate(&data, &space, &structure, &opts.check, analysis.guaranteed);
        repair_lps = e.lps;
        check.complete = e.truncated.is_none();
        check.pieces = e.pieces;
        check.blocks = e.blocks;
    }
    Ok(Stage {
        data,
        analysis,
        check,
        space,
        repair_lps,
    })
}

fn combine(st: &Stage) -> (Verdict, String) {
    let (a, c) = (&st.analysis, &st.check);
    if a.guaranteed {
        match c.verdict {
            Verdict::Out => (
                Verdict::Undecided,
                format!(
                    "tolerance conflict: the analyzer guarantees the vector ({}) but the LP checker separates it ({})",
                    a.reason, c.reason
                ),
            ),
            _ => (Verdict::In, format!("guaranteed by the analyzer: {}", a.reason)),
        }
    } else {
        (c.verdict, c.reason.clone())
    }
}

/// Run the pipeline on `problem` at `point`: AD under the convention (or the given vector),
/// active switches, analyzer, LP checker, verdict and certificate.
pub fn verify(problem: &Problem, point: &[f64], opts: &VerifyOptions) -> Result<Report, Error> {
    if !spell_beside(problem.graph.n_vars()) {
        return verify_with(problem, point, opts, None);
    }
    // The JSON text of the names does not depend on the point: another core spells it from
    // the start (while this one evaluates), see [`Spelled`].
    std::thread::scope(|scope| {
        let names = scope.spawn(|| {
            let mut text = Chunks::default();
            // writing into memory cannot fail
            let _ = problem.var_names.write_json(&mut text);
            text.0
        });
        verify_with(problem, point, opts, Some(names))
    })
}

/// [`verify`], with the names' JSON text being spelled by `names` when it is given.
fn verify_with(
    problem: &Problem,
    point: &[f64],
    opts: &VerifyOptions,
    names: Option<std::thread::ScopedJoinHandle<'_, Vec<Vec<u8>>>>,
) -> Result<Report, Error> {
    let g = &problem.graph;
    if let Some(v) = &opts.gradient {
        if v.len() != g.n_vars() {
            return Err(Error::input(format!(
                "--gradient has {} entries, the problem has {} variables",
                v.len(),
                g.n_vars()
            )));
        }
        if v.iter().any(|c| !c.is_finite()) {
            return Err(Error::input("--gradient contains NaN or infinity"));
        }
    }
    let ev = eval::evaluate(g, point)?;
    let states = eval::switch_states_bounded(g, &ev, opts.tau_act);
    let z: Vec<f64> = states.iter().map(|s| s.z).collect();
    let exact: Vec<SwitchId> = states
        .iter()
        .filter(|s| s.activity == Activity::Active)
        .map(|s| s.id)
        .collect();
    let near: Vec<SwitchId> = states
        .iter()
        .filter(|s| s.activity == Activity::Near)
        .map(|s| s.id)
        .collect();
    // One set of sweep buffers for every stage: they are as large as the graph's values.
    let mut sw = ReverseSweeper::new(g, &ev);
    let data = ActiveData::compute_in(&mut sw, &z, &exact)?;
    let gradient = match &opts.gradient {
        Some(v) => v.clone(),
        // The AD vector under the convention (near-active switches take sign(zᵢ), as a
        // framework's comparison does) from the reduced data, AD(σ̃) = g0 + b̂Σ̃(I − L̂Σ̃)⁻¹J_α
        // (THEORY §3): the same vector as one reverse sweep with the convention's rules
        // (`eval::ad`), without that sweep.
        None => {
            let sigma: Vec<f64> = data
                .active
                .iter()
                .map(|s| {
                    let st = &states[s.0];
                    opts.convention.abs_derivative(st.role, st.z)
                })
                .collect();
            data.ad_sparse(&sigma)
        }
    };
    if gradient.iter().any(|c| !c.is_finite()) {
        return Err(Error::input(
            "the AD vector overflows (an entry is not finite) at this point",
        ));
    }
    // The JSON text of a long gradient is spelled on another core while this one runs the
    // analysis (and helps when it is done); the names' text has been spelled since the start.
    let spell = names.map(|h| (h, spell_jobs(&gradient)));
    let analysed = std::thread::scope(|scope| {
        if let Some((_, jobs)) = &spell {
            scope.spawn(|| jobs.work());
        }
        let analysed = analyse(g, &z, data, &exact, &near, &gradient, opts, &mut sw);
        if let Some((_, jobs)) = &spell {
            match analysed {
                Ok(_) => jobs.work(),
                Err(_) => jobs.stop(),
            }
        }
        analysed
    });
    let (stage, verdict, reason) = analysed?;
    let spelled = spell.and_then(|(names, jobs)| {
        // a panic while spelling the names panics here, as it would have on this thread
        let names_text = names
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        jobs.into_results().map(|parts| {
            std::sync::Arc::new(Spelled {
                fingerprint: fingerprint(&gradient),
                names: problem.var_names.clone(),
                parts,
                names_text,
            })
        })
    });
    let sigma = |s: &SwitchState| {
        opts.gradient
            .is_none()
            .then(|| opts.convention.abs_derivative(s.role, s.z))
    };
    let active: Vec<ActiveSwitch> = states
        .iter()
        .filter(|s| s.activity != Activity::Inactive)
        .map(|s| {
            let status = match s.activity {
                Activity::Near => "near",
                // `degenerate` is ascending (a sub-list of α)
                _ if stage.data.degenerate.binary_search(&s.id).is_ok() => "degenerate",
                _ => "active",
            };
            describe_switch(g, s, status, sigma(s))
        })
        .collect();
    // map α positions to positions in `active`
    let pos_in_active: Vec<usize> = stage
        .data
        .active
        .iter()
        .map(|s| active.iter().position(|a| a.switch == s.0).unwrap_or(0))
        .collect();
    let n = g.n_vars();
    let single = stage.check.blocks.len() <= 1;
    let mut wbuf = Vec::new(); // one value buffer for every witness evaluation
    let pieces: Vec<PieceReport> = stage
        .check
        .pieces
        .iter()
        .map(|p| {
            let block = stage.check.blocks.get(p.block).cloned().unwrap_or_default();
            let mut signs = vec![0i8; active.len()];
            for (&i, &s) in block.iter().zip(&p.signs) {
                signs[pos_in_active[i]] = s;
            }
            let gradient = (n <= PRINT_N).then(|| {
                let contribution = stage.space.lift(&stage.data, &p.offset);
                if single {
                    contribution
                        .iter()
                        .zip(&stage.data.g0)
                        .map(|(a, b)| a + b)
                        .collect()
                } else {
                    contribution
                }
            });
            let witness = p
                .witness
                .as_ref()
                .filter(|_| n <= PRINT_N)
                .map(|e| stage.space.lift(&stage.data, e));
            let witness_checked = witness.as_ref().map(|d| {
                witness_holds(g, point, d, &stage.data.active, &block, &p.signs, &mut wbuf)
            });
            PieceReport {
                signs,
                status: p.status,
                gradient,
                witness,
                witness_checked,
                block: p.block,
            }
        })
        .collect();
    let certificate = if verdict == Verdict::Undecided {
        None
    } else {
        match &stage.check.certificate {
            Some(Certificate::Weights(w)) if verdict == Verdict::In => {
                Some(CertificateReport::Weights {
                    weights: w.iter().map(|x| x.1).collect(),
                    pieces: w.iter().map(|x| x.0).collect(),
                })
            }
            Some(Certificate::Direction { h, bound }) if verdict == Verdict::Out => {
                Some(CertificateReport::Separation {
                    direction: h.clone(),
                    bound: *bound,
                })
            }
            _ => None,
        }
    };
    let blocks = stage
        .check
        .blocks
        .iter()
        .map(|b| b.iter().map(|&i| pos_in_active[i]).collect())
        .collect();
    let clarke_gradient = if opts.repair == Repair::Off {
        None
    } else {
        clarke_gradient(&stage, &gradient, verdict, &certificate)
    };
    Ok(Report {
        verdict,
        reason,
        gradient,
        convention: if opts.gradient.is_some() {
            "explicit".into()
        } else {
            opts.convention.name().to_string()
        },
        active,
        analyzer: stage.analysis,
        pieces,
        certificate,
        clarke_gradient,
        blocks,
        complete: stage.check.complete,
        lps: stage.check.lps,
        variables: problem.var_names.clone(),
        value: ev.output(g)?,
        switches: g.n_switches(),
        assumptions: clip_assumptions(g, &states),
        spelled,
    })
}

/// The analyzer and checker on the exact active set and, when some switches are only near
/// active, on both sets (THEORY §6.6): the stage reported, its verdict and reason.
#[allow(clippy::too_many_arguments)]
fn analyse(
    g: &Graph,
    z: &[f64],
    data: ActiveData,
    exact: &[SwitchId],
    near: &[SwitchId],
    gradient: &[f64],
    opts: &VerifyOptions,
    sw: &mut ReverseSweeper,
) -> Result<(Stage, Verdict, String), Error> {
    let stage = run_stage(g, z, data, gradient, opts)?;
    let (mut verdict, mut reason) = combine(&stage);
    let mut stage = stage;
    if !near.is_empty() {
        // THEORY §6.6: decide with the near-active switches inactive and active.
        let mut both: Vec<SwitchId> = exact.iter().chain(near).copied().collect();
        both.sort();
        let alt_data = ActiveData::compute_in(sw, z, &both)?;
        let alt = run_stage(g, z, alt_data, gradient, opts)?;
        let (v2, r2) = combine(&alt);
        if v2 != verdict {
            reason = format!(
                "activeness within tolerance: {} switch(es) with 0 < |z| ≤ τ_act·scale give {:?} when treated as kinks and {:?} otherwise",
                near.len(),
                v2,
                verdict
            );
            verdict = Verdict::Undecided;
        } else if alt.check.pieces.len() > stage.check.pieces.len() {
            stage = alt;
            reason = r2;
        }
    }
    Ok((stage, verdict, reason))
}

/// One line per ONNX `Clip` node (by name, over all samples) that has an active or
/// near-active switch: which PyTorch operator's rule at a bound was assumed.
fn clip_assumptions(g: &Graph, states: &[SwitchState]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in states.iter().filter(|s| s.activity != Activity::Inactive) {
        let (k, _) = g.switch_location(s.id);
        let an = &g.abs_nodes()[k];
        let crate::graph::Origin::OnnxNode { name, .. } = &an.origin else {
            continue;
        };
        let rule = match an.role {
            crate::graph::Role::ClampLo | crate::graph::Role::ClampHi => {
                "clamp rule (derivative 1 at a bound; --clip hardtanh for nn.Hardtanh/nn.ReLU6, and torch.clamp with number bounds in torch 2.15)"
            }
            crate::graph::Role::HardtanhLo
            | crate::graph::Role::HardtanhHi
            | crate::graph::Role::Relu6Lo
            | crate::graph::Role::Relu6Hi => {
                "hardtanh rule (derivative 0 at a bound, as nn.Hardtanh, nn.ReLU6 and torch.clamp with number bounds in torch 2.15; --clip clamp for derivative 1)"
            }
            _ => continue,
        };
        let line = format!("ONNX Clip node '{name}' has an active switch: {rule}");
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out
}

/// Most entries (varying coordinates × pieces) of the exact ∞-norm hull LP in R^n; above it
/// the repair uses the reduced-space hull LPs. At the limit, a dense LP takes 0.15–0.25 s
/// (1000 coordinates × 100 pieces, 500 × 200, 2000 × 50, measured once).
const EXACT_LP_ENTRIES: usize = 100_000;

/// The repair (CONTRACT §3, THEORY §6.5): see [`ClarkeGradient`].
fn clarke_gradient(
    stage: &Stage,
    v: &[f64],
    verdict: Verdict,
    certificate: &Option<CertificateReport>,
) -> Option<ClarkeGradient> {
    let (data, space, check) = (&stage.data, &stage.space, &stage.check);
    let lps = stage.repair_lps;
    let g0 = &data.g0;
    let dist = |x: &[f64]| {
        x.iter()
            .zip(v)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    let made = |vector: Vec<f64>, weights, pieces, nearest, hull, lps| {
        let distance = dist(&vector);
        Some(ClarkeGradient {
            vector,
            weights,
            pieces,
            distance,
            norm: "inf",
            nearest: nearest || distance == 0.0,
            hull,
            lps,
        })
    };
    if data.k() == 0 {
        // differentiable: the gradient is the only Clarke gradient
        let vector = if verdict == Verdict::In {
            v.to_vec()
        } else {
            g0.clone()
        };
        return made(vector, vec![], vec![], true, "gradient", lps);
    }
    if let (Verdict::In, Some(CertificateReport::Weights { weights, pieces })) =
        (verdict, certificate)
    {
        if !pieces.is_empty() {
            return made(
                v.to_vec(),
                weights.clone(),
                pieces.clone(),
                true,
                "certificate",
                lps,
            );
        }
    }
    let nb = check.blocks.len();
    let groups: Vec<Vec<usize>> = (0..nb)
        .map(|b| {
            (0..check.pieces.len())
                .filter(|&i| {
                    check.pieces[i].block == b && check.pieces[i].status == Status::Realized
                })
                .collect()
        })
        .collect();
    if nb == 0 || groups.iter().any(|g| g.is_empty()) {
        return None;
    }
    let single = nb == 1;
    let lifted: Vec<Vec<Vec<f64>>> = groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|&i| {
                    let c = space.lift(data, &check.pieces[i].offset);
                    if single {
                        c.iter().zip(g0).map(|(a, b)| a + b).collect()
                    } else {
                        c
                    }
                })
                .collect()
        })
        .collect();
    let target: Vec<f64> = if single {
        v.to_vec()
    } else {
        v.iter().zip(g0).map(|(a, b)| a - b).collect()
    };
    let varying = (0..v.len())
        .filter(|&j| lifted.iter().any(|g| g.iter().any(|p| p[j] != g[0][j])))
        .count();
    let total: usize = groups.iter().map(|g| g.len()).sum();
    let assemble = |weights: &[(usize, usize, f64)]| {
        let mut vector = if single {
            vec![0.0; v.len()]
        } else {
            g0.clone()
        };
        for &(b, k, w) in weights {
            for (a, p) in vector.iter_mut().zip(&lifted[b][k]) {
                *a += w * p;
            }
        }
        vector
    };
    // (block, position in the block's group, weight)
    let mut chosen: Vec<(usize, usize, f64)> = Vec::new();
    let mut exact = false;
    let mut lps = lps;
    if varying * (total + 1) <= EXACT_LP_ENTRIES {
        lps += 1;
        if let Ok(h) = crate::lp::hull_distance_groups(&lifted, &target) {
            let mut it = h.weights.iter();
            for (b, g) in groups.iter().enumerate() {
                for k in 0..g.len() {
                    let w = *it.next().unwrap_or(&0.0);
                    if w > 0.0 {
                        chosen.push((b, k, w));
                    }
                }
            }
            exact = true;
        }
    }
    if !exact {
        // the reduced-space hull LPs of the checker (per block)
        if check.hull.len() != nb || check.hull.iter().any(|h| h.is_none()) {
            return None;
        }
        for (b, h) in check.hull.iter().enumerate() {
            for &(i, w) in h.as_deref().unwrap_or(&[]) {
                if w > 0.0 {
                    let k = groups[b].iter().position(|&j| j == i)?;
                    chosen.push((b, k, w));
                }
            }
        }
    }
    let vector = assemble(&chosen);
    let weights = chosen.iter().map(|c| c.2).collect();
    let pieces = chosen.iter().map(|c| groups[c.0][c.1]).collect();
    let hull = if exact { "full" } else { "reduced" };
    made(vector, weights, pieces, exact && check.complete, hull, lps)
}

/// Evaluate the program at x̂ + εd for decreasing ε and check the block's switch signs
/// (`vals`: a value buffer reused between calls).
fn witness_holds(
    g: &Graph,
    x: &[f64],
    d: &[f64],
    alpha: &[SwitchId],
    block: &[usize],
    signs: &[i8],
    vals: &mut Vec<f64>,
) -> bool {
    let dn = d.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if dn == 0.0 {
        return false;
    }
    let xn = x.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    // only the block's switches are read: evaluate the nodes they depend on (in a batch, the
    // samples they belong to), not the whole graph
    let at: Vec<(NodeId, usize)> = block
        .iter()
        .map(|&i| {
            let (k, e) = g.switch_location(alpha[i]);
            (g.abs_nodes()[k].arg, e)
        })
        .collect();
    let cone = eval::ancestors(g, &at.iter().map(|a| a.0).collect::<Vec<_>>());
    let mut xp = vec![0.0; x.len()];
    for k in 2..8 {
        let eps = xn * 10f64.powi(-k) / dn;
        for ((p, a), b) in xp.iter_mut().zip(x).zip(d) {
            *p = a + eps * b;
        }
        if eval::evaluate_on(g, &xp, &cone, vals).is_err() {
            continue;
        }
        let ok = at.iter().zip(signs).all(|(&(arg, e), &s)| {
            let zi = vals[g.node(arg).offset + e];
            s == 0 || (s > 0 && zi > 0.0) || (s < 0 && zi < 0.0)
        });
        if ok {
            return true;
        }
    }
    false
}

fn describe_switch(g: &Graph, s: &SwitchState, status: &str, sigma: Option<f64>) -> ActiveSwitch {
    let (k, e) = g.switch_location(s.id);
    let an = &g.abs_nodes()[k];
    ActiveSwitch {
        switch: s.id.0,
        op: an.role.op_name().to_string(),
        role: an.role.name().to_string(),
        z: s.z,
        place: an.origin.describe(e, g.len(an.node)),
        column: an.origin.column(),
        status: status.to_string(),
        sigma,
    }
}

/// A number for humans: plain for moderate magnitudes, scientific otherwise.
fn num(c: f64) -> String {
    if c != 0.0 && (c.abs() < 1e-4 || c.abs() >= 1e7) {
        format!("{c:.6e}")
    } else {
        let s = format!("{c:.10}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" {
            "0".into()
        } else {
            s.to_string()
        }
    }
}

fn fmt_vec(v: &[f64]) -> String {
    const SHOW: usize = 12;
    let parts: Vec<String> = v.iter().take(SHOW).map(|&c| num(c)).collect();
    if v.len() > SHOW {
        format!("[{}, … ({} entries)]", parts.join(", "), v.len())
    } else {
        format!("[{}]", parts.join(", "))
    }
}

fn fmt_signs(s: &[i8]) -> String {
    s.iter()
        .map(|&x| match x {
            1 => '+',
            -1 => '-',
            _ => '0',
        })
        .collect()
}

impl Report {
    /// The exit status of CONTRACT §2: 0 IN, 1 OUT, 3 UNDECIDED.
    pub fn exit_code(&self) -> u8 {
        match self.verdict {
            Verdict::In => 0,
            Verdict::Out => 1,
            Verdict::Undecided => 3,
        }
    }

    /// The human-readable report.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "f(x̂) = {}   ({} variables, {} switches)",
            num(self.value),
            self.variables.len(),
            self.switches
        );
        let _ = writeln!(
            s,
            "gradient ({}): {}",
            self.convention,
            fmt_vec(&self.gradient)
        );
        for a in &self.assumptions {
            let _ = writeln!(s, "assumption: {a}");
        }
        if self.active.is_empty() {
            let _ = writeln!(s, "no switch is at a kink: f is differentiable here");
        } else {
            let _ = writeln!(s, "switches at a kink:");
            for a in self.active.iter().take(20) {
                let sig = a
                    .sigma
                    .map(|v| format!(", AD used σ̃ = {v}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  #{:<4} {:<14} z = {:<10} {} ({}{})",
                    a.switch,
                    a.role,
                    num(a.z),
                    match a.column {
                        Some(c) => format!("{}:{c}", a.place),
                        None => a.place.clone(),
                    },
                    a.status,
                    sig
                );
            }
            if self.active.len() > 20 {
                let _ = writeln!(s, "  … {} more", self.active.len() - 20);
            }
        }
        let _ = writeln!(
            s,
            "analyzer: {}",
            if self.analyzer.guaranteed {
                format!("guaranteed ({})", self.analyzer.reason)
            } else {
                format!("not guaranteed ({})", self.analyzer.reason)
            }
        );
        if !self.pieces.is_empty() {
            let _ = writeln!(
                s,
                "pieces ({} listed{}, {} LPs):",
                self.pieces.len(),
                if self.complete {
                    ""
                } else {
                    ", enumeration cut short"
                },
                self.lps
            );
            for p in self.pieces.iter().take(16) {
                let g = p.gradient.as_deref().map(fmt_vec).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {:<12} {:<10} {}",
                    fmt_signs(&p.signs),
                    format!("{:?}", p.status).to_lowercase(),
                    g
                );
            }
            if self.pieces.len() > 16 {
                let _ = writeln!(s, "  … {} more", self.pieces.len() - 16);
            }
        }
        let word = match self.verdict {
            Verdict::In => "IN: the vector is a Clarke generalized gradient",
            Verdict::Out => "OUT: the vector is NOT a Clarke generalized gradient",
            Verdict::Undecided => "UNDECIDED",
        };
        let _ = writeln!(s, "verdict: {word}");
        let _ = writeln!(s, "  because {}", self.reason);
        match &self.certificate {
            Some(CertificateReport::Weights { weights, .. }) if weights.is_empty() => {
                let _ = writeln!(
                    s,
                    "  certificate: f is differentiable at the point and v is its gradient"
                );
            }
            Some(CertificateReport::Weights { weights, pieces }) => {
                let parts: Vec<String> = pieces
                    .iter()
                    .zip(weights)
                    .take(8)
                    .map(|(p, w)| format!("{w:.4}·{}", fmt_signs(&self.pieces[*p].signs)))
                    .collect();
                let per_block = if self.blocks.len() > 1 {
                    " (weights sum to 1 in each independent block)"
                } else {
                    ""
                };
                let _ = writeln!(s, "  certificate: v = {}{per_block}", parts.join(" + "));
            }
            Some(CertificateReport::Separation { direction, bound }) => {
                let _ = writeln!(
                    s,
                    "  certificate: h = {}, h·v > {} ≥ h·g for every realized or undecided piece g",
                    fmt_vec(direction),
                    num(*bound)
                );
            }
            None => {}
        }
        if let Some(c) = &self.clarke_gradient {
            let _ = writeln!(
                s,
                "clarke gradient: {} (∞-distance {} from v{})",
                fmt_vec(&c.vector),
                num(c.distance),
                if c.nearest {
                    ", nearest"
                } else {
                    ", not proven nearest"
                }
            );
        }
        s
    }
}

#[cfg(test)]
mod json_tests {
    use super::*;

    #[test]
    fn floats_as_serde_json_writes_them() {
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            0.1,
            1e300,
            -2.5e-308,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            123456789.0,
            1e16,
            1e-7,
        ];
        let mut s = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.push(f64::from_bits(s));
            v.push((s >> 11) as f64 / (1u64 << 40) as f64 - 4096.0);
        }
        let text = floats_json(&v);
        assert_eq!(text, serde_json::to_string(&v).unwrap());
        assert_eq!(floats_json(&[]), "[]");
        let many: Vec<f64> = (0..20_000).map(|i| i as f64 / 7.0).collect();
        assert_eq!(floats_json(&many), serde_json::to_string(&many).unwrap());
    }

    fn floats_json(v: &[f64]) -> String {
        let mut out = Vec::new();
        write_json_floats(v, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }
}
