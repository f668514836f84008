//! Whether two MATH answers are the same: Hendrycks et al.'s `is_equiv`
//! normalisation (the one the MATH paper scores with), widened the way
//! Minerva's `normalize_final_answer` widened it (units, `\text{}`, thousands
//! separators), then two checks the string rules miss: lists, tuples and
//! intervals compared element by element, and expressions compared by value
//! (`0.5` = `\frac12`, `\frac{\sqrt3}{3}` = `\frac{1}{\sqrt3}`, and with
//! variables by evaluating both at the same random points: `2(x+1)` = `2x+2`).

/// Whether the answers `a` and `b` are equivalent.
pub fn equivalent(a: &str, b: &str) -> bool {
    let (na, nb) = (normalize(a), normalize(b));
    if na == nb {
        return !na.is_empty();
    }
    if let (Some(la), Some(lb)) = (split_list(&na), split_list(&nb)) {
        if la.open != lb.open || la.close != lb.close || la.items.len() != lb.items.len() {
            return false;
        }
        if la.open == "\\{" || (la.open.is_empty() && la.close.is_empty()) {
            // A set, or a bare list ("Enter all the solutions, separated by
            // commas"): order does not matter.
            let mut used = vec![false; lb.items.len()];
            return la.items.iter().all(|x| {
                let found = lb
                    .items
                    .iter()
                    .enumerate()
                    .find(|(j, y)| !used[*j] && same_element(x, y));
                found.map(|(j, _)| used[j] = true).is_some()
            });
        }
        return la
            .items
            .iter()
            .zip(&lb.items)
            .all(|(x, y)| same_element(x, y));
    }
    same_value(&na, &nb)
}

fn same_element(a: &str, b: &str) -> bool {
    a == b || same_value(a, b)
}

/// Hendrycks's `strip_string`, with Minerva's extra clean-ups first.
pub fn normalize(answer: &str) -> String {
    let mut s = answer.trim().to_string();
    // Math delimiters around the whole answer.
    if s.len() >= 2 && s.starts_with('$') && s.ends_with('$') && !s.ends_with("\\$") {
        s = s.trim_matches('$').trim().to_string();
    }
    for (from, to) in [
        ("\\displaystyle", ""),
        ("\\$", ""),
        ("\\mathrm{th}", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("{,}", ","),
        // `\sqrt 5` would otherwise become `\sqrt{ }5` in `fix_sqrt`.
        ("\\sqrt ", "\\sqrt"),
        ("\\frac ", "\\frac"),
        ("\\dots", ""),
        ("\\ldots", ""),
        ("\\cdots", ""),
        ("°", ""),
        ("\u{2212}", "-"),
    ] {
        s = s.replace(from, to);
    }
    s = unwrap_commands(&s, &["\\textbf", "\\mbox", "\\mathbf", "\\textrm"]);
    // `x \in [2,5)`: the set is the answer.
    if let Some((var, set)) = s.split_once("\\in") {
        let var = var.trim();
        if var.len() == 1 && var.chars().all(|c| c.is_ascii_alphabetic()) {
            s = set.trim().to_string();
        }
    }
    s = strip_units(&s);
    s = s.trim().trim_end_matches('.').trim().to_string();
    if is_thousands(&s) {
        s = s.replace(',', "");
    }
    strip_string(&s)
}

/// `\text{ cm}` units after a number go; `\text{Monday}` keeps its word.
fn strip_units(s: &str) -> String {
    let mut s = s.to_string();
    // Hendrycks's rule: everything from "\text{ " (a unit after a space) on.
    if let Some(i) = s.find("\\text{ ") {
        if s[..i].chars().any(|c| c.is_ascii_digit()) {
            s.truncate(i);
        }
    }
    s = unwrap_commands(&s, &["\\text"]);
    const UNITS: [&str; 30] = [
        "square units",
        "sq units",
        "units",
        "square feet",
        "square inches",
        "square meters",
        "dollars",
        "cents",
        "degrees",
        "inches",
        "inch",
        "feet",
        "foot",
        "meters",
        "meter",
        "cm",
        "km",
        "mph",
        "hours",
        "hour",
        "minutes",
        "minute",
        "seconds",
        "pounds",
        "points",
        "ways",
        "students",
        "people",
        "days",
        "years",
    ];
    let has_digit = s.chars().any(|c| c.is_ascii_digit());
    if has_digit {
        for u in UNITS {
            if let Some(stem) = s.trim_end().strip_suffix(u) {
                if stem.chars().any(|c| c.is_ascii_digit()) {
                    s = stem.trim_end().to_string();
                    break;
                }
            }
        }
    }
    s
}

/// `\cmd{x}` -> `x` for each of `commands`.
fn unwrap_commands(s: &str, commands: &[&str]) -> String {
    let mut s = s.to_string();
    for cmd in commands {
        let open = format!("{cmd}{{");
        while let Some(i) = s.find(&open) {
            let body = i + open.len();
            let Some(len) = balanced(&s[body..]) else {
                break;
            };
            let inner = s[body..body + len].to_string();
            s.replace_range(i..body + len + 1, &inner);
        }
    }
    s
}

/// Length of the text before the `}` that closes an already open `{`.
pub(crate) fn balanced(s: &str) -> Option<usize> {
    let mut depth = 1usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn is_thousands(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let groups: Vec<&str> = int.split(',').collect();
    groups.len() > 1
        && (1..=3).contains(&groups[0].len())
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Hendrycks et al.'s `strip_string` (MATH's `is_equiv`), step by step.
pub fn strip_string(s: &str) -> String {
    let mut s = s.replace('\n', "").replace("\\!", "").replace("\\\\", "\\");
    s = s.replace("tfrac", "frac").replace("dfrac", "frac");
    s = s.replace("\\left", "").replace("\\right", "");
    s = s.replace("^{\\circ}", "").replace("^\\circ", "");
    s = s.replace("\\$", "");
    if let Some((head, _)) = s.split_once("\\text{ ") {
        s = head.to_string();
    }
    s = s.replace("\\%", "").replace('%', "");
    s = s.replace(" .", " 0.").replace("{.", "{0.");
    if s.is_empty() {
        return s;
    }
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    let parts: Vec<&str> = s.split('=').collect();
    if parts.len() == 2 && parts[0].len() <= 2 {
        s = parts[1].to_string();
    }
    s = fix_sqrt(&s);
    s.retain(|c| c != ' ');
    s = fix_fracs(&s);
    if s == "0.5" {
        s = "\\frac{1}{2}".into();
    }
    fix_a_slash_b(&s)
}

/// `\sqrt3` -> `\sqrt{3}`.
fn fix_sqrt(s: &str) -> String {
    let mut parts = s.split("\\sqrt");
    let mut out = parts.next().unwrap_or("").to_string();
    for p in parts {
        out.push_str("\\sqrt");
        match p.chars().next() {
            // `\sqrt[3]{x}` is left as it is (Hendrycks's rule would break it).
            Some(c) if c != '{' && c != '[' => {
                out.push('{');
                out.push(c);
                out.push('}');
                out.push_str(&p[c.len_utf8()..]);
            }
            _ => out.push_str(p),
        }
    }
    out
}

/// `\frac12` -> `\frac{1}{2}`, `\frac1{2}` -> `\frac{1}{2}`.
fn fix_fracs(s: &str) -> String {
    let mut parts = s.split("\\frac");
    let mut out = parts.next().unwrap_or("").to_string();
    for p in parts {
        out.push_str("\\frac");
        let mut chars = p.chars();
        match (chars.next(), chars.next()) {
            (Some('{'), _) => out.push_str(p),
            (Some(a), Some(b)) => {
                let rest = &p[a.len_utf8() + b.len_utf8()..];
                if b == '{' {
                    out.push_str(&format!("{{{a}}}{{{rest}"));
                } else {
                    out.push_str(&format!("{{{a}}}{{{b}}}{rest}"));
                }
            }
            // Too short to repair: the answer as it was (Hendrycks returns it).
            _ => return s.to_string(),
        }
    }
    out
}

/// `3/4` -> `\frac{3}{4}` for integers.
fn fix_a_slash_b(s: &str) -> String {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() == 2 {
        if let (Ok(a), Ok(b)) = (parts[0].parse::<i64>(), parts[1].parse::<i64>()) {
            if s == format!("{a}/{b}") {
                return format!("\\frac{{{a}}}{{{b}}}");
            }
        }
    }
    s.to_string()
}

/// A normalised answer seen as a list: its brackets and top-level items.
struct List<'a> {
    open: &'a str,
    close: &'a str,
    items: Vec<&'a str>,
}

/// Splits `(1,2)`, `[2,5)`, `\{1,2\}` or `1,2,3` at top-level commas; `None`
/// for a single item.
fn split_list(s: &str) -> Option<List<'_>> {
    let (open, close, body) = bracketed(s).unwrap_or(("", "", s));
    let mut items = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in body.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&body[start..]);
    (items.len() > 1 || !open.is_empty()).then_some(List { open, close, items })
}

/// The brackets around a whole answer, if one pair encloses it all.
fn bracketed(s: &str) -> Option<(&str, &str, &str)> {
    let open = ["\\{", "(", "["].into_iter().find(|o| s.starts_with(o))?;
    let close = ["\\}", ")", "]"].into_iter().find(|c| s.ends_with(c))?;
    if s.len() < open.len() + close.len() {
        return None;
    }
    let body = &s[open.len()..s.len() - close.len()];
    // The first bracket must close at the end, not earlier: (1)(2) is no tuple.
    let mut depth = 0i32;
    for c in body.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    (depth == 0).then_some((open, close, body))
}

/// Whether two normalised expressions have the same value (at the same random
/// values of their single-letter variables).
fn same_value(a: &str, b: &str) -> bool {
    let (Some(ea), Some(eb)) = (parse(a), parse(b)) else {
        return false;
    };
    let mut vars_a = Vec::new();
    let mut vars_b = Vec::new();
    ea.variables(&mut vars_a);
    eb.variables(&mut vars_b);
    vars_a.sort_unstable();
    vars_a.dedup();
    vars_b.sort_unstable();
    vars_b.dedup();
    if vars_a != vars_b {
        return false;
    }
    // Fixed points (not random): the same answer pair always scores the same.
    const POINTS: [f64; 3] = [0.7310, 1.3770, 2.1193];
    let rounds = if vars_a.is_empty() { 1 } else { POINTS.len() };
    (0..rounds).all(|r| {
        let value = |v: char| {
            let k = vars_a.iter().position(|&x| x == v).unwrap_or(0);
            POINTS[(r + k) % POINTS.len()] + k as f64 * 0.1173
        };
        match (ea.eval(&value), eb.eval(&value)) {
            (Some(x), Some(y)) if x.is_finite() && y.is_finite() => {
                (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0)
            }
            _ => false,
        }
    })
}

#[derive(Debug)]
enum Expr {
    Num(f64),
    Var(char),
    Neg(Box<Expr>),
    Bin(char, Box<Expr>, Box<Expr>),
    Sqrt(Box<Expr>, Option<Box<Expr>>),
}

impl Expr {
    fn variables(&self, out: &mut Vec<char>) {
        match self {
            Expr::Num(_) => {}
            Expr::Var(v) => out.push(*v),
            Expr::Neg(e) => e.variables(out),
            Expr::Bin(_, a, b) => {
                a.variables(out);
                b.variables(out);
            }
            Expr::Sqrt(e, n) => {
                e.variables(out);
                if let Some(n) = n {
                    n.variables(out);
                }
            }
        }
    }

    fn eval(&self, var: &dyn Fn(char) -> f64) -> Option<f64> {
        Some(match self {
            Expr::Num(x) => *x,
            Expr::Var(v) => var(*v),
            Expr::Neg(e) => -e.eval(var)?,
            Expr::Bin(op, a, b) => {
                let (x, y) = (a.eval(var)?, b.eval(var)?);
                match op {
                    '+' => x + y,
                    '-' => x - y,
                    '*' => x * y,
                    '/' if y != 0.0 => x / y,
                    '^' => x.powf(y),
                    _ => return None,
                }
            }
            Expr::Sqrt(e, None) => e.eval(var)?.sqrt(),
            Expr::Sqrt(e, Some(n)) => e.eval(var)?.powf(1.0 / n.eval(var)?),
        })
    }
}

/// Parses a normalised answer as arithmetic (numbers, `\frac`, `\sqrt`, `\pi`,
/// `+ - * / ^`, `\cdot`, `\times`, implicit products, single-letter
/// variables); `None` for anything else.
fn parse(s: &str) -> Option<Expr> {
    let mut p = Parser {
        s: s.as_bytes(),
        i: 0,
        depth: 0,
    };
    let e = p.expr()?;
    (p.i == p.s.len()).then_some(e)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.s[self.i..].starts_with(token.as_bytes()) {
            self.i += token.len();
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Option<Expr> {
        self.depth += 1;
        if self.depth > 64 {
            return None;
        }
        let mut left = self.term()?;
        loop {
            let op = match self.peek() {
                Some(b'+') => '+',
                Some(b'-') => '-',
                _ => break,
            };
            self.i += 1;
            let right = self.term()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Some(left)
    }

    fn term(&mut self) -> Option<Expr> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat("\\cdot") || self.eat("\\times") || self.eat("*") {
                '*'
            } else if self.eat("/") || self.eat("\\div") {
                '/'
            } else if self.starts_atom() {
                '*'
            } else {
                break;
            };
            let right = self.unary()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        Some(left)
    }

    fn starts_atom(&self) -> bool {
        match self.peek() {
            Some(c) if c.is_ascii_alphanumeric() || c == b'(' || c == b'{' || c == b'.' => true,
            Some(b'\\') => ["\\frac", "\\sqrt", "\\pi"]
                .iter()
                .any(|t| self.s[self.i..].starts_with(t.as_bytes())),
            _ => false,
        }
    }

    fn unary(&mut self) -> Option<Expr> {
        if self.eat("-") {
            return Some(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat("+") {
            return self.unary();
        }
        self.power()
    }

    fn power(&mut self) -> Option<Expr> {
        let base = self.atom()?;
        if self.eat("^") {
            let exp = match self.peek() {
                Some(b'{') | Some(b'(') => self.atom()?,
                // `2^10` is meant as 2¹⁰ (TeX would set 2¹0): all the digits.
                Some(c) if c.is_ascii_digit() => self.number()?,
                // `x^ay` is xᵃ y: a single letter is the exponent.
                _ => self.single()?,
            };
            return Some(Expr::Bin('^', Box::new(base), Box::new(exp)));
        }
        Some(base)
    }

    fn number(&mut self) -> Option<Expr> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == b'.') {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .parse()
            .ok()
            .map(Expr::Num)
    }

    fn single(&mut self) -> Option<Expr> {
        let c = self.peek()?;
        self.i += 1;
        match c {
            b'0'..=b'9' => Some(Expr::Num(f64::from(c - b'0'))),
            b'a'..=b'z' | b'A'..=b'Z' => Some(Expr::Var(c as char)),
            _ => None,
        }
    }

    fn group(&mut self) -> Option<Expr> {
        if self.eat("{") {
            let e = self.expr()?;
            return self.eat("}").then_some(e);
        }
        self.single()
    }

    fn atom(&mut self) -> Option<Expr> {
        if self.eat("(") {
            let e = self.expr()?;
            return self.eat(")").then_some(e);
        }
        if self.peek() == Some(b'{') {
            return self.group();
        }
        if self.eat("\\frac") {
            let a = self.group()?;
            let b = self.group()?;
            return Some(Expr::Bin('/', Box::new(a), Box::new(b)));
        }
        if self.eat("\\sqrt") {
            let index = if self.eat("[") {
                let n = self.expr()?;
                if !self.eat("]") {
                    return None;
                }
                Some(Box::new(n))
            } else {
                None
            };
            return Some(Expr::Sqrt(Box::new(self.group()?), index));
        }
        if self.eat("\\pi") {
            return Some(Expr::Num(std::f64::consts::PI));
        }
        match self.peek()? {
            c if c.is_ascii_digit() || c == b'.' => {
                let start = self.i;
                let n = self.number()?;
                let whole = !self.s[start..self.i].contains(&b'.');
                // A mixed number, `1\frac{1}{2}` = 3/2, as MATH writes them.
                if whole && self.s[self.i..].starts_with(b"\\frac") {
                    let save = self.i;
                    self.i += "\\frac".len();
                    if let (Expr::Num(w), Some(Expr::Num(a)), Some(Expr::Num(b))) =
                        (&n, self.group(), self.group())
                    {
                        if b != 0.0 {
                            return Some(Expr::Num(w + a / b));
                        }
                    }
                    self.i = save;
                }
                Some(n)
            }
            c if c.is_ascii_alphabetic() => {
                self.i += 1;
                Some(Expr::Var(c as char))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hendrycks_rules() {
        assert_eq!(strip_string("\\dfrac{1}{2}"), "\\frac{1}{2}");
        assert_eq!(strip_string("\\frac12"), "\\frac{1}{2}");
        assert_eq!(strip_string("\\sqrt3"), "\\sqrt{3}");
        assert_eq!(strip_string("x = 5"), "5");
        assert_eq!(strip_string("0.5"), "\\frac{1}{2}");
        assert_eq!(strip_string("3/4"), "\\frac{3}{4}");
        assert_eq!(strip_string(".25"), "0.25");
        assert_eq!(strip_string("50\\%"), "50");
        assert_eq!(strip_string("30^\\circ"), "30");
        assert_eq!(strip_string("10\\text{ inches}"), "10");
    }

    #[test]
    fn parser_rejects_what_it_cannot_read() {
        assert!(parse("\\frac{1}{").is_none());
        assert!(parse("x<5").is_none());
        assert!(parse("").is_none());
        assert!(parse(&"(".repeat(500)).is_none());
    }
}
