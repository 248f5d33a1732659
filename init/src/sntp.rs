//! A small SNTP v4 client (RFC 4330): one 48-byte request, one reply
//! checked (server mode, synchronized, not a kiss-o'-death, our originate
//! timestamp echoed) and the clock offset from the four timestamps. Server
//! names are resolved with one DNS A query to the node's name servers
//! (static PID 1 has no libc resolver). Hand-written: the crates that do
//! this bring a runtime or a resolver of their own for 150 lines of work.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;

pub const NTP_PORT: u16 = 123;
/// Seconds from 1900 (NTP's era 0) to 1970.
const NTP_UNIX: u64 = 2_208_988_800;
/// How long one server has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Re-sync period once the clock is set; retry period until then.
pub const RESYNC: Duration = Duration::from_secs(3600);
pub const RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SntpError {
    #[error("a {0}-byte reply (48 expected)")]
    Short(usize),
    #[error("not a server reply (mode {0})")]
    Mode(u8),
    #[error("the server is not synchronized (leap indicator 3)")]
    Unsynchronized,
    #[error("the server sent a kiss-o'-death ({0:?}): it asks not to be queried")]
    Kiss(String),
    #[error("stratum {0} is out of range")]
    Stratum(u8),
    #[error("the reply does not answer our request (originate timestamp)")]
    NotOurs,
    #[error("the reply carries no time")]
    NoTime,
    #[error("{server}: {detail}")]
    Query { server: String, detail: String },
}

/// A time as NTP's 32.32 fixed point (seconds since 1900; the era after
/// 2036 wraps, as NTP's does).
pub fn to_ntp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = (d.as_secs() + NTP_UNIX) & 0xffff_ffff;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Nanoseconds since 1970 of an NTP timestamp; seconds below 2^31 are
/// taken as era 1 (after 2036).
fn ntp_nanos(v: u64) -> i128 {
    let mut secs = i128::from(v >> 32);
    if secs < 1 << 31 {
        secs += 1 << 32;
    }
    let frac = (i128::from(v & 0xffff_ffff) * 1_000_000_000) >> 32;
    (secs - i128::from(NTP_UNIX)) * 1_000_000_000 + frac
}

fn nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// A client request sent at `t1`: LI 0, version 4, mode 3 (client), with
/// `t1` as the transmit timestamp the server echoes back.
pub fn request(t1: SystemTime) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = (4 << 3) | 3;
    p[40..48].copy_from_slice(&to_ntp(t1).to_be_bytes());
    p
}

/// The time now by the server's reply `reply` to [`request`]`(t1)`,
/// received at `t4`: `t4` + ((t2 − t1) + (t3 − t4)) / 2.
pub fn answer(reply: &[u8], t1: SystemTime, t4: SystemTime) -> Result<SystemTime, SntpError> {
    if reply.len() < 48 {
        return Err(SntpError::Short(reply.len()));
    }
    let word = |i: usize| u64::from_be_bytes(reply[i..i + 8].try_into().unwrap_or_default());
    let (li, mode, stratum) = (reply[0] >> 6, reply[0] & 7, reply[1]);
    if mode != 4 {
        return Err(SntpError::Mode(mode));
    }
    if stratum == 0 {
        return Err(SntpError::Kiss(String::from_utf8_lossy(&reply[12..16]).into_owned()));
    }
    if li == 3 {
        return Err(SntpError::Unsynchronized);
    }
    if stratum > 15 {
        return Err(SntpError::Stratum(stratum));
    }
    if word(24) != to_ntp(t1) {
        return Err(SntpError::NotOurs);
    }
    let (t2, t3) = (word(32), word(40));
    if t2 == 0 || t3 == 0 {
        return Err(SntpError::NoTime);
    }
    let (t1n, t4n) = (nanos(t1), nanos(t4));
    let offset = ((ntp_nanos(t2) - t1n) + (ntp_nanos(t3) - t4n)) / 2;
    let now = t4n + offset;
    Ok(if now >= 0 {
        UNIX_EPOCH + Duration::from_nanos(now as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos((-now) as u64)
    })
}

/// Asks one server; `now` reads the local clock.
pub async fn query(server: SocketAddr, now: &(dyn Fn() -> SystemTime + Sync)) -> Result<SystemTime, SntpError> {
    let err = |detail: String| SntpError::Query { server: server.to_string(), detail };
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }
        .map_err(|_| err("bind address".into()))?;
    let sock = UdpSocket::bind(bind).await.map_err(|e| err(format!("bind: {e}")))?;
    sock.connect(server).await.map_err(|e| err(format!("connect: {e}")))?;
    let t1 = now();
    sock.send(&request(t1)).await.map_err(|e| err(format!("send: {e}")))?;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| err(format!("no answer in {TIMEOUT:?}")))?
            .map_err(|e| err(format!("receive: {e}")))?;
        match answer(&buf[..n], t1, now()) {
            // A stray or late datagram: keep waiting for ours.
            Err(SntpError::NotOurs) => continue,
            r => return r.map_err(|e| err(e.to_string())),
        }
    }
}

/// The IPv4 addresses of `host`: itself if it is an address, else the A
/// records from the first name server that answers.
pub async fn resolve(host: &str, nameservers: &[IpAddr]) -> Result<Vec<IpAddr>, SntpError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let err = |detail: String| SntpError::Query { server: host.to_string(), detail };
    let mut q = simple_dns::Packet::new_query(u16::from_be_bytes([host.len() as u8, 0x5a]));
    q.set_flags(simple_dns::PacketFlag::RECURSION_DESIRED);
    let name = simple_dns::Name::new(host).map_err(|e| err(format!("not a host name: {e}")))?;
    q.questions.push(simple_dns::Question::new(
        name,
        simple_dns::QTYPE::TYPE(simple_dns::TYPE::A),
        simple_dns::QCLASS::CLASS(simple_dns::CLASS::IN),
        false,
    ));
    let bytes = q.build_bytes_vec().map_err(|e| err(format!("DNS query: {e}")))?;
    let mut last = "no name server".to_string();
    for ns in nameservers {
        let asked = async {
            let sock = UdpSocket::bind(if ns.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await?;
            sock.connect((*ns, 53)).await?;
            sock.send(&bytes).await?;
            let mut buf = vec![0u8; 1500];
            let n = sock.recv(&mut buf).await?;
            buf.truncate(n);
            Ok::<_, std::io::Error>(buf)
        };
        match tokio::time::timeout(TIMEOUT, asked).await {
            Ok(Ok(reply)) => {
                let Ok(p) = simple_dns::Packet::parse(&reply) else {
                    last = format!("{ns}: not a DNS answer");
                    continue;
                };
                let ips: Vec<IpAddr> = p
                    .answers
                    .iter()
                    .filter_map(|r| match &r.rdata {
                        simple_dns::rdata::RData::A(a) => Some(IpAddr::V4(Ipv4Addr::from(a.address))),
                        _ => None,
                    })
                    .collect();
                if !ips.is_empty() {
                    return Ok(ips);
                }
                last = format!("{ns}: no A record");
            }
            Ok(Err(e)) => last = format!("{ns}: {e}"),
            Err(_) => last = format!("{ns}: no answer in {TIMEOUT:?}"),
        }
    }
    Err(err(format!("cannot resolve ({last})")))
}

/// The time by the first of `servers` that answers.
pub async fn sync(
    servers: &[String],
    nameservers: &[IpAddr],
    now: &(dyn Fn() -> SystemTime + Sync),
) -> Result<(String, SystemTime), SntpError> {
    let mut last = SntpError::Query { server: "-".into(), detail: "no NTP server configured".into() };
    for server in servers {
        let ips = match resolve(server, nameservers).await {
            Ok(ips) => ips,
            Err(e) => {
                last = e;
                continue;
            }
        };
        for ip in ips {
            match query(SocketAddr::new(ip, NTP_PORT), now).await {
                Ok(t) => return Ok((server.clone(), t)),
                Err(e) => last = e,
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    /// A reply as a server at `server_now` makes it to `req`.
    fn reply_to(req: &[u8], server_now: SystemTime) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = (4 << 3) | 4;
        p[1] = 2;
        p[24..32].copy_from_slice(&req[40..48]);
        p[32..40].copy_from_slice(&to_ntp(server_now).to_be_bytes());
        p[40..48].copy_from_slice(&to_ntp(server_now).to_be_bytes());
        p
    }

    #[test]
    fn timestamps_round_trip_across_the_2036_era() {
        for t in [at(1_764_000_000, 250), at(2_085_978_496 + 10, 0), at(0, 0)] {
            let back = ntp_nanos(to_ntp(t));
            assert!((back - nanos(t)).abs() < 2, "{t:?}");
        }
        let req = request(at(5, 0));
        assert_eq!(req[0], 0x23, "LI 0, version 4, client");
    }

    #[test]
    fn the_offset_comes_from_four_timestamps_and_bad_replies_are_refused() {
        // Local clock at 1970 + 5 s; the server says 1764000000; 40 ms there and back.
        let (t1, t4) = (at(5, 0), at(5, 40));
        let server = at(1_764_000_000, 20);
        let got = answer(&reply_to(&request(t1), server), t1, t4).unwrap();
        let want = at(1_764_000_000, 40);
        assert!(nanos(got).abs_diff(nanos(want)) < 1_000_000, "{got:?}");

        let good = reply_to(&request(t1), server);
        let with = |f: &dyn Fn(&mut [u8; 48])| {
            let mut p = good;
            f(&mut p);
            answer(&p, t1, t4)
        };
        assert_eq!(answer(&good[..20], t1, t4), Err(SntpError::Short(20)));
        assert_eq!(with(&|p| p[0] = (4 << 3) | 3), Err(SntpError::Mode(3)));
        assert_eq!(with(&|p| p[0] |= 3 << 6), Err(SntpError::Unsynchronized));
        assert_eq!(
            with(&|p| {
                p[1] = 0;
                p[12..16].copy_from_slice(b"RATE");
            }),
            Err(SntpError::Kiss("RATE".into()))
        );
        assert_eq!(with(&|p| p[1] = 16), Err(SntpError::Stratum(16)));
        assert_eq!(with(&|p| p[31] ^= 1), Err(SntpError::NotOurs));
        assert_eq!(with(&|p| p[40..48].fill(0)), Err(SntpError::NoTime));
    }

    /// A UDP stand-in server on loopback: a stray datagram first, then the
    /// answer; the client waits for its own.
    #[tokio::test]
    async fn queries_a_server_on_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let serve = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(n, 48);
            let mut stray = reply_to(&buf[..48], at(1, 0));
            stray[24] ^= 0xff;
            server.send_to(&stray, from).await.unwrap();
            server.send_to(&reply_to(&buf[..48], at(1_764_000_000, 0)), from).await.unwrap();
        });
        let t = query(addr, &|| at(5, 0)).await.unwrap();
        serve.await.unwrap();
        assert_eq!(t, at(1_764_000_000, 0));
        // Nobody there: a clear error, in time.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let e = query(silent.local_addr().unwrap(), &|| at(5, 0)).await.unwrap_err();
        assert!(e.to_string().contains("no answer"), "{e}");
        // Addresses need no name server; names need one.
        assert_eq!(resolve("127.0.0.1", &[]).await.unwrap(), [IpAddr::from([127, 0, 0, 1])]);
        assert!(resolve("pool.ntp.org", &[]).await.unwrap_err().to_string().contains("cannot resolve"));
    }
}
