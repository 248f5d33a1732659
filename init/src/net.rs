//! Network bring-up from the machine config, over rtnetlink: links up,
//! static addresses and routes, or DHCP ([`crate::dhcp`]). With no config
//! (maintenance mode) every interface with a MAC address gets DHCP.

use std::net::IpAddr;
use std::time::{Duration, Instant};

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

/// What bring-up did, the name servers it learnt, and the interfaces whose
/// DHCP leases [`keep_lease`] looks after from now on.
#[derive(Debug, Default)]
pub struct Configured {
    pub report: Vec<String>,
    pub nameservers: Vec<IpAddr>,
    pub dhcp: Vec<DhcpLink>,
}

/// An interface configured by DHCP, and the lease it holds (if any) since
/// when.
#[derive(Debug)]
pub struct DhcpLink {
    handle: Handle,
    link: Link,
    mac: [u8; 6],
    held: Option<(dhcp::Lease, Instant)>,
}

/// `resolv.conf` for the name servers (at most three, as libc reads).
pub fn resolv_conf(nameservers: &[IpAddr]) -> String {
    nameservers.iter().take(3).map(|ns| format!("nameserver {ns}\n")).collect()
}

async fn dhcp_on(h: &Handle, l: &Link, out: &mut Configured) {
    let Some(mac) = l.mac else {
        out.report.push(format!("{}: no MAC address, no DHCP", l.name));
        return;
    };
    let mut d = DhcpLink { handle: h.clone(), link: l.clone(), mac, held: None };
    match dhcp::acquire(&l.name, mac, 4).await.map_err(NetError::from) {
        Ok(lease) => match d.take(lease).await {
            Ok(line) => {
                out.report.push(line);
                out.nameservers.extend(d.nameservers());
            }
            Err(e) => out.report.push(e.to_string()),
        },
        Err(e) => out.report.push(format!("{e}; asking again in the background")),
    }
    out.dhcp.push(d);
}

fn lease_net(lease: &dhcp::Lease) -> Result<IpNet, NetError> {
    IpNet::new(IpAddr::V4(lease.address), lease.prefix).map_err(|_| NetError::Address(lease.address.to_string()))
}

fn lease_line(iface: &str, what: &str, lease: &dhcp::Lease) -> String {
    let dns: Vec<String> = lease.dns.iter().map(ToString::to_string).collect();
    format!(
        "{iface}: {what} {}/{} from {} for {}s, router {}, DNS {}",
        lease.address,
        lease.prefix,
        lease.server,
        lease.lease_seconds,
        lease.router.map_or("-".into(), |r| r.to_string()),
        if dns.is_empty() { "-".into() } else { dns.join(" ") }
    )
}

const RETRY_MAX: Duration = Duration::from_secs(60);

impl DhcpLink {
    /// Finds `iface` in this network namespace and brings it up, holding no
    /// lease yet: for [`keep_lease`] on an interface bring-up did not touch.
    pub async fn open(iface: &str) -> Result<DhcpLink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(conn);
        let link = links(&handle).await?.into_iter().find(|l| l.name == iface);
        let link = link.ok_or_else(|| NetError::NoSuchInterface(iface.to_string()))?;
        let mac = link.mac.ok_or_else(|| NetError::Address(format!("{iface} has no MAC address")))?;
        up(&handle, &link, None).await?;
        Ok(DhcpLink { handle, link, mac, held: None })
    }

    fn nameservers(&self) -> Vec<IpAddr> {
        self.held.iter().flat_map(|(l, _)| l.dns.iter().map(|d| IpAddr::V4(*d))).collect()
    }

    /// Puts a granted lease on the interface (replacing the address of the
    /// one held before, if it differs) and returns the event line.
    async fn take(&mut self, lease: dhcp::Lease) -> Result<String, NetError> {
        let (h, l) = (&self.handle, &self.link);
        let net = lease_net(&lease)?;
        let what = match self.held.take() {
            Some((old, _)) if lease_net(&old)? != net => {
                remove_address(h, l, lease_net(&old)?).await?;
                format!("DHCP lease changed from {}/{} to", old.address, old.prefix)
            }
            Some(_) => "DHCP lease renewed:".into(),
            None => "DHCP lease".into(),
        };
        add_address(h, l, net).await?;
        if let Some(router) = lease.router {
            // Replace: a default route through the last lease's router
            // must not stay in front of this one.
            replace_default_route(h, IpAddr::V4(router), l).await?;
        }
        let line = lease_line(&l.name, &what, &lease);
        self.held = Some((lease, Instant::now()));
        Ok(line)
    }

    /// The lease is gone (expired, or refused at renewal): its address goes.
    async fn drop_lease(&mut self, why: &str) -> String {
        let Some((old, _)) = self.held.take() else { return String::new() };
        let removed = match lease_net(&old) {
            Ok(net) => remove_address(&self.handle, &self.link, net).await.err(),
            Err(e) => Some(e),
        };
        match removed {
            None => format!(
                "{}: DHCP lease {}/{} {why}: address removed, asking again",
                self.link.name, old.address, old.prefix
            ),
            Some(e) => format!("{}: DHCP lease {} {why}, and removing it failed: {e}", self.link.name, old.address),
        }
    }
}

async fn remove_address(h: &Handle, l: &Link, net: IpNet) -> Result<(), NetError> {
    let found: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(l.index)
        .set_address_filter(net.addr())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list addresses of", &l.name))?;
    for msg in found {
        h.address().del(msg).execute().await.map_err(nl("remove address from", &l.name))?;
    }
    Ok(())
}

async fn replace_default_route(h: &Handle, via: IpAddr, l: &Link) -> Result<(), NetError> {
    let IpAddr::V4(via) = via else {
        return Err(NetError::Address(format!("{via}: only IPv4 routes are supported yet")));
    };
    let msg = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
        .destination_prefix(std::net::Ipv4Addr::UNSPECIFIED, 0)
        .gateway(via)
        .output_interface(l.index)
        .build();
    h.route().add(msg).replace().execute().await.map_err(nl("set the default route via", &via.to_string()))
}

/// Keeps an interface's DHCP lease for as long as init runs (RFC 2131
/// §4.4.5): renewed from T1 by asking its server, rebound from T2 by asking
/// any server, given up at its end (the address removed); with no lease,
/// asked for again and again, 1 s doubling to a minute between tries, for
/// ever — so a router that comes up after the node, hands out another
/// address or goes away is followed. `report` gets one line per change (a
/// renewal that changes nothing is not one) and the name servers the
/// interface has now.
pub async fn keep_lease(mut d: DhcpLink, report: impl Fn(String, Vec<IpAddr>) + Send + Sync) {
    let mut retry = Duration::from_secs(1);
    let mut quiet = false;
    loop {
        let Some((lease, since)) = d.held.clone() else {
            match dhcp::acquire(&d.link.name, d.mac, 1).await.map_err(NetError::from) {
                Ok(lease) => {
                    retry = Duration::from_secs(1);
                    quiet = false;
                    match d.take(lease).await {
                        Ok(line) => report(line, d.nameservers()),
                        Err(e) => report(e.to_string(), Vec::new()),
                    }
                }
                Err(e) => {
                    // One line per outage, not one per try.
                    if !quiet {
                        report(format!("{e}; asking again (back-off up to {}s)", RETRY_MAX.as_secs()), Vec::new());
                        quiet = true;
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
            continue;
        };
        match dhcp::phase(lease.lease_seconds, since.elapsed()) {
            (dhcp::Phase::Bound, Some(wait)) => tokio::time::sleep(wait).await,
            (dhcp::Phase::Bound, None) => std::future::pending::<()>().await,
            (phase @ (dhcp::Phase::Renewing | dhcp::Phase::Rebinding), left) => {
                let wait = dhcp::retransmit(left.unwrap_or_default());
                let rebinding = phase == dhcp::Phase::Rebinding;
                match dhcp::renew(&d.link.name, d.mac, &lease, rebinding, wait).await {
                    Ok(new) => {
                        let changed =
                            new.address != lease.address || new.prefix != lease.prefix || new.dns != lease.dns;
                        match d.take(new).await {
                            Ok(line) if changed => report(line, d.nameservers()),
                            Ok(line) => tracing::debug!("{line}"),
                            Err(e) => report(e.to_string(), d.nameservers()),
                        }
                    }
                    Err(dhcp::DhcpError::Refused { .. }) => {
                        let line = d.drop_lease("was refused at renewal (NAK)").await;
                        report(line, Vec::new());
                    }
                    Err(dhcp::DhcpError::NoAnswer { .. }) => {}
                    Err(e @ dhcp::DhcpError::Io { .. }) => {
                        tracing::warn!("{e}");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            (dhcp::Phase::Expired, _) => {
                let line = d.drop_lease("expired").await;
                report(line, Vec::new());
            }
        }
    }
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
