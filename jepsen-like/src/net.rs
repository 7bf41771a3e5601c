//! Network namespaces, a bridge and nftables rules for network partitions.
//!
//! Layout of a run (root on Linux with `ip` and `nft` only): a bridge in the
//! harness's namespace has the address `<subnet>.1/24`, and node `i` runs in its own
//! namespace with `<subnet>.(10 + i)/24` on a veth pair whose outer end is
//! attached to the bridge. The harness's clients reach every node from the
//! bridge address. Names contain the harness PID and a random suffix, and
//! the /24 is chosen among 10.0.0.0/8 subnets that overlap no route and no
//! address on the machine, so two runs on one machine cannot clash.
//!
//! A partition is a set of nftables drop rules inside each node namespace
//! (table `inet kvjepsen`): input from and output to the peers that node
//! must not reach. The bridge address is never dropped, so clients still
//! reach every node, as Dynamo clients do during a partition between
//! replicas.
//!
//! Invariants: every command targets only the bridge, veths and namespaces
//! this run created. [`Network::teardown`] (also run on drop) deletes all
//! of them and logs each failure; a deleted namespace takes its rules and
//! its veth end with it.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Name of the nftables table the harness creates in each node namespace.
const NFT_TABLE: &str = "kvjepsen";

/// Port every node listens on inside its namespace.
pub const NODE_PORT: u16 = 7401;

/// Errors of network setup and fault injection.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot run {command}: {source}; install iproute2 and nftables")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed with {status}: {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("no free /24 subnet in 10.0.0.0/8 after {attempts} attempts; the routes and addresses of this machine cover them")]
    NoFreeSubnet { attempts: u32 },
    #[error("node n{node} is not part of this run's network of {nodes} nodes")]
    UnknownNode { node: usize, nodes: usize },
}

/// Returns why partitions are unavailable on this machine, or `None` when
/// they are available: Linux, root, `ip` and `nft` on the PATH, and a
/// probe namespace can be created and deleted.
pub fn partitions_unavailable_reason() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("network partitions need Linux network namespaces".into());
    }
    // SAFETY: geteuid(2) takes no arguments and always succeeds.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("the harness runs as user id {euid}, not root"));
    }
    for tool in ["ip", "nft"] {
        if which(tool).is_none() {
            return Some(format!("the {tool} command is not installed"));
        }
    }

    // Root in a container may still lack CAP_SYS_ADMIN, so try it once.
    let probe = format!(
        "kvp{}{:02x}",
        std::process::id() % 1_000_000,
        rand::random::<u8>()
    );
    if let Err(error) = run(&["ip", "netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {error}"));
    }
    if let Err(error) = run(&["ip", "netns", "del", &probe]) {
        tracing::error!(namespace = %probe, %error, "cannot delete the probe namespace");
    }
    None
}

/// Returns the path of `program` on the PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// An IPv4 prefix as shown by `ip -4 route` and `ip -4 addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub address: Ipv4Addr,
    pub length: u8,
}

impl Prefix {
    /// Parses `a.b.c.d/len` or a bare address (a /32).
    pub fn parse(text: &str) -> Option<Prefix> {
        let (address, length) = match text.split_once('/') {
            Some((address, length)) => (address, length.parse().ok()?),
            None => (text, 32),
        };
        if length > 32 {
            return None;
        }
        Some(Prefix {
            address: address.parse().ok()?,
            length,
        })
    }

    fn mask(self) -> u32 {
        if self.length == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.length))
        }
    }

    /// True when the two prefixes share at least one address.
    pub fn overlaps(self, other: Prefix) -> bool {
        let shorter = self.length.min(other.length);
        let mask = Prefix {
            address: self.address,
            length: shorter,
        }
        .mask();
        u32::from(self.address) & mask == u32::from(other.address) & mask
    }
}

/// Extracts every prefix from the output of `ip -4 route` and `ip -4 addr`.
/// A `default` route is skipped: it is the fallback, and a private subnet
/// with a more specific route wins over it.
pub fn used_prefixes(route_output: &str, addr_output: &str) -> Vec<Prefix> {
    let mut prefixes = Vec::new();
    for line in route_output.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first == "default" {
            continue;
        }
        // Route types such as "local" or "broadcast" come before the prefix.
        let word = line
            .split_whitespace()
            .find(|word| word.contains('.'))
            .unwrap_or("");
        if let Some(prefix) = Prefix::parse(word) {
            prefixes.push(prefix);
        }
    }
    for line in addr_output.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("inet") {
            if let Some(prefix) = words.next().and_then(Prefix::parse) {
                prefixes.push(prefix);
            }
        }
    }
    prefixes
}

/// Picks a 10.x.y.0/24 that overlaps none of `used`, trying `candidates`
/// (pairs of second and third octet) in order.
pub fn pick_subnet(
    used: &[Prefix],
    candidates: impl IntoIterator<Item = (u8, u8)>,
) -> Option<Ipv4Addr> {
    for (second, third) in candidates {
        let subnet = Prefix {
            address: Ipv4Addr::new(10, second, third, 0),
            length: 24,
        };
        if !used.iter().any(|prefix| prefix.overlaps(subnet)) {
            return Some(subnet.address);
        }
    }
    None
}

/// The bridge, veths and namespaces of one run.
pub struct Network {
    bridge: String,
    namespaces: Vec<String>,
    veths: Vec<String>,
    subnet: Ipv4Addr,
    torn_down: bool,
}

impl Network {
    /// Creates the bridge and one namespace per node, each with its address
    /// and an empty nftables table.
    pub fn create(nodes: usize) -> Result<Network, NetError> {
        let tag = format!(
            "{}{:02x}",
            std::process::id() % 1_000_000,
            rand::random::<u8>()
        );
        let route = run_output(&["ip", "-4", "route", "show", "table", "all"])?;
        let addr = run_output(&["ip", "-4", "addr"])?;
        let used = used_prefixes(&route, &addr);
        const ATTEMPTS: u32 = 200;
        let candidates: Vec<(u8, u8)> = (0..ATTEMPTS)
            .map(|_| (rand::random_range(128..=254u8), rand::random::<u8>()))
            .collect();
        let subnet =
            pick_subnet(&used, candidates).ok_or(NetError::NoFreeSubnet { attempts: ATTEMPTS })?;

        // A bridge name ("kvb", up to 6 PID digits, 2 hex digits) has at
        // most 11 bytes. Veth names add "n" and the node number, so they
        // stay within the 15-byte limit of Linux interface names.
        let mut network = Network {
            bridge: format!("kvb{tag}"),
            namespaces: Vec::new(),
            veths: Vec::new(),
            subnet,
            torn_down: false,
        };
        network.build(nodes, &tag)?;
        tracing::info!(bridge = %network.bridge, subnet = %format!("{subnet}/24"), nodes, "created the partition network");
        Ok(network)
    }

    fn build(&mut self, nodes: usize, tag: &str) -> Result<(), NetError> {
        let bridge = self.bridge.clone();
        let bridge_address = format!("{}/24", self.host(1));
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &bridge_address, "dev", &bridge])?;
        run(&["ip", "link", "set", &bridge, "up"])?;

        for node in 1..=nodes {
            let namespace = format!("kvn{tag}n{node}");
            let veth = format!("kvv{tag}n{node}");
            run(&["ip", "netns", "add", &namespace])?;
            self.namespaces.push(namespace.clone());
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &namespace,
            ])?;
            self.veths.push(veth.clone());
            run(&["ip", "link", "set", &veth, "master", &bridge])?;
            run(&["ip", "link", "set", &veth, "up"])?;
            let address = format!("{}/24", self.node_ip(node));
            run(&[
                "ip", "-n", &namespace, "addr", "add", &address, "dev", "eth0",
            ])?;
            run(&["ip", "-n", &namespace, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &namespace, "link", "set", "lo", "up"])?;
            let table = format!(
                "add table inet {NFT_TABLE}\n\
                 add chain inet {NFT_TABLE} input {{ type filter hook input priority 0; policy accept; }}\n\
                 add chain inet {NFT_TABLE} output {{ type filter hook output priority 0; policy accept; }}\n"
            );
            nft(&namespace, &table)?;
        }
        Ok(())
    }

    fn host(&self, last: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, last)
    }

    /// Address of node `node` (from 1).
    pub fn node_ip(&self, node: usize) -> Ipv4Addr {
        self.host(10 + node as u8)
    }

    /// Client address (`ip:port`) of node `node`.
    pub fn node_address(&self, node: usize) -> String {
        format!("{}:{NODE_PORT}", self.node_ip(node))
    }

    /// Namespace of node `node`.
    pub fn namespace(&self, node: usize) -> Option<&str> {
        self.namespaces
            .get(node.checked_sub(1)?)
            .map(String::as_str)
    }

    /// Returns the name of the run's bridge interface.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Replaces every node's rules: each node drops traffic from and to the
    /// nodes in `blocked[node - 1]`.
    pub fn apply(&self, blocked: &[BTreeSet<usize>]) -> Result<(), NetError> {
        for (index, peers) in blocked.iter().enumerate() {
            let node = index + 1;
            let namespace = self.namespace(node).ok_or(NetError::UnknownNode {
                node,
                nodes: self.namespaces.len(),
            })?;
            let mut script = format!(
                "flush chain inet {NFT_TABLE} input\nflush chain inet {NFT_TABLE} output\n"
            );
            if !peers.is_empty() {
                let mut addresses = Vec::new();
                for peer in peers {
                    if *peer == 0 || *peer > self.namespaces.len() {
                        return Err(NetError::UnknownNode {
                            node: *peer,
                            nodes: self.namespaces.len(),
                        });
                    }
                    addresses.push(self.node_ip(*peer).to_string());
                }
                let set = addresses.join(", ");
                script.push_str(&format!(
                    "add rule inet {NFT_TABLE} input ip saddr {{ {set} }} drop\n"
                ));
                script.push_str(&format!(
                    "add rule inet {NFT_TABLE} output ip daddr {{ {set} }} drop\n"
                ));
            }
            nft(namespace, &script)?;
        }
        Ok(())
    }

    /// Removes every drop rule.
    pub fn heal(&self) -> Result<(), NetError> {
        self.apply(&vec![BTreeSet::new(); self.namespaces.len()])
    }

    /// Deletes the namespaces (with their rules and veth ends), the veths
    /// left in the harness's namespace and the bridge. Logs failures and
    /// goes on, so one failure does not leave the rest behind.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for namespace in &self.namespaces {
            if let Err(error) = run(&["ip", "netns", "del", namespace]) {
                tracing::error!(%namespace, %error, "cannot delete the network namespace");
            }
        }
        for veth in &self.veths {
            // The outer end disappears with its peer; delete it only if a
            // failed setup left it behind.
            if interface_exists(veth) {
                if let Err(error) = run(&["ip", "link", "del", veth]) {
                    tracing::error!(%veth, %error, "cannot delete the veth");
                }
            }
        }
        if let Err(error) = run(&["ip", "link", "del", &self.bridge]) {
            tracing::error!(bridge = %self.bridge, %error, "cannot delete the bridge");
        }
        tracing::info!(bridge = %self.bridge, "deleted the partition network");
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn interface_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn run(args: &[&str]) -> Result<(), NetError> {
    run_output(args).map(|_| ())
}

fn run_output(args: &[&str]) -> Result<String, NetError> {
    let command = args.join(" ");
    let output = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(NetError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs an nft script inside `namespace`.
fn nft(namespace: &str, script: &str) -> Result<(), NetError> {
    let command = format!("ip netns exec {namespace} nft -f -");
    let mut child = Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| NetError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let output = child.wait_with_output().map_err(|source| NetError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(NetError::Failed {
            command: format!("{command} <<< {script:?}"),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_overlap_contains_and_disjoint() {
        let wide = Prefix::parse("10.0.0.0/8").expect("valid");
        let narrow = Prefix::parse("10.200.3.0/24").expect("valid");
        let other = Prefix::parse("192.168.1.0/24").expect("valid");
        assert!(wide.overlaps(narrow));
        assert!(narrow.overlaps(wide));
        assert!(!narrow.overlaps(other));
    }

    #[test]
    fn used_prefixes_reads_routes_and_addresses() {
        let routes = "default via 192.0.2.1 dev eth0\n192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2\nlocal 127.0.0.1 dev lo table local\n";
        let addrs =
            "1: lo\n    inet 127.0.0.1/8 scope host lo\n    inet 10.9.8.7/16 scope global eth1\n";
        let used = used_prefixes(routes, addrs);
        assert!(used.contains(&Prefix::parse("192.0.2.0/24").expect("valid")));
        assert!(used.contains(&Prefix::parse("127.0.0.1/32").expect("valid")));
        assert!(used.contains(&Prefix::parse("10.9.8.7/16").expect("valid")));
        assert_eq!(used.len(), 4, "{used:?}");
    }

    #[test]
    fn pick_subnet_skips_used_prefixes() {
        let used = vec![Prefix::parse("10.200.0.0/16").expect("valid")];
        let picked = pick_subnet(&used, [(200, 5), (201, 7)]);
        assert_eq!(picked, Some(Ipv4Addr::new(10, 201, 7, 0)));
        assert_eq!(pick_subnet(&used, [(200, 1)]), None);
    }
}
