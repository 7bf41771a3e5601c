//! Command-line arguments of kv-cli (clap derive).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes, shown after `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other error (including an import with failed records)
  2  usage error (invalid command line)
  3  key not found (get of a missing or deleted key)
  4  node unavailable, quorum not reached or timed out: a retry may help
  5  invalid argument or failed precondition: fix the request

Values that are not valid UTF-8 are printed with \\xNN escapes; --json adds
their exact bytes as base64 (values_base64). Contexts are URL-safe base64
without padding: pass them unchanged to --context.";

/// Command-line client of ringkv.
#[derive(Debug, Parser)]
#[command(name = "kv-cli", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Nodes to contact, comma-separated host:port; the client learns the
    /// rest of the cluster from them.
    #[arg(
        long,
        global = true,
        env = "RINGKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7401"
    )]
    pub endpoints: Vec<String>,

    /// Print one JSON document instead of human-readable lines.
    #[arg(long, global = true)]
    pub json: bool,

    /// Timeout of each request at one node, in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 10_000)]
    pub timeout_ms: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a key: every sibling value and the context for a following put.
    Get(GetArgs),
    /// Write a value (from the argument, --file, or standard input).
    Put(PutArgs),
    /// Delete a key (without --context, deletes what a read at R returns).
    Delete(DeleteArgs),
    /// Load many records from a file.
    Import(ImportArgs),
    /// List the cluster members and their state as one node observes them.
    Members(MembersArgs),
    /// Show the ring: version, claimant, partitions and their owners.
    Ring(RingArgs),
    /// Show one node's status and counters.
    Status(StatusArgs),
    /// Wait until every endpoint lists the given number of members as
    /// normal and up, on one ring version (for scripts).
    Wait(WaitArgs),
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    pub key: String,
    /// Read quorum, 1..=N (default: the cluster's R).
    #[arg(long, value_name = "N")]
    pub r: Option<u32>,
    /// Read the local state of one node (node id or host:port) without
    /// quorum or repair: present/missing/unknown, values, tombstones, dots.
    #[arg(long, value_name = "NODE", conflicts_with = "r")]
    pub replica: Option<String>,
    /// Print only the value's bytes, unescaped; fails when the key has
    /// several siblings.
    #[arg(long, conflicts_with = "replica")]
    pub raw: bool,
}

#[derive(Debug, clap::Args)]
pub struct PutArgs {
    pub key: String,
    /// Value to write; without it and without --file, the value is read
    /// from standard input.
    #[arg(conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from this file.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Context printed by an earlier get or put of this key; without it the
    /// put is blind and concurrent values become siblings.
    #[arg(long, value_name = "CTX")]
    pub context: Option<String>,
    /// Write quorum, 1..=N (default: the cluster's W).
    #[arg(long, value_name = "N")]
    pub w: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub key: String,
    /// Context printed by an earlier get; without it the node reads at R
    /// and deletes what that read returned.
    #[arg(long, value_name = "CTX")]
    pub context: Option<String>,
    /// Write quorum of the tombstone, 1..=N.
    #[arg(long, value_name = "N")]
    pub w: Option<u32>,
    /// Read quorum of the read done when no context is given, 1..=N.
    #[arg(long, value_name = "N")]
    pub r: Option<u32>,
}

/// Input formats of `import`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// One `key<TAB>value` record per line.
    Tsv,
    /// One JSON object `{"key": "...", "value": "..."}` per line.
    Jsonl,
    /// Blank-line-separated stanzas as in /var/lib/dpkg/status; the key is
    /// the value of --key-field and the value is the whole stanza.
    Deb822,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    pub file: PathBuf,
    #[arg(long, value_enum, default_value_t = ImportFormat::Tsv)]
    pub format: ImportFormat,
    /// deb822 field whose value is the record's key.
    #[arg(long, value_name = "FIELD", default_value = "Package")]
    pub key_field: String,
    /// Records in flight at once.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Put without reading first. Faster, but re-importing a key adds a
    /// sibling instead of replacing its value.
    #[arg(long)]
    pub blind: bool,
}

#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    /// Node to ask (host:port); default: any reachable endpoint.
    #[arg(long, value_name = "ADDR")]
    pub node: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RingArgs {
    /// List the preference list of every partition.
    #[arg(long)]
    pub partitions: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Node to ask (host:port); default: the first endpoint.
    #[arg(long, value_name = "ADDR")]
    pub node: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Members that must be normal and up.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub nodes: u32,
    /// Time to wait before failing with exit code 4, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kv-cli").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn get_parses_quorum_and_globals() {
        let cli = parse(&["--endpoints", "a:1,b:2", "--json", "get", "k", "--r", "3"])
            .expect("valid command line");
        assert_eq!(cli.endpoints, vec!["a:1", "b:2"]);
        assert!(cli.json);
        match cli.command {
            Command::Get(get) => {
                assert_eq!(get.key, "k");
                assert_eq!(get.r, Some(3));
                assert!(get.replica.is_none());
            }
            other => panic!("expected get, got {other:?}"),
        }
    }

    #[test]
    fn global_flags_accepted_after_subcommand() {
        let cli = parse(&["get", "k", "--timeout-ms", "250", "--json"]).expect("valid");
        assert_eq!(cli.timeout_ms, 250);
        assert!(cli.json);
    }

    #[test]
    fn put_value_and_file_conflict() {
        assert!(parse(&["put", "k", "v", "--file", "/tmp/x"]).is_err());
        let cli = parse(&["put", "k", "--file", "/tmp/x", "--w", "1"]).expect("valid");
        match cli.command {
            Command::Put(put) => {
                assert!(put.value.is_none());
                assert_eq!(put.file, Some(PathBuf::from("/tmp/x")));
                assert_eq!(put.w, Some(1));
            }
            other => panic!("expected put, got {other:?}"),
        }
    }

    #[test]
    fn import_defaults() {
        let cli = parse(&["import", "data.tsv"]).expect("valid");
        match cli.command {
            Command::Import(import) => {
                assert_eq!(import.format, ImportFormat::Tsv);
                assert_eq!(import.key_field, "Package");
                assert_eq!(import.concurrency, 32);
                assert!(!import.blind);
            }
            other => panic!("expected import, got {other:?}"),
        }
    }

    #[test]
    fn import_rejects_zero_concurrency() {
        assert!(parse(&["import", "f", "--concurrency", "0"]).is_err());
    }

    #[test]
    fn get_raw_conflicts_with_replica() {
        assert!(parse(&["get", "k", "--raw", "--replica", "a:1"]).is_err());
    }

    #[test]
    fn ring_partitions_flag() {
        let cli = parse(&["ring", "--partitions"]).expect("valid");
        assert!(matches!(
            cli.command,
            Command::Ring(RingArgs { partitions: true })
        ));
    }

    #[test]
    fn wait_parses_nodes_and_timeout() {
        let cli = parse(&["wait", "--nodes", "3", "--timeout-secs", "30"]).expect("valid");
        match cli.command {
            Command::Wait(wait) => {
                assert_eq!(wait.nodes, 3);
                assert_eq!(wait.timeout_secs, 30);
            }
            other => panic!("expected wait, got {other:?}"),
        }
    }

    #[test]
    fn missing_subcommand_is_usage_error() {
        let error = parse(&[]).expect_err("a subcommand is required");
        assert_eq!(error.exit_code(), 2);
    }
}
