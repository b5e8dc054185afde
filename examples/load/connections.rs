//! The connections scenario: C idle clients, their connect rate and the broker's memory per
//! connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::{cpu_busy, cpu_ticks, percentile, proc_stats};
use crate::{connect, Conn, Result};

pub async fn connections(
    broker: SocketAddr,
    clients: usize,
    concurrency: usize,
    pid: Option<u32>,
) -> Result<String> {
    let before = pid.map(proc_stats);
    let rss_before = before.as_ref().map_or(0, |s| s.rss_kib);
    let ticks_before = cpu_ticks();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut held: Vec<Conn> = Vec::new();
            let mut took_us: Vec<u64> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= clients {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>((held, took_us));
                }
                // Source addresses spread over 127.0.0.2-33: connect() picks a port per address,
                // so no search runs through thousands of ports already in use toward the
                // broker (that search made the generator, not the broker, set the rate), and
                // past 64k connections each address still has ports of its own.
                let local = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 32) as u8)));
                let began = Instant::now();
                let s = connect(broker, local, &format!("idle-{i}")).await?;
                took_us.push(began.elapsed().as_micros() as u64);
                held.push(s);
            }
        }));
    }
    let mut held = Vec::new();
    let mut took_us = Vec::new();
    for w in workers {
        let (h, t) = w.await??;
        held.push(h);
        took_us.extend(t);
    }
    took_us.sort_unstable();
    let secs = started.elapsed().as_secs_f64();
    // Which side was saturated while connecting (the kernel's handshake work lands on both).
    let busy = cpu_busy(&ticks_before, &cpu_ticks());
    // The broker's CPU time for the connects alone (the run's total includes the closes).
    let connect_cpu = match (&before, pid.map(proc_stats)) {
        (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
        _ => 0.0,
    };
    // Let the broker settle before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = pid.map(|p| proc_stats(p).rss_kib).unwrap_or(0);
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / clients as f64;
    drop(held);
    Ok(format!(
        "scenario=connections clients={clients} connect_rate_s={:.0} connect_p50_us={} connect_p99_us={} broker_connect_cpu_s={connect_cpu:.2} cpu_busy_pct={busy} rss_before_kib={rss_before} rss_after_kib={rss_after} bytes_per_conn={per_conn:.0}",
        clients as f64 / secs,
        percentile(&took_us, 0.50),
        percentile(&took_us, 0.99),
    ))
}
