//! An IP network in CIDR notation (`10.88.0.0/16`, `fd00:88::/64`), with the arithmetic IPAM needs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits cleared).
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not a usable CIDR: {reason}")]
pub struct CidrError {
    pub input: String,
    pub reason: &'static str,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let bits = bits_of(addr);
        if prefix > bits {
            return None;
        }
        let mask = mask(bits, prefix);
        Some(Cidr {
            network: from_u128(addr, to_u128(addr) & mask),
            prefix,
        })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && to_u128(ip) & mask(bits_of(ip), self.prefix) == to_u128(self.network)
    }

    /// The `n`th address of the network (0 is the network address itself), if inside it.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        let host_bits = bits_of(self.network) - self.prefix;
        if host_bits < 128 && n >> host_bits != 0 {
            return None;
        }
        Some(from_u128(self.network, to_u128(self.network) + n))
    }

    /// The offset of `ip` within the network, if inside it.
    pub fn offset(&self, ip: IpAddr) -> Option<u128> {
        self.contains(ip).then(|| to_u128(ip) - to_u128(self.network))
    }

    /// The gateway: the first address after the network address.
    pub fn gateway(&self) -> IpAddr {
        self.nth(1).unwrap_or(self.network)
    }

    /// The offsets pods may get: from 2 (after the gateway) to the last address before the IPv4 broadcast.
    pub fn pod_offsets(&self) -> (u128, u128) {
        let host_bits = u32::from(bits_of(self.network) - self.prefix);
        let size_minus_one = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let last = if self.is_ipv4() {
            size_minus_one.saturating_sub(1)
        } else {
            size_minus_one
        };
        (2, last)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = |reason| CidrError {
            input: s.to_string(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| err("missing /prefix"))?;
        let addr: IpAddr = addr.trim().parse().map_err(|_| err("bad address"))?;
        let prefix: u8 = prefix.trim().parse().map_err(|_| err("bad prefix length"))?;
        let cidr = Cidr::new(addr, prefix).ok_or_else(|| err("prefix longer than the address"))?;
        let (first, last) = cidr.pod_offsets();
        if last < first {
            return Err(err("too small for a gateway and a pod"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn bits_of(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn mask(bits: u8, prefix: u8) -> u128 {
    let all = if bits == 32 { u128::from(u32::MAX) } else { u128::MAX };
    let host_bits = u32::from(bits - prefix);
    if host_bits >= 128 {
        0
    } else {
        all & !((1u128 << host_bits) - 1)
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// An address of the same family as `like`; for IPv4 only the low 32 bits of `v` count.
fn from_u128(like: IpAddr, v: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let c: Cidr = "10.88.3.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.88.0.0/16");
        assert_eq!(c.gateway(), "10.88.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.pod_offsets(), (2, 65534));
        assert!(c.contains("10.88.255.254".parse().unwrap()));
        assert!(!c.contains("10.89.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(c.nth(65535), Some("10.88.255.255".parse().unwrap()));
        assert_eq!(c.nth(65536), None);
        assert_eq!(c.offset("10.88.1.0".parse().unwrap()), Some(256));
    }

    #[test]
    fn ipv6() {
        let c: Cidr = "fd00:88::5/64".parse().unwrap();
        assert_eq!(c.to_string(), "fd00:88::/64");
        assert_eq!(c.gateway(), "fd00:88::1".parse::<IpAddr>().unwrap());
        assert_eq!(c.pod_offsets(), (2, u128::from(u64::MAX)));
        assert_eq!(c.nth(2), Some("fd00:88::2".parse().unwrap()));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0.0/31", "10.0.0.0/32", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert!("10.0.0.0/30".parse::<Cidr>().is_ok());
    }
}
