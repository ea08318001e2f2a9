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
    def __init__(self, proc, addrs):
        self.proc = proc
        self.http = addrs["http"]
        self.flight = addrs["flight"]

    @property
    def http_url(self):
        return f"http://{self.http}"

    @property
    def flight_uri(self):
        return f"grpc://{self.flight}"


@pytest.fixture(scope="session")
def strata():
    with tempfile.TemporaryDirectory() as tmp:
        addr_file = os.path.join(tmp, "addrs.json")
        proc = subprocess.Popen(
            [
                strata_bin(),
                "dev",
                "--data-dir",
                os.path.join(tmp, "data"),
                "--http-addr",
                "127.0.0.1:0",
                "--flight-addr",
                "127.0.0.1:0",
                "--addr-file",
                addr_file,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            for line in proc.stdout:
                if line.strip() == "strata is ready":
                    break
            else:
                raise RuntimeError("strata dev exited before it was ready")
            with open(addr_file) as f:
                addrs = json.load(f)
            yield Strata(proc, addrs)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
