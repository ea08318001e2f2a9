#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the client
# compatibility tests with the Python clients users run (installed here into
# a virtualenv). Needs only the Rust toolchain and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
venv="${STRATA_VENV:-$PWD/.venv}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo test"
cargo test --workspace

echo "==> client tests (ADBC Flight SQL, pyarrow, influxdb, influxdb-client)"
cargo build -p strata --bin strata
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r clients/python/requirements.txt
STRATA_BIN="$target_dir/debug/strata" "$venv/bin/python" -m pytest -q clients/python/tests
