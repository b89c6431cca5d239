//! The server's listening sockets: inherited from a service manager (socket activation,
//! as systemd's `sd_listen_fds(3)` describes it) or bound from the configuration.
//!
//! A service manager that holds the sockets lets the server restart without refusing a
//! single connection: connections made meanwhile wait in the socket's backlog. The test
//! harness (complement-tests) starts every server this way, so that no other process can
//! take a port between picking it and binding it.
//!
//! Protocol: `LISTEN_PID` is this process's ID and `LISTEN_FDS` the number of sockets,
//! passed as file descriptors 3, 4, …. A socket is used for the configured address
//! (`[http] listen`, `[metrics] listen`) that it is bound to; the others are bound as
//! usual, and an inherited socket that no address takes is closed with a warning.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpSocket};

/// The accept queue of a socket the server binds itself (the kernel caps it at
/// `net.core.somaxconn`, 4 096 by default). A burst of connections, as when a thousand
/// clients start their syncs at once, waits here while the server is busy; tokio's default
/// of 128 (mio's, as the standard library's) overflowed in such a burst, and the kernel
/// then dropped handshakes and reset connections.
pub const BACKLOG: u32 = 4_096;

/// The first file descriptor a service manager passes.
const FIRST_FD: RawFd = 3;
/// More than any configuration lists; a larger `LISTEN_FDS` is not believed.
const MAX_FDS: usize = 64;

/// Listening sockets passed to this process, each with the address it is bound to.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<(SocketAddr, std::net::TcpListener)>,
    /// What was wrong with the environment or a descriptor, logged by [`Inherited::report`]
    /// (adoption runs before logging is set up).
    problems: Vec<String>,
}

impl Inherited {
    /// Takes the sockets a service manager passed to this process: none unless `LISTEN_PID`
    /// names it, and none after the first call (each descriptor has one owner).
    ///
    /// Call it first thing in `main`, before anything opens a file: a descriptor from 3 on
    /// is then either passed or not open, never one of the server's own.
    pub fn from_environment() -> Self {
        static TAKEN: AtomicBool = AtomicBool::new(false);
        let mut inherited = Self::default();
        if TAKEN.swap(true, Ordering::SeqCst) {
            return inherited;
        }
        // The variables stay: a child process has another ID, so they do not name it.
        let pid = std::env::var("LISTEN_PID").ok();
        let count = std::env::var("LISTEN_FDS").ok();
        if pid.and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return inherited;
        }
        let count = match count.as_deref().map(str::parse::<usize>) {
            Some(Ok(n)) if n <= MAX_FDS => n,
            _ => {
                inherited.problems.push(format!(
                    "LISTEN_FDS={count:?} is not a number up to {MAX_FDS}: no socket is inherited"
                ));
                return inherited;
            }
        };
        for fd in (FIRST_FD..).take(count) {
            match adopt(fd) {
                Ok(Some(socket)) => inherited.sockets.push(socket),
                Ok(None) => inherited.problems.push(format!(
                    "inherited descriptor {fd} is not a listening TCP socket: left open, unused"
                )),
                Err(e) => inherited
                    .problems
                    .push(format!("inherited descriptor {fd} is unusable ({e}): closed")),
            }
        }
        inherited
    }

    /// Logs what was wrong with the inherited descriptors.
    pub fn report(&self) {
        for problem in &self.problems {
            tracing::warn!("socket activation: {problem}");
        }
    }

    /// The listener for `addr`: the inherited socket bound to it (with the backlog its
    /// service manager gave it), else a newly bound one with a [`BACKLOG`] accept queue.
    pub async fn listen(&mut self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        if let Some(i) = self.sockets.iter().position(|(bound, _)| *bound == addr) {
            let (_, socket) = self.sockets.swap_remove(i);
            socket.set_nonblocking(true)?;
            tracing::info!(%addr, "listening on an inherited socket");
            return TcpListener::from_std(socket);
        }
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // As `TcpListener::bind` does: a restarted server rebinds at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    }

    /// Closes the inherited sockets that no configured address took.
    pub fn close_unused(self) {
        for (addr, _) in self.sockets {
            tracing::warn!(%addr, "an inherited socket matches no configured address; closed");
        }
    }
}

/// The socket at `fd` if it is a listening TCP socket (IPv4 or IPv6), now close-on-exec.
fn adopt(fd: RawFd) -> std::io::Result<Option<(SocketAddr, std::net::TcpListener)>> {
    if !is_listening_tcp_socket(fd)? {
        return Ok(None);
    }
    // SAFETY: `fd` was passed to this process to own (LISTEN_PID names it; adoption runs
    // before the process opens any descriptor of its own), is open and is a listening
    // TCP socket; this is the only place that wraps it.
    let socket = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    // Children the server may start must not hold the socket open.
    // SAFETY: fcntl on a descriptor this function now owns.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((socket.local_addr()?, socket)))
}

/// Whether `fd` is an IPv4 or IPv6 stream socket that `listen` was called on.
fn is_listening_tcp_socket(fd: RawFd) -> std::io::Result<bool> {
    // SAFETY: fstat writes into a zeroed stat buffer owned by this frame.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Ok(false);
    }
    // Elsewhere than Linux (no SO_DOMAIN), a Unix socket is refused by `local_addr` in
    // `adopt`, which then closes it.
    #[cfg(target_os = "linux")]
    {
        let domain = socket_option(fd, libc::SO_DOMAIN)?;
        if domain != libc::AF_INET && domain != libc::AF_INET6 {
            return Ok(false);
        }
    }
    Ok(socket_option(fd, libc::SO_TYPE)? == libc::SOCK_STREAM
        && socket_option(fd, libc::SO_ACCEPTCONN)? == 1)
}

fn socket_option(fd: RawFd, option: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, owned by this frame.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, option, (&raw mut value).cast(), &mut len)
    };
    if rc == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_tcp_sockets_are_adopted() {
        use std::os::fd::AsRawFd;
        let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(is_listening_tcp_socket(listening.as_raw_fd()).unwrap());
        let connected = std::net::TcpStream::connect(listening.local_addr().unwrap()).unwrap();
        assert!(!is_listening_tcp_socket(connected.as_raw_fd()).unwrap());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!is_listening_tcp_socket(udp.as_raw_fd()).unwrap());
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_listening_tcp_socket(file.as_raw_fd()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(!is_listening_tcp_socket(unix.as_raw_fd()).unwrap());
    }

    #[tokio::test]
    async fn an_address_takes_the_socket_bound_to_it_and_others_are_bound_anew() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let mut inherited = Inherited { sockets: vec![(addr, held)], problems: Vec::new() };
        let other: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let fresh = inherited.listen(other).await.unwrap();
        assert_ne!(fresh.local_addr().unwrap(), addr);
        assert_eq!(inherited.sockets.len(), 1, "an address it is not bound to leaves it");
        let taken = inherited.listen(addr).await.unwrap();
        assert_eq!(taken.local_addr().unwrap(), addr);
        assert!(inherited.sockets.is_empty());
    }

    /// A burst of 2 048 connections (or `net.core.somaxconn`, if lower) that the server has
    /// not accepted yet all complete: they wait in the accept queue. With tokio's default
    /// queue of 128, the kernel dropped the handshakes past the 129th (seen: 129 of 2 048
    /// connected); a dropped SYN is retried after a second, so a connection that takes
    /// longer than 900 ms was dropped once.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_burst_of_unaccepted_connections_waits_in_the_accept_queue() {
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .expect("net.core.somaxconn is readable")
            .trim()
            .parse()
            .expect("net.core.somaxconn is a number");
        // Far above tokio's default of 128, at most the kernel's cap, and what the open-files
        // limit leaves room for (a descriptor per connection, and 512 for the rest).
        let files = raise_open_files_limit(2_048 + 512);
        let burst = somaxconn.min(2_048).min(files.saturating_sub(512) as u32) as usize;
        assert!(burst > 129, "too small a burst to tell 128 from {BACKLOG}: {burst}");
        let listener = Inherited::default().listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connects: Vec<_> = (0..burst)
            .map(|_| {
                tokio::spawn(tokio::time::timeout(
                    std::time::Duration::from_millis(900),
                    tokio::net::TcpStream::connect(addr),
                ))
            })
            .collect();
        let mut connected = Vec::with_capacity(burst);
        for c in connects {
            if let Ok(Ok(stream)) = c.await.unwrap() {
                connected.push(stream);
            }
        }
        assert_eq!(connected.len(), burst, "connections made while none was accepted");
        drop(listener);
    }

    /// Raises this process's soft limit of open files to `wanted` where the hard limit
    /// allows (the burst above holds a descriptor per connection); returns the limit.
    #[cfg(target_os = "linux")]
    fn raise_open_files_limit(wanted: u64) -> u64 {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit read and write only the struct owned by this frame.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            if limit.rlim_cur < wanted {
                limit.rlim_cur = wanted.min(limit.rlim_max);
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
            }
        }
        limit.rlim_cur
    }
}
