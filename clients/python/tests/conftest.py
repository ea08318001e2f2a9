"""Starts a real `strata dev` process on free ports for the client tests."""

import json
import os
import subprocess
import tempfile

import pytest


def strata_bin():
    path = os.environ.get("STRATA_BIN")
    if not path:
        raise RuntimeError("set STRATA_BIN to the strata binary (scripts/test.sh does)")
    return path


class Strata:
    def __init__(self, proc, addrs, data_dir=None):
        self.proc = proc
        self.http = addrs["http"]
        self.flight = addrs["flight"]
        self.catalog = addrs["catalog"]
        self.storage = addrs["storage"]
        self.data_dir = data_dir

    @property
    def http_url(self):
        return f"http://{self.http}"

    @property
    def flight_uri(self):
        return f"grpc://{self.flight}"


def start_dev(tmp, extra_args=(), env=None):
    """Starts `strata dev` in `tmp`; returns it once ready."""
    addr_file = os.path.join(tmp, "addrs.json")
    data_dir = os.path.join(tmp, "data")
    proc = subprocess.Popen(
        [
            strata_bin(),
            "dev",
            "--data-dir",
            data_dir,
            "--http-addr",
            "127.0.0.1:0",
            "--flight-addr",
            "127.0.0.1:0",
            "--addr-file",
            addr_file,
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    for line in proc.stdout:
        if line.strip() == "strata is ready":
            break
    else:
        proc.wait(timeout=30)
        raise RuntimeError("strata dev exited before it was ready")
    with open(addr_file) as f:
        addrs = json.load(f)
    return Strata(proc, addrs, data_dir)


def stop(s):
    s.proc.terminate()
    s.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def strata():
    with tempfile.TemporaryDirectory() as tmp:
        s = start_dev(tmp)
        try:
            yield s
        finally:
            stop(s)


# The admin token the authenticated cluster is started with.
ADMIN_TOKEN = "strata_test-admin-token-for-the-client-tests"


@pytest.fixture(scope="session")
def strata_auth():
    """`strata dev --auth`, its admin token given by STRATA_ADMIN_TOKEN."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, STRATA_ADMIN_TOKEN=ADMIN_TOKEN)
        s = start_dev(tmp, ["--auth"], env=env)
        try:
            yield s
        finally:
            stop(s)
