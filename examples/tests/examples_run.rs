//! Runs the example binaries as a user would and checks what they print: they must finish on
//! their own, exit 0 and show the settled partition maps.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Far more than either example needs (about 10 s for the quickstart).
const LIMIT: Duration = Duration::from_secs(180);

/// Runs `program` with `args`; its exit status and its standard output. Kills it after
/// [`LIMIT`].
fn run(program: &str, args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    // Read both pipes on their own threads so that a full pipe never blocks the child.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).expect("utf-8 stdout");
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).expect("utf-8 stderr");
        text
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} did not finish within {LIMIT:?}; stdout:\n{}", out.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    assert!(status.success(), "{program} failed with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    (status, stdout)
}

#[test]
fn the_quickstart_settles_at_17_17_16_rebalances_on_join_and_kill_and_exits_cleanly() {
    let (status, out) = run(env!("CARGO_BIN_EXE_quickstart"), &[]);
    assert!(status.success());
    let settled: Vec<&str> = out.lines().filter(|l| l.starts_with("settled:")).collect();
    assert_eq!(
        settled,
        [
            "settled: 3 workers own the 50 partitions (17/17/16)",
            "settled: 4 workers own the 50 partitions (13/13/12/12)",
            "settled: 3 workers own the 50 partitions (17/17/16)",
        ],
        "{out}"
    );
    assert!(out.contains(", every one to the newcomer"), "a join moves only the newcomer's share:\n{out}");
    assert!(out.contains(", only the dead worker's partitions"), "a kill moves only the orphans:\n{out}");
    assert!(out.contains("moved in") && out.contains("s after the kill: 1"), "{out}");
    assert_eq!(out.lines().last(), Some("quickstart finished"), "{out}");
}

#[test]
fn the_custom_allocator_places_every_partition_in_its_zone() {
    let (status, out) = run(env!("CARGO_BIN_EXE_custom_allocator"), &[]);
    assert!(status.success());
    assert_eq!(out.lines().filter(|l| l.starts_with("partition ")).count(), 12, "{out}");
    assert!(out.contains("every partition is in its zone"), "{out}");
    assert_eq!(out.lines().last(), Some("custom allocator example finished"), "{out}");
}
