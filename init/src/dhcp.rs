//! A minimal DHCPv4 client (RFC 2131): DISCOVER → OFFER → REQUEST → ACK on
//! one interface, asking for the broadcast flag so replies reach an
//! interface that has no address yet; then the lease's life (§4.4.5):
//! renewed from T1 (half the lease) by a REQUEST unicast to its server,
//! rebound from T2 (7/8) by a broadcast one, given up at its end
//! ([`phase`], [`renew`]). `net::keep_lease` runs that loop.
//!
//! Hand-written rather than a crate: the available DHCP crates pull a DNS
//! library along, and the four messages PID 1 needs are a few hundred bytes
//! of fixed layout, tested below byte for byte.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// What a DHCP server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_seconds: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP on {iface}: {op}: {source}")]
    Io { iface: String, op: &'static str, source: std::io::Error },
    #[error("DHCP on {iface}: no {what} after {tries} tries")]
    NoAnswer { iface: String, what: &'static str, tries: u32 },
    #[error("DHCP on {iface}: the server refused the request (NAK)")]
    Refused { iface: String },
}

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before T1: nothing to do.
    Bound,
    /// T1 to T2: ask the server that granted it.
    Renewing,
    /// T2 to the end: ask any server.
    Rebinding,
    /// Over: the address must go.
    Expired,
}

/// A lease with no lease-time option is treated as an hour long (servers
/// must send one; the guess errs towards asking again soon).
const DEFAULT_LEASE: u32 = 3600;

fn lease_length(lease_seconds: u32) -> Option<Duration> {
    match lease_seconds {
        u32::MAX => None, // infinite
        0 => Some(Duration::from_secs(DEFAULT_LEASE.into())),
        s => Some(Duration::from_secs(s.into())),
    }
}

/// The phase of a lease of `lease_seconds`, `elapsed` after it was granted,
/// and how long until the next phase begins (`None`: never).
pub fn phase(lease_seconds: u32, elapsed: Duration) -> (Phase, Option<Duration>) {
    let Some(len) = lease_length(lease_seconds) else { return (Phase::Bound, None) };
    let (t1, t2) = (len / 2, len * 7 / 8);
    let until = |t: Duration| Some(t - elapsed);
    if elapsed < t1 {
        (Phase::Bound, until(t1))
    } else if elapsed < t2 {
        (Phase::Renewing, until(t2))
    } else if elapsed < len {
        (Phase::Rebinding, until(len))
    } else {
        (Phase::Expired, None)
    }
}

/// How long to wait for an answer before asking again while renewing or
/// rebinding: half the time left in the phase (RFC 2131 §4.4.5), at least
/// a second and at most a minute.
pub fn retransmit(left_in_phase: Duration) -> Duration {
    (left_in_phase / 2).clamp(Duration::from_secs(1), Duration::from_secs(60)).min(left_in_phase)
}

fn header(xid: u32, mac: &[u8; 6]) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(mac);
    p.extend_from_slice(&MAGIC);
    p
}

fn option(p: &mut Vec<u8>, code: u8, data: &[u8]) {
    p.push(code);
    p.push(data.len() as u8);
    p.extend_from_slice(data);
}

/// Subnet mask, router, DNS, lease time, server id.
const WANTED: [u8; 5] = [1, 3, 6, 51, 54];

pub fn discover(xid: u32, mac: &[u8; 6]) -> Vec<u8> {
    let mut p = header(xid, mac);
    option(&mut p, 53, &[DISCOVER]);
    option(&mut p, 55, &WANTED);
    p.push(255);
    p
}

pub fn request(xid: u32, mac: &[u8; 6], offered: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
    let mut p = header(xid, mac);
    option(&mut p, 53, &[REQUEST]);
    option(&mut p, 50, &offered.octets());
    option(&mut p, 54, &server.octets());
    option(&mut p, 55, &WANTED);
    p.push(255);
    p
}

/// A REQUEST extending the lease on `held` (RENEWING or REBINDING, §4.3.2):
/// `ciaddr` set, no requested-address or server-identifier option, no
/// broadcast flag (the interface has its address).
pub fn renewal(xid: u32, mac: &[u8; 6], held: Ipv4Addr) -> Vec<u8> {
    let mut p = header(xid, mac);
    p[10] = 0;
    p[12..16].copy_from_slice(&held.octets());
    option(&mut p, 53, &[REQUEST]);
    option(&mut p, 55, &WANTED);
    p.push(255);
    p
}

/// A server's reply: its message type and the lease it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: u8,
    pub lease: Lease,
}

fn ip(b: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?))
}

/// Parses a BOOTREPLY for transaction `xid`; anything else is `None`.
pub fn parse(p: &[u8], xid: u32) -> Option<Reply> {
    if p.len() < 240 || p[0] != 2 || p[4..8] != xid.to_be_bytes() || p[236..240] != MAGIC {
        return None;
    }
    let mut kind = 0;
    let mut lease = Lease {
        address: ip(&p[16..20])?,
        prefix: 24,
        router: None,
        dns: Vec::new(),
        server: ip(&p[20..24])?,
        lease_seconds: 0,
    };
    let mut i = 240;
    while i < p.len() {
        let code = p[i];
        if code == 0 {
            i += 1;
            continue;
        }
        if code == 255 {
            break;
        }
        let len = *p.get(i + 1)? as usize;
        let data = p.get(i + 2..i + 2 + len)?;
        match code {
            53 => kind = *data.first()?,
            1 => lease.prefix = u32::from(ip(data)?).count_ones() as u8,
            3 => lease.router = ip(data),
            6 => lease.dns = data.chunks_exact(4).filter_map(ip).collect(),
            51 => lease.lease_seconds = u32::from_be_bytes(data.get(..4)?.try_into().ok()?),
            54 => lease.server = ip(data)?,
            _ => {}
        }
        i += 2 + len;
    }
    Some(Reply { kind, lease })
}

fn socket(iface: &str) -> Result<tokio::net::UdpSocket, DhcpError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt};
    let io = |op| {
        let iface = iface.to_string();
        move |e: nix::errno::Errno| DhcpError::Io { iface, op, source: std::io::Error::from_raw_os_error(e as i32) }
    };
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
        .map_err(io("socket"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(io("SO_REUSEADDR"))?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(io("SO_BROADCAST"))?;
    setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(iface)).map_err(io("SO_BINDTODEVICE"))?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)))
        .map_err(io("bind :68"))?;
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(|source| DhcpError::Io {
        iface: iface.to_string(),
        op: "register socket",
        source,
    })
}

/// Sends `packet` to `to` and waits for a reply of one of `kinds`, once
/// per entry of `waits` (how long each try waits).
#[allow(clippy::too_many_arguments)]
async fn exchange(
    sock: &tokio::net::UdpSocket,
    iface: &str,
    packet: &[u8],
    to: Ipv4Addr,
    xid: u32,
    kinds: &[u8],
    what: &'static str,
    waits: &[Duration],
) -> Result<Reply, DhcpError> {
    let mut buf = vec![0u8; 1500];
    for &wait in waits {
        sock.send_to(packet, SocketAddrV4::new(to, 67)).await.map_err(|source| DhcpError::Io {
            iface: iface.to_string(),
            op: "send",
            source,
        })?;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            if let Some(reply) = parse(&buf[..n], xid).filter(|r| kinds.contains(&r.kind)) {
                return Ok(reply);
            }
        }
    }
    Err(DhcpError::NoAnswer { iface: iface.to_string(), what, tries: waits.len() as u32 })
}

fn new_xid() -> u32 {
    let mut seed = [0u8; 4];
    let _ = getrandom::fill(&mut seed);
    u32::from_ne_bytes(seed)
}

/// Obtains a lease on `iface` (which must be up), asking `tries` times
/// (waits of 2, 4, 8, 16 s).
pub async fn acquire(iface: &str, mac: [u8; 6], tries: u32) -> Result<Lease, DhcpError> {
    let sock = socket(iface)?;
    let xid = new_xid();
    let waits: Vec<Duration> = (0..tries).map(|attempt| Duration::from_secs(2 << attempt.min(3))).collect();
    let bcast = Ipv4Addr::BROADCAST;
    let offer = exchange(&sock, iface, &discover(xid, &mac), bcast, xid, &[OFFER], "offer", &waits).await?;
    let req = request(xid, &mac, offer.lease.address, offer.lease.server);
    let ack = exchange(&sock, iface, &req, bcast, xid, &[ACK, NAK], "acknowledgement", &waits).await?;
    if ack.kind == NAK {
        return Err(DhcpError::Refused { iface: iface.to_string() });
    }
    Ok(ack.lease)
}

/// Asks to extend `held` once: unicast to its server while renewing,
/// broadcast while rebinding; waits `wait` for the answer. `Ok` is the
/// extended (or changed) lease; `Refused` means the address must go.
pub async fn renew(
    iface: &str,
    mac: [u8; 6],
    held: &Lease,
    rebinding: bool,
    wait: Duration,
) -> Result<Lease, DhcpError> {
    let sock = socket(iface)?;
    let xid = new_xid();
    let to = if rebinding { Ipv4Addr::BROADCAST } else { held.server };
    let ack =
        exchange(&sock, iface, &renewal(xid, &mac, held.address), to, xid, &[ACK, NAK], "renewal", &[wait]).await?;
    if ack.kind == NAK {
        return Err(DhcpError::Refused { iface: iface.to_string() });
    }
    let mut lease = ack.lease;
    // A renewal's reply may leave out what did not change.
    if lease.address.is_unspecified() {
        lease.address = held.address;
    }
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    #[test]
    fn discover_layout() {
        let p = discover(0xdeadbeef, &MAC);
        assert_eq!(&p[..4], &[1, 1, 6, 0]);
        assert_eq!(&p[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(p[10], 0x80);
        assert_eq!(&p[28..34], &MAC);
        assert_eq!(&p[236..240], &MAGIC);
        assert_eq!(&p[240..243], &[53, 1, DISCOVER]);
        assert_eq!(*p.last().unwrap(), 255);
    }

    fn reply(xid: u32, kind: u8) -> Vec<u8> {
        let mut p = header(xid, &MAC);
        p[0] = 2;
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        option(&mut p, 53, &[kind]);
        option(&mut p, 1, &[255, 255, 255, 0]);
        option(&mut p, 3, &[10, 0, 2, 2]);
        option(&mut p, 6, &[10, 0, 2, 3, 1, 1, 1, 1]);
        option(&mut p, 51, &86400u32.to_be_bytes());
        option(&mut p, 54, &[10, 0, 2, 2]);
        p.push(255);
        p
    }

    #[test]
    fn parses_an_ack() {
        let r = parse(&reply(7, ACK), 7).unwrap();
        assert_eq!(r.kind, ACK);
        assert_eq!(
            r.lease,
            Lease {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                router: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
                server: Ipv4Addr::new(10, 0, 2, 2),
                lease_seconds: 86400,
            }
        );
    }

    #[test]
    fn renewal_layout() {
        let p = renewal(9, &MAC, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(p[10], 0, "no broadcast flag: the interface has its address");
        assert_eq!(&p[12..16], &[10, 0, 2, 15], "ciaddr");
        assert_eq!(&p[240..243], &[53, 1, REQUEST]);
        // Neither the requested address (50) nor the server id (54).
        let codes: Vec<u8> = p[243..].chunks(1).map(|c| c[0]).collect();
        assert_eq!(&codes[..2], &[55, 5]);
    }

    #[test]
    fn lease_phases_follow_t1_t2_and_the_end() {
        let s = Duration::from_secs;
        assert_eq!(phase(800, s(0)), (Phase::Bound, Some(s(400))));
        assert_eq!(phase(800, s(399)), (Phase::Bound, Some(s(1))));
        assert_eq!(phase(800, s(400)), (Phase::Renewing, Some(s(300))));
        assert_eq!(phase(800, s(700)), (Phase::Rebinding, Some(s(100))));
        assert_eq!(phase(800, s(800)), (Phase::Expired, None));
        assert_eq!(phase(u32::MAX, s(1 << 40)), (Phase::Bound, None), "infinite");
        assert_eq!(phase(0, s(0)), (Phase::Bound, Some(s(1800))), "no lease time: an hour");
        assert_eq!(retransmit(s(300)), s(60));
        assert_eq!(retransmit(s(10)), s(5));
        assert_eq!(retransmit(s(1)), s(1));
        assert_eq!(retransmit(Duration::from_millis(300)), Duration::from_millis(300));
    }

    #[test]
    fn ignores_other_transactions_and_garbage() {
        assert!(parse(&reply(7, ACK), 8).is_none());
        assert!(parse(&[0u8; 100], 7).is_none());
        let mut truncated = reply(7, ACK);
        truncated.truncate(250);
        assert!(parse(&truncated, 7).is_none(), "an option cut short is refused");
        let request = request(7, &MAC, Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2));
        assert!(parse(&request, 7).is_none(), "a request is not a reply");
    }
}
