//! Editing `harperdb-config.yaml` in place for `set_configuration`: the line of the key changes and
//! nothing else — comments, order, blank lines and the other keys stay as the operator wrote them
//! (docs/configuration.md). Block mappings only (the file tidepool writes, and what people write
//! by hand); a key inside a flow mapping (`http: {port: 1}`) is an [`EditError`], and the caller
//! then rewrites the whole document instead.

use serde_yaml::Value as Yaml;

#[derive(Debug, PartialEq)]
pub struct EditError(pub String);

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `key: value` line of a block mapping.
struct KeyLine {
    index: usize,
    indent: usize,
    key: String,
    /// Byte offset in the line where the value starts (after `key:` and its spaces).
    value_at: usize,
    /// The value's text up to a trailing comment, trimmed (empty for a block parent).
    value: String,
    /// ` # comment` after the value, with the spaces before it.
    comment: String,
}

/// Sets `path` (`http.port`) to `value` in `text`, returning the new text.
pub fn set_in_text(text: &str, path: &str, value: &Yaml) -> Result<String, EditError> {
    let parts: Vec<&str> = path.split('.').collect();
    assert!(!parts.is_empty() && parts.iter().all(|p| !p.is_empty()));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let keys = key_lines(&lines)?;
    // Walk down the path: each part is a key line more indented than its parent, inside the
    // parent's block.
    let mut block = (0, lines.len()); // lines [start, end) of the current mapping
    let mut parent_indent: Option<usize> = None;
    let mut found: Option<&KeyLine> = None;
    for (depth, part) in parts.iter().enumerate() {
        let child_indent = keys
            .iter()
            .filter(|k| k.index >= block.0 && k.index < block.1)
            .map(|k| k.indent)
            .filter(|i| parent_indent.is_none_or(|p| *i > p))
            .min();
        let hit = keys.iter().find(|k| {
            k.index >= block.0
                && k.index < block.1
                && Some(k.indent) == child_indent
                && k.key == *part
        });
        match hit {
            Some(k) if depth + 1 == parts.len() => found = Some(k),
            Some(k) => {
                if !k.value.is_empty() {
                    return Err(EditError(format!(
                        "{}: a value written inline; cannot edit inside it",
                        parts[..=depth].join(".")
                    )));
                }
                block = (k.index + 1, block_end(&keys, k, block.1));
                parent_indent = Some(k.indent);
            }
            None => {
                // Insert the missing keys at the end of the current block.
                let indent = child_indent.unwrap_or_else(|| parent_indent.map_or(0, |p| p + 2));
                let insert_at =
                    last_content_line(&lines, block.0, block.1).map_or(block.0, |l| l + 1);
                let mut new_lines = Vec::new();
                for (d, name) in parts[depth..].iter().enumerate() {
                    let pad = " ".repeat(indent + 2 * d);
                    if depth + d + 1 == parts.len() {
                        new_lines.push(format!("{pad}{}: {}", key_text(name), render(value)?));
                    } else {
                        new_lines.push(format!("{pad}{}:", key_text(name)));
                    }
                }
                lines.splice(insert_at..insert_at, new_lines);
                return Ok(join(&lines, text));
            }
        }
    }
    let Some(k) = found else {
        return Err(EditError(format!("{path}: not found")));
    };
    let end = block_end(&keys, k, block.1);
    let head = &lines[k.index][..k.value_at];
    let head = head.trim_end();
    let new_line = format!("{head} {}{}", render(value)?, k.comment);
    // A block value below the key (children, or a block list) is replaced by the inline value.
    let children_end = last_content_line(&lines, k.index + 1, end).map_or(k.index + 1, |l| l + 1);
    lines.splice(k.index..children_end, [new_line]);
    Ok(join(&lines, text))
}

fn join(lines: &[String], original: &str) -> String {
    let mut out = lines.join("\n");
    if original.ends_with('\n') || original.is_empty() {
        out.push('\n');
    }
    out
}

/// The end (exclusive) of `k`'s block: the next key line at its indent or less, within `limit`.
fn block_end(keys: &[KeyLine], k: &KeyLine, limit: usize) -> usize {
    keys.iter()
        .find(|o| o.index > k.index && o.index < limit && o.indent <= k.indent)
        .map_or(limit, |o| o.index)
}

/// The last line in [start, end) that is neither blank nor only a comment.
fn last_content_line(lines: &[String], start: usize, end: usize) -> Option<usize> {
    (start..end.min(lines.len())).rev().find(|i| {
        let t = lines[*i].trim();
        !t.is_empty() && !t.starts_with('#')
    })
}

/// Every `key:` line of the document's block mappings.
fn key_lines(lines: &[String]) -> Result<Vec<KeyLine>, EditError> {
    let mut out = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        if trimmed.starts_with("---") || trimmed.starts_with("...") {
            continue;
        }
        if line.starts_with('\t') {
            return Err(EditError(format!("line {}: tab indentation", index + 1)));
        }
        let indent = line.len() - trimmed.len();
        let Some((key, after)) = split_key(trimmed) else {
            continue; // a continuation line of a multi-line scalar
        };
        let (value, comment) = split_comment(after);
        let value_at = indent + trimmed.len() - after.len();
        out.push(KeyLine {
            index,
            indent,
            key,
            value_at,
            value: value.trim().to_string(),
            comment: comment.to_string(),
        });
    }
    Ok(out)
}

/// `key: rest` → (key without quotes, rest after the colon).
fn split_key(line: &str) -> Option<(String, &str)> {
    let (key, rest) = if let Some(q) = line.strip_prefix('"').or_else(|| line.strip_prefix('\'')) {
        let quote = line.as_bytes()[0] as char;
        let close = q.find(quote)?;
        let rest = q[close + 1..].strip_prefix(':')?;
        (q[..close].to_string(), rest)
    } else {
        let colon = line
            .find(": ")
            .or_else(|| line.strip_suffix(':').map(|s| s.len()))?;
        let key = &line[..colon];
        if key.contains(['{', '[', '#', '"', '\'']) {
            return None;
        }
        (key.trim_end().to_string(), &line[colon + 1..])
    };
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some((key, rest))
}

/// Splits a value from a trailing ` # comment` (a `#` after whitespace, outside quotes).
fn split_comment(after: &str) -> (&str, &str) {
    let bytes = after.as_bytes();
    let mut quote: Option<u8> = None;
    for (i, b) in bytes.iter().enumerate() {
        match (quote, *b) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(*b),
            (None, b'#') if i == 0 || bytes[i - 1].is_ascii_whitespace() => {
                let start = after[..i].trim_end().len();
                return (&after[..start], &after[start..]);
            }
            _ => {}
        }
    }
    (after, "")
}

fn key_text(key: &str) -> String {
    if key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// A value as one line: YAML for a scalar, JSON (valid YAML flow style) for a list or mapping.
fn render(value: &Yaml) -> Result<String, EditError> {
    let text = match value {
        Yaml::Sequence(_) | Yaml::Mapping(_) => {
            serde_json::to_string(value).map_err(|e| EditError(e.to_string()))?
        }
        _ => serde_yaml::to_string(value).map_err(|e| EditError(e.to_string()))?,
    };
    let text = text.trim_end();
    if text.contains('\n') {
        return Err(EditError("a value over several lines".into()));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Yaml {
        serde_yaml::from_str(s).unwrap()
    }

    fn get<'y>(root: &'y Yaml, path: &str) -> Option<&'y Yaml> {
        path.split('.')
            .try_fold(root, |node, part| node.as_mapping()?.get(part))
    }

    #[test]
    fn the_line_changes_and_nothing_else() {
        let text = "# top comment\nhttp:\n  port: 9926     # REST\n  cors: true\n\n# logging\nlogging:\n  level: warn  # levels\n";
        let out = set_in_text(text, "http.port", &yaml("9000")).unwrap();
        assert_eq!(
            out,
            "# top comment\nhttp:\n  port: 9000     # REST\n  cors: true\n\n# logging\nlogging:\n  level: warn  # levels\n"
        );
        let out = set_in_text(&out, "logging.level", &yaml("info")).unwrap();
        assert!(out.ends_with("  level: info  # levels\n"), "{out}");
    }

    #[test]
    fn missing_keys_and_sections_are_added_in_their_block() {
        let text = "http:\n  port: 9926\n# between\nlogging:\n  level: warn\n";
        let out = set_in_text(text, "http.cors", &yaml("false")).unwrap();
        assert_eq!(
            out,
            "http:\n  port: 9926\n  cors: false\n# between\nlogging:\n  level: warn\n"
        );
        let out = set_in_text(&out, "customFunctions.network.port", &yaml("9926")).unwrap();
        let doc = yaml(&out);
        assert_eq!(
            get(&doc, "customFunctions.network.port"),
            Some(&yaml("9926"))
        );
        assert!(out.contains("# between"));
    }

    #[test]
    fn lists_maps_and_quoted_strings() {
        let text = "http:\n  corsAccessList:\n    - a\n    - b\n  port: 1\n";
        let out = set_in_text(text, "http.corsAccessList", &yaml("[x, y]")).unwrap();
        assert_eq!(out, "http:\n  corsAccessList: [\"x\",\"y\"]\n  port: 1\n");
        let out = set_in_text(&out, "http.port", &yaml("'127.0.0.1:9'")).unwrap();
        assert_eq!(get(&yaml(&out), "http.port"), Some(&yaml("'127.0.0.1:9'")));
        let text = "a: \"x # not a comment\"  # comment\n";
        let out = set_in_text(text, "a", &yaml("y")).unwrap();
        assert_eq!(out, "a: y  # comment\n");
    }

    #[test]
    fn flow_mappings_are_refused() {
        let text = "http: {port: 1}\n";
        assert!(set_in_text(text, "http.port", &yaml("2")).is_err());
    }

    #[test]
    fn the_default_file_keeps_every_comment() {
        let text = super::super::DEFAULT_CONFIG_YAML;
        let comments = |t: &str| t.matches('#').count();
        let mut out = text.to_string();
        for (path, value) in [
            ("http.port", "9000"),
            ("logging.level", "debug"),
            ("authentication.cacheTTL", "60s"),
            ("localStudio.enabled", "true"),
            ("mqtt.network.port", "null"),
        ] {
            out = set_in_text(&out, path, &yaml(value)).unwrap();
            assert_eq!(get(&yaml(&out), path), Some(&yaml(value)), "{path}");
        }
        assert_eq!(comments(&out), comments(text));
        assert_eq!(out.lines().count(), text.lines().count());
    }
}
