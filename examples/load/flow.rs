//! The flow scenarios (fan-in, fan-out, pairs, shared, latency): publishers with a window of
//! unacknowledged messages, subscribers that check every delivery.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tern::codec::{self, Packet, Subscribe};
use tern::message::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::stats::percentile;
use crate::{connect, connect_session, now_ns, qos_of, Conn, Flow, Ran, Result};

/// Per-publisher delivery accounting at one subscriber.
#[derive(Default, Clone)]
struct Tally {
    seen: Vec<u64>,
    max_seq: Option<u64>,
    unique: u64,
    dup: u64,
    out_of_order: u64,
}

impl Tally {
    fn record(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.dup += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        if self.max_seq.is_some_and(|m| seq < m) {
            self.out_of_order += 1;
        }
        self.max_seq = Some(self.max_seq.map_or(seq, |m| m.max(seq)));
    }
}

impl Tally {
    /// Adds what another member of a group saw; a message both saw is a duplicate.
    fn merge(&mut self, other: &Tally) {
        if self.seen.len() < other.seen.len() {
            self.seen.resize(other.seen.len(), 0);
        }
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            self.dup += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        self.unique = self.seen.iter().map(|w| u64::from(w.count_ones())).sum();
        self.dup += other.dup;
    }
}

/// What one subscriber saw.
struct SubReport {
    tallies: Vec<Tally>,
    latencies_us: Vec<u32>,
    last_ns: u64,
}

async fn subscribe(stream: &mut Conn, filter: &str, qos: QoS) -> Result<()> {
    let mut buf = BytesMut::new();
    codec::encode(
        &Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![(filter.into(), qos)],
        }),
        &mut buf,
    );
    stream.write_all(&buf).await?;
    let mut ack = [0u8; 5];
    stream.read_exact(&mut ack).await?;
    if ack[0] != 0x90 || ack[4] == 0x80 {
        return Err(format!("SUBACK refused: {ack:02x?}").into());
    }
    Ok(())
}

/// Unique deliveries counted toward `expected`: one subscriber's own, or a shared
/// subscription group's, whose members stop together once the group has them all.
#[derive(Clone)]
struct Goal {
    done: Arc<AtomicU64>,
    expected: u64,
}

impl Goal {
    fn new(expected: u64) -> Goal {
        Goal {
            done: Arc::new(AtomicU64::new(0)),
            expected,
        }
    }

    fn reached(&self) -> bool {
        self.done.load(Ordering::Relaxed) >= self.expected
    }
}

/// Reads deliveries until the goal is reached or `deadline` passed.
async fn subscriber(
    mut stream: Conn,
    publishers: usize,
    goal: Goal,
    keep_latencies: bool,
    deadline: Instant,
) -> Result<SubReport> {
    let mut tallies = vec![Tally::default(); publishers];
    let mut latencies_us = Vec::new();
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::new();
    let mut last_ns = 0;
    let mut idle_since = Instant::now();
    while !goal.reached() {
        // Stop at the deadline, or after 5 s without a delivery: what is missing is lost. A
        // group's member looks at the group's count every 100 ms meanwhile.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        let n = match tokio::time::timeout(left, stream.read_buf(&mut rbuf)).await {
            Ok(r) => r?,
            Err(_) if idle_since.elapsed() < Duration::from_secs(5) && left > Duration::ZERO => {
                continue
            }
            Err(_) => break,
        };
        idle_since = Instant::now();
        if n == 0 {
            return Err("broker closed a subscriber".into());
        }
        while let Some(packet) = codec::decode(&mut rbuf, usize::MAX)? {
            match packet {
                Packet::Publish(p) => {
                    let mut header = &p.payload[..];
                    if header.len() < 20 {
                        continue;
                    }
                    let publisher = header.get_u32() as usize;
                    let seq = header.get_u64();
                    let sent = header.get_u64();
                    last_ns = now_ns();
                    if keep_latencies {
                        latencies_us.push(((last_ns.saturating_sub(sent)) / 1000) as u32);
                    }
                    if let Some(t) = tallies.get_mut(publisher) {
                        let before = t.unique;
                        t.record(seq);
                        goal.done.fetch_add(t.unique - before, Ordering::Relaxed);
                    }
                    match (p.qos, p.pkid) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            codec::encode(&Packet::PubAck(id), &mut wbuf)
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            codec::encode(&Packet::PubRec(id), &mut wbuf)
                        }
                        _ => {}
                    }
                }
                Packet::PubRel(id) => codec::encode(&Packet::PubComp(id), &mut wbuf),
                _ => {}
            }
        }
        if !wbuf.is_empty() {
            stream.write_all(&wbuf).await?;
            wbuf.clear();
        }
    }
    Ok(SubReport {
        tallies,
        latencies_us,
        last_ns,
    })
}

/// Publisher state shared by its writer and its acknowledgement reader.
struct Window {
    inflight: AtomicUsize,
    acked: AtomicU64,
    wake: Notify,
    pubrels: parking_lot::Mutex<Vec<u16>>,
    /// When each packet id was sent (ns), for the broker's acknowledgement latency.
    sent_ns: Vec<AtomicU64>,
}

/// What one publisher did: messages sent, and microseconds from each QoS 1/2 PUBLISH to its
/// PUBACK or PUBREC (the acknowledgement a durable broker holds until the message is stored).
struct PubReport {
    sent: u64,
    ack_us: Vec<u32>,
}

/// Publishes `count` messages; `rate` of 0 means as fast as the window allows.
async fn publisher(
    stream: Conn,
    index: u32,
    topic: String,
    flow: Flow,
    rate: u64,
) -> Result<PubReport> {
    let qos = qos_of(flow.qos);
    let (rd, mut wr) = tokio::io::split(stream);
    let window = Arc::new(Window {
        inflight: AtomicUsize::new(0),
        acked: AtomicU64::new(0),
        wake: Notify::new(),
        pubrels: parking_lot::Mutex::new(Vec::new()),
        sent_ns: (0..=u16::MAX).map(|_| AtomicU64::new(0)).collect(),
    });
    let reader =
        (qos != QoS::AtMostOnce).then(|| tokio::spawn(read_acks(rd, window.clone(), flow.count)));
    let mut payload = vec![0u8; flow.payload.max(20)];
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let started = Instant::now();
    let mut seq = 0u64;
    while seq < flow.count {
        for id in window.pubrels.lock().drain(..) {
            codec::encode(&Packet::PubRel(id), &mut wbuf);
        }
        let mut allowed = flow.count - seq;
        if rate > 0 {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            allowed = allowed.min(due.saturating_sub(seq));
        }
        if qos != QoS::AtMostOnce {
            let room = flow
                .window
                .saturating_sub(window.inflight.load(Ordering::Acquire));
            allowed = allowed.min(room as u64);
        }
        let batch = allowed.min(64);
        for _ in 0..batch {
            let mut head = &mut payload[..20];
            head.put_u32(index);
            head.put_u64(seq);
            head.put_u64(now_ns());
            let pkid = (qos != QoS::AtMostOnce).then_some((seq % 65_535) as u16 + 1);
            codec::encode_publish(
                topic.as_bytes(),
                &payload,
                qos,
                pkid,
                false,
                false,
                &mut wbuf,
            );
            if let Some(id) = pkid {
                window.sent_ns[id as usize].store(now_ns(), Ordering::Relaxed);
                window.inflight.fetch_add(1, Ordering::AcqRel);
            }
            seq += 1;
        }
        if !wbuf.is_empty() {
            wr.write_all(&wbuf).await?;
            wbuf.clear();
        } else if rate > 0 && qos == QoS::AtMostOnce {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            // Wait for an acknowledgement (or the next rate tick).
            let _ = tokio::time::timeout(Duration::from_millis(1), window.wake.notified()).await;
        }
    }
    if let Some(reader) = reader {
        // Finish outstanding QoS 2 handshakes while the reader collects the last acks.
        while window.acked.load(Ordering::Acquire) < flow.count {
            let rels: Vec<u16> = window.pubrels.lock().drain(..).collect();
            for id in rels {
                codec::encode(&Packet::PubRel(id), &mut wbuf);
            }
            if !wbuf.is_empty() {
                wr.write_all(&wbuf).await?;
                wbuf.clear();
            }
            let _ = tokio::time::timeout(Duration::from_millis(1), window.wake.notified()).await;
            if reader.is_finished() {
                break;
            }
        }
        let ack_us = reader.await??;
        return Ok(PubReport { sent: seq, ack_us });
    }
    Ok(PubReport {
        sent: seq,
        ack_us: Vec::new(),
    })
}

async fn read_acks(
    mut rd: tokio::io::ReadHalf<Conn>,
    window: Arc<Window>,
    count: u64,
) -> Result<Vec<u32>> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut ack_us = Vec::with_capacity(count as usize);
    let mut took = |id: u16| {
        let sent = window.sent_ns[id as usize].load(Ordering::Relaxed);
        ack_us.push((now_ns().saturating_sub(sent) / 1000) as u32);
    };
    while window.acked.load(Ordering::Acquire) < count {
        if rd.read_buf(&mut buf).await? == 0 {
            return Err("broker closed a publisher".into());
        }
        while let Some(p) = codec::decode(&mut buf, usize::MAX)? {
            match p {
                Packet::PubAck(id) | Packet::PubComp(id) => {
                    if matches!(p, Packet::PubAck(_)) {
                        took(id);
                    }
                    window.inflight.fetch_sub(1, Ordering::AcqRel);
                    window.acked.fetch_add(1, Ordering::AcqRel);
                }
                Packet::PubRec(id) => {
                    took(id);
                    window.pubrels.lock().push(id);
                }
                _ => {}
            }
        }
        window.wake.notify_one();
    }
    Ok(ack_us)
}

/// Runs publishers on `topics` (one each) and subscribers on `filters` (one each); every
/// subscriber is owed every message of every publisher whose topic its filter matches.
pub async fn run_flow(
    name: &str,
    broker: SocketAddr,
    flow: &Flow,
    topics: Vec<String>,
    filters: Vec<String>,
    deadline: Duration,
) -> Result<Ran> {
    let qos = qos_of(flow.qos);
    let pairs = name == "pairs";
    // A shared subscription's members share one goal: every message, once among them.
    let shared = name == "shared";
    let group = Goal::new(flow.count * topics.len() as u64);
    let mut subs = Vec::new();
    for (i, filter) in filters.iter().enumerate() {
        let id = format!("load-sub-{i}");
        let far = flow
            .subscribe_port
            .map_or(broker, |p| SocketAddr::new(broker.ip(), p));
        let mut s = connect_session(far, &id, !flow.persistent_subscriber).await?;
        subscribe(&mut s, filter, qos).await?;
        let goal = match (pairs, shared) {
            (true, _) => Goal::new(flow.count),
            (false, true) => group.clone(),
            (false, false) => Goal::new(flow.count * topics.len() as u64),
        };
        subs.push((s, goal));
    }
    let mut pubs = Vec::new();
    for (i, _) in topics.iter().enumerate() {
        pubs.push(connect(broker, None, &format!("load-pub-{i}")).await?);
    }
    tokio::time::sleep(Duration::from_millis(flow.warmup_ms)).await;
    let until = Instant::now() + deadline;
    let started_ns = now_ns();
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .map(|(s, goal)| tokio::spawn(subscriber(s, topics.len(), goal, false, until)))
        .collect();
    let pub_tasks: Vec<_> = pubs
        .into_iter()
        .zip(topics.iter().cloned())
        .enumerate()
        .map(|(i, (s, topic))| tokio::spawn(publisher(s, i as u32, topic, flow.clone(), 0)))
        .collect();
    let (mut published, mut ack_us) = (0u64, Vec::new());
    for t in pub_tasks {
        let report = t.await??;
        published += report.sent;
        ack_us.extend(report.ack_us);
    }
    ack_us.sort_unstable();
    let mut delivered = 0u64;
    let (mut lost, mut dup, mut ooo) = (0u64, 0u64, 0u64);
    let mut last_ns = started_ns;
    // A group's members each see part of every publisher's stream: merged, it must be whole.
    let mut merged = vec![Tally::default(); topics.len()];
    for (i, t) in sub_tasks.into_iter().enumerate() {
        let report = t.await??;
        last_ns = last_ns.max(report.last_ns);
        for (p, tally) in report.tallies.iter().enumerate() {
            if pairs && p != i {
                continue;
            }
            if shared {
                merged[p].merge(tally);
                continue;
            }
            delivered += tally.unique;
            lost += flow.count - tally.unique;
            dup += tally.dup;
            ooo += tally.out_of_order;
        }
    }
    if shared {
        for tally in &merged {
            delivered += tally.unique;
            lost += flow.count - tally.unique;
            dup += tally.dup;
        }
    }
    let secs = (last_ns - started_ns) as f64 / 1e9;
    let line = format!(
        "scenario={name} qos={} payload={} publishers={} subscribers={} persistent={} published={published} delivered={delivered} rate_msg_s={:.0} lost={lost} dup={dup} out_of_order={ooo} ack_p50_us={} ack_p99_us={}",
        flow.qos,
        flow.payload.max(20),
        topics.len(),
        filters.len(),
        u8::from(flow.persistent_subscriber),
        delivered as f64 / secs.max(1e-9),
        percentile(&ack_us, 0.50),
        percentile(&ack_us, 0.99),
    );
    Ok(Ran { line, published })
}

pub async fn latency(
    broker: SocketAddr,
    flow: &Flow,
    rate: u64,
    seconds: u64,
    deadline: Duration,
) -> Result<Ran> {
    let qos = qos_of(flow.qos);
    let count = rate * seconds;
    let far = flow
        .subscribe_port
        .map_or(broker, |p| SocketAddr::new(broker.ip(), p));
    let mut s = connect(far, None, "load-lat-sub").await?;
    subscribe(&mut s, "load/latency", qos).await?;
    let p = connect(broker, None, "load-lat-pub").await?;
    tokio::time::sleep(Duration::from_millis(flow.warmup_ms)).await;
    let until = Instant::now() + deadline + Duration::from_secs(seconds);
    let sub = tokio::spawn(subscriber(s, 1, Goal::new(count), true, until));
    let flow = Flow {
        count,
        ..flow.clone()
    };
    let sent = tokio::spawn(publisher(p, 0, "load/latency".into(), flow.clone(), rate)).await??;
    let mut ack_us = sent.ack_us;
    ack_us.sort_unstable();
    let mut report = sub.await??;
    let tally = &report.tallies[0];
    let l = &mut report.latencies_us;
    l.sort_unstable();
    let pct = |q: f64| percentile(l, q);
    let line = format!(
        "scenario=latency qos={} payload={} rate_msg_s={rate} published={} delivered={} lost={} dup={} out_of_order={} p50_us={} p99_us={} p999_us={} max_us={} ack_p50_us={} ack_p99_us={}",
        flow.qos,
        flow.payload.max(20),
        sent.sent,
        tally.unique,
        count - tally.unique,
        tally.dup,
        tally.out_of_order,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        l.last().copied().unwrap_or(0),
        percentile(&ack_us, 0.50),
        percentile(&ack_us, 0.99),
    );
    Ok(Ran {
        line,
        published: sent.sent,
    })
}
