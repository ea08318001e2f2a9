#!/usr/bin/env bash
# The 15 TSBS cpu-only query types on a release `strata dev` (three storage
# nodes), each timed beside an in-process DataFusion over one Parquet file
# of the same rows (`bench run --verify --compare`), answers checked.
# Numbers are printed, never asserted.
#
#   benches/planner.sh                          # 100 hosts x 24 h, SHARD KEY (hostname)
#   SCALE=1000 benches/planner.sh               # 8.64M rows
#   DB_OPTIONS="" benches/planner.sh            # series key as the shard key
#   BIN=/tmp/strata-before COMPARE=0 benches/planner.sh
#                                               # another build (one without
#                                               # --compare), to compare
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${SCALE:-100}"
hours="${HOURS:-24}"
queries="${QUERIES:-20}"
workers="${WORKERS:-1}"
options="${DB_OPTIONS-SHARD KEY (hostname)}"
compare="--compare"
[ "${COMPARE:-1}" = 0 ] && compare=""
if [ -n "${BIN:-}" ]; then
  bin="$BIN"
else
  target="${CARGO_TARGET_DIR:-$PWD/target}"
  cargo build --release -p strata --bin strata >&2
  bin="$target/release/strata"
fi

work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

start="2016-01-01T00:00:00Z"
end="$(date -u -d "2016-01-01 00:00:00 UTC + $hours hours" +%Y-%m-%dT%H:%M:%SZ)"
"$bin" bench generate --use-case cpu-only --scale "$scale" --seed 123 \
  --timestamp-start "$start" --timestamp-end "$end" --output "$work/cpu.lp"

"$bin" dev --data-dir "$work/data" --http-addr 127.0.0.1:0 --flight-addr 127.0.0.1:0 \
  --addr-file "$work/addr.json" >"$work/dev.log" 2>&1 &
pid=$!
for _ in $(seq 600); do [ -s "$work/addr.json" ] && break; sleep 0.1; done
[ -s "$work/addr.json" ] || { echo "strata dev did not start:"; cat "$work/dev.log"; exit 1; }
addr() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/addr.json" "$1"; }
http="$(addr http)"
flight="$(addr flight)"

echo "== $scale hosts x $hours h; CREATE DATABASE benchmark $options"
"$bin" sql --host "$flight" -c "CREATE DATABASE benchmark $options" >/dev/null
"$bin" bench load --file "$work/cpu.lp" --url "http://$http" --db benchmark \
  --workers 4 --batch-size 10000 2>/dev/null
"$bin" bench run --host "$flight" --db benchmark --scale "$scale" --seed 123 \
  --timestamp-start "$start" --timestamp-end "$end" --queries "$queries" \
  --workers "$workers" --verify "$work/cpu.lp" $compare 2>/dev/null
echo "peak RSS of strata dev: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status")"
