//! Lowering of a parsed `.kc` program (CONTRACT.md §1) into the evaluation graph: smooth
//! operations map to graph nodes, kink functions go through [`crate::lower`], and every node
//! and switch remembers its `line:col`.

use super::kc::{self, BinOp, Expr, Func, Pos};
use super::Problem;
use crate::error::Error;
use crate::graph::{Graph, GraphError, NodeId, Origin, Smooth};
use crate::lower;
use std::collections::HashMap;

/// Parse and lower a `.kc` program.
///
/// ```
/// let p = kinkcheck::compile("vars x1, x2\nf = max(x1, x2)").unwrap();
/// assert_eq!(p.var_names, vec!["x1", "x2"]);
/// assert_eq!(p.graph.n_switches(), 1);
/// ```
pub fn compile(src: &str) -> Result<Problem, Error> {
    let prog = kc::parse(src)?;
    let n = prog.vars.len();
    let mut g = Graph::new(n);
    let mut env: HashMap<String, NodeId> = HashMap::new();
    for (i, (name, pos)) in prog.vars.iter().enumerate() {
        g.set_origin(origin(*pos));
        let v = g.var(i, 1)?;
        env.insert(name.clone(), v);
    }
    let mut out = None;
    for (k, st) in prog.stmts.iter().enumerate() {
        let v = lower_expr(&mut g, &env, &st.expr)?;
        env.insert(st.name.clone(), v);
        if k == prog.output {
            out = Some(v);
        }
    }
    let y = out.ok_or_else(|| Error::input("program has no assignment"))?;
    g.set_output(y)?;
    Ok(Problem {
        graph: g,
        var_names: prog.vars.into_iter().map(|(n, _)| n).collect(),
        point: None,
    })
}

fn origin(p: Pos) -> Origin {
    Origin::Source {
        line: p.line,
        col: p.col,
    }
}

fn at(p: Pos, e: GraphError) -> Error {
    match e {
        GraphError::Shape { msg, .. } => Error::input(format!("{p}: {msg}")),
    }
}

fn lower_expr(g: &mut Graph, env: &HashMap<String, NodeId>, e: &Expr) -> Result<NodeId, Error> {
    // An explicit stack would avoid recursion; the parser bounds the nesting depth.
    let pos = e.pos();
    let node = match e {
        Expr::Num(v, p) => {
            g.set_origin(origin(*p));
            g.scalar(*v).map_err(|err| at(*p, err))?
        }
        Expr::Var(name, p) => *env
            .get(name)
            .ok_or_else(|| Error::input(format!("{p}: undeclared name '{name}'")))?,
        Expr::Neg(a, p) => {
            let a = lower_expr(g, env, a)?;
            g.set_origin(origin(*p));
            g.neg(a)
        }
        Expr::Bin(op, a, b, p) => {
            let a = lower_expr(g, env, a)?;
            let b = lower_expr(g, env, b)?;
            g.set_origin(origin(*p));
            match op {
                BinOp::Add => g.add(a, b),
                BinOp::Sub => g.sub(a, b),
                BinOp::Mul => g.mul(a, b),
                BinOp::Div => g.div(a, b),
            }
            .map_err(|err| at(*p, err))?
        }
        Expr::Pow(a, k, p) => {
            let a = lower_expr(g, env, a)?;
            g.set_origin(origin(*p));
            g.powi(a, *k)
        }
        Expr::Call(f, args, p) => {
            let mut xs = Vec::with_capacity(args.len());
            for a in args {
                xs.push(lower_expr(g, env, a)?);
            }
            g.set_origin(origin(*p));
            call(g, *f, &xs, args, *p).map_err(|err| at(*p, err))?
        }
    };
    let _ = pos;
    Ok(node)
}

fn call(
    g: &mut Graph,
    f: Func,
    xs: &[NodeId],
    args: &[Expr],
    p: Pos,
) -> Result<NodeId, GraphError> {
    let o = origin(p);
    let smooth = |g: &mut Graph, s: Smooth| Ok(g.unary(s, xs[0]));
    match f {
        Func::Exp => smooth(g, Smooth::Exp),
        Func::Log => smooth(g, Smooth::Log),
        Func::Sqrt => smooth(g, Smooth::Sqrt),
        Func::Tanh => smooth(g, Smooth::Tanh),
        Func::Sigmoid => smooth(g, Smooth::Sigmoid),
        Func::Softplus => smooth(g, Smooth::Softplus),
        Func::Sin => smooth(g, Smooth::Sin),
        Func::Cos => smooth(g, Smooth::Cos),
        Func::Abs => Ok(lower::abs(g, xs[0], o)),
        Func::Relu => lower::relu(g, xs[0], o),
        Func::Max => lower::max_fold(g, xs, o),
        Func::Min => lower::min_fold(g, xs, o),
        Func::Clamp => lower::clamp(g, xs[0], xs[1], xs[2], o),
        Func::Hardtanh => lower::hardtanh(g, xs[0], o),
        Func::Relu6 => lower::relu6(g, xs[0], o),
        Func::Hardsigmoid => lower::hardsigmoid(g, xs[0], o),
        Func::LeakyRelu => {
            let slope = g
                .const_value(xs[1])
                .filter(|v| v.len() == 1)
                .map(|v| v[0])
                .ok_or_else(|| GraphError::Shape {
                    place: args[1].pos().to_string(),
                    msg: "the slope of leaky_relu must be a constant".into(),
                })?;
            lower::leaky_relu(g, xs[0], slope, o)
        }
    }
}
