//! A private network for partition tests: each host is a Linux network namespace with its own
//! address on one bridge, and the test process reaches every host over that bridge. Links
//! between hosts can be cut and healed while the test process still reaches all of them, so
//! an isolated node keeps running and answering clients, as in a real network partition.
//!
//! The bridge lives in a namespace of its own: Docker's `FORWARD` policy (DROP, applied to
//! bridged traffic when `br_netfilter` is loaded) belongs to the host's namespace and does not
//! reach it. A cut is a pair of blackhole routes, one in each host: packets vanish silently,
//! so callers see timeouts rather than quick refusals. Needs root and `ip` (iproute2).

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context};

/// Numbers the networks (and probes) of this process, so that tests running at once differ.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A bridge with `hosts` namespaces on it, removed on drop.
pub struct TestNet {
    prefix: String,
    subnet: String,
    hosts: usize,
    cut: Mutex<BTreeSet<(usize, usize)>>,
}

/// Runs `ip ARGS...`, failing with its message.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl TestNet {
    /// Why this machine cannot make a test network, if it cannot (not root, no `ip`, no
    /// namespaces).
    pub fn unavailable() -> Option<String> {
        let probe = format!("berth-probe-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        match ip(&["netns", "add", &probe]) {
            Ok(()) => {
                let _ = ip(&["netns", "del", &probe]);
                None
            }
            Err(e) => Some(format!("network namespaces are unavailable: {e}")),
        }
    }

    /// Creates the bridge and hosts 1..=`hosts`. Names and the /24 subnet come from the
    /// process id and a counter, so tests running at once do not collide.
    pub fn new(hosts: usize) -> anyhow::Result<TestNet> {
        assert!((1..=200).contains(&hosts));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let net = TestNet {
            prefix: format!("bt{}x{n}", pid % 100_000),
            subnet: format!("10.{}.{}", 200 + (n % 50), pid % 250),
            hosts,
            cut: Mutex::new(BTreeSet::new()),
        };
        net.build().with_context(|| format!("building test network {}", net.prefix))?;
        Ok(net)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// The namespace of host `h` (1-based), for `ip netns exec`.
    pub fn namespace(&self, h: usize) -> String {
        assert!((1..=self.hosts).contains(&h), "no host {h}");
        format!("{}-{h}", self.prefix)
    }

    /// The address of host `h`.
    pub fn addr(&self, h: usize) -> String {
        assert!((1..=self.hosts).contains(&h), "no host {h}");
        format!("{}.{}", self.subnet, 10 + h)
    }

    /// The number of hosts.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    fn build(&self) -> anyhow::Result<()> {
        let sw = self.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        // The test process's own leg on the bridge.
        let host_leg = format!("{}-t", self.prefix);
        ip(&["link", "add", &host_leg, "type", "veth", "peer", "name", "tester", "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", "tester", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}.1/24", self.subnet), "dev", &host_leg])?;
        ip(&["link", "set", &host_leg, "up"])?;
        for h in 1..=self.hosts {
            let ns = self.namespace(h);
            let leg = format!("h{h}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &sw, "link", "add", &leg, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &sw, "link", "set", &leg, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.addr(h)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// A command that runs `program` inside host `h`'s namespace.
    pub fn command(&self, h: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.namespace(h), program)
    }

    fn route(&self, verb: &str, from: usize, to: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.namespace(from), "route", verb, "blackhole", &format!("{}/32", self.addr(to))])
    }

    /// Cuts the link between hosts `a` and `b`, both ways.
    pub fn cut(&self, a: usize, b: usize) -> anyhow::Result<()> {
        let pair = (a.min(b), a.max(b));
        if self.cut.lock().unwrap().insert(pair) {
            self.route("add", a, b)?;
            self.route("add", b, a)?;
        }
        Ok(())
    }

    /// Cuts host `h` off from every other host (the test process still reaches it).
    pub fn isolate(&self, h: usize) -> anyhow::Result<()> {
        for other in (1..=self.hosts).filter(|o| *o != h) {
            self.cut(h, other)?;
        }
        Ok(())
    }

    /// Restores every cut link.
    pub fn heal(&self) -> anyhow::Result<()> {
        let pairs = std::mem::take(&mut *self.cut.lock().unwrap());
        for (a, b) in pairs {
            self.route("del", a, b)?;
            self.route("del", b, a)?;
        }
        Ok(())
    }
}

/// A command that runs `program` inside network namespace `ns` (`ip netns exec`, which execs
/// it: the child's pid is the program's).
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends inside it, and with them their peers.
        for h in 1..=self.hosts {
            let _ = ip(&["netns", "del", &self.namespace(h)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
        let _ = ip(&["link", "del", &format!("{}-t", self.prefix)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's python3 (the pyenv shim on PATH starts slowly).
    const PY: &str = "/usr/bin/python3";

    /// Hosts reach each other and the tester; a cut stops traffic between two hosts only, and
    /// healing brings it back.
    #[test]
    fn cut_and_heal() {
        if let Some(why) = TestNet::unavailable() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why}");
            }
            eprintln!("SKIP: {why}");
            return;
        }
        let net = TestNet::new(3).unwrap();
        let listener = |h: usize| {
            // A one-line TCP server inside host h, answering every connection with "ok".
            let script = "import socket,sys\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((sys.argv[1],7000));s.listen()\nwhile True:\n c,_=s.accept();c.sendall(b'ok');c.close()";
            net.command(h, PY).args(["-c", script, &net.addr(h)]).spawn().unwrap()
        };
        let mut server = listener(2);
        let reach = |from: Option<usize>, to: usize| {
            let code = format!(
                "import socket,sys\ntry:\n s=socket.create_connection(('{}',7000),timeout=1);sys.exit(0 if s.recv(2)==b'ok' else 1)\nexcept OSError:\n sys.exit(1)",
                net.addr(to)
            );
            let mut cmd = match from {
                Some(h) => net.command(h, PY),
                None => Command::new(PY),
            };
            cmd.args(["-c", &code]).status().unwrap().success()
        };
        let mut up = false;
        for _ in 0..50 {
            up = reach(None, 2);
            if up {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(up, "the tester does not reach host 2");
        assert!(reach(Some(1), 2) && reach(Some(3), 2));
        net.isolate(2).unwrap();
        assert!(!reach(Some(1), 2) && !reach(Some(3), 2), "the cut let traffic through");
        assert!(reach(None, 2), "the cut also cut the tester off");
        net.heal().unwrap();
        assert!(reach(Some(1), 2) && reach(Some(3), 2), "healing did not restore the links");
        let _ = server.kill();
        let _ = server.wait();
    }
}
