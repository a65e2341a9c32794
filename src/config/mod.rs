//! Configuration: the YAML file format ([`file`]), its validation, and the compiled runtime
//! view ([`RuntimeConfig`]) that the proxy reads on every request.

pub mod compile;
pub mod file;
pub mod locate;
mod routes;
pub mod units;
mod upstreams;

pub use compile::{
    DirectResponse, Listener, ListenerTls, RateLimitKey, Route, RouteAction, RouteRateLimit,
    RuntimeConfig, Timeouts,
};

use locate::PositionIndex;
use std::fmt;
use std::path::Path;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Key path such as `routes[1].upstream`; empty for a problem with the whole file.
    pub path: String,
    pub message: String,
}

/// Every problem found in a config file, with the file's name.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {}", self.file)?;
            if let Some(line) = d.line {
                write!(f, ":{line}:{}", d.column.unwrap_or(1))?;
            }
            if d.path.is_empty() {
                write!(f, ": {}", d.message)?;
            } else {
                write!(f, ": {}: {}", d.path, d.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates the config file at `path`.
pub fn load_file(path: &Path) -> Result<RuntimeConfig, ConfigError> {
    load_file_inheriting(path, None)
}

/// Loads the config file like [`load_file`], for a reload: routes and targets that `previous`
/// also has keep their live state (see [`compile::compile`]).
pub fn load_file_inheriting(
    path: &Path,
    previous: Option<&RuntimeConfig>,
) -> Result<RuntimeConfig, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: name.clone(),
        diagnostics: vec![Diagnostic {
            line: None,
            column: None,
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    load_str_inheriting(&text, &name, base_dir, previous)
}

/// Parses and validates config text. `file` names it in errors; relative paths in it (TLS
/// certificates) are resolved against `base_dir`.
pub fn load_str(text: &str, file: &str, base_dir: &Path) -> Result<RuntimeConfig, ConfigError> {
    load_str_inheriting(text, file, base_dir, None)
}

fn load_str_inheriting(
    text: &str,
    file: &str,
    base_dir: &Path,
    previous: Option<&RuntimeConfig>,
) -> Result<RuntimeConfig, ConfigError> {
    // Editors on some systems save a UTF-8 byte order mark, which YAML parsers reject.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let parsed: file::FileConfig = serde_yaml::from_str(text).map_err(|e| ConfigError {
        file: file.to_owned(),
        diagnostics: vec![refine_value_error(serde_diagnostic(&e), text)],
    })?;
    compile::compile(parsed, base_dir, previous).map_err(|problems| {
        let index = PositionIndex::build(text);
        let diagnostics = problems
            .into_iter()
            .map(|p| {
                let position = if p.at_key {
                    index.find_key(&p.path)
                } else {
                    index.find(&p.path)
                };
                Diagnostic {
                    line: position.map(|p| p.line),
                    column: position.map(|p| p.column),
                    path: p.path,
                    message: p.message,
                }
            })
            .collect();
        ConfigError {
            file: file.to_owned(),
            diagnostics,
        }
    })
}

/// Replaces Rust type names in serde's "expected ..." phrases with what a config author writes.
fn readable_types(message: &str) -> String {
    static TYPES: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let types = TYPES.get_or_init(|| {
        regex::Regex::new(r"\b(u8|u16|u32|u64|usize|i64|struct [A-Za-z]+|a sequence|a map)\b")
            .expect("valid regex")
    });
    types
        .replace_all(message, |caps: &regex::Captures| match &caps[1] {
            "u8" => "a whole number from 0 to 255".to_owned(),
            "u16" => "a whole number from 0 to 65535".to_owned(),
            "u32" => "a whole number from 0 to 4294967295".to_owned(),
            "u64" | "usize" => "a whole number".to_owned(),
            "i64" => "a number".to_owned(),
            "a sequence" => "a list".to_owned(),
            "a map" => "a mapping".to_owned(),
            _ => "a mapping".to_owned(),
        })
        .into_owned()
}

/// Points a value error at the value. serde_yaml reports an error raised while deserializing
/// a field's value (a bad duration, size or address) with the path of the enclosing mapping.
/// When exactly one child of that mapping contains the quoted value, the path and position
/// are moved to it.
fn refine_value_error(mut diagnostic: Diagnostic, text: &str) -> Diagnostic {
    let Some(value) = diagnostic
        .message
        .strip_prefix("invalid ")
        .and_then(|rest| rest.split_once(" \""))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| value.to_owned())
    else {
        return diagnostic;
    };
    let index = PositionIndex::build(text);
    if let Some(child) = index.child_with_value(&diagnostic.path, &value) {
        if let Some(position) = index.find(&child) {
            diagnostic.line = Some(position.line);
            diagnostic.column = Some(position.column);
        }
        diagnostic.path = child;
    }
    diagnostic
}

/// Turns a serde_yaml error into a diagnostic. Its text is `PATH: MESSAGE at line L column C`,
/// from which the path and the position are split out. An unknown field's path is extended
/// with the field itself so that it names the offending key.
fn serde_diagnostic(error: &serde_yaml::Error) -> Diagnostic {
    let text = error.to_string();
    // Positions are reported separately, so drop every "at line L column C" from the text.
    static POSITION: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let position = POSITION
        .get_or_init(|| regex::Regex::new(r" at line \d+ column \d+").expect("valid regex"));
    let text = position.replace_all(&text, "").into_owned();
    let (mut path, mut message) = match text.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => (path.to_owned(), message.to_owned()),
        _ => (String::new(), text.clone()),
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            path = if path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            message = format!("unknown key \"{field}\"{}", expected.replace('`', "\""));
        }
    } else if message.starts_with("missing field `") {
        message = message.replacen("missing field", "missing key", 1);
    }
    let message =
        readable_types(&message.replacen("unknown variant", "unknown value", 1)).replace('`', "\"");
    let location = error.location();
    Diagnostic {
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        path,
        message,
    }
}
