//! The `progress-hub` binary: parse the configuration, start logging, run.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use progress_hub::config::{Command, Config};
use progress_hub::Application;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = progress_hub::cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Index { folder } => progress_hub::indexer::cli::run(cli.config, folder).await,
        Command::Watch(args) => progress_hub::cli::watch::run(args).await,
        Command::Tasks(args) => progress_hub::cli::tasks::run(args).await,
    }
}

async fn serve(config: Config) -> ExitCode {
    progress_hub::server::raise_open_files_limit(config.max_subscribers);
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            eprintln!("progress-hub: {error}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(addr = %app.local_addr(), "listening");
    println!("listening on {}", app.url());
    let _ = std::io::stdout().flush();
    app.run_until_stopped(shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
