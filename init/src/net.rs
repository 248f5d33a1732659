//! Network bring-up from the machine config, over rtnetlink: links up,
//! static addresses and routes, or DHCP ([`crate::dhcp`]). With no config
//! (maintenance mode) every interface with a MAC address gets DHCP.

use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use machinery::config::Network;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::dhcp;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{op} {iface}: {source}")]
    Netlink { op: &'static str, iface: String, source: rtnetlink::Error },
    #[error("interface {0:?} is configured but does not exist on this machine")]
    NoSuchInterface(String),
    #[error(transparent)]
    Dhcp(#[from] dhcp::DhcpError),
    #[error("{0:?} is not a valid address")]
    Address(String),
}

#[derive(Debug, Clone)]
struct Link {
    index: u32,
    name: String,
    mac: Option<[u8; 6]>,
    loopback: bool,
}

fn link(msg: &LinkMessage) -> Link {
    let mut l = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(m) => l.mac = m.as_slice().try_into().ok(),
            _ => {}
        }
    }
    l
}

fn nl(op: &'static str, iface: &str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let iface = iface.to_string();
    move |source| NetError::Netlink { op, iface, source }
}

async fn links(h: &Handle) -> Result<Vec<Link>, NetError> {
    let msgs: Vec<LinkMessage> = h.link().get().execute().try_collect().await.map_err(nl("list links", "*"))?;
    Ok(msgs.iter().map(link).collect())
}

async fn up(h: &Handle, l: &Link, mtu: Option<u32>) -> Result<(), NetError> {
    let mut b = LinkUnspec::new_with_index(l.index).up();
    if let Some(mtu) = mtu {
        b = b.mtu(mtu);
    }
    h.link().set(b.build()).execute().await.map_err(nl("bring up", &l.name))
}

async fn add_address(h: &Handle, l: &Link, net: IpNet) -> Result<(), NetError> {
    match h.address().add(l.index, net.addr(), net.prefix_len()).execute().await {
        // Already there (a restarted init on a live system): fine.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::EEXIST => Ok(()),
        r => r.map_err(nl("add address to", &l.name)),
    }
}

async fn add_route(h: &Handle, dest: IpNet, via: IpAddr, oif: Option<&Link>) -> Result<(), NetError> {
    let (IpNet::V4(dest), IpAddr::V4(via)) = (dest, via) else {
        return Err(NetError::Address(format!("{dest} via {via}: only IPv4 routes are supported yet")));
    };
    let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
        .destination_prefix(dest.addr(), dest.prefix_len())
        .gateway(via);
    if let Some(l) = oif {
        b = b.output_interface(l.index);
    }
    match h.route().add(b.build()).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::EEXIST => Ok(()),
        r => r.map_err(nl("add route via", &via.to_string())),
    }
}

/// What bring-up did, and the name servers it learnt.
#[derive(Debug, Default)]
pub struct Configured {
    pub report: Vec<String>,
    pub nameservers: Vec<IpAddr>,
}

/// `resolv.conf` for the name servers (at most three, as libc reads).
pub fn resolv_conf(nameservers: &[IpAddr]) -> String {
    nameservers.iter().take(3).map(|ns| format!("nameserver {ns}\n")).collect()
}

async fn dhcp_on(h: &Handle, l: &Link, out: &mut Configured) {
    match dhcp_lease(h, l).await {
        Ok((line, dns)) => {
            out.report.push(line);
            out.nameservers.extend(dns);
        }
        Err(e) => out.report.push(e.to_string()),
    }
}

async fn dhcp_lease(h: &Handle, l: &Link) -> Result<(String, Vec<IpAddr>), NetError> {
    let Some(mac) = l.mac else {
        return Ok((format!("{}: no MAC address, no DHCP", l.name), Vec::new()));
    };
    let lease = dhcp::acquire(&l.name, mac).await?;
    let net = IpNet::new(IpAddr::V4(lease.address), lease.prefix)
        .map_err(|_| NetError::Address(lease.address.to_string()))?;
    add_address(h, l, net).await?;
    if let Some(router) = lease.router {
        add_route(h, "0.0.0.0/0".parse().expect("literal"), IpAddr::V4(router), Some(l)).await?;
    }
    let dns: Vec<String> = lease.dns.iter().map(ToString::to_string).collect();
    let line = format!(
        "{}: DHCP lease {net} from {} for {}s, router {}, DNS {}",
        l.name,
        lease.server,
        lease.lease_seconds,
        lease.router.map_or("-".into(), |r| r.to_string()),
        if dns.is_empty() { "-".into() } else { dns.join(" ") }
    );
    Ok((line, lease.dns.iter().map(|d| IpAddr::V4(*d)).collect()))
}

/// Brings the network up; returns one line per action for the event log.
/// A failing interface is reported and the others still come up.
pub async fn configure(network: Option<&Network>) -> Result<Configured, NetError> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    tokio::spawn(conn);
    let all = links(&h).await?;
    let mut out = Configured::default();
    for l in all.iter().filter(|l| l.loopback) {
        up(&h, l, None).await?;
    }
    let configured = network.filter(|n| !n.interfaces.is_empty());
    match configured {
        None => {
            for l in all.iter().filter(|l| !l.loopback && l.mac.is_some()) {
                up(&h, l, None).await?;
                dhcp_on(&h, l, &mut out).await;
            }
        }
        Some(n) => {
            for iface in &n.interfaces {
                let Some(l) = all.iter().find(|l| l.name == iface.name) else {
                    out.report.push(NetError::NoSuchInterface(iface.name.clone()).to_string());
                    continue;
                };
                up(&h, l, iface.mtu).await?;
                for a in &iface.addresses {
                    let net: IpNet = a.parse().map_err(|_| NetError::Address(a.clone()))?;
                    add_address(&h, l, net).await?;
                    out.report.push(format!("{}: address {net}", l.name));
                }
                if iface.dhcp {
                    dhcp_on(&h, l, &mut out).await;
                }
            }
            for r in &n.routes {
                let dest: IpNet = r.to.parse().map_err(|_| NetError::Address(r.to.clone()))?;
                let via: IpAddr = r.via.parse().map_err(|_| NetError::Address(r.via.clone()))?;
                let oif = r.interface.as_ref().and_then(|n| all.iter().find(|l| &l.name == n));
                add_route(&h, dest, via, oif).await?;
                out.report.push(format!("route {dest} via {via}"));
            }
        }
    }
    // Configured name servers win over those DHCP offered.
    if let Some(n) = network.filter(|n| !n.nameservers.is_empty()) {
        out.nameservers = n.nameservers.iter().filter_map(|s| s.parse().ok()).collect();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_keeps_three() {
        let ns: Vec<IpAddr> =
            ["10.0.2.3", "1.1.1.1", "9.9.9.9", "8.8.8.8"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(resolv_conf(&ns), "nameserver 10.0.2.3\nnameserver 1.1.1.1\nnameserver 9.9.9.9\n");
    }
}
