//! Parser for the `.kc` program language.
//!
//! A `.kc` program declares the differentiation variables, binds names to
//! scalar expressions, and designates the **last** assignment as the scalar
//! output:
//!
//! ```text
//! # a comment
//! vars x1, x2                      # differentiation variables, in this order
//! u = x1 - x2                      # let-binding
//! f = relu(u) - relu(-u) + abs(x2) # the LAST assignment is the scalar output
//! ```
//!
//! # Grammar (EBNF)
//!
//! ```text
//! program    = [ statement ] { sep [ statement ] } EOF ;   (* empty statements are fine *)
//! sep        = NEWLINE | ";" ;
//! statement  = vars_decl | assignment ;
//! vars_decl  = "vars" IDENT { "," IDENT } ;
//! assignment = IDENT "=" expr ;
//!
//! expr       = term { ( "+" | "-" ) term } ;             (* left-assoc *)
//! term       = unary { ( "*" | "/" ) unary } ;           (* left-assoc *)
//! unary      = ( "-" | "+" ) unary | power ;
//! power      = primary [ "^" exponent ] ;                 (* binds tighter than unary *)
//! exponent   = int_lit | "(" int_lit ")" ;
//! int_lit    = [ "-" | "+" ] DIGITS ;
//! primary    = NUMBER
//!            | IDENT                                      (* declared var or let-bound name *)
//!            | IDENT "(" [ expr { "," expr } ] ")"        (* function call *)
//!            | "(" expr ")" ;
//!
//! NUMBER     = ( DIGITS [ "." [ DIGITS ] ] | "." DIGITS ) [ ( "e" | "E" ) [ "+" | "-" ] DIGITS ] ;
//! DIGITS     = digit { digit } ;
//! IDENT      = ( letter | "_" ) { letter | digit | "_" } ;   (* ASCII only; "vars" is a keyword *)
//! NEWLINE    = "\n" ;
//! comment    = "#" { any character except "\n" } ;        (* skipped, like spaces, tabs and "\r" *)
//! ```
//!
//! `^` is right-associative in principle, but since its exponent must be an
//! integer literal, `x^2^3` (= `x^(2^3)`) is rejected with
//! "exponent of ^ must be an integer"; write `(x^2)^3`.
//! A number followed directly by a name (`2x`) is a syntax error: there is no
//! implicit multiplication. A `-` in front of a number is a unary minus
//! ([`Expr::Neg`]), never part of the literal, and no constant folding is done.
//!
//! # Static rules checked by [`parse`]
//!
//! * exactly one `vars` statement, with at least one name, and it must be the
//!   first statement; no name may be declared twice;
//! * every name used in an expression is a declared variable or was assigned
//!   by an earlier statement (`u = u + 1` needs an earlier `u`);
//!   re-assigning a let-bound name is allowed, later uses see the newest value;
//! * declared variables and function names cannot be assigned to, and
//!   function names cannot be used as variables;
//! * calls name a known function ([`Func`]) with the right number of arguments;
//! * at least one assignment; the last one is the output ([`Program::output`]);
//! * parentheses/calls/unary operators nest at most [`MAX_NESTING`] deep and
//!   every expression tree is at most [`MAX_DEPTH`] nodes deep, so neither the
//!   parser nor later recursive passes can overflow the stack.
//!
//! Errors carry a 1-based `line:column` position (columns count characters)
//! and a one-line reason, e.g. `2:5: unknown function 'foo'`.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// Maximum nesting of parentheses, function calls and unary operators.
pub const MAX_NESTING: usize = 256;

/// Maximum depth of an expression tree (a leaf has depth 1). Bounds long
/// operator chains such as `x + x + ... + x`, whose trees are deep although
/// they are not nested in the source.
pub const MAX_DEPTH: usize = 512;

/// A 1-based source position; `col` counts characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const fn new(line: u32, col: u32) -> Self {
        Pos { line, col }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A binary arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    /// The operator as written in source: `+ - * /`.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

impl fmt::Display for BinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// The built-in functions. The first eight are smooth, the rest have kinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
    Softplus,
    Sin,
    Cos,
    Abs,
    Relu,
    Max,
    Min,
    Clamp,
    Hardtanh,
    Relu6,
    LeakyRelu,
    Hardsigmoid,
}

impl Func {
    /// Every function, smooth ones first.
    pub const ALL: [Func; 17] = [
        Func::Exp,
        Func::Log,
        Func::Sqrt,
        Func::Tanh,
        Func::Sigmoid,
        Func::Softplus,
        Func::Sin,
        Func::Cos,
        Func::Abs,
        Func::Relu,
        Func::Max,
        Func::Min,
        Func::Clamp,
        Func::Hardtanh,
        Func::Relu6,
        Func::LeakyRelu,
        Func::Hardsigmoid,
    ];

    /// The name used in source, e.g. `"leaky_relu"`.
    pub fn name(self) -> &'static str {
        match self {
            Func::Exp => "exp",
            Func::Log => "log",
            Func::Sqrt => "sqrt",
            Func::Tanh => "tanh",
            Func::Sigmoid => "sigmoid",
            Func::Softplus => "softplus",
            Func::Sin => "sin",
            Func::Cos => "cos",
            Func::Abs => "abs",
            Func::Relu => "relu",
            Func::Max => "max",
            Func::Min => "min",
            Func::Clamp => "clamp",
            Func::Hardtanh => "hardtanh",
            Func::Relu6 => "relu6",
            Func::LeakyRelu => "leaky_relu",
            Func::Hardsigmoid => "hardsigmoid",
        }
    }

    /// The function with this source name (case-sensitive).
    pub fn from_name(name: &str) -> Option<Func> {
        Func::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Whether the function has kinks (points of non-differentiability).
    pub fn is_kink(self) -> bool {
        !matches!(
            self,
            Func::Exp
                | Func::Log
                | Func::Sqrt
                | Func::Tanh
                | Func::Sigmoid
                | Func::Softplus
                | Func::Sin
                | Func::Cos
        )
    }

    /// The smallest number of arguments accepted.
    pub fn min_args(self) -> usize {
        match self {
            Func::Max | Func::Min | Func::LeakyRelu => 2,
            Func::Clamp => 3,
            _ => 1,
        }
    }

    /// The largest number of arguments accepted; `None` if unbounded.
    pub fn max_args(self) -> Option<usize> {
        match self {
            Func::Max | Func::Min => None,
            f => Some(f.min_args()),
        }
    }

    /// `None` if `got` arguments are accepted, else the error reason.
    fn arity_error(self, got: usize) -> Option<String> {
        let min = self.min_args();
        match self.max_args() {
            None if got < min => Some(format!(
                "{} takes at least {} arguments, got {}",
                self.name(),
                min,
                got
            )),
            Some(max) if got != max => Some(format!(
                "{} takes {} argument{}, got {}",
                self.name(),
                max,
                if max == 1 { "" } else { "s" },
                got
            )),
            _ => None,
        }
    }
}

impl fmt::Display for Func {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An expression, kept exactly as written (no folding, unary `+` dropped).
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A non-negative literal; `-2` is `Neg(Num(2))`.
    Num(f64, Pos),
    /// A declared variable or a let-bound name assigned by an earlier
    /// statement (the parser checks this); resolve by walking
    /// [`Program::stmts`] in order.
    Var(String, Pos),
    /// Unary minus; `Pos` is that of the `-`.
    Neg(Box<Expr>, Pos),
    /// Binary operation; `Pos` is that of the operator.
    Bin(BinOp, Box<Expr>, Box<Expr>, Pos),
    /// Integer power; `Pos` is that of the `^`.
    Pow(Box<Expr>, i32, Pos),
    /// Function call with an arity already checked; `Pos` is that of the name.
    Call(Func, Vec<Expr>, Pos),
}

impl Expr {
    /// The node's position (see the variants for which token it is).
    pub fn pos(&self) -> Pos {
        match self {
            Expr::Num(_, p)
            | Expr::Var(_, p)
            | Expr::Neg(_, p)
            | Expr::Bin(_, _, _, p)
            | Expr::Pow(_, _, p)
            | Expr::Call(_, _, p) => *p,
        }
    }
}

impl Expr {
    /// How tightly the printed form binds: 1 `+ -`, 2 `* /`, 3 unary minus,
    /// 4 `^`, 5 atoms (numbers, names, calls).
    fn binding(&self) -> u8 {
        match self {
            Expr::Bin(op, ..) => precedence(*op),
            Expr::Neg(..) => 3,
            Expr::Pow(..) => 4,
            Expr::Num(..) | Expr::Var(..) | Expr::Call(..) => 5,
        }
    }

    /// Prints `self`, parenthesized if it binds less tightly than `min`.
    fn write(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        if self.binding() < min {
            f.write_str("(")?;
            self.write(f, 0)?;
            return f.write_str(")");
        }
        match self {
            Expr::Num(v, _) if v.is_sign_negative() => write!(f, "(-{})", -v),
            Expr::Num(v, _) => write!(f, "{v}"),
            Expr::Var(name, _) => f.write_str(name),
            Expr::Neg(e, _) => {
                f.write_str("-")?;
                e.write(f, 3)
            }
            Expr::Bin(op, l, r, _) => {
                l.write(f, precedence(*op))?;
                write!(f, " {op} ")?;
                r.write(f, precedence(*op) + 1)
            }
            Expr::Pow(b, n, _) => {
                b.write(f, 5)?;
                write!(f, "^{n}")
            }
            Expr::Call(func, args, _) => {
                write!(f, "{func}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    a.write(f, 0)?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Source form with only the parentheses the grammar needs; parsing it gives
/// back the same tree up to positions (for finite numbers; a negative
/// `Num`, which the parser never makes, prints as `(-v)`).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, 0)
    }
}

/// One assignment `name = expr`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    pub name: String,
    pub expr: Expr,
    /// Position of `name`.
    pub pos: Pos,
}

/// A parsed and name-checked program.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// The declared variables, in declaration order, with their positions.
    pub vars: Vec<(String, Pos)>,
    /// The assignments, in source order (at least one).
    pub stmts: Vec<Stmt>,
    /// Index into `stmts` of the last assignment, the scalar output.
    pub output: usize,
}

impl Program {
    /// The output statement. Panics only if `output` was set out of range by hand.
    pub fn output_stmt(&self) -> &Stmt {
        &self.stmts[self.output]
    }
}

/// A parse or name-resolution error: `line:col: reason`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{pos}: {msg}")]
pub struct ParseError {
    pub pos: Pos,
    pub msg: String,
}

impl ParseError {
    pub fn new(pos: Pos, msg: impl Into<String>) -> Self {
        ParseError {
            pos,
            msg: msg.into(),
        }
    }
}

#[cold]
fn err<T>(pos: Pos, msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::new(pos, msg))
}

/// Parses a `.kc` program and checks its names, arities and structure.
pub fn parse(src: &str) -> Result<Program, ParseError> {
    let (toks, lex_error) = lex(src);
    Parser {
        toks,
        lex_error,
        i: 0,
        prev_end: Pos::new(1, 1),
        nest: 0,
        vars: Vec::new(),
        var_pos: HashMap::new(),
        lets: HashSet::new(),
        stmts: Vec::new(),
    }
    .program()
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(f64),
    Ident,
    Vars,
    Plus,
    Minus,
    Star,
    Slash,
    Caret,
    LParen,
    RParen,
    Comma,
    Eq,
    Semi,
    Newline,
    Eof,
    /// A lexical error; the lexer stops here and the message is kept aside.
    Error,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok,
    text: &'a str,
    pos: Pos,
    /// Position just after the token.
    end: Pos,
}

/// Tokenizes `src`. The token list always ends with `Eof` or `Error`; in the
/// latter case the error is returned alongside.
fn lex(src: &str) -> (Vec<Token<'_>>, Option<ParseError>) {
    let chars: Vec<(usize, char)> = src.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(src.len(), |&(o, _)| o);
    let is_digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());

    let mut toks = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1u32, 1u32);
    loop {
        let pos = Pos::new(line, col);
        let Some(c) = at(i) else {
            toks.push(Token {
                tok: Tok::Eof,
                text: "",
                pos,
                end: pos,
            });
            return (toks, None);
        };
        let start = i;
        let tok = match c {
            ' ' | '\t' | '\r' | '\x0C' => {
                i += 1;
                col = col.saturating_add(1);
                continue;
            }
            '#' => {
                while at(i).is_some_and(|c| c != '\n') {
                    i += 1;
                    col = col.saturating_add(1);
                }
                continue;
            }
            '\n' => {
                toks.push(Token {
                    tok: Tok::Newline,
                    text: "\n",
                    pos,
                    end: Pos::new(line, col.saturating_add(1)),
                });
                i += 1;
                line = line.saturating_add(1);
                col = 1;
                continue;
            }
            c if c.is_ascii_digit() || (c == '.' && is_digit(at(i + 1))) => {
                while is_digit(at(i)) {
                    i += 1;
                }
                if at(i) == Some('.') {
                    i += 1;
                    while is_digit(at(i)) {
                        i += 1;
                    }
                }
                if matches!(at(i), Some('e' | 'E')) {
                    if is_digit(at(i + 1)) {
                        i += 1;
                    } else if matches!(at(i + 1), Some('+' | '-')) && is_digit(at(i + 2)) {
                        i += 2;
                    }
                    while is_digit(at(i)) {
                        i += 1;
                    }
                }
                match src[offset(start)..offset(i)].parse::<f64>() {
                    Ok(v) if v.is_finite() => Tok::Num(v),
                    // Only overflow to infinity can happen here.
                    _ => Tok::Error,
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                while at(i).is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    i += 1;
                }
                if &src[offset(start)..offset(i)] == "vars" {
                    Tok::Vars
                } else {
                    Tok::Ident
                }
            }
            _ => {
                i += 1;
                match c {
                    '+' => Tok::Plus,
                    '-' => Tok::Minus,
                    '*' => Tok::Star,
                    '/' => Tok::Slash,
                    '^' => Tok::Caret,
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    ',' => Tok::Comma,
                    '=' => Tok::Eq,
                    ';' => Tok::Semi,
                    _ => Tok::Error,
                }
            }
        };
        let text = &src[offset(start)..offset(i)];
        // Tokens never span lines, so the column advances by the char count.
        col = col.saturating_add(u32::try_from(i - start).unwrap_or(u32::MAX));
        let end = Pos::new(line, col);
        toks.push(Token {
            tok,
            text,
            pos,
            end,
        });
        if tok == Tok::Error {
            let msg = if c.is_ascii_digit() || (c == '.' && text.len() > 1) {
                "number out of range".to_string()
            } else {
                format!("unexpected character '{}'", text.escape_debug())
            };
            return (toks, Some(ParseError { pos, msg }));
        }
    }
}

fn describe(t: &Token<'_>) -> String {
    match t.tok {
        Tok::Newline => "end of line".to_string(),
        Tok::Eof => "end of input".to_string(),
        _ => format!("'{}'", t.text),
    }
}

fn is_terminator(tok: Tok) -> bool {
    matches!(tok, Tok::Newline | Tok::Semi | Tok::Eof)
}

// ---------------------------------------------------------------- parser

type Res<T> = Result<T, ParseError>;

struct Parser<'a> {
    toks: Vec<Token<'a>>,
    lex_error: Option<ParseError>,
    i: usize,
    /// End of the last consumed token: where "found end of line/input"
    /// errors point, so trailing spaces and comments don't move them.
    prev_end: Pos,
    nest: usize,
    vars: Vec<(String, Pos)>,
    var_pos: HashMap<String, Pos>,
    lets: HashSet<String>,
    stmts: Vec<Stmt>,
}

impl<'a> Parser<'a> {
    fn token(&self, i: usize) -> Res<Token<'a>> {
        // The list ends with Eof or Error, which the parser never moves past.
        let t = match self.toks.get(i).or(self.toks.last()) {
            Some(t) => *t,
            None => {
                let p = Pos::new(1, 1);
                return Ok(Token {
                    tok: Tok::Eof,
                    text: "",
                    pos: p,
                    end: p,
                });
            }
        };
        if t.tok == Tok::Error {
            return Err(self.lex_error.clone().unwrap_or_else(|| ParseError {
                pos: t.pos,
                msg: format!("unexpected character '{}'", t.text.escape_debug()),
            }));
        }
        Ok(t)
    }

    fn peek(&self) -> Res<Token<'a>> {
        self.token(self.i)
    }

    fn bump(&mut self) {
        if let Some(t) = self.toks.get(self.i) {
            if matches!(t.tok, Tok::Eof | Tok::Error) {
                return;
            }
            self.prev_end = t.end;
            self.i += 1;
        }
    }

    /// Where an error about token `t` points.
    fn pos_of(&self, t: &Token<'_>) -> Pos {
        if matches!(t.tok, Tok::Newline | Tok::Eof) {
            self.prev_end
        } else {
            t.pos
        }
    }

    fn expected<T>(&self, what: &'static str, t: &Token<'a>) -> Res<T> {
        Err(self.fail(Fail::Expected(what, *t)))
    }

    fn enter(&mut self, pos: Pos) -> Res<()> {
        self.nest += 1;
        if self.nest > MAX_NESTING {
            return Err(self.fail(Fail::TooNested(pos)));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nest = self.nest.saturating_sub(1);
    }

    fn depth(&self, d: usize, pos: Pos) -> Res<usize> {
        if d > MAX_DEPTH {
            return Err(self.fail(Fail::TooDeep(pos)));
        }
        Ok(d)
    }

    fn program(mut self) -> Res<Program> {
        let mut vars_at: Option<Pos> = None;
        loop {
            let t = self.peek()?;
            match t.tok {
                Tok::Newline | Tok::Semi => {
                    self.bump();
                    continue;
                }
                Tok::Eof => break,
                Tok::Vars => {
                    if self.token(self.i + 1)?.tok == Tok::Eq {
                        return err(t.pos, "'vars' is a keyword and cannot be assigned");
                    }
                    if let Some(first) = vars_at {
                        return err(
                            t.pos,
                            format!("duplicate 'vars' statement (first one at {first})"),
                        );
                    }
                    vars_at = Some(t.pos);
                    self.vars_decl()?;
                }
                Tok::Ident => {
                    if vars_at.is_none() {
                        return err(
                            t.pos,
                            "missing 'vars' statement: declare the variables with 'vars' before the first assignment",
                        );
                    }
                    self.assignment()?;
                }
                _ => {
                    return err(
                        t.pos,
                        format!(
                            "unexpected token {}; expected 'vars' or an assignment",
                            describe(&t)
                        ),
                    );
                }
            }
            let t = self.peek()?;
            match t.tok {
                Tok::Newline | Tok::Semi => self.bump(),
                Tok::Eof => {}
                Tok::Ident | Tok::Num(_) | Tok::LParen => {
                    return err(
                        t.pos,
                        format!("unexpected token {} (missing operator?)", describe(&t)),
                    );
                }
                _ => return err(t.pos, format!("unexpected token {}", describe(&t))),
            }
        }
        let eof = self.peek()?.pos;
        if vars_at.is_none() {
            return err(
                eof,
                "missing 'vars' statement: the program must declare its variables",
            );
        }
        if self.stmts.is_empty() {
            return err(
                eof,
                "program has no assignment; the last assignment is the output",
            );
        }
        Ok(Program {
            vars: self.vars,
            output: self.stmts.len() - 1,
            stmts: self.stmts,
        })
    }

    fn vars_decl(&mut self) -> Res<()> {
        let kw = self.peek()?;
        self.bump();
        let t = self.peek()?;
        match t.tok {
            Tok::Ident => {}
            tok if is_terminator(tok) => {
                return err(
                    kw.pos,
                    "'vars' declares no variables; at least one is required",
                );
            }
            _ => return self.expected("a variable name", &t),
        }
        loop {
            let t = self.peek()?;
            if t.tok != Tok::Ident {
                return self.expected("a variable name after ','", &t);
            }
            let name = t.text;
            if Func::from_name(name).is_some() {
                return err(
                    t.pos,
                    format!("'{name}' is a function name and cannot be used as a variable"),
                );
            }
            if let Some(first) = self.var_pos.get(name) {
                return err(
                    t.pos,
                    format!("duplicate variable '{name}' in vars (first declared at {first})"),
                );
            }
            self.var_pos.insert(name.to_string(), t.pos);
            self.vars.push((name.to_string(), t.pos));
            self.bump();
            let t = self.peek()?;
            match t.tok {
                Tok::Comma => self.bump(),
                tok if is_terminator(tok) => return Ok(()),
                Tok::Ident => {
                    return err(
                        t.pos,
                        format!(
                            "unexpected token {}; variables must be separated by commas",
                            describe(&t)
                        ),
                    );
                }
                _ => return err(t.pos, format!("unexpected token {}", describe(&t))),
            }
        }
    }

    fn assignment(&mut self) -> Res<()> {
        let name_tok = self.peek()?;
        let name = name_tok.text;
        self.bump();
        let t = self.peek()?;
        if t.tok != Tok::Eq {
            return err(
                self.pos_of(&t),
                format!("expected '=' after '{name}', found {}", describe(&t)),
            );
        }
        if Func::from_name(name).is_some() {
            return err(
                name_tok.pos,
                format!("cannot assign to '{name}': it is a function name"),
            );
        }
        if self.var_pos.contains_key(name) {
            return err(
                name_tok.pos,
                format!("cannot assign to declared variable '{name}'"),
            );
        }
        self.bump();
        let (expr, _) = self.expr()?;
        self.lets.insert(name.to_string());
        self.stmts.push(Stmt {
            name: name.to_string(),
            expr,
            pos: name_tok.pos,
        });
        Ok(())
    }

    // Expression parsing: operator precedence with explicit stacks (no
    // recursion at all), so arbitrarily deep input cannot overflow the
    // stack, whatever the build profile. Trees are paired with their depth.
    //
    // The parser alternates between *operand position* (a number, a name, a
    // call's name and `(`, a `(` or a prefix sign is expected) and *operator
    // position* (`^`, a binary operator, `,`, `)` or the end).

    fn expr(&mut self) -> Res<(Expr, usize)> {
        let mut out: Vec<(Expr, usize)> = Vec::new();
        let mut ops: Vec<Op> = Vec::new();
        loop {
            // Operand position.
            let t = self.peek()?;
            match t.tok {
                Tok::Minus | Tok::Plus => {
                    self.enter(t.pos)?;
                    ops.push(if t.tok == Tok::Minus {
                        Op::Neg(t.pos)
                    } else {
                        Op::Plus
                    });
                    self.bump();
                    continue;
                }
                Tok::LParen => {
                    self.enter(t.pos)?;
                    ops.push(Op::Group);
                    self.bump();
                    continue;
                }
                Tok::Num(v) => {
                    self.bump();
                    out.push((Expr::Num(v, t.pos), 1));
                }
                Tok::Ident if self.token(self.i + 1)?.tok == Tok::LParen => {
                    let Some(func) = Func::from_name(t.text) else {
                        return Err(self.fail(Fail::NotAFunction(t)));
                    };
                    self.enter(t.pos)?;
                    self.bump(); // name
                    self.bump(); // (
                    ops.push(Op::Call(func, t.pos, out.len()));
                    if self.peek()?.tok != Tok::RParen {
                        continue;
                    }
                    // `f()`: close the call right away.
                    self.bump();
                    self.close_group(&mut out, &mut ops)?;
                }
                Tok::Ident => {
                    if Func::from_name(t.text).is_some() {
                        return Err(self.fail(Fail::FuncAsVar(t)));
                    }
                    if !self.is_bound(t.text) {
                        return Err(self.fail(Fail::Undeclared(t)));
                    }
                    self.bump();
                    out.push((Expr::Var(t.text.to_string(), t.pos), 1));
                }
                Tok::Newline | Tok::Eof => {
                    return Err(self.fail(Fail::Expected("an expression", t)));
                }
                _ => return Err(self.fail(Fail::Unexpected(t))),
            }
            // Operator position.
            loop {
                let t = self.peek()?;
                let op = match t.tok {
                    Tok::Caret => {
                        self.bump();
                        let n = self.exponent()?;
                        let (base, d) = pop(&mut out, t.pos)?;
                        let d = self.depth(d + 1, t.pos)?;
                        out.push((Expr::Pow(Box::new(base), n, t.pos), d));
                        continue;
                    }
                    Tok::Plus => BinOp::Add,
                    Tok::Minus => BinOp::Sub,
                    Tok::Star => BinOp::Mul,
                    Tok::Slash => BinOp::Div,
                    Tok::RParen | Tok::Comma => {
                        self.reduce(&mut out, &mut ops, 0)?;
                        match (ops.last(), t.tok) {
                            // Not ours: the caller reports the stray token.
                            (None, _) => return pop(&mut out, t.pos),
                            (Some(Op::Group), Tok::Comma) => {
                                return Err(self.fail(Fail::Expected("')'", t)));
                            }
                            (_, Tok::Comma) => {
                                self.bump();
                                break;
                            }
                            _ => {
                                self.bump();
                                self.close_group(&mut out, &mut ops)?;
                                continue;
                            }
                        }
                    }
                    _ => {
                        // The end of the expression.
                        self.reduce(&mut out, &mut ops, 0)?;
                        return match ops.last() {
                            None => pop(&mut out, t.pos),
                            Some(Op::Group) => Err(self.fail(Fail::Expected("')'", t))),
                            Some(_) => Err(self.fail(Fail::Expected("',' or ')'", t))),
                        };
                    }
                };
                self.reduce(&mut out, &mut ops, precedence(op))?;
                ops.push(Op::Bin(op, t.pos));
                self.bump();
                break;
            }
        }
    }

    /// Applies the pending prefix signs and binary operators on top of `ops`
    /// that bind at least as tightly as `min` (all of them for 0), stopping
    /// at an open parenthesis or call.
    fn reduce(&mut self, out: &mut Vec<(Expr, usize)>, ops: &mut Vec<Op>, min: u8) -> Res<()> {
        while let Some(&op) = ops.last() {
            match op {
                Op::Neg(pos) => {
                    let (e, d) = pop(out, pos)?;
                    let d = self.depth(d + 1, pos)?;
                    out.push((Expr::Neg(Box::new(e), pos), d));
                    self.leave();
                }
                Op::Plus => self.leave(),
                Op::Bin(b, pos) if precedence(b) >= min => {
                    let (r, rd) = pop(out, pos)?;
                    let (l, ld) = pop(out, pos)?;
                    let d = self.depth(1 + ld.max(rd), pos)?;
                    out.push((Expr::Bin(b, Box::new(l), Box::new(r), pos), d));
                }
                _ => return Ok(()),
            }
            ops.pop();
        }
        Ok(())
    }

    /// Closes the parenthesis or call on top of `ops` (its `)` was consumed).
    fn close_group(&mut self, out: &mut Vec<(Expr, usize)>, ops: &mut Vec<Op>) -> Res<()> {
        self.leave();
        match ops.pop() {
            Some(Op::Group) => Ok(()),
            Some(Op::Call(func, pos, start)) if start <= out.len() => {
                let mut depth = 0;
                let args: Vec<Expr> = out
                    .drain(start..)
                    .map(|(e, d)| {
                        depth = depth.max(d);
                        e
                    })
                    .collect();
                if func.arity_error(args.len()).is_some() {
                    return Err(self.fail(Fail::Arity(func, args.len(), pos)));
                }
                let depth = self.depth(depth + 1, pos)?;
                out.push((Expr::Call(func, args, pos), depth));
                Ok(())
            }
            _ => Err(internal_error(self.prev_end)),
        }
    }

    fn exponent(&mut self) -> Res<i32> {
        let start = self.peek()?;
        if is_terminator(start.tok) {
            return Err(self.fail(Fail::Expected("an integer exponent after '^'", start)));
        }
        let not_int = || {
            Err(ParseError::new(
                start.pos,
                "exponent of ^ must be an integer",
            ))
        };
        let paren = start.tok == Tok::LParen;
        if paren {
            self.bump();
        }
        let mut neg = false;
        let t = self.peek()?;
        if matches!(t.tok, Tok::Minus | Tok::Plus) {
            neg = t.tok == Tok::Minus;
            self.bump();
        }
        let t = self.peek()?;
        let digits = t.text;
        if !matches!(t.tok, Tok::Num(_)) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return not_int();
        }
        self.bump();
        if paren {
            let t = self.peek()?;
            match t.tok {
                Tok::RParen => self.bump(),
                tok if is_terminator(tok) => return Err(self.fail(Fail::Expected("')'", t))),
                _ => return not_int(),
            }
        }
        // `x^2^3` is `x^(2^3)`, whose exponent is not an integer literal.
        if self.peek()?.tok == Tok::Caret {
            return not_int();
        }
        let magnitude = digits.parse::<i64>().ok();
        match magnitude.and_then(|m| i32::try_from(if neg { -m } else { m }).ok()) {
            Some(n) => Ok(n),
            None => Err(ParseError::new(
                start.pos,
                "exponent out of range (must fit in a 32-bit integer)",
            )),
        }
    }

    fn is_bound(&self, name: &str) -> bool {
        self.var_pos.contains_key(name) || self.lets.contains(name)
    }

    /// Builds the error for one of the failures of the expression parser.
    #[cold]
    #[inline(never)]
    fn fail(&self, f: Fail<'_>) -> ParseError {
        let (pos, msg) = match f {
            Fail::Expected(what, t) => (
                self.pos_of(&t),
                format!("expected {what}, found {}", describe(&t)),
            ),
            Fail::Unexpected(t) => (t.pos, format!("unexpected token {}", describe(&t))),
            Fail::FuncAsVar(t) => (
                t.pos,
                format!(
                    "'{0}' is a function name and cannot be used as a variable; call it as {0}(...)",
                    t.text
                ),
            ),
            Fail::Undeclared(t) => (t.pos, format!("undeclared name '{}'", t.text)),
            Fail::NotAFunction(t) if self.is_bound(t.text) => {
                (t.pos, format!("'{}' is not a function", t.text))
            }
            Fail::NotAFunction(t) => (t.pos, format!("unknown function '{}'", t.text)),
            Fail::Arity(func, got, pos) => (pos, func.arity_error(got).unwrap_or_default()),
            Fail::TooNested(pos) => (
                pos,
                format!("expression nested too deeply (limit {MAX_NESTING})"),
            ),
            Fail::TooDeep(pos) => (
                pos,
                format!(
                    "expression too deep (more than {MAX_DEPTH} levels); split it into several assignments"
                ),
            ),
        };
        ParseError { pos, msg }
    }
}

/// A pending operator of the expression parser.
#[derive(Debug, Clone, Copy)]
enum Op {
    Neg(Pos),
    Plus,
    Bin(BinOp, Pos),
    /// An open `(`.
    Group,
    /// An open call, with the index in the operand stack of its first argument.
    Call(Func, Pos, usize),
}

fn precedence(op: BinOp) -> u8 {
    match op {
        BinOp::Add | BinOp::Sub => 1,
        BinOp::Mul | BinOp::Div => 2,
    }
}

fn pop(out: &mut Vec<(Expr, usize)>, pos: Pos) -> Res<(Expr, usize)> {
    out.pop().ok_or_else(|| internal_error(pos))
}

/// Unreachable by construction; reported instead of panicking.
#[cold]
fn internal_error(pos: Pos) -> ParseError {
    ParseError::new(pos, "internal parser error (please report)")
}

/// The failures of the expression parser; see [`Parser::fail`].
enum Fail<'a> {
    Expected(&'static str, Token<'a>),
    Unexpected(Token<'a>),
    FuncAsVar(Token<'a>),
    Undeclared(Token<'a>),
    NotAFunction(Token<'a>),
    Arity(Func, usize, Pos),
    TooNested(Pos),
    TooDeep(Pos),
}

// ---------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(line: u32, col: u32) -> Pos {
        Pos::new(line, col)
    }
    fn num(v: f64, pos: Pos) -> Expr {
        Expr::Num(v, pos)
    }
    fn var(n: &str, pos: Pos) -> Expr {
        Expr::Var(n.to_string(), pos)
    }
    fn neg(e: Expr, pos: Pos) -> Expr {
        Expr::Neg(Box::new(e), pos)
    }
    fn bin(op: BinOp, l: Expr, r: Expr, pos: Pos) -> Expr {
        Expr::Bin(op, Box::new(l), Box::new(r), pos)
    }
    fn call(f: Func, args: Vec<Expr>, pos: Pos) -> Expr {
        Expr::Call(f, args, pos)
    }

    /// Compact position-free rendering, for precedence tests.
    fn sx(e: &Expr) -> String {
        match e {
            Expr::Num(v, _) => format!("{v}"),
            Expr::Var(n, _) => n.clone(),
            Expr::Neg(e, _) => format!("(neg {})", sx(e)),
            Expr::Bin(op, l, r, _) => format!("({op} {} {})", sx(l), sx(r)),
            Expr::Pow(b, n, _) => format!("(^ {} {n})", sx(b)),
            Expr::Call(f, args, _) => {
                let mut s = format!("({f}");
                for a in args {
                    s.push(' ');
                    s.push_str(&sx(a));
                }
                s.push(')');
                s
            }
        }
    }

    /// The output expression of `vars a, b, c, x, y` + `f = <src>`.
    fn out(src: &str) -> String {
        let prog = parse(&format!("vars a, b, c, x, y\nf = {src}"))
            .unwrap_or_else(|e| panic!("{src:?}: {e}"));
        sx(&prog.output_stmt().expr)
    }

    fn fails(src: &str) -> (String, String) {
        match parse(src) {
            Ok(prog) => panic!("{src:?} parsed: {prog:?}"),
            Err(e) => (e.pos.to_string(), e.msg),
        }
    }

    /// Asserts the error position and that the message contains `msg`.
    #[track_caller]
    fn fails_with(src: &str, pos: &str, msg: &str) {
        let (p, m) = fails(src);
        assert_eq!(p, pos, "{src:?}: {m}");
        assert!(m.contains(msg), "{src:?}: {m:?} lacks {msg:?}");
    }

    const EXAMPLE: &str = "# a comment
vars x1, x2                      # differentiation variables, in this order
u = x1 - x2                      # let-binding
f = relu(u) - relu(-u) + abs(x2) # the LAST assignment is the scalar output
";

    #[test]
    fn example_program() {
        let prog = parse(EXAMPLE).unwrap();
        assert_eq!(
            prog.vars,
            vec![("x1".to_string(), p(2, 6)), ("x2".to_string(), p(2, 10))]
        );
        let u = Stmt {
            name: "u".into(),
            expr: bin(BinOp::Sub, var("x1", p(3, 5)), var("x2", p(3, 10)), p(3, 8)),
            pos: p(3, 1),
        };
        let f = Stmt {
            name: "f".into(),
            expr: bin(
                BinOp::Add,
                bin(
                    BinOp::Sub,
                    call(Func::Relu, vec![var("u", p(4, 10))], p(4, 5)),
                    call(
                        Func::Relu,
                        vec![neg(var("u", p(4, 21)), p(4, 20))],
                        p(4, 15),
                    ),
                    p(4, 13),
                ),
                call(Func::Abs, vec![var("x2", p(4, 30))], p(4, 26)),
                p(4, 24),
            ),
            pos: p(4, 1),
        };
        assert_eq!(prog.stmts, vec![u, f]);
        assert_eq!(prog.output, 1);
        assert_eq!(prog.output_stmt().name, "f");
    }

    #[test]
    fn semicolon_separator() {
        let prog = parse("vars x; f = relu(x) - relu(-x)").unwrap();
        assert_eq!(prog.vars, vec![("x".to_string(), p(1, 6))]);
        assert_eq!(prog.output, 0);
        assert_eq!(
            prog.stmts[0].expr,
            bin(
                BinOp::Sub,
                call(Func::Relu, vec![var("x", p(1, 18))], p(1, 13)),
                call(
                    Func::Relu,
                    vec![neg(var("x", p(1, 29)), p(1, 28))],
                    p(1, 23)
                ),
                p(1, 21),
            )
        );
        assert_eq!(prog.stmts[0].pos, p(1, 9));
    }

    #[test]
    fn precedence() {
        let cases = [
            ("-x^2", "(neg (^ x 2))"),
            ("-2^2", "(neg (^ 2 2))"),
            ("a - b - c", "(- (- a b) c)"),
            ("a / b * c", "(* (/ a b) c)"),
            ("a + b * c", "(+ a (* b c))"),
            ("a * b + c", "(+ (* a b) c)"),
            ("(a + b) * c", "(* (+ a b) c)"),
            ("-a * b", "(* (neg a) b)"),
            ("a * -b", "(* a (neg b))"),
            ("a - -b", "(- a (neg b))"),
            ("a--b", "(- a (neg b))"),
            ("--a", "(neg (neg a))"),
            ("+a", "a"),
            ("-+-a", "(neg (neg a))"),
            ("a ^ 2 * b", "(* (^ a 2) b)"),
            ("a * b ^ 2", "(* a (^ b 2))"),
            ("x^-1", "(^ x -1)"),
            ("x ^ (3)", "(^ x 3)"),
            ("x^(-2)", "(^ x -2)"),
            ("x^+2", "(^ x 2)"),
            ("x^0", "(^ x 0)"),
            ("(x + 1)^2", "(^ (+ x 1) 2)"),
            ("(x^2)^3", "(^ (^ x 2) 3)"),
            ("relu(x)^2", "(^ (relu x) 2)"),
            ("-relu(x)", "(neg (relu x))"),
            ("x - 1", "(- x 1)"),
            ("-2.5", "(neg 2.5)"),
            ("x - -1", "(- x (neg 1))"),
            (
                "max(a, b, c) / min(a, -b)",
                "(/ (max a b c) (min a (neg b)))",
            ),
            ("clamp(x, -1, 1)", "(clamp x (neg 1) 1)"),
            ("leaky_relu(x, 0.01)", "(leaky_relu x 0.01)"),
            ("relu (x)", "(relu x)"),
            ("((((x))))", "x"),
        ];
        for (src, want) in cases {
            assert_eq!(out(src), want, "{src}");
        }
    }

    #[test]
    fn display_uses_minimal_parentheses() {
        let cases = [
            ("a - (b - c)", "a - (b - c)"),
            ("(a - b) - c", "a - b - c"),
            ("a * (b / c)", "a * (b / c)"),
            ("(a + b) * c", "(a + b) * c"),
            ("-x^2", "-x^2"),
            ("(-x)^2", "(-x)^2"),
            ("(x^2)^3", "(x^2)^3"),
            ("x^(-1)", "x^-1"),
            ("-(a + b) * -c", "-(a + b) * -c"),
            ("- - a", "--a"),
            ("max(a, (b), c + 1)", "max(a, b, c + 1)"),
            ("1e-3 + .5 + 2.", "0.001 + 0.5 + 2"),
        ];
        for (src, want) in cases {
            let prog = parse(&format!("vars a, b, c, x\nf = {src}")).unwrap();
            assert_eq!(prog.output_stmt().expr.to_string(), want, "{src}");
        }
    }

    #[test]
    fn numbers() {
        let cases = [
            ("1", 1.0),
            ("2.5", 2.5),
            ("1e-3", 1e-3),
            (".5", 0.5),
            ("2.", 2.0),
            ("1E+3", 1000.0),
            ("2.e2", 200.0),
            ("0", 0.0),
            ("007", 7.0),
            ("1e308", 1e308),
            ("1e-400", 0.0),
        ];
        for (src, want) in cases {
            let prog = parse(&format!("vars x\nf = {src}")).unwrap();
            assert_eq!(prog.stmts[0].expr, num(want, p(2, 5)), "{src}");
        }
        // A leading minus is a negation node, never folded.
        let prog = parse("vars x\nf = -1e-3").unwrap();
        assert_eq!(prog.stmts[0].expr, neg(num(1e-3, p(2, 6)), p(2, 5)));
    }

    #[test]
    fn every_function_parses() {
        for f in Func::ALL {
            assert_eq!(Func::from_name(f.name()), Some(f));
            let args = vec!["x"; f.min_args()].join(", ");
            let prog = parse(&format!("vars x\ny = {}({args})", f.name())).unwrap();
            match &prog.stmts[0].expr {
                Expr::Call(g, a, pos) => {
                    assert_eq!((*g, a.len(), *pos), (f, f.min_args(), p(2, 5)));
                }
                e => panic!("{e:?}"),
            }
        }
        assert_eq!(Func::from_name("Relu"), None);
        assert_eq!(Func::ALL.iter().filter(|f| !f.is_kink()).count(), 8);
        assert_eq!(parse("vars x\nf = max(x, x, x, x)").unwrap().stmts.len(), 1);
    }

    #[test]
    fn statements_and_names() {
        // Re-assignment: later uses see the newest value (the stmt order).
        let prog = parse("vars x\nu = x\nu = u * 2\nf = u").unwrap();
        assert_eq!(prog.stmts.len(), 3);
        assert_eq!(prog.output, 2);
        assert_eq!(sx(&prog.stmts[1].expr), "(* u 2)");
        // Empty statements, trailing `;`, comments, CRLF, tabs.
        let prog = parse("\n\n;;vars x ;; \r\n\tf = relu(x);;\n# end\n;").unwrap();
        assert_eq!(prog.output, 0);
        assert_eq!(prog.stmts[0].pos, p(4, 2));
        // The output is the last assignment, not one named `f`.
        let prog = parse("vars x, y\nf = x\ng = f + y").unwrap();
        assert_eq!(prog.output_stmt().name, "g");
        // Multi-line vars and several names.
        let prog = parse("vars a_1,_b , C9\nr=a_1*_b/C9").unwrap();
        let names: Vec<_> = prog.vars.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a_1", "_b", "C9"]);
        // Names that merely contain keywords or function names are fine.
        assert!(parse("vars varsx, expx\nrelu_ = varsx + expx\nVars = relu_").is_ok());
    }

    #[test]
    fn error_positions() {
        let cases: &[(&str, &str, &str)] = &[
            ("vars x\nf = foo(x)", "2:5", "unknown function 'foo'"),
            (
                "vars x\nf = max(x)",
                "2:5",
                "max takes at least 2 arguments, got 1",
            ),
            (
                "vars x\nf = abs(x, x)",
                "2:5",
                "abs takes 1 argument, got 2",
            ),
            ("vars x\nf = relu()", "2:5", "relu takes 1 argument, got 0"),
            (
                "vars x\nf = clamp(x, 1)",
                "2:5",
                "clamp takes 3 arguments, got 2",
            ),
            (
                "vars x\nf = leaky_relu(x)",
                "2:5",
                "leaky_relu takes 2 arguments, got 1",
            ),
            ("vars x\nf = x(1)", "2:5", "'x' is not a function"),
            ("vars x\nf = y + 1", "2:5", "undeclared name 'y'"),
            ("vars x\nu = u + 1", "2:5", "undeclared name 'u'"),
            ("vars x\nf = g\ng = x", "2:5", "undeclared name 'g'"),
            (
                "vars x\nf = (x + 1",
                "2:11",
                "expected ')', found end of input",
            ),
            (
                "vars x\nf = (x + 1   # comment\n",
                "2:11",
                "expected ')', found end of line",
            ),
            (
                "vars x\nf = (x + 1; g = 1",
                "2:11",
                "expected ')', found ';'",
            ),
            ("vars x\nf = (x + 1 x)", "2:12", "expected ')', found 'x'"),
            (
                "vars x\nf = max(x, x",
                "2:13",
                "expected ',' or ')', found end of input",
            ),
            ("vars x\nf = max(x,)", "2:11", "unexpected token ')'"),
            (
                "vars x; f = x ^ 1.5",
                "1:17",
                "exponent of ^ must be an integer",
            ),
            ("vars x\nf = x^y", "2:7", "exponent of ^ must be an integer"),
            (
                "vars x\nf = x^-y",
                "2:7",
                "exponent of ^ must be an integer",
            ),
            (
                "vars x\nf = x^(1+1)",
                "2:7",
                "exponent of ^ must be an integer",
            ),
            (
                "vars x\nf = x^2^3",
                "2:7",
                "exponent of ^ must be an integer",
            ),
            (
                "vars x\nf = x^2.0",
                "2:7",
                "exponent of ^ must be an integer",
            ),
            (
                "vars x\nf = x^1e2",
                "2:7",
                "exponent of ^ must be an integer",
            ),
            (
                "vars x\nf = x^(2",
                "2:9",
                "expected ')', found end of input",
            ),
            (
                "vars x\nf = x^",
                "2:7",
                "expected an integer exponent after '^', found end of input",
            ),
            ("vars x\nf = x^99999999999", "2:7", "exponent out of range"),
            ("vars x\nf = x^-2147483649", "2:7", "exponent out of range"),
            (
                "vars x\nx = 1",
                "2:1",
                "cannot assign to declared variable 'x'",
            ),
            ("vars x, y, x", "1:12", "duplicate variable 'x' in vars"),
            ("vars x\nf = relu + 1", "2:5", "'relu' is a function name"),
            ("vars relu", "1:6", "'relu' is a function name"),
            ("vars x\nexp = x", "2:1", "cannot assign to 'exp'"),
            ("vars x\nf = x * * 2", "2:9", "unexpected token '*'"),
            ("vars x\nf = * x", "2:5", "unexpected token '*'"),
            ("vars x\nf = 2x", "2:6", "unexpected token 'x'"),
            ("vars x\nf = x)", "2:6", "unexpected token ')'"),
            (
                "vars x\nf = x +",
                "2:8",
                "expected an expression, found end of input",
            ),
            (
                "vars x\nf =\n",
                "2:4",
                "expected an expression, found end of line",
            ),
            ("vars x\nf = x = 1", "2:7", "unexpected token '='"),
            ("vars x\nf = vars", "2:5", "unexpected token 'vars'"),
            ("vars x\nf x", "2:3", "expected '=' after 'f', found 'x'"),
            (
                "vars x\nf",
                "2:2",
                "expected '=' after 'f', found end of input",
            ),
            ("vars x\n3 = x", "2:1", "unexpected token '3'"),
            ("vars x\n= x", "2:1", "unexpected token '='"),
            (
                "vars x",
                "1:7",
                "program has no assignment; the last assignment is the output",
            ),
            ("vars x # ééé", "1:13", "program has no assignment"),
            ("vars x\n\n", "3:1", "program has no assignment"),
            ("f = 1\nvars x", "1:1", "missing 'vars' statement"),
            ("", "1:1", "missing 'vars' statement"),
            ("# nothing\n", "2:1", "missing 'vars' statement"),
            ("vars x\nvars y\nf = x", "2:1", "duplicate 'vars' statement"),
            ("vars x\nf = x\nvars y", "3:1", "duplicate 'vars' statement"),
            ("vars\nf = 1", "1:1", "'vars' declares no variables"),
            ("vars;", "1:1", "'vars' declares no variables"),
            ("vars x y", "1:8", "variables must be separated by commas"),
            ("vars x,", "1:8", "expected a variable name after ','"),
            ("vars x,,y", "1:8", "expected a variable name after ','"),
            ("vars 1", "1:6", "expected a variable name, found '1'"),
            ("vars x + 1", "1:8", "unexpected token '+'"),
            ("vars = 1", "1:1", "'vars' is a keyword"),
            ("vars x\nf = x\nvars = 2", "3:1", "'vars' is a keyword"),
            ("vars x\nf = x @ 1", "2:7", "unexpected character '@'"),
            ("vars x\nf = x + é", "2:9", "unexpected character 'é'"),
            ("vars x\nf = x\u{0}", "2:6", "unexpected character '\\0'"),
            ("vars x\nf = x . 1", "2:7", "unexpected character '.'"),
            ("vars x\nf = 1e999", "2:5", "number out of range"),
            ("vars x\nf = x + 1e400 + @", "2:9", "number out of range"),
        ];
        for &(src, pos, msg) in cases {
            fails_with(src, pos, msg);
        }
    }

    #[test]
    fn first_error_in_source_order() {
        // A lexical error later on does not hide an earlier syntax error.
        fails_with("vars x\nf = y\ng = @", "2:5", "undeclared name 'y'");
        fails_with("vars x\nf = @\ng = y", "2:5", "unexpected character '@'");
    }

    #[test]
    fn error_display() {
        let e = parse("vars x\nf = foo(x)").unwrap_err();
        assert_eq!(e.to_string(), "2:5: unknown function 'foo'");
        assert_eq!(p(12, 3).to_string(), "12:3");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let n = 10_000;
        let parens = format!("vars x\nf = {}x{}", "(".repeat(n), ")".repeat(n));
        fails_with(&parens, "2:261", "expression nested too deeply");
        let minus = format!("vars x\nf = {}x", "-".repeat(n));
        fails_with(&minus, "2:261", "expression nested too deeply");
        let calls = format!("vars x\nf = {}x{}", "relu(".repeat(n), ")".repeat(n));
        fails_with(&calls, "2:1285", "expression nested too deeply");
        let unclosed = format!("vars x\nf = {}", "(".repeat(n));
        fails_with(&unclosed, "2:261", "expression nested too deeply");
        // Exactly at the limit is fine.
        let m = MAX_NESTING;
        let ok = format!("vars x\nf = {}x{}", "(".repeat(m), ")".repeat(m));
        assert_eq!(out_of(&ok), "x");
        // Long flat chains make deep trees: bounded by MAX_DEPTH.
        let chain = |k: usize| format!("vars x\nf = x{}", " + x".repeat(k));
        fails_with(&chain(100_000), "2:2051", "expression too deep");
        let prog = parse(&chain(MAX_DEPTH - 1)).unwrap();
        assert!(matches!(prog.stmts[0].expr, Expr::Bin(..)));
        let long_sum = format!("vars x\nf = x{}", "*x".repeat(50_000));
        fails_with(&long_sum, "2:1028", "expression too deep");
    }

    fn out_of(src: &str) -> String {
        sx(&parse(src).unwrap().output_stmt().expr)
    }

    #[test]
    fn deepest_tree_fits_a_small_stack() {
        // The largest accepted tree can be parsed, cloned, compared,
        // printed and dropped on a 512 KiB stack.
        let src = format!(
            "vars x\nf = {}x{}",
            "relu(".repeat(MAX_NESTING - 1),
            ")".repeat(MAX_NESTING - 1)
        );
        let chain = format!("vars x\nf = x{}", " - x".repeat(MAX_DEPTH - 1));
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || {
                for s in [src, chain] {
                    let prog = parse(&s).unwrap();
                    let copy = prog.clone();
                    assert_eq!(copy, prog);
                    assert!(!format!("{prog:?}").is_empty());
                    let shown = prog.output_stmt().expr.to_string();
                    let again = parse(&format!("vars x\nf = {shown}")).unwrap();
                    assert_eq!(sx(&again.stmts[0].expr), sx(&prog.stmts[0].expr));
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    // ------------------------------------------------------------ properties

    /// Checks the invariants of a successfully parsed program.
    fn check_program(src: &str, prog: &Program) {
        assert!(!prog.vars.is_empty());
        assert!(!prog.stmts.is_empty());
        assert_eq!(prog.output, prog.stmts.len() - 1);
        let lines = src.split('\n').collect::<Vec<_>>();
        let in_src = |pos: Pos| {
            let line = lines.get(pos.line as usize - 1).expect("line in range");
            assert!(
                pos.col >= 1 && pos.col as usize <= line.chars().count(),
                "{pos}"
            );
        };
        let vars: HashSet<&str> = prog.vars.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(vars.len(), prog.vars.len());
        prog.vars.iter().for_each(|(_, p)| in_src(*p));
        let mut lets: HashSet<&str> = HashSet::new();
        fn walk(e: &Expr, ok: &dyn Fn(&str) -> bool, in_src: &dyn Fn(Pos)) {
            in_src(e.pos());
            match e {
                Expr::Num(v, _) => assert!(v.is_finite() && *v >= 0.0),
                Expr::Var(n, _) => assert!(ok(n), "unresolved {n}"),
                Expr::Neg(a, _) | Expr::Pow(a, _, _) => walk(a, ok, in_src),
                Expr::Bin(_, a, b, _) => {
                    walk(a, ok, in_src);
                    walk(b, ok, in_src);
                }
                Expr::Call(f, args, _) => {
                    assert!(f.arity_error(args.len()).is_none());
                    args.iter().for_each(|a| walk(a, ok, in_src));
                }
            }
        }
        for s in &prog.stmts {
            in_src(s.pos);
            assert!(!vars.contains(s.name.as_str()));
            assert!(Func::from_name(&s.name).is_none());
            walk(&s.expr, &|n| vars.contains(n) || lets.contains(n), &in_src);
            lets.insert(&s.name);
        }
    }

    fn check_error(src: &str, e: &ParseError) {
        assert!(!e.msg.is_empty() && !e.msg.contains('\n'), "{e:?}");
        let lines = src.split('\n').collect::<Vec<_>>();
        let line = lines
            .get(e.pos.line as usize - 1)
            .expect("error line in range");
        assert!(e.pos.col >= 1 && e.pos.col as usize <= line.chars().count() + 1);
    }

    fn check(src: &str) {
        match parse(src) {
            Ok(prog) => check_program(src, &prog),
            Err(e) => check_error(src, &e),
        }
    }

    const TOKENS: &[&str] = &[
        "vars",
        "vars x, y\n",
        "x",
        "y",
        "u",
        "f",
        "_z9",
        "relu",
        "max",
        "min",
        "clamp",
        "exp",
        "leaky_relu",
        "abs",
        "foo",
        "(",
        ")",
        "(",
        ")",
        ",",
        "=",
        "=",
        "+",
        "-",
        "-",
        "*",
        "/",
        "^",
        ";",
        "\n",
        "\n",
        "1",
        "2",
        "-1",
        "2.5",
        "1e-3",
        ".5",
        "2.",
        "1E+3",
        "1e999",
        "#c\n",
        " ",
        "\t",
        "\r\n",
        "@",
        ".",
        "é",
    ];

    /// Any sequence of the grammar's tokens.
    fn free_soup() -> impl Strategy<Value = String> {
        (
            prop::bool::ANY,
            prop::collection::vec((prop::sample::select(TOKENS), prop::bool::ANY), 0..80),
        )
            .prop_map(|(decl, toks)| {
                let mut s = String::from(if decl { "vars x, y\n" } else { "" });
                for (t, space) in toks {
                    s.push_str(t);
                    if space {
                        s.push(' ');
                    }
                }
                s
            })
    }

    /// Tokens weighted towards well-formed expressions.
    const EXPR_TOKENS: &[&str] = &[
        "x",
        "x",
        "y",
        "y",
        "u",
        "u",
        "1",
        "2.5",
        "1e-3",
        ".5",
        "2.",
        "1E+3",
        "relu(",
        "max(",
        "min(",
        "clamp(",
        "exp(",
        "abs(",
        "leaky_relu(",
        "(",
        "(",
        ")",
        ")",
        ")",
        ",",
        ",",
        "+",
        "+",
        "-",
        "-",
        "-",
        "*",
        "*",
        "/",
        "^2",
        "^-1",
        "^(3)",
        "^(-2)",
        "^",
        "#c\n",
        "\n",
        "foo(",
        "f",
        "=",
        "@",
        "1e999",
        "2x",
        "vars",
    ];

    /// Statement-shaped soups: `vars x, y` then assignments whose right-hand
    /// sides are token soups, so that a good share of them parse.
    fn statement_soup() -> impl Strategy<Value = String> {
        let target = prop::sample::select(vec![
            "f = ", "f = ", "u = ", "u = ", "g = ", "x = ", "relu = ", "", "vars y\n",
        ]);
        let rhs = prop::collection::vec(prop::sample::select(EXPR_TOKENS), 1..12);
        let sep = prop::sample::select(vec!["\n", ";", " ; ", "\n\n", "  # c\n"]);
        (
            prop::sample::select(vec!["vars x, y\n", "vars x, y\n", "vars x\n", ""]),
            prop::collection::vec((target, rhs, sep), 1..5),
        )
            .prop_map(|(decl, stmts)| {
                let mut s = String::from(decl);
                for (target, rhs, sep) in stmts {
                    s.push_str(target);
                    s.push_str(&rhs.join(" "));
                    s.push_str(sep);
                }
                s
            })
    }

    fn expr_strategy() -> impl Strategy<Value = Expr> {
        let z = Pos::new(0, 0);
        let leaf = prop_oneof![
            any::<f64>()
                .prop_filter("finite, non-negative", |v| v.is_finite()
                    && !v.is_sign_negative())
                .prop_map(move |v| Expr::Num(v, z)),
            prop::sample::select(vec![0.0, 0.5, 1.0, 2.5, 1e-3, 1e300, 123.456])
                .prop_map(move |v| Expr::Num(v, z)),
            prop::sample::select(vec!["x", "y", "u"]).prop_map(move |n| Expr::Var(n.into(), z)),
        ];
        leaf.prop_recursive(6, 64, 4, move |inner| {
            prop_oneof![
                inner.clone().prop_map(move |e| Expr::Neg(Box::new(e), z)),
                (
                    prop::sample::select(vec![BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div]),
                    inner.clone(),
                    inner.clone()
                )
                    .prop_map(move |(op, l, r)| Expr::Bin(
                        op,
                        Box::new(l),
                        Box::new(r),
                        z
                    )),
                (inner.clone(), any::<i32>()).prop_map(move |(b, n)| Expr::Pow(Box::new(b), n, z)),
                (
                    prop::sample::select(Func::ALL.to_vec()),
                    prop::collection::vec(inner, 1..5)
                )
                    .prop_map(move |(f, mut args)| {
                        let n = f.max_args().unwrap_or(args.len()).max(f.min_args());
                        while args.len() < n {
                            args.push(Expr::Var("x".into(), z));
                        }
                        args.truncate(n);
                        Expr::Call(f, args, z)
                    }),
            ]
        })
    }

    fn strip(e: &Expr) -> Expr {
        let z = Pos::new(0, 0);
        match e {
            Expr::Num(v, _) => Expr::Num(*v, z),
            Expr::Var(n, _) => Expr::Var(n.clone(), z),
            Expr::Neg(a, _) => Expr::Neg(Box::new(strip(a)), z),
            Expr::Bin(op, a, b, _) => Expr::Bin(*op, Box::new(strip(a)), Box::new(strip(b)), z),
            Expr::Pow(a, n, _) => Expr::Pow(Box::new(strip(a)), *n, z),
            Expr::Call(f, args, _) => Expr::Call(*f, args.iter().map(strip).collect(), z),
        }
    }

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(2000, 0x6b63_0401, "proptest-regressions/kc.txt"))]

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            check(&s);
        }

        #[test]
        fn grammar_chars_never_panic(s in "[vars xyfu_0-9eE.+*/^(),;=#\\n\\t-]{0,120}") {
            check(&s);
        }

        #[test]
        fn token_soup_never_panics(s in free_soup()) {
            check(&s);
        }

        #[test]
        fn statement_soup_never_panics(s in statement_soup()) {
            check(&s);
        }

        #[test]
        fn mutated_programs_never_panic(
            e in expr_strategy(),
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), 0..3u8, prop::sample::select(EXPR_TOKENS)),
                1..4,
            ),
        ) {
            // A valid program with a few characters deleted or tokens inserted.
            let mut src: Vec<char> = format!("vars x, y\nu = x * y\nf = {e}").chars().collect();
            for (at, kind, tok) in edits {
                let i = at.index(src.len() + 1);
                match kind {
                    0 if i < src.len() => {
                        src.remove(i);
                    }
                    _ => {
                        let tail = src.split_off(i);
                        src.extend(tok.chars());
                        src.extend(tail);
                    }
                }
            }
            check(&src.into_iter().collect::<String>());
        }

        #[test]
        fn display_round_trips(e in expr_strategy()) {
            let src = format!("vars x, y\nu = x * y\nf = {e}");
            let prog = parse(&src).map_err(|err| TestCaseError::fail(format!("{src}: {err}")))?;
            check_program(&src, &prog);
            prop_assert_eq!(strip(&prog.output_stmt().expr), e);
        }
    }
}
