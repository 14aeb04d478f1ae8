//! `berth probe URL`: a plain-HTTP GET that succeeds on a 2xx, for container health checks
//! in an image that has no shell, curl or wget (`HEALTHCHECK CMD berth probe ...`).

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// GETs `url` (`http://HOST:PORT/PATH`) within `timeout`; Ok on a 2xx status.
pub fn probe(url: &str, timeout: Duration) -> anyhow::Result<u16> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("{url}: only http:// URLs are probed"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = hostport.to_socket_addrs().with_context(|| format!("{hostport}: not an address"))?.next().ok_or_else(|| anyhow!("{hostport}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nUser-Agent: berth-probe\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).context("reading the answer")?;
    let status: u16 = std::str::from_utf8(&head[9..12]).ok().and_then(|c| c.parse().ok()).ok_or_else(|| anyhow!("not an HTTP answer"))?;
    if !(200..300).contains(&status) {
        bail!("{url}: {status}");
    }
    Ok(status)
}
