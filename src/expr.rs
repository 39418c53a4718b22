//! The small expression language of mappings (computed columns and row filters).
//!
//! Values are PostgreSQL text forms or NULL, with SQL's three-valued logic. The whole set:
//!
//! | form | meaning |
//! |---|---|
//! | `col`, `"Col Name"` | a source column (by its PostgreSQL name) |
//! | `'text'`, `42`, `-1.5`, `true`, `false`, `null` | literals |
//! | `a = b`, `a <> b`, `a != b`, `a < b`, `<=`, `>`, `>=` | numeric comparison when both sides are numbers, else text |
//! | `a IN (x, y, ...)`, `a NOT IN (...)` | membership |
//! | `a IS NULL`, `a IS NOT NULL` | null tests |
//! | `NOT a`, `a AND b`, `a OR b` | logic |
//! | `a + b`, `a - b`, `a * b`, `a / b` | arithmetic on numbers (f64; integral results print without a fraction) |
//! | `a \|\| b` | text concatenation (NULL if either is NULL) |
//! | `lower(a)`, `upper(a)`, `trim(a)`, `length(a)` | text functions |
//! | `concat(a, b, ...)` | concatenation, NULLs skipped |
//! | `coalesce(a, b, ...)`, `nullif(a, b)` | null handling |
//! | `substr(a, start[, len])` | 1-based substring |
//!
//! Anything richer belongs in the target database (a view, a trigger) or in a custom sink.

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Col(String),
    Lit(Option<String>),
    Not(Box<Expr>),
    Bin(Box<Expr>, BinOp, Box<Expr>),
    In(Box<Expr>, Vec<Expr>, bool),
    IsNull(Box<Expr>, bool),
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Add,
    Sub,
    Mul,
    Div,
    Concat,
}

const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("lower", 1, 1),
    ("upper", 1, 1),
    ("trim", 1, 1),
    ("length", 1, 1),
    ("concat", 1, 64),
    ("coalesce", 1, 64),
    ("nullif", 2, 2),
    ("substr", 2, 3),
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Sym(&'static str),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut v = String::new();
            i += 1;
            loop {
                match cs.get(i) {
                    None => return Err(format!("unterminated {c}")),
                    Some(&q) if q == c && cs.get(i + 1) == Some(&c) => {
                        v.push(c);
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&x) => {
                        v.push(x);
                        i += 1;
                    }
                }
            }
            out.push(if c == '\'' {
                Tok::Str(v)
            } else {
                Tok::Ident(v)
            });
        } else if c.is_ascii_digit() {
            let st = i;
            while i < cs.len() && (cs[i].is_ascii_digit() || cs[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num(cs[st..i].iter().collect()));
        } else if c.is_alphabetic() || c == '_' {
            let st = i;
            while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(cs[st..i].iter().collect::<String>()));
        } else {
            let two: String = cs[i..(i + 2).min(cs.len())].iter().collect();
            let sym = ["<=", ">=", "<>", "!=", "||"]
                .into_iter()
                .find(|s| *s == two)
                .or_else(|| {
                    ["=", "<", ">", "(", ")", ",", "+", "-", "*", "/"]
                        .into_iter()
                        .find(|s| s.starts_with(c))
                })
                .ok_or_else(|| format!("unexpected character {c:?}"))?;
            i += sym.len();
            out.push(Tok::Sym(sym));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(k))
    }
    fn eat_kw(&mut self, k: &str) -> bool {
        let hit = self.keyword(k);
        if hit {
            self.pos += 1;
        }
        hit
    }
    fn eat(&mut self, sym: &str) -> bool {
        let hit = matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym);
        if hit {
            self.pos += 1;
        }
        hit
    }
    fn expect(&mut self, sym: &str) -> Result<(), String> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(format!("expected {sym:?}"))
        }
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut l = self.and()?;
        while self.eat_kw("or") {
            l = Expr::Bin(Box::new(l), BinOp::Or, Box::new(self.and()?));
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut l = self.not()?;
        while self.eat_kw("and") {
            l = Expr::Bin(Box::new(l), BinOp::And, Box::new(self.not()?));
        }
        Ok(l)
    }
    fn not(&mut self) -> Result<Expr, String> {
        if self.eat_kw("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }
    fn cmp(&mut self) -> Result<Expr, String> {
        let l = self.add()?;
        if self.eat_kw("is") {
            let neg = self.eat_kw("not");
            if !self.eat_kw("null") {
                return Err("expected NULL after IS".into());
            }
            return Ok(Expr::IsNull(Box::new(l), neg));
        }
        let neg = self.eat_kw("not");
        if self.eat_kw("in") {
            self.expect("(")?;
            let mut items = vec![self.add()?];
            while self.eat(",") {
                items.push(self.add()?);
            }
            self.expect(")")?;
            return Ok(Expr::In(Box::new(l), items, neg));
        }
        if neg {
            return Err("expected IN after NOT".into());
        }
        for (s, op) in [
            ("=", BinOp::Eq),
            ("<>", BinOp::Ne),
            ("!=", BinOp::Ne),
            ("<=", BinOp::Le),
            (">=", BinOp::Ge),
            ("<", BinOp::Lt),
            (">", BinOp::Gt),
        ] {
            if self.eat(s) {
                return Ok(Expr::Bin(Box::new(l), op, Box::new(self.add()?)));
            }
        }
        Ok(l)
    }
    fn add(&mut self) -> Result<Expr, String> {
        let mut l = self.mul()?;
        loop {
            let op = if self.eat("+") {
                BinOp::Add
            } else if self.eat("-") {
                BinOp::Sub
            } else if self.eat("||") {
                BinOp::Concat
            } else {
                return Ok(l);
            };
            l = Expr::Bin(Box::new(l), op, Box::new(self.mul()?));
        }
    }
    fn mul(&mut self) -> Result<Expr, String> {
        let mut l = self.atom()?;
        loop {
            let op = if self.eat("*") {
                BinOp::Mul
            } else if self.eat("/") {
                BinOp::Div
            } else {
                return Ok(l);
            };
            l = Expr::Bin(Box::new(l), op, Box::new(self.atom()?));
        }
    }
    fn atom(&mut self) -> Result<Expr, String> {
        if self.eat("(") {
            let e = self.or()?;
            self.expect(")")?;
            return Ok(e);
        }
        if self.eat("-") {
            return match self.atom()? {
                Expr::Lit(Some(n)) => Ok(Expr::Lit(Some(format!("-{n}")))),
                e => Ok(Expr::Bin(
                    Box::new(Expr::Lit(Some("0".into()))),
                    BinOp::Sub,
                    Box::new(e),
                )),
            };
        }
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(Expr::Lit(Some(s)))
            }
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Expr::Lit(Some(n)))
            }
            Some(Tok::Ident(id)) => {
                self.pos += 1;
                match id.to_ascii_lowercase().as_str() {
                    "null" => return Ok(Expr::Lit(None)),
                    "true" => return Ok(Expr::Lit(Some("t".into()))),
                    "false" => return Ok(Expr::Lit(Some("f".into()))),
                    _ => {}
                }
                if self.eat("(") {
                    let name = id.to_ascii_lowercase();
                    let (_, min, max) = FUNCTIONS
                        .iter()
                        .find(|(n, _, _)| *n == name)
                        .ok_or_else(|| format!("unknown function {id}"))?;
                    let mut args = vec![self.or()?];
                    while self.eat(",") {
                        args.push(self.or()?);
                    }
                    self.expect(")")?;
                    if args.len() < *min || args.len() > *max {
                        return Err(format!("{name} takes {min}..{max} arguments"));
                    }
                    return Ok(Expr::Call(name, args));
                }
                Ok(Expr::Col(id))
            }
            Some(Tok::Sym(s)) => Err(format!("unexpected {s:?}")),
            None => Err("unexpected end of expression".into()),
        }
    }
}

impl Expr {
    pub fn parse(s: &str) -> Result<Expr, String> {
        let mut p = Parser {
            toks: lex(s)?,
            pos: 0,
        };
        let e = p.or()?;
        if p.pos != p.toks.len() {
            return Err(format!(
                "unexpected {:?} after the expression",
                p.toks[p.pos]
            ));
        }
        Ok(e)
    }

    /// Column names the expression reads.
    pub fn columns(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.walk(&mut |e| {
            if let Expr::Col(c) = e {
                out.insert(c.clone());
            }
        });
        out
    }

    fn walk(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Not(e) | Expr::IsNull(e, _) => e.walk(f),
            Expr::Bin(a, _, b) => {
                a.walk(f);
                b.walk(f);
            }
            Expr::In(a, items, _) => {
                a.walk(f);
                items.iter().for_each(|i| i.walk(f));
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.walk(f)),
            Expr::Col(_) | Expr::Lit(_) => {}
        }
    }

    /// Evaluate against a row (`col` → text value or NULL).
    ///
    /// Long on purpose: one arm per form of the language (the table in the module docs), with
    /// SQL's NULL rules spelled out in each.
    pub fn eval(
        &self,
        col: &dyn Fn(&str) -> Option<Option<String>>,
    ) -> Result<Option<String>, String> {
        Ok(match self {
            Expr::Col(c) => col(c).ok_or_else(|| format!("unknown column {c}"))?,
            Expr::Lit(v) => v.clone(),
            Expr::Not(e) => truth(&e.eval(col)?).map(|b| bool_text(!b)),
            Expr::IsNull(e, neg) => Some(bool_text(e.eval(col)?.is_none() != *neg)),
            Expr::In(e, items, neg) => {
                let Some(v) = e.eval(col)? else {
                    return Ok(None);
                };
                let mut found = false;
                for i in items {
                    if let Some(x) = i.eval(col)? {
                        found |= compare(&v, &x) == std::cmp::Ordering::Equal;
                    }
                }
                Some(bool_text(found != *neg))
            }
            Expr::Bin(a, op, b) => {
                let (x, y) = (a.eval(col)?, b.eval(col)?);
                match op {
                    BinOp::And => match (truth(&x), truth(&y)) {
                        (Some(false), _) | (_, Some(false)) => Some(bool_text(false)),
                        (Some(true), Some(true)) => Some(bool_text(true)),
                        _ => None,
                    },
                    BinOp::Or => match (truth(&x), truth(&y)) {
                        (Some(true), _) | (_, Some(true)) => Some(bool_text(true)),
                        (Some(false), Some(false)) => Some(bool_text(false)),
                        _ => None,
                    },
                    _ => {
                        let (Some(x), Some(y)) = (x, y) else {
                            return Ok(None);
                        };
                        use std::cmp::Ordering::*;
                        let ord = || compare(&x, &y);
                        match op {
                            BinOp::Eq => Some(bool_text(ord() == Equal)),
                            BinOp::Ne => Some(bool_text(ord() != Equal)),
                            BinOp::Lt => Some(bool_text(ord() == Less)),
                            BinOp::Le => Some(bool_text(ord() != Greater)),
                            BinOp::Gt => Some(bool_text(ord() == Greater)),
                            BinOp::Ge => Some(bool_text(ord() != Less)),
                            BinOp::Concat => Some(format!("{x}{y}")),
                            _ => {
                                let n = |s: &str| {
                                    s.parse::<f64>()
                                        .map_err(|_| format!("{s:?} is not a number"))
                                };
                                let (p, q) = (n(&x)?, n(&y)?);
                                let r = match op {
                                    BinOp::Add => p + q,
                                    BinOp::Sub => p - q,
                                    BinOp::Mul => p * q,
                                    _ if q == 0.0 => return Err("division by zero".into()),
                                    _ => p / q,
                                };
                                Some(number_text(r))
                            }
                        }
                    }
                }
            }
            Expr::Call(name, args) => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(a.eval(col)?);
                }
                match name.as_str() {
                    "lower" => vals[0].as_ref().map(|s| s.to_lowercase()),
                    "upper" => vals[0].as_ref().map(|s| s.to_uppercase()),
                    "trim" => vals[0].as_ref().map(|s| s.trim().to_string()),
                    "length" => vals[0].as_ref().map(|s| s.chars().count().to_string()),
                    "concat" => Some(vals.iter().flatten().cloned().collect()),
                    "coalesce" => vals.into_iter().flatten().next(),
                    "nullif" => {
                        if vals[0] == vals[1] {
                            None
                        } else {
                            vals[0].clone()
                        }
                    }
                    "substr" => {
                        let Some(s) = &vals[0] else { return Ok(None) };
                        let int = |v: &Option<String>| -> Result<Option<i64>, String> {
                            v.as_ref()
                                .map(|t| {
                                    t.parse::<i64>()
                                        .map_err(|_| format!("{t:?} is not an integer"))
                                })
                                .transpose()
                        };
                        let Some(start) = int(&vals[1])? else {
                            return Ok(None);
                        };
                        let len = match vals.get(2) {
                            Some(v) => match int(v)? {
                                Some(l) => Some(l.max(0) as usize),
                                None => return Ok(None),
                            },
                            None => None,
                        };
                        let skip = (start - 1).max(0) as usize;
                        let it = s.chars().skip(skip);
                        Some(match len {
                            Some(l) => it.take(l).collect(),
                            None => it.collect(),
                        })
                    }
                    other => return Err(format!("unknown function {other}")),
                }
            }
        })
    }
}

fn bool_text(b: bool) -> String {
    if b { "t" } else { "f" }.into()
}

/// SQL truthiness of a text value (`t`/`true`/`f`/`false`).
pub fn truth(v: &Option<String>) -> Option<bool> {
    match v.as_deref()?.to_ascii_lowercase().as_str() {
        "t" | "true" | "1" | "yes" | "on" => Some(true),
        _ => Some(false),
    }
}

fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.cmp(b),
    }
}

fn number_text(r: f64) -> String {
    if r.fract() == 0.0 && r.abs() < 9.0e15 {
        format!("{}", r as i64)
    } else {
        r.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(e: &str, row: &[(&str, Option<&str>)]) -> Option<String> {
        let expr = Expr::parse(e).unwrap();
        expr.eval(&|c| {
            row.iter()
                .find(|(k, _)| *k == c)
                .map(|(_, v)| v.map(String::from))
        })
        .unwrap()
    }

    #[test]
    fn evaluates_the_documented_set() {
        let row = [
            ("first", Some("Zoë")),
            ("last", Some("Ünal")),
            ("region", Some("eu")),
            ("id", Some("1500")),
            ("nick", None),
            ("Full Name", Some("x")),
        ];
        assert_eq!(eval("concat(first, ' ', last)", &row).unwrap(), "Zoë Ünal");
        assert_eq!(eval("lower(last)", &row).unwrap(), "ünal");
        assert_eq!(eval("upper(region) || '-1'", &row).unwrap(), "EU-1");
        assert_eq!(eval("coalesce(nick, first)", &row).unwrap(), "Zoë");
        assert_eq!(eval("region = 'eu' AND id >= 1000", &row).unwrap(), "t");
        assert_eq!(eval("region IN ('us', 'apac')", &row).unwrap(), "f");
        assert_eq!(eval("region NOT IN ('us')", &row).unwrap(), "t");
        assert_eq!(eval("nick IS NULL", &row).unwrap(), "t");
        assert_eq!(eval("id * 100 / 4", &row).unwrap(), "37500");
        assert_eq!(eval("id < 200", &row).unwrap(), "f"); // numeric, not text, comparison
        assert_eq!(eval("substr(first, 2, 2)", &row).unwrap(), "oë");
        assert_eq!(eval("\"Full Name\"", &row).unwrap(), "x");
        assert_eq!(eval("nick = 'a'", &row), None); // NULL
        assert_eq!(eval("NOT (nick = 'a') OR true", &row).unwrap(), "t");
        assert_eq!(eval("-1.5 + 1", &row).unwrap(), "-0.5");
        assert_eq!(
            Expr::parse("concat(a, lower(b)) = c").unwrap().columns(),
            ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(Expr::parse("frobnicate(a)")
            .unwrap_err()
            .contains("unknown function"));
        assert!(Expr::parse("a = ").is_err());
        assert!(Expr::parse("'open").unwrap_err().contains("unterminated"));
        assert!(Expr::parse("lower(a, b)")
            .unwrap_err()
            .contains("arguments"));
        assert!(Expr::parse("a b")
            .unwrap_err()
            .contains("after the expression"));
        let e = Expr::parse("a + 1").unwrap();
        assert!(e
            .eval(&|_| Some(Some("x".into())))
            .unwrap_err()
            .contains("not a number"));
    }
}
