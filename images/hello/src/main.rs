//! `hello`: Outpost's sample workload, std only, built as a static binary.
//!
//! - `GET /` → `hello from outpost version $HELLO_VERSION`
//! - `GET /count` → how many times the app has started with this volume
//!   (one line is appended to `$DATA_DIR/starts.log` on every start), so tests
//!   can show that volume data survives updates and restarts.
//! - `GET /alloc?mb=N` → allocates and touches N MiB, so tests can show a
//!   memory limit is enforced (the process is OOM-killed).
//! - `GET /health` → `ok`, or `503` once the process is sick (below)
//! - `GET /sick` → this process's `/health` fails from now on (a restarted
//!   process is healthy again), so tests can make a ready app unhealthy.
//!   With `$SICK` set, `/health` fails from the start (an app that never
//!   becomes ready).
//! - `GET /say?n=N` → prints N numbered lines (`say 1`, `say 2`, … counted
//!   across requests) to stdout, so tests can make an app log fast and check
//!   that no line was lost.
//! - `GET /lock` → takes the update lock (an exclusive flock of
//!   `/run/outpost/lock/updates.lock`, the directory the agent mounts) and
//!   holds it; `GET /unlock` → lets it go. Tests use it to defer an update.
//! - `GET /syscall?nr=N&a=A&b=B&c=C` → calls syscall number N (this
//!   architecture's numbering) with up to three integer arguments (default 0)
//!   and answers `ret R errno E`, so tests can show which syscalls the
//!   container's seccomp profile allows.
//! - `GET /secret?name=N` → the content of `/run/secrets/N` (N: letters,
//!   digits, `-`, `_`), so tests can show a secret reached the app at its
//!   path; `GET /secret-meta?name=N` → `mode M uid U` of that file.
//! - `GET /env?name=N` → the value of environment variable N (404 when
//!   unset), so tests can show which configuration an app runs with.
//! - With `$EXIT_AFTER_MS` set, exits with status 3 that many milliseconds
//!   after start (0: at once): a release whose app crashes.
//! - With `$TICK_MS` set, prints `tick N` every that many milliseconds (a
//!   steadily logging app for the flash-wear benchmark).
//!
//! Listens on `$PORT` (default 8080); with `$REUSEPORT` set, with
//! `SO_REUSEPORT`, so two copies (old and new during a `hand-over` update) can
//! listen on the same host port at once and the kernel spreads connections
//! over both. SIGTERM exits at once with status 0: as
//! PID 1 in a container the default action would be ignored.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

const LOG_NAME: &str = "starts.log";
const MAX_ALLOC_MB: usize = 16 * 1024;
const MAX_SAY: u64 = 1_000_000;
static SAID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SAY_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
static SICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn say(n: u64) -> String {
    // One request's lines stay in order and numbered without gaps.
    let _one = SAY_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = std::io::stdout().lock();
    for _ in 0..n.min(MAX_SAY) {
        let i = SAID.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let _ = writeln!(out, "say {i}");
    }
    let _ = out.flush();
    format!("said {}\n", SAID.load(std::sync::atomic::Ordering::SeqCst))
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
    fn flock(fd: i32, operation: i32) -> i32;
    // `long syscall(long number, ...)`; `long` is pointer-sized on Linux.
    fn syscall(number: isize, ...) -> isize;
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const u8, len: u32) -> i32;
    fn bind(fd: i32, addr: *const u8, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
}

/// Listen on 0.0.0.0:`port`; with `reuse_port`, `SO_REUSEPORT` is set before
/// the bind (std cannot), so another copy may listen on the port too. The
/// constants are the same on x86_64, arm64 and armv7 Linux.
fn listen_on(port: u16, reuse_port: bool) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    if !reuse_port {
        return TcpListener::bind(("0.0.0.0", port));
    }
    #[repr(C)]
    struct SockaddrIn {
        family: u16,
        port: u16,
        addr: u32,
        zero: [u8; 8],
    }
    const AF_INET: i32 = 2;
    const SOCK_STREAM_CLOEXEC: i32 = 1 | 0o2000000;
    const SOL_SOCKET: i32 = 1;
    const SO_REUSEADDR: i32 = 2;
    const SO_REUSEPORT: i32 = 15;
    let err = std::io::Error::last_os_error;
    let fd = unsafe { socket(AF_INET, SOCK_STREAM_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err());
    }
    // Owns the descriptor from here: an error below closes it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let one: i32 = 1;
    for opt in [SO_REUSEADDR, SO_REUSEPORT] {
        if unsafe { setsockopt(fd, SOL_SOCKET, opt, (&one as *const i32).cast(), 4) } != 0 {
            return Err(err());
        }
    }
    let sa = SockaddrIn {
        family: AF_INET as u16,
        port: port.to_be(),
        addr: 0,
        zero: [0; 8],
    };
    let len = std::mem::size_of::<SockaddrIn>() as u32;
    if unsafe { bind(fd, (&sa as *const SockaddrIn).cast(), len) } != 0 {
        return Err(err());
    }
    if unsafe { listen(fd, 128) } != 0 {
        return Err(err());
    }
    Ok(listener)
}

/// `/syscall`: one raw syscall with the query's number and arguments.
fn raw_syscall(query: &str) -> (&'static str, String) {
    let arg = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .map(|v| v.parse::<i64>())
    };
    let Some(Ok(nr)) = arg("nr") else {
        return ("400 Bad Request", "usage: /syscall?nr=N&a=A&b=B&c=C\n".into());
    };
    let mut args = [0isize; 3];
    for (slot, name) in args.iter_mut().zip(["a", "b", "c"]) {
        match arg(name) {
            None => {}
            Some(Ok(v)) => *slot = v as isize,
            Some(Err(_)) => return ("400 Bad Request", format!("{name} must be an integer\n")),
        }
    }
    let ret = unsafe { syscall(nr as isize, args[0], args[1], args[2]) };
    let errno = if ret < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    };
    ("200 OK", format!("ret {ret} errno {errno}\n"))
}

/// `/secret` and `/secret-meta`: a file under `/run/secrets` (by name only,
/// so no other path can be read through it).
fn read_secret(query: &str, meta: bool) -> (&'static str, String) {
    use std::os::unix::fs::MetadataExt;
    let name = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .unwrap_or("");
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return ("400 Bad Request", "usage: /secret?name=N\n".into());
    }
    let path = format!("/run/secrets/{name}");
    if meta {
        return match std::fs::metadata(&path) {
            Ok(m) => ("200 OK", format!("mode {:o} uid {}\n", m.mode() & 0o7777, m.uid())),
            Err(e) => ("404 Not Found", format!("{path}: {e}\n")),
        };
    }
    match std::fs::read_to_string(&path) {
        Ok(s) => ("200 OK", s),
        Err(e) => ("404 Not Found", format!("{path}: {e}\n")),
    }
}

/// `/env`: one environment variable of this process.
fn read_env(query: &str) -> (&'static str, String) {
    let name = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .unwrap_or("");
    if name.is_empty() {
        return ("400 Bad Request", "usage: /env?name=N\n".into());
    }
    match std::env::var(name) {
        Ok(v) => ("200 OK", v),
        Err(_) => ("404 Not Found", format!("{name} is not set\n")),
    }
}

const LOCK_EX: i32 = 2;
const LOCK_PATH: &str = "/run/outpost/lock/updates.lock";
/// The open, flocked lock file while the app holds the update lock.
static LOCK: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

fn take_lock() -> (&'static str, String) {
    use std::os::fd::AsRawFd;
    let mut held = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if held.is_some() {
        return ("200 OK", "already locked\n".into());
    }
    let file = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
    {
        Ok(f) => f,
        Err(e) => return ("500 Internal Server Error", format!("open {LOCK_PATH}: {e}\n")),
    };
    // Blocking: the agent's probe holds it for an instant at most.
    if unsafe { flock(file.as_raw_fd(), LOCK_EX) } != 0 {
        let e = std::io::Error::last_os_error();
        return ("500 Internal Server Error", format!("flock {LOCK_PATH}: {e}\n"));
    }
    *held = Some(file);
    ("200 OK", "locked\n".into())
}

fn release_lock() -> (&'static str, String) {
    // Closing the file drops the flock.
    let was = LOCK.lock().unwrap_or_else(|p| p.into_inner()).take();
    ("200 OK", if was.is_some() { "unlocked\n" } else { "not locked\n" }.into())
}

extern "C" fn on_sigterm(_: i32) {
    // Only async-signal-safe calls here.
    unsafe { _exit(0) }
}

fn data_dir() -> PathBuf {
    PathBuf::from(std::env::var("DATA_DIR").unwrap_or_else(|_| "/data".into()))
}

fn record_start() -> std::io::Result<()> {
    let dir = data_dir();
    std::fs::create_dir_all(&dir)?;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG_NAME))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    writeln!(f, "start {now} pid {}", std::process::id())?;
    f.sync_all()
}

fn count_starts() -> usize {
    std::fs::read_to_string(data_dir().join(LOG_NAME))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn alloc(mb: usize) -> String {
    let mb = mb.min(MAX_ALLOC_MB);
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(mb);
    for _ in 0..mb {
        // Touch every page so the memory is really committed.
        let mut block = vec![0u8; 1 << 20];
        for i in (0..block.len()).step_by(4096) {
            block[i] = 1;
        }
        blocks.push(block);
    }
    let touched: usize = blocks.iter().map(|b| b.len()).sum();
    format!("allocated {} MiB\n", touched >> 20)
}

fn respond(mut stream: TcpStream, version: &str) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Drain headers.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
            Err(_) => return,
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = match (method, path) {
        ("GET", "/") => ("200 OK", format!("hello from outpost version {version}\n")),
        ("GET", "/count") => ("200 OK", format!("{}\n", count_starts())),
        ("GET", "/health") if SICK.load(std::sync::atomic::Ordering::SeqCst) => {
            ("503 Service Unavailable", "sick\n".to_string())
        }
        ("GET", "/health") => ("200 OK", "ok\n".to_string()),
        ("GET", "/lock") => take_lock(),
        ("GET", "/unlock") => release_lock(),
        ("GET", "/sick") => {
            SICK.store(true, std::sync::atomic::Ordering::SeqCst);
            ("200 OK", "sick from now on\n".to_string())
        }
        ("GET", "/say") => {
            let n = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("n="))
                .and_then(|v| v.parse::<u64>().ok());
            match n {
                Some(n) => ("200 OK", say(n)),
                None => ("400 Bad Request", "usage: /say?n=N\n".to_string()),
            }
        }
        ("GET", "/syscall") => raw_syscall(query),
        ("GET", "/env") => read_env(query),
        ("GET", "/secret") => read_secret(query, false),
        ("GET", "/secret-meta") => read_secret(query, true),
        ("GET", "/alloc") => {
            let mb = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("mb="))
                .and_then(|v| v.parse::<usize>().ok());
            match mb {
                Some(mb) => ("200 OK", alloc(mb)),
                None => ("400 Bad Request", "usage: /alloc?mb=N\n".to_string()),
            }
        }
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn main() {
    unsafe {
        signal(15, on_sigterm);
    }
    if std::env::var_os("SICK").is_some_and(|v| !v.is_empty()) {
        SICK.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let version = std::env::var("HELLO_VERSION").unwrap_or_else(|_| "unknown".into());
    if let Err(e) = record_start() {
        eprintln!(
            "hello: cannot record start in {}: {e}",
            data_dir().display()
        );
    }
    let reuse_port = std::env::var_os("REUSEPORT").is_some_and(|v| !v.is_empty());
    let listener = match listen_on(port.parse::<u16>().unwrap_or(8080), reuse_port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("hello: version {version} listening on port {port}");
    if let Some(ms) = std::env::var("EXIT_AFTER_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            eprintln!("exiting with status 3 after {ms} ms ($EXIT_AFTER_MS)");
            std::process::exit(3);
        });
    }
    if let Some(ms) = std::env::var("TICK_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::spawn(move || {
            for i in 1u64.. {
                std::thread::sleep(std::time::Duration::from_millis(ms.max(1)));
                println!("tick {i}");
            }
        });
    }
    for stream in listener.incoming().flatten() {
        let version = version.clone();
        std::thread::spawn(move || respond(stream, &version));
    }
}
