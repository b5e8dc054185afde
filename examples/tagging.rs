//! Tern embedded in an application, with hooks: every message is tagged with the client id
//! of its publisher (`thermo-1: 21.5` for a payload `21.5` from `thermo-1`), and messages
//! are counted per publisher; the counts are printed when the broker stops.
//!
//! ```text
//! cargo run --release --example tagging -- config/tern.toml
//! mosquitto_sub -t 'sensors/#' -v &
//! mosquitto_pub -i thermo-1 -t sensors/temp -m 21.5     # arrives as "thermo-1: 21.5"
//! ```
//!
//! `tests/hooks_example.rs` runs this file's broker with real clients.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use parking_lot::Mutex;
use tern::hooks::{ClientRef, Hooks, PublishAction, Reply};
use tern::message::Message;
use tern::{Broker, Config, StartError};

/// The hooks: tag each message with its publisher, and count.
#[derive(Default)]
pub struct Tagger {
    counts: Mutex<HashMap<String, u64>>,
}

impl Tagger {
    /// Messages `client_id` has published so far.
    pub fn count(&self, client_id: &str) -> u64 {
        self.counts.lock().get(client_id).copied().unwrap_or(0)
    }

    /// Counts one more message from `client_id`.
    fn add_one(&self, client_id: &str) {
        let mut counts = self.counts.lock();
        match counts.get_mut(client_id) {
            Some(n) => *n += 1,
            None => {
                counts.insert(client_id.to_owned(), 1);
            }
        }
    }

    /// Every publisher's count, most first.
    pub fn counts(&self) -> Vec<(String, u64)> {
        let mut all: Vec<_> = self.counts.lock().clone().into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all
    }
}

impl Hooks for Tagger {
    // Runs in the publisher's own connection task, before the message is routed: what it
    // returns is what every subscriber gets.
    fn on_publish(&self, client: ClientRef<'_>, msg: &Message) -> Reply<PublishAction> {
        self.add_one(client.client_id);
        // The broker's own topics and other brokers' bridge states are left as they are.
        if msg.topic_str().starts_with('$') {
            return Reply::Now(PublishAction::Keep);
        }
        let mut payload = BytesMut::with_capacity(client.client_id.len() + 2 + msg.payload.len());
        payload.put_slice(client.client_id.as_bytes());
        payload.put_slice(b": ");
        payload.put_slice(&msg.payload);
        Reply::Now(PublishAction::Rewrite {
            topic: msg.topic_str().to_owned(),
            payload: payload.freeze(),
        })
    }
}

/// A broker for `config` with `tagger` as its hooks, bound and ready to run.
pub async fn bind(config: Config, tagger: Arc<Tagger>) -> Result<Broker, StartError> {
    Broker::builder(config).hooks(tagger).bind().await
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match std::env::args().nth(1) {
        Some(path) => match Config::load(Path::new(&path)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tagging: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tagging: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tagger = Arc::new(Tagger::default());
    runtime.block_on(async {
        let broker = match bind(config, tagger.clone()).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("tagging: {e}");
                return ExitCode::FAILURE;
            }
        };
        broker
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
        for (client, n) in tagger.counts() {
            println!("{client}: {n} messages");
        }
        ExitCode::SUCCESS
    })
}
