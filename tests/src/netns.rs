//! Two network namespaces joined by a veth pair, made by a test and removed
//! on drop, even when the test fails. Traffic stays inside them.

use std::{net::Ipv4Addr, os::fd::AsRawFd as _, process::Command, thread::JoinHandle};

/// Namespaces `a` and `b`, with `addr_a` and `addr_b` on the veth ends.
pub struct NetnsPair {
    /// The first namespace's name.
    pub a: String,
    /// The second namespace's name.
    pub b: String,
    /// The veth end in `b`.
    pub dev_b: String,
    /// Address of `a`'s end.
    pub addr_a: Ipv4Addr,
    /// Address of `b`'s end.
    pub addr_b: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl NetnsPair {
    /// Creates the pair, links up, addresses on 10.254.0.0/24 (private,
    /// and only inside these namespaces).
    pub fn create() -> NetnsPair {
        crate::require_root();
        let id = std::process::id();
        let pair = NetnsPair {
            a: format!("hs{id}a"),
            b: format!("hs{id}b"),
            dev_b: format!("hsv{id}b"),
            addr_a: Ipv4Addr::new(10, 254, 0, 1),
            addr_b: Ipv4Addr::new(10, 254, 0, 2),
        };
        let dev_a = format!("hsv{id}a");
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&[
            "link",
            "add",
            &dev_a,
            "netns",
            &pair.a,
            "type",
            "veth",
            "peer",
            "name",
            &pair.dev_b,
            "netns",
            &pair.b,
        ]);
        for (ns, dev, addr) in [
            (&pair.a, &dev_a, pair.addr_a),
            (&pair.b, &pair.dev_b, pair.addr_b),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// Runs `job` on a new thread inside namespace `ns`.
    pub fn spawn_in<T: Send + 'static>(
        ns: &str,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns on a valid namespace fd; it affects this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path} failed");
            job()
        })
    }

    /// A TCP connection from namespace `a` to a listener on `port` in `b`:
    /// (client end, server end).
    pub fn connect_a_to_b(&self, port: u16) -> (std::net::TcpStream, std::net::TcpStream) {
        let server_addr = std::net::SocketAddr::from((self.addr_b, port));
        let listener = Self::spawn_in(&self.b, move || std::net::TcpListener::bind(server_addr))
            .join()
            .expect("listener thread")
            .expect("listen in namespace b");
        let client = Self::spawn_in(&self.a, move || std::net::TcpStream::connect(server_addr))
            .join()
            .expect("client thread")
            .expect("connect from namespace a");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    /// Makes `b` silently drop (`reachable == false`) or accept what `a`
    /// sends, by removing or restoring its address. The link stays up, so
    /// `a`'s segments leave it and are lost on the way, as on a real network
    /// (taking the link down instead fails `a`'s sends locally).
    pub fn set_b_reachable(&self, reachable: bool) {
        let verb = if reachable { "add" } else { "del" };
        let addr = format!("{}/24", self.addr_b);
        ip(&["-n", &self.b, "addr", verb, &addr, "dev", &self.dev_b]);
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Writes 100-byte segments to `client` every 5 ms for `how_long`: small
/// writes with Nagle off, so that each lost segment is one retransmission.
pub fn write_for(client: &mut std::net::TcpStream, how_long: std::time::Duration) {
    use std::io::Write as _;
    let end = std::time::Instant::now() + how_long;
    while std::time::Instant::now() < end {
        client.write_all(&[7u8; 100]).expect("send");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The kernel's TCP_INFO for a socket: (tcpi_rtt in us, tcpi_total_retrans).
pub fn tcp_info(socket: &std::net::TcpStream) -> (u32, u32) {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "getsockopt(TCP_INFO) failed");
        (info.tcpi_rtt, info.tcpi_total_retrans)
    }
}
