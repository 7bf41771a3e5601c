//! `kv-node`: a ringkv database node. See `kv-node --help`.

mod aae;
mod changes;
mod config;
mod coordinator;
mod error;
mod gossip;
mod handoff;
mod hints;
mod meta;
mod node;
mod outbox;
mod peers;
mod pool;
mod reaper;
mod server;
mod service;
mod stats;
mod store;
mod transfer;
mod trees;
mod view;

use clap::Parser;
use tracing_subscriber::EnvFilter;

// The request path allocates many small short-lived buffers (messages,
// keys, states). In a read-only benchmark glibc's allocator spent about a
// tenth of a node's time on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = config::Config::parse();
    if let Err(error) = config.validate() {
        // The same exit code as clap's own usage errors.
        eprintln!("error: {error}");
        return std::process::ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn,sled=warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kv-node: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("kv-node stopped: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
