//! `[cluster]`: this broker as one node of a Tern cluster over NATS with JetStream. Absent,
//! the broker is a single node and none of this runs.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS servers, `nats://host:port` (or `tls://`); the client moves between them.
    #[serde(deserialize_with = "super::bridge::one_or_many")]
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster: letters, digits, `-` and `_`, at most 64.
    pub node_name: String,
    /// The address clients reach this node's first listener at, for `tern cluster status`
    /// (default: the listener's own).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Also use the servers the NATS cluster tells of, beyond `nats` (NATS's default); false
    /// keeps to the listed ones.
    #[serde(default = "yes")]
    pub nats_discover: bool,
    /// User name on NATS (with `nats_password`).
    #[serde(default)]
    pub nats_user: Option<String>,
    /// Password on NATS.
    #[serde(default)]
    pub nats_password: Option<String>,
    /// A token for NATS (instead of a user name).
    #[serde(default)]
    pub nats_token: Option<String>,
    /// A NATS credentials file (JWT and nkey seed).
    #[serde(default)]
    pub nats_creds: Option<PathBuf>,
    /// PEM CA certificates to check the NATS servers with: TLS required.
    #[serde(default)]
    pub nats_cafile: Option<PathBuf>,
    /// PEM client certificate for NATS (with `nats_keyfile`).
    #[serde(default)]
    pub nats_certfile: Option<PathBuf>,
    /// PEM private key of `nats_certfile`.
    #[serde(default)]
    pub nats_keyfile: Option<PathBuf>,
    /// Copies JetStream keeps of each bucket (1 to 5; 3 for three NATS servers). Never 2: a
    /// two-copy stream stops when either copy is lost.
    #[serde(default = "replicas")]
    pub replicas: usize,
    /// How often this node renews its lease.
    #[serde(default = "lease_interval", deserialize_with = "super::duration")]
    pub lease_interval: Duration,
    /// A node that could not renew its lease for this long stops serving (fences itself).
    #[serde(default = "fence_after", deserialize_with = "super::duration")]
    pub fence_after: Duration,
    /// A node whose lease is this old is dead to the others: its client ids are free, its
    /// wills are published. Longer than `fence_after`, so a node has fenced before.
    #[serde(default = "dead_after", deserialize_with = "super::duration")]
    pub dead_after: Duration,
    /// Messages waiting to go out to NATS, and keys (retained topics, wills, session records)
    /// waiting for their buckets; past it, one more is dropped and counted (`cluster_dropped`).
    #[serde(default = "max_forward_queue")]
    pub max_forward_queue: usize,
    /// The first token of every subject and bucket name, so several clusters share one NATS.
    #[serde(default = "prefix")]
    pub prefix: String,
    /// How long the start waits for NATS before it gives up.
    #[serde(default = "connect_timeout", deserialize_with = "super::duration")]
    pub connect_timeout: Duration,
}

impl ClusterConfig {
    /// The checks the types cannot make.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.nats.is_empty() {
            return Err(("cluster.nats", "at least one NATS server".into()));
        }
        for url in &self.nats {
            if url.trim().is_empty() || url.contains(char::is_whitespace) {
                return Err(("cluster.nats", format!("{url:?}: not a server address")));
            }
        }
        if !name_like(&self.node_name, 64) {
            return Err((
                "cluster.node_name",
                format!("{:?}: 1 to 64 letters, digits, '-' or '_'", self.node_name),
            ));
        }
        if !name_like(&self.prefix, 32) {
            return Err((
                "cluster.prefix",
                format!("{:?}: 1 to 32 letters, digits, '-' or '_'", self.prefix),
            ));
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            return Err((
                "cluster.nats_user",
                "nats_user and nats_password go together".into(),
            ));
        }
        let ways = [
            self.nats_user.is_some(),
            self.nats_token.is_some(),
            self.nats_creds.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err((
                "cluster.nats_token",
                "one of nats_user, nats_token and nats_creds".into(),
            ));
        }
        if self.nats_certfile.is_some() != self.nats_keyfile.is_some() {
            return Err((
                "cluster.nats_certfile",
                "nats_certfile and nats_keyfile go together".into(),
            ));
        }
        if self.nats_certfile.is_some() && self.nats_cafile.is_none() {
            return Err(("cluster.nats_certfile", "needs nats_cafile (TLS)".into()));
        }
        if !(1..=5).contains(&self.replicas) || self.replicas == 2 {
            return Err(("cluster.replicas", "1, 3, 4 or 5 (never 2)".into()));
        }
        let ms = |d: Duration| d.as_millis();
        if ms(self.lease_interval) < 100 || ms(self.lease_interval) > 60_000 {
            return Err(("cluster.lease_interval", "from 100ms to 60s".into()));
        }
        if self.fence_after < self.lease_interval * 2 {
            return Err((
                "cluster.fence_after",
                "at least twice lease_interval".into(),
            ));
        }
        if self.dead_after <= self.fence_after + self.lease_interval {
            return Err((
                "cluster.dead_after",
                "longer than fence_after + lease_interval, so a cut-off node fences itself \
                 before the others take its clients"
                    .into(),
            ));
        }
        if self.dead_after > Duration::from_secs(3600) {
            return Err(("cluster.dead_after", "at most 1h".into()));
        }
        if !(1..=10_000_000).contains(&self.max_forward_queue) {
            return Err(("cluster.max_forward_queue", "from 1 to 10000000".into()));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(600) {
            return Err(("cluster.connect_timeout", "above 0s, at most 10m".into()));
        }
        Ok(())
    }
}

/// True for 1 to `max` letters, digits, `-` or `_`: safe as a NATS subject token and a
/// bucket name.
fn name_like(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn yes() -> bool {
    true
}

fn replicas() -> usize {
    3
}

fn lease_interval() -> Duration {
    Duration::from_secs(1)
}

/// Longer than a JetStream leader election (nats-server waits 4 to 9 s before it starts
/// one): a node on the majority side must not fence itself while the bucket it renews its
/// lease in elects a new leader.
fn fence_after() -> Duration {
    Duration::from_secs(12)
}

fn dead_after() -> Duration {
    Duration::from_secs(20)
}

fn max_forward_queue() -> usize {
    65_536
}

fn prefix() -> String {
    "tern".into()
}

fn connect_timeout() -> Duration {
    Duration::from_secs(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ClusterConfig {
        toml::from_str(text).expect("cluster table")
    }

    #[test]
    fn defaults_and_checks() {
        let c = parse("nats = \"nats://127.0.0.1:4222\"\nnode_name = \"n1\"\n");
        assert_eq!(c.nats, ["nats://127.0.0.1:4222"]);
        assert_eq!(c.replicas, 3);
        assert_eq!(c.validate(), Ok(()));
        let bad = |edit: &dyn Fn(&mut ClusterConfig)| {
            let mut c = c.clone();
            edit(&mut c);
            c.validate().expect_err("refused").0
        };
        assert_eq!(bad(&|c| c.node_name = "a.b".into()), "cluster.node_name");
        assert_eq!(bad(&|c| c.node_name = "n/+#".into()), "cluster.node_name");
        assert_eq!(bad(&|c| c.node_name = String::new()), "cluster.node_name");
        assert_eq!(bad(&|c| c.nats.clear()), "cluster.nats");
        assert_eq!(bad(&|c| c.replicas = 2), "cluster.replicas");
        assert_eq!(bad(&|c| c.dead_after = c.fence_after), "cluster.dead_after");
        assert_eq!(
            bad(&|c| c.nats_user = Some("u".into())),
            "cluster.nats_user"
        );
        assert_eq!(
            bad(&|c| {
                c.nats_token = Some("t".into());
                c.nats_creds = Some("f".into());
            }),
            "cluster.nats_token"
        );
    }
}
