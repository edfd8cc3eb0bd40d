//! `--schema-validator <dir>`: JSON-Schema rules per table, as EDS has them (§6.6 of the
//! behaviour reference).
//!
//! `<dir>/config.json` maps a table to a schema file (relative to the dir) and, optionally, a
//! `path` template naming the event's object at the S3 and file destinations:
//!
//! ```json
//! { "labor": { "schema": "schemas/labor.json", "path": "{{.table}}/received/{{.table}}_{{.mvccTimestamp}}_{{.id}}.json" } }
//! ```
//!
//! Every other JSON file under the dir is registered as a schema resource under the URIs EDS
//! registers (`file://<rel>`, `file:///<rel>` and `file://<abs>`), so `$ref`s between them resolve
//! as they did; nothing is fetched from the network. `format` (e.g. `date-time`) is enforced.
//!
//! The drain applies it per destination: an event of a table without a rule is skipped (as EDS,
//! but counted and logged once per table), an event that fails is dead-lettered with the
//! validator's message (EDS logged and dropped it), and a valid event carries its rendered path.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The configuration file in the validator's directory.
pub const CONFIG_FILE: &str = "config.json";
/// At most this many of an event's problems are named in its dead letter.
const MAX_PROBLEMS: usize = 5;
/// Each at most this long.
const MAX_PROBLEM_CHARS: usize = 300;
/// The longest name a `path` may render: S3's key limit (bytes).
const MAX_NAME_BYTES: usize = 1024;
/// The longest segment of it: file systems' name limit (bytes).
const MAX_SEGMENT_BYTES: usize = 255;
/// The envelope fields EDS kept when it built the validated document (its `DBChangeEvent`).
const ENVELOPE: [&str; 12] = [
    "operation",
    "id",
    "table",
    "key",
    "modelVersion",
    "companyId",
    "locationId",
    "userId",
    "before",
    "after",
    "diff",
    "timestamp",
];

/// The document a rule validates, as EDS built it: the event's own fields only (unknown ones such
/// as `region` and `sessionId` dropped), null ones and an empty `diff` left out, `imported`
/// dropped, `before`/`after` as objects.
fn document(event: &[u8]) -> Result<Value, serde_json::Error> {
    let mut all: serde_json::Map<String, Value> = serde_json::from_slice(event)?;
    let mut doc = serde_json::Map::new();
    for key in ENVELOPE.iter().copied().chain(["mvccTimestamp"]) {
        match all.remove(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if key == "diff" && a.is_empty() => {}
            Some(v) => {
                doc.insert(key.to_owned(), v);
            }
        }
    }
    Ok(Value::Object(doc))
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// What the validator says of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule for the event's table: the event is skipped.
    NoRule,
    /// The event breaks its table's schema, or its path cannot be rendered: why.
    Invalid(String),
    /// Valid; the object name its rule's `path` template rendered, if the rule has one.
    Valid(Option<String>),
}

/// The loaded rules.
pub struct Validator {
    dir: PathBuf,
    rules: HashMap<String, Rule>,
    /// (destination, table) pairs already logged as having no rule.
    reported: Mutex<HashSet<(String, String)>>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").field("dir", &self.dir).field("tables", &self.rules.len()).finish()
    }
}

struct Rule {
    schema_file: String,
    schema: jsonschema::Validator,
    path: Option<Template>,
}

#[derive(serde::Deserialize)]
struct RuleConfig {
    schema: String,
    #[serde(default)]
    path: Option<String>,
}

impl Validator {
    /// Load `dir`: its `config.json`, every schema file, and every rule's template. Any problem is
    /// an error naming the file or the rule.
    pub fn load(dir: &Path) -> Result<Validator> {
        let dir = dir.canonicalize().with_context(|| format!("--schema-validator {}", dir.display()))?;
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
        let config: HashMap<String, RuleConfig> = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{}: expected {{\"<table>\": {{\"schema\": \"<file>\", \"path\": \"<template>\"}}}}",
                config_path.display()
            )
        })?;
        let mut files = Vec::new();
        collect_files(&dir, &mut files).with_context(|| format!("listing {}", dir.display()))?;
        let mut resources: Vec<(String, Value)> = Vec::new();
        let mut contents: HashMap<PathBuf, Value> = HashMap::new();
        for file in files {
            if file == config_path {
                continue;
            }
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let value: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "not JSON: not registered as a schema resource");
                    continue;
                }
            };
            let rel = file.strip_prefix(&dir).unwrap_or(&file).to_string_lossy().replace('\\', "/");
            let rel = uri_path(&rel);
            for uri in [format!("file://{rel}"), format!("file:///{rel}"), file_uri(&file)] {
                if !resources.iter().any(|(u, _)| *u == uri) {
                    resources.push((uri, value.clone()));
                }
            }
            contents.insert(file, value);
        }
        let mut builder = jsonschema::Registry::new();
        for (uri, value) in resources {
            builder = builder
                .add(uri.as_str(), value)
                .map_err(|e| anyhow::anyhow!("{}: registering {uri}: {e}", dir.display()))?;
        }
        let registry =
            builder.prepare().map_err(|e| anyhow::anyhow!("{}: resolving the schemas: {e}", dir.display()))?;
        let mut rules = HashMap::new();
        for (table, rule) in config {
            let file = dir.join(&rule.schema);
            let what = format!("{}: the rule of table {table:?}", config_path.display());
            let schema = contents.get(&file).with_context(|| {
                format!("{what}: schema file {:?} is not a JSON file under {}", rule.schema, dir.display())
            })?;
            let compiled = jsonschema::options()
                .should_validate_formats(true)
                .with_registry(&registry)
                .with_base_uri(file_uri(&file))
                .build(schema)
                .map_err(|e| anyhow::anyhow!("{what}: schema {}: {e}", rule.schema))?;
            let path = match rule.path.as_deref() {
                None | Some("") => None,
                Some(t) => Some(Template::parse(t).map_err(|e| anyhow::anyhow!("{what}: path {t:?}: {e}"))?),
            };
            rules.insert(table, Rule { schema_file: rule.schema, schema: compiled, path });
        }
        Ok(Validator { dir, rules, reported: Mutex::new(HashSet::new()) })
    }

    /// The directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Validate an event (its bytes as received).
    pub fn check(&self, event: &[u8]) -> Verdict {
        let doc = match document(event) {
            Ok(v) => v,
            Err(e) => return Verdict::Invalid(format!("schema validator: the event is not a JSON object: {e}")),
        };
        let table = doc.get("table").and_then(Value::as_str).unwrap_or_default();
        let Some(rule) = self.rules.get(table) else { return Verdict::NoRule };
        let problems: Vec<String> = rule
            .schema
            .iter_errors(&doc)
            .take(MAX_PROBLEMS + 1)
            .map(|e| {
                let at = e.instance_path().to_string();
                // The validator's message quotes the failing value (at the root: the whole
                // event): keep each one short.
                format!("{}: {}", if at.is_empty() { "/" } else { &at }, shorten(&e.to_string(), MAX_PROBLEM_CHARS))
            })
            .collect();
        if !problems.is_empty() {
            let more = if problems.len() > MAX_PROBLEMS { "; …" } else { "" };
            let shown = problems[..problems.len().min(MAX_PROBLEMS)].join("; ");
            return Verdict::Invalid(format!(
                "schema validation failed for table {table:?} ({}): {shown}{more}",
                rule.schema_file
            ));
        }
        match &rule.path {
            None => Verdict::Valid(None),
            Some(t) => match t.render(&doc) {
                Ok(path) => Verdict::Valid(Some(path)),
                Err(e) => Verdict::Invalid(format!("schema validator: the path of table {table:?}: {e}")),
            },
        }
    }

    /// Whether this is the first time `destination` skipped an event of `table` for want of a
    /// rule (the caller logs it then).
    pub fn first_skip(&self, destination: &str, table: &str) -> bool {
        let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert((destination.to_owned(), table.to_owned()))
    }
}

fn file_uri(path: &Path) -> String {
    format!("file://{}", uri_path(&path.to_string_lossy().replace('\\', "/")))
}

/// A path as URI text: what a URI cannot hold as it is (space, `#`, `%`, `?`, non-ASCII, …)
/// percent-encoded, so a directory named `my rules` still registers.
fn uri_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if e.file_type()?.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// A `path` template: the part of Go's template language EDS users write — literal text, field
/// access (`{{.table}}`, `{{ .after.id }}`), string literals (`{{"x"}}`), comments, and the
/// `{{-`/`-}}` trim markers. Values are escaped as Go's `html/template` escaped them (EDS used
/// it), so object names stay the same as EDS's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// The template's own text: as it is.
    Text(String),
    /// A string literal action: escaped, as Go escapes every action's output.
    Literal(String),
    Field(Vec<String>),
}

impl Template {
    /// Parse `text`; an action eds does not support is an error naming it.
    pub fn parse(text: &str) -> Result<Template> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut trim_next = false;
        while let Some(open) = rest.find("{{") {
            let mut literal = &rest[..open];
            if trim_next {
                literal = literal.trim_start();
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                bail!("{{{{ at byte {} is never closed", text.len() - rest.len() + open)
            };
            let mut action = &after[..close];
            if let Some(a) = action.strip_prefix('-').filter(|a| a.starts_with([' ', '\t', '\n'])) {
                literal = literal.trim_end();
                action = a;
            }
            trim_next = false;
            if let Some(a) = action.strip_suffix('-').filter(|a| a.ends_with([' ', '\t', '\n'])) {
                trim_next = true;
                action = a;
            }
            if !literal.is_empty() {
                parts.push(Part::Text(literal.to_owned()));
            }
            let action = action.trim();
            if action.starts_with("/*") && action.ends_with("*/") {
                // A comment.
            } else if let Some(path) = action.strip_prefix('.') {
                let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
                let ident = |s: &String| {
                    !s.is_empty()
                        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
                        && !s.starts_with(|c: char| c.is_ascii_digit())
                };
                if !segments.iter().all(ident) {
                    bail!("{{{{{action}}}}} is not supported: eds renders field access ({{{{.table}}}}, {{{{.after.id}}}}) and string literals")
                }
                parts.push(Part::Field(segments));
            } else if let Some(s) = string_literal(action) {
                parts.push(Part::Literal(s));
            } else {
                bail!("{{{{{action}}}}} is not supported: eds renders field access ({{{{.table}}}}, {{{{.after.id}}}}) and string literals")
            }
            rest = &after[close + 2..];
        }
        let literal = if trim_next { rest.trim_start() } else { rest };
        if literal.contains("}}") {
            bail!("}}}} without {{{{");
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Render over `doc`: a relative object name. A missing field, an object or array value, or
    /// a result that could leave the destination's folder (`..`, an absolute path) is an error.
    pub fn render(&self, doc: &Value) -> Result<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Literal(t) => html_escape(t, &mut out),
                Part::Field(path) => {
                    let mut v = doc;
                    for s in path {
                        v = match v.get(s) {
                            Some(next) => next,
                            None => bail!("the event has no field .{}", path.join(".")),
                        };
                    }
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => bail!("field .{} is null", path.join(".")),
                        Value::Array(_) | Value::Object(_) => {
                            bail!("field .{} is not a single value", path.join("."))
                        }
                    };
                    html_escape(&text, &mut out);
                }
            }
        }
        if out.is_empty() {
            bail!("the name is empty");
        }
        if out.starts_with('/')
            || out.contains('\\')
            || out.chars().any(char::is_control)
            || out.split('/').any(|s| s == ".." || s == "." || s.is_empty())
        {
            bail!(
                "{out:?} is not a relative name inside the destination (no leading /, no backslash or control \
                 character, no empty, . or .. segment)"
            );
        }
        if out.len() > MAX_NAME_BYTES || out.split('/').any(|s| s.len() > MAX_SEGMENT_BYTES) {
            bail!(
                "{:?}… is too long a name ({} bytes; at most {MAX_NAME_BYTES}, and {MAX_SEGMENT_BYTES} per segment)",
                shorten(&out, 60),
                out.len()
            );
        }
        Ok(out)
    }
}

/// A Go string literal (`"…"` with the common escapes, or a raw `` `…` ``).
fn string_literal(s: &str) -> Option<String> {
    if let Some(raw) = s.strip_prefix('`').and_then(|r| r.strip_suffix('`')) {
        return (!raw.contains('`')).then(|| raw.to_owned());
    }
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => out.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                '\\' => '\\',
                '"' => '"',
                _ => return None,
            }),
            c => out.push(c),
        }
    }
    Some(out)
}

/// Go `html/template`'s escaping of a value in text.
fn html_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\0' => out.push('\u{FFFD}'),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '+' => out.push_str("&#43;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests;
