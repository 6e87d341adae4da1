"""`http.version` toward a real HTTP/2 server: Go's golang.org/x/net h2c
server (tests/fixtures/h2c_echo), which speaks HTTP/1.1, HTTP/2 with prior
knowledge and `Upgrade: h2c` on one port and logs the protocol and client
port of every request it answers. `h2c` must carry the messages as HTTP/2
streams over few connections; `http1` must stay on HTTP/1.1."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import FIXTURE_TIMEOUTS, REPO, Gateway, client, run

FIXTURE = REPO / "tests" / "fixtures" / "h2c_echo"


class H2cEcho:
    """Builds and runs the Go fixture; collects its request lines."""

    def __init__(self, workdir: Path) -> None:
        go = shutil.which("go")
        xnet = Path("/usr/share/gocode/src/golang.org/x/net/http2/h2c")
        if go is None or not xnet.is_dir():
            pytest.fail("the h2c fixture needs golang-go and golang-golang-x-net-dev (scripts/setup --test installs them)")
        binary = workdir / "h2c_echo"
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOCACHE": str(workdir / "gocache")}
        subprocess.run([go, "build", "-o", str(binary), "main.go"], cwd=FIXTURE, env=env, check=True, timeout=300)
        self.proc = subprocess.Popen([str(binary), "-log"], stdout=subprocess.PIPE, text=True)
        first = json.loads(self.proc.stdout.readline())
        assert first["event"] == "listening", first
        self.port = first["port"]
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.lock:
                self.requests.append(json.loads(line))

    def taken(self, count: int, timeout: float = 10) -> list[dict]:
        """The request lines logged so far, once there are at least `count`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    seen, self.requests = self.requests, []
                    return seen
            time.sleep(0.02)
        raise AssertionError(f"the h2c fixture logged {len(self.requests)} requests, expected {count}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def h2c(tmp_path_factory):
    server = H2cEcho(tmp_path_factory.mktemp("h2c_echo"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vgw(h2c, tmp_path_factory):
    url = f"http://127.0.0.1:{h2c.port}/echo"
    cfg = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "timeouts": dict(FIXTURE_TIMEOUTS),
        "routes": [
            {"path": "/h2c", "upstream": url, "http": {"version": "h2c"}},
            {"path": "/h1", "upstream": url, "http": {"version": "http1"}},
            {"path": "/auto", "upstream": url},
        ],
    }
    gw = Gateway(cfg, tmp_path_factory.mktemp("vgw"), "http-version")
    yield gw
    gw.check_finish()


async def echo_all(gw, path: str, clients: int, messages: int) -> None:
    """`clients` WebSockets at once, each sending `messages` distinct binary
    messages one after another and checking every reply."""
    async def one(c: int) -> None:
        async with client(gw, path) as ws:
            for i in range(messages):
                body = f"{path}:{c}:{i}:".encode() + bytes(range(256)) * 4
                await ws.send(body)
                assert await asyncio.wait_for(ws.recv(), 10) == body
    await asyncio.gather(*(one(c) for c in range(clients)))


def http2_after_first(seen: list[dict]) -> int:
    """Asserts that on every upstream connection each request after the
    first was HTTP/2; returns the number of connections. The first may be
    HTTP/1.1: where libcurl cannot reuse a prior-knowledge connection (before
    8.0) a new connection starts as HTTP/1.1 with `Upgrade: h2c`, and Go
    reports that request's protocol as HTTP/1.1 although its response comes
    back as HTTP/2."""
    by_conn: dict[str, list[str]] = {}
    for r in seen:
        by_conn.setdefault(r["remote"], []).append(r["proto"])
    for remote, protos in by_conn.items():
        assert set(protos[1:]) <= {"HTTP/2.0"}, (remote, protos)
    return len(by_conn)


def test_h2c_carries_messages_as_http2_streams_over_few_connections(vgw, h2c):
    run(echo_all(vgw, "/h2c", clients=1, messages=30))
    seen = h2c.taken(30)
    assert all(r["bytes"] > 1024 for r in seen)
    # One client, one message at a time: one upstream connection for all 30.
    assert http2_after_first(seen) == 1

    # Eight clients at once: still HTTP/2, and the connections are shared
    # (at most one per client), not one per message.
    run(echo_all(vgw, "/h2c", clients=8, messages=20))
    seen = h2c.taken(160)
    assert http2_after_first(seen) <= 8
    assert sum(r["proto"] == "HTTP/2.0" for r in seen) >= 160 - 8


@pytest.mark.parametrize("path", ["/h1", "/auto"])
def test_http1_and_auto_stay_on_http1_to_cleartext_upstreams(vgw, h2c, path):
    run(echo_all(vgw, path, clients=2, messages=10))
    seen = h2c.taken(20)
    assert {r["proto"] for r in seen} == {"HTTP/1.1"}, seen[:3]
    assert len({r["remote"] for r in seen}) <= 2, sorted({r["remote"] for r in seen})
