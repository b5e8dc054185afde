//! Reading a configuration: the file, the TOML, errors that name the file, the key and the
//! line, paths made relative to the file, and the `-p` override kept for reloads.

use std::path::Path;

use super::{Config, ConfigError, LoadError};

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut config = Config::parse(&text, path)?;
        // Files named in the config are found next to it, wherever tern is started from.
        let base = path.parent().unwrap_or(Path::new("."));
        let listener_files = config.listener.iter_mut().flat_map(|l| {
            [
                &mut l.certfile,
                &mut l.keyfile,
                &mut l.cafile,
                &mut l.crlfile,
            ]
        });
        let bridge_files = config
            .bridge
            .iter_mut()
            .flat_map(|b| [&mut b.cafile, &mut b.certfile, &mut b.keyfile]);
        let location = &mut config.persistence.persistence_location;
        if location.is_relative() && !location.as_os_str().is_empty() {
            *location = base.join(&*location);
        }
        for file in [
            &mut config.auth.password_file,
            &mut config.auth.acl_file,
            &mut config.http.password_file,
        ]
        .into_iter()
        .chain(listener_files)
        .chain(bridge_files)
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        config.origin.file = Some(path.to_owned());
        Ok(config)
    }

    /// Listens on `port` instead of the first listener's port (`tern -p`), now and after
    /// every reload.
    pub fn override_port(&mut self, port: u16) {
        self.origin.port = Some(port);
        if let Some(first) = self.listener.first_mut() {
            first.bind.set_port(port);
        }
    }

    /// Reads the file this configuration came from again, with the same override; the
    /// defaults again if it came from none.
    pub fn reread(&self) -> Result<Config, LoadError> {
        let mut config = match &self.origin.file {
            Some(file) => Config::load(file)?,
            None => Config::default(),
        };
        if let Some(port) = self.origin.port {
            config.override_port(port);
        }
        Ok(config)
    }

    /// Parses and validates config text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let mut key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().replace('\n', " ");
            // For an unknown key the path stops at its table; name the key itself.
            if let Some(unknown) = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
            {
                if key == "." || key.is_empty() {
                    key = unknown.to_owned();
                } else if !key.ends_with(unknown) {
                    key = format!("{key}.{unknown}");
                }
            }
            if key == "." {
                key.clear();
            }
            let at = inner
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" (line {line}, column {col})")
                })
                .unwrap_or_default();
            ConfigError {
                path: path.to_owned(),
                key,
                msg: format!("{message}{at}"),
            }
        })?;
        config.validate().map_err(|(key, msg)| ConfigError {
            path: path.to_owned(),
            key: key.into(),
            msg,
        })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{QueueOverflow, DEFAULT_CONFIG_TOML};
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn shipped_file_is_the_defaults_with_http_on_loopback() {
        // Without `[http]` there is no HTTP server; the shipped file turns it on, on loopback.
        let mut want = Config::default();
        want.http.bind = Some(([127, 0, 0, 1], 8080).into());
        assert_eq!(parse(DEFAULT_CONFIG_TOML), Ok(want));
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse(""), Ok(Config::default()));
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = parse("[mqtt]\nmax_packet_size = 4096\n").expect("valid");
        assert_eq!(c.mqtt.max_packet_size, 4096);
        assert_eq!(c.mqtt.connect_timeout, Duration::from_secs(10));
        let c = parse(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[session]\nqueue_overflow = \"drop_oldest\"\n",
        )
        .expect("valid");
        assert_eq!(c.listener[0].protocol, "mqtt");
        assert_eq!(c.session.queue_overflow, QueueOverflow::DropOldest);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[mqtt]\nmax_packet_sise = 5\n").expect_err("unknown key");
        assert_eq!(e.key, "mqtt.max_packet_sise");
        assert!(e.msg.contains("line 2"), "{}", e.msg);
        let e = parse("[mqtt]\nmax_packet_size = \"big\"\n").expect_err("bad type");
        assert_eq!(e.key, "mqtt.max_packet_size");
        let c = parse("[session]\npersistent_client_expiration = \"14d\"\n").expect("valid");
        assert_eq!(
            c.session.persistent_client_expiration,
            Some(Duration::from_secs(14 * 86_400))
        );
        let e = parse("[mqtt]\nconnect_timeout = \"soon\"\n").expect_err("bad duration");
        assert_eq!(e.key, "mqtt.connect_timeout");
        let e = parse("[[listener]]\nbind = \"nowhere\"\n").expect_err("bad address");
        assert_eq!(e.key, "listener[0].bind");
        let e = parse("[session]\nmax_inflight_messages = 0\n").expect_err("invalid");
        assert_eq!(e.key, "session.max_inflight_messages");
        let e = parse("[session]\nbackpressure_timeout = \"1000000y\"\n").expect_err("too long");
        assert_eq!(e.key, "session.backpressure_timeout");
        let e = parse("bogus = 1\n").expect_err("unknown top-level key");
        assert_eq!(e.key, "bogus");
        let e = parse("[mqtt\n").expect_err("syntax");
        assert!(e.msg.contains("line 1"), "{}", e.msg);
        assert_eq!(e.to_string().lines().count(), 1, "one line: {e}");
    }
}
