//! Outbound NAT and hostPorts with nftables, in berth's own `inet` table per bridge (`berth_<bridge>`).
//!
//! The table has three base chains that berth rewrites whole at start (flush + add, one atomic `nft -f`
//! transaction, so a restart never duplicates them) and one regular chain, `hostports`, that holds the
//! DNAT rules of all pods. Each pod rule carries the comment `berth-pod:<pod id>`; teardown lists the chain
//! and deletes that pod's rules by handle. Every change is one `nft -f -` run: all of it applies or none.
//!
//! hostPort traffic paths, after the CNI portmap plugin:
//! - from elsewhere to a host address: `prerouting` DNATs it to the pod.
//! - from the host itself, including to 127.0.0.1: `output` DNATs it; a 127.0.0.0/8 source would be dropped
//!   as martian on the bridge, so the bridge has `route_localnet` set and `postrouting` masquerades it.
//! - from a pod (also to its own hostPort, through hairpin mode on its bridge port): DNAT in `prerouting`,
//!   then masquerade, or the answer would go straight back pod-to-pod around the DNAT.

use std::fmt::Write as _;
use std::net::IpAddr;

use berth_core::plugin::network::{PortMapping, Protocol};
use tokio::io::AsyncWriteExt;

use crate::cidr::Cidr;

pub const COMMENT_PREFIX: &str = "berth-pod:";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft {action} failed: {stderr}")]
    Failed { action: String, stderr: String },
    #[error("nft -j output is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("hostPort {host_ip}:{host_port}: {reason}")]
    BadMapping {
        host_ip: String,
        host_port: u16,
        reason: &'static str,
    },
}

/// A rule of a pod in the `hostports` chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRule {
    pub handle: u64,
    pub pod_id: String,
}

/// berth's nftables table for one bridge.
#[derive(Clone, Debug)]
pub struct Firewall {
    pub table: String,
    ranges: Vec<Cidr>,
    masquerade: bool,
}

impl Firewall {
    pub fn new(bridge: &str, ranges: Vec<Cidr>, masquerade: bool) -> Firewall {
        let safe: String = bridge
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Firewall {
            table: format!("berth_{safe}"),
            ranges,
            masquerade,
        }
    }

    /// The table and base chains, rewritten whole; `hostports` is created if missing and kept.
    pub fn base_script(&self) -> String {
        let t = format!("inet {}", self.table);
        let mut s = String::new();
        let _ = writeln!(s, "add table {t}");
        let _ = writeln!(s, "add chain {t} hostports");
        for (chain, hook, prio) in [
            ("prerouting", "prerouting", -100),
            ("output", "output", -100),
            ("postrouting", "postrouting", 100),
        ] {
            let _ = writeln!(
                s,
                "add chain {t} {chain} {{ type nat hook {hook} priority {prio}; policy accept; }}"
            );
            let _ = writeln!(s, "flush chain {t} {chain}");
        }
        let _ = writeln!(s, "add rule {t} prerouting fib daddr type local jump hostports");
        let _ = writeln!(s, "add rule {t} output fib daddr type local jump hostports");
        for c in &self.ranges {
            let ip = if c.is_ipv4() { "ip" } else { "ip6" };
            if self.masquerade {
                let _ = writeln!(
                    s,
                    "add rule {t} postrouting {ip} saddr {c} {ip} daddr != {c} masquerade"
                );
            }
            let sources = if c.is_ipv4() {
                format!("{{ 127.0.0.0/8, {c} }}")
            } else {
                c.to_string()
            };
            let _ = writeln!(
                s,
                "add rule {t} postrouting ct status dnat {ip} saddr {sources} {ip} daddr {c} masquerade"
            );
        }
        s
    }

    /// The DNAT rules of one pod. `ips` are the pod's addresses; a mapping gets a rule per family the pod
    /// has an address in (only the host IP's family when one is given).
    pub fn pod_script(&self, pod_id: &str, ports: &[PortMapping], ips: &[IpAddr]) -> Result<String, NftError> {
        let t = format!("inet {}", self.table);
        let mut s = String::new();
        for m in ports {
            let bad = |reason| NftError::BadMapping {
                host_ip: m.host_ip.clone(),
                host_port: m.host_port,
                reason,
            };
            if m.host_port == 0 {
                continue; // no hostPort asked: nothing to map
            }
            if m.container_port == 0 {
                return Err(bad("container port 0"));
            }
            let host_ip: Option<IpAddr> = match m.host_ip.trim() {
                "" => None,
                h => Some(h.parse().map_err(|_| bad("host IP is not an IP address"))?),
            };
            let proto = match m.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            };
            let mut mapped = false;
            for pod_ip in ips {
                if host_ip.is_some_and(|h| h.is_ipv4() != pod_ip.is_ipv4()) {
                    continue;
                }
                let (family, ip, to) = match pod_ip {
                    IpAddr::V4(v4) => ("ipv4", "ip", format!("{v4}:{}", m.container_port)),
                    IpAddr::V6(v6) => ("ipv6", "ip6", format!("[{v6}]:{}", m.container_port)),
                };
                let daddr = match host_ip {
                    Some(h) if !h.is_unspecified() => format!("{ip} daddr {h} "),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "add rule {t} hostports meta nfproto {family} {daddr}{proto} dport {} dnat {ip} to {to} \
                     comment \"{COMMENT_PREFIX}{pod_id}\"",
                    m.host_port
                );
                mapped = true;
            }
            if !mapped {
                return Err(bad("the pod has no address of the host IP's family"));
            }
        }
        Ok(s)
    }

    pub fn delete_script(&self, rules: &[PodRule]) -> String {
        rules
            .iter()
            .map(|r| format!("delete rule inet {} hostports handle {}\n", self.table, r.handle))
            .collect()
    }

    /// Runs a script as one transaction.
    pub async fn apply(&self, action: &str, script: &str) -> Result<(), NftError> {
        if script.is_empty() {
            return Ok(());
        }
        let output = run_nft(&["-f", "-"], Some(script)).await?;
        if output.status.success() {
            Ok(())
        } else {
            Err(NftError::Failed {
                action: action.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }

    /// The pod rules in `hostports`; none when the table does not exist.
    pub async fn pod_rules(&self) -> Result<Vec<PodRule>, NftError> {
        let output = run_nft(&["-j", "list", "chain", "inet", &self.table, "hostports"], None).await?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            // nft reports a missing table or chain only through the kernel's ENOENT text.
            if stderr.contains("No such file or directory") {
                return Ok(Vec::new());
            }
            return Err(NftError::Failed {
                action: "list hostports".into(),
                stderr,
            });
        }
        parse_pod_rules(&output.stdout)
    }
}

async fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<std::process::Output, NftError> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(NftError::Spawn)?;
    }
    child.wait_with_output().await.map_err(NftError::Spawn)
}

fn parse_pod_rules(json: &[u8]) -> Result<Vec<PodRule>, NftError> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(NftError::Json)?;
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    Ok(items
        .iter()
        .filter_map(|item| {
            let rule = item.get("rule")?;
            let pod_id = rule["comment"].as_str()?.strip_prefix(COMMENT_PREFIX)?;
            Some(PodRule {
                handle: rule["handle"].as_u64()?,
                pod_id: pod_id.to_string(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw() -> Firewall {
        Firewall::new(
            "br-x.1",
            vec!["10.5.0.0/24".parse().unwrap(), "fd00:5::/64".parse().unwrap()],
            true,
        )
    }

    #[test]
    fn base_script_names_its_table_and_is_rewritable() {
        let s = fw().base_script();
        assert!(s.starts_with("add table inet berth_br_x_1\n"), "{s}");
        assert!(s.contains("flush chain inet berth_br_x_1 postrouting"));
        assert!(s.contains("ip saddr 10.5.0.0/24 ip daddr != 10.5.0.0/24 masquerade"));
        assert!(s.contains("ct status dnat ip saddr { 127.0.0.0/8, 10.5.0.0/24 } ip daddr 10.5.0.0/24 masquerade"));
        assert!(s.contains("ip6 saddr fd00:5::/64 ip6 daddr != fd00:5::/64 masquerade"));
        assert!(!s.contains("flush chain inet berth_br_x_1 hostports"));
        let no_masq = Firewall::new("b", vec!["10.5.0.0/24".parse().unwrap()], false).base_script();
        assert!(!no_masq.contains("daddr != "));
    }

    #[test]
    fn pod_rules_per_family_and_host_ip() {
        let ips: Vec<IpAddr> = vec!["10.5.0.2".parse().unwrap(), "fd00:5::2".parse().unwrap()];
        let ports = vec![
            PortMapping {
                protocol: Protocol::Tcp,
                container_port: 80,
                host_port: 8080,
                host_ip: String::new(),
            },
            PortMapping {
                protocol: Protocol::Udp,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            },
            PortMapping {
                protocol: Protocol::Tcp,
                container_port: 81,
                host_port: 0,
                host_ip: String::new(),
            },
        ];
        let s = fw().pod_script("p1", &ports, &ips).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "{s}");
        assert!(lines[0].contains("meta nfproto ipv4 tcp dport 8080 dnat ip to 10.5.0.2:80 comment \"berth-pod:p1\""));
        assert!(lines[1].contains("meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00:5::2]:80"));
        assert!(lines[2].contains("ip daddr 127.0.0.1 udp dport 5353 dnat ip to 10.5.0.2:53"));
        let v6_host = PortMapping {
            host_ip: "::1".into(),
            ..ports[0].clone()
        };
        assert!(fw().pod_script("p1", &[v6_host], &ips[..1]).is_err());
    }

    #[test]
    fn parses_listed_rules() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "inet", "table": "t", "name": "hostports", "handle": 1}},
            {"rule": {"family": "inet", "table": "t", "chain": "hostports", "handle": 7,
                      "comment": "berth-pod:abc", "expr": []}},
            {"rule": {"family": "inet", "table": "t", "chain": "hostports", "handle": 9, "expr": []}}]}"#;
        assert_eq!(
            parse_pod_rules(json).unwrap(),
            vec![PodRule {
                handle: 7,
                pod_id: "abc".into()
            }]
        );
        let f = fw();
        assert_eq!(
            f.delete_script(&parse_pod_rules(json).unwrap()),
            "delete rule inet berth_br_x_1 hostports handle 7\n"
        );
    }
}
