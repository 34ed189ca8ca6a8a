//! Bad usage exits 2 with a message that says what was wrong, before any database is
//! touched; `--help` reads well.

mod support;

use support::Helixctl;

/// A database that must never be reached: usage errors are caught before connecting.
fn ctl() -> Helixctl {
    Helixctl::new("mysql://nobody:never@127.0.0.1:1/unreachable")
}

#[test]
fn an_unknown_command_exits_2() {
    ctl().run(&["frobnicate"]).code(2).stderr_has(&["unrecognized subcommand", "frobnicate", "Usage"]);
}

#[test]
fn a_missing_argument_exits_2_naming_it() {
    ctl().run(&["queue", "create", "shop/orders"]).code(2).stderr_has(&["--partitions"]);
    ctl().run(&["task", "get"]).code(2).stderr_has(&["<ID>"]);
    ctl().run(&["schedule", "create", "shop/orders", "nightly"]).code(2).stderr_has(&["--cron", "--every"]);
}

#[test]
fn a_bad_queue_path_exits_2_with_the_expected_form() {
    ctl().run(&["assignments", "shop"]).code(2).stderr_has(&["expected DOMAIN/QUEUE", "shop/orders"]);
    ctl().run(&["queue", "describe", "shop/or ders"]).code(2).stderr_has(&["queue name contains ' '"]);
    ctl().run(&["enqueue", "/orders"]).code(2).stderr_has(&["domain name must not be empty"]);
}

#[test]
fn a_bad_duration_or_instant_exits_2_with_the_expected_form() {
    ctl()
        .run(&["enqueue", "shop/orders", "--delay", "soon"])
        .code(2)
        .stderr_has(&["\"soon\" is not a duration", "30s"]);
    ctl().run(&["enqueue", "shop/orders", "--timeout", "10"]).code(2).stderr_has(&["not a duration"]);
    ctl()
        .run(&["schedule", "create", "shop/orders", "n", "--every", "5x"])
        .code(2)
        .stderr_has(&["\"5x\" is not a duration"]);
    ctl()
        .run(&["enqueue", "shop/orders", "--run-at", "tomorrow"])
        .code(2)
        .stderr_has(&["not an RFC 3339 instant", "2026-12-24T18:00:00Z"]);
}

#[test]
fn conflicting_flags_exit_2() {
    ctl()
        .run(&["enqueue", "shop/orders", "--key", "k", "--partition", "1"])
        .code(2)
        .stderr_has(&["cannot be used with"]);
    ctl().run(&["enqueue", "shop/orders", "--delay", "1s", "--run-at", "2030-01-01T00:00:00Z"]).code(2);
    ctl().run(&["enqueue", "shop/orders", "--payload", "a", "--payload-json", "1"]).code(2);
    ctl().run(&["schedule", "create", "shop/orders", "n", "--cron", "* * * * *", "--every", "1m"]).code(2);
}

#[test]
fn out_of_range_values_exit_2() {
    ctl().run(&["events", "--limit", "0"]).code(2);
    ctl().run(&["task", "list", "shop/orders", "--limit", "10001"]).code(2);
    ctl().run(&["task", "list", "shop/orders", "--state", "sleeping"]).code(2).stderr_has(&["pending"]);
    ctl()
        .run(&["queue", "create", "shop/orders", "-p", "4", "--allocator", "random"])
        .code(2)
        .stderr_has(&["balanced-sticky"]);
    ctl().run(&["worker", "drain", "not-a-uuid"]).code(2);
}

#[test]
fn input_checked_after_parsing_exits_2_too() {
    // The partition count is checked by helix-core's rules, before connecting.
    Helixctl::new("memory://")
        .run(&["queue", "create", "shop/orders", "-p", "0"])
        .code(2)
        .stderr_has(&["partition count 0"]);
    // A database URL that is not one.
    Helixctl::new("helix.db").run(&["status"]).code(2).stderr_has(&["not a store url", "--database-url"]);
    // A payload file that does not exist.
    let missing = ["enqueue", "shop/orders", "--payload-file", "/nonexistent/payload.bin"];
    Helixctl::new("memory://").run(&missing).code(2).stderr_has(&["cannot read the payload file"]);
    // A webhook URL is checked at enqueue, before the queue is looked up.
    for (url, says) in [
        ("ftp://example.com/hook", "not http or https"),
        ("https://user:secret@example.com/hook", "credentials"),
        ("not a url", "not a valid url"),
    ] {
        Helixctl::new("memory://")
            .run(&["enqueue", "shop/orders", "--webhook", url])
            .code(2)
            .stderr_has(&[says]);
    }
    let good = ["enqueue", "shop/orders", "--webhook", "https://example.com/hook", "--payload-json", "{}"];
    Helixctl::new("memory://").run(&good).code(1).stderr_has(&["queue shop/orders not found"]);
}

#[test]
fn help_documents_the_database_the_exit_codes_and_every_command() {
    let help = ctl().run(&["--help"]).code(0).stdout;
    for part in ["HELIX_DATABASE_URL", "sqlite://helix.db", "Exit codes", "--json"] {
        assert!(help.contains(part), "--help lacks {part}:\n{help}");
    }
    for command in [
        "migrate",
        "domain",
        "queue",
        "status",
        "assignments",
        "events",
        "enqueue",
        "task",
        "schedule",
        "partition",
        "worker",
    ] {
        assert!(help.contains(&format!("  {command} ")), "--help lacks {command}:\n{help}");
    }
    let enqueue = ctl().run(&["enqueue", "--help"]).code(0).stdout;
    for flag in ["--payload-file", "--delay", "--run-at", "--dedup-key", "--max-attempts", "--timeout"] {
        assert!(enqueue.contains(flag), "enqueue --help lacks {flag}");
    }
    // The environment's URL, which may hold a password, is never shown.
    assert!(!help.contains("never@"), "{help}");
}

#[test]
fn memory_store_has_no_schema() {
    let answer = Helixctl::new("memory://").json(&["migrate"]);
    assert_eq!(answer["schema_version"], serde_json::Value::Null);
    assert_eq!(answer["database"], "memory://");
}
