#!/usr/bin/env bash
# The test command: formatting, lints, and every test of the workspace, MySQL included.
#
#     scripts/test.sh
#
# Needs a MySQL/MariaDB server (HELIX_TEST_MYSQL_URL, default mysql://root@127.0.0.1:3306);
# scripts/ensure-mysql.sh starts the local one when it is installed but stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="${CARGO_BUILD_JOBS:-2}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy -j "$jobs" --workspace --all-targets -- -D warnings

echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc -j "$jobs" --workspace --no-deps --quiet

echo "== no libmysqlclient"
if cargo tree -e normal -i mysqlclient-sys >/dev/null 2>&1; then
    echo "error: libmysqlclient (mysqlclient-sys) is in the dependency tree" >&2
    exit 1
fi

echo "== mysql"
scripts/ensure-mysql.sh

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doc tests; run them first so nextest's summary closes the run.
    cargo test -j "$jobs" --workspace --doc
    cargo nextest run -j "$jobs" --workspace --no-fail-fast
else
    cargo test -j "$jobs" --workspace --no-fail-fast
fi

echo "== all checks passed"
