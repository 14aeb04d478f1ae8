//! Ports for processes that must be told their address before they bind (a node's gRPC
//! address that its peers are given, a restart on the same port, a helper server).
//!
//! Binding port 0 and closing the socket hands out a port from the kernel's ephemeral range,
//! which any outgoing connection on the machine may take before the process binds it (a CI
//! run lost a cluster to exactly that). A port picked at random below that range is never
//! handed to an outgoing connection, so only another picker can race for it.

use rand::Rng;

const FLOOR: u16 = 10_000;

/// A loopback port that was free a moment ago, from below the ephemeral range.
pub fn free_port() -> u16 {
    let low = ephemeral_low().unwrap_or(32_768);
    let mut rng = rand::thread_rng();
    if low > FLOOR + 1_000 {
        for _ in 0..1_000 {
            let port = rng.gen_range(FLOOR..low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `127.0.0.1:<free_port()>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}
