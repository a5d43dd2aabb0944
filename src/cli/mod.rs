//! The client commands, which talk to a running server over HTTP:
//! `progress-hub watch ID` follows one task to its end, `progress-hub tasks` lists tasks.
//! Their arguments live here rather than in [`crate::config`], which holds the server's
//! settings.

mod client;
mod display;
mod sse;
pub mod tasks;
pub mod watch;

use clap::{Args, CommandFactory, FromArgMatches};

use crate::config::Cli;

/// Exit codes of `watch` (and, where they apply, `tasks`).
pub mod exit {
    /// The task completed (for `tasks`: the listing was printed).
    pub const COMPLETED: u8 = 0;
    /// The task failed.
    pub const FAILED: u8 = 1;
    /// The task was cancelled.
    pub const CANCELLED: u8 = 2;
    /// No such task (unknown, or not a valid task id).
    pub const NOT_FOUND: u8 = 3;
    /// The server could not be reached for `--retry-secs`, refused the request (a missing
    /// or wrong token), or answered something else than the API promises.
    pub const UNREACHABLE: u8 = 4;
    /// The command line is wrong (clap's own code 2 would read as "cancelled").
    pub const USAGE: u8 = 64;
}

/// Where the server is and how to prove the right to read.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server's URL (http:// or https://).
    #[arg(
        long,
        env = "PROGRESS_HUB_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,

    /// An API token, or for `watch` a task's read token (`--protect-reads`). Sent in
    /// headers, never in a URL.
    #[arg(long, env = "PROGRESS_HUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// For https://: a PEM file of the certificates to trust (a self-signed server's own
    /// certificate, or a private CA), instead of `SSL_CERT_FILE` or the system's.
    #[arg(long, env = "PROGRESS_HUB_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl ServerArgs {
    /// The server these arguments name; a wrong one is printed and becomes the usage
    /// exit code.
    pub fn server(&self) -> Result<client::Server, std::process::ExitCode> {
        client::Server::new(&self.server, self.token.clone(), self.ca_cert.as_deref()).map_err(
            |error| {
                eprintln!("progress-hub: {error}");
                std::process::ExitCode::from(exit::USAGE)
            },
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// The task to follow.
    pub id: String,

    #[command(flatten)]
    pub remote: ServerArgs,

    /// Keep reconnecting for this many seconds without getting anywhere before giving up
    /// (exit 4).
    #[arg(long, default_value_t = 30)]
    pub retry_secs: u64,
}

#[derive(Args, Debug, Clone)]
pub struct TasksArgs {
    /// Only tasks with this status: pending, processing, completed, failed, cancelled.
    #[arg(long)]
    pub status: Option<String>,

    /// At most this many tasks.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,

    /// Print the server's JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub remote: ServerArgs,
}

/// Parses the command line. A usage error exits 2, as clap does, except under `watch`
/// and `tasks`, whose code 2 means "cancelled": there it exits [`exit::USAGE`].
pub fn parse() -> Cli {
    command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches))
        .unwrap_or_else(|error| {
            if error.use_stderr() && names_a_client_command() {
                let _ = error.print();
                std::process::exit(exit::USAGE.into());
            }
            error.exit()
        })
}

/// The command line, with the server's settings (global, so that `index` takes them)
/// left out of the client commands' `--help`, where they mean nothing: each client
/// command gets a hidden copy of them, which clap then does not propagate again.
fn command() -> clap::Command {
    let command = Cli::command();
    let server_settings: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.is_global_set())
        .cloned()
        .collect();
    ["watch", "tasks"]
        .into_iter()
        .fold(command, |command, name| {
            command.mut_subcommand(name, |sub| {
                sub.args(server_settings.iter().map(|arg| arg.clone().hide(true)))
            })
        })
}

/// Whether the command line, read leniently, names `watch` or `tasks`.
fn names_a_client_command() -> bool {
    command()
        .ignore_errors(true)
        .try_get_matches()
        .ok()
        .and_then(|matches| {
            matches
                .subcommand_name()
                .map(|name| matches!(name, "watch" | "tasks"))
        })
        .unwrap_or(false)
}
