//! Command-line arguments of kv-cli (clap derive).
//!
//! Checks that need no server run here, so a bad value is a usage error
//! (exit code 2) that names the value and the expected form: endpoints must
//! be `host:port`, quorums 1..=9 and a `--context` non-empty.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use kv_client::{format_node_id, parse_node_id, NodeId};

/// Exit codes, shown after `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other error (including an import with failed records)
  2  usage error (invalid command line)
  3  key not found (get of a missing or deleted key)
  4  node unavailable, quorum not reached or timed out: a retry may help
  5  invalid argument, failed precondition, or a --replica or NODE that is
     not a member of the cluster: fix the request

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
        default_value = "127.0.0.1:7401",
        value_parser = parse_endpoint
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
    /// Delete a key (without --context, deletes what a read at R returns;
    /// a missing or already deleted key is reported and left unchanged).
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
    /// Hand a live node's partitions to the other nodes and let it leave.
    ///
    /// The request goes to the node itself. The claimant plans the node's
    /// partitions onto the other nodes, which copy the data from it while
    /// it keeps serving. The node process exits once they hold its data.
    /// Follow the plan with `kv-cli ring` and the copies with
    /// `kv-cli status --node ADDR` on the receiving nodes.
    Decommission(DecommissionArgs),
    /// Remove a node that is dead for good; the others rebuild its data.
    ///
    /// The node must be down. The request goes to another member that is
    /// up, those in --endpoints first. The claimant plans the node's
    /// partitions onto the remaining nodes, which rebuild them from the
    /// surviving replicas. A removed node can never rejoin with its data
    /// directory. Follow the plan with `kv-cli ring` and the copies with
    /// `kv-cli status --node ADDR`.
    Remove(RemoveArgs),
    /// Declare a dead node down, so ring changes stop waiting for it.
    ///
    /// The receiving node's failure detector must report the node down.
    /// The request goes to another member that is up, those in --endpoints
    /// first. No data moves: the node keeps its partitions. Use
    /// `kv-cli remove` if it is gone for good. `kv-cli members` shows the
    /// node as marked-down, and `kv-cli status` whether a ring change still
    /// waits.
    MarkDown(MarkDownArgs),
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Key to read.
    pub key: String,
    /// Read quorum, 1..=N (default: the cluster's R).
    #[arg(long, value_name = "N", value_parser = parse_quorum)]
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
    /// Key to write.
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
    #[arg(long, value_name = "CTX", value_parser = parse_put_context)]
    pub context: Option<String>,
    /// Write quorum, 1..=N (default: the cluster's W).
    #[arg(long, value_name = "N", value_parser = parse_quorum)]
    pub w: Option<u32>,
    /// Count only the key's own replicas towards W, not stand-ins that hold
    /// the value as a hint for a replica that is down.
    #[arg(long)]
    pub strict_quorum: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Key to delete.
    pub key: String,
    /// Context printed by an earlier get; without it the node reads at R
    /// and deletes what that read returned.
    #[arg(long, value_name = "CTX", value_parser = parse_delete_context)]
    pub context: Option<String>,
    /// Write quorum of the tombstone, 1..=N (default: the cluster's W).
    #[arg(long, value_name = "N", value_parser = parse_quorum)]
    pub w: Option<u32>,
    /// Read quorum of the read done when no context is given, 1..=N
    /// (default: the cluster's R).
    #[arg(long, value_name = "N", value_parser = parse_quorum)]
    pub r: Option<u32>,
    /// Count only the key's own replicas towards W, not stand-ins that hold
    /// the tombstone as a hint for a replica that is down.
    #[arg(long)]
    pub strict_quorum: bool,
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
    /// File of records to load, in the format given by --format.
    pub file: PathBuf,
    /// Input format.
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
    /// Write every record that failed to this file, in the input format,
    /// so that it can be imported again as is. Records the parser rejected
    /// are copied unchanged and need fixing first.
    #[arg(long, value_name = "PATH")]
    pub failed_out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    /// Node to ask (host:port); default: the first endpoint that replies,
    /// in the order of --endpoints.
    #[arg(long, value_name = "ADDR", value_parser = parse_endpoint)]
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
    #[arg(long, value_name = "ADDR", value_parser = parse_endpoint)]
    pub node: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DecommissionArgs {
    /// Node to decommission: its id (16 hex digits, as `kv-cli members`
    /// shows it) or its address (host:port).
    #[arg(value_name = "NODE", value_parser = parse_node_ref)]
    pub node: NodeRef,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// Node to remove: its id (16 hex digits, as `kv-cli members` shows
    /// it) or its address (host:port).
    #[arg(value_name = "NODE", value_parser = parse_node_ref)]
    pub node: NodeRef,
}

#[derive(Debug, clap::Args)]
pub struct MarkDownArgs {
    /// Node to mark down: its id (16 hex digits, as `kv-cli members` shows
    /// it) or its address (host:port).
    #[arg(value_name = "NODE", value_parser = parse_node_ref)]
    pub node: NodeRef,
}

/// A node named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRef {
    /// Node id, as `kv-cli members` shows it.
    Id(NodeId),
    /// Address the node listens on, `host:port`.
    Address(String),
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeRef::Id(id) => f.write_str(&format_node_id(*id)),
            NodeRef::Address(address) => f.write_str(address),
        }
    }
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

/// Highest quorum accepted on the command line. The node checks the
/// request against the cluster's N, which may be lower.
pub const MAX_QUORUM: u32 = 9;

/// Parses `--r` and `--w`: 1..=[`MAX_QUORUM`]. Zero is rejected instead of
/// meaning "the cluster's default", because help promises 1..=N.
fn parse_quorum(text: &str) -> Result<u32, String> {
    let fix = format!(
        "pass a quorum from 1 to the cluster's N (at most {MAX_QUORUM}), or omit the option to use the cluster's default"
    );
    match text.trim().parse::<u32>() {
        Ok(value) if (1..=MAX_QUORUM).contains(&value) => Ok(value),
        Ok(_) => Err(format!("quorum {text} is out of range; {fix}")),
        Err(_) => Err(format!("quorum {text:?} is not a number; {fix}")),
    }
}

/// Parses `--context` of `put`, rejecting an empty value, which would
/// otherwise turn the put blind without saying so.
fn parse_put_context(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("the context is empty; omit --context for a blind put".into());
    }
    Ok(text.to_string())
}

/// Parses `--context` of `delete`, rejecting an empty value.
fn parse_delete_context(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err(
            "the context is empty; omit --context to delete what a read at R returns".into(),
        );
    }
    Ok(text.to_string())
}

/// Parses one endpoint: `host:port`, optionally after `http://` or
/// `https://`. The host is not resolved here. Surrounding spaces are
/// removed, so `a:1, b:2` works.
fn parse_endpoint(text: &str) -> Result<String, String> {
    let endpoint = text.trim();
    let expected = "expected host:port such as 127.0.0.1:7401";
    let authority = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(format!("endpoint {endpoint:?} has no port; {expected}"));
    };
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(format!(
            "endpoint {endpoint:?} has an invalid host; {expected}"
        ));
    }
    // A bare IPv6 address needs brackets, otherwise its last group would
    // be read as the port.
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "endpoint {endpoint:?} is an IPv6 address without brackets; expected [address]:port such as [::1]:7401"
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(endpoint.to_string()),
        _ => Err(format!(
            "endpoint {endpoint:?} has an invalid port {port:?}; {expected} (port 1 to 65535)"
        )),
    }
}

/// Parses a node given as an id (hex digits, as `kv-cli members` shows
/// it) or as an address (`host:port`, without a scheme because member
/// addresses have none). A text with a colon is an address.
fn parse_node_ref(text: &str) -> Result<NodeRef, String> {
    let node = text.trim();
    if node.contains(':') {
        if node.contains("://") {
            return Err(format!(
                "node address {node:?} has a scheme; pass host:port as `kv-cli members` shows it"
            ));
        }
        return parse_endpoint(node).map(NodeRef::Address);
    }
    parse_node_id(node).map(NodeRef::Id).ok_or_else(|| {
        format!(
            "{node:?} is neither a node id (16 hex digits, as `kv-cli members` shows it) nor an address (host:port)"
        )
    })
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

    #[test]
    fn quorum_zero_is_rejected() {
        for args in [
            &["get", "k", "--r", "0"][..],
            &["put", "k", "v", "--w", "0"],
            &["delete", "k", "--w", "0"],
            &["delete", "k", "--r", "0"],
            &["get", "k", "--r", "10"],
        ] {
            let error = parse(args).expect_err("quorum out of range");
            assert_eq!(error.exit_code(), 2, "{args:?}");
            let text = error.to_string();
            assert!(
                text.contains("from 1 to the cluster's N (at most 9)"),
                "{args:?}: {text}"
            );
        }
        let cli = parse(&["get", "k", "--r", "9"]).expect("9 is accepted");
        assert!(matches!(
            cli.command,
            Command::Get(GetArgs { r: Some(9), .. })
        ));
    }

    #[test]
    fn empty_context_is_rejected() {
        let error = parse(&["put", "k", "v", "--context", ""]).expect_err("empty context");
        assert_eq!(error.exit_code(), 2);
        assert!(
            error.to_string().contains("omit --context for a blind put"),
            "{error}"
        );
        let error = parse(&["delete", "k", "--context", ""]).expect_err("empty context");
        assert!(error.to_string().contains("omit --context"), "{error}");
    }

    #[test]
    fn endpoint_must_be_host_and_port() {
        for value in [
            "garbage",
            "host:",
            ":7401",
            "host:99999",
            "host:0",
            "::1:7401",
            "a b:1",
        ] {
            let error = parse(&["--endpoints", value, "ring"]).expect_err(value);
            assert_eq!(error.exit_code(), 2, "{value}");
            let text = error.to_string();
            assert!(
                text.contains("host:port") || text.contains("[address]:port"),
                "{value}: {text}"
            );
        }
        let cli = parse(&[
            "--endpoints",
            "127.0.0.1:7401, db.example:7402,http://h:1,[::1]:7403",
            "ring",
        ])
        .expect("valid endpoints");
        assert_eq!(
            cli.endpoints,
            vec![
                "127.0.0.1:7401",
                "db.example:7402",
                "http://h:1",
                "[::1]:7403"
            ]
        );
    }

    #[test]
    fn endpoint_error_names_value() {
        let error = parse_endpoint("garbage").expect_err("no port");
        assert_eq!(
            error,
            "endpoint \"garbage\" has no port; expected host:port such as 127.0.0.1:7401"
        );
    }

    #[test]
    fn import_failed_out_parses() {
        let cli = parse(&["import", "f.tsv", "--failed-out", "failed.tsv"]).expect("valid");
        match cli.command {
            Command::Import(import) => {
                assert_eq!(import.failed_out, Some(PathBuf::from("failed.tsv")));
            }
            other => panic!("expected import, got {other:?}"),
        }
    }

    #[test]
    fn decommission_parses_id_and_address() {
        let cli = parse(&["decommission", "00000000000000ab"]).expect("valid id");
        match cli.command {
            Command::Decommission(args) => assert_eq!(args.node, NodeRef::Id(0xab)),
            other => panic!("expected decommission, got {other:?}"),
        }
        let cli = parse(&["decommission", "127.0.0.1:7802"]).expect("valid address");
        match cli.command {
            Command::Decommission(args) => {
                assert_eq!(args.node, NodeRef::Address("127.0.0.1:7802".into()))
            }
            other => panic!("expected decommission, got {other:?}"),
        }
    }

    #[test]
    fn remove_and_mark_down_parse_node() {
        let cli = parse(&["remove", " 0x1F "]).expect("valid id");
        match cli.command {
            Command::Remove(args) => assert_eq!(args.node, NodeRef::Id(0x1f)),
            other => panic!("expected remove, got {other:?}"),
        }
        let cli = parse(&["mark-down", "db.example:7403", "--json"]).expect("valid address");
        assert!(cli.json);
        match cli.command {
            Command::MarkDown(args) => {
                assert_eq!(args.node, NodeRef::Address("db.example:7403".into()))
            }
            other => panic!("expected mark-down, got {other:?}"),
        }
    }

    #[test]
    fn membership_commands_need_node() {
        for command in ["decommission", "remove", "mark-down"] {
            let error = parse(&[command]).expect_err("NODE is required");
            assert_eq!(error.exit_code(), 2, "{command}");
        }
    }

    #[test]
    fn invalid_node_is_usage_error() {
        for (value, expected) in [
            ("node-7", "neither a node id"),
            ("00000000000000001", "neither a node id"),
            ("", "neither a node id"),
            ("host:0", "invalid port"),
            ("http://127.0.0.1:7401", "has a scheme"),
        ] {
            for command in ["decommission", "remove", "mark-down"] {
                let error = parse(&[command, value]).expect_err(value);
                assert_eq!(error.exit_code(), 2, "{command} {value:?}");
                let text = error.to_string();
                assert!(text.contains(expected), "{command} {value:?}: {text}");
            }
        }
    }

    #[test]
    fn node_ref_displays_as_given() {
        assert_eq!(NodeRef::Id(0xab).to_string(), "00000000000000ab");
        assert_eq!(
            NodeRef::Address("127.0.0.1:7401".into()).to_string(),
            "127.0.0.1:7401"
        );
    }

    #[test]
    fn positional_arguments_have_help() {
        let mut command = Cli::command();
        command.build();
        for subcommand in command.get_subcommands() {
            for argument in subcommand.get_positionals() {
                assert!(
                    argument.get_help().is_some(),
                    "{} <{}> has no help text",
                    subcommand.get_name(),
                    argument.get_id()
                );
            }
        }
    }
}
