# Sourced by the benchmark scripts: the strata binary ($bin: $BIN, or a
# release build), a work directory removed on exit ($work), TSBS cpu-only
# rows for $scale hosts over $hours hours ($work/cpu.lp, from $start to
# $end), and `start_dev [args...]`, which starts `strata dev` on free ports
# with the extra args and sets $pid, $http and $flight.

if [ -n "${BIN:-}" ]; then
  bin="$BIN"
else
  cargo build --release --quiet -p strata --bin strata >&2
  bin="${CARGO_TARGET_DIR:-$PWD/target}/release/strata"
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

start_dev() {
  "$bin" dev --data-dir "$work/data" --http-addr 127.0.0.1:0 --flight-addr 127.0.0.1:0 \
    --addr-file "$work/addr.json" "$@" >"$work/dev.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do [ -s "$work/addr.json" ] && break; sleep 0.1; done
  [ -s "$work/addr.json" ] || { echo "strata dev did not start:"; cat "$work/dev.log"; exit 1; }
  local addr='import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])'
  http="$(python3 -c "$addr" "$work/addr.json" http)"
  flight="$(python3 -c "$addr" "$work/addr.json" flight)"
}
