//! Link, address and route work over rtnetlink: the bridge, the veth pairs, and the pod side of a veth.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::cidr::Cidr;

/// A netlink request that failed, with what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct LinkError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

impl LinkError {
    fn new(what: impl Into<String>, e: rtnetlink::Error) -> LinkError {
        let source = match e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            other => std::io::Error::other(other.to_string()),
        };
        LinkError {
            what: what.into(),
            source,
        }
    }

    fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

const ENODEV: i32 = nix::libc::ENODEV;
const EEXIST: i32 = nix::libc::EEXIST;

/// The index of the link named `name`, or `None` when there is none.
pub async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(e) => {
            let e = LinkError::new(format!("look up link {name}"), e);
            if e.errno() == Some(ENODEV) { Ok(None) } else { Err(e) }
        }
    }
}

/// What the node bridge must look like.
pub struct BridgeSpec<'a> {
    pub name: &'a str,
    pub mtu: u32,
    /// Gateway address and the pod network it serves, one per family.
    pub gateways: &'a [Cidr],
}

/// Creates the bridge when missing (reusing it when present), gives it the gateway addresses it lacks and
/// brings it up. Returns its index.
pub async fn ensure_bridge(h: &Handle, spec: &BridgeSpec<'_>) -> Result<u32, LinkError> {
    let name = spec.name;
    let index = match index_of(h, name).await? {
        Some(i) => i,
        None => {
            let mut b = LinkBridge::new(name).mtu(spec.mtu);
            if let Some(mac) = spec.gateways.iter().find_map(|c| stable_mac(c.gateway())) {
                // A fixed MAC: otherwise the bridge takes the lowest MAC of its ports, and the gateway's MAC
                // in every pod's neighbour cache goes stale as pods come and go.
                b = b.address(mac.to_vec());
            }
            match h.link().add(b.build()).execute().await {
                Ok(()) => {}
                Err(e) => {
                    let e = LinkError::new(format!("create bridge {name}"), e);
                    if e.errno() != Some(EEXIST) {
                        return Err(e);
                    }
                }
            }
            index_of(h, name).await?.ok_or_else(|| LinkError {
                what: format!("bridge {name} vanished after creation"),
                source: std::io::Error::from_raw_os_error(ENODEV),
            })?
        }
    };
    let present: Vec<IpAddr> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| LinkError::new(format!("list addresses of {name}"), e))?
        .into_iter()
        .flat_map(|m| m.attributes)
        .filter_map(|a| match a {
            AddressAttribute::Address(ip) => Some(ip),
            _ => None,
        })
        .collect();
    for cidr in spec.gateways {
        let gw = cidr.gateway();
        if present.contains(&gw) {
            continue;
        }
        add_address(h, index, gw, cidr.prefix())
            .await
            .map_err(|e| LinkError::new(format!("add {gw}/{} to {name}", cidr.prefix()), e))?;
    }
    set_up(h, index)
        .await
        .map_err(|e| LinkError::new(format!("bring {name} up"), e))?;
    Ok(index)
}

/// `02:b3` + the IPv4 gateway: locally administered, unicast, and the same on every start.
fn stable_mac(gw: IpAddr) -> Option<[u8; 6]> {
    match gw {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Some([0x02, 0xb3, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(_) => None,
    }
}

async fn add_address(h: &Handle, index: u32, ip: IpAddr, prefix: u8) -> Result<(), rtnetlink::Error> {
    let mut req = h.address().add(index, ip, prefix).replace();
    if ip.is_ipv6() {
        // No duplicate address detection: the address is ours alone, and DAD would leave it tentative
        // (unusable) for a second or more after setup returns.
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await
}

async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// Creates the veth pair in one request: `host` attached to the bridge and up, its peer created directly
/// inside the pod netns as `pod_ifname`. Returns the index of the host end.
pub async fn create_veth(
    h: &Handle,
    host: &str,
    pod_ifname: &str,
    pod_netns: BorrowedFd<'_>,
    bridge_index: u32,
    mtu: u32,
) -> Result<u32, LinkError> {
    let what = || format!("create veth {host} (peer {pod_ifname} in the pod netns)");
    let peer = LinkUnspec::new_with_name(pod_ifname)
        .mtu(mtu)
        .setns_by_fd(pod_netns.as_raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host.to_string())
        .mtu(mtu)
        .controller(bridge_index)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| LinkError::new(what(), e))?;
    let index = index_of(h, host).await?.ok_or_else(|| LinkError {
        what: what(),
        source: std::io::Error::from_raw_os_error(ENODEV),
    })?;
    // Hairpin: a pod reaching its own hostPort has its packets sent back out of the port they came in by.
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(|e| LinkError::new(format!("set hairpin mode on {host}"), e))?;
    Ok(index)
}

/// Deletes the link named `name` (for a veth, both ends). Returns whether it existed.
pub async fn delete(h: &Handle, name: &str) -> Result<bool, LinkError> {
    match h
        .link()
        .del_with_message(LinkUnspec::new_with_name(name).build())
        .execute()
        .await
    {
        Ok(()) => Ok(true),
        Err(e) => {
            let e = LinkError::new(format!("delete link {name}"), e);
            if e.errno() == Some(ENODEV) { Ok(false) } else { Err(e) }
        }
    }
}

/// The names of the links attached to the bridge at `bridge_index`.
pub async fn ports_of(h: &Handle, bridge_index: u32) -> Result<Vec<String>, LinkError> {
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| LinkError::new("list links", e))?;
    Ok(links
        .into_iter()
        .filter(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge_index))
        })
        .filter_map(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        })
        .collect())
}

/// Inside the pod netns (a handle from [`crate::netns::netlink_in`]): loopback up, the addresses on
/// `ifname`, `ifname` up, and a default route per family via that family's gateway.
pub async fn configure_pod(pod: &Handle, ifname: &str, addrs: &[(IpAddr, Cidr)]) -> Result<(), LinkError> {
    let missing = |n: &str| LinkError {
        what: format!("no {n} in the pod netns"),
        source: std::io::Error::from_raw_os_error(ENODEV),
    };
    let lo = index_of(pod, "lo").await?.ok_or_else(|| missing("lo"))?;
    set_up(pod, lo).await.map_err(|e| LinkError::new("bring lo up", e))?;
    let index = index_of(pod, ifname).await?.ok_or_else(|| missing(ifname))?;
    for (ip, cidr) in addrs {
        add_address(pod, index, *ip, cidr.prefix())
            .await
            .map_err(|e| LinkError::new(format!("add {ip}/{} to {ifname}", cidr.prefix()), e))?;
    }
    set_up(pod, index)
        .await
        .map_err(|e| LinkError::new(format!("bring {ifname} up"), e))?;
    for (_, cidr) in addrs {
        let route = match cidr.gateway() {
            IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
        };
        pod.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| LinkError::new(format!("add the default route via {}", cidr.gateway()), e))?;
    }
    Ok(())
}
