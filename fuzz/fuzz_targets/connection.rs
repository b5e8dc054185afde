//! Fuzzes a whole connection: arbitrary bytes sent to a real broker (started once, in this
//! process, on 127.0.0.1) over TCP, then EOF. The broker must never panic and must close or
//! answer every such connection; a well-behaved client checks after each input that the broker
//! still serves.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fn broker() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut config = tern::Config::default();
                config.listener[0].bind = "127.0.0.1:0".parse().expect("addr");
                config.mqtt.connect_timeout = Duration::from_millis(500);
                config.sys.sys_interval = Duration::ZERO;
                let broker = tern::Broker::bind(config).await.expect("bind");
                tx.send(broker.local_addrs()[0]).expect("send addr");
                broker.run(std::future::pending()).await;
            });
        });
        rx.recv().expect("broker address")
    })
}

fuzz_target!(|data: &[u8]| {
    let addr = broker();
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    // The broker answers or closes; it never hangs on EOF.
    let mut sink = Vec::new();
    let r = s.read_to_end(&mut sink);
    assert!(
        !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "broker did not close a connection after EOF"
    );
});
