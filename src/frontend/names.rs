//! Names of the differentiation variables, in the order of the gradient.
//!
//! A model has one variable per parameter (270 k for a small MLP), and nearly all of them are
//! the elements of a few tensors. [`VarNames`] stores the tensors (a base name and a shape)
//! and spells an element's name, `base[i,j]`, only when it is asked for: when the report is
//! written, the name is formatted straight into the JSON output, one allocation-free pass.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use std::fmt;

/// A run of consecutive variables: the elements of a tensor `base` with `shape`, row-major,
/// named `base[i,j,…]`; with an empty shape, the one variable `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    base: String,
    shape: Vec<usize>,
    /// Index of the run's first variable.
    start: usize,
}

impl Run {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The names of the variables x₁ … xₙ, stored as runs of tensor elements.
///
/// ```
/// use kinkcheck::frontend::VarNames;
/// let mut v = VarNames::default();
/// v.push_tensor("W1", &[2, 3]);
/// v.push("t");
/// assert_eq!(v.len(), 7);
/// assert_eq!(v.get(4).as_deref(), Some("W1[1,1]"));
/// assert_eq!(v, ["W1[0,0]", "W1[0,1]", "W1[0,2]", "W1[1,0]", "W1[1,1]", "W1[1,2]", "t"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct VarNames {
    runs: Vec<Run>,
    len: usize,
}

impl VarNames {
    /// Append one variable named `name`.
    pub fn push(&mut self, name: impl Into<String>) {
        self.runs.push(Run {
            base: name.into(),
            shape: Vec::new(),
            start: self.len,
        });
        self.len += 1;
    }

    /// Append the elements of a tensor `base` with `shape` (row-major), named `base[i,j,…]`;
    /// a scalar (empty shape) is the one variable `base`. A tensor with no elements adds none.
    pub fn push_tensor(&mut self, base: impl Into<String>, shape: &[usize]) {
        let run = Run {
            base: base.into(),
            shape: shape.to_vec(),
            start: self.len,
        };
        let n = run.len();
        if n > 0 {
            self.len += n;
            self.runs.push(run);
        }
    }

    /// Whether both are stored as the same runs (equal, and cheap to compare).
    pub(crate) fn same_runs(&self, other: &VarNames) -> bool {
        self.len == other.len && self.runs == other.runs
    }

    /// The number of variables n.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The name of variable `i` (0-based), if there is one.
    pub fn get(&self, i: usize) -> Option<String> {
        self.name(i).map(|n| n.to_string())
    }

    /// The name of variable `i` as a value that formats it, without allocating.
    fn name(&self, i: usize) -> Option<Name<'_>> {
        if i >= self.len {
            return None;
        }
        // The runs are sorted by `start`; the last one starting at or before `i` holds it.
        let r = self.runs.partition_point(|r| r.start <= i) - 1;
        let run = &self.runs[r];
        Some(Name {
            run,
            offset: i - run.start,
        })
    }

    /// Every name, in order.
    pub fn iter(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }

    /// Every name, in order, as owned strings.
    pub fn to_vec(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.len);
        let _ = self.for_each(|n| -> Result<(), ()> {
            out.push(n.to_string());
            Ok(())
        });
        out
    }
}

impl<S: Into<String>> FromIterator<S> for VarNames {
    /// One plain variable per name.
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Self {
        let mut v = VarNames::default();
        for n in names {
            v.push(n);
        }
        v
    }
}

impl PartialEq for VarNames {
    /// Equal when they name the same variables in the same order (however they are stored).
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<S: AsRef<str>> PartialEq<[S]> for VarNames {
    fn eq(&self, other: &[S]) -> bool {
        self.len == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for VarNames {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

impl<S: AsRef<str>> PartialEq<Vec<S>> for VarNames {
    fn eq(&self, other: &Vec<S>) -> bool {
        *self == other[..]
    }
}

/// Element `offset` of a run, formatted on demand.
struct Name<'a> {
    run: &'a Run,
    offset: usize,
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.run.base)?;
        let shape = &self.run.shape;
        if shape.is_empty() {
            return Ok(());
        }
        // Row-major multi-index of `offset`, most significant first (on the stack for up to
        // eight dimensions).
        let mut small = [0usize; 8];
        let mut large = Vec::new();
        let idx: &mut [usize] = if shape.len() <= small.len() {
            &mut small[..shape.len()]
        } else {
            large.resize(shape.len(), 0);
            &mut large
        };
        let mut offset = self.offset;
        for (d, &n) in shape.iter().enumerate().rev() {
            idx[d] = offset % n;
            offset /= n;
        }
        write_digits(f, idx)
    }
}

fn write_digits(f: &mut fmt::Formatter<'_>, idx: &[usize]) -> fmt::Result {
    let mut t = String::from("[");
    for (d, &i) in idx.iter().enumerate() {
        if d > 0 {
            t.push(',');
        }
        push_decimal(&mut t, i);
    }
    t.push(']');
    f.write_str(&t)
}

impl VarNames {
    /// Call `each` with every name, in order, from one reused buffer (serializing 270 k
    /// names through `format!` or `collect_str` was a third of a whole `verify` of an MLP).
    pub fn for_each<E>(&self, mut each: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
        let mut buf = String::new();
        self.walk(
            |base| base.to_string(),
            |prefix, tail| {
                buf.clear();
                buf.push_str(prefix);
                buf.push_str(tail);
                each(&buf)
            },
        )
    }

    /// Every name, in order, as `prefix + tail` with the base spelled `open(base)`: for a
    /// tensor element, prefix `open(base)[i,j,` (built once per value of the outer indices)
    /// and tail `k]`; for a scalar, prefix `open(base)` and an empty tail. The decimals come
    /// from tables built once per run, so a name costs two short copies.
    fn walk<E>(
        &self,
        open: impl Fn(&str) -> String,
        mut each: impl FnMut(&str, &str) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut prefix = String::new();
        for run in &self.runs {
            let base = open(&run.base);
            let Some((&inner, outer_shape)) = run.shape.split_last() else {
                each(&base, "")?;
                continue;
            };
            let (commas, c_ends) = digit_table(outer_shape.iter().copied().max().unwrap_or(0), ',');
            let (closes, e_ends) = digit_table(inner, ']');
            let mut outer = vec![0usize; outer_shape.len()];
            for _ in 0..run.len() / inner {
                prefix.clear();
                prefix.push_str(&base);
                prefix.push('[');
                for &i in &outer {
                    prefix.push_str(&commas[c_ends[i]..c_ends[i + 1]]);
                }
                for i in 0..inner {
                    each(&prefix, &closes[e_ends[i]..e_ends[i + 1]])?;
                }
                for d in (0..outer.len()).rev() {
                    outer[d] += 1;
                    if outer[d] < outer_shape[d] {
                        break;
                    }
                    outer[d] = 0;
                }
            }
        }
        Ok(())
    }
}

/// The decimals of 0 … extent − 1, each followed by `suffix`, concatenated:
/// `digits[ends[i]..ends[i + 1]]` is the decimal of i and the suffix.
fn digit_table(extent: usize, suffix: char) -> (String, Vec<usize>) {
    let mut digits = String::with_capacity(extent * 7);
    let mut ends = Vec::with_capacity(extent + 1);
    ends.push(0);
    for i in 0..extent {
        push_decimal(&mut digits, i);
        digits.push(suffix);
        ends.push(digits.len());
    }
    (digits, ends)
}

/// Append the decimal digits of `v`.
fn push_decimal(out: &mut String, mut v: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

impl VarNames {
    /// Write the names as one JSON array of strings, `["a[0,0]","a[0,1]",…]`: the same text
    /// `serde_json` writes for [`Self::to_vec`] (and for `self`). A run's base is escaped once
    /// and the rest of a name (brackets, digits, commas) never needs escaping; the names of
    /// one row of a tensor (all values of the last index) differ only in the digits of the
    /// outer indices, so a row is one copy of a template built once per run and width of
    /// those digits, with the digits patched in (a name costs a few stores).
    pub fn write_json<W: std::io::Write + ?Sized>(&self, w: &mut W) -> std::io::Result<()> {
        let mut out = JsonBuf::new(w);
        out.byte(b'[')?;
        let mut first = true;
        let mut digits = Vec::new();
        for run in &self.runs {
            // `"base` with the escapes JSON needs (serializing a str cannot fail)
            let mut quoted = serde_json::to_string(&run.base).unwrap_or_default();
            quoted.pop();
            let Some((&inner, outer_shape)) = run.shape.split_last() else {
                if !first {
                    out.byte(b',')?;
                }
                first = false;
                out.push(quoted.as_bytes())?;
                out.byte(b'"')?;
                continue;
            };
            let (commas, c_ends) = digit_table(outer_shape.iter().copied().max().unwrap_or(0), ',');
            let (closes, e_ends) = digit_table(inner, ']');
            // templates[width]: the row's names, comma-separated, with `width` placeholder
            // bytes where the outer digits go, and where each placeholder starts
            let mut templates: Vec<Option<(Vec<u8>, Vec<usize>)>> = Vec::new();
            let mut outer = vec![0usize; outer_shape.len()];
            for _ in 0..run.len() / inner {
                digits.clear();
                for &i in &outer {
                    digits.extend_from_slice(&commas.as_bytes()[c_ends[i]..c_ends[i + 1]]);
                }
                let width = digits.len();
                if templates.len() <= width {
                    templates.resize(width + 1, None);
                }
                let (text, at) = templates[width].get_or_insert_with(|| {
                    let mut text = Vec::with_capacity(inner * (quoted.len() + width + 9));
                    let mut at = Vec::with_capacity(inner);
                    for i in 0..inner {
                        if i > 0 {
                            text.push(b',');
                        }
                        text.extend_from_slice(quoted.as_bytes());
                        text.push(b'[');
                        at.push(text.len());
                        text.resize(text.len() + width, b'0');
                        text.extend_from_slice(&closes.as_bytes()[e_ends[i]..e_ends[i + 1]]);
                        text.push(b'"');
                    }
                    (text, at)
                });
                if !first {
                    out.byte(b',')?;
                }
                first = false;
                out.push(text)?;
                patch(out.last_mut(text.len()), at, &digits);
                for d in (0..outer.len()).rev() {
                    outer[d] += 1;
                    if outer[d] < outer_shape[d] {
                        break;
                    }
                    outer[d] = 0;
                }
            }
        }
        out.byte(b']')?;
        out.finish()
    }
}

/// Copy `digits` into `row` at every position of `at`; copies of a fixed length for the
/// usual widths (a call to `memcpy` per name would cost more than the copy).
fn patch(row: &mut [u8], at: &[usize], digits: &[u8]) {
    fn fixed<const L: usize>(row: &mut [u8], at: &[usize], digits: &[u8]) {
        let d: [u8; L] = digits.try_into().unwrap_or([0; L]);
        for &p in at {
            row[p..p + L].copy_from_slice(&d);
        }
    }
    match digits.len() {
        0 => {}
        1 => fixed::<1>(row, at, digits),
        2 => fixed::<2>(row, at, digits),
        3 => fixed::<3>(row, at, digits),
        4 => fixed::<4>(row, at, digits),
        5 => fixed::<5>(row, at, digits),
        6 => fixed::<6>(row, at, digits),
        7 => fixed::<7>(row, at, digits),
        8 => fixed::<8>(row, at, digits),
        l => {
            for &p in at {
                row[p..p + l].copy_from_slice(digits);
            }
        }
    }
}

/// A 64 KiB buffer in front of a writer, for JSON text written in many small pieces (the
/// caller's writer may be unbuffered; a `BufWriter` would cost a call per piece as well).
pub(crate) struct JsonBuf<'w, W: std::io::Write + ?Sized> {
    w: &'w mut W,
    buf: Vec<u8>,
}

impl<'w, W: std::io::Write + ?Sized> JsonBuf<'w, W> {
    const CAP: usize = 1 << 16;

    pub(crate) fn new(w: &'w mut W) -> Self {
        JsonBuf {
            w,
            buf: Vec::with_capacity(Self::CAP),
        }
    }

    /// Append `bytes`, writing the buffer out first when it is full.
    #[inline]
    pub(crate) fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + bytes.len() > Self::CAP {
            self.w.write_all(&self.buf)?;
            self.buf.clear();
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Append one byte (no call to `memcpy`, unlike a one-byte slice).
    #[inline]
    pub(crate) fn byte(&mut self, b: u8) -> std::io::Result<()> {
        if self.buf.len() >= Self::CAP {
            self.w.write_all(&self.buf)?;
            self.buf.clear();
        }
        self.buf.push(b);
        Ok(())
    }

    /// The last `len` bytes appended (all of them, if fewer: the last push is never split,
    /// so after `push(bytes)` they are `bytes`).
    pub(crate) fn last_mut(&mut self, len: usize) -> &mut [u8] {
        let n = self.buf.len();
        &mut self.buf[n - len.min(n)..]
    }

    /// Write out what is left.
    pub(crate) fn finish(mut self) -> std::io::Result<()> {
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

impl Serialize for VarNames {
    /// A sequence of strings, written by [`VarNames::for_each`].
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        let mut seq = s.serialize_seq(Some(self.len))?;
        self.for_each(|name| seq.serialize_element(name))?;
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_runs() {
        let mut v = VarNames::default();
        v.push_tensor("a", &[]);
        v.push_tensor("empty", &[0, 3]);
        v.push_tensor("x[1]", &[2, 1, 2]);
        v.push("last");
        let want = [
            "a",
            "x[1][0,0,0]",
            "x[1][0,0,1]",
            "x[1][1,0,0]",
            "x[1][1,0,1]",
            "last",
        ];
        assert_eq!(v, want);
        assert_eq!(v.len(), 6);
        assert_eq!(v.get(6), None);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            serde_json::to_string(&want).unwrap()
        );
        let plain: VarNames = want.iter().copied().collect();
        assert_eq!(plain, v);
        assert_ne!(plain, VarNames::default());
    }

    #[test]
    fn deep_and_wide_indices() {
        let mut v = VarNames::default();
        let shape = [1, 1, 1, 1, 1, 1, 1, 1, 1, 12];
        v.push_tensor("t", &shape);
        assert_eq!(v.get(11).as_deref(), Some("t[0,0,0,0,0,0,0,0,0,11]"));
        let mut w = VarNames::default();
        w.push_tensor("w", &[3, 100_000]);
        assert_eq!(w.get(234_567).as_deref(), Some("w[2,34567]"));
        // Names with quotes are escaped in JSON.
        let mut q = VarNames::default();
        q.push_tensor("a\"b", &[1]);
        assert_eq!(serde_json::to_string(&q).unwrap(), r#"["a\"b[0]"]"#);
    }

    #[test]
    fn json_array_is_serde_jsons() {
        let mut v = VarNames::default();
        assert_eq!(json_of(&v), "[]");
        v.push_tensor("a\"b\\c\n\u{1}é", &[2, 3]);
        v.push("scalar \"q\"");
        v.push_tensor("empty", &[0]);
        v.push_tensor("s", &[]);
        v.push_tensor("deep", &[2, 1, 1, 1, 1, 1, 1, 1, 1, 11]);
        v.push_tensor("w", &[3, 1000]);
        let want = serde_json::to_string(&v.to_vec()).unwrap();
        assert_eq!(json_of(&v), want);
        assert_eq!(serde_json::to_string(&v).unwrap(), want);
        let mut only = VarNames::default();
        only.push("x");
        assert_eq!(json_of(&only), r#"["x"]"#);
        // more than one buffer's worth
        let mut big = VarNames::default();
        big.push_tensor("layer.weight", &[300, 70]);
        big.push_tensor("b", &[300]);
        assert_eq!(json_of(&big), serde_json::to_string(&big.to_vec()).unwrap());
    }

    fn json_of(v: &VarNames) -> String {
        let mut s = Vec::new();
        v.write_json(&mut s).unwrap();
        String::from_utf8(s).unwrap()
    }
}
