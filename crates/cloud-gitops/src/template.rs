//! Enough of Go's `text/template` (with `missingkey=error`) to evaluate the ApplicationSet
//! templates in `argocd/` the way the controller does: field access, `if`/`else if`/`else`/`end`,
//! pipelines, and the functions `not and or eq ne has hasKey quote default lower upper toJson`.
//! Anything else is an error that names the construct, never a silent guess.

use serde_json::Value;

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Expr(Pipeline),
    If {
        branches: Vec<(Pipeline, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
}

#[derive(Debug, Clone)]
struct Pipeline(Vec<Vec<Operand>>);

#[derive(Debug, Clone)]
enum Operand {
    Field(Vec<String>),
    Literal(Value),
    Func(String),
    Group(Pipeline),
}

/// Renders `src` with `data` as `.`.
pub fn render(src: &str, data: &Value) -> Result<String, String> {
    let segments = lex(src)?;
    let mut pos = 0;
    let nodes = parse_nodes(&segments, &mut pos, false)?;
    if pos != segments.len() {
        return Err("unexpected {{ end }} or {{ else }}".into());
    }
    let mut out = String::new();
    exec(&nodes, data, &mut out)?;
    Ok(out)
}

#[derive(Debug)]
enum Segment {
    Text(String),
    Action(String),
}

fn lex(src: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut rest = src;
    let mut trim_next_left = false;
    while let Some(open) = rest.find("{{") {
        let mut text = rest[..open].to_string();
        if trim_next_left {
            text = text.trim_start().to_string();
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            format!(
                "unclosed action near `{}`",
                &rest[open..rest.len().min(open + 30)]
            )
        })?;
        let mut inner = &after[..close];
        if let Some(stripped) = inner.strip_prefix('-') {
            text = text.trim_end().to_string();
            inner = stripped;
        }
        trim_next_left = false;
        if let Some(stripped) = inner.strip_suffix('-') {
            trim_next_left = true;
            inner = stripped;
        }
        segments.push(Segment::Text(text));
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            segments.push(Segment::Action(inner.to_string()));
        }
        rest = &after[close + 2..];
    }
    let text = if trim_next_left {
        rest.trim_start()
    } else {
        rest
    };
    segments.push(Segment::Text(text.to_string()));
    Ok(segments)
}

fn parse_nodes(segments: &[Segment], pos: &mut usize, in_if: bool) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    while let Some(seg) = segments.get(*pos) {
        match seg {
            Segment::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                *pos += 1;
            }
            Segment::Action(a) => {
                let word = a.split_whitespace().next().unwrap_or_default();
                match word {
                    "end" | "else" => {
                        if !in_if {
                            return Err(format!("`{{{{ {a} }}}}` without an `if`"));
                        }
                        return Ok(nodes);
                    }
                    "if" => {
                        *pos += 1;
                        let mut branches = vec![(
                            parse_pipeline(a.trim_start_matches("if"))?,
                            parse_nodes(segments, pos, true)?,
                        )];
                        let mut otherwise = Vec::new();
                        loop {
                            let Some(Segment::Action(a)) = segments.get(*pos) else {
                                return Err("`if` without `end`".into());
                            };
                            *pos += 1;
                            if a == "end" {
                                break;
                            }
                            let cond = a.trim_start_matches("else").trim();
                            if let Some(cond) = cond.strip_prefix("if ") {
                                branches.push((
                                    parse_pipeline(cond)?,
                                    parse_nodes(segments, pos, true)?,
                                ));
                            } else if cond.is_empty() {
                                otherwise = parse_nodes(segments, pos, true)?;
                            } else {
                                return Err(format!("unsupported `{a}`"));
                            }
                        }
                        nodes.push(Node::If {
                            branches,
                            otherwise,
                        });
                    }
                    "range" | "with" | "define" | "template" | "block" | "break" | "continue" => {
                        return Err(format!("unsupported action `{word}` in `{{{{ {a} }}}}`"));
                    }
                    _ => {
                        if a.contains(":=") || a.starts_with('$') {
                            return Err(format!("variables are not supported: `{{{{ {a} }}}}`"));
                        }
                        nodes.push(Node::Expr(parse_pipeline(a)?));
                        *pos += 1;
                    }
                }
            }
        }
    }
    if in_if {
        return Err("`if` without `end`".into());
    }
    Ok(nodes)
}

fn tokens(src: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' || c == ')' || c == '|' {
            out.push(c.to_string());
            i += 1;
        } else if c == '"' {
            let mut s = String::from('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    s.push(chars[i]);
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            if i >= chars.len() {
                return Err(format!("unterminated string in `{src}`"));
            }
            s.push('"');
            i += 1;
            out.push(s);
        } else {
            let mut s = String::new();
            while i < chars.len() && !chars[i].is_whitespace() && !"()|\"".contains(chars[i]) {
                s.push(chars[i]);
                i += 1;
            }
            out.push(s);
        }
    }
    Ok(out)
}

fn parse_pipeline(src: &str) -> Result<Pipeline, String> {
    let toks = tokens(src)?;
    let mut pos = 0;
    let p = parse_tokens(&toks, &mut pos)?;
    if pos != toks.len() {
        return Err(format!("unbalanced `)` in `{src}`"));
    }
    Ok(p)
}

fn parse_tokens(toks: &[String], pos: &mut usize) -> Result<Pipeline, String> {
    let mut commands = vec![Vec::new()];
    while let Some(t) = toks.get(*pos) {
        *pos += 1;
        let operand = match t.as_str() {
            ")" => {
                *pos -= 1;
                break;
            }
            "|" => {
                commands.push(Vec::new());
                continue;
            }
            "(" => {
                let inner = parse_tokens(toks, pos)?;
                if toks.get(*pos).map(String::as_str) != Some(")") {
                    return Err("missing `)`".into());
                }
                *pos += 1;
                Operand::Group(inner)
            }
            "." => Operand::Field(Vec::new()),
            t if t.starts_with('.') => {
                Operand::Field(t[1..].split('.').map(str::to_string).collect())
            }
            t if t.starts_with('"') => Operand::Literal(
                serde_json::from_str(t).map_err(|e| format!("bad string {t}: {e}"))?,
            ),
            "true" => Operand::Literal(Value::Bool(true)),
            "false" => Operand::Literal(Value::Bool(false)),
            t if t.parse::<f64>().is_ok() => Operand::Literal(
                serde_json::from_str(t).map_err(|e| format!("bad number {t}: {e}"))?,
            ),
            t if t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Operand::Func(t.to_string())
            }
            t => return Err(format!("unsupported token `{t}`")),
        };
        if let Some(last) = commands.last_mut() {
            last.push(operand);
        }
    }
    if commands.iter().any(Vec::is_empty) {
        return Err("empty command in pipeline".into());
    }
    Ok(Pipeline(commands))
}

fn exec(nodes: &[Node], data: &Value, out: &mut String) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Expr(p) => out.push_str(&print(&eval(p, data)?)?),
            Node::If {
                branches,
                otherwise,
            } => {
                let mut taken = false;
                for (cond, body) in branches {
                    if truthy(&eval(cond, data)?) {
                        exec(body, data, out)?;
                        taken = true;
                        break;
                    }
                }
                if !taken {
                    exec(otherwise, data, out)?;
                }
            }
        }
    }
    Ok(())
}

fn print(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Err("a value is missing (Go would print `<no value>`)".into()),
        other => Err(format!("cannot print a map or list into text: {other}")),
    }
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn eval(p: &Pipeline, data: &Value) -> Result<Value, String> {
    let mut piped: Option<Value> = None;
    for command in &p.0 {
        piped = Some(eval_command(command, data, piped)?);
    }
    piped.ok_or_else(|| "empty pipeline".into())
}

fn operand(o: &Operand, data: &Value) -> Result<Value, String> {
    match o {
        Operand::Field(path) => {
            let mut cur = data;
            for (i, key) in path.iter().enumerate() {
                cur = cur.get(key).ok_or_else(|| {
                    format!(
                        "map has no entry for key `.{}` (missingkey=error)",
                        path[..=i].join(".")
                    )
                })?;
            }
            Ok(cur.clone())
        }
        Operand::Literal(v) => Ok(v.clone()),
        Operand::Group(p) => eval(p, data),
        Operand::Func(f) => call(f, Vec::new()),
    }
}

fn eval_command(command: &[Operand], data: &Value, piped: Option<Value>) -> Result<Value, String> {
    match command.split_first() {
        Some((Operand::Func(f), rest)) => {
            let mut args = rest
                .iter()
                .map(|o| operand(o, data))
                .collect::<Result<Vec<_>, _>>()?;
            args.extend(piped);
            call(f, args)
        }
        Some((single, [])) if piped.is_none() => operand(single, data),
        _ => Err("a command with arguments must start with a function name".into()),
    }
}

fn call(name: &str, args: Vec<Value>) -> Result<Value, String> {
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "`{name}` takes {n} argument(s), got {}",
                args.len()
            ))
        }
    };
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match name {
        "not" => {
            arity(1)?;
            Ok(Value::Bool(!truthy(&args[0])))
        }
        "and" => Ok(args
            .iter()
            .find(|v| !truthy(v))
            .or(args.last())
            .cloned()
            .unwrap_or(Value::Bool(true))),
        "or" => Ok(args
            .iter()
            .find(|v| truthy(v))
            .or(args.last())
            .cloned()
            .unwrap_or(Value::Bool(false))),
        "eq" => Ok(Value::Bool(
            args.len() >= 2 && args[1..].iter().any(|v| v == &args[0]),
        )),
        "ne" => {
            arity(2)?;
            Ok(Value::Bool(args[0] != args[1]))
        }
        // sprig: `has NEEDLE LIST`
        "has" => {
            arity(2)?;
            match &args[1] {
                Value::Array(items) => Ok(Value::Bool(items.contains(&args[0]))),
                Value::Null => Ok(Value::Bool(false)),
                other => Err(format!("`has` needs a list, got {other}")),
            }
        }
        // sprig: `hasKey MAP KEY`
        "hasKey" => {
            arity(2)?;
            Ok(Value::Bool(args[0].get(s(&args[1])).is_some()))
        }
        "quote" => {
            arity(1)?;
            Ok(Value::String(
                serde_json::to_string(&s(&args[0])).map_err(|e| e.to_string())?,
            ))
        }
        // sprig: `default DEFAULT VALUE`
        "default" => {
            arity(2)?;
            Ok(if truthy(&args[1]) {
                args[1].clone()
            } else {
                args[0].clone()
            })
        }
        "lower" => {
            arity(1)?;
            Ok(Value::String(s(&args[0]).to_lowercase()))
        }
        "upper" => {
            arity(1)?;
            Ok(Value::String(s(&args[0]).to_uppercase()))
        }
        "toJson" => {
            arity(1)?;
            Ok(Value::String(
                serde_json::to_string(&args[0]).map_err(|e| e.to_string())?,
            ))
        }
        other => Err(format!("unsupported function `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_conditions_and_trim() {
        let data = json!({"name": "prod", "sync": {"automated": false}, "paused": ["a"], "svc": {"path": {"basename": "a"}}});
        assert_eq!(
            render("values-{{ .name }}.yaml", &data).unwrap(),
            "values-prod.yaml"
        );
        let t = "x:\n{{- if .sync.automated }}\n  auto{{- else }}\n  manual{{- end }}\n";
        assert_eq!(render(t, &data).unwrap(), "x:\n  manual\n");
        assert_eq!(
            render(
                "{{ if has .svc.path.basename .paused }}paused{{ end }}",
                &data
            )
            .unwrap(),
            "paused"
        );
        assert_eq!(
            render("{{ if and .sync (not .sync.automated) }}y{{ end }}", &data).unwrap(),
            "y"
        );
        assert_eq!(render("{{ .name | quote }}", &data).unwrap(), "\"prod\"");
    }

    #[test]
    fn missing_keys_and_unknown_constructs_are_errors() {
        let data = json!({"name": "dev"});
        assert!(render("{{ .nope }}", &data).unwrap_err().contains(".nope"));
        assert!(
            render("{{ range .x }}{{ end }}", &data)
                .unwrap_err()
                .contains("range")
        );
        assert!(
            render("{{ sha256sum .name }}", &data)
                .unwrap_err()
                .contains("sha256sum")
        );
        assert!(
            render("{{ if .name }}x", &data)
                .unwrap_err()
                .contains("end")
        );
    }
}
