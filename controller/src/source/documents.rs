//! Splitting a manifest file into documents and parsing each into a JSON value.
//!
//! The file is split on `---` lines here, before any parsing, so that one broken document
//! never hides the others. Each document is then parsed on its own with serde-saphyr
//! (YAML 1.2 core schema: `yes`/`on` stay strings; duplicate keys are an error) under a
//! budget sized for one Kubernetes object. JSON files are parsed with serde_json as one
//! document.

use serde_json::Value;

use super::problem::ProblemKind;

/// The largest document accepted (the API server's request size limit).
pub const MAX_DOCUMENT_BYTES: usize = 3 * 1024 * 1024;

/// One non-empty document of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Document<'a> {
    /// 1-based index among the file's non-empty documents.
    pub index: usize,
    /// 1-based line of the file the document starts on.
    pub first_line: usize,
    /// The document's text (starting with its `---` line, if any).
    pub text: &'a str,
}

/// Splits YAML text into its non-empty documents.
///
/// A separator is a line that is exactly `---` or starts with `--- ` (after removing the
/// line ending); it belongs to the document it starts. Documents holding nothing but blank
/// lines, comments, directives and `...` are skipped and not counted.
pub(crate) fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if offset > start && is_separator(line) {
            push_document(&mut documents, &text[start..offset], first_line);
            start = offset;
            first_line = i + 1;
        }
        offset += line.len();
    }
    push_document(&mut documents, &text[start..], first_line);
    documents
}

fn push_document<'a>(documents: &mut Vec<Document<'a>>, text: &'a str, first_line: usize) {
    if is_blank(text) {
        return;
    }
    documents.push(Document {
        index: documents.len() + 1,
        first_line,
        text,
    });
}

fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Whether a document holds no node: only blank lines, comments, directives and markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = match line.strip_prefix("---") {
            Some(rest) if rest.is_empty() || rest.starts_with([' ', '\t', '\r']) => rest,
            _ => line,
        };
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line.starts_with('%') || line == "..."
    })
}

/// Parses one YAML document. `Value::Null` means the document holds no node.
pub(crate) fn parse_yaml(document: &Document<'_>) -> Result<Value, ProblemKind> {
    check_size(document.text)?;
    if let Some(value) = parse_as_json(document.text) {
        return Ok(value);
    }
    serde_saphyr::from_str_with_options::<Value>(document.text, yaml_options()).map_err(|e| {
        let line_offset = u64::try_from(document.first_line.saturating_sub(1)).unwrap_or(0);
        let rendered = e.render_with_options(serde_saphyr::render_options! {
            formatter: &serde_saphyr::UserMessageFormatter,
            snippets: serde_saphyr::SnippetMode::Off,
            line_offset: line_offset,
        });
        ProblemKind::Syntax(rendered)
    })
}

/// Parses a JSON document.
/// A document written as JSON (`kubectl get -o json`, generated manifests), parsed by
/// the much faster JSON parser: JSON is YAML, and the value is the same. `None` when the
/// document is not plain JSON (or has a duplicate key, which the YAML parser reports), so
/// that the YAML parser decides and reports errors.
fn parse_as_json(text: &str) -> Option<Value> {
    let body = match text.split_once('\n') {
        Some((first, rest)) if first.trim_end() == "---" => rest,
        _ => text,
    };
    if !body.trim_start().starts_with('{') {
        return None;
    }
    let value: Value = serde_json::from_str(body).ok()?;
    // serde_json keeps the last of duplicate keys; leave such documents to the YAML
    // parser, which refuses them. Counting keys is cheap next to parsing.
    (count_keys(&value) == count_key_tokens(body)).then_some(value)
}

/// Keys in a parsed value.
fn count_keys(value: &Value) -> usize {
    match value {
        Value::Object(map) => map.len() + map.values().map(count_keys).sum::<usize>(),
        Value::Array(items) => items.iter().map(count_keys).sum(),
        _ => 0,
    }
}

/// Keys in JSON text: strings followed by a colon.
fn count_key_tokens(text: &str) -> usize {
    let mut keys = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => escaped = false,
            }
        }
        let rest = chars.as_str().trim_start();
        if rest.starts_with(':') {
            keys += 1;
        }
    }
    keys
}

pub(crate) fn parse_json(text: &str) -> Result<Value, ProblemKind> {
    check_size(text)?;
    serde_json::from_str(text).map_err(|e| ProblemKind::Syntax(e.to_string()))
}

fn check_size(text: &str) -> Result<(), ProblemKind> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(ProblemKind::DocumentTooLarge {
            size: text.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    Ok(())
}

/// serde-saphyr options for one Kubernetes object: YAML 1.2 booleans, duplicate keys
/// rejected, at most one document, and no more scalar text than a document may hold.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_DOCUMENT_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.strict_booleans = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.with_snippet = false;
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<(usize, usize, &str)> {
        split_documents(text)
            .into_iter()
            .map(|d| (d.index, d.first_line, d.text))
            .collect()
    }

    #[test]
    fn splits_on_separator_lines_only() {
        let text = "a: 1\n---\nb: 2\n--- # third\nc: '---'\n  ---x\n---\n";
        assert_eq!(
            texts(text),
            [
                (1, 1, "a: 1\n"),
                (2, 2, "---\nb: 2\n"),
                (3, 4, "--- # third\nc: '---'\n  ---x\n"),
            ]
        );
    }

    #[test]
    fn skips_empty_documents_and_does_not_count_them() {
        let text = "---\n# only a comment\n---\n\n---\r\nkind: A\r\n...\n---\n---\nkind: B\n";
        assert_eq!(
            texts(text),
            [(1, 5, "---\r\nkind: A\r\n...\n"), (2, 9, "---\nkind: B\n")]
        );
        assert!(texts("").is_empty());
        assert!(texts("\n\n# nothing\n").is_empty());
    }

    #[test]
    fn leading_separator_with_content_is_kept() {
        assert_eq!(texts("--- !!map\na: 1\n"), [(1, 1, "--- !!map\na: 1\n")]);
    }

    #[test]
    fn json_documents_parse_as_their_yaml_reading_and_duplicates_are_refused() {
        let text =
            "---\n{\"kind\": \"A\", \"x\": {\"y\": \"a\\\"b:\", \"z\": [1, {\"w\": null}]}}\n";
        let docs = split_documents(text);
        let fast = parse_as_json(docs[0].text).expect("plain JSON");
        assert_eq!(
            fast,
            serde_json::json!({"kind": "A", "x": {"y": "a\"b:", "z": [1, {"w": null}]}})
        );
        let yaml = serde_saphyr::from_str_with_options::<Value>(docs[0].text, yaml_options());
        assert_eq!(yaml.ok(), Some(fast));
        let duplicate = "{\"kind\": \"A\", \"kind\": \"B\"}\n";
        assert_eq!(parse_as_json(duplicate), None);
        let docs = split_documents(duplicate);
        assert!(matches!(parse_yaml(&docs[0]), Err(ProblemKind::Syntax(_))));
        assert_eq!(parse_as_json("kind: A\n"), None);
    }

    #[test]
    fn parses_yaml_12_scalars() {
        let docs = split_documents("---\nname: web\non: yes\nport: 80\nnothing: null\n");
        let value = parse_yaml(&docs[0]).expect("valid YAML");
        assert_eq!(
            value,
            serde_json::json!({"name": "web", "on": "yes", "port": 80, "nothing": null})
        );
    }

    #[test]
    fn syntax_errors_report_the_line_in_the_file() {
        let text = "a: 1\n---\nb: 2\nc: [1, 2\n";
        let docs = split_documents(text);
        let Err(ProblemKind::Syntax(message)) = parse_yaml(&docs[1]) else {
            panic!("expected a syntax error");
        };
        assert!(
            message.contains("line 4") || message.contains(":4:"),
            "{message}"
        );
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let docs = split_documents("a: 1\na: 2\n");
        assert!(matches!(parse_yaml(&docs[0]), Err(ProblemKind::Syntax(_))));
    }

    #[test]
    fn a_second_document_after_an_end_marker_is_an_error() {
        let docs = split_documents("a: 1\n...\nb: 2\n");
        assert!(matches!(parse_yaml(&docs[0]), Err(ProblemKind::Syntax(_))));
    }

    #[test]
    fn oversize_documents_are_rejected_before_parsing() {
        let big = format!("a: \"{}\"\n", "x".repeat(MAX_DOCUMENT_BYTES));
        let docs = split_documents(&big);
        assert_eq!(
            parse_yaml(&docs[0]),
            Err(ProblemKind::DocumentTooLarge {
                size: big.len(),
                limit: MAX_DOCUMENT_BYTES
            })
        );
        assert!(matches!(
            parse_json(&big),
            Err(ProblemKind::DocumentTooLarge { .. })
        ));
    }

    #[test]
    fn parses_json() {
        assert_eq!(
            parse_json("{\"kind\": \"Service\"}"),
            Ok(serde_json::json!({"kind": "Service"}))
        );
        assert!(matches!(parse_json("{"), Err(ProblemKind::Syntax(_))));
    }
}
