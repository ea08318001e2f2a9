#!/usr/bin/env bash
# Storage benchmark through the full product path: TSBS cpu-only rows
# (SCALE hosts, 10 fields, 10 s apart) posted as line protocol to a release
# `strata dev` by 4 writers in 10,000-line batches; then the node process's
# peak RSS, and scans over SQL-over-HTTP: a full-table scan of every field,
# and a one-host one-hour scan with key pruning and with pruning defeated.
# Numbers are printed, never asserted.
#
#   benches/storage.sh                 # 100 hosts, one day (864,000 rows)
#   SCALE=100 HOURS=72 benches/storage.sh
#   BIN=/path/to/strata benches/storage.sh   # a prebuilt binary (to compare builds)
#   INFLUXDB=0 benches/storage.sh     # skip the InfluxDB 1.6 ingest beside it
#   LOADS=2 FLUSH_ROWS=100000 benches/storage.sh
#       # load the rows twice: the second load rewrites every point, so
#       # Parquet files overlap in time and scans run the deduplicating merge
set -euo pipefail
cd "$(dirname "$0")/.."

scale="${SCALE:-100}"
hours="${HOURS:-24}"
workers="${WORKERS:-4}"
batch="${BATCH:-10000}"
flush_rows="${FLUSH_ROWS:-1000000}"
loads="${LOADS:-1}"
. benches/dev_cluster.sh
start_dev --flush-rows "$flush_rows"

echo "== ingest: $scale hosts x $hours h, $workers writers, $batch-line batches, $loads load(s)"
for _ in $(seq "$loads"); do
  "$bin" bench load --file "$work/cpu.lp" --url "http://$http" --db benchmark \
    --workers "$workers" --batch-size "$batch" 2>/dev/null
done
echo "peak RSS of strata dev: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status")"

# The same rows and loader against InfluxDB 1.6 (`influxd`, from Debian's
# `influxdb` package) when it is on this machine, one after the other.
if [ "${INFLUXDB:-1}" = 1 ]; then
  if command -v influxd >/dev/null; then
    mkdir -p "$work/influx"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    cat >"$work/influx/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:0"
[meta]
  dir = "$work/influx/meta"
[data]
  dir = "$work/influx/data"
  wal-dir = "$work/influx/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$port"
  log-enabled = false
CONF
    influxd -config "$work/influx/influxdb.conf" >"$work/influx/log" 2>&1 &
    influx_pid=$!
    for _ in $(seq 100); do curl -s "http://127.0.0.1:$port/ping" >/dev/null && break; sleep 0.1; done
    curl -s -XPOST "http://127.0.0.1:$port/query" --data-urlencode "q=CREATE DATABASE benchmark" >/dev/null
    echo "== the same load into InfluxDB $(influxd version 2>/dev/null | awk '{print $2}')"
    for _ in $(seq "$loads"); do
      "$bin" bench load --file "$work/cpu.lp" --url "http://127.0.0.1:$port" --db benchmark \
        --workers "$workers" --batch-size "$batch" 2>/dev/null
    done
    echo "peak RSS of influxd: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$influx_pid/status")"
    kill "$influx_pid"; wait "$influx_pid" 2>/dev/null || true
  else
    echo "(influxd is not on this machine: no InfluxDB 1.6 ingest beside it; apt-get install influxdb)"
  fi
fi

# Times one SQL query over HTTP (best of 3) and prints rows/s over `rows`.
scan() {
  local label="$1" rows="$2" sql="$3" best=""
  for _ in 1 2 3; do
    local t
    t="$(curl -s -o "$work/out.csv" -w '%{time_total}' -G "http://$http/api/v3/query_sql" \
      --data-urlencode db=benchmark --data-urlencode format=csv --data-urlencode "q=$sql")"
    if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN{exit !(a<b)}'; then best="$t"; fi
  done
  awk -v l="$label" -v r="$rows" -v t="$best" \
    'BEGIN { printf "%-44s %9.1f ms %14.0f rows/s\n", l, t*1000, r/t }'
}

total=$((scale * hours * 360))
fields="max(usage_user), max(usage_system), max(usage_idle), max(usage_nice), max(usage_iowait),
        max(usage_irq), max(usage_softirq), max(usage_steal), max(usage_guest), max(usage_guest_nice)"
window="time >= '2016-01-01T10:00:00Z' AND time < '2016-01-01T11:00:00Z'"
files="$(find "$work/data" -name '*.parquet' | wc -l)"
echo "== scans ($total rows in the table, $files Parquet files; rows/s over the rows each scan covers)"
scan "full table, all 10 fields" "$total" "SELECT count(*), $fields FROM cpu"
scan "one host, one hour (pruned)" "$total" \
  "SELECT * FROM cpu WHERE hostname = 'host_7' AND $window"
scan "one host, one hour (pruning defeated)" "$total" \
  "SELECT * FROM cpu WHERE concat(hostname, '') = 'host_7' AND time + INTERVAL '0 seconds' >= '2016-01-01T10:00:00Z' AND time + INTERVAL '0 seconds' < '2016-01-01T11:00:00Z'"
echo "(one-host answers: $(($(wc -l <"$work/out.csv") - 1)) rows)"
