//! Network namespaces of this test's own, one per cluster host (a NATS server and a Tern
//! node each), joined by veth pairs to a bridge in the test's namespace, which reaches every
//! host. A partition is blackhole routes between one host and the others: the test can
//! still reach each side.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `ip ARGS`, failing the test if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hosts in namespaces, on 10.X.Y.1.. with the test at 10.X.Y.254.
pub struct Hosts {
    tag: String,
    subnet: String,
    n: usize,
}

impl Hosts {
    /// Makes `n` hosts.
    pub fn create(n: usize) -> Hosts {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id() % 200 + k;
        let tag = format!("tp{id}");
        let subnet = format!("10.{}.{}", 100 + id % 100, 10 + k % 200);
        let hosts = Hosts { tag, subnet, n };
        let br = hosts.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", hosts.subnet),
            "dev",
            &br,
        ]);
        ip(&["link", "set", &br, "up"]);
        for i in 0..n {
            let (ns, veth) = (hosts.ns(i), format!("{}v{i}", hosts.tag));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &veth, "master", &br, "up"]);
            let addr = format!("{}/24", hosts.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// Host `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Cuts host `i` off from every other host (both ways); the test still reaches it.
    pub fn isolate(&self, i: usize) {
        self.routes(i, "add");
    }

    /// Undoes `isolate`.
    pub fn heal(&self, i: usize) {
        self.routes(i, "del");
    }

    fn routes(&self, i: usize, verb: &str) {
        for j in (0..self.n).filter(|j| *j != i) {
            ip(&[
                "-n",
                &self.ns(i),
                "route",
                verb,
                "blackhole",
                &format!("{}/32", self.addr(j)),
            ]);
            ip(&[
                "-n",
                &self.ns(j),
                "route",
                verb,
                "blackhole",
                &format!("{}/32", self.addr(i)),
            ]);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..self.n {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}
