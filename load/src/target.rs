//! The target URL, the loopback-only rule, and source-address spreading.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where to connect: a loopback address, the Host header and the path.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
}

impl Target {
    /// `ws://HOST[:PORT][/PATH]`, with `addr` (`HOST:PORT`) replacing the
    /// URL's host and port when given. HOST must be a loopback literal
    /// (127.0.0.0/8 or `[::1]`) or `localhost` (taken as 127.0.0.1, without
    /// asking a resolver).
    pub fn parse(url: &str, addr: Option<&str>) -> Result<Target, String> {
        let rest = if let Some(rest) = url.strip_prefix("ws://") {
            rest
        } else if url.starts_with("wss://") {
            return Err(format!("{url}: wss:// (TLS) is not supported; use ws://"));
        } else {
            return Err(format!("{url}: the URL must start with ws://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let authority = addr.unwrap_or(authority);
        let addr = parse_authority(authority)?;
        if !is_loopback(addr.ip()) {
            return Err(format!(
                "refusing target {addr}: ringws-load only connects to loopback \
                 addresses (127.0.0.0/8 and ::1)"
            ));
        }
        Ok(Target {
            addr,
            host_header: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The URL as it will be used, for reports.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.path)
    }

    /// Source address for connection number `i`, spreading connections over
    /// 127.0.0.0/8 so that their count is not bounded by the ephemeral ports
    /// of one address. `None` (let the kernel choose) for IPv6, which has a
    /// single loopback address.
    pub fn source(&self, i: u64) -> Option<IpAddr> {
        match self.addr {
            SocketAddr::V4(_) => Some(IpAddr::V4(spread_v4(i))),
            SocketAddr::V6(_) => None,
        }
    }
}

/// 127.A.B.C with A in 1..=254, C in 1..=250: skips 127.0.0.0/16 (where the
/// server listens) and host parts 0 and 251–255.
fn spread_v4(i: u64) -> Ipv4Addr {
    let c = 1 + (i % 250) as u8;
    let rest = i / 250;
    let b = (rest % 256) as u8;
    let a = 1 + ((rest / 256) % 254) as u8;
    Ipv4Addr::new(127, a, b, c)
}

fn parse_authority(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("{s}: bad port {p:?}"))?;
            (h, port)
        }
        _ => (s, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<IpAddr>().map_err(|_| {
            format!(
                "refusing target {host:?}: only loopback IP literals (127.0.0.0/8, [::1]) \
                 or localhost are accepted; ringws-load never resolves names"
            )
        })?
    };
    Ok(SocketAddr::new(ip, port))
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_only() {
        let t = Target::parse("ws://127.0.0.1:9001/ws", None).unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.path, "/ws");
        assert_eq!(t.host_header, "127.0.0.1:9001");
        assert!(Target::parse("ws://127.8.9.10", None).is_ok());
        assert!(Target::parse("ws://[::1]:80/x", None).is_ok());
        assert_eq!(
            Target::parse("ws://localhost:1/", None).unwrap().addr,
            "127.0.0.1:1".parse().unwrap()
        );
        for bad in [
            "ws://10.0.0.1:80/",
            "ws://example.com/",
            "ws://[::2]:80/",
            "wss://127.0.0.1/",
            "http://127.0.0.1/",
            "ws://0.0.0.0:80/",
        ] {
            assert!(Target::parse(bad, None).is_err(), "{bad}");
        }
        let t = Target::parse("ws://127.0.0.1:8080/ws", Some("127.0.0.2:9")).unwrap();
        assert_eq!(t.addr, "127.0.0.2:9".parse().unwrap());
        assert!(Target::parse("ws://127.0.0.1:8080/ws", Some("192.168.1.1:9")).is_err());
    }

    #[test]
    fn spread_addresses_are_distinct_and_outside_127_0() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            let ip = spread_v4(i);
            let o = ip.octets();
            assert!(o[0] == 127 && o[1] >= 1 && o[3] >= 1 && o[3] <= 250);
            assert!(seen.insert(ip));
        }
    }
}
