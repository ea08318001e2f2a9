#!/usr/bin/env python3
"""Kill a storage node during a write load and count what was lost.

Starts a cluster of separate `strata` processes (one catalog member, three
storage nodes, one coordinator), creates a database with REPLICATION 3,
runs WRITERS writers posting unique points at `quorum`, kills one storage
node with SIGKILL mid-load and restarts it later, stops the load, waits for
hinted handoff to drain and prints: points written, acknowledged, present
on each replica, lost (acknowledged but absent; must be 0), and how long
the hints took to drain. Standard library only.

    benches/kill_during_load.py                 # release build
    BIN=target/debug/strata benches/kill_during_load.py
    SECONDS_BEFORE=3 SECONDS_DOWN=5 SECONDS_AFTER=3 WRITERS=4 benches/kill_during_load.py
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_NS = 1_700_000_000_000_000_000


def binary():
    if os.environ.get("BIN"):
        return os.environ["BIN"]
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "strata", "--bin", "strata"],
        cwd=ROOT,
        check=True,
    )
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "strata")


class Role:
    """A `strata` process started with --addr-file, waited on until ready."""

    def __init__(self, exe, work, name, args):
        self.exe, self.work, self.name, self.args = exe, work, name, args
        self.proc = None
        self.addrs = None

    def start(self):
        addr_file = os.path.join(self.work, self.name + ".json")
        if os.path.exists(addr_file):
            os.remove(addr_file)
        log = open(os.path.join(self.work, self.name + ".log"), "ab")
        self.proc = subprocess.Popen(
            [self.exe] + self.args + ["--addr-file", addr_file],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        for line in self.proc.stdout:
            if line.strip() == b"strata is ready":
                break
        else:
            sys.exit(f"{self.name} exited before it was ready (see {log.name})")
        with open(addr_file) as f:
            self.addrs = json.load(f)
        return self

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def post(url, body, timeout=30):
    req = urllib.request.Request(url, data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def sql(http, q, db=None):
    body = {"q": q}
    if db:
        body["db"] = db
    req = urllib.request.Request(
        f"http://{http}/api/v3/query_sql",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def main():
    exe = binary()
    writers = int(os.environ.get("WRITERS", "3"))
    before = float(os.environ.get("SECONDS_BEFORE", "3"))
    down = float(os.environ.get("SECONDS_DOWN", "5"))
    after = float(os.environ.get("SECONDS_AFTER", "3"))
    work = tempfile.mkdtemp(prefix="strata-kill-")
    roles = []
    try:
        catalog = Role(exe, work, "catalog", [
            "catalog", "--without-auth", "--node-id", "1", "--listen", "127.0.0.1:0",
            "--data-dir", os.path.join(work, "catalog"), "--bootstrap",
        ]).start()
        roles.append(catalog)
        cat = catalog.addrs["catalog"]
        nodes = []
        for i in (1, 2, 3):
            n = Role(exe, work, f"storage-{i}", [
                "storage", "--without-auth", "--node-id", str(i), "--listen", "127.0.0.1:0",
                "--data-dir", os.path.join(work, f"storage-{i}"), "--catalog", cat,
                "--heartbeat-interval", "500ms", "--heartbeat-timeout", "2s",
            ]).start()
            nodes.append(n)
            roles.append(n)
        coord = Role(exe, work, "coordinator", [
            "coordinator", "--without-auth", "--data-dir", os.path.join(work, "coordinator"),
            "--http-addr", "127.0.0.1:0", "--flight-addr", "127.0.0.1:0",
            "--catalog", cat, "--write-timeout", "2s",
        ]).start()
        roles.append(coord)
        http = coord.addrs["http"]
        deadline = time.time() + 30
        while True:
            up = sql(http, "SELECT count(*) AS n FROM system.nodes WHERE state = 'up'")
            if up and up[0]["n"] == 3:
                break
            if time.time() > deadline:
                sys.exit("storage nodes never came up")
            time.sleep(0.2)
        sql(http, "CREATE DATABASE kill WITH REPLICATION 3")

        stop = threading.Event()
        acked, sent, failures = set(), [0], []
        lock = threading.Lock()

        def writer(w):
            n = 0
            url = f"http://{http}/write?db=kill&consistency=quorum"
            while not stop.is_set():
                points = list(range(n, n + 100))
                n += 100
                body = "".join(
                    f"m,writer=w{w} seq={p}i {BASE_NS + p * 1000}\n" for p in points
                )
                status, text = post(url, body)
                with lock:
                    sent[0] += len(points)
                    if status == 204:
                        acked.update((f"w{w}", p) for p in points)
                    else:
                        failures.append(f"{status}: {text[:200]}")
                if status != 204:
                    time.sleep(0.05)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        time.sleep(before)
        nodes[2].kill9()
        killed_at = len(acked)
        time.sleep(down)
        nodes[2].start()
        time.sleep(after)
        stop.set()
        for t in threads:
            t.join()
        load_done = time.time()
        while True:
            q = sql(http, "SELECT coalesce(sum(entries), 0) AS n FROM system.hinted_handoff")
            if q[0]["n"] == 0:
                break
            if time.time() - load_done > 120:
                sys.exit("hinted handoff did not drain in 120 s")
            time.sleep(0.1)
        drained = time.time() - load_done

        replicas = sql(
            http,
            "SELECT node_id, sum(rows) AS rows, min(digest) AS digest FROM system.shard_replicas "
            "WHERE database = 'kill' GROUP BY node_id ORDER BY node_id",
        )
        stored = sql(http, "SELECT writer, seq FROM m", db="kill")
        present = {(r["writer"], r["seq"]) for r in stored}
        lost = acked - present
        print(f"writers {writers}, node 3 killed after {before:.0f} s ({killed_at} points "
              f"acknowledged), down {down:.0f} s, load {after:.0f} s more")
        print(f"points written      {sent[0]}")
        print(f"acknowledged        {len(acked)}")
        print(f"failed requests     {len(failures)}")
        for r in replicas:
            print(f"present on node {r['node_id']}   {r['rows']}  (digest {r['digest']})")
        print(f"read back           {len(stored)} ({len(present)} distinct)")
        print(f"lost                {len(lost)}")
        print(f"hints drained in    {drained * 1000:.0f} ms after the load stopped")
        if lost or len({r["digest"] for r in replicas}) != 1:
            sys.exit("FAILED: points lost or replicas differ")
    finally:
        for r in reversed(roles):
            r.stop()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
