//! The settings `eds server` takes from both its flags and `config.toml`: a flag given on the
//! command line wins, then the config file, then the default (EDS's viper precedence, spec §1.2).
//! For the API key that means `--api-key` > `token` in config.toml > `SM_APIKEY`.

use super::ServerArgs;
use crate::config::ConfigFile;

/// The environment variable holding the API key when neither the flag nor config.toml does.
pub const API_KEY_ENV: &str = "SM_APIKEY";

/// Settings after precedence.
#[derive(Clone, Default, PartialEq)]
pub struct Settings {
    /// HQ API key (a JWT); a secret.
    pub token: Option<String>,
    /// This server's id.
    pub server_id: Option<String>,
    /// Destination URLs.
    pub urls: Vec<String>,
    /// Keep log files after uploading them.
    pub keep_logs: bool,
    /// `standard` or `after` (only Snowflake reads it).
    pub update_strategy: Option<String>,
}

impl std::fmt::Debug for Settings {
    /// The token and the URLs (which may hold passwords) stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("server_id", &self.server_id)
            .field("urls", &self.urls.iter().map(|u| eds_drivers::url::redact(u)).collect::<Vec<_>>())
            .field("keep_logs", &self.keep_logs)
            .field("update_strategy", &self.update_strategy)
            .finish()
    }
}

fn text(value: Option<&str>) -> Option<String> {
    value.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
}

impl Settings {
    /// Resolves the flags against `config` and the API key's environment variable `env_key`.
    pub fn resolve(args: &ServerArgs, config: &ConfigFile, env_key: Option<&str>) -> Settings {
        let other = |key: &str| config.other.get(key);
        let urls = if args.urls.is_empty() {
            text(other("url").and_then(toml::Value::as_str)).into_iter().collect()
        } else {
            args.urls.clone()
        };
        let keep_logs = args.keep_logs
            || match other("keep_logs") {
                Some(toml::Value::Boolean(b)) => *b,
                Some(toml::Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
                _ => false,
            };
        Settings {
            token: text(args.api_key.as_deref()).or_else(|| text(config.token.as_deref())).or_else(|| text(env_key)),
            server_id: text(args.eds_id.as_deref()).or_else(|| text(config.server_id.as_deref())),
            urls,
            keep_logs,
            update_strategy: text(other("update_strategy").and_then(toml::Value::as_str)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    #[command(disable_help_subcommand = true)]
    struct Wrap {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn args(flags: &[&str]) -> ServerArgs {
        let mut argv = vec!["eds"];
        argv.extend_from_slice(flags);
        Wrap::try_parse_from(argv).unwrap().server
    }

    fn config(text: &str) -> ConfigFile {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_flag_beats_the_config_file_which_beats_the_environment() {
        let c = config("token = \"from-config\"\nserver_id = \"cfg-id\"\nurl = \"file:///cfg\"\nkeep_logs = true\nupdate_strategy = \"after\"\n");
        let s = Settings::resolve(&args(&[]), &c, Some("from-env"));
        assert_eq!(s.token.as_deref(), Some("from-config"));
        assert_eq!(s.server_id.as_deref(), Some("cfg-id"));
        assert_eq!(s.urls, ["file:///cfg"]);
        assert!(s.keep_logs);
        assert_eq!(s.update_strategy.as_deref(), Some("after"));

        let s = Settings::resolve(
            &args(&["--api-key", "from-flag", "--eds-id", "flag-id", "--url", "file:///a", "--url", "file:///b"]),
            &c,
            Some("from-env"),
        );
        assert_eq!(s.token.as_deref(), Some("from-flag"));
        assert_eq!(s.server_id.as_deref(), Some("flag-id"));
        assert_eq!(s.urls, ["file:///a", "file:///b"]);

        let s = Settings::resolve(&args(&[]), &ConfigFile::default(), Some("from-env"));
        assert_eq!(s.token.as_deref(), Some("from-env"));
        assert_eq!(s.server_id, None);
        assert!(s.urls.is_empty() && !s.keep_logs);
    }

    #[test]
    fn empty_values_count_as_absent() {
        // A "shutdown deleted" notification leaves server_id = "" behind.
        let c = config("token = \"\"\nserver_id = \"\"\nurl = \"\"\n");
        let s = Settings::resolve(&args(&[]), &c, Some("k"));
        assert_eq!(s.token.as_deref(), Some("k"));
        assert_eq!(s.server_id, None);
        assert!(s.urls.is_empty());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = Settings::resolve(
            &args(&["--api-key", "sekrit", "--url", "postgres://u:pw@h/db"]),
            &ConfigFile::default(),
            None,
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("sekrit") && !shown.contains("pw@"), "{shown}");
    }
}
