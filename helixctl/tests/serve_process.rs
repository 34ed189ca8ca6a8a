//! `helixctl serve` as a child process on a SQLite file, delivering a delayed webhook to a
//! receiver on 127.0.0.1, then leaving gracefully on SIGTERM.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use helix_actors::client::Client;
use helix_store::WorkerFilter;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_helixctl");
const TOKEN: &str = "e2e-token-do-not-log-me";
const DEADLINE: Duration = Duration::from_secs(60);

/// What the receiver got: the Idempotency-Key header and the body.
type Received = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// Kills the child if the test fails before it exits.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[actix_rt::test]
async fn serve_delivers_a_delayed_webhook_and_leaves_gracefully_on_sigterm() {
    let received: Received = Arc::default();
    let sink = Arc::clone(&received);
    let receiver = HttpServer::new(move || {
        let sink = Arc::clone(&sink);
        App::new().route(
            "/hook",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let sink = Arc::clone(&sink);
                async move {
                    let key =
                        req.headers().get("Idempotency-Key").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    sink.lock().expect("lock").push((key, value));
                    HttpResponse::NoContent().finish()
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .expect("the receiver binds");
    let hook_addr = receiver.addrs()[0];
    let receiver = receiver.run();
    let receiver_handle = receiver.handle();
    actix_rt::spawn(receiver);

    let dir = tempfile::tempdir().expect("a temp dir");
    let db = dir.path().join("helix.db");
    let url = format!("sqlite://{}", db.display());
    let config = dir.path().join("helix.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{url}\"\n\
             [http]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             [[queues]]\ndomain = \"e2e\"\nname = \"hooks\"\npartitions = 4\n\
             [webhook]\nallow_networks = [\"127.0.0.1/32\"]\n"
        ),
    )
    .expect("the config is written");

    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("HELIX_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("helixctl serve starts");
    let mut guard = Guard(Some(child));
    let child = guard.0.as_mut().expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let base = rx.recv_timeout(DEADLINE).expect("serve printed its address");

    let http = reqwest::Client::new();
    let job = json!({
        "domain": "e2e", "queue": "hooks", "url": format!("http://{hook_addr}/hook"),
        "body": { "order": 7 }, "delay_ms": 1000, "key": "customer-7",
    });
    let response = http
        .post(format!("{base}/v1/jobs"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&job).expect("json"))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
    let id = created["id"].as_u64().expect("an id");

    let start = Instant::now();
    let (key, body) = loop {
        if let Some(got) = received.lock().expect("lock").first().cloned() {
            break got;
        }
        assert!(start.elapsed() < DEADLINE, "the webhook was never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(key.is_some_and(|k| !k.is_empty()), "the delivery carries an Idempotency-Key");
    assert_eq!(body, json!({ "order": 7 }));
    loop {
        let got: Value = serde_json::from_slice(
            &http
                .get(format!("{base}/v1/jobs/{id}"))
                .send()
                .await
                .expect("answer")
                .bytes()
                .await
                .expect("body"),
        )
        .expect("json");
        if got["state"] == "DONE" {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the job never finished: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(start.elapsed() < DEADLINE * 2, "serve did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    guard.0 = None;
    let logs = logs.join().unwrap_or_default();
    assert_eq!(status.code(), Some(0), "serve exits 0 after SIGTERM; its log:\n{logs}");
    assert!(logs.contains("helixctl serve stopped"), "it left gracefully; its log:\n{logs}");
    assert!(!logs.contains(TOKEN), "the token never reaches the log:\n{logs}");
    let client = Client::connect(&url).await.expect("the database opens");
    assert!(client.workers(WorkerFilter::Live).await.expect("workers").is_empty(), "the worker deregistered");
    receiver_handle.stop(false).await;
}
