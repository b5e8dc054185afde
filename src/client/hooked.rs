//! The hooks a connection runs itself (see [`crate::hooks`]): `on_publish` before routing
//! (a PUBLISH, and the will as the connection ends), `on_subscribe` before granting, and
//! `on_disconnect`. An answer given later is a boxed future that the serving loop awaits
//! before it handles more input (`Flow::Hook`); `resume` then goes on where the packet left
//! off, so the client's packets keep their order and only this client waits.

use std::sync::Arc;

use bytes::Bytes;
use tracing::{trace, warn};

use super::inbound::Inbound;
use super::{Boxed, Client, CloseReason, Connection, Flow, Routed, Transport};
use crate::codec::Packet;
use crate::hooks::{ClientRef, PublishAction, Reply, SubscribeAction};
use crate::message::{Message, QoS};
use crate::routing::topic;
use crate::sessions::{SessionCmd, Shared};
use crate::store::Wait;

/// Where a packet whose hook answers later goes on.
pub(super) enum Resume {
    /// A PUBLISH and what `on_publish` said.
    Publish(Inbound, PublishAction),
    /// A SUBSCRIBE's filters as the hooks left them, and the indices of those refused.
    Subscribe {
        pkid: u16,
        filters: Vec<(String, QoS)>,
        refused: Vec<usize>,
    },
    /// A SUBSCRIBE whose interest NATS knows now, for its session, with its hold.
    Known(SessionCmd, Routed),
    /// A PUBACK or PUBREC whose retained message the cluster holds now, and what it waits
    /// for besides.
    Ack(Packet, Wait),
}

impl Client {
    /// The client as the hooks see it.
    pub(super) fn hook_ref(&self) -> ClientRef<'_> {
        ClientRef {
            client_id: &self.accepted.client_id,
            username: self.accepted.username.as_deref(),
        }
    }
}

impl<S: Transport> Connection<S> {
    /// A checked PUBLISH through `on_publish`, then routed (now, or once the hook answers).
    pub(super) fn publish_hooked(
        &mut self,
        mut inbound: Inbound,
        client: &mut Client,
    ) -> Result<Flow, CloseReason> {
        let shared = self.shared.clone();
        let (Some(hooks), Some(msg)) = (shared.router.hooks(), &inbound.msg) else {
            return self.finish_publish(inbound, client);
        };
        // A QoS 2 resend is answered as the duplicate it is, without asking again.
        if let (QoS::ExactlyOnce, Some(id)) = (inbound.qos, inbound.pkid) {
            if client.session.mailbox.awaits_rel(id) {
                return self.finish_publish(inbound, client);
            }
        }
        match hooks.on_publish(client.hook_ref(), msg) {
            Reply::Now(action) => {
                let levels = self.config.load().mqtt.max_topic_levels;
                inbound.msg = inbound.msg.and_then(|m| rewrite(m, action, levels));
                self.finish_publish(inbound, client)
            }
            Reply::Later(answer) => Ok(Flow::Hook(Box::pin(async move {
                Resume::Publish(inbound, answer.await)
            }))),
        }
    }

    /// A SUBSCRIBE's filters through `on_subscribe`, then granted (now, or once every hook
    /// has answered).
    pub(super) fn subscribe_hooked(
        &mut self,
        pkid: u16,
        filters: Vec<(String, QoS)>,
        client: &Client,
    ) -> Flow {
        let shared = self.shared.clone();
        let Some(hooks) = shared.router.hooks() else {
            return self.subscribe(pkid, filters, &[], client);
        };
        let who = client.hook_ref();
        let replies: Vec<Reply<SubscribeAction>> = filters
            .iter()
            .map(|(f, q)| hooks.on_subscribe(who, f, *q))
            .collect();
        if replies.iter().all(|r| matches!(r, Reply::Now(_))) {
            let actions = replies.into_iter().map(|r| match r {
                Reply::Now(a) => a,
                Reply::Later(_) => SubscribeAction::Keep,
            });
            let (filters, refused) = apply_subscribe(filters, actions);
            return self.subscribe(pkid, filters, &refused, client);
        }
        Flow::Hook(Box::pin(async move {
            let mut actions = Vec::with_capacity(replies.len());
            for r in replies {
                actions.push(match r {
                    Reply::Now(a) => a,
                    Reply::Later(f) => f.await,
                });
            }
            let (filters, refused) = apply_subscribe(filters, actions);
            Resume::Subscribe {
                pkid,
                filters,
                refused,
            }
        }))
    }

    /// Goes on with the packet whose hook has answered.
    pub(super) fn resume(
        &mut self,
        resumed: Resume,
        client: &mut Client,
    ) -> Result<Flow, CloseReason> {
        match resumed {
            Resume::Publish(mut inbound, action) => {
                let levels = self.config.load().mqtt.max_topic_levels;
                inbound.msg = inbound.msg.and_then(|m| rewrite(m, action, levels));
                self.finish_publish(inbound, client)
            }
            Resume::Subscribe {
                pkid,
                filters,
                refused,
            } => Ok(self.subscribe(pkid, filters, &refused, client)),
            Resume::Known(cmd, routed) => Ok(Flow::ToSessionThenHold(cmd, routed)),
            Resume::Ack(ack, wait) => {
                crate::codec::encode(&ack, self.out(wait));
                Ok(Flow::Continue)
            }
        }
    }
}

/// The filters to grant, and the indices of those a hook refused.
fn apply_subscribe(
    filters: Vec<(String, QoS)>,
    actions: impl IntoIterator<Item = SubscribeAction>,
) -> (Vec<(String, QoS)>, Vec<usize>) {
    let mut refused = Vec::new();
    let filters = filters
        .into_iter()
        .zip(actions)
        .enumerate()
        .map(|(i, (asked, action))| match action {
            SubscribeAction::Keep => asked,
            SubscribeAction::Refuse => {
                refused.push(i);
                asked
            }
            SubscribeAction::Replace(filter, qos) => (filter, qos),
        })
        .collect();
    (filters, refused)
}

/// The message `on_publish` leaves to route, if any.
fn rewrite(msg: Arc<Message>, action: PublishAction, max_levels: usize) -> Option<Arc<Message>> {
    match action {
        PublishAction::Keep => Some(msg),
        PublishAction::Drop => {
            trace!(
                topic = msg.topic_str(),
                "an on_publish hook dropped a message"
            );
            None
        }
        PublishAction::Rewrite { topic, payload } => {
            if !topic::valid_name(topic.as_bytes()) || topic::too_deep(topic.as_bytes(), max_levels)
            {
                warn!(
                    topic,
                    "an on_publish hook rewrote to an invalid topic; dropped"
                );
                return None;
            }
            Some(Arc::new(Message {
                topic: Bytes::from(topic),
                payload,
                qos: msg.qos,
                retain: msg.retain,
            }))
        }
    }
}

/// The will (if `reason` publishes it) through `on_publish`, then `on_disconnect`: done now,
/// or, if the hook answers later, the future that finishes both.
pub(super) fn goodbye(
    shared: &Arc<Shared>,
    client: &mut Client,
    reason: &CloseReason,
) -> Option<Boxed<()>> {
    let will = reason
        .publishes_will()
        .then(|| client.accepted.will.take())
        .flatten();
    let Some(hooks) = shared.router.hooks() else {
        if let Some(will) = will {
            tracing::debug!(topic = will.topic_str(), "publishing will");
            shared
                .router
                .publish_from(will, Some(client.publisher()), None);
        }
        return None;
    };
    let levels = shared.config.load().mqtt.max_topic_levels;
    let answer = will.map(|w| (hooks.on_publish(client.hook_ref(), &w), w));
    match answer {
        None => {}
        Some((Reply::Now(action), will)) => {
            if let Some(will) = rewrite(will, action, levels) {
                tracing::debug!(topic = will.topic_str(), "publishing will");
                shared
                    .router
                    .publish_from(will, Some(client.publisher()), None);
            }
        }
        Some((Reply::Later(action), will)) => {
            let (shared, publisher) = (shared.clone(), client.publisher().clone());
            let reason = reason.to_string();
            return Some(Box::pin(async move {
                if let Some(will) = rewrite(will, action.await, levels) {
                    shared.router.publish_from(will, Some(&publisher), None);
                }
                if let Some(hooks) = shared.router.hooks() {
                    let who = ClientRef {
                        client_id: &publisher.client_id,
                        username: publisher.username.as_deref(),
                    };
                    hooks.on_disconnect(who, &reason);
                }
            }));
        }
    }
    hooks.on_disconnect(client.hook_ref(), reason);
    None
}
