//! Cluster DNS, served by every node's kubelet (as CoreDNS's kubernetes
//! plugin answers, at the `kube-dns` Service's address, 10.96.0.10).
//!
//! Names under the cluster domain are answered from the Services and
//! Endpoints the service proxy already follows: `svc.ns.svc.cluster.local`
//! is the Service's cluster IP (a headless Service: its ready endpoints),
//! `_port._proto.svc.ns.svc.cluster.local` its SRV records, and
//! `1-2-3-4.ns.pod.cluster.local` the address written in the name. Other
//! names go to the node's own resolver (its /etc/resolv.conf) and back.
//!
//! The responder listens (UDP and TCP) on the pod network's gateway
//! address, bound before the bridge exists (IP_FREEBIND); the service
//! proxy DNATs 10.96.0.10:53 there, so each node answers its own pods.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use simple_dns::rdata::{A, RData, SRV};
use simple_dns::{CLASS, Name, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE};

use orchestrator_apimachinery::node_fields::{Protocol, port_number};

pub use orchestrator_apimachinery::cluster::{CLUSTER_DNS_IP, CLUSTER_DOMAIN};
/// How long answers may be cached (CoreDNS's default for the cluster zone).
const TTL: u32 = 5;
/// How long a forwarded query may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP connection may wait for its next query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// At most this many queries are relayed upstream at once (each holds one
/// socket); a query beyond it is answered SERVFAIL at once, so a pod
/// cannot spend the process' open files.
pub const MAX_FORWARDS: usize = 64;
/// At most this many askers' TCP connections are served at once; more are closed.
pub const MAX_TCP_CONNECTIONS: usize = 64;

/// One Service as DNS sees it.
#[derive(Debug, Default, PartialEq)]
struct ServiceRecords {
    /// The cluster IP, or the ready endpoints' addresses of a headless Service.
    addresses: Vec<Ipv4Addr>,
    /// (port name, protocol in lower case, port).
    ports: Vec<(String, String, u16)>,
}

/// The cluster zone: every Service by (namespace, name).
#[derive(Debug, Default)]
pub struct Zone {
    services: BTreeMap<(String, String), ServiceRecords>,
}

impl Zone {
    /// The zone for these Services and their Endpoints. Ports whose
    /// protocol or number does not parse get no SRV record; addresses that
    /// are not IPv4 none either.
    pub fn new(services: &[Service], endpoints: &[Endpoints]) -> Zone {
        fn key_of(m: &ObjectMeta) -> (String, String) {
            (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
        }
        let mut zone = Zone::default();
        for svc in services {
            let key = key_of(&svc.metadata);
            let Some(spec) = &svc.spec else { continue };
            let addresses = match spec.cluster_ip.as_deref().unwrap_or_default() {
                "None" => endpoints
                    .iter()
                    .filter(|e| key_of(&e.metadata) == key)
                    .flat_map(|e| e.subsets.iter().flatten())
                    .flat_map(|s| s.addresses.iter().flatten())
                    .filter_map(|a| a.ip.parse().ok())
                    .collect(),
                ip => ip.parse().into_iter().collect(),
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let protocol = Protocol::of(p.protocol.as_deref()).ok()?;
                    Some((p.name.clone().unwrap_or_default(), protocol.lower().to_string(), port_number(p.port).ok()?))
                })
                .collect();
            zone.services.insert(key, ServiceRecords { addresses, ports });
        }
        zone
    }
}

/// What a name in the cluster domain is.
#[derive(Debug, PartialEq)]
enum Lookup {
    /// Not in the cluster domain: ask the node's resolver.
    Forward,
    /// In the domain, but no such name.
    NoSuchName,
    /// These records (none: the name exists without records of the type asked).
    Records(Vec<RData<'static>>),
}

fn lookup(zone: &Zone, name: &str, qtype: TYPE) -> Lookup {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(rest) = name.strip_suffix(CLUSTER_DOMAIN).and_then(|r| r.strip_suffix('.').or(r.is_empty().then_some("")))
    else {
        return Lookup::Forward;
    };
    let labels: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('.').collect() };
    let a = |ips: &[Ipv4Addr]| -> Vec<RData<'static>> {
        if qtype == TYPE::A { ips.iter().map(|ip| RData::A(A { address: (*ip).into() })).collect() } else { Vec::new() }
    };
    match labels.as_slice() {
        // The domain itself, `svc`, a namespace under it, `pod`: names without addresses.
        [] | ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => Lookup::Records(Vec::new()),
        [service, ns, "svc"] => match zone.services.get(&(ns.to_string(), service.to_string())) {
            Some(s) => Lookup::Records(a(&s.addresses)),
            None => Lookup::NoSuchName,
        },
        [port, proto, service, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
            let Some(s) = zone.services.get(&(ns.to_string(), service.to_string())) else {
                return Lookup::NoSuchName;
            };
            let target = format!("{service}.{ns}.svc.{CLUSTER_DOMAIN}");
            let srv: Vec<RData<'static>> = s
                .ports
                .iter()
                .filter(|(n, p, _)| !n.is_empty() && *n == port[1..] && *p == proto[1..])
                .map(|(_, _, number)| {
                    let target = Name::new_unchecked(&target).into_owned();
                    RData::SRV(SRV { priority: 0, weight: 100, port: *number, target })
                })
                .collect();
            if srv.is_empty() {
                Lookup::NoSuchName
            } else if qtype == TYPE::SRV {
                Lookup::Records(srv)
            } else {
                Lookup::Records(Vec::new())
            }
        }
        [dashed, _, "pod"] => match dashed.replace('-', ".").parse::<Ipv4Addr>() {
            Ok(ip) => Lookup::Records(a(&[ip])),
            Err(_) => Lookup::NoSuchName,
        },
        _ => Lookup::NoSuchName,
    }
}

/// The reply to a query from the zone, or `None` when the name is not
/// the cluster's (forward it). A query that cannot be read is answered
/// FORMERR when its ID can be, else dropped.
pub fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let Ok(packet) = Packet::parse(query) else {
        let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
        let mut reply = Packet::new_reply(id);
        *reply.rcode_mut() = RCODE::FormatError;
        return reply.build_bytes_vec().ok();
    };
    let question = packet.questions.first()?;
    let QTYPE::TYPE(qtype) = question.qtype else { return None };
    let name = question.qname.to_string();
    let found = lookup(zone, &name, qtype);
    if found == Lookup::Forward {
        return None;
    }
    let mut reply = Packet::new_reply(packet.id());
    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER | PacketFlag::RECURSION_AVAILABLE);
    if packet.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    reply.questions.push(question.clone());
    match found {
        Lookup::NoSuchName => *reply.rcode_mut() = RCODE::NameError,
        Lookup::Records(records) => {
            for r in records {
                reply.answers.push(ResourceRecord::new(question.qname.clone(), CLASS::IN, TTL, r));
            }
        }
        Lookup::Forward => unreachable!("returned above"),
    }
    reply.build_bytes_vec_compressed().ok()
}

/// A SERVFAIL reply to `query` (its upstream did not answer).
fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let packet = Packet::parse(query).ok()?;
    let mut reply = Packet::new_reply(packet.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    reply.questions.extend(packet.questions.iter().cloned());
    *reply.rcode_mut() = RCODE::ServerFailure;
    reply.build_bytes_vec().ok()
}

/// A resolv.conf's settings, in the order written (CRI's `DnsConfig` carries the same three lists).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// The `nameserver`, `search` and `options` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut c = ResolvConf::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let list = match words.next() {
            Some("nameserver") => &mut c.servers,
            Some("search") => &mut c.searches,
            Some("options") => &mut c.options,
            _ => continue,
        };
        list.extend(words.map(str::to_string));
    }
    c
}

/// The first name server in a resolv.conf that is not the cluster DNS itself.
pub fn upstream(resolv_conf: &str) -> Option<SocketAddr> {
    parse_resolv_conf(resolv_conf)
        .servers
        .iter()
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .find(|ip| *ip != CLUSTER_DNS_IP)
        .map(|ip| SocketAddr::new(ip, 53))
}

/// A socket of `kind` bound to `addr`, even before the address is on an
/// interface (IP_FREEBIND: the CNI bridge gets its address with the first pod).
fn bind_free(addr: SocketAddr, kind: nix::sys::socket::SockType) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockaddrStorage, setsockopt, socket, sockopt};
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, kind, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(addr))?;
    Ok(fd)
}

/// The responder's sockets: UDP and TCP on the same address.
pub struct Sockets {
    pub udp: tokio::net::UdpSocket,
    pub tcp: tokio::net::TcpListener,
}

/// Binds UDP and TCP `addr` (see [`bind_free`]).
pub fn bind(addr: SocketAddr) -> std::io::Result<Sockets> {
    use nix::sys::socket::{Backlog, SockType, listen};
    let udp = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(bind_free(addr, SockType::Datagram)?))?;
    // The port UDP got (the one asked for, unless 0).
    let tcp = bind_free(udp.local_addr()?, SockType::Stream)?;
    listen(&tcp, Backlog::new(64).map_err(std::io::Error::from)?)?;
    let tcp = tokio::net::TcpListener::from_std(std::net::TcpListener::from(tcp))?;
    Ok(Sockets { udp, tcp })
}

/// Relays a query to the upstream resolver over UDP, or over TCP (the
/// asker's transport: an answer too big for UDP comes whole over TCP).
async fn forward(upstream: SocketAddr, query: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer from {upstream}"));
    if tcp {
        let exchange = async {
            let mut conn = tokio::net::TcpStream::connect(upstream).await?;
            write_framed(&mut conn, query).await?;
            read_framed(&mut conn).await
        };
        return tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await.map_err(|_| timed_out())?;
    }
    let local: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf)).await.map_err(|_| timed_out())??;
    buf.truncate(n);
    Ok(buf)
}

/// Reads one TCP DNS message (two bytes of length, then the message).
async fn read_framed(conn: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_framed(conn: &mut tokio::net::TcpStream, message: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let len = u16::try_from(message.len()).map_err(|_| std::io::Error::other("a DNS message over 64 KiB"))?;
    conn.write_all(&len.to_be_bytes()).await?;
    conn.write_all(message).await
}

/// Where names outside the cluster go, asked at each query (the node's
/// resolv.conf changes with its DHCP lease).
pub type Upstream = Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync>;

/// The node's resolver, from its /etc/resolv.conf.
pub fn node_upstream() -> Upstream {
    Arc::new(|| upstream(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()))
}

/// What a responder shares between its queries.
struct Shared {
    zone: Arc<RwLock<Zone>>,
    upstream: Upstream,
    /// One permit per query being relayed ([`MAX_FORWARDS`]).
    forwards: tokio::sync::Semaphore,
}

/// The reply to one query: from the zone, else from upstream, else SERVFAIL
/// (also when [`MAX_FORWARDS`] queries are already being relayed).
async fn respond(shared: &Shared, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let local = answer(&shared.zone.read().unwrap_or_else(|e| e.into_inner()), query);
    if local.is_some() {
        return local;
    }
    let Some(up) = (shared.upstream)() else { return server_failure(query) };
    let Ok(_permit) = shared.forwards.try_acquire() else {
        tracing::debug!("cluster DNS: {MAX_FORWARDS} queries already relayed; SERVFAIL");
        return server_failure(query);
    };
    match forward(up, query, tcp).await {
        Ok(reply) => Some(reply),
        Err(e) => {
            tracing::debug!("cluster DNS: forward to {up}: {e}");
            server_failure(query)
        }
    }
}

/// Answers queries for ever, over UDP and TCP: the cluster's names from
/// `zone`, the rest through `upstream` (SERVFAIL when there is none or it
/// is silent).
pub async fn serve(sockets: Sockets, zone: Arc<RwLock<Zone>>, upstream: Upstream) {
    let Sockets { udp, tcp } = sockets;
    let shared = Arc::new(Shared { zone, upstream, forwards: tokio::sync::Semaphore::new(MAX_FORWARDS) });
    let tcp_shared = shared.clone();
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let mut conn = match tcp.accept().await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    tracing::warn!("cluster DNS: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tracing::debug!("cluster DNS: {MAX_TCP_CONNECTIONS} TCP connections open; closing a new one");
                continue;
            };
            let shared = tcp_shared.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // Queries in turn until the asker closes or idles.
                while let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut conn)).await {
                    let Some(reply) = respond(&shared, &query, true).await else { return };
                    if write_framed(&mut conn, &reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let udp = Arc::new(udp);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cluster DNS: receive: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (udp, shared) = (udp.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(reply) = respond(&shared, &query, false).await
                && let Err(e) = udp.send_to(&reply, from).await
            {
                tracing::debug!("cluster DNS: reply to {from}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn zone() -> Zone {
        let web = json!({"metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
        let db = json!({"metadata": {"namespace": "data", "name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}});
        let db_endpoints = json!({"metadata": {"namespace": "data", "name": "db"},
            "subsets": [{"addresses": [{"ip": "10.244.0.5"}, {"ip": "10.244.0.6"}],
                         "notReadyAddresses": [{"ip": "10.244.0.7"}]}]});
        let typed = |v: Value| serde_json::from_value(v).unwrap();
        Zone::new(&[typed(web), typed(db)], &[serde_json::from_value(db_endpoints).unwrap()])
    }

    fn query(name: &str, qtype: TYPE) -> Vec<u8> {
        let mut q = Packet::new_query(0x4242);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        q.questions.push(simple_dns::Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(qtype),
            simple_dns::QCLASS::CLASS(CLASS::IN),
            false,
        ));
        q.build_bytes_vec().unwrap()
    }

    /// (rcode, answers as text).
    fn ask(name: &str, qtype: TYPE) -> Option<(RCODE, Vec<String>)> {
        let bytes = answer(&zone(), &query(name, qtype))?;
        let reply = Packet::parse(&bytes).unwrap();
        assert_eq!(reply.id(), 0x4242);
        assert!(reply.has_flags(PacketFlag::RESPONSE | PacketFlag::AUTHORITATIVE_ANSWER));
        let answers = reply
            .answers
            .iter()
            .map(|r| match &r.rdata {
                RData::A(a) => Ipv4Addr::from(a.address).to_string(),
                RData::SRV(s) => format!("{} {}", s.port, s.target),
                other => format!("{other:?}"),
            })
            .collect();
        Some((reply.rcode(), answers))
    }

    #[test]
    fn services_and_pods_resolve_in_the_cluster_domain() {
        assert_eq!(ask("web.default.svc.cluster.local", TYPE::A), Some((RCODE::NoError, vec!["10.96.0.7".into()])));
        assert_eq!(ask("WEB.default.svc.cluster.local.", TYPE::A).unwrap().1, ["10.96.0.7"], "case and the root dot");
        assert_eq!(ask("db.data.svc.cluster.local", TYPE::A).unwrap().1, ["10.244.0.5", "10.244.0.6"], "headless");
        assert_eq!(ask("web.default.svc.cluster.local", TYPE::AAAA), Some((RCODE::NoError, vec![])), "no IPv6");
        assert_eq!(
            ask("_http._tcp.web.default.svc.cluster.local", TYPE::SRV).unwrap().1,
            ["80 web.default.svc.cluster.local"]
        );
        assert_eq!(ask("10-244-0-9.default.pod.cluster.local", TYPE::A).unwrap().1, ["10.244.0.9"]);
        assert_eq!(ask("default.svc.cluster.local", TYPE::A), Some((RCODE::NoError, vec![])));
    }

    #[test]
    fn unknown_cluster_names_do_not_exist_and_others_are_forwarded() {
        for name in ["nope.default.svc.cluster.local", "web.other.svc.cluster.local", "x.y.z.cluster.local"] {
            assert_eq!(ask(name, TYPE::A).map(|(r, _)| r), Some(RCODE::NameError), "{name}");
        }
        assert_eq!(ask("_nope._tcp.web.default.svc.cluster.local", TYPE::SRV).unwrap().0, RCODE::NameError);
        assert_eq!(ask("example.org", TYPE::A), None);
        assert_eq!(ask("notcluster.local", TYPE::A), None, "a suffix of the name, not of its labels");
    }

    #[test]
    fn garbage_gets_a_format_error_and_upstream_comes_from_resolv_conf() {
        let bytes = answer(&zone(), &[0x12, 0x34, 0xff]).unwrap();
        let reply = Packet::parse(&bytes).unwrap();
        assert_eq!((reply.id(), reply.rcode()), (0x1234, RCODE::FormatError));
        assert_eq!(answer(&zone(), &[1]), None);
        let conf = "search lan\nnameserver 10.96.0.10\nnameserver 192.168.1.1\nnameserver 1.1.1.1\n";
        assert_eq!(upstream(conf), Some("192.168.1.1:53".parse().unwrap()));
        assert_eq!(upstream("search lan\n"), None);
    }

    /// A stand-in upstream's answer: 192.0.2.1 for anything.
    fn upstream_reply(query: &[u8]) -> Vec<u8> {
        let mut reply = Packet::parse(query).unwrap().into_reply();
        reply.answers.push(ResourceRecord::new(
            Name::new_unchecked("example.org"),
            CLASS::IN,
            60,
            RData::A(A { address: Ipv4Addr::new(192, 0, 2, 1).into() }),
        ));
        reply.build_bytes_vec().unwrap()
    }

    fn first_address(reply: &[u8]) -> Ipv4Addr {
        let reply = Packet::parse(reply).unwrap();
        let RData::A(a) = &reply.answers[0].rdata else { panic!("{reply:?}") };
        Ipv4Addr::from(a.address)
    }

    #[tokio::test]
    async fn the_responder_answers_and_forwards_over_udp_and_tcp() {
        let Sockets { udp: up, tcp: up_tcp } = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = up.recv_from(&mut buf).await {
                up.send_to(&upstream_reply(&buf[..n]), from).await.unwrap();
            }
        });
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = up_tcp.accept().await {
                let query = read_framed(&mut conn).await.unwrap();
                write_framed(&mut conn, &upstream_reply(&query)).await.unwrap();
            }
        });
        let sockets = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let at = sockets.udp.local_addr().unwrap();
        assert_eq!(sockets.tcp.local_addr().unwrap(), at, "one address for both");
        tokio::spawn(serve(sockets, Arc::new(RwLock::new(zone())), Arc::new(move || Some(up_addr))));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 512];
        let mut conn = tokio::net::TcpStream::connect(at).await.unwrap();
        for (name, want) in [
            ("web.default.svc.cluster.local", Ipv4Addr::new(10, 96, 0, 7)),
            ("example.org", Ipv4Addr::new(192, 0, 2, 1)),
        ] {
            client.send_to(&query(name, TYPE::A), at).await.unwrap();
            let n = client.recv(&mut buf).await.unwrap();
            assert_eq!(first_address(&buf[..n]), want, "{name} over UDP");
            // Two queries on one TCP connection.
            write_framed(&mut conn, &query(name, TYPE::A)).await.unwrap();
            assert_eq!(first_address(&read_framed(&mut conn).await.unwrap()), want, "{name} over TCP");
        }
    }

    fn open_files() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// A flood of queries for outside names towards a silent upstream
    /// holds at most MAX_FORWARDS sockets; the rest are answered SERVFAIL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_forwarded_queries_holds_a_bounded_number_of_sockets() {
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let sockets = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let at = sockets.udp.local_addr().unwrap();
        tokio::spawn(serve(sockets, Arc::new(RwLock::new(zone())), Arc::new(move || Some(silent_addr))));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let before = open_files();
        let flood = 4 * MAX_FORWARDS;
        for i in 0..flood {
            client.send_to(&query(&format!("n{i}.example.org"), TYPE::A), at).await.unwrap();
        }
        // Let the responder take them all in (well within the upstream timeout).
        tokio::time::sleep(UPSTREAM_TIMEOUT / 6).await;
        let grown = open_files().saturating_sub(before);
        assert!(grown <= MAX_FORWARDS + 8, "{flood} forwarded queries opened {grown} files");
        // Those beyond the bound were refused (the others wait for the silent upstream).
        let mut buf = [0u8; 512];
        for _ in 0..flood - MAX_FORWARDS {
            let n =
                tokio::time::timeout(UPSTREAM_TIMEOUT / 2, client.recv(&mut buf)).await.expect("a SERVFAIL").unwrap();
            assert_eq!(Packet::parse(&buf[..n]).unwrap().rcode(), RCODE::ServerFailure);
        }
        drop(silent);
    }
}
