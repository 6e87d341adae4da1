"""Fixtures for the wsgate black-box suite.

* `upstreams` (session): loopback upstream servers running on a background
  asyncio loop: a `websockets` echo/inspect server, a server that closes with
  4000 "bye" (and friends), raw TCP servers that answer the upgrade with 403,
  that RST after the first message, that never answer, and a closed port.
* `gateway` (session): wsgate started as a subprocess on a temp config
  (`listen.port: 0`), its stdout JSON lines collected by a reader thread.
* `make_gateway` (function): start extra gateways with their own config.

Every gateway process is stopped by its PID: SIGTERM, bounded wait, SIGKILL.
Every gateway any test starts (fixtures, `make_gateway`, or a `Gateway(...)`
made in a test body) gets the same final checks (`Gateway.finish`): exit 0
after our SIGTERM (or the exit a test declared with `expect_exit`/`kill`),
only JSON log lines on stdout, and exactly one `websocket_close` line per
upgraded connection. A gateway nobody finished is finished, and its problems
reported, by the autouse `_gateway_final_checks` fixture.

Timer budgets: every fixture gateway gets budgets that a loaded machine meets
(`FIXTURE_TIMEOUTS`). A test about a timeout starts a gateway of its own with a
short budget, against a peer that never answers within the test, so that the
timer decides and not the machine's load.

Randomness: test data and masking keys come from `RNG`, seeded per test from
`WSGATE_TEST_SEED` (a random seed if unset, printed at the end of the run);
`WSGATE_TEST_SEED=N python3 -m pytest …` replays a run's data.

Nothing here reads /work/shared; the binary is `.build/debug/wsgate` unless
`WSGATE_BIN` names another one.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect_raw
from websockets.asyncio.server import serve as ws_serve

import rawws

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("WSGATE_BIN", REPO / ".build" / "debug" / "wsgate"))

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 25.0  # SIGTERM to exit: more than the longest drain_timeout_ms (10 s) of any test config
LOG_TIMEOUT = 10.0
TEST_TIMEOUT = 30.0  # upper bound for any single async test body

# Budgets for the gateways of fixtures: long enough that a loaded 2-core
# machine (Chromium, CPU hogs, a CI build) always meets them, so that no
# verdict depends on the load. Tests of a timeout path use their own gateway
# with a short budget and a peer that never answers.
FIXTURE_TIMEOUTS = {
    "upstream_connect_ms": 10000,
    "upstream_handshake_ms": 10000,
    "http_request_ms": 10000,
    "close_handshake_ms": 10000,
}
SHORT_TIMEOUTS = FIXTURE_TIMEOUTS  # the old name; the budgets are no longer short


# --------------------------------------------------------------------------
# seeded randomness


def _seed_from_env() -> int:
    raw = os.environ.get("WSGATE_TEST_SEED", "").strip()
    if raw:
        return int(raw, 0)
    return random.SystemRandom().randrange(1 << 32)


SEED = _seed_from_env()
# Reseeded before every test from (SEED, the test's node id), so that a test
# replayed alone gets the same data as in the full run.
RNG = random.Random(SEED)
rawws.RNG = RNG


def reseed(name: str) -> None:
    RNG.seed(f"{SEED}:{name}")


# --------------------------------------------------------------------------
# small helpers


def run(coro, timeout: float = TEST_TIMEOUT):
    """Run an async test body with a hard upper bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def addr_of(ws) -> str:
    host, port = ws.local_address[:2]
    return f"{host}:{port}"


def to_yaml(value: Any, indent: int = 0) -> str:
    """Tiny YAML emitter (block style) for dicts/lists/scalars."""
    pad = "  " * indent
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                out.append(to_yaml(v, indent + 1))
            else:
                out.append(f"{pad}{k}: {scalar(v)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                body = to_yaml(item, indent + 1).lstrip()
                out.append(f"{pad}- {body}")
            else:
                out.append(f"{pad}- {scalar(item)}")
    else:
        out.append(pad + scalar(value))
    return "\n".join(out)


def scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)  # empty collections, flow style
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    return env


# --------------------------------------------------------------------------
# the gateway process

ALL_GATEWAYS: list["Gateway"] = []  # every gateway started in this process, in order


def insecure_client_context() -> ssl.SSLContext:
    """For connections that only need *a* TLS connection to a gateway's
    `listen.tls` (the barrier): no verification."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def prometheus_sum(text: str, name: str) -> float:
    """The sum of every sample of metric `name` (all label sets)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        if m and m.group(1) == name:
            total += float(m.group(3))
    return total


# --------------------------------------------------------------------------
# a wsgate process: its stdout and its end (shared by Gateway and the
# contract tests' own launcher)


def collect_stdout(owner) -> None:
    """Reader-thread body: every stdout line of `owner.proc` into
    `owner.raw_lines`, JSON objects also into `owner.lines`, anything else
    into `owner.bad_lines`; `owner.cond` is notified per line and at EOF."""
    assert owner.proc.stdout is not None
    for raw in iter(owner.proc.stdout.readline, b""):
        text = raw.decode("utf-8", errors="replace").rstrip("\n")
        with owner.cond:
            owner.raw_lines.append(text)
            try:
                obj = json.loads(text)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
                owner.lines.append(obj)
            except ValueError:
                owner.bad_lines.append(text)
            owner.cond.notify_all()
    with owner.cond:
        owner.eof = True
        owner.cond.notify_all()


def stop_by_pid(owner) -> int | None:
    """`owner.terminate()` (SIGTERM by PID), bounded wait, then SIGKILL by
    PID; closes its pipes and returns the exit status."""
    if owner.proc.poll() is None:
        try:
            owner.terminate()
            owner.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(owner.pid, signal.SIGKILL)
            owner.proc.wait(timeout=5)
    owner._reader.join(timeout=5)
    if not owner._stderr.closed:
        owner._stderr.close()
    if owner.proc.stdout:
        owner.proc.stdout.close()
    owner.returncode = owner.proc.returncode
    return owner.returncode


class Gateway:
    """One wsgate process on a temp config. `env` adds environment variables
    (e.g. the `WSGATE_*` overrides) to a clean environment."""

    def __init__(self, config: dict, tmpdir: Path, name: str = "gw", env: dict[str, str] | None = None):
        if not BIN.exists():
            pytest.fail(f"wsgate binary not found at {BIN} (run `swift build` or set WSGATE_BIN)")
        self.name = name
        self.config = config
        self.extra_env = dict(env or {})
        self.config_path = tmpdir / f"{name}.yaml"
        self.config_path.write_text(to_yaml(config) + "\n")
        self.stderr_path = tmpdir / f"{name}.stderr"
        self.tls = bool(config.get("listen", {}).get("tls"))
        log_format = self.extra_env.get("WSGATE_LOG_FORMAT") or config.get("log", {}).get("format", "json")
        self.json_log = log_format == "json"
        self.lines: list[dict] = []
        self.raw_lines: list[str] = []
        self.bad_lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        # final checks: the exit status expected after our SIGTERM, whether we
        # sent one, and whether finish() has run
        self.expected_exit: int = 0
        self.expected_exit_why = "SIGTERM: graceful drain"
        self.sigterm_sent = False  # terminate() sent SIGTERM …
        self.signals_sent = 0      # … this many times
        self.exit_awaited = False  # the test waited for the exit itself (wait_exit)
        self.finished = False
        self.problems: list[str] = []
        self.returncode: int | None = None
        self._stderr = open(self.stderr_path, "wb")
        env_ = clean_env()
        env_.update(self.extra_env)
        self.proc = subprocess.Popen(
            [str(BIN), "--config", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=env_,
            cwd=str(tmpdir),
        )
        self.pid = self.proc.pid
        ALL_GATEWAYS.append(self)
        # client addr -> index into self.lines when that connection was opened;
        # only lines from there on belong to it (ephemeral ports get reused)
        self.marks: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()
        try:
            listening = self.wait_for(lambda l: l.get("event") == "listening", STARTUP_TIMEOUT)
        except AssertionError:
            self.stop()
            self.finished = True  # never served: the failure below is the report
            raise AssertionError(
                f"wsgate did not log `listening` within {STARTUP_TIMEOUT}s; stdout={self.raw_lines!r} "
                f"stderr={self.stderr_path.read_text(errors='replace')!r}"
            )
        self.port = int(listening["port"])
        GATEWAYS_BY_PORT[self.port] = self

    def __repr__(self) -> str:
        return f"<Gateway {self.name} pid={self.pid} config={self.config_path}>"

    # -- log collection
    def _read(self) -> None:
        collect_stdout(self)

    def wait_for(self, pred: Callable[[dict], bool], timeout: float = LOG_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.eof:
                    raise AssertionError("no matching log line; last lines:\n" + "\n".join(self.raw_lines[-15:]))
                self.cond.wait(remaining)

    def snapshot(self) -> list[dict]:
        with self.cond:
            return list(self.lines)

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def note_open(self, addr: str, mark: int) -> None:
        with self.cond:
            self.marks[addr] = mark

    def _lines_for(self, addr: str, event: str) -> list[dict]:
        with self.cond:
            start = self.marks.get(addr, 0)
            return [l for l in self.lines[start:] if l.get("event") == event and l.get("client_addr") == addr]

    def wait_event(self, addr: str, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = self._lines_for(addr, event)
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.eof:
                    raise AssertionError(f"no {event} line for client {addr}; last lines:\n"
                                         + "\n".join(self.raw_lines[-15:]))
                self.cond.wait(remaining)

    def close_events(self, addr: str) -> list[dict]:
        return self._lines_for(addr, "websocket_close")

    def close_event(self, addr: str, timeout: float = LOG_TIMEOUT) -> dict:
        """The websocket_close line of the connection from `addr`; asserts it
        is the only one (after a barrier connection has been logged too)."""
        ev = self.wait_event(addr, "websocket_close", timeout)
        self.barrier()
        events = self.close_events(addr)
        assert len(events) == 1, f"expected exactly one websocket_close for {addr}, got {events}"
        return ev

    def reject_event(self, addr: str, timeout: float = LOG_TIMEOUT) -> dict:
        return self.wait_event(addr, "websocket_reject", timeout)

    def barrier_path(self) -> str | None:
        """The first plain `builtin:echo` route (exact path, no `origins`)."""
        return next((r["path"] for r in self.config["routes"] if r["upstream"] == "builtin:echo"
                     and "origins" not in r and not r["path"].endswith("*")), None)

    def barrier(self) -> None:
        """Open and close one echo connection and wait for its log line, so
        that lines written before it have had every chance to appear. Fails
        when it cannot run: a barrier that silently did nothing would turn
        "no extra line" checks into checks that cannot fail."""
        path = self.barrier_path()
        if path is None:
            raise AssertionError(f"{self}: no plain builtin:echo route for the barrier connection; "
                                 "give the config one (e.g. /echo)")
        if self.proc.poll() is not None:
            raise AssertionError(f"{self}: the gateway has exited ({self.proc.returncode}): no barrier possible")

        async def _b() -> str:
            async with client(self, path) as ws:
                a = addr_of(ws)
            return a

        a = run(_b(), 20)
        self.wait_event(a, "websocket_close", LOG_TIMEOUT)

    # -- lifecycle
    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM by PID: the graceful drain; the gateway must then exit 0."""
        self.send_signal(signal.SIGTERM)

    def send_signal(self, signum: int) -> None:
        """A signal by PID, recorded for the final checks (SIGTERM and SIGINT
        both start the graceful drain: exit 0 expected)."""
        if self.proc.poll() is None:
            self.sigterm_sent = True
            self.signals_sent += 1
            os.kill(self.pid, signum)

    def kill(self, why: str) -> None:
        """SIGKILL by PID, deliberately: the final checks then expect death by
        SIGKILL (and still check the log)."""
        self.expect_exit(-signal.SIGKILL, why)
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def expect_exit(self, code: int, why: str) -> None:
        """Declare the exit status this gateway is meant to end with, when it
        is not 0 after SIGTERM."""
        self.expected_exit = code
        self.expected_exit_why = why

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for an exit the test caused (a signal it sent): the final
        checks then hold the status to expected_exit (0 unless declared)."""
        self.exit_awaited = True
        self.returncode = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return self.returncode

    def stop(self) -> int | None:
        """SIGTERM by PID, bounded wait, then SIGKILL by PID."""
        return stop_by_pid(self)

    def connections_counted(self) -> int | None:
        """The gateway's own count of upgraded connections (the sum of
        `wsgate_connections_total` on the admin listener), while it runs."""
        admin = next((l for l in self.snapshot() if l.get("event") == "admin_listening"), None)
        if admin is None or not self.alive():
            return None
        host = admin.get("host", "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # the listener's own address when it has one
        host = f"[{host}]" if ":" in host else host
        with urllib.request.urlopen(f"http://{host}:{admin['port']}/metrics", timeout=10) as r:
            return int(prometheus_sum(r.read().decode(), "wsgate_connections_total"))

    def finish(self) -> list[str]:
        """Stops the gateway (if it still runs) and runs the final checks
        every gateway gets; returns the problems (also kept in .problems).
        Idempotent."""
        if self.finished:
            return self.problems
        self.finished = True
        problems: list[str] = []
        was_alive = self.alive()
        counted = None
        if was_alive:
            try:
                counted = self.connections_counted()
            except Exception as exc:
                problems.append(f"could not read /metrics before stopping: {exc!r}")
        rc = self.stop()
        if was_alive or self.sigterm_sent or self.exit_awaited or self.expected_exit != 0:
            if rc != self.expected_exit:
                problems.append(f"exit status {rc} ({self.expected_exit_why}: expected {self.expected_exit})")
        else:
            problems.append(f"the gateway exited on its own during the test (exit {rc}): no signal from the "
                            "test, no wait_exit, no expect_exit")
        if rc == 0 and self.sigterm_sent and self.signals_sent == 1 and self.json_log:
            for event in ("draining", "stopped"):
                n = sum(1 for l in self.lines if l.get("event") == event)
                if n != 1:
                    problems.append(f"{n} `{event}` lines after SIGTERM and exit 0, expected 1")
        problems += self.final_checks(counted)
        self.problems = [f"{self.name} ({self.config_path}): {p}" for p in problems]
        return self.problems

    def check_finish(self) -> None:
        """finish(), failing on any problem."""
        problems = self.finish()
        assert not problems, "; ".join(problems)

    def final_checks(self, counted: int | None = None) -> list[str]:
        """Problems visible only once the process has exited. `counted`: the
        gateway's count of upgraded connections just before it was stopped."""
        problems = []
        if self.json_log:
            if self.bad_lines:
                problems.append(f"non-JSON stdout lines: {self.bad_lines[:5]!r}")
            shapeless = [l for l in self.lines if not all(k in l for k in ("ts", "level", "event"))]
            if shapeless:
                problems.append(f"log lines without ts/level/event: {shapeless[:3]!r}")
        closes = [l for l in self.lines if l.get("event") == "websocket_close"]
        ids = [l.get("connection_id") for l in closes]
        if any(not isinstance(i, str) or not i for i in ids):
            problems.append("websocket_close line without a connection_id")
        distinct = {i for i in ids if isinstance(i, str)}
        dup_ids = sorted(i for i in distinct if ids.count(i) > 1)
        if dup_ids:
            problems.append(f"connection_id logged more than once: {dup_ids}")
        if len(distinct) != len(closes):
            problems.append(f"{len(closes)} websocket_close lines for {len(distinct)} distinct connection ids")
        if counted is not None and len(distinct) < counted:
            problems.append(f"the gateway counted {counted} upgraded connections (wsgate_connections_total) "
                            f"but logged websocket_close for only {len(distinct)}")
        return problems


class client:
    """A `websockets` client connection to the gateway (async context
    manager), with settings that keep tests deterministic (no proxy from the
    environment, no keepalive pings, no compression unless asked) and bounded.
    Registers the connection's local address with the gateway so that its log
    lines can be told apart from those of an earlier connection that used the
    same ephemeral port. A gateway with `listen.tls` is reached over wss://
    (unverified unless `ssl=` is given)."""

    def __init__(self, gw: Gateway, path: str, **kw):
        kw.setdefault("proxy", None)
        kw.setdefault("compression", None)
        kw.setdefault("ping_interval", None)
        kw.setdefault("open_timeout", 10)
        kw.setdefault("close_timeout", 10)
        kw.setdefault("max_size", 4 * 1024 * 1024)
        tls = getattr(gw, "tls", False)
        if tls:
            kw.setdefault("ssl", insecure_client_context())
        self.gw = gw
        scheme = "wss" if tls else "ws"
        self.cm = ws_connect_raw(f"{scheme}://127.0.0.1:{gw.port}{path}", **kw)

    async def __aenter__(self):
        mark = self.gw.mark()
        ws = await self.cm.__aenter__()
        self.gw.note_open(addr_of(ws), mark)
        return ws

    async def __aexit__(self, *exc):
        return await self.cm.__aexit__(*exc)


GATEWAYS_BY_PORT: dict[int, Gateway] = {}


def _raw_before(port: int):
    gw = GATEWAYS_BY_PORT.get(port)
    return gw.mark() if gw else None


def _raw_after(port: int, mark, addr: str) -> None:
    gw = GATEWAYS_BY_PORT.get(port)
    if gw is not None and mark is not None:
        gw.note_open(addr, mark)


rawws.HOOKS = (_raw_before, _raw_after)


# --------------------------------------------------------------------------
# upstream servers


class Upstreams:
    """All loopback upstreams, served from one background asyncio loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="upstreams", daemon=True)
        self.thread.start()
        self.lock = threading.Lock()
        self.records: dict[str, dict] = {}  # ws echo server: request path -> record
        self.reset_got_message = threading.Event()
        self.blackhole_conns: list = []
        self.blackhole_closed = threading.Event()
        self._servers: list = []
        self.call(self._start())
        self.closed_port = self._closed_port()

    def call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @staticmethod
    def _closed_port() -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # never listened: connecting is refused
        return port

    async def _start(self) -> None:
        echo = await ws_serve(self._echo, "127.0.0.1", 0, max_size=None, ping_interval=None,
                              select_subprotocol=self._select_subprotocol)
        closer = await ws_serve(self._closer, "127.0.0.1", 0, max_size=None, ping_interval=None)
        r403 = await asyncio.start_server(self._reject403, "127.0.0.1", 0)
        reset = await asyncio.start_server(self._reset, "127.0.0.1", 0)
        hole = await asyncio.start_server(self._blackhole, "127.0.0.1", 0)
        longlen = await asyncio.start_server(self._long_lengths, "127.0.0.1", 0)
        self._servers = [echo, closer, r403, reset, hole, longlen]
        port = lambda s: s.sockets[0].getsockname()[1]  # noqa: E731
        self.echo_port = port(echo)
        self.closer_port = port(closer)
        self.reject403_port = port(r403)
        self.reset_port = port(reset)
        self.blackhole_port = port(hole)
        self.long_lengths_port = port(longlen)

    async def _stop(self) -> None:
        for w in self.blackhole_conns:
            w.transport.abort()
        for s in self._servers:
            s.close()
        for s in self._servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 3)
            except (asyncio.TimeoutError, Exception):
                pass

    def stop(self) -> None:
        try:
            self.call(self._stop(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)

    # -- ws echo / inspect server
    @staticmethod
    def _select_subprotocol(conn, offered):
        if "chat.v1" in offered:
            return "chat.v1"
        return None

    async def _echo(self, ws) -> None:
        path = ws.request.path
        rec = {
            "path": path,
            "headers": [[k, v] for k, v in ws.request.headers.raw_items()],
            "subprotocol": ws.subprotocol,
            "closed": threading.Event(),
            "close_rcvd": None,
        }
        with self.lock:
            self.records[path] = rec
        try:
            if "inspect" in path:
                await ws.send(json.dumps({"path": path, "headers": rec["headers"], "subprotocol": ws.subprotocol}))
            async for msg in ws:
                await ws.send(msg)
        except websockets.ConnectionClosed:
            pass
        finally:
            try:
                await asyncio.wait_for(ws.wait_closed(), 10)
            except asyncio.TimeoutError:
                pass
            rcvd = ws.protocol.close_rcvd
            rec["close_rcvd"] = None if rcvd is None else (rcvd.code, rcvd.reason)
            rec["closed"].set()

    def record(self, path: str, timeout: float = LOG_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if path in self.records:
                    return self.records[path]
            time.sleep(0.01)
        raise AssertionError(f"upstream never saw a connection for {path}; saw {list(self.records)}")

    # -- ws server that ends connections in various ways, by path
    async def _closer(self, ws) -> None:
        path = ws.request.path.split("?")[0]
        try:
            if path == "/bye":
                msg = await ws.recv()
                await ws.send(msg)
                await ws.close(4000, "bye")
            elif path == "/nocode":
                msg = await ws.recv()
                await ws.send(msg)
                async with ws.send_context():
                    ws.protocol.send_close()  # close frame with an empty payload
            elif path == "/forge":
                await ws.close(4001, FORGED_REASON)
            elif path == "/big":
                await ws.send(b"\x00" * (DEFAULT_MAX + 1))
                await ws.wait_closed()
            elif path == "/badutf8":
                async with ws.send_context():
                    ws.protocol.send_text(b"ok \xff\xfe bad")
                await ws.wait_closed()
            else:
                await ws.close(1011, "unknown test path")
        except websockets.ConnectionClosed:
            pass

    # -- raw TCP upstreams
    async def _reject403(self, reader, writer) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            body = f"{SECRET} denied".encode()
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                + f"X-Upstream-Secret: {SECRET}\r\nContent-Length: {len(body)}\r\n".encode()
                + b"Connection: close\r\n\r\n" + body
            )
            await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()

    @staticmethod
    async def _accept_upgrade(reader, writer) -> None:
        """A hand-written server side of the handshake: read the request, send the 101."""
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
        key = rawws.parse_headers(head).get("sec-websocket-key", "")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {rawws.accept_for(key)}\r\n\r\n".encode()
        )
        await writer.drain()

    @staticmethod
    async def _read_frame(reader, timeout: float = 10) -> tuple[int, bytes]:
        """One frame from the gateway: (first byte, unmasked payload)."""
        b0, b1 = await asyncio.wait_for(reader.readexactly(2), timeout)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if b1 & 0x80 else b""
        payload = await reader.readexactly(n)
        return b0, rawws.apply_mask(payload, mask) if mask else payload

    async def _reset(self, reader, writer) -> None:
        try:
            await self._accept_upgrade(reader, writer)
            await self._read_frame(reader)  # the first message, then reset the TCP connection
            self.reset_got_message.set()
        except Exception:
            pass
        finally:
            sock = writer.get_extra_info("socket")
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            writer.transport.abort()  # SO_LINGER 0 + close = RST

    async def _long_lengths(self, reader, writer) -> None:
        """Echoes every message twice, with its length in the 16-bit and then
        the 64-bit encoding even when it is short: not valid for a sender
        (RFC 6455 5.2 asks for the minimal encoding), but readable."""
        try:
            await self._accept_upgrade(reader, writer)
            while True:
                b0, payload = await self._read_frame(reader)
                n = len(payload)
                if b0 & 0x0F == 0x8:  # close: answer and stop
                    writer.write(bytes([0x88, len(payload[:2])]) + payload[:2])
                    await writer.drain()
                    break
                writer.write(bytes([b0, 126]) + struct.pack("!H", n) + payload)
                writer.write(bytes([b0, 127]) + struct.pack("!Q", n) + payload)
                await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()

    async def _blackhole(self, reader, writer) -> None:
        """Accepts TCP and never answers: only the gateway's timer can end
        the upgrade (the connection stays until the gateway closes it or the
        session ends)."""
        self.blackhole_conns.append(writer)
        try:
            while await reader.read(65536):
                pass  # swallow the upgrade request, never answer
            self.blackhole_closed.set()
        except Exception:
            pass


SECRET = "SECRET-TOKEN-4711"
DEFAULT_MAX = 1048576
FORGED_REASON = 'x"}\n{"event":"websocket_close","cause":"forged","x":"'


@pytest.fixture(scope="session")
def upstreams():
    u = Upstreams()
    yield u
    u.stop()


def base_config(up: Upstreams) -> dict:
    e = f"ws://127.0.0.1:{up.echo_port}"
    c = f"ws://127.0.0.1:{up.closer_port}"
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "timeouts": dict(FIXTURE_TIMEOUTS),
        "log": {"format": "json", "level": "info"},
        "routes": [
            {"path": "/echo", "upstream": "builtin:echo"},
            {"path": "/origin", "upstream": "builtin:echo", "origins": ["https://app.example.com"]},
            {"path": "/chat/*", "upstream": f"{e}/chat", "forward_headers": ["authorization", "cookie"]},
            {"path": "/up/echo", "upstream": f"{e}/plain"},
            {"path": "/bye", "upstream": f"{c}/bye"},
            {"path": "/nocode", "upstream": f"{c}/nocode"},
            {"path": "/forge", "upstream": f"{c}/forge"},
            {"path": "/upbig", "upstream": f"{c}/big"},
            {"path": "/upbadutf8", "upstream": f"{c}/badutf8"},
            {"path": "/refused", "upstream": f"ws://127.0.0.1:{up.closed_port}/x"},
            {"path": "/reject403", "upstream": f"ws://127.0.0.1:{up.reject403_port}/x"},
            {"path": "/reset", "upstream": f"ws://127.0.0.1:{up.reset_port}/x"},
            {"path": "/blackhole", "upstream": f"ws://127.0.0.1:{up.blackhole_port}/x"},
            {"path": "/longlengths", "upstream": f"ws://127.0.0.1:{up.long_lengths_port}/x"},
        ],
    }


@pytest.fixture(scope="session")
def gateway(upstreams, tmp_path_factory):
    gw = Gateway(base_config(upstreams), tmp_path_factory.mktemp("gw"), "main")
    yield gw
    gw.check_finish()  # also fails if it died during the session


@pytest.fixture
def make_gateway(upstreams, tmp_path):
    """Factory: make_gateway(env=None, **overrides) starts a gateway whose
    config is the base config with top-level keys replaced (and `env` added
    to its environment). Each gets the final checks at the test's end."""
    started: list[Gateway] = []

    def _make(env: dict[str, str] | None = None, **overrides) -> Gateway:
        cfg = base_config(upstreams)
        cfg.update(overrides)
        gw = Gateway(cfg, tmp_path, f"gw{len(started)}", env=env)
        started.append(gw)
        return gw

    yield _make
    problems = [p for gw in started for p in gw.finish()]
    assert not problems, "; ".join(problems)


# --------------------------------------------------------------------------
# every gateway gets its final checks; every test its seed


@pytest.fixture(autouse=True)
def _gateway_final_checks(request):
    """Reseeds RNG for the test; afterwards, finishes (and checks) every
    gateway the test started and stopped itself without the final checks.
    Gateways still running belong to a wider fixture (or leaked): they are
    checked when their fixture ends, or at the end of the session."""
    reseed(request.node.nodeid)
    before = len(ALL_GATEWAYS)
    yield
    ended = [gw for gw in ALL_GATEWAYS[before:] if not gw.finished and not gw.alive()]
    problems = [p for gw in ended for p in gw.finish()]
    assert not problems, "; ".join(problems)


@pytest.fixture(scope="session", autouse=True)
def _gateways_left_running():
    yield
    left = [gw for gw in ALL_GATEWAYS if not gw.finished]
    problems = [p for gw in left for p in gw.finish()]
    assert not problems, "gateways finished at the end of the session: " + "; ".join(problems)


def pytest_report_header(config):
    return f"wsgate test seed: {SEED} (replay with WSGATE_TEST_SEED={SEED})"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line(f"wsgate test seed: {SEED} (replay with WSGATE_TEST_SEED={SEED})")
