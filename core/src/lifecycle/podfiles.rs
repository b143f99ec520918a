//! The files every container of a pod sees: /etc/hosts, /etc/hostname, /etc/resolv.conf.

use std::path::Path;

use super::pod::DnsConfig;

/// `/etc/hosts`: the host's for host-network pods, else localhost entries and the pod's own name.
pub fn hosts(host_network: bool, hostname: &str, ips: &[String]) -> String {
    if host_network && let Ok(text) = std::fs::read_to_string("/etc/hosts") {
        return text;
    }
    let mut s = String::from(
        "# Kubernetes-managed hosts file (berth).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// `/etc/resolv.conf`: from the pod's DNSConfig, or the host's when the pod gives none (as containerd does).
pub fn resolv_conf(dns: &DnsConfig) -> String {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    }
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

/// Writes the three files into `dir` (created 0755), each through a temp file and rename.
pub fn write_all(dir: &Path, hosts: &str, hostname: &str, resolv: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in [
        ("hosts", hosts.to_string()),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv.to_string()),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_name_the_pod() {
        let h = hosts(false, "web-0", &["10.88.0.5".into()]);
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.5\tweb-0\n"));
    }
}
