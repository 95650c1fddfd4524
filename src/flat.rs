//! Flat values: elements whose derivative is zero on every piece at the point, found in one
//! forward pass, without reverse sweeps (THEORY.md §4, degenerate switches).
//!
//! A switch zᵢ is degenerate when ż ≡ 0 on every piece: its row of J_α is zero and its row of
//! L̂ refers only to degenerate switches. A relu → max-pool network has thousands of such
//! switches nobody planted (windows whose candidates are all dead relu outputs, exactly 0.0);
//! finding each by its own reverse sweep costs a sweep per tie. This pass finds them at once.
//!
//! Each element e of the value buffer gets a *linear form* of its first-order derivative, in a
//! lattice just rich enough to see the cancellations kink lowering creates:
//!
//! ```text
//! ė = 0            (flat)        or        ė = c · ḃ   (one base element b, a factor c)
//! ```
//!
//! An element that is not a multiple of one earlier element is its own base (c = 1). On an
//! inactive switch, |u| has ė = sign(u)·u̇, so `relu(u) = (u + |u|)/2` at u < 0 is
//! ½(u̇ − u̇) = 0: flat; a clamp below its lower bound, ½(|x−lo| − |x−hi|)˙ = ½(−ẋ + ẋ) = 0:
//! flat. Active switches (rule Stop) are independent inputs uⱼ = |zⱼ|: their own base, unless
//! zⱼ is flat (then uⱼ is too). A form is flat only by exact cancellation: the factors are
//! propagated in floating point, and a product or quotient that rounds makes the element its
//! own base (so "flat" is a property of the real numbers, never of rounding).
//!
//! Soundness: by induction in evaluation order, a flat element has zero derivative with
//! respect to x and to every non-flat active uⱼ, on every piece; so a flat switch has a zero
//! J_α row and an L̂ row that only refers to flat (hence degenerate) switches. The converse
//! need not hold: elements this lattice cannot prove flat are left to the sweeps.

use crate::eval::{AbsRule, Evaluation};
use crate::graph::{Graph, Op, SwitchId};

/// No base: the element is flat.
const FLAT: u32 = u32::MAX;

/// The linear forms `ė = c·ḃ` of every element of the value buffer at one point.
#[derive(Debug, Clone)]
pub struct Flatness {
    /// Base element b (a buffer index), or `FLAT`.
    base: Vec<u32>,
    /// The factor c (meaningless when flat).
    coef: Vec<f64>,
}

/// `c·f` if the product is exact, else `None` (a product that underflows to 0 is not exact).
fn exact_mul(c: f64, f: f64) -> Option<f64> {
    if c == 0.0 || f == 0.0 {
        return Some(0.0);
    }
    let p = c * f;
    (p != 0.0 && p.is_finite() && c.mul_add(f, -p) == 0.0).then_some(p)
}

/// `c/d` if the quotient is exact, else `None`.
fn exact_div(c: f64, d: f64) -> Option<f64> {
    let q = c / d;
    (q.is_finite() && q.mul_add(d, -c) == 0.0).then_some(q)
}

impl Flatness {
    /// The forms of every element of `g` at the point of `ev`, with `rules[i]` at switch i (the
    /// rules of the reverse sweeps: `Factor(sign)` for inactive switches, `Stop` for active
    /// ones). `None` when the value buffer is too large to index with 32 bits.
    ///
    /// ```
    /// use kinkcheck::eval::{evaluate, AbsRule};
    /// use kinkcheck::flat::Flatness;
    /// use kinkcheck::graph::SwitchId;
    /// // a max-pool tie between a dead relu unit and 0: relu(x) at x = −1 is flat
    /// let p = kinkcheck::compile("vars x\nf = max(relu(x), 0)").unwrap();
    /// let ev = evaluate(&p.graph, &[-1.0]).unwrap();
    /// let z = ev.switches(&p.graph);
    /// assert_eq!(z, vec![-1.0, 0.0]); // relu's switch (inactive), the max tie (active)
    /// let rules = vec![AbsRule::Factor(-1.0), AbsRule::Stop];
    /// let f = Flatness::compute(&p.graph, &ev, &rules).unwrap();
    /// assert!(f.switch_is_flat(&p.graph, SwitchId(1)));
    /// assert!(!f.switch_is_flat(&p.graph, SwitchId(0)));
    /// ```
    pub fn compute(g: &Graph, ev: &Evaluation, rules: &[AbsRule]) -> Option<Flatness> {
        let total = g.total_len();
        if total >= FLAT as usize {
            return None;
        }
        let vals = &ev.values;
        let mut base = vec![FLAT; total];
        let mut coef = vec![0.0; total];
        let mut abs_first = vec![usize::MAX; g.nodes().len()];
        for an in g.abs_nodes() {
            abs_first[an.node.index()] = an.first_switch;
        }
        for (i, node) in g.nodes().iter().enumerate() {
            let (off, len) = (node.offset, node.len);
            let own = |base: &mut [u32], coef: &mut [f64], k: usize| {
                base[off + k] = (off + k) as u32;
                coef[off + k] = 1.0;
            };
            if !node.depends {
                continue; // a constant: flat
            }
            let slot = |id: crate::graph::NodeId| {
                let n = g.node(id);
                (n.offset, n.len)
            };
            // every element of node `id` flat?
            let all_flat = |base: &[u32], id: crate::graph::NodeId| {
                let (o, l) = slot(id);
                base[o..o + l].iter().all(|&b| b == FLAT)
            };
            match &node.op {
                Op::Var { .. } => {
                    for k in 0..len {
                        own(&mut base, &mut coef, k);
                    }
                }
                Op::Const(_) => {}
                Op::Add(a, b) | Op::Sub(a, b) => {
                    let sign = if matches!(node.op, Op::Sub(..)) {
                        -1.0
                    } else {
                        1.0
                    };
                    let ((oa, la), (ob, lb)) = (slot(*a), slot(*b));
                    for k in 0..len {
                        let (ea, eb) = (oa + bidx(la, k), ob + bidx(lb, k));
                        let (ba, bb) = (base[ea], base[eb]);
                        let (ca, cb) = (coef[ea], sign * coef[eb]);
                        let (nb, nc) = match (ba == FLAT, bb == FLAT) {
                            (true, true) => (FLAT, 0.0),
                            (false, true) => (ba, ca),
                            (true, false) => (bb, cb),
                            // ca + cb == 0 in floating point exactly when cb == −ca
                            (false, false) if ba == bb && ca == -cb => (FLAT, 0.0),
                            (false, false) if ba == bb => match exact_add(ca, cb) {
                                Some(c) => (ba, c),
                                None => ((off + k) as u32, 1.0),
                            },
                            (false, false) => ((off + k) as u32, 1.0),
                        };
                        base[off + k] = nb;
                        coef[off + k] = nc;
                    }
                }
                Op::Mul(a, b) | Op::Div(a, b) => {
                    let div = matches!(node.op, Op::Div(..));
                    let ((oa, la), (ob, lb)) = (slot(*a), slot(*b));
                    for k in 0..len {
                        let (ea, eb) = (oa + bidx(la, k), ob + bidx(lb, k));
                        let (fa, fb) = (base[ea] == FLAT, base[eb] == FLAT);
                        let (va, vb) = (vals[ea], vals[eb]);
                        // d(ab) = b·da + a·db;  d(a/b) = da/b − a·db/b²
                        let form = match (fa, fb) {
                            (true, true) => Some((FLAT, 0.0)),
                            (false, true) if div => exact_div(coef[ea], vb).map(|c| (base[ea], c)),
                            (false, true) => exact_mul(coef[ea], vb).map(|c| (base[ea], c)),
                            (true, false) if va == 0.0 => Some((FLAT, 0.0)),
                            (true, false) if div => None,
                            (true, false) => exact_mul(coef[eb], va).map(|c| (base[eb], c)),
                            (false, false) => None,
                        };
                        let (nb, nc) = match form {
                            // an exact zero factor: b·da with b = 0
                            Some((_, 0.0)) => (FLAT, 0.0),
                            Some(f) => f,
                            None => ((off + k) as u32, 1.0),
                        };
                        base[off + k] = nb;
                        coef[off + k] = nc;
                    }
                }
                Op::Neg(a) => {
                    let (oa, _) = slot(*a);
                    for k in 0..len {
                        base[off + k] = base[oa + k];
                        coef[off + k] = -coef[oa + k];
                    }
                }
                Op::PowI(a, _) | Op::Unary(_, a) => {
                    let (oa, _) = slot(*a);
                    for k in 0..len {
                        if base[oa + k] != FLAT {
                            own(&mut base, &mut coef, k);
                        }
                    }
                }
                Op::Abs(a) => {
                    let first = abs_first[i];
                    let (oa, _) = slot(*a);
                    for k in 0..len {
                        if base[oa + k] == FLAT {
                            continue;
                        }
                        match rules[first + k] {
                            AbsRule::Stop => own(&mut base, &mut coef, k),
                            AbsRule::Factor(s) => match exact_mul(coef[oa + k], s) {
                                Some(c) if c != 0.0 => {
                                    base[off + k] = base[oa + k];
                                    coef[off + k] = c;
                                }
                                Some(_) => {} // factor 0 (convention σ = 0): flat
                                None => own(&mut base, &mut coef, k),
                            },
                        }
                    }
                }
                Op::Gather(..) | Op::Concat(_) => {
                    g.move_elements(&node.op, &mut base, off);
                    g.move_elements(&node.op, &mut coef, off);
                }
                Op::Sum(a) | Op::LogSumExp(a) => {
                    if !all_flat(&base, *a) {
                        own(&mut base, &mut coef, 0);
                    }
                }
                Op::MatVec { w, x, .. } => {
                    if !(all_flat(&base, *w) && all_flat(&base, *x)) {
                        for k in 0..len {
                            own(&mut base, &mut coef, k);
                        }
                    }
                }
                Op::Conv { x, w, bias, .. } => {
                    let flat = all_flat(&base, *x)
                        && all_flat(&base, *w)
                        && bias.is_none_or(|b| all_flat(&base, b));
                    if !flat {
                        for k in 0..len {
                            own(&mut base, &mut coef, k);
                        }
                    }
                }
            }
        }
        Some(Flatness { base, coef })
    }

    /// Is element `at` of the value buffer flat (zero derivative on every piece)?
    pub fn is_flat(&self, at: usize) -> bool {
        self.base[at] == FLAT
    }

    /// Is the argument of switch `s` flat, i.e. is `s` degenerate?
    pub fn switch_is_flat(&self, g: &Graph, s: SwitchId) -> bool {
        let (k, e) = g.switch_location(s);
        self.is_flat(g.node(g.abs_nodes()[k].arg).offset + e)
    }

    /// The factor c of element `at` (`ė = c·ḃ`; 0 when flat).
    pub fn coef(&self, at: usize) -> f64 {
        if self.is_flat(at) {
            0.0
        } else {
            self.coef[at]
        }
    }
}

/// `a + b` if the sum is exact, else `None`.
fn exact_add(a: f64, b: f64) -> Option<f64> {
    let s = a + b;
    // TwoSum: the rounding error of a + b
    let bb = s - a;
    let err = (a - (s - bb)) + (b - bb);
    (s.is_finite() && err == 0.0).then_some(s)
}

#[inline]
fn bidx(len: usize, k: usize) -> usize {
    if len == 1 {
        0
    } else {
        k
    }
}

#[cfg(test)]
mod tests {
    use crate::anf::{ActiveData, FlatPlan};
    use crate::eval::{evaluate, switch_states, TAU_ACT};
    use crate::graph::SwitchId;
    use std::path::Path;

    /// The reduced data with the pre-pass are those of one sweep per active switch, bit for
    /// bit; `min_flat`: fewest active switches the pre-pass must decide.
    fn same_data(p: &crate::Problem, x: &[f64], min_flat: usize) {
        let g = &p.graph;
        let ev = evaluate(g, x).unwrap();
        let states = switch_states(g, &ev, TAU_ACT);
        let z: Vec<f64> = states.iter().map(|s| s.z).collect();
        let act: Vec<SwitchId> = states.iter().filter(|s| s.z == 0.0).map(|s| s.id).collect();
        let mut sw = crate::eval::ReverseSweeper::new(g, &ev);
        let serial = std::time::Duration::MAX;
        let a = ActiveData::compute_with(&mut sw, &z, &act, FlatPlan::Beside, serial).unwrap();
        let b = ActiveData::compute_with(&mut sw, &z, &act, FlatPlan::Off, serial).unwrap();
        // and the same on three threads from the first sweep on (the pre-pass beside the
        // output sweep, every row sweep spread over the threads)
        crate::par::set_threads(3);
        let zero = std::time::Duration::ZERO;
        let a3 = ActiveData::compute_with(&mut sw, &z, &act, FlatPlan::Beside, zero).unwrap();
        let b3 = ActiveData::compute_with(&mut sw, &z, &act, FlatPlan::Off, zero).unwrap();
        crate::par::set_threads(0);
        // and with the pre-pass decided during the row sweeps (one thread): before the first
        // sweep, never, and after as long as the output sweep took
        let mut later =
            |after| ActiveData::compute_with(&mut sw, &z, &act, FlatPlan::Later(after), serial);
        let l0 = later(Some(zero)).unwrap();
        let lmax = later(Some(serial)).unwrap();
        let lout = later(None).unwrap();
        let bits = |v: &[f64]| v.iter().map(|c| c.to_bits()).collect::<Vec<_>>();
        for (x, y) in [(&a, &a3), (&b, &b3), (&a, &l0), (&b, &lmax), (&a, &lout)] {
            assert_eq!(x.active, y.active);
            assert_eq!(x.degenerate, y.degenerate);
            assert_eq!(x.j.len(), y.j.len());
            for (rx, ry) in x.j.iter().zip(&y.j) {
                assert_eq!(rx.idx, ry.idx);
                assert_eq!(bits(&rx.val), bits(&ry.val));
            }
            assert_eq!(x.lhat.len(), y.lhat.len());
            for (rx, ry) in x.lhat.iter().zip(&y.lhat) {
                assert_eq!(bits(rx), bits(ry));
            }
            assert_eq!(bits(&x.g0), bits(&y.g0));
            assert_eq!(bits(&x.bhat), bits(&y.bhat));
        }
        assert_eq!(a.active, b.active);
        assert_eq!(a.degenerate, b.degenerate);
        assert!(
            a.degenerate.len() >= min_flat,
            "{} degenerate of {act:?}",
            a.degenerate.len()
        );
        for (ra, rb) in a.j.iter().zip(&b.j) {
            assert_eq!(ra.idx, rb.idx);
            assert_eq!(bits(&ra.val), bits(&rb.val));
        }
        for (ra, rb) in a.lhat.iter().zip(&b.lhat) {
            assert_eq!(bits(ra), bits(rb));
        }
        assert_eq!(bits(&a.g0), bits(&b.g0));
        assert_eq!(bits(&a.bhat), bits(&b.bhat));
        // and the pre-pass alone finds at least `min_flat` of them
        let rules: Vec<_> = z
            .iter()
            .map(|&v| {
                if v == 0.0 {
                    crate::eval::AbsRule::Stop
                } else {
                    crate::eval::AbsRule::Factor(v.signum())
                }
            })
            .collect();
        let f = super::Flatness::compute(g, &ev, &rules).unwrap();
        let n_flat = act.iter().filter(|&&s| f.switch_is_flat(g, s)).count();
        assert!(n_flat >= min_flat, "{n_flat} flat");
    }

    #[test]
    fn pre_pass_gives_the_sweeps_data_on_lenet_ties() {
        // LeNet-5 (batch 4) with planted kinks: thousands of max-pool ties among dead relus
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torch/bench");
        let p = crate::frontend::load(
            &root.join("lenet5.onnx"),
            Some(&root.join("lenet5_data.json")),
            None,
            None,
        )
        .unwrap();
        let x = p.point.clone().unwrap();
        same_data(&p, &x, 1000);
    }

    #[test]
    fn pre_pass_gives_the_sweeps_data_on_programs() {
        for (src, x, min_flat) in [
            (
                "vars x, y; f = max(relu(x), relu(y), 0) * y",
                vec![-1.0, -2.0],
                2,
            ),
            (
                "vars x; f = clamp(x, 0, 1) - clamp(2*x, 0, 1) + max(clamp(x, 0, 1), 0)",
                vec![-1.0],
                1,
            ),
            (
                "vars x, y; u = relu(x) - relu(x); f = abs(u) + max(y, y) + abs(x - x)",
                vec![1.0, 2.0],
                2,
            ),
            (
                "vars x, y; f = max(relu(x - y), relu(y - x)) + min(relu6(x + 7), 6)",
                vec![1.0, 1.0],
                1,
            ),
        ] {
            let p = crate::compile(src).unwrap();
            same_data(&p, &x, min_flat);
        }
    }
}
