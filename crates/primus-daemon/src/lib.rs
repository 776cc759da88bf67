//! What primus's daemons (`primusd`, `primus-agent`) share: one-line configuration
//! errors that name the key, logging setup, and waiting for a shutdown signal.

use std::path::{Path, PathBuf};

pub mod env;
pub use env::{parse_toml_with_env, read_toml_with_env, EnvOverrides, RESERVED_ENV};

/// A configuration file that cannot be used: one line, naming the file and, where
/// it can, the line and the key. Daemons exit with code 2 on any of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config error: cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config error: {path}{location}: {message}")]
    Parse { path: PathBuf, location: String, message: String },
    #[error("config error: {path}: key `{key}`: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
    /// About a `PRIMUS_*` environment override (see [`env`]): names the variable.
    #[error("config error: {var}: {message}{}", env_key_suffix(key))]
    Env { var: String, key: String, message: String },
}

fn env_key_suffix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" (key `{key}`)")
    }
}

/// Parse `text` (the contents of `path`) as `T`, with one-line errors.
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str::<T>(text).map_err(|e| {
        let (location, message) = toml_error_location(text, &e);
        ConfigError::Parse { path: path.to_path_buf(), location, message }
    })
}

/// Read and parse the TOML file `path` as `T`.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_toml(path, &text)
}

/// Turn toml's multi-line error into `line N: key `table.k`: message`.
pub fn toml_error_location(text: &str, e: &toml::de::Error) -> (String, String) {
    let message = e.message().replace('\n', " ");
    let Some(span) = e.span() else {
        return (String::new(), message);
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    // The table the error is in: the nearest `[header]` at or above the error's line.
    let table = lines[..line_no.min(lines.len())]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let qualify = |k: &str| match &table {
        Some(t) if !t.is_empty() => format!("{t}.{k}"),
        _ => k.to_string(),
    };
    // "missing field `x`" / "unknown field `x`": the field is the key, whatever line the span points at.
    let named = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))
        .and_then(|rest| rest.split('`').next());
    if let Some(k) = named {
        let location = if message.starts_with("missing") {
            format!(": key `{}`", qualify(k))
        } else {
            format!(" line {line_no}: key `{}`", qualify(k))
        };
        return (location, message);
    }
    let line = lines.get(line_no - 1).copied().unwrap_or("").trim();
    let key = line.split('=').next().unwrap_or("").trim();
    let location = if !key.is_empty() && line.contains('=') {
        format!(" line {line_no}: key `{}`", qualify(key))
    } else if !line.is_empty() {
        format!(" line {line_no}: `{line}`")
    } else {
        format!(" line {line_no}")
    };
    (location, message)
}

/// Log to stderr through `tracing`: `format` is `text` or `json`; `RUST_LOG` overrides
/// `default_filter`. Colours only on a terminal.
pub fn init_logging(format: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT (never, with a warning, if the handlers cannot be installed).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop with kill -9 only");
            std::future::pending::<()>().await
        }
    }
}

/// For the tests that keep configuration docs complete: the keys serde lists in
/// `unknown_key_error` (the error of a section given an unknown key: "unknown field
/// `x`, expected one of `a`, `b`") that `docs` never mentions as a whole word.
/// `Err` when the error holds no key list.
pub fn undocumented_keys(unknown_key_error: &str, docs: &str) -> Result<Vec<String>, String> {
    let expected = unknown_key_error.split_once("expected").map(|(_, rest)| rest).unwrap_or("");
    let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    if keys.is_empty() {
        return Err(format!("no key list in {unknown_key_error:?}"));
    }
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mentioned = |k: &str| {
        docs.match_indices(k).any(|(i, _)| {
            !docs[..i].chars().next_back().is_some_and(ident) && !docs[i + k.len()..].chars().next().is_some_and(ident)
        })
    };
    Ok(keys.into_iter().filter(|k| !mentioned(k)).map(str::to_string).collect())
}

#[cfg(test)]
mod doc_key_tests {
    #[test]
    fn keys_missing_from_the_docs_are_named() {
        let e = "unknown field `zz`, expected one of `ttl_ms`, `port`, `fence_split`";
        let docs = "| `ttl_ms` | … | `[mysql] port` | fence_splitX";
        assert_eq!(super::undocumented_keys(e, docs), Ok(vec!["fence_split".to_string()]));
        assert!(super::undocumented_keys("bad toml", docs).is_err());
    }
}
