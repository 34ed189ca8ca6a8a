#!/usr/bin/env bash
# Mutation testing of the fencing code: does some test fail when one condition of a fence is
# removed? Two parts, per backend (mem, sqlite, mysql), each run against that backend's
# conformance suite:
#
# 1. cargo-mutants over the shared rules (helix-store/src/rules.rs, with its unit tests and the
#    in-memory suite) and over each backend's fence functions (lease, session and owner
#    writes), in place, so the build reuses the target directory.
# 2. Condition removals that cargo-mutants cannot make: it mutates Rust expressions, not SQL
#    text nor a whole conjunct. Each entry below removes exactly one condition from one fence
#    (a SQL condition `c` becomes `(c OR 1 = 1)`, which keeps its bound parameter; a Rust
#    conjunct is deleted), builds, runs the backend's suite, records caught or missed and
#    restores the file.
#
# Usage: scripts/mutants-fences.sh [mem|sqlite|mysql]...   (default: all three)
# Needs cargo-mutants (`cargo install --locked cargo-mutants`), cargo-nextest, and for mysql
# the server of HELIX_TEST_MYSQL_URL (see README). Results go to $OUT (default
# target/mutants-fences under the target directory). Exits 1 when a mutant was missed.
#
# The tree must be clean in helix-store/src: mutants are applied in place and restored with
# `git checkout`. Where several checkouts share one target directory and build the same
# crates, a concurrent build can replace a test binary between build and run; give the
# sweep a target directory of its own (a copy of the shared one, so nothing is rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
target_dir="${CARGO_TARGET_DIR:-target}"
OUT="${OUT:-$target_dir/mutants-fences}"
mkdir -p "$OUT"
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(mem sqlite mysql)

if ! git diff --quiet -- helix-store/src; then
    echo "helix-store/src has uncommitted changes; commit or stash them first" >&2
    exit 2
fi
restore() { git checkout --quiet -- helix-store/src; }
trap restore EXIT

# The tests each group runs: its backend's conformance suite (and, for the rules, the unit
# tests). The SQL suites mostly wait on lease time, so they run many tests at once.
test_args() {
    case "$1" in
        mem) echo "-p helix-store --lib --test conformance_mem" ;;
        sqlite) echo "-p helix-store --test conformance_sqlite --test-threads 16" ;;
        mysql) echo "-p helix-store --test conformance_mysql --test-threads 16" ;;
    esac
}

# The fence functions of each backend, as cargo-mutants names them.
fence_fns='check_fence|owner_write|heartbeat|set_worker_status|deregister_worker|mark_workers_dead|acquire_lease|renew_lease|release_lease'
mutant_files() {
    case "$1" in
        mem) echo "-f helix-store/src/rules.rs -f helix-store/src/mem.rs" ;;
        sqlite) echo "-f helix-store/src/sqlite/mod.rs" ;;
        mysql) echo "-f helix-store/src/mysql/ops.rs" ;;
    esac
}
mutant_re() {
    case "$1" in
        mem) echo "^helix-store/src/rules\.rs|($fence_fns)" ;;
        *) echo "$fence_fns" ;;
    esac
}

# ---- baseline: each suite passes unmutated, or nothing below means anything -----------------
for group in "${groups[@]}"; do
    echo "== baseline: $group"
    # shellcheck disable=SC2046
    if ! cargo nextest run --no-fail-fast $(test_args "$group") >"$OUT/baseline-$group.log" 2>&1; then
        echo "the $group suite fails unmutated, see $OUT/baseline-$group.log" >&2
        exit 2
    fi
done

# ---- part 1: cargo-mutants -------------------------------------------------------------------
# Excluded: the unit tests' own code; replacing a whole function's body with a value built
# through a result alias (`StoreResult::new()` and the like), which never compiles; and two
# kinds of mutant that cannot change behaviour:
# - the `expired` flag a refused heartbeat passes to `rules::classify_heartbeat` (mem, mysql):
#   the rule does not read it (a refused session is over whether or not its lease ran out);
# - the chunk size of SQLite's `mark_workers_dead` (`MAX_BINDS - 1`): it matters only for a
#   call with more than 29 999 workers, and is not a fence condition.
equivalent='replace < with (==|>|<=) in <impl Store for MemStore>::heartbeat$'
equivalent+='|mysql/ops\.rs:.*replace != with == in heartbeat$'
equivalent+='|sqlite/mod\.rs:.*replace - with [+/] in <impl Store for SqliteStore>::mark_workers_dead$'
for group in "${groups[@]}"; do
    echo "== cargo-mutants: $group"
    # shellcheck disable=SC2046
    cargo mutants --in-place --test-tool nextest --no-shuffle \
        --baseline skip --timeout 180 --build-timeout 600 \
        $(mutant_files "$group") --re "$(mutant_re "$group")" \
        --exclude-re "with (StoreResult|Tx|Res)::(new|from|from_iter)\\(|mod tests|::tests::|$equivalent" \
        --output "$OUT/$group" \
        -- $(test_args "$group") ||
        true
    restore
done

# ---- part 2: condition removals -------------------------------------------------------------
# group | file | anchor (a literal that starts the fence's function or statement; must occur
# once) | regex of the condition (its first match after the anchor; `|` written \x7c) |
# replacement [| equivalent: a removal no test can observe, reported but not a failure].
#
# The two equivalent ones: on MySQL a LEFT or DEAD row's lease ended at or before its status
# changed (`LEAST(lease_expires_at, NOW(6))`, or `lease_expires_at < NOW(6)` to be declared
# dead), and NOW(6) counts microseconds, so a later heartbeat or status change always finds
# the lease over and the expiry condition refuses it. On SQLite's millisecond clock the same
# removals are observable and caught.
removals() {
    cat <<'EOF'
mem|helix-store/src/mem.rs|fn check_fence(|l\.holder == Some\(fence\.holder\) && |
mem|helix-store/src/mem.rs|fn check_fence(|l\.term == fence\.term && |
mem|helix-store/src/mem.rs|fn check_fence(| && l\.expires_at > now|
mem|helix-store/src/mem.rs|async fn release_lease(|l\.holder == Some\(fence\.holder\) && |
mem|helix-store/src/mem.rs|async fn release_lease(| && l\.term == fence\.term|
mem|helix-store/src/mem.rs|async fn release_lease(|if l\.expires_at <= now \{|if false {
mem|helix-store/src/mem.rs|fn owner_write(|r\.owner == Some\(worker\)\s*&& |
mem|helix-store/src/mem.rs|fn owner_write(|\s*&& r\.epoch == epoch|
mem|helix-store/src/mem.rs|fn owner_write(|\s*&& \(!handoff \x7c\x7c r\.state == AssignmentState::Revoking\)|
mem|helix-store/src/mem.rs|async fn heartbeat(|w\.session_epoch == session_epoch && |
mem|helix-store/src/mem.rs|async fn heartbeat(|w\.status\.in_session\(\) && |
mem|helix-store/src/mem.rs|async fn heartbeat(| && w\.lease_expires_at >= now|
mem|helix-store/src/mem.rs|async fn set_worker_status(|w\.session_epoch == session_epoch && |
mem|helix-store/src/mem.rs|async fn set_worker_status(|w\.status\.in_session\(\) && |
mem|helix-store/src/mem.rs|async fn set_worker_status(| && w\.lease_expires_at >= now|
mem|helix-store/src/mem.rs|async fn deregister_worker(|if w\.session_epoch != session_epoch \{|if false {
sqlite|helix-store/src/sqlite/mod.rs|fn check_fence(conn|AND holder = \?|AND (holder = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|fn check_fence(conn|AND term = \?|AND (term = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|fn check_fence(conn|AND expires_at > ",\s*now!\(\)|AND (expires_at > ", now!(), " OR 1 = 1)"
sqlite|helix-store/src/sqlite/mod.rs|async fn renew_lease(|AND holder = \?|AND (holder = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn renew_lease(|AND term = \?|AND (term = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn renew_lease(|AND expires_at > ",\s*now!\(\)|AND (expires_at > ", now!(), " OR 1 = 1)"
sqlite|helix-store/src/sqlite/mod.rs|async fn release_lease(|AND holder = \?|AND (holder = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn release_lease(|AND term = \?|AND (term = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn release_lease(|AND expires_at > ",\s*now!\(\)|AND (expires_at > ", now!(), " OR 1 = 1)"
sqlite|helix-store/src/sqlite/mod.rs|OwnerWrite::HandOff => concat!(|AND owner = \?|AND (owner = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|OwnerWrite::HandOff => concat!(|AND epoch = \?|AND (epoch = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|OwnerWrite::HandOff => concat!(|AND state = 'REVOKING'|AND (state = 'REVOKING' OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|OwnerWrite::Release => concat!(|AND owner = \?|AND (owner = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|OwnerWrite::Release => concat!(|AND epoch = \?|AND (epoch = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|OwnerWrite::Fail(_) => concat!(|AND owner = \?|AND (owner = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|OwnerWrite::Fail(_) => concat!(|AND epoch = \?|AND (epoch = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn heartbeat(|WHERE id = \?|WHERE (id = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn heartbeat(|AND session_epoch = \?|AND (session_epoch = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn heartbeat(|AND status IN \{IN_SESSION\}|AND (status IN {IN_SESSION} OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn heartbeat(|AND lease_expires_at >= \{\}|AND (lease_expires_at >= {} OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn set_worker_status(|WHERE id = \?|WHERE (id = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn set_worker_status(|AND session_epoch = \?|AND (session_epoch = ? OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn set_worker_status(|AND status IN \{IN_SESSION\}|AND (status IN {IN_SESSION} OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn set_worker_status(|AND lease_expires_at >= \{\}|AND (lease_expires_at >= {} OR 1 = 1)
sqlite|helix-store/src/sqlite/mod.rs|async fn deregister_worker(|if u64::try_from\(current\.session_epoch\)\.ok\(\) != Some\(session_epoch\.0\) \{|if false {
mysql|helix-store/src/mysql/ops.rs|async fn check_fence(|r\.holder\.as_deref\(\) == Some\(fence\.holder\.as_bytes\(\)\.as_slice\(\)\)\s*&& |
mysql|helix-store/src/mysql/ops.rs|async fn check_fence(|\s*&& u64::try_from\(r\.term\)\.ok\(\) == Some\(fence\.term\.0\)|
mysql|helix-store/src/mysql/ops.rs|async fn check_fence(|\s*&& r\.flag != 0|
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn renew_lease(|AND holder = \?|AND (holder = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn renew_lease(|AND term = \?|AND (term = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn renew_lease(|AND expires_at > NOW\(6\)|AND (expires_at > NOW(6) OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn release_lease(|AND holder = \?|AND (holder = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn release_lease(|AND term = \?|AND (term = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn release_lease(|AND expires_at > NOW\(6\)|AND (expires_at > NOW(6) OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|OwnerWrite::HandOff => {|AND owner = \?|AND (owner = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|OwnerWrite::HandOff => {|AND epoch = \?|AND (epoch = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|OwnerWrite::HandOff => {|AND state = 'REVOKING'|AND (state = 'REVOKING' OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|OwnerWrite::Release => {|AND owner = \?|AND (owner = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|OwnerWrite::Release => {|AND epoch = \?|AND (epoch = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|OwnerWrite::Fail(_) => {|AND owner = \?|AND (owner = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|OwnerWrite::Fail(_) => {|AND epoch = \?|AND (epoch = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn heartbeat(|WHERE id = \?|WHERE (id = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn heartbeat(|AND session_epoch = \?|AND (session_epoch = ? OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn heartbeat(|AND status IN \('ACTIVE', 'DRAINING'\)|AND (status IN ('ACTIVE', 'DRAINING') OR 1 = 1)|equivalent
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn heartbeat(|AND lease_expires_at >= NOW\(6\)|AND (lease_expires_at >= NOW(6) OR 1 = 1)
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn set_worker_status(|\.find\(&id\)\s*|
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn set_worker_status(|\.filter\(helix_workers::session_epoch\.eq\([^\n]*\)\)\s*|
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn set_worker_status(|\.filter\(helix_workers::status\.eq_any\(IN_SESSION\)\)\s*||equivalent
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn set_worker_status(|\.filter\(helix_workers::lease_expires_at\.ge\(now6\(\)\)\)\s*|
mysql|helix-store/src/mysql/ops.rs|pub(super) async fn deregister_worker(|if u64::try_from\(epoch\)\.ok\(\) != Some\(session_epoch\.0\) \{|if false {
EOF
}

# Applies one removal; fails when the anchor is not unique or the condition is not found, so
# the list cannot silently go stale as the code moves.
apply_removal() {
    python3 - "$@" <<'PY'
import re, sys
file, anchor, pattern, replacement = sys.argv[1:5]
text = open(file).read()
if text.count(anchor) != 1:
    sys.exit(f"anchor {anchor!r} occurs {text.count(anchor)} times in {file}")
start = text.index(anchor)
m = re.compile(pattern).search(text, start)
if m is None:
    sys.exit(f"condition {pattern!r} not found after {anchor!r} in {file}")
open(file, "w").write(text[: m.start()] + replacement + text[m.end():])
PY
}

summary="$OUT/removals.txt"
: >"$summary"
n=0
for group in "${groups[@]}"; do
    echo "== condition removals: $group"
    while IFS='|' read -r g file anchor pattern replacement expect; do
        [ "$g" = "$group" ] || continue
        n=$((n + 1))
        name="#$n $file: $anchor … $pattern"
        if ! apply_removal "$file" "$anchor" "$pattern" "$replacement"; then
            echo "stale  $name" | tee -a "$summary"
            restore
            continue
        fi
        log="$OUT/removal-$n.log"
        # shellcheck disable=SC2046
        if ! cargo nextest run --no-run $(test_args "$group") >"$log" 2>&1; then
            outcome=unviable
        elif cargo nextest run --no-fail-fast $(test_args "$group") >"$log" 2>&1; then
            outcome=missed
        else
            outcome=caught
        fi
        [ "$outcome" != missed ] || [ "$expect" != equivalent ] || outcome=equivalent
        echo "$outcome $name" | tee -a "$summary"
        restore
    done < <(removals)
done

echo
echo "== cargo-mutants"
for group in "${groups[@]}"; do
    dir="$OUT/$group/mutants.out"
    [ -d "$dir" ] || continue
    printf '%-7s caught %s, missed %s, unviable %s, timeouts %s\n' "$group" \
        "$(wc -l <"$dir/caught.txt")" "$(wc -l <"$dir/missed.txt")" \
        "$(wc -l <"$dir/unviable.txt")" "$(wc -l <"$dir/timeout.txt")"
    sed 's/^/  missed: /' "$dir/missed.txt"
done
echo "== condition removals"
for outcome in caught missed equivalent unviable stale; do
    printf '%-9s %s\n' "$outcome" "$(grep -c "^$outcome " "$summary" || true)"
done
grep -v '^caught \|^equivalent ' "$summary" || true

missed=$(cat "$OUT"/*/mutants.out/missed.txt 2>/dev/null | wc -l)
missed=$((missed + $(grep -c '^missed \|^stale ' "$summary" || true)))
[ "$missed" -eq 0 ]
