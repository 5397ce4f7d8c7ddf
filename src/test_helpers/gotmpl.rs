//! A tiny renderer for the Go `text/template` + sprig subset Istio's benchmark configs
//! (`istio/pilot/pkg/networking/core/testdata/benchmarks/*.yaml`) use, so tests can load them as istiod's
//! benchmarks do:
//!
//! - `{{- range $i := until .Services }}` … `{{- end }}` (nested ranges too), with sprig's `until n` = `0..n`;
//! - `{{$i}}`, `{{div $i 255 }}`, `{{mod $i 255 }}`, `{{mod $j $.Services}}`;
//! - `{{-` / `-}}` trim the whitespace (newlines included) before / after the action, as in Go.
//!
//! Values are integers: `.Name` / `$.Name` read the data map, `$var` a range variable, digits a literal.
//! Anything else is an error naming the action, so a template using more than this subset fails loudly.

use std::collections::BTreeMap;

/// A template that could not be rendered: the offending action and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template action {{{{{action}}}}}: {reason}")]
pub struct Error {
    /// The action's text between the braces (trim markers removed).
    pub action: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Renders `template` with integer `data` (e.g. `Services` → 10, `Instances` → 10).
pub fn render(template: &str, data: &BTreeMap<&str, i64>) -> Result<String, Error> {
    let nodes = parse(template)?;
    let mut out = String::with_capacity(template.len());
    let mut vars = Vec::new();
    exec(&nodes, data, &mut vars, &mut out)?;
    Ok(out)
}

#[derive(Debug)]
enum Node {
    Text(String),
    Print(String),
    Range {
        var: String,
        count: String,
        body: Vec<Node>,
    },
}

/// Splits the template into text and actions (applying the trim markers), then nests `range` … `end`.
fn parse(template: &str) -> Result<Vec<Node>, Error> {
    // (kind, text): kind None for text, Some(()) for an action.
    let mut tokens: Vec<(bool, String)> = Vec::new();
    let mut rest = template;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| Error {
            action: after.chars().take(40).collect(),
            reason: "unclosed action".into(),
        })?;
        let mut action = &after[..end];
        // Go requires a space after `{{-` and before `-}}` for them to be trim markers.
        if let Some(a) = action.strip_prefix("- ") {
            text = text.trim_end();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix(" -") {
            trim_next = true;
            action = a;
        }
        tokens.push((false, text.to_owned()));
        tokens.push((true, action.trim().to_owned()));
        rest = &after[end + 2..];
    }
    let tail = if trim_next { rest.trim_start() } else { rest };
    tokens.push((false, tail.to_owned()));

    let mut stack: Vec<(String, String, Vec<Node>)> = Vec::new();
    let mut top: Vec<Node> = Vec::new();
    for (is_action, text) in tokens {
        let current = match stack.last_mut() {
            Some((_, _, body)) => body,
            None => &mut top,
        };
        if !is_action {
            if !text.is_empty() {
                current.push(Node::Text(text));
            }
            continue;
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["range", var, ":=", "until", count] if var.starts_with('$') => {
                stack.push((var.to_string(), count.to_string(), Vec::new()));
            }
            ["range", ..] => {
                return Err(Error {
                    action: text,
                    reason: "only `range $v := until N` is supported".into(),
                });
            }
            ["end"] => {
                let (var, count, body) = stack.pop().ok_or_else(|| Error {
                    action: text.clone(),
                    reason: "`end` without `range`".into(),
                })?;
                let node = Node::Range { var, count, body };
                match stack.last_mut() {
                    Some((_, _, body)) => body.push(node),
                    None => top.push(node),
                }
            }
            _ => current.push(Node::Print(text)),
        }
    }
    if let Some((var, count, _)) = stack.pop() {
        return Err(Error {
            action: format!("range {var} := until {count}"),
            reason: "missing `end`".into(),
        });
    }
    Ok(top)
}

fn exec(
    nodes: &[Node],
    data: &BTreeMap<&str, i64>,
    vars: &mut Vec<(String, i64)>,
    out: &mut String,
) -> Result<(), Error> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Print(action) => {
                let v = eval(action, data, vars)?;
                out.push_str(&v.to_string());
            }
            Node::Range { var, count, body } => {
                let n = value(count, data, vars).map_err(|reason| Error {
                    action: format!("range {var} := until {count}"),
                    reason,
                })?;
                for i in 0..n.max(0) {
                    vars.push((var.clone(), i));
                    let r = exec(body, data, vars, out);
                    vars.pop();
                    r?;
                }
            }
        }
    }
    Ok(())
}

/// `$v`, `div a b` or `mod a b`.
fn eval(action: &str, data: &BTreeMap<&str, i64>, vars: &[(String, i64)]) -> Result<i64, Error> {
    let err = |reason: String| Error {
        action: action.to_owned(),
        reason,
    };
    let words: Vec<&str> = action.split_whitespace().collect();
    match words.as_slice() {
        [v] => value(v, data, vars).map_err(err),
        [f @ ("div" | "mod"), a, b] => {
            let a = value(a, data, vars).map_err(err)?;
            let b = value(b, data, vars).map_err(err)?;
            if b == 0 {
                return Err(err(format!("{f} by zero")));
            }
            // Go's integer division and remainder truncate toward zero, as Rust's do.
            Ok(if *f == "div" { a / b } else { a % b })
        }
        _ => Err(err("unsupported action".into())),
    }
}

fn value(word: &str, data: &BTreeMap<&str, i64>, vars: &[(String, i64)]) -> Result<i64, String> {
    if let Some(field) = word.strip_prefix("$.").or_else(|| word.strip_prefix('.')) {
        return data
            .get(field)
            .copied()
            .ok_or_else(|| format!("no data field {field}"));
    }
    if word.starts_with('$') {
        return vars
            .iter()
            .rev()
            .find(|(n, _)| n == word)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("undefined variable {word}"));
    }
    word.parse()
        .map_err(|_| format!("not an integer, variable or field: {word}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BTreeMap<&'static str, i64> {
        BTreeMap::from([("Services", 3), ("Instances", 4)])
    }

    #[test]
    fn ranges_print_and_trim_like_go() {
        let t = "head\n---\n{{- range $i := until .Services }}\nname: s-{{$i}}\n---\n{{- end }}";
        assert_eq!(
            render(t, &data()).unwrap(),
            "head\n---\nname: s-0\n---\nname: s-1\n---\nname: s-2\n---"
        );
        // Trailing trim marker, and no trim without the space.
        assert_eq!(render("a  {{ 1 -}}  \n b", &data()).unwrap(), "a  1b");
    }

    #[test]
    fn div_mod_and_root_fields() {
        let t = "{{- range $j := until .Instances }} {{div $j 2 }}.{{mod $j 2 }}/{{mod $j $.Services}}{{- end }}";
        assert_eq!(render(t, &data()).unwrap(), " 0.0/0 0.1/1 1.0/2 1.1/0");
        let big = BTreeMap::from([("Services", 300)]);
        let ip = "{{- range $i := until .Services }}{{div $i 255 }}.{{mod $i 255 }} {{- end }}";
        assert!(render(ip, &big).unwrap().ends_with("1.44"));
    }

    #[test]
    fn nested_ranges_see_outer_variables() {
        let t = "{{- range $i := until 2 }}{{- range $j := until 2 }}[{{$i}}{{$j}}]{{- end }}{{- end }}";
        assert_eq!(render(t, &data()).unwrap(), "[00][01][10][11]");
    }

    #[test]
    fn anything_else_is_an_error() {
        let d = data();
        assert_eq!(
            render("{{ .Nope }}", &d).unwrap_err().reason,
            "no data field Nope"
        );
        assert!(render("{{ range $i := until 2 }}x", &d).is_err());
        assert!(render("{{ end }}", &d).is_err());
        assert!(render("{{ if .Services }}x{{ end }}", &d).is_err());
        assert!(render("{{ printf \"%d\" 1 }}", &d).is_err());
        assert!(render("{{ $x }}", &d).is_err());
        assert!(render("{{ mod 1 0 }}", &d).is_err());
        assert!(render("{{ 1 ", &d).is_err());
    }
}
