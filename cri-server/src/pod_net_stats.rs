//! Pod network counters for PodSandboxStats: the interfaces of the pod's network namespace, read from
//! `/proc/thread-self/net/dev` by a throwaway thread that entered that namespace (never an async worker: a
//! thread's netns sticks). `/sys/class/net` would show the netns sysfs was mounted in, not the thread's.

use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// One interface's counters (`/proc/net/dev` columns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets rx_errs … (8 rx) tx_bytes
/// tx_packets tx_errs …`. Loopback is left out (kubelet reports the pod's external interfaces).
pub fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            let n: Vec<u64> = rest.split_whitespace().map(|x| x.parse().ok()).collect::<Option<_>>()?;
            (n.len() >= 11 && name != "lo").then(|| InterfaceCounters {
                name: name.to_string(),
                rx_bytes: n[0],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_errors: n[10],
            })
        })
        .collect()
}

/// The counters of every interface in the network namespace pinned at `netns`.
pub async fn read(netns: &Path) -> std::io::Result<Vec<InterfaceCounters>> {
    let netns: PathBuf = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-netstats".into())
        .spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(&netns)?;
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                std::fs::read_to_string("/proc/thread-self/net/dev")
            })();
            let _ = tx.send(result.map(|t| parse_net_dev(&t)));
        })?;
    rx.await
        .unwrap_or_else(|_| Err(std::io::Error::other("the netns stats thread died")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     560       8    0    0    0     0          0         0      560       8    0    0    0     0       0          0
  eth0:    1502      19    1    0    0     0          0         0     2214      21    3    0    0     0       0          0
";
        assert_eq!(
            parse_net_dev(text),
            vec![InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 1502,
                rx_errors: 1,
                tx_bytes: 2214,
                tx_errors: 3,
            }]
        );
    }

    #[tokio::test]
    async fn reads_its_own_netns() {
        // The host's own namespace: the same as the process's /proc/net/dev, lo excluded.
        let got = read(Path::new("/proc/self/ns/net")).await.unwrap();
        assert!(got.iter().all(|i| i.name != "lo"), "{got:?}");
        let text = std::fs::read_to_string("/proc/self/net/dev").unwrap();
        let names: Vec<String> = parse_net_dev(&text).into_iter().map(|i| i.name).collect();
        assert_eq!(got.into_iter().map(|i| i.name).collect::<Vec<_>>(), names);
    }
}
