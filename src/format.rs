//! `--format` and `--filter` of the listing commands, as the docker CLI
//! takes them.
//!
//! `--format json` prints one JSON object per row; anything else is a
//! template in a subset of Go's `text/template` that Docker users write:
//! `{{.Field}}` and `{{.Field.Sub}}`, `{{json .}}` / `{{json .Field}}`,
//! `{{join .List ", "}}`, `{{upper .F}}`, `{{lower .F}}`, `{{.Label "K"}}`
//! (a map field prints as `k=v,k2=v2`), `\t` and `\n`,
//! and a leading `table` that adds a header and aligns the columns. A
//! template naming a field the rows do not have is refused before
//! anything is printed.

use anyhow::{Context, bail};
use serde_json::Value;

/// How a listing prints its rows.
#[derive(Debug)]
pub enum Output {
    /// The command's own table.
    Default,
    /// One JSON object per row.
    Json,
    /// A template.
    Template(Template),
}

impl Output {
    /// `--format`'s value (absent: the command's own table).
    pub fn parse(format: Option<&str>) -> anyhow::Result<Output> {
        Ok(match format.map(str::trim) {
            None | Some("") | Some("table") => Output::Default,
            Some("json") => Output::Json,
            Some(t) => Output::Template(Template::parse(t)?),
        })
    }

    /// Prints `rows` as asked; `default` prints them the command's way.
    /// Nothing is printed when the template does not fit the rows.
    pub fn print(&self, rows: &[Value], default: impl FnOnce()) -> anyhow::Result<()> {
        match self {
            Output::Default => default(),
            Output::Json => {
                for r in rows {
                    println!("{r}");
                }
            }
            Output::Template(t) => print!("{}", t.render(rows)?),
        }
        Ok(())
    }
}

/// `inspect --format`: absent or `json`, the objects as one JSON array
/// (docker's inspect output); a template, applied to each object in turn.
pub fn print_objects(objects: &[Value], format: Option<&str>) -> anyhow::Result<()> {
    match Output::parse(format)? {
        Output::Default | Output::Json => {
            println!("{}", serde_json::to_string_pretty(objects)?)
        }
        Output::Template(t) => print!("{}", t.render(objects)?),
    }
    Ok(())
}

/// `-q`: one ID per line.
pub fn print_ids<'a>(ids: impl IntoIterator<Item = &'a str>) {
    for id in ids {
        println!("{id}");
    }
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Action { func: Func, path: Vec<String> },
}

#[derive(Debug, Clone, PartialEq)]
enum Func {
    Print,
    Json,
    Join(String),
    Upper,
    Lower,
    /// `{{.Label "KEY"}}`: one entry of the row's `Labels`.
    Label(String),
}

/// A parsed `--format` template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    table: bool,
    parts: Vec<Part>,
}

/// Longest template accepted, bytes.
const MAX_TEMPLATE_BYTES: usize = 4096;

impl Template {
    /// Parses `s`; a syntax error says where.
    pub fn parse(s: &str) -> anyhow::Result<Template> {
        if s.len() > MAX_TEMPLATE_BYTES {
            bail!("--format: at most {MAX_TEMPLATE_BYTES} bytes");
        }
        let (table, body) = match s.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
                (true, rest.trim_start())
            }
            _ => (false, s),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                bail!("--format {s:?}: a {{{{ without its }}}}");
            };
            parts.push(action(after[..close].trim()).with_context(|| format!("--format {s:?}"))?);
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            bail!("--format {s:?}: a }}}} without its {{{{");
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { table, parts })
    }

    /// The rows as the template says, header first for `table`.
    pub fn render(&self, rows: &[Value]) -> anyhow::Result<String> {
        let mut lines = Vec::new();
        if self.table {
            lines.push(self.header());
        }
        for r in rows {
            let mut line = String::new();
            for p in &self.parts {
                match p {
                    Part::Text(t) => line.push_str(t),
                    Part::Action { func, path } => {
                        let v = lookup(r, path)?;
                        line.push_str(&apply(func, v)?);
                    }
                }
            }
            lines.push(line);
        }
        let mut out = if self.table {
            align(&lines)
        } else {
            lines.join("\n")
        };
        if !lines.is_empty() {
            out.push('\n');
        }
        Ok(out)
    }

    /// `ID\tMANAGER STATUS…`: each field named as a header.
    fn header(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Action { path, .. } => path.last().map_or("", |s| s.as_str()).to_string(),
            })
            .map(|t| if t.contains('\t') { t } else { words(&t) })
            .collect()
    }
}

/// `ManagerStatus` → `MANAGER STATUS`, `ID` → `ID`.
fn words(field: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = field.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        let prev_lower = i > 0 && chars[i - 1].is_lowercase();
        if i > 0 && c.is_uppercase() && (prev_lower || next_lower) && !out.ends_with(' ') {
            out.push(' ');
        }
        out.extend(c.to_uppercase());
    }
    out
}

fn action(a: &str) -> anyhow::Result<Part> {
    let words = split_args(a)?;
    if let [method, key] = words.as_slice()
        && method.starts_with('.')
    {
        if method != ".Label" {
            bail!("{{{{{a}}}}}: only .Label takes an argument ({{{{.Label \"KEY\"}}}})");
        }
        let path = vec!["Labels".to_string()];
        return Ok(Part::Action {
            func: Func::Label(key.clone()),
            path,
        });
    }
    let (func, arg) = match words.as_slice() {
        [one] => (Func::Print, one.as_str()),
        [f, x] => (func_named(f, None)?, x.as_str()),
        [f, x, sep] => (func_named(f, Some(sep))?, x.as_str()),
        _ => bail!("cannot read {{{{{a}}}}}"),
    };
    let Some(path) = arg.strip_prefix('.') else {
        bail!("{{{{{a}}}}}: expected a field such as .ID");
    };
    let path: Vec<String> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').map(str::to_string).collect()
    };
    if path
        .iter()
        .any(|p| p.is_empty() || !p.chars().all(|c| c.is_alphanumeric() || c == '_'))
    {
        bail!("{{{{{a}}}}}: {arg:?} is not a field");
    }
    Ok(Part::Action { func, path })
}

fn func_named(f: &str, sep: Option<&String>) -> anyhow::Result<Func> {
    if sep.is_some() && f != "join" && ["json", "upper", "lower"].contains(&f) {
        bail!("only join takes a second argument");
    }
    Ok(match (f, sep) {
        ("json", None) => Func::Json,
        ("upper", None) => Func::Upper,
        ("lower", None) => Func::Lower,
        ("join", Some(sep)) => Func::Join(sep.clone()),
        ("join", None) => bail!("join needs a separator: {{{{join .Field \", \"}}}}"),
        _ => bail!("unknown function {f:?}: json, join, upper and lower are known"),
    })
}

/// Words of an action; "quoted strings" are one word, unquoted.
fn split_args(a: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = a.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut w = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('t') => w.push('\t'),
                        Some('n') => w.push('\n'),
                        Some(x) => w.push(x),
                        None => bail!("an unfinished string in {{{{{a}}}}}"),
                    },
                    Some(x) => w.push(x),
                    None => bail!("an unfinished string in {{{{{a}}}}}"),
                }
            }
            out.push(w);
        } else {
            let mut w = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() {
                    break;
                }
                w.push(x);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

fn lookup<'a>(row: &'a Value, path: &[String]) -> anyhow::Result<&'a Value> {
    let mut v = row;
    for (i, p) in path.iter().enumerate() {
        v = match v.as_object() {
            Some(o) => match o.get(p) {
                Some(x) => x,
                // Inside a map (labels…) a missing key is empty, as in Go.
                None if i > 0 => return Ok(&Value::Null),
                None => {
                    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
                    keys.sort();
                    bail!(
                        "--format: no field .{}; fields here: {}",
                        path[..=i].join("."),
                        keys.join(", ")
                    );
                }
            },
            None => bail!("--format: .{} is not an object", path[..i].join(".")),
        };
    }
    Ok(v)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        // Labels and options as Docker lists them: k=v,k2=v2.
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn apply(f: &Func, v: &Value) -> anyhow::Result<String> {
    Ok(match f {
        Func::Print => text(v),
        Func::Json => v.to_string(),
        Func::Upper => text(v).to_uppercase(),
        Func::Lower => text(v).to_lowercase(),
        Func::Label(k) => v.get(k).map(text).unwrap_or_default(),
        Func::Join(sep) => match v {
            Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(sep),
            _ => bail!("--format: join takes a list"),
        },
    })
}

/// Tab-separated cells in columns (Docker's tabwriter: at least 10 wide,
/// 3 spaces apart).
fn align(lines: &[String]) -> String {
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter(|r| r.len() > c + 1)
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < r.len() {
                    let w = (widths[c] + 3).max(10);
                    line.push_str(&" ".repeat(w - cell.chars().count()));
                }
            }
            line.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `--filter KEY=VALUE` flags, checked against the keys a command knows.
#[derive(Debug, Default)]
pub struct Filters(Vec<(String, String)>);

impl Filters {
    /// Parses `flags`; `keys` are the ones the command takes.
    pub fn parse(flags: &[String], keys: &[&str]) -> anyhow::Result<Filters> {
        let mut out = Vec::new();
        for f in flags {
            let Some((k, v)) = f.split_once('=') else {
                bail!("invalid --filter {f:?}: use key=value");
            };
            if !keys.contains(&k) {
                bail!(
                    "unknown filter {k:?}: use {}",
                    keys.iter()
                        .map(|k| format!("{k}="))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(Filters(out))
    }

    /// Whether every key given matches (values of one key: any of them);
    /// `test(key, value)` says whether one value matches.
    pub fn matches(&self, test: impl Fn(&str, &str) -> bool) -> bool {
        let keys: std::collections::BTreeSet<&str> =
            self.0.iter().map(|(k, _)| k.as_str()).collect();
        keys.iter().all(|key| {
            self.0
                .iter()
                .filter(|(k, _)| k == key)
                .any(|(k, v)| test(k, v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows() -> Vec<Value> {
        vec![
            json!({"ID": "a1", "Hostname": "m1", "ManagerStatus": "Leader", "Labels": {"zone": "z1"}, "Nets": ["x", "y"]}),
            json!({"ID": "b2", "Hostname": "worker-1", "ManagerStatus": "", "Labels": {}, "Nets": []}),
        ]
    }

    fn render(t: &str) -> anyhow::Result<String> {
        Template::parse(t)?.render(&rows())
    }

    #[test]
    fn fields_functions_and_tables() {
        assert_eq!(
            render("{{.ID}} {{.Hostname}}").unwrap(),
            "a1 m1\nb2 worker-1\n"
        );
        assert_eq!(
            render("{{.Labels.zone}}|").unwrap().lines().next(),
            Some("z1|")
        );
        assert_eq!(
            render("{{json .Labels}}").unwrap(),
            "{\"zone\":\"z1\"}\n{}\n"
        );
        assert_eq!(render("{{join .Nets \", \"}}").unwrap(), "x, y\n\n");
        assert_eq!(render("{{upper .Hostname}}").unwrap(), "M1\nWORKER-1\n");
        assert_eq!(
            render(r"{{.ID}}\t{{.Hostname}}").unwrap(),
            "a1\tm1\nb2\tworker-1\n"
        );
        assert_eq!(
            render(r"table {{.ID}}\t{{.ManagerStatus}}\t{{.Hostname}}").unwrap(),
            "ID        MANAGER STATUS   HOSTNAME\n\
             a1        Leader           m1\n\
             b2                         worker-1\n"
        );
        assert_eq!(render("{{.Labels}}").unwrap(), "zone=z1\n\n");
        assert_eq!(
            render("{{.Label \"zone\"}}/{{.Label \"zz\"}}").unwrap(),
            "z1/\n/\n"
        );
        assert_eq!(words("EngineVersion"), "ENGINE VERSION");
        assert_eq!(words("TLSStatus"), "TLS STATUS");
        assert_eq!(Template::parse("{{.ID}}").unwrap().render(&[]).unwrap(), "");
    }

    #[test]
    fn bad_templates_say_why() {
        for (t, says) in [
            (
                "{{.Nope}}",
                "no field .Nope; fields here: Hostname, ID, Labels",
            ),
            ("{{.Labels.zone.x}}", ".Labels.zone is not an object"),
            ("{{.ID", "without its }}"),
            ("{{ID}}", "expected a field"),
            ("{{printf .ID}}", "unknown function \"printf\""),
            ("{{join .Nets}}", "join needs a separator"),
            ("{{json .ID \",\"}}", "only join takes"),
            ("{{join .ID \",\"}}", "join takes a list"),
            ("{{.a..b}}", "is not a field"),
            ("{{.Name \"x\"}}", "only .Label takes an argument"),
            ("x}}", "without its {{"),
        ] {
            let e = format!("{:#}", render(t).unwrap_err());
            assert!(e.contains(says), "{t}: {e}");
        }
        assert!(Template::parse(&"x".repeat(5000)).is_err());
    }

    #[test]
    fn filters_know_their_keys() {
        let f = Filters::parse(
            &["role=manager".into(), "role=worker".into(), "name=m".into()],
            &["role", "name"],
        )
        .unwrap();
        assert!(f.matches(|k, v| (k == "role" && v == "worker") || (k == "name" && v == "m")));
        assert!(!f.matches(|k, _| k == "role"));
        let e = Filters::parse(&["nope=1".into()], &["role", "name"]).unwrap_err();
        assert!(e.to_string().contains("use role=, name="), "{e}");
        assert!(Filters::parse(&["role".into()], &["role"]).is_err());
    }
}
