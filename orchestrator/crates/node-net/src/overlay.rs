//! The VXLAN overlay (Flannel's vxlan mode), for nodes that do not share a
//! layer-2 network: the kernel's vxlan device, no userspace dataplane.
//!
//! One device per node ([`DEVICE`], VNI [`VNI`], UDP [`PORT`] as Flannel's,
//! `nolearning`, MTU = the underlay's − [`OVERHEAD`], local = this node's
//! InternalIP, its address the node's pod network address as a /32), and
//! per remote node, all over rtnetlink:
//! - a route (`routes.rs`) for its pod CIDR via its *VXLAN gateway* — the
//!   network address of its pod CIDR — onlink on the device;
//! - a permanent neighbour entry: that gateway → the remote device's MAC;
//! - an FDB entry: that MAC → the remote node's InternalIP (the UDP
//!   destination of the encapsulated frames).
//!
//! The device's MAC is derived from the node's pod CIDR ([`vtep_mac`]), so
//! every node computes every other node's without publishing it (Flannel
//! puts it in a Node annotation; pod CIDRs are unique in a cluster and
//! fixed for a Node's life, which is what that annotation gives it too).
//! Everything on the device is ours: a sync replaces the neighbour and FDB
//! entries that differ and deletes those of Nodes gone.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

/// The vxlan device's name.
pub const DEVICE: &str = "plinth.vxlan";
/// The VXLAN network identifier (Flannel's default).
pub const VNI: u32 = 1;
/// The UDP port (Flannel's and the Linux default, not IANA's 4789).
pub const PORT: u16 = 8472;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const OVERHEAD: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("the node address {0} is on no interface of this host: it is the VXLAN device's local address")]
    NoUnderlay(Ipv4Addr),
    #[error(
        "a link named {DEVICE} exists and is not a vxlan device: left alone (rename or delete it for the pod overlay)"
    )]
    NotOurs,
    #[error("{op} {what}: {source}")]
    Netlink { op: &'static str, what: String, source: rtnetlink::Error },
}

fn nl(op: &'static str, what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> OverlayError {
    let what = what.into();
    move |source| OverlayError::Netlink { op, what, source }
}

/// The MAC of the vxlan device of the node whose pod CIDR is `cidr`: a
/// locally administered unicast address holding the CIDR's network
/// address (`0e:70:` + its four bytes).
pub fn vtep_mac(cidr: Ipv4Net) -> [u8; 6] {
    let [a, b, c, d] = cidr.network().octets();
    [0x0e, 0x70, a, b, c, d]
}

/// A remote node's VXLAN gateway: its pod network address, the onlink
/// next hop of the route to its pods.
pub fn gateway(cidr: Ipv4Net) -> Ipv4Addr {
    cidr.network()
}

/// What the device of this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// This node's InternalIP.
    pub local: Ipv4Addr,
    /// This node's pod CIDR.
    pub own: Ipv4Net,
}

/// What one remote node needs on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Remote {
    pub cidr: Ipv4Net,
    /// Its InternalIP.
    pub node: Ipv4Addr,
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, OverlayError> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::ENODEV => Ok(None),
        Err(e) => Err(nl("look up", format!("link {name}"))(e)),
    }
}

/// The index of the device when it exists.
pub async fn index(h: &Handle) -> Result<Option<u32>, OverlayError> {
    Ok(link_by_name(h, DEVICE).await?.map(|l| l.header.index))
}

/// The MTU of the interface holding the node address `addr`.
pub async fn underlay_mtu(h: &Handle, addr: Ipv4Addr) -> Result<u32, OverlayError> {
    Ok(underlay(h, addr).await?.1)
}

/// The interface holding `addr`: (index, MTU).
async fn underlay(h: &Handle, addr: Ipv4Addr) -> Result<(u32, u32), OverlayError> {
    let addrs: Vec<_> = h.address().get().execute().try_collect().await.map_err(nl("list", "addresses"))?;
    let index = addrs
        .iter()
        .find(|m| {
            m.attributes.iter().any(|a| {
                matches!(a, rtnetlink::packet_route::address::AddressAttribute::Local(IpAddr::V4(l)) if *l == addr)
                    || matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(l)) if *l == addr)
            })
        })
        .map(|m| m.header.index)
        .ok_or(OverlayError::NoUnderlay(addr))?;
    let link = h
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(nl("look up", format!("link {index}")))?
        .ok_or(OverlayError::NoUnderlay(addr))?;
    let mtu = link.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None });
    Ok((index, mtu.unwrap_or(1500)))
}

/// What an existing link says of itself, to compare with what we want.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    vxlan: bool,
    vni: Option<u32>,
    port: Option<u16>,
    local: Option<Ipv4Addr>,
    learning: Option<bool>,
    link: Option<u32>,
    mac: Option<Vec<u8>>,
    mtu: Option<u32>,
}

fn seen(l: &LinkMessage) -> Seen {
    let mut s =
        Seen { vxlan: false, vni: None, port: None, local: None, learning: None, link: None, mac: None, mtu: None };
    for a in &l.attributes {
        match a {
            LinkAttribute::Address(m) => s.mac = Some(m.clone()),
            LinkAttribute::Mtu(m) => s.mtu = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Vxlan) => s.vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            for d in data {
                                match d {
                                    InfoVxlan::Id(v) => s.vni = Some(*v),
                                    InfoVxlan::Port(p) => s.port = Some(*p),
                                    InfoVxlan::Local(a) => s.local = Some(*a),
                                    InfoVxlan::Learning(b) => s.learning = Some(*b),
                                    InfoVxlan::Link(i) => s.link = Some(*i),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// Makes the device exist as `d` wants it (created, or re-created when
/// its VXLAN parameters differ; MTU and MAC set in place), up, with the
/// node's pod network address; returns its index.
pub async fn ensure(h: &Handle, d: Device) -> Result<u32, OverlayError> {
    let (under, under_mtu) = underlay(h, d.local).await?;
    let mtu = under_mtu.saturating_sub(OVERHEAD);
    let mac = vtep_mac(d.own).to_vec();
    let want = Seen {
        vxlan: true,
        vni: Some(VNI),
        port: Some(PORT),
        local: Some(d.local),
        learning: Some(false),
        link: Some(under),
        mac: Some(mac.clone()),
        mtu: Some(mtu),
    };
    let index = match link_by_name(h, DEVICE).await? {
        Some(l) => {
            let s = seen(&l);
            if !s.vxlan {
                return Err(OverlayError::NotOurs);
            }
            let same_tunnel = (s.vni, s.port, s.local, s.learning, s.link)
                == (want.vni, want.port, want.local, want.learning, want.link);
            if same_tunnel {
                if s.mac != want.mac || s.mtu != want.mtu {
                    let msg = LinkUnspec::new_with_index(l.header.index).address(mac.clone()).mtu(mtu).build();
                    h.link().set(msg).execute().await.map_err(nl("set the MAC and MTU of", DEVICE))?;
                    tracing::info!("pod overlay: {DEVICE} MAC and MTU {mtu} set");
                }
                Some(l.header.index)
            } else {
                tracing::info!("pod overlay: re-creating {DEVICE}: it was {s:?}");
                h.link().del(l.header.index).execute().await.map_err(nl("delete", DEVICE))?;
                None
            }
        }
        None => None,
    };
    let index = match index {
        Some(i) => i,
        None => {
            let msg = LinkVxlan::new(DEVICE, VNI)
                .port(PORT)
                .local(d.local)
                .learning(false)
                .dev(under)
                .mtu(mtu)
                .address(mac)
                .build();
            h.link().add(msg).execute().await.map_err(nl("create", DEVICE))?;
            tracing::info!("pod overlay: {DEVICE} created (VNI {VNI}, UDP {PORT}, local {}, MTU {mtu})", d.local);
            link_by_name(h, DEVICE).await?.map(|l| l.header.index).ok_or(OverlayError::NotOurs)?
        }
    };
    let gw = gateway(d.own);
    match h.address().add(index, IpAddr::V4(gw), 32).execute().await {
        Ok(()) => {}
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::EEXIST => {}
        Err(e) => return Err(nl("add the address", format!("{gw}/32 to {DEVICE}"))(e)),
    }
    let up = LinkUnspec::new_with_index(index).up().build();
    h.link().set(up).execute().await.map_err(nl("bring up", DEVICE))?;
    Ok(index)
}

/// Deletes the device (and with it its neighbours and FDB entries, and the
/// routes through it).
pub async fn remove(h: &Handle) -> Result<(), OverlayError> {
    if let Some(l) = link_by_name(h, DEVICE).await? {
        if !seen(&l).vxlan {
            return Err(OverlayError::NotOurs);
        }
        h.link().del(l.header.index).execute().await.map_err(nl("delete", DEVICE))?;
        tracing::info!("pod overlay: {DEVICE} removed");
    }
    Ok(())
}

fn mac_str(m: &[u8]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The permanent neighbours on the device: gateway → MAC.
async fn neighbours(h: &Handle, index: u32) -> Result<BTreeMap<Ipv4Addr, Vec<u8>>, OverlayError> {
    let all: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list", "neighbours"))?;
    let mut out = BTreeMap::new();
    for m in all.iter().filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent) {
        let (mut dst, mut mac) = (None, None);
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(*d),
                NeighbourAttribute::LinkLayerAddress(l) => mac = Some(l.clone()),
                _ => {}
            }
        }
        if let (Some(d), Some(m)) = (dst, mac) {
            out.insert(d, m);
        }
    }
    Ok(out)
}

/// The FDB entries of the device with a remote: MAC → remote address.
async fn fdb(h: &Handle, index: u32) -> Result<BTreeMap<Vec<u8>, Ipv4Addr>, OverlayError> {
    let all: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list", "FDB entries"))?;
    let mut out = BTreeMap::new();
    for m in all.iter().filter(|m| m.header.ifindex == index) {
        let (mut dst, mut mac) = (None, None);
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(*d),
                // The crate reads an AF_BRIDGE entry's NDA_DST as raw bytes.
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
                }
                NeighbourAttribute::LinkLayerAddress(l) => mac = Some(l.clone()),
                _ => {}
            }
        }
        if let (Some(d), Some(m)) = (dst, mac) {
            out.insert(m, d);
        }
    }
    Ok(out)
}

fn neighbour_msg(index: u32, family: AddressFamily, dst: Ipv4Addr, mac: &[u8]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    if family == AddressFamily::Bridge {
        m.header.flags = NeighbourFlags::Own;
    }
    m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

fn gone_ok(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::ENOENT => Ok(()),
        r => r,
    }
}

/// Adds the FDB and neighbour entries `remotes` need on the device and
/// replaces those that differ (before the routes use them).
pub async fn add_entries(h: &Handle, index: u32, remotes: &[Remote]) -> Result<(), OverlayError> {
    let (have_fdb, have_nb) = (fdb(h, index).await?, neighbours(h, index).await?);
    for r in remotes {
        let mac = vtep_mac(r.cidr);
        if have_fdb.get(mac.as_slice()) != Some(&r.node) {
            if have_fdb.contains_key(mac.as_slice()) {
                // A remote that moved: `replace` would add a second destination.
                let old = neighbour_msg(index, AddressFamily::Bridge, have_fdb[mac.as_slice()], &mac);
                gone_ok(h.neighbours().del(old).execute().await).map_err(nl("delete the FDB entry", mac_str(&mac)))?;
            }
            h.neighbours()
                .add_bridge(index, &mac)
                .flags(NeighbourFlags::Own)
                .destination(IpAddr::V4(r.node))
                .replace()
                .execute()
                .await
                .map_err(nl("add the FDB entry", format!("{} dst {}", mac_str(&mac), r.node)))?;
            tracing::info!("pod overlay: FDB {} → {}", mac_str(&mac), r.node);
        }
        let gw = gateway(r.cidr);
        if have_nb.get(&gw).map(Vec::as_slice) != Some(mac.as_slice()) {
            h.neighbours()
                .add(index, IpAddr::V4(gw))
                .link_layer_address(&mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(nl("add the neighbour", format!("{gw} lladdr {}", mac_str(&mac))))?;
        }
    }
    Ok(())
}

/// Deletes the FDB and neighbour entries of nodes not in `remotes` (after
/// their routes are gone).
pub async fn remove_stale(h: &Handle, index: u32, remotes: &[Remote]) -> Result<(), OverlayError> {
    let want_fdb: BTreeMap<Vec<u8>, Ipv4Addr> = remotes.iter().map(|r| (vtep_mac(r.cidr).to_vec(), r.node)).collect();
    let want_nb: BTreeMap<Ipv4Addr, Vec<u8>> =
        remotes.iter().map(|r| (gateway(r.cidr), vtep_mac(r.cidr).to_vec())).collect();
    for (gw, mac) in neighbours(h, index).await? {
        if want_nb.get(&gw) != Some(&mac) {
            let msg = neighbour_msg(index, AddressFamily::Inet, gw, &mac);
            gone_ok(h.neighbours().del(msg).execute().await).map_err(nl("delete the neighbour", gw.to_string()))?;
        }
    }
    for (mac, dst) in fdb(h, index).await? {
        if want_fdb.get(&mac) != Some(&dst) {
            let msg = neighbour_msg(index, AddressFamily::Bridge, dst, &mac);
            gone_ok(h.neighbours().del(msg).execute().await)
                .map_err(nl("delete the FDB entry", format!("{} dst {dst}", mac_str(&mac))))?;
            tracing::info!("pod overlay: FDB {} → {dst} removed", mac_str(&mac));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_and_gateway_come_from_the_pod_cidr() {
        let cidr: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(vtep_mac(cidr), [0x0e, 0x70, 10, 244, 3, 0]);
        assert_eq!(gateway(cidr), Ipv4Addr::new(10, 244, 3, 0));
        let mac = vtep_mac(cidr);
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_ne!(vtep_mac("10.244.4.0/24".parse().unwrap()), mac, "one per node");
        assert_eq!(mac_str(&mac), "0e:70:0a:f4:03:00");
    }
}
