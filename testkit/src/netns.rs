//! One Linux network namespace per cluster node, joined by a bridge, so a test can pull
//! one node's cable and plug it back in (needs root and iproute2's `ip`).
//!
//! Node `i` lives in namespace `tars-<pid>-<seq>-n<i>` with address `10.77.<k>.<i+1>/24` on
//! a veth whose other end is a port of the bridge `tb<pid>-<seq>` (`10.77.<k>.254`) in the
//! root namespace, where the test process and its services run. Names carry the test
//! process's pid, so parallel runs never collide, and leftovers of an aborted run (whose
//! pid is gone) are removed by the next run; everything made here is removed on drop,
//! also when the test panics.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::nats_server::HarnessError;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The namespaces, veths and bridge of one cluster; removed on drop.
#[derive(Debug)]
pub struct Netns {
    bridge: String,
    namespaces: Vec<String>,
    /// The root-namespace end of each node's veth (the bridge port).
    ports: Vec<String>,
    subnet: u8,
    /// Nodes whose cable is pulled now.
    cut: Vec<usize>,
}

fn ip(args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        HarnessError(format!(
            "run `ip {}`: {e} (network namespaces need iproute2's `ip`)",
            args.join(" ")
        ))
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The owner pid in one of our names: `tars-<pid>-…` (namespaces, decimal) or
/// `tb<hex pid>-…` / `tv<hex pid>-…` (links).
fn owner_of(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix("tars-") {
        let pid = rest.split('-').next()?;
        return pid.parse().ok();
    }
    let rest = name
        .strip_prefix("tb")
        .or_else(|| name.strip_prefix("tv"))?;
    let (pid, seq) = rest.split_once('-')?;
    if seq
        .split('-')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        u32::from_str_radix(pid, 16).ok()
    } else {
        None
    }
}

/// Removes the namespaces and links that runs which have ended left behind (a run killed
/// before its drop ran).
fn remove_leftovers() {
    let mine = std::process::id();
    let stale = |name: &str| owner_of(name).is_some_and(|p| p != mine && !pid_alive(p));
    if let Ok(list) = ip(&["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if stale(ns) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            // `7: tv1a2b-0-1@if6: <…`
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if stale(name) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// A `10.77.<k>.0/24` that no address or route of the root namespace uses yet, starting
/// from one picked by pid.
fn free_subnet() -> Result<u8, HarnessError> {
    let used = format!(
        "{}\n{}",
        ip(&["-4", "-o", "addr", "show"])?,
        ip(&["-4", "route", "show", "table", "all"])?
    );
    let start = std::process::id() % 250;
    (0..250)
        .map(|d| ((start + d) % 250) as u8)
        .find(|k| !used.contains(&format!("10.77.{k}.")))
        .ok_or_else(|| HarnessError("no free 10.77.x.0/24 subnet".into()))
}

impl Netns {
    /// Makes `nodes` namespaces, each with a veth to a new bridge; fails (with what to do)
    /// when not run as root.
    pub fn create(nodes: usize) -> Result<Self, HarnessError> {
        ip(&["netns", "list"]).map_err(|e| {
            HarnessError(format!(
                "network namespaces are not available ({e}); run this test as root with iproute2"
            ))
        })?;
        remove_leftovers();
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut net = Self {
            bridge: format!("tb{pid:x}-{seq}"),
            namespaces: Vec::new(),
            ports: Vec::new(),
            subnet: free_subnet()?,
            cut: Vec::new(),
        };
        let root_only = |e: HarnessError| {
            HarnessError(format!(
                "{e}; making network namespaces and links needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
            ))
        };
        // Pushed as made, so a failure half-way removes what exists (drop).
        ip(&["link", "add", &net.bridge, "type", "bridge"]).map_err(root_only)?;
        let bridge_addr = format!("10.77.{}.254/24", net.subnet);
        ip(&["addr", "add", &bridge_addr, "dev", &net.bridge])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for i in 0..nodes {
            let ns = format!("tars-{pid}-{seq}-n{i}");
            ip(&["netns", "add", &ns]).map_err(root_only)?;
            net.namespaces.push(ns.clone());
            let port = format!("tv{pid:x}-{seq}-{i}");
            let inner = format!("tp{pid:x}-{seq}-{i}");
            ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ])?;
            net.ports.push(port.clone());
            ip(&["link", "set", &port, "master", &net.bridge, "up"])?;
            let addr = format!("{}/24", net.address(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Node `i`'s namespace, for `ip netns exec`.
    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// Node `i`'s address, reachable from the root namespace and from the other nodes.
    pub fn address(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 77, self.subnet, (i + 1) as u8))
    }

    /// Cuts node `i` off the network: its bridge port goes down (the other nodes and the
    /// root namespace can no longer reach it, nor it them), new connections from the root
    /// namespace to it fail at once (an `unreachable` route), and the root namespace's
    /// established TCP connections to it are reset (`ss -K`). The reset stands in for what
    /// a client's PING timeout (minutes by default) would find, so clients of this process
    /// fail over to the other nodes within seconds; the other nodes find out on their own.
    pub fn cut(&mut self, i: usize) -> Result<(), HarnessError> {
        let addr = self.address(i).to_string();
        ip(&["link", "set", &self.ports[i], "down"])?;
        ip(&["route", "add", "unreachable", &format!("{addr}/32")])?;
        self.cut.push(i);
        let out = Command::new("ss")
            .args(["-K", "-t", "dst", &addr])
            .output()
            .map_err(|e| HarnessError(format!("run `ss -K`: {e}")))?;
        let left = Command::new("ss")
            .args(["-H", "-t", "state", "established", "dst", &addr])
            .output()
            .map_err(|e| HarnessError(format!("run `ss`: {e}")))?;
        let left = String::from_utf8_lossy(&left.stdout);
        if !left.trim().is_empty() {
            return Err(HarnessError(format!(
                "`ss -K dst {addr}` left connections open (kernel without CONFIG_INET_DIAG_DESTROY?): {} {left}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Plugs node `i` back in.
    pub fn heal(&mut self, i: usize) -> Result<(), HarnessError> {
        let addr = self.address(i).to_string();
        if self.cut.contains(&i) {
            ip(&["route", "del", "unreachable", &format!("{addr}/32")])?;
            self.cut.retain(|c| *c != i);
        }
        ip(&["link", "set", &self.ports[i], "up"])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for &i in &self.cut {
            let _ = ip(&[
                "route",
                "del",
                "unreachable",
                &format!("{}/32", self.address(i)),
            ]);
        }
        // Deleting a namespace deletes the veth end in it, and with it the bridge port.
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        for port in &self.ports {
            let _ = ip(&["link", "del", port]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

#[cfg(test)]
mod tests {
    use super::owner_of;

    #[test]
    fn names_carry_their_owner() {
        assert_eq!(owner_of("tars-1234-0-n2"), Some(1234));
        assert_eq!(owner_of("tb4d2-0"), Some(0x4d2));
        assert_eq!(owner_of("tv4d2-1-2"), Some(0x4d2));
        assert_eq!(owner_of("tvbr0"), None);
        assert_eq!(owner_of("eth0"), None);
        assert_eq!(owner_of("tbx-0"), None);
    }
}
