"""Helpers for test_contract.py: a wsgate process started with its own argv,
environment and working directory; loopback upstream fixtures (an aiohttp
HTTP backend that records requests, a `websockets` server that only sinks or
only pushes, raw upstreams that break the protocol, a peer that drops SYNs);
small admin/metrics helpers.

Every wait is bounded; every process is stopped by its PID."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import select
import socket
import struct
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import websockets
from aiohttp import web
from websockets.asyncio.server import serve as ws_serve

from conftest import BIN, LOG_TIMEOUT, STARTUP_TIMEOUT, STOP_TIMEOUT, Gateway, clean_env, collect_stdout, stop_by_pid, to_yaml

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --------------------------------------------------------------------------
# ports, admin, metrics


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def closed_port() -> int:
    """A port nothing listens on (bound once, never listened)."""
    return free_port()


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="GET")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def admin_port(gw: Gateway) -> int:
    return int(gw.wait_for(lambda l: l.get("event") == "admin_listening")["port"])


def sample(text: str, name: str) -> float | None:
    """The value of an unlabelled sample (`name value`) in Prometheus text."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{\})? (\S+)$", line)
        if m and m.group(1) == name:
            return float(m.group(2))
    return None


def poll(pred: Callable[[], object], timeout: float, interval: float = 0.05):
    """Call pred until it returns something truthy or the deadline passes;
    returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = pred()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def wait_tcp(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll until 127.0.0.1:port accepts a TCP connection (or proc exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------
# a wsgate process with its own command line, environment and cwd


class Launched:
    """A wsgate process started with any argv, environment and working
    directory (conftest.Gateway always passes --config): stdout collected by
    a reader thread (JSON lines parsed, every raw line kept), stopped by PID.
    Enough of Gateway's interface for conftest.client (port, tls, mark,
    note_open) and for close_event with a barrier connection.

    ready: "json" waits for the JSON `listening` line; "text" for the text
    `listening` line; an int waits until that TCP port accepts (for gateways
    whose `listening` line is filtered out)."""

    tls = False
    json_log = True  # set False for text-format gateways (final checks)

    def __init__(self, tmpdir: Path, name: str, *, args: list[str], cwd: Path, config: dict,
                 env_extra: dict[str, str] | None = None, ready: str | int = "json"):
        self.name = name
        self.config = config
        self.stderr_path = tmpdir / f"{name}.stderr"
        self.lines: list[dict] = []
        self.raw_lines: list[str] = []
        self.bad_lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        self.marks: dict[str, int] = {}
        self.returncode: int | None = None
        self.signalled = False
        self._stderr = open(self.stderr_path, "wb")
        env = clean_env()
        env.update(env_extra or {})
        self.proc = subprocess.Popen(
            [str(BIN), *args], stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL,
            env=env, cwd=str(cwd))
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()
        try:
            if ready == "json":
                line = self.wait_for(lambda l: l.get("event") == "listening", STARTUP_TIMEOUT)
                self.port = int(line["port"])
            elif ready == "text":
                m = self.wait_raw(lambda t: re.search(r"\bINFO listening\b.*\bport=(\d+)", t), STARTUP_TIMEOUT)
                self.port = int(m.group(1))
            else:
                self.port = int(ready)
                if not wait_tcp(self.port, self.proc, STARTUP_TIMEOUT):
                    raise AssertionError(f"port {self.port} never accepted")
        except AssertionError as e:
            self.stop()
            raise AssertionError(
                f"wsgate {args} did not become ready ({e}); stdout={self.raw_lines!r} "
                f"stderr={self.stderr_path.read_text(errors='replace')!r}") from None

    # -- log collection
    def _read(self) -> None:
        collect_stdout(self)

    def _wait(self, find: Callable[[], object], timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = find()
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.eof:
                    raise AssertionError(f"no {what}; last lines:\n" + "\n".join(self.raw_lines[-15:]))
                self.cond.wait(remaining)

    def wait_for(self, pred: Callable[[dict], object], timeout: float = LOG_TIMEOUT) -> dict:
        return self._wait(lambda: next((l for l in self.lines if pred(l)), None), timeout, "matching JSON line")

    def wait_raw(self, pred: Callable[[str], object], timeout: float = LOG_TIMEOUT):
        """pred's first truthy result over the raw stdout lines."""
        return self._wait(lambda: next((r for r in map(pred, self.raw_lines) if r), None), timeout,
                          "matching stdout line")

    def snapshot(self) -> list[dict]:
        with self.cond:
            return list(self.lines)

    def raw_snapshot(self) -> list[str]:
        with self.cond:
            return list(self.raw_lines)

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def note_open(self, addr: str, mark: int) -> None:
        with self.cond:
            self.marks[addr] = mark

    def close_events(self, addr: str) -> list[dict]:
        with self.cond:
            start = self.marks.get(addr, 0)
            return [l for l in self.lines[start:] if l.get("event") == "websocket_close" and l.get("client_addr") == addr]

    def wait_close_event(self, addr: str, timeout: float = LOG_TIMEOUT) -> dict:
        return self._wait(lambda: next(iter(self.close_events(addr)), None), timeout, f"websocket_close for {addr}")

    # -- lifecycle
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.signalled = True
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        self.returncode = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return self.returncode

    def stop(self) -> int | None:
        """SIGTERM by PID, bounded wait, then SIGKILL by PID."""
        return stop_by_pid(self)

    def problems(self) -> list[str]:
        """After the process ended: what every gateway must get right."""
        out = []
        if self.returncode != 0:
            out.append(f"{self.name}: exit status {self.returncode}, expected 0")
        if self.json_log and self.bad_lines:
            out.append(f"{self.name}: non-JSON stdout lines: {self.bad_lines[:5]!r}")
        ids = [l.get("connection_id") for l in self.lines if l.get("event") == "websocket_close"]
        if len(ids) != len(set(ids)):
            out.append(f"{self.name}: a connection_id logged more than once")
        return out


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(config) + "\n")
    return path


# --------------------------------------------------------------------------
# upstream fixtures on one background loop


def _accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def _headers(head: str) -> dict[str, str]:
    out = {}
    for line in head.split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip().lower()] = v.strip()
    return out


class Servers:
    """All of this module's upstreams, served from one background loop:

    * an aiohttp backend (`http_port`) that records every request;
    * a `websockets` server (`ws_port`): `/own/sink` reads and discards,
      `/own/push?interval_ms=I&count=N` sends N text messages I ms apart and
      then stays silent (never closes);
    * a raw upstream (`raw_port`) whose behaviour depends on the path:
      `/masked` and `/opcode3` send an invalid frame after the first client
      message, `/badaccept` answers 101 with a wrong Sec-WebSocket-Accept.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="contract-upstreams", daemon=True)
        self.thread.start()
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # every HTTP request the backend got
        self.raw_conns: list = []
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    # -- HTTP backend
    def _record(self, request: web.Request, body: bytes) -> None:
        with self.lock:
            self.requests.append({"path": request.path_qs, "method": request.method,
                                  "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body})

    def http_requests(self, path_prefix: str, cid: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"].startswith(path_prefix)
                    and (cid is None or r["headers"].get("x-wsgate-connection-id") == cid)]

    async def _h_echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(request, body)
        return web.Response(body=body, headers={"Content-Type": request.headers.get("Content-Type", "text/plain")})

    async def _h_ok(self, request: web.Request) -> web.Response:
        self._record(request, await request.read())
        return web.Response(status=200)

    async def _h_fail(self, request: web.Request) -> web.Response:
        self._record(request, await request.read())
        return web.Response(status=500, text="hook refused")

    async def _h_json_not_utf8(self, request: web.Request) -> web.Response:
        self._record(request, await request.read())
        return web.Response(status=200, body=b'{"a":"\xff\xfe"}', headers={"Content-Type": "application/json"})

    async def _h_status(self, request: web.Request) -> web.Response:
        """Body `CODE:payload` -> status CODE with body `payload` (text/plain)."""
        body = await request.read()
        self._record(request, body)
        code, _, payload = body.partition(b":")
        return web.Response(status=int(code), body=payload, headers={"Content-Type": "text/plain; charset=utf-8"})

    # -- ws server
    async def _ws(self, ws) -> None:
        url = urllib.parse.urlsplit(ws.request.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        try:
            if url.path.endswith("/sink"):
                async for _ in ws:
                    pass
            elif url.path.endswith("/push"):
                interval = int(q.get("interval_ms", "300")) / 1000
                for i in range(int(q.get("count", "5"))):
                    await asyncio.sleep(interval)
                    await ws.send(f"tick {i}")
                await ws.wait_closed()  # silent from now on
            else:
                await ws.close(1011, "unknown path")
        except websockets.ConnectionClosed:
            pass

    # -- raw upstream
    async def _raw(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.raw_conns.append(writer)
        try:
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
            path = head.split(" ", 2)[1]
            key = _headers(head).get("sec-websocket-key", "")
            accept = _accept_for(key)
            if path.startswith("/badaccept"):
                accept = _accept_for(key + "x")  # well-formed, but not the one for this key
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode())
            await writer.drain()
            if path.startswith("/badaccept"):
                await asyncio.wait_for(reader.read(), 15)
                return
            await self._read_frame(reader)  # the client's first message, relayed
            if path.startswith("/masked"):
                # A server must not mask (RFC 6455 5.1): a masked text frame "bad".
                mkey = b"\x01\x02\x03\x04"
                payload = bytes(b ^ mkey[i % 4] for i, b in enumerate(b"bad"))
                writer.write(bytes([0x81, 0x80 | 3]) + mkey + payload)
            else:
                writer.write(bytes([0x83, 1]) + b"x")  # reserved data opcode 0x3
            await writer.drain()
            # Answer the gateway's close and end TCP, so that the gateway's
            # upstream leg ends without waiting for close_handshake_ms (it
            # may stop reading frames after a violation).
            while True:
                b0, payload = await self._read_frame_with_opcode(reader)
                if b0 & 0x0F == 0x8:
                    writer.write(bytes([0x88, len(payload[:2])]) + payload[:2])
                    await writer.drain()
                    break
        except Exception:
            pass
        finally:
            writer.close()

    @classmethod
    async def _read_frame(cls, reader: asyncio.StreamReader) -> bytes:
        return (await cls._read_frame_with_opcode(reader))[1]

    @staticmethod
    async def _read_frame_with_opcode(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        b0, b1 = await asyncio.wait_for(reader.readexactly(2), 10)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if b1 & 0x80 else b""
        payload = await reader.readexactly(n)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return b0, payload

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/echo", self._h_echo)
        app.router.add_post("/connect", self._h_ok)
        app.router.add_post("/fail500", self._h_fail)
        app.router.add_post("/json-not-utf8", self._h_json_not_utf8)
        app.router.add_post("/status", self._h_status)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]
        self.ws_server = await ws_serve(self._ws, "127.0.0.1", 0, ping_interval=None)
        self.ws_port = self.ws_server.sockets[0].getsockname()[1]
        self.raw_server = await asyncio.start_server(self._raw, "127.0.0.1", 0)
        self.raw_port = self.raw_server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _stop():
            for w in self.raw_conns:
                w.transport.abort()
            self.raw_server.close()
            self.ws_server.close()
            await self.runner.cleanup()
        try:
            asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


class SynDropPeer:
    """A listening socket whose accept queue is full: on Linux the kernel
    then drops further SYNs, so a connect to it never completes (neither
    refused nor accepted)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []
        self.full = False
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(s)
            _, writable, _ = select.select([], [s], [], 0.5)
            if not writable:  # this SYN was dropped: the queue is full
                self.full = True
                break

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.listener.close()
