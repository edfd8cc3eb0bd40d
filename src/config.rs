//! `config.toml` in the data directory: what enrollment and the server keep between runs
//! (spec §1.2). Keys eds does not know are kept as they are when it rewrites the file; the file is
//! private (0600) and replaced atomically, since it holds the HQ API key.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file's name inside the data directory.
pub const FILE: &str = "config.toml";

/// The settings `config.toml` holds; every one may be absent.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// HQ API key (a JWT), from enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// This server's id, from enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Every other key (`url`, `update_strategy`, `keep_logs`, an operator's own), kept as it is
    /// until something here reads it.
    #[serde(flatten)]
    pub other: toml::Table,
}

/// Where `config.toml` lives for `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The settings in `data_dir`'s `config.toml`; all absent when there is no such file. A file that
/// is not valid TOML is an error naming it and the place.
pub fn load(data_dir: &Path) -> Result<ConfigFile> {
    let file = path(data_dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    toml::from_str(&text).with_context(|| format!("{} is not a valid config file", file.display()))
}

/// Replaces `data_dir`'s `config.toml` with `config`, atomically and durably, mode 0600.
pub fn save(data_dir: &Path, config: &ConfigFile) -> Result<()> {
    let text = toml::to_string(config).context("encoding config.toml")?;
    crate::datadir::write_atomically(&path(data_dir), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_survive_a_rewrite_and_strings_are_quoted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "keep_logs = 5\nmine = \"x\"\ntoken = \"old\"\n").unwrap();
        let mut c = load(dir.path()).unwrap();
        assert_eq!(c.token.as_deref(), Some("old"));
        c.token = Some("a\"b\nc".into());
        c.server_id = Some("s1".into());
        save(dir.path(), &c).unwrap();
        let again = load(dir.path()).unwrap();
        assert_eq!(again, c);
        assert_eq!(again.other.get("mine").and_then(toml::Value::as_str), Some("x"));
        assert_eq!(again.other.get("keep_logs").and_then(toml::Value::as_integer), Some(5));
    }

    #[test]
    fn a_missing_file_is_empty_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), ConfigFile::default());
        std::fs::write(path(dir.path()), "token = \n").unwrap();
        let e = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(e.contains("config.toml is not a valid config file"), "{e}");
    }
}
