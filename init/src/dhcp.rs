//! A minimal DHCPv4 client (RFC 2131): DISCOVER → OFFER → REQUEST → ACK on
//! one interface, asking for the broadcast flag so replies reach an
//! interface that has no address yet.
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

/// Sends `packet` and waits for a reply of one of `kinds`, retrying.
async fn exchange(
    sock: &tokio::net::UdpSocket,
    iface: &str,
    packet: &[u8],
    xid: u32,
    kinds: &[u8],
    what: &'static str,
) -> Result<Reply, DhcpError> {
    const TRIES: u32 = 4;
    let mut buf = vec![0u8; 1500];
    for attempt in 0..TRIES {
        sock.send_to(packet, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)).await.map_err(|source| DhcpError::Io {
            iface: iface.to_string(),
            op: "send",
            source,
        })?;
        let wait = Duration::from_secs(2 << attempt.min(3));
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            if let Some(reply) = parse(&buf[..n], xid).filter(|r| kinds.contains(&r.kind)) {
                return Ok(reply);
            }
        }
    }
    Err(DhcpError::NoAnswer { iface: iface.to_string(), what, tries: TRIES })
}

/// Obtains a lease on `iface` (which must be up).
pub async fn acquire(iface: &str, mac: [u8; 6]) -> Result<Lease, DhcpError> {
    let sock = socket(iface)?;
    let mut seed = [0u8; 4];
    let _ = getrandom::fill(&mut seed);
    let xid = u32::from_ne_bytes(seed);
    let offer = exchange(&sock, iface, &discover(xid, &mac), xid, &[OFFER], "offer").await?;
    let ack = exchange(
        &sock,
        iface,
        &request(xid, &mac, offer.lease.address, offer.lease.server),
        xid,
        &[ACK, NAK],
        "acknowledgement",
    )
    .await?;
    if ack.kind == NAK {
        return Err(DhcpError::Refused { iface: iface.to_string() });
    }
    Ok(ack.lease)
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
