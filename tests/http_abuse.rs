//! The query API under abuse, over real sockets against the real server loop
//! (`http::serve`): huge paths and query strings, invalid UTF-8, thousands of
//! connections, slow clients. Every answer is a clear 4xx, nothing panics, memory stays
//! bounded, and slow or idle clients are cut off after the timeout.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mallquest::http::{self, AppState, Limits};
use mallquest::status::Status;
use support::http::{get, raw};

const TIMEOUT: Duration = Duration::from_secs(1);

struct Server {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(max_connections: usize) -> Server {
        Self::start_with(max_connections, TIMEOUT)
    }

    fn start_with(max_connections: usize, timeout: Duration) -> Server {
        let (_, store, dir) = support::golden::fold_into_store(100);
        let status = Arc::new(Status::default());
        status.committed(&store.offsets().unwrap());
        status.assigned(vec![0]);
        let app = http::router(
            AppState {
                store,
                status,
                metrics: None,
                token: None,
                forward_timeout: std::time::Duration::from_secs(2),
                calendar: mallquest::domain::Rules::default().calendar(),
                levels: mallquest::domain::Rules::default().level_scale(),
                expiry: None,
            },
            timeout,
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                http::serve(
                    listener,
                    app,
                    Limits {
                        head_timeout: timeout,
                        max_connections,
                    },
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await
            })
        });
        Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The server answers a plain request, and quickly.
    fn assert_serving(&self) {
        let started = Instant::now();
        let r = get(&self.addr, "/v1/leaderboard?limit=3").unwrap();
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            // The server loop returns; a panic in it fails the test.
            if !std::thread::panicking() {
                t.join().unwrap().unwrap();
            }
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn json_error(r: &support::http::Response) -> serde_json::Value {
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["error"].is_string(), "{v}");
    v
}

#[test]
fn huge_paths_queries_and_invalid_utf8_get_clear_4xx() {
    let server = Server::start(http::MAX_CONNECTIONS);
    let addr = server.addr.as_str();

    // A path longer than the request-head cap: 431, connection closed.
    let long = "a".repeat(100_000);
    let r = get(addr, &format!("/v1/users/{long}")).unwrap();
    assert_eq!(r.status, 431);
    // Under the cap but over the id limit: a JSON 400.
    let r = get(addr, &format!("/v1/users/{}", "a".repeat(8_000))).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(json_error(&r)["error"], "invalid_user_id");
    // A huge query string: over the cap 431, under it a JSON 400 naming the parameter.
    let r = get(addr, &format!("/v1/leaderboard?x={}", "b".repeat(50_000))).unwrap();
    assert_eq!(r.status, 431);
    let r = get(
        addr,
        &format!("/v1/leaderboard?limit={}", "9".repeat(10_000)),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    json_error(&r);
    // Many headers, each small, adding up past the cap.
    let mut req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2_000 {
        req.extend_from_slice(format!("x-h{i}: {}\r\n", "v".repeat(20)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let r = raw(addr, &req).unwrap();
    assert_eq!(r.status, 431);

    // Invalid UTF-8, percent-encoded: a JSON 400.
    let r = get(addr, "/v1/users/%FF%FE%80").unwrap();
    assert_eq!(r.status, 400);
    json_error(&r);
    // Invalid UTF-8 as raw bytes in the request line: rejected by the HTTP parser (400).
    let r = raw(
        addr,
        b"GET /v1/users/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    // Not HTTP at all.
    let r = raw(
        addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    // A control character in the id, percent-encoded.
    let r = get(addr, "/v1/users/u%00x").unwrap();
    assert_eq!(r.status, 400);
    json_error(&r);

    server.assert_serving();
}

#[test]
fn slow_and_idle_clients_are_cut_off_after_the_timeout() {
    let server = Server::start(http::MAX_CONNECTIONS);
    // 300 clients that start a request and never finish its head, and 300 that connect
    // and send nothing.
    let mut slow = Vec::new();
    for i in 0..600 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /v1/leaderboard HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
        }
        slow.push(s);
    }
    // They do not starve anyone else.
    server.assert_serving();
    // Each is closed by the server (EOF, or a 408 and then EOF) soon after the timeout.
    let started = Instant::now();
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let took = started.elapsed();
    assert!(
        took < TIMEOUT * 5,
        "slow clients held their connections for {took:?}"
    );
    // Trickling a byte at a time does not extend the deadline either.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for _ in 0..100 {
        if s.write_all(b"GET /healthz HTTP/1.1\r\nX-A: 1\r\n"[..1].as_ref())
            .is_err()
        {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut probe = [0u8; 1];
        s.set_nonblocking(true).unwrap();
        let r = s.read(&mut probe);
        s.set_nonblocking(false).unwrap();
        if r.is_ok() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickling client was never cut off");
    assert!(started.elapsed() < TIMEOUT * 5, "{:?}", started.elapsed());
    server.assert_serving();
}

#[test]
fn thousands_of_connections_stay_within_the_cap_and_bounded_memory() {
    const CAP: usize = 1_000;
    const OPENED: usize = 3_000;
    // A long head timeout, so that the served connections stay open while we count.
    let timeout = Duration::from_secs(30);
    let server = Server::start_with(CAP, timeout);
    server.assert_serving();
    let before = rss_kib();
    // 3,000 connections that each send a partial request head: the first CAP are served
    // (and wait for the rest of their head), the others are closed on accept.
    let mut conns = Vec::new();
    for _ in 0..OPENED {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        let _ = s.write_all(b"GET /v1/leaderboard HTTP/1.1\r\nHost: x\r\n");
        s.set_nonblocking(true).unwrap();
        conns.push((s, false));
    }
    let is_closed = |s: &mut TcpStream| {
        let mut buf = [0u8; 64];
        match s.peek(&mut buf) {
            // EOF (refused) or an answer: either way the server is done with it.
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut refused = 0;
    while refused < OPENED - CAP && Instant::now() < deadline {
        for (s, closed) in &mut conns {
            if !*closed && is_closed(s) {
                *closed = true;
                refused += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Exactly the ones over the cap were closed; the served ones are still waiting.
    assert_eq!(refused, OPENED - CAP, "connections closed early");
    let grown_kib = rss_kib().saturating_sub(before);
    // 1,000 served connections hold a task and a small buffer each: far below a MiB each.
    assert!(grown_kib < 64 * 1024, "RSS grew by {grown_kib} KiB");
    eprintln!("{OPENED} connections, cap {CAP}: {refused} refused, RSS +{grown_kib} KiB");
    // At the cap, a new client is refused as well: closed without an answer.
    assert!(get(&server.addr, "/healthz").is_err());
    // When the clients go away their slots come back at once (no waiting for timeouts).
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(2);
    while get(&server.addr, "/healthz").map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "slots were not released");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.assert_serving();
}
