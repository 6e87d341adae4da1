"""Fixtures for the wsgate black-box suite.

* `upstreams` (session): loopback upstream servers running on a background
  asyncio loop: a `websockets` echo/inspect server, a server that closes with
  4000 "bye" (and friends), raw TCP servers that answer the upgrade with 403,
  that RST after the first message, that never answer, and a closed port.
* `gateway` (session): wsgate started as a subprocess on a temp config
  (`listen.port: 0`), its stdout JSON lines collected by a reader thread.
* `make_gateway` (function): start extra gateways with their own config.

Every gateway process is stopped by its PID: SIGTERM, bounded wait, SIGKILL.
Nothing here reads /work/shared; the binary is `.build/debug/wsgate` unless
`WSGATE_BIN` names another one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
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
STOP_TIMEOUT = 10.0
LOG_TIMEOUT = 5.0
TEST_TIMEOUT = 20.0  # upper bound for any single async test body

SHORT_TIMEOUTS = {
    "upstream_connect_ms": 1000,
    "upstream_handshake_ms": 1000,
    "close_handshake_ms": 500,
}


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


class Gateway:
    def __init__(self, config: dict, tmpdir: Path, name: str = "gw"):
        if not BIN.exists():
            pytest.fail(f"wsgate binary not found at {BIN} (run `swift build` or set WSGATE_BIN)")
        self.config = config
        self.config_path = tmpdir / f"{name}.yaml"
        self.config_path.write_text(to_yaml(config) + "\n")
        self.stderr_path = tmpdir / f"{name}.stderr"
        self.lines: list[dict] = []
        self.raw_lines: list[str] = []
        self.bad_lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [str(BIN), "--config", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            cwd=str(tmpdir),
        )
        self.pid = self.proc.pid
        # client addr -> index into self.lines when that connection was opened;
        # only lines from there on belong to it (ephemeral ports get reused)
        self.marks: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()
        try:
            listening = self.wait_for(lambda l: l.get("event") == "listening", STARTUP_TIMEOUT)
        except AssertionError:
            self.stop()
            raise AssertionError(
                f"wsgate did not log `listening` within {STARTUP_TIMEOUT}s; stdout={self.raw_lines!r} "
                f"stderr={self.stderr_path.read_text(errors='replace')!r}"
            )
        self.port = int(listening["port"])
        self.returncode: int | None = None
        GATEWAYS_BY_PORT[self.port] = self

    # -- log collection
    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            text = raw.decode("utf-8", errors="replace").rstrip("\n")
            with self.cond:
                self.raw_lines.append(text)
                try:
                    obj = json.loads(text)
                    if not isinstance(obj, dict):
                        raise ValueError("not an object")
                    self.lines.append(obj)
                except ValueError:
                    self.bad_lines.append(text)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

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

    def barrier(self) -> None:
        """Open and close one echo connection and wait for its log line, so
        that lines written before it have had every chance to appear."""
        path = next((r["path"] for r in self.config["routes"] if r["upstream"] == "builtin:echo"
                     and "origins" not in r and not r["path"].endswith("*")), None)
        if path is None or self.proc.poll() is not None:
            return

        async def _b() -> str:
            async with client(self, path) as ws:
                a = addr_of(ws)
            return a

        a = run(_b(), 10)
        self.wait_event(a, "websocket_close", LOG_TIMEOUT)

    # -- lifecycle
    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        self.returncode = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return self.returncode

    def stop(self) -> int | None:
        """SIGTERM by PID, bounded wait, then SIGKILL by PID."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        self._stderr.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.returncode = self.proc.returncode
        return self.returncode

    def final_checks(self) -> list[str]:
        """Problems visible only once the process has exited."""
        problems = []
        if self.bad_lines:
            problems.append(f"non-JSON stdout lines: {self.bad_lines[:5]!r}")
        closes = [l for l in self.lines if l.get("event") == "websocket_close"]
        ids = [l.get("connection_id") for l in closes]
        dup_ids = {i for i in ids if ids.count(i) > 1}
        if dup_ids:
            problems.append(f"connection_id logged more than once: {sorted(dup_ids)}")
        return problems


class client:
    """A `websockets` client connection to the gateway (async context
    manager), with settings that keep tests deterministic (no proxy from the
    environment, no keepalive pings, no compression unless asked) and bounded.
    Registers the connection's local address with the gateway so that its log
    lines can be told apart from those of an earlier connection that used the
    same ephemeral port."""

    def __init__(self, gw: Gateway, path: str, **kw):
        kw.setdefault("proxy", None)
        kw.setdefault("compression", None)
        kw.setdefault("ping_interval", None)
        kw.setdefault("open_timeout", 5)
        kw.setdefault("close_timeout", 3)
        kw.setdefault("max_size", 4 * 1024 * 1024)
        self.gw = gw
        self.cm = ws_connect_raw(f"ws://127.0.0.1:{gw.port}{path}", **kw)

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
                await asyncio.wait_for(ws.wait_closed(), 5)
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
        self.blackhole_conns.append(writer)
        try:
            while await asyncio.wait_for(reader.read(65536), 30):
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
        "timeouts": dict(SHORT_TIMEOUTS),
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
    alive = gw.alive()
    rc = gw.stop()
    problems = gw.final_checks()
    if not alive:
        problems.append(f"the shared gateway died during the session (exit {gw.proc.returncode})")
    elif rc != 0:
        problems.append(f"the shared gateway exited {rc} after SIGTERM")
    assert not problems, "; ".join(problems)


@pytest.fixture
def make_gateway(upstreams, tmp_path):
    """Factory: make_gateway(**overrides) starts a gateway whose config is the
    base config with top-level keys replaced."""
    started: list[Gateway] = []

    def _make(**overrides) -> Gateway:
        cfg = base_config(upstreams)
        cfg.update(overrides)
        gw = Gateway(cfg, tmp_path, f"gw{len(started)}")
        started.append(gw)
        return gw

    yield _make
    for gw in started:
        gw.stop()
