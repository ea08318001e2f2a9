#!/usr/bin/env bash
# Ingest at replication factors 1, 2 and 3 through the full product path:
# TSBS cpu-only rows (SCALE hosts, 10 fields, 10 s apart) posted as line
# protocol to a release `strata dev --storage-nodes 3` by 4 writers in
# 10,000-line batches, into one database per factor (RF 1 at `one`, RF 2
# and RF 3 at `quorum`); then the same load into InfluxDB 1.6 (RF 1) when
# `influxd` is on this machine. Numbers are printed, never asserted.
#
#   benches/replication.sh                 # 100 hosts, one day (864,000 rows)
#   SCALE=10 HOURS=6 benches/replication.sh
#   BIN=/path/to/strata benches/replication.sh
#   INFLUXDB=0 benches/replication.sh      # skip InfluxDB
set -euo pipefail
cd "$(dirname "$0")/.."

scale="${SCALE:-100}"
hours="${HOURS:-24}"
workers="${WORKERS:-4}"
batch="${BATCH:-10000}"
. benches/dev_cluster.sh
start_dev --storage-nodes 3 --flush-rows 1000000

sql() {
  curl -sf -XPOST "http://$http/api/v3/query_sql" -H 'Content-Type: application/json' \
    -d "{\"q\": \"$1\"}" >/dev/null
}

echo "== ingest: $scale hosts x $hours h, $workers writers, $batch-line batches, 3 storage nodes"
for rf in 1 2 3; do
  consistency=quorum
  [ "$rf" = 1 ] && consistency=one
  sql "CREATE DATABASE rf$rf WITH REPLICATION $rf"
  printf 'RF %s, %-7s ' "$rf" "$consistency"
  "$bin" bench load --file "$work/cpu.lp" --url "http://$http" --db "rf$rf" \
    --workers "$workers" --batch-size "$batch" --consistency "$consistency" 2>/dev/null
done
echo "peak RSS of strata dev: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status")"

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
    printf 'InfluxDB %s (RF 1) ' "$(influxd version 2>/dev/null | awk '{print $2}')"
    "$bin" bench load --file "$work/cpu.lp" --url "http://127.0.0.1:$port" --db benchmark \
      --workers "$workers" --batch-size "$batch" 2>/dev/null
    kill "$influx_pid"; wait "$influx_pid" 2>/dev/null || true
  else
    echo "(influxd is not on this machine: no InfluxDB 1.6 ingest beside it; apt-get install influxdb)"
  fi
fi
