//! Host-local IPAM in the metadata store.
//!
//! An allocation is one record of `Table::IpAllocations`: key `<network>/<ip>`, value the pod id. The
//! allocation and the read of what is taken happen in one store transaction, so two pods never get the same
//! address, and a restarted daemon sees every address still held. Like CNI's host-local, addresses are handed
//! out round-robin from the last one given (kept in `Table::Plugins` under `<network>/last/<cidr>`), so a
//! released address is not reused at once while its old owner's packets may still be in flight.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use berth_core::store::{Store, StoreError, Table};

use crate::cidr::Cidr;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {cidr} (network {network})")]
    Exhausted { network: String, cidr: Cidr },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The allocator of one network: its name (the store key prefix) and its ranges, one per IP family.
#[derive(Clone)]
pub struct Ipam {
    store: Store,
    network: String,
    ranges: Vec<Cidr>,
}

impl Ipam {
    pub fn new(store: Store, network: impl Into<String>, ranges: Vec<Cidr>) -> Ipam {
        Ipam {
            store,
            network: network.into(),
            ranges,
        }
    }

    fn prefix(&self) -> String {
        format!("{}/", self.network)
    }

    /// One address per range for `pod_id`, in range order. A pod that already holds addresses (a retried
    /// setup) gets the same ones back.
    pub fn allocate(&self, pod_id: &str) -> Result<Vec<(IpAddr, Cidr)>, IpamError> {
        let prefix = self.prefix();
        self.store.write(|tx| {
            let taken: Vec<(IpAddr, String)> = tx
                .list::<String>(Table::IpAllocations)?
                .into_iter()
                .filter_map(|(k, pod)| k.strip_prefix(&prefix)?.parse().ok().map(|ip| (ip, pod)))
                .collect();
            let used: HashSet<IpAddr> = taken.iter().map(|(ip, _)| *ip).collect();
            let mut out = Vec::new();
            for range in &self.ranges {
                if let Some((ip, _)) = taken.iter().find(|(ip, p)| p == pod_id && range.contains(*ip)) {
                    out.push((*ip, *range));
                    continue;
                }
                let last_key = format!("{}last/{}", prefix, range);
                let last: Option<IpAddr> = tx.get(Table::Plugins, &last_key)?;
                let Some(ip) = pick(range, &used, last) else {
                    return Ok(Err(IpamError::Exhausted {
                        network: self.network.clone(),
                        cidr: *range,
                    }));
                };
                tx.put(Table::IpAllocations, &format!("{prefix}{ip}"), pod_id)?;
                tx.put(Table::Plugins, &last_key, &ip)?;
                out.push((ip, *range));
            }
            Ok(Ok(out))
        })?
    }

    /// Releases every address `pod_id` holds in this network; returns them. Releasing nothing is fine.
    pub fn release(&self, pod_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let prefix = self.prefix();
        Ok(self.store.write(|tx| {
            let mine: Vec<String> = tx
                .list::<String>(Table::IpAllocations)?
                .into_iter()
                .filter(|(k, pod)| pod == pod_id && k.starts_with(&prefix))
                .map(|(k, _)| k)
                .collect();
            let mut released = Vec::new();
            for key in mine {
                tx.delete(Table::IpAllocations, &key)?;
                if let Ok(ip) = key[prefix.len()..].parse() {
                    released.push(ip);
                }
            }
            Ok(released)
        })?)
    }

    /// The addresses a pod holds, in range order.
    pub fn addresses_of(&self, pod_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut ips: Vec<IpAddr> = self
            .allocations()?
            .into_iter()
            .filter(|(_, pod)| pod == pod_id)
            .map(|(ip, _)| ip)
            .collect();
        ips.sort_by_key(|ip| self.ranges.iter().position(|r| r.contains(*ip)));
        Ok(ips)
    }

    /// Every allocation of this network: (address, pod id).
    pub fn allocations(&self) -> Result<Vec<(IpAddr, String)>, IpamError> {
        let prefix = self.prefix();
        Ok(self
            .store
            .list::<String>(Table::IpAllocations)?
            .into_iter()
            .filter_map(|(k, pod)| k.strip_prefix(&prefix)?.parse().ok().map(|ip| (ip, pod)))
            .collect())
    }

    /// The pods holding addresses in this network.
    pub fn pods(&self) -> Result<BTreeSet<String>, IpamError> {
        Ok(self.allocations()?.into_iter().map(|(_, pod)| pod).collect())
    }
}

/// The next free address after `last`, wrapping around once; `None` when the range is full.
fn pick(range: &Cidr, used: &HashSet<IpAddr>, last: Option<IpAddr>) -> Option<IpAddr> {
    let (first, end) = range.pod_offsets();
    let span = end - first + 1; // ≥ 1, checked when the CIDR was parsed
    let start = match last.and_then(|ip| range.offset(ip)) {
        Some(o) if (first..end).contains(&o) => o + 1,
        _ => first,
    };
    // A candidate is free unless it is in `used`, so at most used.len() + 1 probes find one if any is free.
    let probes = span.min(used.len() as u128 + 1);
    (0..probes)
        .map(|i| first + (start - first + i) % span)
        .filter_map(|o| range.nth(o))
        .find(|ip| !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &tempfile::TempDir, ranges: &[&str]) -> Ipam {
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        Ipam::new(store, "bridge:t", ranges.iter().map(|r| r.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hands_out_round_robin_and_reuses_for_the_same_pod() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(&dir, &["10.1.0.0/29"]);
        assert_eq!(ipam.allocate("a").unwrap()[0].0, ip("10.1.0.2"));
        assert_eq!(ipam.allocate("a").unwrap()[0].0, ip("10.1.0.2"));
        assert_eq!(ipam.allocate("b").unwrap()[0].0, ip("10.1.0.3"));
        assert_eq!(ipam.release("a").unwrap(), vec![ip("10.1.0.2")]);
        assert!(ipam.release("a").unwrap().is_empty());
        // Not the freed .2 at once: round robin goes on.
        assert_eq!(ipam.allocate("c").unwrap()[0].0, ip("10.1.0.4"));
        for p in ["d", "e", "f"] {
            ipam.allocate(p).unwrap();
        }
        // .2 .. .6 usable (.7 is broadcast): wraps to the freed .2, then is full.
        assert_eq!(ipam.addresses_of("f").unwrap(), vec![ip("10.1.0.2")]);
        assert!(matches!(ipam.allocate("g"), Err(IpamError::Exhausted { .. })));
        assert_eq!(ipam.pods().unwrap().len(), 5);
    }

    #[test]
    fn survives_a_restart_and_is_per_network() {
        let dir = tempfile::tempdir().unwrap();
        let first = ipam(&dir, &["10.1.0.0/24", "fd00:1::/64"]).allocate("a").unwrap();
        assert_eq!(first[0].0, ip("10.1.0.2"));
        assert_eq!(first[1].0, ip("fd00:1::2"));
        let again = ipam(&dir, &["10.1.0.0/24", "fd00:1::/64"]);
        assert_eq!(again.allocate("b").unwrap()[0].0, ip("10.1.0.3"));
        assert_eq!(again.addresses_of("a").unwrap(), vec![ip("10.1.0.2"), ip("fd00:1::2")]);
        let other = Ipam::new(again.store.clone(), "bridge:u", vec!["10.1.0.0/24".parse().unwrap()]);
        assert_eq!(other.allocate("x").unwrap()[0].0, ip("10.1.0.2"));
        assert!(other.release("a").unwrap().is_empty());
        assert_eq!(again.addresses_of("a").unwrap().len(), 2);
    }
}
