//! kv-cli: command-line client of ringkv.
//!
//! Reads, writes and deletes keys, bulk-loads files, shows the cluster's
//! members, ring and node status, and changes the membership. Exit codes are listed in
//! [`args::EXIT_CODES_HELP`] and mapped from errors by [`exit_code`].

// The binary's modules live in `kv-cli/`, next to this crate root.
#[path = "kv-cli/args.rs"]
mod args;
#[path = "kv-cli/commands.rs"]
mod commands;
#[path = "kv-cli/import.rs"]
mod import;
#[path = "kv-cli/membership.rs"]
mod membership;
#[path = "kv-cli/output.rs"]
mod output;
#[path = "kv-cli/ring.rs"]
mod ring;
#[path = "kv-cli/wait.rs"]
mod wait;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kv_client::{Client, ClientOptions, ContextParseError};

use args::{Cli, Command};

/// Failures of kv-cli itself, next to the library's [`kv_client::Error`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("key {key:?} not found")]
    KeyNotFound { key: String },
    #[error("key {key:?} has {count} siblings but --raw prints one value; run without --raw to see them all")]
    Siblings { key: String, count: usize },
    #[error(transparent)]
    InvalidContext(ContextParseError),
    #[error("{message}")]
    Usage { message: String },
    #[error("{failed} of {total} records failed to import")]
    ImportFailed { failed: u64, total: u64 },
    #[error("cluster not formed after {seconds} s: {reason}; check the node logs")]
    WaitTimedOut { seconds: u64, reason: String },
    #[error("{node} is not a member of the cluster; members: {}", members.join(", "))]
    NotMember { node: String, members: Vec<String> },
    #[error("no member other than {node} is up to take the command; members: {}. Start another node or wait until one is up", members.join(", "))]
    NoOtherMemberUp { node: String, members: Vec<String> },
}

/// Maps an error to the exit code documented in `--help`.
fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(error) = error.downcast_ref::<CliError>() {
        return match error {
            CliError::KeyNotFound { .. } => 3,
            CliError::InvalidContext(_) | CliError::NotMember { .. } => 5,
            CliError::Usage { .. } => 2,
            CliError::WaitTimedOut { .. } | CliError::NoOtherMemberUp { .. } => 4,
            CliError::Siblings { .. } | CliError::ImportFailed { .. } => 1,
        };
    }
    if let Some(error) = error.downcast_ref::<kv_client::Error>() {
        use kv_client::Error as E;
        return match error {
            E::Unavailable { .. }
            | E::QuorumFailed { .. }
            | E::DeadlineExceeded { .. }
            | E::ResourceExhausted { .. }
            | E::NoReachableNode { .. }
            | E::Transport { .. } => 4,
            E::InvalidArgument { .. }
            | E::FailedPrecondition { .. }
            | E::InvalidEndpoint { .. } => 5,
            E::Protocol { .. } | E::Server { .. } => 1,
        };
    }
    1
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let request_timeout = Duration::from_millis(cli.timeout_ms.max(1));
    let options = ClientOptions {
        request_timeout,
        connect_timeout: kv_client::DEFAULT_CONNECT_TIMEOUT.min(request_timeout),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&cli.endpoints, options).await?;
    match &cli.command {
        Command::Get(args) => commands::get(&client, args, cli.json).await,
        Command::Put(args) => commands::put(&client, args, cli.json).await,
        Command::Delete(args) => commands::delete(&client, args, cli.json).await,
        Command::Import(args) => import::run(&client, args, cli.json).await,
        Command::Members(args) => commands::members(&client, args, &cli.endpoints, cli.json).await,
        Command::Ring(args) => ring::ring(&client, args, cli.json).await,
        Command::Status(args) => commands::status(&client, args, &cli.endpoints, cli.json).await,
        Command::Wait(args) => wait::run(&client, args, &cli.endpoints).await,
        Command::Decommission(args) => membership::decommission(&client, args, cli.json).await,
        Command::Remove(args) => membership::remove(&client, args, &cli.endpoints, cli.json).await,
        Command::MarkDown(args) => {
            membership::mark_down(&client, args, &cli.endpoints, cli.json).await
        }
    }
}

/// Sends log events to standard error when `RUST_LOG` is set, for example
/// `RUST_LOG=kv_client=debug` to see failovers and ring refreshes.
fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`kv-cli members
    // | head -1`) panicked. With the default action the process ends
    // quietly, as other command-line tools do.
    // SAFETY: signal(2) with SIG_DFL, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kv-cli: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kv-cli: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn exit_codes_follow_help() {
        let cases: Vec<(anyhow::Error, u8)> = vec![
            (CliError::KeyNotFound { key: "k".into() }.into(), 3),
            (
                kv_client::Error::NoReachableNode { tried: vec![] }.into(),
                4,
            ),
            (
                kv_client::Error::QuorumFailed {
                    message: "m".into(),
                }
                .into(),
                4,
            ),
            (
                kv_client::Error::DeadlineExceeded {
                    timeout: Duration::from_secs(1),
                    message: "m".into(),
                }
                .into(),
                4,
            ),
            (
                kv_client::Error::InvalidArgument {
                    message: "m".into(),
                }
                .into(),
                5,
            ),
            (
                kv_client::Error::FailedPrecondition {
                    message: "m".into(),
                }
                .into(),
                5,
            ),
            (
                CliError::InvalidContext(
                    kv_client::Context::from_base64("!").expect_err("invalid"),
                )
                .into(),
                5,
            ),
            (
                CliError::ImportFailed {
                    failed: 1,
                    total: 2,
                }
                .into(),
                1,
            ),
            (
                CliError::NotMember {
                    node: "127.0.0.1:7999".into(),
                    members: vec!["a1 (127.0.0.1:7401)".into()],
                }
                .into(),
                5,
            ),
            (
                CliError::Usage {
                    message: "m".into(),
                }
                .into(),
                2,
            ),
            (
                CliError::NoOtherMemberUp {
                    node: "00000000000000a1".into(),
                    members: vec!["00000000000000a1 (127.0.0.1:7401)".into()],
                }
                .into(),
                4,
            ),
            (anyhow::anyhow!("cannot read file"), 1),
        ];
        for (error, code) in cases {
            assert_eq!(exit_code(&error), code, "exit code of {error:#}");
        }
    }

    #[test]
    fn not_member_message_lists_members() {
        let error = CliError::NotMember {
            node: "127.0.0.1:7999".into(),
            members: vec!["a1 (127.0.0.1:7401)".into(), "b2 (127.0.0.1:7402)".into()],
        };
        assert_eq!(
            error.to_string(),
            "127.0.0.1:7999 is not a member of the cluster; members: a1 (127.0.0.1:7401), b2 (127.0.0.1:7402)"
        );
    }

    #[test]
    fn invalid_argument_has_no_doubled_prefix() {
        let error = anyhow::Error::from(kv_client::Error::InvalidArgument {
            message: "invalid value: 9 bytes is over the limit of 8 bytes".into(),
        });
        assert_eq!(
            format!("{error:#}"),
            "invalid value: 9 bytes is over the limit of 8 bytes"
        );
    }

    #[test]
    fn exit_code_sees_through_context() {
        let error =
            anyhow::Error::from(CliError::KeyNotFound { key: "k".into() }).context("while reading");
        assert_eq!(exit_code(&error), 3);
    }
}
