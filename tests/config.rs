//! The `tern` binary's command line and configuration handling, run as a user would.

mod common;

use std::io::Write;
use std::process::Command;

use common::{within, Raw, WAIT};
use tern::Config;

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    f.write_all(text.as_bytes()).expect("write config");
    f
}

/// Runs `tern --check-config -c FILE`; returns (exit code, stderr).
fn check(text: &str) -> (i32, String, String) {
    let f = config_file(text);
    let out = tern()
        .args(["--check-config", "-c"])
        .arg(f.path())
        .output()
        .expect("run tern");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.lines().count() <= 1,
        "one line of error at most: {stderr}"
    );
    (
        out.status.code().unwrap_or(-1),
        stderr,
        f.path().display().to_string(),
    )
}

#[test]
fn shipped_config_checks_ok() {
    let out = tern()
        .args([
            "--check-config",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/tern.toml"),
        ])
        .output()
        .expect("run tern");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn print_default_config_is_the_shipped_file_and_the_defaults() {
    let out = tern()
        .arg("--print-default-config")
        .output()
        .expect("run tern");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tern.toml"))
        .expect("read");
    assert_eq!(printed, shipped);
    let parsed = Config::parse(&printed, std::path::Path::new("printed")).expect("parses");
    // The defaults, except that the shipped file turns the HTTP server on, on loopback (the
    // default without `[http]` is no HTTP server).
    let mut want = Config::default();
    want.http.bind = Some("127.0.0.1:8080".parse().expect("address"));
    assert_eq!(parsed, want);
}

#[test]
fn unknown_key_is_named_with_the_file() {
    let (code, err, path) = check("[mqtt]\nmax_packet_sise = 10\n");
    assert_eq!(code, 2);
    assert!(err.contains(&path), "{err}");
    assert!(err.contains("mqtt.max_packet_sise"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn invalid_values_are_named() {
    for (text, key) in [
        (
            "[mqtt]\nmax_packet_size = \"big\"\n",
            "mqtt.max_packet_size",
        ),
        (
            "[mqtt]\nconnect_timeout = \"forever\"\n",
            "mqtt.connect_timeout",
        ),
        (
            "[session]\nmax_inflight_messages = 0\n",
            "session.max_inflight_messages",
        ),
        (
            "[session]\nqueue_overflow = \"drop_random\"\n",
            "session.queue_overflow",
        ),
        ("[[listener]]\nbind = \"localhost\"\n", "listener[0].bind"),
        (
            "[[listener]]\nprotocol = \"mqtt-sn\"\n",
            "listener.protocol",
        ),
        ("[log]\nlevel = \"=\"\n", "log.level"),
    ] {
        let (code, err, path) = check(text);
        assert_eq!(code, 2, "{text}");
        assert!(err.contains(&path) && err.contains(key), "{key}: {err}");
    }
}

#[test]
fn http_half_configured_or_exposed_is_refused() {
    for (text, key, why) in [
        // Reachable from other machines with nobody to authenticate: fail closed.
        (
            "[http]\nbind = \"0.0.0.0:8080\"\n",
            "http.bind",
            "password_file",
        ),
        (
            "[http]\nbind = \"[::]:8080\"\n",
            "http.bind",
            "password_file",
        ),
        (
            "[http]\npassword_file = \"users\"\n",
            "http.password_file",
            "http.bind",
        ),
        (
            "[http]\nbind = \"127.0.0.1\"\n",
            "http.bind",
            "socket address",
        ),
        ("[http]\nport = 8080\n", "http.port", "unknown field"),
    ] {
        let (code, err, path) = check(text);
        assert_eq!(code, 2, "{text}");
        assert!(
            err.contains(&path) && err.contains(key) && err.contains(why),
            "{text}: {err}"
        );
    }
    // A password file that cannot be used is named, with the key.
    let (code, err, _) =
        check("[http]\nbind = \"0.0.0.0:0\"\npassword_file = \"/nonexistent/users\"\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("http.password_file") && err.contains("/nonexistent/users"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let users = dir.path().join("users");
    std::fs::write(&users, "admin:not-a-hash\n").expect("write");
    let (code, err, _) = check(&format!(
        "[http]\nbind = \"0.0.0.0:0\"\npassword_file = {:?}\n",
        users.display().to_string()
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("http.password_file") && err.contains(":1"),
        "{err}"
    );
}

#[test]
fn bridge_tables_are_checked() {
    let good = "[[bridge]]\nname = \"up\"\naddress = \"127.0.0.1:1884\"\ntopic = [\"# out 1 edge/ central/\"]\n";
    for (text, key, why) in [
        (
            good.replace("# out 1", "# sideways 1"),
            "bridge[0].topic",
            "direction \"sideways\"",
        ),
        (
            good.replace("edge/", "edge/+/"),
            "bridge[0].topic",
            "wildcard",
        ),
        (
            good.replace("\"up\"", "\"a/b\""),
            "bridge.name",
            "without '/'",
        ),
        (good.replace(":1884", ":0"), "bridge.address", "host:port"),
        (
            format!("{good}password = \"p\"\n"),
            "bridge.password",
            "needs username",
        ),
        (
            format!("{good}certfile = \"c.pem\"\nkeyfile = \"k.pem\"\n"),
            "bridge.certfile",
            "needs cafile",
        ),
        (
            format!("{good}restart_timeout = [\"5m\", \"5s\"]\n"),
            "bridge.restart_timeout",
            "at least the first",
        ),
        (format!("{good}{good}"), "bridge.name", "names two bridges"),
        (
            format!("{good}bogus = 1\n"),
            "bridge[0].bogus",
            "unknown field",
        ),
    ] {
        let (code, err, path) = check(&text);
        assert_eq!(code, 2, "{text}");
        assert!(
            err.contains(&path) && err.contains(key) && err.contains(why),
            "{text}: {err}"
        );
    }
    let (code, err, _) = check(good);
    assert_eq!(code, 0, "{err}");
}

/// `config/tern.service`: hardened as the README says, running the binary with the flags it
/// has, and, where systemd is installed, a unit `systemd-analyze verify` accepts.
#[test]
fn the_systemd_unit_is_hardened_and_valid() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tern.service"))
        .expect("read the unit");
    for line in [
        "ExecStart=/usr/local/bin/tern -c /etc/tern/tern.toml",
        "ExecStartPre=/usr/local/bin/tern --check-config -c /etc/tern/tern.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "StateDirectory=tern",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
    // ExecStartPre's command on the shipped configuration is `shipped_config_checks_ok`.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: the unit's syntax is not verified here");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tern.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tern", env!("CARGO_BIN_EXE_tern")),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("tern.service"),
        "{err}"
    );
}

#[test]
fn toml_syntax_error_gives_line() {
    let (code, err, _) = check("[mqtt\nmax_packet_size = 1\n");
    assert_eq!(code, 2);
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn missing_file_is_an_error() {
    let out = tern()
        .args(["--check-config", "-c", "/nonexistent/tern.toml"])
        .output()
        .expect("run tern");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Item 11 of the drop-in issue: the file is named as what cannot be read, no empty key.
    assert!(
        err.starts_with("tern: config error: cannot read /nonexistent/tern.toml: "),
        "{err}"
    );
    assert!(!err.contains("key"), "{err}");
}

#[test]
fn empty_file_is_the_defaults() {
    let (code, err, _) = check("");
    assert_eq!(code, 0, "{err}");
}

/// Starts the binary with `-p 0` and connects to the port it reports.
#[tokio::test]
async fn port_flag_overrides_the_listener() {
    // The file says port 1 (which needs root to bind and is never free here); -p wins
    // (BinaryBroker passes `-p 0` and reads the bound address from the log).
    let mut broker = common::BinaryBroker::start("[[listener]]\nbind = \"127.0.0.1:1\"\n").await;
    let (_raw, ack) = Raw::connect(broker.addr, "cli", true, 60).await;
    assert_eq!(ack.code, tern::codec::ConnectReturnCode::Accepted);
    // SIGTERM shuts it down gracefully with status 0.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = within(WAIT, broker.child.wait()).await.expect("wait");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn readme_documents_every_config_key() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tern.toml"))
        .expect("config");
    let mut keys = 0;
    for line in shipped.lines() {
        let line = line.trim();
        if line.starts_with('#') || !line.contains('=') {
            continue;
        }
        let key = line.split('=').next().unwrap_or("").trim();
        assert!(
            readme.contains(&format!("`{key}`")),
            "README does not document `{key}`"
        );
        keys += 1;
    }
    assert!(keys >= 15, "found only {keys} keys");
}

#[test]
fn unreadable_tls_files_are_named() {
    let (code, err, _) = check("[[listener]]\nbind = \"127.0.0.1:0\"\ncertfile = \"missing.pem\"\nkeyfile = \"missing.key\"\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("missing.pem") && err.contains("cannot read"),
        "{err}"
    );
    let (code, err, _) = check("[[listener]]\ncertfile = \"a.pem\"\n");
    assert_eq!(code, 2);
    assert!(err.contains("listener.certfile"), "{err}");
}

#[test]
fn tls_only_options_without_a_certificate_are_refused() {
    // Each of these would otherwise leave a plain TCP listener that authenticates nobody.
    for (option, key) in [
        ("cafile = \"ca.pem\"", "listener.cafile"),
        (
            "cafile = \"ca.pem\"\nrequire_certificate = true",
            "listener.cafile",
        ),
        ("require_certificate = true", "listener.require_certificate"),
        (
            "use_identity_as_username = true",
            "listener.use_identity_as_username",
        ),
    ] {
        let (code, err, _) = check(&format!("[[listener]]\nbind = \"127.0.0.1:0\"\n{option}\n"));
        assert_eq!(code, 2, "{option}");
        assert!(
            err.contains(key) && err.contains("certfile"),
            "{option}: {err}"
        );
    }
}
