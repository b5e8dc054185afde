//! The JSON API under `/api/v1`: stats, clients (paged; one with its subscriptions; kick),
//! subscriptions (paged, searchable), retained messages under a filter, and publish.
//!
//! Sessions are asked, not read: a session's state is its actor's, so a client's queue,
//! inflight window and subscriptions come back from a `SessionCmd::Admin` sent to its mailbox
//! (`try_send`, like a delivery: a full mailbox answers "busy" rather than wait), and a kick
//! is the session closing its own connection. Lists are sorted so pages are stable.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::HttpState;
use crate::message::{Message, QoS};
use crate::observability::sys::SysSource;
use crate::routing::topic;
use crate::sessions::registry::SessionHandle;
use crate::sessions::{Admin, SessionCmd, SessionInfo};

/// How long a session has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Page size when none is asked for, and the largest one allowed.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The API's routes.
pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{id}", get(client).delete(kick))
        .route("/api/v1/subscriptions", get(subscriptions))
        .route("/api/v1/retained", get(retained))
        .route("/api/v1/publish", post(publish))
}

/// An error answer: a status and `{"error": ...}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// The query of every list: `?page=N&limit=M` (page from 1), and the searches some lists
/// take. (One struct: serde's `flatten` cannot read numbers from a query string.)
#[derive(Debug, Deserialize)]
struct Listing {
    page: Option<usize>,
    limit: Option<usize>,
    /// Subscriptions: only filters containing this text.
    filter: Option<String>,
    /// Subscriptions: only this client's.
    client_id: Option<String>,
    /// Retained messages: those matching this filter (default `#`).
    topic: Option<String>,
}

impl Listing {
    /// The slice of `items` this page covers, with the `meta` object describing it.
    fn take<T>(&self, items: Vec<T>) -> (Vec<T>, Value) {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let page = self.page.unwrap_or(1).max(1);
        let count = items.len();
        let start = (page - 1).saturating_mul(limit).min(count);
        let items = items.into_iter().skip(start).take(limit).collect();
        let meta = json!({ "page": page, "limit": limit, "count": count });
        (items, meta)
    }
}

/// `GET /api/v1/stats`: the broker's counters and gauges.
async fn stats(State(state): State<Arc<HttpState>>) -> Json<Value> {
    let shared = &state.shared;
    let s = shared.metrics.snapshot();
    let g = shared.gauges();
    let listeners: Vec<Value> = shared
        .metrics
        .listeners()
        .iter()
        .map(|l| {
            let r = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            json!({
                "listener": l.listener,
                "transport": l.transport,
                "connections": r(&l.open),
                "accepted": r(&l.accepted),
            })
        })
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "clients": {
            "connected": s.clients_connected,
            "maximum": s.clients_maximum,
            "sessions": g.clients_total,
            "offline": (g.clients_total as u64).saturating_sub(s.clients_connected),
        },
        "messages": {
            "received": s.received_total(),
            "sent": s.sent_total(),
            "received_by_qos": s.messages_received,
            "sent_by_qos": s.messages_sent,
            "dropped": s.dropped_total(),
            "queued": g.queued,
            "inflight": g.inflight,
        },
        "bytes": {
            "received": s.bytes_received,
            "sent": s.bytes_sent,
            "payload_received": s.payload_bytes_received.iter().sum::<u64>(),
            "payload_sent": s.payload_bytes_sent.iter().sum::<u64>(),
        },
        "drops": {
            "queue_full": s.dropped_queue_full,
            "mailbox_full": s.dropped_mailbox_full,
            "qos0_offline": s.dropped_qos0_offline,
            "message_size_limit": s.dropped_oversize,
            "memory_limit": s.dropped_memory_limit,
            "cluster": s.cluster_dropped,
        },
        "subscriptions": g.subscriptions,
        "subscription_filters": g.filters,
        "retained": { "messages": g.retained, "bytes": g.retained_bytes },
        "connections": {
            "accepted": s.connections_accepted,
            "refused": s.connections_refused,
            "listeners": listeners,
        },
        "auth_failures": s.auth_failures,
        "acl_denied": s.acl_denied,
        "protocol_errors": s.protocol_errors,
        "heap_bytes": crate::observability::memory::heap_or_resident(),
    }))
}

/// Asks a session for its state; `None` if it is busy (full mailbox), ending, or slow.
async fn inspect(handle: &SessionHandle) -> Option<SessionInfo> {
    let (tx, rx) = oneshot::channel();
    let cmd = SessionCmd::Admin(Box::new(Admin::Inspect(tx)));
    handle.mailbox.try_send(cmd).ok()?;
    tokio::time::timeout(ASK_TIMEOUT, rx).await.ok()?.ok()
}

/// One client as the API shows it; `subscriptions` lists its filters (else counts them).
fn client_json(id: &str, handle: &SessionHandle, info: Option<&SessionInfo>, subs: bool) -> Value {
    let Some(info) = info else {
        return json!({
            "client_id": id,
            "persistent": handle.persistent,
            "connected": handle.mailbox.backlog().attached(),
            "state": "busy",
        });
    };
    let conn = info.connection.as_deref();
    let mut v = json!({
        "client_id": id,
        "username": info.username.as_deref(),
        "persistent": info.persistent,
        "connected": conn.is_some(),
        "peer": conn.map(|c| c.peer.to_string()),
        "listener": conn.map(|c| c.listener.listener.clone()),
        "transport": conn.map(|c| c.listener.transport),
        "protocol": conn.map(|c| c.protocol),
        "keepalive": conn.map(|c| c.keepalive),
        "connected_at": conn.and_then(|c| c.since.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        "queued": info.queued,
        "queued_bytes": info.queued_bytes,
        "inflight": info.inflight,
    });
    v["subscriptions"] = if subs {
        info.subscriptions
            .iter()
            .map(|(f, q)| json!({ "filter": f, "qos": *q as u8 }))
            .collect()
    } else {
        json!(info.subscriptions.len())
    };
    v
}

/// `GET /api/v1/clients?page=&limit=`: every session, connected or not, by client id.
async fn clients(
    State(state): State<Arc<HttpState>>,
    Query(paging): Query<Listing>,
) -> Json<Value> {
    let (page, meta) = paging.take(state.shared.registry.sorted());
    let mut data = Vec::with_capacity(page.len());
    for (id, handle) in &page {
        let info = inspect(handle).await;
        data.push(client_json(id, handle, info.as_ref(), false));
    }
    Json(json!({ "data": data, "meta": meta }))
}

/// `GET /api/v1/clients/{id}`: one session with its subscriptions.
async fn client(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let handle = state
        .shared
        .registry
        .get(&id)
        .ok_or_else(|| not_found(&id))?;
    let info = inspect(&handle).await;
    Ok(Json(client_json(&id, &handle, info.as_ref(), true)))
}

fn not_found(id: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no session for client id {id:?}"),
    )
}

/// `DELETE /api/v1/clients/{id}`: closes the client's connection; its will is published and
/// a persistent session stays (204). 404 if it has no session or is not connected.
async fn kick(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let handle = state
        .shared
        .registry
        .get(&id)
        .ok_or_else(|| not_found(&id))?;
    let (tx, rx) = oneshot::channel();
    let busy = || {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session is busy; try again".into(),
        )
    };
    handle
        .mailbox
        .try_send(SessionCmd::Admin(Box::new(Admin::Kick(tx))))
        .map_err(|_| busy())?;
    match tokio::time::timeout(ASK_TIMEOUT, rx).await {
        Ok(Ok(true)) => {
            tracing::info!(client_id = id, "client kicked over the HTTP API");
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(Ok(false)) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("client {id:?} is not connected"),
        )),
        _ => Err(busy()),
    }
}

/// `GET /api/v1/subscriptions?filter=TEXT&client_id=ID&page=&limit=`.
async fn subscriptions(
    State(state): State<Arc<HttpState>>,
    Query(q): Query<Listing>,
) -> Json<Value> {
    let mut all: Vec<(String, Arc<str>, QoS)> = Vec::new();
    state.shared.router.for_each_route(|filter, route| {
        let wanted = q.filter.as_deref().is_none_or(|t| filter.contains(t))
            && q.client_id
                .as_deref()
                .is_none_or(|c| *route.client_id == *c);
        if wanted {
            all.push((filter.to_owned(), route.client_id.clone(), route.qos));
        }
    });
    all.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let (page, meta) = q.take(all);
    let data: Vec<Value> = page
        .iter()
        .map(|(f, c, qos)| json!({ "filter": f, "client_id": &**c, "qos": *qos as u8 }))
        .collect();
    Json(json!({ "data": data, "meta": meta }))
}

/// `GET /api/v1/retained?topic=FILTER&page=&limit=` (the filter defaults to `#`).
async fn retained(
    State(state): State<Arc<HttpState>>,
    Query(q): Query<Listing>,
) -> Result<Json<Value>, ApiError> {
    let filter = q.topic.as_deref().unwrap_or("#");
    if !topic::valid_filter(filter) {
        return Err(bad(format!("{filter:?} is not a valid topic filter")));
    }
    let mut all = state.shared.router.retain_store().matching(filter);
    all.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
    let (page, meta) = q.take(all);
    let data: Vec<Value> = page
        .iter()
        .map(|m| {
            let (payload, encoding) = match std::str::from_utf8(&m.payload) {
                Ok(text) => (text.to_owned(), "plain"),
                Err(_) => (
                    base64::engine::general_purpose::STANDARD.encode(&m.payload),
                    "base64",
                ),
            };
            json!({
                "topic": String::from_utf8_lossy(&m.topic),
                "qos": m.qos as u8,
                "payload": payload,
                "encoding": encoding,
                "bytes": m.payload.len(),
            })
        })
        .collect();
    Ok(Json(json!({ "data": data, "meta": meta })))
}

/// `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    /// "plain" (the default) or "base64".
    #[serde(default)]
    encoding: Option<String>,
}

/// Publishes as the broker itself (no ACL applies: the API user is an operator). With
/// persistence on, answers only once what the message needs is on disk.
async fn publish(
    State(state): State<Arc<HttpState>>,
    Json(body): Json<PublishBody>,
) -> Result<Json<Value>, ApiError> {
    let shared = &state.shared;
    let config = shared.config.load();
    let name = body.topic.as_bytes();
    if !topic::valid_name(name) || name.len() > usize::from(u16::MAX) {
        return Err(bad(format!("{:?} is not a valid topic name", body.topic)));
    }
    if topic::too_deep(name, config.mqtt.max_topic_levels) {
        return Err(bad("the topic has more levels than mqtt.max_topic_levels"));
    }
    let qos = match body.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        n => return Err(bad(format!("qos must be 0, 1 or 2, got {n}"))),
    };
    if body.retain && !config.mqtt.retain_available {
        return Err(bad(
            "retained messages are off (mqtt.retain_available = false)",
        ));
    }
    let payload = match body.encoding.as_deref().unwrap_or("plain") {
        "plain" => Bytes::from(body.payload),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(body.payload.as_bytes())
            .map(Bytes::from)
            .map_err(|e| bad(format!("payload is not base64: {e}")))?,
        other => {
            return Err(bad(format!(
                "encoding must be \"plain\" or \"base64\", got {other:?}"
            )))
        }
    };
    // The PUBLISH each subscriber gets must fit their packet limit: header, topic, id, payload.
    if 7 + name.len() + payload.len() > config.mqtt.max_packet_size {
        return Err(bad(format!(
            "the message is over mqtt.max_packet_size ({} bytes)",
            config.mqtt.max_packet_size
        )));
    }
    let limit = config.mqtt.message_size_limit;
    if limit > 0 && payload.len() > limit {
        return Err(bad(format!(
            "the payload is over mqtt.message_size_limit ({limit} bytes)"
        )));
    }
    let msg = Message {
        topic: Bytes::from(body.topic),
        payload,
        qos,
        retain: body.retain,
    };
    let published = shared.router.publish(Arc::new(msg));
    if let Some(store) = &shared.store {
        if published.wait.lsn > 0 && !store.wait(published.wait.lsn).await {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store failed; the message may not be kept".into(),
            ));
        }
    }
    Ok(Json(json!({
        "delivered": published.delivered,
        "dropped": published.dropped,
    })))
}
