//! Addresses without port races.
//!
//! [`listening_addrs`] reads which TCP addresses a process listens on from
//! `/proc/PID/net/tcp{,6}` (its network namespace's socket table) and
//! `/proc/PID/fd` (its socket inodes): a program we do not control is given
//! port 0 and found afterwards.
//!
//! [`PortLease`] is for a port that must be known before its server starts or
//! kept across the server's restarts: Mosquitto refuses port 0 (`listener 0`
//! means a Unix socket to it), an app's port is written into its manifest and
//! kept by every version and restart. A lease takes a port below the kernel's
//! ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), which no port-0
//! bind or outgoing connection is ever given, and holds an exclusive `flock` on
//! a file named after it for as long as it lives, so no other lease in any test
//! process takes it. The lock goes with the process, however it ends.

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;

/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// One row of `/proc/PID/net/tcp` or `tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRow {
    pub local: SocketAddr,
    pub listening: bool,
    pub inode: u64,
}

/// Parse the text of `/proc/PID/net/tcp` or `tcp6`; malformed rows are skipped.
pub fn parse_proc_net_tcp(text: &str) -> Vec<SocketRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = parse_hex_addr(cols.get(1)?)?;
            Some(SocketRow {
                local,
                listening: *cols.get(3)? == TCP_LISTEN,
                inode: cols.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:1F90` → 127.0.0.1:8080. The address is the kernel's in-memory
/// (network order) bytes printed as native-endian 32-bit words; the port is
/// plain hex.
fn parse_hex_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<[u8; 4]> = (0..addr.len() / 8)
        .map(|i| {
            addr.get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
                .map(u32::to_ne_bytes)
        })
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [w] => IpAddr::V4(Ipv4Addr::from(*w)),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(w);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Inodes of the sockets `pid` holds open.
fn socket_inodes(pid: u32) -> Result<Vec<u64>> {
    let dir = format!("/proc/{pid}/fd");
    let rd = std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))?;
    Ok(rd
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect())
}

/// The TCP addresses `pid` listens on (IPv4 and IPv6), sorted. Needs the right
/// to read the process's fds (same user, or root).
pub fn listening_addrs(pid: u32) -> Result<Vec<SocketAddr>> {
    let inodes = socket_inodes(pid)?;
    let mut addrs = Vec::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        // No tcp6 table when IPv6 is off.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        addrs.extend(
            parse_proc_net_tcp(&text)
                .into_iter()
                .filter(|r| r.listening && inodes.contains(&r.inode))
                .map(|r| r.local),
        );
    }
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// A loopback TCP port reserved for this lease's lifetime (see the module doc).
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    _lock: Flock<std::fs::File>,
}

/// Leases never go below this (well-known and registered low ports).
const LEASE_FLOOR: u16 = 20_000;

impl PortLease {
    /// Reserve a port nobody listens on now, outside the ephemeral range.
    pub fn new() -> Result<PortLease> {
        let ceiling = ephemeral_low()?;
        if ceiling <= LEASE_FLOOR + 100 {
            bail!("the ephemeral port range starts at {ceiling}: no room for leases below it");
        }
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let span = ceiling - LEASE_FLOOR;
        let first = fastrand::u16(0..span);
        for i in 0..span {
            let port = LEASE_FLOOR + (first + i) % span;
            if let Some(lease) = PortLease::try_port(&dir, port)? {
                return Ok(lease);
            }
        }
        bail!("every port from {LEASE_FLOOR} to {ceiling} is leased or in use")
    }

    fn try_port(dir: &std::path::Path, port: u16) -> Result<Option<PortLease>> {
        let path = dir.join(format!("{port}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            return Ok(None);
        };
        // Leased by nobody, but a program outside the tests may hold it (on
        // any address: apps listen on 0.0.0.0).
        let free = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        Ok(free.then_some(PortLease { port, _lock: lock }))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// 127.0.0.1 and the leased port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

/// Lock files of leases, shared by every test process on the host.
fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("outpost-test-port-leases")
}

/// The lowest port the kernel hands out for port 0 and outgoing connections.
fn ephemeral_low() -> Result<u16> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|low| low.parse().ok())
        .with_context(|| format!("unexpected {path}: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_rows() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:9B2D 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 75145 1 0000000049485458 100 0 0 10 0\n\
   1: 0100007F:9B2D 0100007F:D3A4 01 00000000:00000000 00:00000000 00000000     0        0 75150 1 0000000049485458 100 0 0 10 0\n\
   2: garbage\n";
        let rows = parse_proc_net_tcp(v4);
        assert_eq!(
            rows,
            vec![
                SocketRow {
                    local: "127.0.0.1:39725".parse().unwrap(),
                    listening: true,
                    inode: 75145
                },
                SocketRow {
                    local: "127.0.0.1:39725".parse().unwrap(),
                    listening: false,
                    inode: 75150
                },
            ]
        );
        if cfg!(target_endian = "little") {
            let v6 = "header\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9 1 0 100 0 0 10 0\n";
            let rows = parse_proc_net_tcp(v6);
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].local, SocketAddr::from((Ipv6Addr::LOCALHOST, 8080)));
        }
    }

    #[test]
    fn finds_the_port_this_process_listens_on() -> Result<()> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let found = listening_addrs(std::process::id())?;
        assert!(found.contains(&addr), "{addr} not in {found:?}");
        drop(l);
        assert!(!listening_addrs(std::process::id())?.contains(&addr));
        Ok(())
    }

    #[test]
    fn leases_are_exclusive_and_outside_the_ephemeral_range() -> Result<()> {
        let low = ephemeral_low()?;
        let a = PortLease::new()?;
        let b = PortLease::new()?;
        assert_ne!(a.port(), b.port());
        assert!(a.port() >= LEASE_FLOOR && a.port() < low);
        // The same port cannot be leased twice, even in one process.
        assert!(PortLease::try_port(&lock_dir(), a.port())?.is_none());
        let port = a.port();
        drop(a);
        // Released with the lease.
        assert!(PortLease::try_port(&lock_dir(), port)?.is_some());
        Ok(())
    }
}
