//! Line-based edits of block-style YAML that keep comments and layout, so the commits
//! `promote` and `rollback` make change exactly one line where one line changes.

/// Sets the scalar at `path` (block mappings only) to `value` (already YAML text, e.g. `"1.2.3"`).
/// A missing final key is appended to its parent mapping; a missing parent is an error.
pub fn set_scalar(content: &str, path: &[&str], value: &str) -> Result<String, String> {
    let lines: Vec<&str> = content.lines().collect();
    let mut start = 0usize;
    let mut end = lines.len();
    let mut parent_indent: Option<usize> = None;
    for (depth, key) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        match find_key(&lines, start, end, parent_indent, key) {
            Some((idx, indent)) => {
                if last {
                    let line = lines.get(idx).copied().unwrap_or_default();
                    let rest = line
                        .get(indent + key.len() + 1..)
                        .unwrap_or_default()
                        .trim();
                    let block_child = block_end(&lines, idx, indent) > idx + 1;
                    if rest.is_empty() && block_child {
                        return Err(format!(
                            "`{}` is a mapping or list, not a scalar",
                            path.join(".")
                        ));
                    }
                    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                    if let Some(slot) = out.get_mut(idx) {
                        *slot = format!("{}{key}: {value}", " ".repeat(indent));
                    }
                    return Ok(join(out, content));
                }
                let block = block_end(&lines, idx, indent);
                let line = lines.get(idx).copied().unwrap_or_default();
                if !line
                    .get(indent + key.len() + 1..)
                    .unwrap_or_default()
                    .trim()
                    .is_empty()
                {
                    return Err(format!(
                        "`{}` is written in flow style; only block mappings can be edited",
                        path[..=depth].join(".")
                    ));
                }
                start = idx + 1;
                end = block;
                parent_indent = Some(indent);
            }
            None if last => {
                let Some(parent) = parent_indent else {
                    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                    out.push(format!("{key}: {value}"));
                    return Ok(join(out, content));
                };
                let child_indent = child_indent(&lines, start, end).unwrap_or(parent + 2);
                let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                // Insert after the last non-blank line of the parent's block.
                let mut at = end;
                while at > start && lines.get(at - 1).is_some_and(|l| l.trim().is_empty()) {
                    at -= 1;
                }
                out.insert(at, format!("{}{key}: {value}", " ".repeat(child_indent)));
                return Ok(join(out, content));
            }
            None => return Err(format!("key `{}` not found", path[..=depth].join("."))),
        }
    }
    Err("empty key path".into())
}

fn join(lines: Vec<String>, original: &str) -> String {
    let mut s = lines.join("\n");
    if original.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// The indent of the first content line in `[start, end)`.
fn child_indent(lines: &[&str], start: usize, end: usize) -> Option<usize> {
    lines
        .get(start..end)?
        .iter()
        .find(|l| is_content(l))
        .map(|l| indent_of(l))
}

/// Finds `key:` directly inside the block `[start, end)` whose parent has `parent_indent`.
fn find_key(
    lines: &[&str],
    start: usize,
    end: usize,
    parent_indent: Option<usize>,
    key: &str,
) -> Option<(usize, usize)> {
    let want = match parent_indent {
        None => 0,
        Some(_) => child_indent(lines, start, end)?,
    };
    for i in start..end {
        let line = lines.get(i)?;
        if !is_content(line) || indent_of(line) != want {
            continue;
        }
        let body = &line[want..];
        for candidate in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
            if let Some(rest) = body.strip_prefix(candidate.as_str())
                && (rest.starts_with(": ") || rest == ":" || rest.starts_with(":\t"))
            {
                return Some((i, want));
            }
        }
    }
    None
}

/// The index one past the last line that belongs to the block of the key at `idx`.
fn block_end(lines: &[&str], idx: usize, indent: usize) -> usize {
    let mut end = idx + 1;
    let mut i = idx + 1;
    while let Some(line) = lines.get(i) {
        if is_content(line) {
            if indent_of(line) <= indent && !line.trim_start().starts_with("- ") {
                break;
            }
            if indent_of(line) < indent {
                break;
            }
            end = i + 1;
        }
        i += 1;
    }
    end
}

/// A YAML double-quoted scalar for `s`.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# head\nimage:\n  repository: ghcr.io/x/y # the image\n  tag: \"1.0.0\"\n  digest: \"\"\nreplicaCount: 2\nnested:\n  a:\n    b: 1\n\nlast: true\n";

    #[test]
    fn replaces_one_line_and_keeps_comments() {
        let out = set_scalar(DOC, &["image", "tag"], "\"1.1.0\"").unwrap();
        assert_eq!(out, DOC.replace("tag: \"1.0.0\"", "tag: \"1.1.0\""));
        let out = set_scalar(DOC, &["nested", "a", "b"], "2").unwrap();
        assert!(out.contains("    b: 2\n"), "{out}");
        assert!(out.starts_with("# head\n"));
    }

    #[test]
    fn appends_missing_final_key_in_its_block() {
        let doc = "image:\n  repository: r\n  tag: \"1\"\nother: 1\n";
        let out = set_scalar(doc, &["image", "digest"], "\"sha256:ab\"").unwrap();
        assert_eq!(
            out,
            "image:\n  repository: r\n  tag: \"1\"\n  digest: \"sha256:ab\"\nother: 1\n"
        );
    }

    #[test]
    fn refuses_what_it_cannot_edit() {
        assert!(
            set_scalar(DOC, &["nope", "tag"], "1")
                .unwrap_err()
                .contains("nope")
        );
        assert!(
            set_scalar(DOC, &["nested", "a"], "1")
                .unwrap_err()
                .contains("not a scalar")
        );
        assert!(
            set_scalar("image: {tag: x}\n", &["image", "tag"], "1")
                .unwrap_err()
                .contains("flow style")
        );
    }

    #[test]
    fn edits_lists_written_in_flow_style_on_one_line() {
        let doc = "imageUpdates:\n  enabled: true\n  paused: []\nparity:\n  mayDiffer: [image]\n";
        let out = set_scalar(doc, &["imageUpdates", "paused"], "[svc-a]").unwrap();
        assert_eq!(out, doc.replace("paused: []", "paused: [svc-a]"));
    }
}
