//! Sockets that hold ports when tracing starts, read from the kernel's socket tables
//! (`/proc/net/{tcp,tcp6,udp,udp6}`) of the tracer's network namespace, after the programs
//! are attached: a socket released later is known to have been held before, not missed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::{event::Proto, lifetime::HeldAtStart};

/// The inode number of the tracer's network namespace.
pub fn own_netns() -> Result<u32> {
    let link = std::fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    parse_ns_link(&link.to_string_lossy()).context("unexpected /proc/self/ns/net link")
}

fn parse_ns_link(s: &str) -> Option<u32> {
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Every TCP and UDP socket with a local port in the tracer's netns.
pub fn snapshot() -> Result<Vec<HeldAtStart>> {
    let mut out = Vec::new();
    for (file, proto) in [
        ("/proc/net/tcp", Proto::Tcp),
        ("/proc/net/tcp6", Proto::Tcp),
        ("/proc/net/udp", Proto::Udp),
        ("/proc/net/udp6", Proto::Udp),
    ] {
        // A kernel without IPv6 has no tcp6/udp6.
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        out.extend(parse_table(&text, proto));
    }
    Ok(out)
}

/// Parses one /proc/net table.
pub fn parse_table(text: &str, proto: Proto) -> Vec<HeldAtStart> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_ascii_whitespace();
            let (_sl, local, remote) = (f.next()?, f.next()?, f.next()?);
            let (laddr, lport) = parse_endpoint(local)?;
            let (raddr, rport) = parse_endpoint(remote)?;
            (lport != 0).then_some(HeldAtStart { proto, laddr, lport, raddr, rport })
        })
        .collect()
}

/// "0100007F:1F90": the address as the kernel's 32-bit words in host order, then the port.
fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0 100 0 0 10 0\n   1: 00000000:0000 00000000:0000 07 0:0 00:0 0 0 0 1\n";
        let held = parse_table(v4, Proto::Tcp);
        assert_eq!(held.len(), 1, "port 0 rows are not holds");
        assert_eq!(held[0].laddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(held[0].lport, 8080);
        let v6 = "hdr\n 0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 0 0 0\n";
        let held = parse_table(v6, Proto::Udp);
        assert_eq!(held[0].laddr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(held[0].lport, 53);
    }

    #[test]
    fn parses_ns_links() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[1]"), None);
    }
}
