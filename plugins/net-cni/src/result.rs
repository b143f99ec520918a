//! Reading a CNI result: the pod's addresses.

use std::net::IpAddr;

use serde_json::Value;

/// The pod's addresses in a result, IPv4 first (the primary pod IP, as containerd picks it), in result
/// order within a family. Only addresses on interfaces inside the sandbox (or on no named interface)
/// count, and of those the ones on `ifname` when it has any. Reads results of spec 0.3.0 to 1.0.0, and
/// the `ip4`/`ip6` of 0.1/0.2.
pub fn pod_ips(result: &Value, ifname: &str) -> Vec<IpAddr> {
    let interfaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let mut entries: Vec<(IpAddr, Option<bool>)> = Vec::new();
    for ip in result["ips"].as_array().into_iter().flatten() {
        let Some(addr) = ip["address"].as_str().and_then(parse_addr) else {
            continue;
        };
        let iface = ip["interface"].as_u64().and_then(|i| interfaces.get(i as usize));
        match iface {
            Some(i) if i["sandbox"].as_str().unwrap_or_default().is_empty() => continue, // a host-side address
            Some(i) => entries.push((addr, Some(i["name"].as_str() == Some(ifname)))),
            None => entries.push((addr, None)),
        }
    }
    for legacy in ["ip4", "ip6"] {
        if let Some(addr) = result[legacy]["ip"].as_str().and_then(parse_addr) {
            entries.push((addr, None));
        }
    }
    let on_ifname = entries.iter().any(|(_, on)| *on == Some(true));
    let mut ips: Vec<IpAddr> = entries
        .into_iter()
        .filter(|(_, on)| !on_ifname || *on != Some(false))
        .map(|(ip, _)| ip)
        .collect();
    ips.sort_by_key(|ip| !ip.is_ipv4());
    ips.dedup();
    ips
}

fn parse_addr(cidr: &str) -> Option<IpAddr> {
    cidr.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1_0_result_from_bridge() {
        let r = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"},
                {"name": "lo", "mac": "00", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
                {"address": "127.0.0.1/8", "interface": 3},
                {"address": "10.1.0.1/24", "interface": 0}
            ]
        });
        let ips: Vec<String> = pod_ips(&r, "eth0").iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["10.1.0.5", "fd00::5"]);
    }

    #[test]
    fn older_results() {
        let r = serde_json::json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.2.0.9/16"}]});
        assert_eq!(pod_ips(&r, "eth0"), vec!["10.2.0.9".parse::<IpAddr>().unwrap()]);
        let r = serde_json::json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.3.0.2/24"}});
        assert_eq!(pod_ips(&r, "eth0"), vec!["10.3.0.2".parse::<IpAddr>().unwrap()]);
        assert!(pod_ips(&serde_json::json!({}), "eth0").is_empty());
    }
}
