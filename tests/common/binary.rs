//! The real `tern` binary as a child process.

use std::net::SocketAddr;
use std::time::Duration;

use super::{within, WAIT};

/// The real `tern` binary running as its own process, for tests that watch the process
/// (resident memory, signals, command-line flags).
pub struct BinaryBroker {
    pub addr: SocketAddr,
    pub child: tokio::process::Child,
    config: tempfile::NamedTempFile,
    /// The broker's log (its stdout).
    log: tempfile::NamedTempFile,
}

impl BinaryBroker {
    /// Starts `tern -c <config> -p 0`, with `config` as the file's text, and waits until it
    /// logs the address it listens on. The broker picks its own port: a port found free here
    /// and handed over could be taken by another test in between.
    pub async fn start(config: &str) -> BinaryBroker {
        Self::start_with_env(config, &[]).await
    }

    /// As `start`, with these environment variables set for the broker.
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> BinaryBroker {
        Self::start_in(None, config, env).await
    }

    /// As `start_with_env`, inside network namespace `netns` if given (`ip netns exec`).
    pub async fn start_in(netns: Option<&str>, config: &str, env: &[(&str, &str)]) -> BinaryBroker {
        use std::io::Write;
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        file.write_all(config.as_bytes()).expect("write config");
        let log = tempfile::NamedTempFile::new().expect("log file");
        let log_out = log.reopen().expect("log file");
        let mut command = match netns {
            None => tokio::process::Command::new(env!("CARGO_BIN_EXE_tern")),
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_tern")]);
                c
            }
        };
        let mut child = command
            .arg("-c")
            .arg(file.path())
            .args(["-p", "0"])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::from(log_out))
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tern");
        let addr = within(WAIT, async {
            loop {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                let bound = text
                    .lines()
                    .find_map(|l| l.split("listening addr=").nth(1))
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok());
                if let Some(addr) = bound {
                    return addr;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("tern exited ({status}) before listening: {text}");
                }
                // The log is a file: there is no event to await, so look again shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        BinaryBroker {
            addr,
            child,
            log,
            config: file,
        }
    }

    /// Replaces the text of the broker's configuration file (for a reload).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(self.config.path(), text).expect("rewrite config");
    }

    /// Sends SIGHUP and waits until the broker has logged the `n`th reload outcome (done or
    /// failed), so whatever the test checks next runs under the configuration it asked for.
    pub async fn reload(&self, n: usize) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.wait_for_log_lines(n, |l| {
            l.contains("SIGHUP: configuration and files reloaded") || l.contains("reload failed")
        })
        .await;
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Waits (bounded by WAIT) until the broker's log has `n` lines containing `text`.
    pub async fn wait_for_log(&self, text: &str, n: usize) {
        self.wait_for_log_lines(n, |l| l.contains(text)).await
    }

    /// Waits (bounded by WAIT) until the broker's log has `n` lines for which `matches` holds.
    pub async fn wait_for_log_lines(&self, n: usize, matches: impl Fn(&str) -> bool) {
        within(WAIT, async {
            loop {
                let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
                if log.lines().filter(|l| matches(l)).count() >= n {
                    return;
                }
                // The log is a file: there is no event to await, so look again shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// The configuration file it was started with.
    pub fn config_path(&self) -> &std::path::Path {
        self.config.path()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}
