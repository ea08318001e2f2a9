#!/usr/bin/env python3
"""Round trip of small queries as a user's client sees it: a release
`strata dev`, ADBC Flight SQL from Python over a real socket, `SELECT 1`
and a one-row query, sequentially; prints median and p99 in ms. Numbers
are printed, never asserted. Needs the client packages of
clients/python/requirements.txt (scripts/test.sh installs them in a
virtualenv; run this with its python).

    $STRATA_VENV/bin/python benches/roundtrip.py
    BIN=/path/to/strata N=500 $STRATA_VENV/bin/python benches/roundtrip.py
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary():
    if os.environ.get("BIN"):
        return os.environ["BIN"]
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "strata"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "strata")


def timed(cursor, sql, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        cursor.execute(sql)
        cursor.fetchall()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def main():
    n = int(os.environ.get("N", "200"))
    work = tempfile.mkdtemp()
    addr_file = os.path.join(work, "addrs.json")
    proc = subprocess.Popen(
        [binary(), "dev", "--data-dir", os.path.join(work, "data"), "--http-addr", "127.0.0.1:0",
         "--flight-addr", "127.0.0.1:0", "--addr-file", addr_file],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "strata is ready":
                break
        addrs = json.load(open(addr_file))
        body = b"cpu,host=a usage=1.5 1700000000\n"
        urllib.request.urlopen(urllib.request.Request(
            f"http://{addrs['http']}/write?db=rt&precision=s", data=body)).read()
        conn = flightsql.connect(f"grpc://{addrs['flight']}",
                                 db_kwargs={"adbc.flight.sql.rpc.call_header.database": "rt"})
        cur = conn.cursor()
        timed(cur, "SELECT 1", 5)  # warm up the connection
        for name, sql in [("SELECT 1", "SELECT 1"),
                          ("one-row query", "SELECT usage FROM cpu WHERE host = 'a' LIMIT 1")]:
            median, p99 = timed(cur, sql, n)
            print(f"{name:<16} n={n}  median {median:7.2f} ms   p99 {p99:7.2f} ms", flush=True)
        cur.close()
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
