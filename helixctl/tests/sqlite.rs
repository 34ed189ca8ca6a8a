//! helixctl end to end on a SQLite file: the whole scenario, the default database, and
//! `events --follow`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{BIN, Helixctl};

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("helix.db").display())
}

#[tokio::test]
async fn the_whole_scenario_runs_on_a_sqlite_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    support::scenario(&sqlite_url(&dir)).await;
}

#[test]
fn without_a_database_url_helixctl_uses_helix_db_in_the_current_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = std::process::Command::new(BIN)
        .args(["--json", "migrate"])
        .current_dir(dir.path())
        .env_remove("HELIX_DATABASE_URL")
        .output()
        .expect("runs");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(answer["database"], "sqlite://helix.db");
    assert!(dir.path().join("helix.db").exists(), "helix.db was created in the current directory");
}

#[test]
fn the_flag_overrides_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctl = Helixctl::new("postgres://nowhere/none");
    let url = sqlite_url(&dir);
    let answer = ctl.run(&["--json", "--database-url", &url, "migrate"]).json();
    assert_eq!(answer["database"], url);
    // Without the flag the bad environment URL is used, and refused as bad usage.
    ctl.run(&["migrate"]).code(2).stderr_has(&["unknown store scheme", "HELIX_DATABASE_URL"]);
}

#[test]
fn schedule_commands_name_a_missing_queue_and_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctl = Helixctl::new(sqlite_url(&dir));
    for args in [
        &["schedule", "create", "shop/orders", "nightly", "--cron", "0 3 * * *"][..],
        &["schedule", "list", "shop/orders"],
        &["schedule", "pause", "shop/orders", "nightly"],
        &["schedule", "resume", "shop/orders", "nightly"],
        &["schedule", "delete", "shop/orders", "nightly"],
    ] {
        ctl.run(args)
            .code(1)
            .stderr_has(&["queue shop/orders not found", "helixctl queue create shop/orders --partitions 8"]);
    }
}

/// Reads lines of a child's stdout on a thread, so the test can wait for each with a deadline.
fn lines_of(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_event(lines: &mpsc::Receiver<String>) -> serde_json::Value {
    let line = lines.recv_timeout(Duration::from_secs(20)).expect("an event line within 20 s");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON document per line ({e}): {line}"))
}

#[test]
fn events_follow_prints_new_events_as_they_come_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctl = Helixctl::new(sqlite_url(&dir));
    ctl.run(&["domain", "create", "first"]).code(0);
    let mut child = ctl
        .command(&["--json", "events", "--follow", "--limit", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = lines_of(child.stdout.take().expect("stdout"));
    let old = next_event(&lines);
    assert_eq!(
        (old["kind"].clone(), old["detail"]["domain"].clone()),
        ("domain_created".into(), "first".into())
    );

    // Events written after the follow started show up, in order, one page of 1 at a time.
    ctl.run(&["domain", "create", "second"]).code(0);
    ctl.run(&["domain", "create", "third"]).code(0);
    let second = next_event(&lines);
    let third = next_event(&lines);
    assert_eq!(second["detail"]["domain"], "second");
    assert_eq!(third["detail"]["domain"], "third");
    assert!(third["id"].as_u64() > second["id"].as_u64());

    // Ctrl-C ends it with success.
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "helixctl events --follow did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
}
