//! Command-line interface: flag definitions and dispatch. `main.rs` only calls [`run`].
//!
//! Exit codes: 0 success, 1 failure (including `wal verify` finding damage), 2 usage error.

use crate::exit::{self, UsageError};
use crate::logging::{self, LogSettings};
use crate::server::ServerArgs;
use crate::wal_cmd;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// eds: store-and-forward gateway for Shopmonkey change-data capture.
#[derive(Debug, Parser)]
#[command(
    name = "eds",
    version = crate::VERSION,
    about = "Store-and-forward gateway for Shopmonkey change-data capture",
    long_about = "eds pulls Shopmonkey change events from NATS JetStream, makes each one durable in a local \
compressed write-ahead log before acknowledging it, and drains the log into your destinations.\n\n\
Documentation: https://shopmonkey.dev/eds",
    arg_required_else_help = true,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command accepts (EDS's persistent flags).
#[derive(Debug, Args)]
struct GlobalArgs {
    /// Log everything (TRACE level)
    #[arg(short = 'v', long, global = true)]
    verbose: bool,
    /// Log errors only (wins over --verbose)
    #[arg(short = 's', long, global = true)]
    silent: bool,
    /// Prefix log lines with a timestamp
    #[arg(short = 't', long, global = true)]
    timestamp: bool,
    /// Prefix every log line with [LABEL]
    #[arg(long, global = true, hide = true, value_name = "LABEL")]
    log_label: Option<String>,
    /// Data directory (config.toml, wal/, tracker, dlq/, logs/) [default: data; demo-data for `eds demo`]
    #[arg(short = 'd', long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Directory with a JSON-Schema validator configuration
    #[arg(long, global = true, value_name = "DIR")]
    schema_validator: Option<PathBuf>,
    /// Unused (accepted for EDS compatibility)
    #[arg(long, global = true, hide = true, value_name = "SINK")]
    log_file_sink: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version
    Version,
    /// Enroll this server with the one-time code from Shopmonkey (writes config.toml)
    Enroll(crate::enroll::EnrollArgs),
    /// Print Shopmonkey's PGP public key, which release downloads and upgrades are verified against
    #[command(name = "publickey")]
    PublicKey,
    /// Download a release of eds, verify its PGP signature, and write its binary to FILE
    Download(crate::upgrade::DownloadArgs),
    /// Load a bulk export of the shop's tables into a destination (run while `eds server` is stopped)
    Import(Box<crate::import::command::ImportArgs>),
    /// Run the whole pipeline with generated Shopmonkey-shaped events and no external server
    Demo(crate::demo::DemoArgs),
    /// Run the gateway: pull change events from NATS JetStream into the write-ahead log
    #[command(disable_help_subcommand = true)]
    Server(Box<ServerArgs>),
    /// Dead letters: list them, or re-deliver a destination's after fixing what rejected them
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Publish Shopmonkey-shaped test events to a NATS server, to smoke-test a server and its destinations
    #[command(name = "integrationtest")]
    IntegrationTest {
        #[command(subcommand)]
        command: crate::integrationtest::IntegrationTestCommand,
    },
    /// Look into the write-ahead log (read-only; safe while a server runs)
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Segments, cursors with their lag, holes and totals
    Inspect {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Check every frame's checksum and LSN continuity; exit 1 naming segment and offset of each problem
    Verify {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print records, one per line, decoded: LSN, kind, stream sequence, receive time, subject, message id, event
    Dump {
        /// First LSN to print (default: the oldest kept)
        #[arg(long, value_name = "LSN")]
        from: Option<u64>,
        /// Print at most N records
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// One JSON object per line
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// The records' bytes as they are: `text` and the record when it is UTF-8, else `hex`
        #[arg(long)]
        raw: bool,
    },
    /// List or delete cursors (one per destination)
    Cursor {
        #[command(subcommand)]
        command: CursorCommand,
    },
    /// List dead letters with their reasons: messages ingest refused, or events a destination rejected
    Dlq {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        /// A destination's dead letters (events it rejected) instead of ingest's
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
    },
    /// Write sample order events into the data directory's log, then inspect it
    Sample {
        /// How many events to append
        #[arg(long, default_value_t = 10_000)]
        records: u64,
        /// Events per appended batch
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        batch: u64,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters (ingest's, or a destination's) with their reasons
    List {
        /// A destination's dead letters (events it rejected) instead of ingest's
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Re-deliver a destination's dead letters not replayed yet (stop the server first)
    Replay {
        /// The destination whose dead letters to replay
        #[arg(long, value_name = "NAME")]
        destination: String,
        /// The destination's URL, as given to the server
        #[arg(long, value_name = "URL")]
        url: String,
        /// Shopmonkey API base URL, for table schemas the data dir's tracker does not hold yet
        #[arg(long, hide = true, default_value = "https://api.shopmonkey.cloud")]
        api_url: String,
        /// Also replay dead letters of rows that had a newer event delivered since (this rolls
        /// those rows back to the dead letter's image)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CursorCommand {
    /// List cursors with position and lag
    List {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Delete a cursor (an orphan of a removed destination holds retention back). Needs the server stopped.
    Delete {
        /// Cursor name
        name: String,
    },
}

/// Parse `args`, run the command, and return the process exit code.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    // Whatever this process creates under a data dir is private to its user.
    crate::datadir::private_umask();
    let g = &cli.global;
    logging::init(&LogSettings {
        verbose: g.verbose,
        silent: g.silent,
        timestamps: g.timestamp,
        label: g.log_label.clone(),
    });
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = dispatch(&cli, &mut out);
    let _ = out.flush();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("error: {}", eds_wal::error_chain(e.as_ref()));
            ExitCode::from(exit::USAGE)
        }
        Err(e) => {
            eprintln!("error: {}", eds_wal::error_chain(e.as_ref()));
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn dispatch(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<u8> {
    let data_dir = cli.global.data_dir.clone().unwrap_or_else(|| PathBuf::from("data"));
    let wal_dir = data_dir.join("wal");
    match &cli.command {
        Command::Dlq { command: DlqCommand::List { destination, json } } => {
            wal_cmd::dlq(&data_dir, destination.as_deref(), *json, out)
        }
        Command::Dlq { command: DlqCommand::Replay { .. } } if cli.global.schema_validator.is_some() => {
            Err(UsageError(
                "--schema-validator does not apply to `eds dlq replay`: dead letters are re-delivered as they are"
                    .into(),
            )
            .into())
        }
        Command::Dlq { command: DlqCommand::Replay { destination, url, api_url, force } } => {
            wal_cmd::dlq_replay(&data_dir, destination, url, api_url, *force, out)
        }
        Command::Demo(args) => {
            let data_dir = cli.global.data_dir.as_deref().unwrap_or(std::path::Path::new("demo-data"));
            crate::demo::run(args, data_dir, cli.global.schema_validator.as_deref())
        }
        Command::Enroll(args) => crate::enroll::run(args, &data_dir, out),
        Command::Import(args) => {
            crate::import::command::run(args, &data_dir, cli.global.schema_validator.as_deref(), out)
        }
        Command::IntegrationTest { command } => crate::integrationtest::run(command, out),
        Command::PublicKey => {
            out.write_all(crate::upgrade::SHOPMONKEY_PUBLIC_KEY.as_bytes())?;
            Ok(0)
        }
        Command::Download(args) => crate::upgrade::download::run(args, out),
        Command::Version => {
            writeln!(out, "{}", crate::VERSION)?;
            Ok(0)
        }
        Command::Server(args) => match &args.command {
            Some(crate::server::ServerCommand::Help { driver }) => crate::server::help(driver.as_deref(), out),
            None => crate::server::run(args, &data_dir, cli.global.schema_validator.as_deref()),
        },
        Command::Wal { command } => match command {
            WalCommand::Inspect { json } => wal_cmd::inspect(&wal_dir, *json, out),
            WalCommand::Verify { json } => wal_cmd::verify(&wal_dir, *json, out),
            WalCommand::Dump { from, limit, json, raw } => {
                let format = match (json, raw) {
                    (true, _) => wal_cmd::DumpFormat::Json,
                    (_, true) => wal_cmd::DumpFormat::Raw,
                    _ => wal_cmd::DumpFormat::Text,
                };
                wal_cmd::dump(&wal_dir, *from, *limit, format, out)
            }
            WalCommand::Cursor { command: CursorCommand::List { json } } => wal_cmd::cursor_list(&wal_dir, *json, out),
            WalCommand::Cursor { command: CursorCommand::Delete { name } } => {
                wal_cmd::cursor_delete(&wal_dir, name, out)
            }
            WalCommand::Dlq { json, destination } => wal_cmd::dlq(&data_dir, destination.as_deref(), *json, out),
            WalCommand::Sample { records, batch } => wal_cmd::sample(&wal_dir, *records, *batch, out),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_parse_after_the_subcommand() {
        let cli = Cli::try_parse_from(["eds", "wal", "inspect", "-d", "/x", "-v", "-t", "--json"]).unwrap();
        assert_eq!(cli.global.data_dir, Some(PathBuf::from("/x")));
        assert!(cli.global.verbose && cli.global.timestamp && !cli.global.silent);
        assert!(matches!(cli.command, Command::Wal { command: WalCommand::Inspect { json: true } }));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let e = Cli::try_parse_from(["eds", "wal", "dump", "--from", "abc"]).unwrap_err();
        assert!(e.use_stderr());
        assert!(e.to_string().contains("--from"), "{e}");
        let e = Cli::try_parse_from(["eds", "wal", "sample", "--batch", "0"]).unwrap_err();
        assert!(e.to_string().contains("--batch"), "{e}");
    }
}
