#!/usr/bin/env python3
"""Hostile-input memory benchmark: the inputs that once blew a node up,
sent to a release `strata dev`, with the process's peak RSS after each
(VmHWM, reset between steps through /proc/PID/clear_refs). Numbers are
printed, never asserted. Standard library only.

    python3 benches/hostile.py                  # builds the release binary
    BIN=/path/to/strata python3 benches/hostile.py
    STEPS=wide,sparse python3 benches/hostile.py  # some steps only

Steps:
  wide    one line gives table `wide` 5,000 fields, then 2,000,000 lines of
          one field (once: 40 GB allocation, abort)
  sparse  60,000 rows of a 5,000-field table, each with one field, flushed,
          then the same again killed with -9 and replayed (once: 10.5 GB
          flush, 12 GB replay)
  gzip    10 concurrent writes of a small gzip body that inflates to 250 MB
          (once: 10 at once aborted the process)
  result  /api/v3/query_sql of 3,000,000 rows as jsonl, csv and json, and as
          pretty (once: 5.1 GB for pretty, unbounded results aborted)
  idle    RSS after the spikes, once idle (once: 15 GB kept)
"""

import gzip
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary():
    if os.environ.get("BIN"):
        return os.environ["BIN"]
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "strata"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "strata")


class Dev:
    def __init__(self, bin_path, data_dir, flush_rows):
        self.addr_file = os.path.join(data_dir, "addrs.json")
        self.proc = subprocess.Popen(
            [bin_path, "dev", "--data-dir", data_dir, "--http-addr", "127.0.0.1:0",
             "--flight-addr", "127.0.0.1:0", "--flush-rows", str(flush_rows),
             "--addr-file", self.addr_file],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            if line.strip() == "strata is ready":
                break
        addrs = json.load(open(self.addr_file))
        host, port = addrs["http"].rsplit(":", 1)
        self.host, self.port = host, int(port)
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def status(self, key):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024  # MiB
        return -1

    def reset_peak(self):
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def request(self, method, path, body=None, headers=None, timeout=900):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def stream_size(self, path):
        """Reads a response in pieces; returns (status, bytes)."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=900)
        c.request("GET", path)
        r = c.getresponse()
        n = 0
        while True:
            piece = r.read(1 << 20)
            if not piece:
                break
            n += len(piece)
        c.close()
        return r.status, n

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=300)


def report(name, dev, t0, extra=""):
    print(f"{name:<48} {time.time() - t0:8.1f} s   peak RSS {dev.status('VmHWM'):6d} MiB   "
          f"RSS now {dev.status('VmRSS'):6d} MiB  {extra}", flush=True)


def parquet_files(data_dir):
    n = 0
    for root, _, files in os.walk(data_dir):
        n += sum(1 for f in files if f.endswith(".parquet"))
    return n


def main():
    steps = set(os.environ.get("STEPS", "wide,sparse,gzip,result,idle").split(","))
    bin_path = binary()
    work = tempfile.mkdtemp()
    data = os.path.join(work, "data")
    dev = Dev(bin_path, data, 1_000_000)
    print(f"strata dev (release) pid {dev.proc.pid}; idle RSS {dev.status('VmRSS')} MiB")
    try:
        if "wide" in steps:
            fields = ",".join(f"f{i}={i}" for i in range(5000))
            dev.request("POST", "/write?db=h&precision=s", f"wide,h=a {fields} 0\n".encode())
            body = "".join(f"wide,h=a f1={i} {i}\n" for i in range(1, 2_000_001)).encode()
            dev.reset_peak()
            t0 = time.time()
            status, resp = dev.request("POST", "/write?db=h&precision=s", body)
            report("wide: 2,000,000 one-field lines", dev, t0, f"HTTP {status}")
            del body

        if "sparse" in steps:
            dev.stop()
            dev = Dev(bin_path, data, 60_000)
            fields = ",".join(f"f{i}={i}" for i in range(5000))
            dev.request("POST", "/write?db=h&precision=s", f"sparse,h=a {fields} 0\n".encode())
            before = parquet_files(data)
            dev.reset_peak()
            t0 = time.time()
            body = "".join(f"sparse,h=b f{i % 5000}={i} {i + 1}\n" for i in range(60_000)).encode()
            status, _ = dev.request("POST", "/write?db=h&precision=s", body)
            while parquet_files(data) == before and time.time() - t0 < 300:
                time.sleep(0.2)
            time.sleep(1)
            report("sparse: 60,000 rows x 5,000 fields, flushed", dev, t0,
                   f"HTTP {status}, {parquet_files(data) - before} new file(s)")
            # The same rows again, then kill -9: the restart replays them.
            body = "".join(f"sparse,h=c f{i % 5000}={i} {i + 1}\n" for i in range(59_000)).encode()
            dev.request("POST", "/write?db=h&precision=s", body)
            dev.stop(signal.SIGKILL)
            t0 = time.time()
            dev = Dev(bin_path, data, 1_000_000)
            report("sparse: replay of 59,000 rows after kill -9", dev, t0)
            status, out = dev.request(
                "GET", "/api/v3/query_sql?db=h&q=SELECT%20count(*)%20AS%20n%20FROM%20sparse")
            print(f"    rows after replay: {out.decode().strip()}")

        if "gzip" in steps:
            # Valid lines that repeat compress about 300 to 1: the body is
            # small, what it inflates to is not.
            line = b"bomb,host=server01,region=eu usage_user=12.5,usage_system=3i 1700000000\n"
            text = line * ((250 << 20) // len(line))
            packed = gzip.compress(text, compresslevel=9)
            del text
            dev.reset_peak()
            t0 = time.time()
            statuses = []

            def one():
                try:
                    s, _ = dev.request("POST", "/write?db=g&precision=s", packed,
                                       {"Content-Encoding": "gzip"})
                except (BrokenPipeError, ConnectionResetError):
                    # Answered (503) and closed before the body was sent.
                    s = "refused before the body was read"
                statuses.append(s)

            threads = [threading.Thread(target=one) for _ in range(10)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            counts = {s: statuses.count(s) for s in sorted(set(statuses), key=str)}
            report(f"gzip: 10 x {len(packed) / 1e6:.2f} MB -> 250 MB at once", dev, t0,
                   f"statuses {counts}")

        if "result" in steps:
            rows = 3_000_000
            for start in range(0, rows, 500_000):
                body = "".join(f"res,h=h{i % 100} v={i} {i + 1}\n"
                               for i in range(start, start + 500_000)).encode()
                dev.request("POST", "/write?db=r&precision=s", body)
            for fmt in ["jsonl", "csv", "json", "pretty"]:
                dev.reset_peak()
                t0 = time.time()
                status, n = dev.stream_size(
                    f"/api/v3/query_sql?db=r&format={fmt}&q=SELECT%20*%20FROM%20res")
                report(f"result: 3,000,000 rows as {fmt}", dev, t0,
                       f"HTTP {status}, {n / 1e6:.0f} MB")

        if "idle" in steps:
            time.sleep(5)
            print(f"idle 5 s after the spikes: RSS {dev.status('VmRSS')} MiB "
                  f"(peak of the last step {dev.status('VmHWM')} MiB)")
    finally:
        try:
            dev.stop()
        except Exception:
            dev.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
