#!/usr/bin/env bash
# The 15 TSBS cpu-only query types on a release `strata dev` (three storage
# nodes), each timed beside an in-process DataFusion over one Parquet file
# of the same rows (`bench run --verify --compare`), answers checked.
# Numbers are printed, never asserted.
#
#   benches/planner.sh                          # 100 hosts x 24 h, SHARD KEY (hostname)
#   SCALE=1000 benches/planner.sh               # 8.64M rows
#   DB_OPTIONS="" benches/planner.sh            # series key as the shard key
#   LASTPOINT_UNCACHED=0 benches/planner.sh     # skip lastpoint again with the
#                                               # last-value cache off
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
. benches/dev_cluster.sh
start_dev

echo "== $scale hosts x $hours h; CREATE DATABASE benchmark $options"
"$bin" sql --host "$flight" -c "CREATE DATABASE benchmark $options" >/dev/null
"$bin" bench load --file "$work/cpu.lp" --url "http://$http" --db benchmark \
  --workers 4 --batch-size 10000 2>/dev/null
"$bin" bench run --host "$flight" --db benchmark --scale "$scale" --seed 123 \
  --timestamp-start "$start" --timestamp-end "$end" --queries "$queries" \
  --workers "$workers" --verify "$work/cpu.lp" $compare 2>/dev/null
if [ "${LASTPOINT_UNCACHED:-1}" = 1 ]; then
  echo "== lastpoint with the last-value cache off (/*+ strata.last_value_cache = false */)"
  "$bin" bench run --host "$flight" --db benchmark --scale "$scale" --seed 123 \
    --timestamp-start "$start" --timestamp-end "$end" --queries "$queries" \
    --query-type lastpoint --hint "strata.last_value_cache = false" 2>/dev/null
fi
echo "peak RSS of strata dev: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status")"
