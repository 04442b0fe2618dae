//! The PROXY protocol (v1 text and v2 binary, as HAProxy's `send-proxy` and
//! `send-proxy-v2` write it) on connections from configured proxies.
//!
//! Why: behind a TCP load balancer every connection comes from the balancer,
//! so the per-address throttle would block the whole fleet after a few
//! failures and the audit log would name the balancer. Connections from an
//! address in `--proxy-protocol-from` must start with a PROXY header, whose
//! source address then stands for the client; anyone else's connection is
//! plain TLS and cannot claim an address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Addresses (or CIDR blocks) whose connections carry a PROXY header.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses `10.0.0.5`, `10.0.0.0/8`, `::1`, `fd00::/8` entries.
    pub fn parse(entries: &[String]) -> anyhow::Result<TrustedProxies> {
        let mut out = Vec::new();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (ip, len) = match e.split_once('/') {
                Some((ip, len)) => (ip, Some(len)),
                None => (e, None),
            };
            let ip: IpAddr = ip.parse().map_err(|_| {
                anyhow::anyhow!("--proxy-protocol-from: {e:?} is not an IP address or CIDR")
            })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                    anyhow::anyhow!("--proxy-protocol-from: bad prefix length in {e:?}")
                })?,
                None => max,
            };
            out.push((ip, len));
        }
        Ok(TrustedProxies(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a connection from `ip` must start with a PROXY header.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(net, len)| match (canonical(*net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), *len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), *len),
            _ => false,
        })
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
}

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection does not start with a PROXY header")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads a PROXY v1 or v2 header. `Some(source)` for a proxied TCP
/// connection, `None` for a `LOCAL` (v2) or `UNKNOWN` (v1) one, such as the
/// balancer's own health check.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    if &head == b"PROXY" {
        return read_v1(r).await;
    }
    if head != V2_SIGNATURE[..5] {
        return Err(ProxyError::Missing);
    }
    let mut rest = [0u8; 11];
    r.read_exact(&mut rest).await?;
    if rest[..7] != V2_SIGNATURE[5..] {
        return Err(ProxyError::Missing);
    }
    let (ver_cmd, family) = (rest[7], rest[8]);
    let len = u16::from_be_bytes([rest[9], rest[10]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("version is not 2"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    match ver_cmd & 0x0f {
        0 => return Ok(None), // LOCAL
        1 => {}
        _ => return Err(ProxyError::Malformed("unknown command")),
    }
    match family {
        0x11 | 0x12 if len >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            )))
        }
        0x21 | 0x22 if len >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().expect("16 bytes");
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port)))
        }
        0x00 => Ok(None), // UNSPEC
        _ => Err(ProxyError::Malformed(
            "unsupported address family or short address block",
        )),
    }
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, at most 107 bytes in all.
async fn read_v1<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<SocketAddr>, ProxyError> {
    let mut line = Vec::with_capacity(102);
    loop {
        let b = r.read_u8().await?;
        line.push(b);
        if line.ends_with(b"\r\n") {
            break;
        }
        if line.len() > 102 {
            return Err(ProxyError::Malformed("v1 line longer than 107 bytes"));
        }
    }
    let text = std::str::from_utf8(&line[..line.len() - 2])
        .map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["", "UNKNOWN", ..] => Ok(None),
        ["", proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("bad source address"))?;
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Err(ProxyError::Malformed("address does not match the protocol"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyError::Malformed("bad source port"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(ProxyError::Malformed("v1 fields")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
        let mut r = bytes;
        read_header(&mut r).await
    }

    fn v2(cmd: u8, family: u8, addr: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(family);
        v.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        v.extend_from_slice(addr);
        v
    }

    #[tokio::test]
    async fn reads_v1_and_v2_headers() {
        assert_eq!(
            parse(b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 8443\r\nTLS...")
                .await
                .unwrap(),
            Some("10.1.2.3:40000".parse().unwrap())
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 8443\r\n")
                .await
                .unwrap(),
            Some("[2001:db8::7]:5555".parse().unwrap())
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").await.unwrap(), None);
        let addr4 = [10, 9, 8, 7, 10, 0, 0, 1, 0x9c, 0x40, 0x20, 0xfb];
        assert_eq!(
            parse(&v2(1, 0x11, &addr4)).await.unwrap(),
            Some("10.9.8.7:40000".parse().unwrap())
        );
        // TLVs after the addresses are skipped.
        let mut with_tlv = addr4.to_vec();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]);
        assert_eq!(
            parse(&v2(1, 0x11, &with_tlv)).await.unwrap(),
            Some("10.9.8.7:40000".parse().unwrap())
        );
        let mut addr6 = vec![0u8; 36];
        addr6[15] = 1;
        addr6[32] = 0x01;
        addr6[33] = 0xbb;
        assert_eq!(
            parse(&v2(1, 0x21, &addr6)).await.unwrap(),
            Some("[::1]:443".parse().unwrap())
        );
        assert_eq!(parse(&v2(0, 0x00, &[])).await.unwrap(), None, "LOCAL");
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_header() {
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00rest of a ClientHello").await,
            Err(ProxyError::Missing)
        ));
        assert!(
            parse(b"PROXY TCP4 10.1.2.3 10.0.0.1 40000\r\n")
                .await
                .is_err()
        );
        assert!(parse(b"PROXY TCP4 ::1 ::1 1 2\r\n").await.is_err());
        assert!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(30))
                .await
                .is_err()
        );
        assert!(
            parse(&v2(1, 0x11, &[1, 2, 3])).await.is_err(),
            "short address block"
        );
        assert!(parse(b"PROXY TCP4 10.1.2.3").await.is_err(), "truncated");
    }

    #[test]
    fn trusted_addresses_and_blocks() {
        let t =
            TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.7".into(), "fd00::/8".into()])
                .unwrap();
        assert!(t.contains("10.200.3.4".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(t.contains("192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("fe80::1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.example".into()]).is_err());
    }
}
