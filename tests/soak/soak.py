#!/usr/bin/env python3
"""Soak the real wsgate binary with churn, faults and floods; measure it from outside.

Run through `scripts/soak` (see `scripts/soak --help`). What it does:

1. starts the loopback upstreams of `tests/soak/upstreams.py` as a process of
   their own (a `websockets` echo upstream, a `websockets` upstream that closes
   with a code or drops TCP when told, a keep-alive HTTP/1.1 upstream that
   answers slowly, 500, 503 or resets when told);
2. starts wsgate (`--bin`) on a generated config: listen and admin port 0 (the
   bound ports are read from its `listening` / `admin_listening` lines),
   `limits.max_connections` raised above the soak's concurrency, every other
   key at its default; routes `/echo` (builtin:echo), `/up/*` and `/fault/*`
   (ws://), `/http/*` (http://);
3. measures a baseline (VmRSS from /proc/PID/status, the entries of
   /proc/PID/fd, `wsgate_connections_active` from the admin /metrics), then
   opens `--connections` connections spread over `--minutes`, at most
   `--concurrency` open at once, each one scenario of a weighted mix
   (`SCENARIOS`): well-behaved clients (`websockets`: a few messages, close
   1000), faults (raw sockets: TCP reset without a close, never reading while
   the upstream streams or while flooding; upstream 500/503/resets/slow
   answers, closes with a code, TCP drops) and floods (pings, thousands of
   tiny frames, an oversized message that must get 1009), sampling the
   gateway every `--sample-interval` seconds;
4. after the load, waits (at most `--settle` s) for active connections to
   reach 0 and measures again; checks that a fresh echo client is answered;
   stops the gateway with SIGTERM (exit 0 expected) and checks its stdout:
   one `websocket_close` line per upgraded connection (matched by client
   address), each with a `cause`, none `internal_error`, and each with a
   cause and code the scenario allows and equal to the code the client saw;
5. prints a Markdown summary (and writes it to `--summary FILE`); exits 1 if
   a check failed, 2 if the soak itself could not run.

Every process it starts is stopped by its PID in a `finally` (SIGTERM, bounded
wait, SIGKILL), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "blackbox"))

import rawws  # noqa: E402  (the black-box suite's raw WebSocket helper)
import websockets  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

MIB = 1024 * 1024
MAX_MESSAGE = 1048576  # limits.max_message_bytes, left at its default
STOP_TIMEOUT = 25.0  # SIGTERM to exit: more than the default drain_timeout_ms (10 s)
IO_TIMEOUT = 30.0  # bound on any single client read or handshake


# --------------------------------------------------------------------------
# processes


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def fd_breakdown(pid: int, ports: dict[int, str]) -> Counter:
    """What the open fds of `pid` are: TCP sockets by peer (`ports`: remote
    port -> name) and state, from /proc/PID/fd and /proc/PID/net/tcp{,6};
    other fds by kind."""
    out: Counter = Counter()
    inodes: set[str] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
        else:
            out[link.split(":")[0] if ":" in link else ("file" if link.startswith("/") else link)] += 1
    seen: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            col = row.split()
            inode = col[9]
            if inode not in inodes or inode in seen:
                continue
            seen.add(inode)
            state = TCP_STATES.get(col[3], col[3])
            rport = int(col[2].rsplit(":", 1)[1], 16)
            if state == "LISTEN":
                out["tcp listen"] += 1
            elif rport in ports:
                out[f"tcp to {ports[rport]} {state}"] += 1
            else:
                out[f"tcp accepted (clients, admin scrapes) {state}"] += 1
    other = len(inodes - seen)
    if other:
        out["other sockets (unix, udp, ...)"] += other
    return out


def stop_by_pid(proc: subprocess.Popen, timeout: float) -> int | None:
    """SIGTERM by PID, bounded wait, then SIGKILL by PID. Returns the exit status."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    return proc.returncode


class Gateway:
    """wsgate on a config file; its stdout kept in a file and parsed by a thread."""

    def __init__(self, binary: Path, config_path: Path, workdir: Path) -> None:
        self.log_path = workdir / "gateway.stdout"
        self.stderr_path = workdir / "gateway.stderr"
        self.lines: list[dict] = []
        self.bad_lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        self._stderr = open(self.stderr_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
        self.proc = subprocess.Popen([str(binary), "--config", str(config_path)], stdout=subprocess.PIPE,
                                     stderr=self._stderr, stdin=subprocess.DEVNULL, env=env, cwd=str(workdir))
        self.pid = self.proc.pid
        self.returncode: int | None = None
        self._reader = threading.Thread(target=self._read, name="gateway-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "wb") as out:
            for raw in iter(self.proc.stdout.readline, b""):
                out.write(raw)
                text = raw.decode("utf-8", errors="replace").rstrip("\n")
                try:
                    obj = json.loads(text)
                    if not isinstance(obj, dict):
                        raise ValueError
                except ValueError:
                    obj = None
                with self.cond:
                    if obj is None:
                        self.bad_lines.append(text)
                    else:
                        self.lines.append(obj)
                    self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise RuntimeError("gateway: expected log line did not come; stderr: "
                                       + self.stderr_path.read_text(errors="replace")[-2000:])
                self.cond.wait(left)

    def count(self, event: str) -> int:
        with self.cond:
            return sum(1 for l in self.lines if l.get("event") == event)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        self.returncode = stop_by_pid(self.proc, STOP_TIMEOUT)
        self._reader.join(timeout=10)
        self._stderr.close()
        return self.returncode


class Upstreams:
    """tests/soak/upstreams.py as a child process."""

    def __init__(self, workdir: Path) -> None:
        self.log_path = workdir / "upstreams.stdout"
        self._out = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "upstreams.py")], stdout=subprocess.PIPE,
                                     stderr=open(workdir / "upstreams.stderr", "wb"), stdin=subprocess.DEVNULL,
                                     text=True)
        self.pid = self.proc.pid
        self.final: dict | None = None
        first: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self._out.write(line)
                self._out.flush()
                if not first:
                    first.append(line)
                    ready.set()
                elif '"upstreams_stopped"' in line:
                    self.final = json.loads(line)
            ready.set()

        self._reader = threading.Thread(target=read, name="upstreams-stdout", daemon=True)
        self._reader.start()
        if not ready.wait(20) or not first:
            raise RuntimeError(f"upstreams did not start; see {workdir}/upstreams.stderr")
        ports = json.loads(first[0])
        self.ws_echo, self.ws_faulty, self.http = ports["ws_echo"], ports["ws_faulty"], ports["http"]

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/_stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        stop_by_pid(self.proc, 10)
        self._reader.join(timeout=5)
        self._out.close()


def metrics(admin_port: int, timeout: float = 3.0) -> dict[str, float]:
    """Sum of every sample, per metric name, of the admin /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    out: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] += float(value)
        except ValueError:
            pass
    return out


@dataclass
class Sample:
    t: float
    rss_kib: int | None
    fds: int | None
    active: float | None


def sample(gw: Gateway, admin_port: int, t0: float) -> Sample:
    try:
        active = metrics(admin_port).get("wsgate_connections_active", 0.0)
    except Exception:  # noqa: BLE001 - a missed scrape is recorded as None
        active = None
    return Sample(round(time.monotonic() - t0, 1), rss_kib(gw.pid), fd_count(gw.pid), active)


class Sampler(threading.Thread):
    def __init__(self, gw: Gateway, admin_port: int, interval: float, t0: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.gw, self.admin_port, self.interval, self.t0 = gw, admin_port, interval, t0
        self.samples: list[Sample] = []
        self.missed_scrapes = 0
        self.stopped = threading.Event()
        self.died_at: float | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            if not self.gw.alive():
                self.died_at = round(time.monotonic() - self.t0, 1)
                return
            s = sample(self.gw, self.admin_port, self.t0)
            if s.active is None:
                self.missed_scrapes += 1
            self.samples.append(s)


# --------------------------------------------------------------------------
# the connections


OK = {"client_closed": {1000}}
GONE = {"client_gone": {1006}}


@dataclass
class Conn:
    i: int
    scenario: str
    path: str
    expect: dict[str, set[int]]  # allowed cause -> allowed codes
    addr: str | None = None
    upgraded: bool = False
    ambiguous: bool = False  # upgrade request sent, no answer: may or may not have upgraded
    seen: int | None = None  # close code the client saw (1006: TCP ended without a close frame); None: it dropped it
    problem: str | None = None  # what went wrong on the client's side
    # (messages_in, bytes_in, messages_out, bytes_out) the close line must show,
    # when the client knows them (it sent and received everything, then closed)
    counts: tuple[int, int, int, int] | None = None


class Ctx:
    def __init__(self, port: int, seed: int) -> None:
        self.port = port
        self.seed = seed
        rng = random.Random(seed)
        self.filler = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(20000))
        rawws.RNG = random.Random(seed + 1)  # masking keys
        # precomputed hostile payloads: built once, written many times
        self.pings = b"".join(rawws.frame(rawws.OP_PING, b"p%06d" % k) for k in range(2000))
        self.tiny_n = 3000
        self.tiny = rawws.frame(rawws.OP_TEXT, b"x") * self.tiny_n
        self.tiny_echo = b"\x81\x01x" * self.tiny_n
        self.flood_frame = rawws.frame(rawws.OP_BINARY, b"f" * 65536)
        self.oversize_single = rawws.frame(rawws.OP_BINARY, b"o" * (MAX_MESSAGE + 1))
        chunk = b"o" * 65536
        frags = [rawws.frame(rawws.OP_BINARY if k == 0 else rawws.OP_CONT, chunk, fin=False)
                 for k in range(MAX_MESSAGE // 65536)]
        frags.append(rawws.frame(rawws.OP_CONT, b"o" * 1024, fin=True))  # crosses the limit
        self.oversize_frag = b"".join(frags)
        self.conns: list[Conn] = []
        self.open_now = 0
        self.open_peak = 0


async def ws_session(ctx: Ctx, c: Conn, rng: random.Random, nmsg: int, hold: float, http: bool = False) -> None:
    """A `websockets` client: nmsg messages, each awaited, spread over `hold`
    seconds; then close 1000 (unless the gateway closed first)."""
    uri = f"ws://127.0.0.1:{ctx.port}{c.path}"
    try:
        ws = await ws_connect(uri, proxy=None, compression=None, ping_interval=None, open_timeout=IO_TIMEOUT,
                              close_timeout=IO_TIMEOUT, max_size=4 * MIB, max_queue=64)
    except (asyncio.TimeoutError, TimeoutError) as e:
        c.ambiguous, c.problem = True, f"handshake timeout ({type(e).__name__})"
        return
    except Exception as e:  # noqa: BLE001
        c.problem = f"handshake: {type(e).__name__}: {e}"
        return
    c.upgraded = True
    host, port = ws.local_address[:2]
    c.addr = f"{host}:{port}"
    gap = hold / max(nmsg, 1)
    sent = received = 0
    try:
        for k in range(nmsg):
            if http:
                size = rng.choice((8, 64, 300, 900))  # < 1 KiB: no Expect: 100-continue from libcurl
                msg: str | bytes = f"{k}|" + ctx.filler[:size]
            elif rng.random() < 0.2:
                msg = ctx.filler[: rng.choice((1024, 16384))].encode()
            else:
                msg = f"{k}|" + ctx.filler[: rng.choice((8, 64, 512, 4096))]
            await ws.send(msg)
            sent += len(msg)  # ASCII: characters = bytes
            reply = await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
            received += len(reply)
            if reply != msg and c.problem is None:
                c.problem = f"reply {k} differs from the message"
            if gap > 0:
                await asyncio.sleep(gap * rng.uniform(0.5, 1.5))
        await asyncio.wait_for(ws.close(1000), IO_TIMEOUT)
        rcvd = ws.protocol.close_rcvd
        c.seen = rcvd.code if rcvd is not None else 1006
        c.counts = (nmsg, sent, nmsg, received)
    except websockets.ConnectionClosed as e:
        c.seen = e.rcvd.code if e.rcvd is not None else 1006
    except (asyncio.TimeoutError, TimeoutError):
        c.problem = "timeout waiting for the gateway (client aborted)"
        ws.transport.abort()
    except Exception as e:  # noqa: BLE001
        c.problem = f"{type(e).__name__}: {e}"
        ws.transport.abort()


async def raw_open(ctx: Ctx, c: Conn, rcvbuf: int | None = None, limit: int = 1 << 16) -> rawws.RawWS | None:
    """A raw client past its 101 (None, with `c.problem`, if it did not get one)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", ctx.port)), IO_TIMEOUT)
    except Exception as e:  # noqa: BLE001
        s.close()
        c.problem = f"connect: {type(e).__name__}: {e}"
        return None
    c.addr = "%s:%d" % s.getsockname()[:2]
    reader, writer = await asyncio.open_connection(sock=s, limit=limit)
    key = base64.b64encode(rawws.RNG.randbytes(16)).decode()
    writer.write((f"GET {c.path} HTTP/1.1\r\nHost: 127.0.0.1:{ctx.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
    except Exception as e:  # noqa: BLE001
        c.ambiguous, c.problem = True, f"no upgrade response: {type(e).__name__}"
        writer.transport.abort()
        return None
    text = head.decode("latin-1")
    if not text.startswith("HTTP/1.1 101") or rawws.parse_headers(text).get("sec-websocket-accept") != rawws.accept_for(key):
        c.problem = f"upgrade refused: {text.splitlines()[0]!r}"
        writer.transport.abort()
        return None
    c.upgraded = True
    return rawws.RawWS(reader, writer, text)


async def raw_close(ws: rawws.RawWS, c: Conn, code: int = 1000) -> None:
    """Client-initiated close: send ours, read the gateway's, wait for its EOF."""
    ws.send(rawws.frame(rawws.OP_CLOSE, struct.pack("!H", code)))
    r = await ws.expect_close(timeout=IO_TIMEOUT, reply=False)
    c.seen = r.code if r.code is not None else 1006
    if not r.tcp_closed and c.problem is None:
        c.problem = "gateway did not close TCP after the close handshake"
    ws.close_tcp()  # FIN: an orderly end, as a browser's


async def sc_client_reset(ctx: Ctx, c: Conn, rng: random.Random, hold: float) -> None:
    ws = await raw_open(ctx, c)
    if ws is None:
        return
    try:
        if rng.random() < 0.7:
            ws.send(rawws.frame(rawws.OP_TEXT, b"0|reset me"))
            await ws.read_frame(IO_TIMEOUT)
        await asyncio.sleep(rng.uniform(0, min(hold, 3.0)))
    except Exception as e:  # noqa: BLE001
        c.problem = f"{type(e).__name__}: {e}"
    ws.abort()  # RST, no close frame


async def sc_noread(ctx: Ctx, c: Conn, rng: random.Random, hold: float, flood: bool) -> None:
    """Never reads; the upstream streams (or the client floods the echo); then RST."""
    ws = await raw_open(ctx, c, rcvbuf=4096, limit=1024)
    if ws is None:
        return
    try:
        end = time.monotonic() + max(1.0, min(hold, 6.0))
        if flood:
            for _ in range(64):  # at most 4 MiB, or until the gateway stops taking it
                ws.send(ctx.flood_frame)
                try:
                    await asyncio.wait_for(ws.writer.drain(), 0.5)
                except (asyncio.TimeoutError, TimeoutError):
                    break
        await asyncio.sleep(max(0.0, end - time.monotonic()))
    except (ConnectionError, OSError) as e:
        c.problem = f"{type(e).__name__}: {e}"
    ws.abort()


async def raw_scenario(ctx: Ctx, c: Conn, body) -> None:
    """Runs `body(ws)` on a raw connection of its own; whatever it raises is
    the connection's problem, and the connection is dropped (RST)."""
    ws = await raw_open(ctx, c)
    if ws is None:
        return
    try:
        await body(ws)
    except Exception as e:  # noqa: BLE001
        c.problem = f"{type(e).__name__}: {e}"
        ws.abort()


async def sc_ping_flood(ctx: Ctx, c: Conn, rng: random.Random, hold: float) -> None:
    async def body(ws) -> None:
        ws.send(ctx.pings)
        ws.send(rawws.frame(rawws.OP_TEXT, b"end"))
        pongs = 0
        while True:
            f = await ws.read_frame(IO_TIMEOUT)
            if f.opcode == rawws.OP_PONG:
                pongs += 1
            elif f.opcode == rawws.OP_CLOSE:
                c.seen, c.problem = f.close_code, f"close {f.close_code} before the echo"
                ws.abort()
                return
            elif f.opcode == rawws.OP_TEXT and f.payload == b"end":
                break
        if pongs == 0:
            c.problem = "no pong for 2000 pings"
        c.counts = (1, 3, 1, 3)  # pings and pongs are not messages
        await raw_close(ws, c)

    await raw_scenario(ctx, c, body)


async def sc_tiny_frames(ctx: Ctx, c: Conn, rng: random.Random, hold: float) -> None:
    async def body(ws) -> None:
        ws.send(ctx.tiny)
        got = await asyncio.wait_for(ws.reader.readexactly(len(ctx.tiny_echo)), IO_TIMEOUT)
        if got != ctx.tiny_echo:
            c.problem = "echo of the tiny frames differs"
        c.counts = (ctx.tiny_n, ctx.tiny_n, ctx.tiny_n, ctx.tiny_n)
        await raw_close(ws, c)

    await raw_scenario(ctx, c, body)


async def sc_oversized(ctx: Ctx, c: Conn, rng: random.Random, hold: float, frag: bool) -> None:
    async def body(ws) -> None:
        ws.send(ctx.oversize_frag if frag else ctx.oversize_single)
        while True:  # the echo may relay fragments before the limit is crossed
            try:
                f = await ws.read_frame(IO_TIMEOUT)
            except rawws.PeerClosed:
                c.seen = 1006
                ws.abort()
                return
            if f.opcode == rawws.OP_CLOSE:
                break
        c.seen = f.close_code
        # our reply follows the rest of the oversized message, as it must (a
        # frame cannot be interrupted); then the gateway's FIN, then ours
        ws.send(rawws.frame(rawws.OP_CLOSE, f.payload[:2]))
        try:
            await asyncio.wait_for(ws.reader.read(), IO_TIMEOUT)
        except (ConnectionError, OSError):
            pass
        ws.close_tcp()

    await raw_scenario(ctx, c, body)


# Each scenario: (weight, planner). A planner takes (rng, mean_hold) and
# returns (path, expected {cause: codes}, coroutine function(ctx, conn, rng, hold)).
def _plan_ws(path: str, expect: dict, nmsg: tuple[int, int] = (2, 6), http: bool = False):
    def plan(rng: random.Random):
        n = rng.randint(*nmsg)
        return path, expect, lambda ctx, c, r, hold: ws_session(ctx, c, r, n, hold, http)
    return plan


def _plan_http_fail(fate: str, expect: dict):
    def plan(rng: random.Random):
        n = rng.randint(2, 6)
        after = rng.randint(0, n - 1)  # the failing request is one the client sends
        return (f"/http/{fate}?after={after}", expect,
                lambda ctx, c, r, hold: ws_session(ctx, c, r, n, hold, True))
    return plan


def _plan_ws_close(rng: random.Random):
    n = rng.randint(2, 6)
    after = rng.randint(0, n - 1)
    code = rng.choice((4000, 4001, 3000, 1011, 1013, 1012))
    return (f"/fault/c?fate=close&code={code}&after={after}", {"upstream_closed": {code}},
            lambda ctx, c, r, hold: ws_session(ctx, c, r, n, hold))


def _plan_ws_drop(rng: random.Random):
    n = rng.randint(2, 6)
    after = rng.randint(0, n - 1)
    return (f"/fault/d?fate=drop&after={after}", {"upstream_reset": {1006}},
            lambda ctx, c, r, hold: ws_session(ctx, c, r, n, hold))


def _plan_raw(paths: tuple[str, ...], expect: dict, fn):
    def plan(rng: random.Random):
        return rng.choice(paths), expect, fn
    return plan


SCENARIOS: dict[str, tuple[int, object]] = {
    # well-behaved
    "echo_ok": (20, _plan_ws("/echo", OK)),
    "ws_upstream_ok": (14, _plan_ws("/up/echo", OK)),
    "http_ok": (9, _plan_ws("/http/ok", OK, http=True)),
    "http_slow": (5, _plan_ws("/http/slow", OK, (2, 4), http=True)),
    # upstream failures
    "http_500": (3, _plan_http_fail("500", {"upstream_http_error": {1011}})),
    "http_503": (3, _plan_http_fail("503", {"upstream_http_error": {1013}})),
    "http_reset": (3, _plan_http_fail("reset", {"upstream_protocol_error": {1014}})),
    "http_flaky": (5, _plan_ws("/http/flaky", {"client_closed": {1000}, "upstream_http_error": {1011, 1013},
                                               "upstream_protocol_error": {1014}}, http=True)),
    "ws_upstream_close": (4, _plan_ws_close),
    "ws_upstream_drop": (4, _plan_ws_drop),
    "ws_upstream_random": (4, _plan_ws("/fault/r?fate=random", {
        "client_closed": {1000}, "upstream_closed": {4000, 4001, 1011, 1013}, "upstream_reset": {1006}})),
    # client faults
    "client_reset": (8, _plan_raw(("/echo", "/up/echo", "/http/ok"), GONE, sc_client_reset)),
    "noread_upstream_streams": (3, _plan_raw(("/up/stream",), GONE,
                                             lambda ctx, c, r, h: sc_noread(ctx, c, r, h, False))),
    "noread_client_floods": (2, _plan_raw(("/echo",), GONE, lambda ctx, c, r, h: sc_noread(ctx, c, r, h, True))),
    # floods
    "ping_flood": (4, _plan_raw(("/echo", "/up/echo"), OK, sc_ping_flood)),
    "tiny_frames": (4, _plan_raw(("/echo", "/echo", "/up/echo"), OK, sc_tiny_frames)),
    "oversized_single": (3, _plan_raw(("/echo", "/up/echo"), {"client_message_too_big": {1009}},
                                      lambda ctx, c, r, h: sc_oversized(ctx, c, r, h, False))),
    "oversized_fragmented": (2, _plan_raw(("/echo", "/up/echo"), {"client_message_too_big": {1009}},
                                          lambda ctx, c, r, h: sc_oversized(ctx, c, r, h, True))),
}
LONG_LIVED = {"echo_ok", "ws_upstream_ok", "http_ok", "http_slow", "http_flaky", "ws_upstream_random",
              "noread_upstream_streams", "noread_client_floods"}


async def run_load(ctx: Ctx, args, gw: Gateway, offset: int = 0) -> dict:
    """Opens args.connections connections, paced evenly over the run, at most
    args.concurrency at once. Long-lived scenarios hold their connection for
    a random time around concurrency/rate, so that the open count approaches
    the cap; nothing is held past the end of the run."""
    duration = args.minutes * 60.0
    rate = args.connections / duration
    # open on average ~ rate x (share of long-lived x hold): aim at 90% of the cap
    long_share = sum(w for n, (w, _) in SCENARIOS.items() if n in LONG_LIVED) / sum(w for w, _ in SCENARIOS.values())
    mean_hold = min(0.9 * args.concurrency / rate / long_share, duration / 4)
    names = list(SCENARIOS)
    weights = [SCENARIOS[n][0] for n in names]
    sem = asyncio.Semaphore(args.concurrency)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + duration
    lags: list[float] = []
    stop_lag = asyncio.Event()

    async def lag_monitor() -> None:
        while not stop_lag.is_set():
            t = loop.time()
            await asyncio.sleep(0.1)
            lags.append(loop.time() - t - 0.1)

    async def one(i: int) -> None:
        rng = random.Random(f"{ctx.seed}:{offset + i}")
        name = rng.choices(names, weights)[0]
        path, expect, fn = SCENARIOS[name][1](rng)
        c = Conn(offset + i, name, path, expect)
        ctx.conns.append(c)
        hold = rng.uniform(0.3, 1.7) * mean_hold if name in LONG_LIVED else rng.uniform(0, 0.2) * mean_hold
        hold = max(0.0, min(hold, deadline - loop.time() - 1.0))
        ctx.open_now += 1
        ctx.open_peak = max(ctx.open_peak, ctx.open_now)
        try:
            await asyncio.wait_for(fn(ctx, c, rng, hold), hold + 4 * IO_TIMEOUT)
        except (asyncio.TimeoutError, TimeoutError):
            c.problem = c.problem or "scenario did not finish in time"
        except Exception as e:  # noqa: BLE001
            c.problem = c.problem or f"{type(e).__name__}: {e}"
        finally:
            ctx.open_now -= 1
            sem.release()

    mon = asyncio.create_task(lag_monitor())
    tasks = []
    cpu0 = time.process_time()
    for i in range(args.connections):
        at = t0 + i / rate
        if at > loop.time():
            await asyncio.sleep(at - loop.time())
        await sem.acquire()
        if not gw.alive():
            sem.release()
            break
        tasks.append(asyncio.create_task(one(i)))
    launched_by = loop.time() - t0
    await asyncio.gather(*tasks)
    wall = loop.time() - t0
    cpu = time.process_time() - cpu0
    stop_lag.set()
    await mon
    lags.sort()
    return {
        "wall_s": wall, "launch_s": launched_by, "client_cpu_s": cpu, "mean_hold_s": mean_hold, "rate": rate,
        "lag_p50_ms": 1000 * lags[len(lags) // 2] if lags else 0.0,
        "lag_p99_ms": 1000 * lags[int(len(lags) * 0.99)] if lags else 0.0,
        "lag_max_ms": 1000 * lags[-1] if lags else 0.0,
    }


async def fresh_echo(ctx: Ctx) -> Conn:
    c = Conn(len(ctx.conns), "final_echo_check", "/echo", OK)
    ctx.conns.append(c)
    try:
        await asyncio.wait_for(ws_session(ctx, c, random.Random(0), 3, 0.0), 30)
    except (asyncio.TimeoutError, TimeoutError):
        c.problem = "final echo check timed out"
    return c


# --------------------------------------------------------------------------
# analysis and report


def config_yaml(up: Upstreams, max_connections: int) -> str:
    return f"""# generated by scripts/soak
listen:
  host: 127.0.0.1
  port: 0
admin:
  host: 127.0.0.1
  port: 0
limits:
  max_connections: {max_connections}
log:
  format: json
  level: info
routes:
  - path: /echo
    upstream: builtin:echo
  - path: /up/*
    upstream: ws://127.0.0.1:{up.ws_echo}/e
  - path: /fault/*
    upstream: ws://127.0.0.1:{up.ws_faulty}/f
  - path: /http/*
    upstream: http://127.0.0.1:{up.http}/h
"""


def git_head() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h (%cd)", "--date=format:%Y-%m-%d %H:%M"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        return f"commit {head}" if head else "an unknown commit"
    except (OSError, subprocess.SubprocessError):
        return "an unknown commit"


def mib(kib: int | None) -> str:
    return "–" if kib is None else f"{kib / 1024:.1f} MiB"


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def analyse(ctx: Ctx, gw: Gateway) -> dict:
    with gw.cond:
        lines = list(gw.lines)
    closes = [l for l in lines if l.get("event") == "websocket_close"]
    by_addr: dict[str, list[dict]] = defaultdict(list)
    for l in closes:
        by_addr[str(l.get("client_addr"))].append(l)
    conns_by_addr: dict[str, list[Conn]] = defaultdict(list)
    for c in ctx.conns:
        if c.addr and (c.upgraded or c.ambiguous):
            conns_by_addr[c.addr].append(c)
    unmatched_lines = [l for a, ls in by_addr.items() if a not in conns_by_addr for l in ls]
    missing, extra, wrong, code_mismatch, counters = [], [], [], [], []
    for addr, cs in conns_by_addr.items():
        ls = by_addr.get(addr, [])
        sure = sum(1 for c in cs if c.upgraded)
        maybe = sum(1 for c in cs if c.ambiguous and not c.upgraded)
        if len(ls) < sure:
            missing.extend(c for c in cs if c.upgraded)
        elif len(ls) > sure + maybe:
            extra.extend(ls)
        if len(cs) == 1 and len(ls) == 1 and cs[0].upgraded:
            c, l = cs[0], ls[0]
            cause, code = l.get("cause"), l.get("code")
            if cause not in c.expect or code not in c.expect[cause]:
                wrong.append((c, l))
            elif c.seen is not None and c.seen != code:
                code_mismatch.append((c, l))
            if c.counts is not None and cause == "client_closed" and c.counts != tuple(
                    l.get(k) for k in ("messages_in", "bytes_in", "messages_out", "bytes_out")):
                counters.append((c, l))
    return {
        "lines": lines, "closes": closes, "missing": missing, "extra": extra, "unmatched": unmatched_lines,
        "wrong": wrong, "code_mismatch": code_mismatch, "counters": counters,
        "counted": sum(1 for c in ctx.conns if c.counts is not None),
        "upgraded": sum(1 for c in ctx.conns if c.upgraded),
        "ambiguous": sum(1 for c in ctx.conns if c.ambiguous and not c.upgraded),
        "no_cause": [l for l in closes if not l.get("cause")],
        "internal": [l for l in closes if l.get("cause") == "internal_error"],
    }


def short_line(l: dict) -> str:
    keep = ("route", "upstream", "client_addr", "code", "reason", "was_clean", "initiator", "cause",
            "upstream_code", "upstream_status", "error", "duration_ms", "messages_in", "bytes_in", "messages_out",
            "bytes_out")
    return json.dumps({k: l.get(k) for k in keep})


def render(r: dict) -> str:
    a, base, after = r["analysis"], r["baseline"], r["after"]
    samples = r["samples"]
    peak_rss = max((s.rss_kib for s in samples if s.rss_kib is not None), default=None)
    peak_fds = max((s.fds for s in samples if s.fds is not None), default=None)
    peak_active = max((s.active for s in samples if s.active is not None), default=None)
    load = r["load"]
    out: list[str] = []
    w = out.append
    w("# Soak: wsgate under churn, faults and floods")
    w("")
    w(f"Generated by `{r['command']}` on {r['date']} against `{r['binary']}` (wsgate {r['version']}, built "
      f"{r['binary_mtime']}), machine: {r['machine']}. The soak client (Python asyncio: `websockets` for the "
      "well-behaved clients, raw sockets for the hostile ones), the loopback upstreams (`tests/soak/upstreams.py`: "
      "a `websockets` echo, a `websockets` upstream that closes with a code or drops TCP, a keep-alive HTTP/1.1 "
      "upstream that answers slowly, 500, 503 or resets) and the gateway share the machine. "
      "The gateway is measured from outside only: VmRSS and fds from /proc, `wsgate_connections_active` from "
      "the admin `/metrics`, its `websocket_close` lines on stdout. "
      f"Bounds asserted (the run fails otherwise): the gateway stays up; `wsgate_connections_active` is back to 0 "
      f"within {r['settle_max']:g} s of the end of the load; fds after that are at most baseline + {r['fd_slack']} "
      f"(libcurl's idle keep-alive connections to the http upstream aside, counted and shown); RSS after that is at "
      f"most baseline + {r['rss_slack_mib']} MiB (slack for allocator arenas and caches that do not shrink after a "
      "peak; a leak of a few KiB per connection over thousands of connections would still show in the table); "
      "exactly one `websocket_close` line per upgraded connection (matched by client address), each with a "
      "`cause`, none `internal_error`, each with a cause and code its scenario allows and the code its client saw; "
      "a fresh echo client is answered at the end; exit 0 on SIGTERM.")
    w("")
    w(f"## Result: {'PASS' if not r['failures'] else 'FAIL'}")
    w("")
    for f in r["failures"]:
        w(f"- **FAIL**: {f}")
    if r["failures"]:
        w("")
    w(f"- Command: `{r['command']}`")
    w(f"- Binary: `{r['binary']}` ({r['version']}, built {r['binary_mtime']}; the tree was at {r['git']})")
    w(f"- Run: {r['date']}, {r['machine']}; seed {r['seed']}; gateway stdout and config in `{r['workdir']}`"
      + (" (kept)" if r["kept"] else " (removed after a passing run)"))
    w(f"- Load: {r['connections']} connections planned over {r['minutes']:g} min "
      + (f"× {len(r['rounds'])} rounds on the same gateway " if len(r["rounds"]) > 1 else "")
      + f"({load.get('rate', 0):.1f}/s), at most {r['concurrency']} open at once (client-side peak "
      f"{r['client_open_peak']}), long-lived ones held ~{load.get('mean_hold_s', 0):.1f} s; "
      f"last connection launched at {load.get('launch_s', 0):.1f} s, load over at {load.get('wall_s', 0):.1f} s"
      + (" (totals over the rounds)" if len(r["rounds"]) > 1 else "")
      + f"; active connections back to 0 {fmt(r['settle_s'])} s after the (last) load")
    w("")
    w("### The gateway, measured from outside")
    w("")
    w("| | baseline (before load) | peak (sampled every "
      f"{r['interval']:g} s, {len(samples)} samples) | after load + settle | bound (after) |")
    w("|---|---|---|---|---|")
    w(f"| RSS (VmRSS) | {mib(base.rss_kib)} | {mib(peak_rss)} | {mib(after.rss_kib) if after else '–'} | "
      f"≤ baseline + {r['rss_slack_mib']} MiB |")
    w(f"| open fds (/proc/PID/fd) | {fmt(base.fds)} | {fmt(peak_fds)} | {fmt(after.fds) if after else '–'} | "
      f"≤ baseline + {r['fd_slack']}, not counting libcurl's idle keep-alive pool |")
    w(f"| `wsgate_connections_active` | {fmt(base.active)} | {fmt(peak_active)} | "
      f"{fmt(after.active) if after else '–'} | = 0 within {r['settle_max']:g} s |")
    if len(r["rounds"]) > 1:
        w("")
        w("After each round (load, then settle; a leak grows round after round, a cache or pool does not):")
        w("")
        w("| after round | RSS | fds | of which idle keep-alive to the http upstream | active | settled in |")
        w("|---|---|---|---|---|---|")
        for rd in r["rounds"]:
            s_ = rd["after"]
            w(f"| {rd['round']} | {mib(s_.rss_kib) if s_ else '–'} | {fmt(s_.fds) if s_ else '–'} | {rd['pooled']} | "
              f"{fmt(s_.active) if s_ else '–'} | {fmt(rd['settle_s'])} s |")
    w("")
    w("The gateway's fds by kind (sockets classified from /proc/PID/net/tcp by peer and state):")
    w("")
    w("| fd kind | baseline | after settle |")
    w("|---|---|---|")
    for k in sorted(set(r["fds_base"]) | set(r["fds_after"])):
        w(f"| {k} | {r['fds_base'].get(k, 0)} | {r['fds_after'].get(k, 0)} |")
    w("")
    w(f"The fd bound does not count the {r['kept_alive']} idle keep-alive connections libcurl keeps to the http "
      "upstream after the load (`CURLMOPT_MAXCONNECTS` = 512 per worker, by design): a pool, bounded, not a leak; "
      "every other fd counts.")
    g = r["gateway_cpu_s"]
    w("")
    w(f"CPU during the load ({load.get('wall_s', 0):.0f} s wall, 2 cores = {2 * load.get('wall_s', 0):.0f} CPU-s "
      f"available): gateway {fmt(g)} CPU-s, soak client {load.get('client_cpu_s', 0):.1f} CPU-s "
      f"({100 * load.get('client_cpu_s', 0) / max(load.get('wall_s', 1), 1e-9):.0f}% of one core; event-loop lag "
      f"p50 {load.get('lag_p50_ms', 0):.1f} ms, p99 {load.get('lag_p99_ms', 0):.1f} ms, max "
      f"{load.get('lag_max_ms', 0):.0f} ms), upstreams {fmt(r['upstreams_cpu_s'])} CPU-s. "
      f"Client side saturated: **{r['client_saturated']}**.")
    w("")
    w(f"Metrics at the end: `wsgate_connections_total` {fmt(r['metrics_end'].get('wsgate_connections_total'))}, "
      f"`wsgate_close_events_total` {fmt(r['metrics_end'].get('wsgate_close_events_total'))}, "
      f"`wsgate_messages_total` {fmt(r['metrics_end'].get('wsgate_messages_total'))}. "
      f"Upstreams after settle: {r['upstream_stats_line']}.")
    w("")
    w("### Connections by scenario")
    w("")
    w("| scenario | paths | planned | upgraded | client-side problems | close line as expected | expected cause → code |")
    w("|---|---|---|---|---|---|---|")
    wrong_ids = {id(c) for c, _ in a["wrong"]} | {id(c) for c, _ in a["code_mismatch"]}
    for name, st in r["by_scenario"].items():
        exp = "; ".join(f"{k} → {'/'.join(map(str, sorted(v)))}" for k, v in st["expect"].items())
        w(f"| {name} | `{st['path']}` | {st['n']} | {st['upgraded']} | {st['problems']} | "
          f"{st['upgraded'] - st['wrong']} / {st['upgraded']} | {exp} |")
    w(f"| **total** | | {len(r['conns'])} | {a['upgraded']} | {sum(1 for c in r['conns'] if c.problem)} | "
      f"{a['upgraded'] - len(wrong_ids)} / {a['upgraded']} | |")
    w("")
    w("### `websocket_close` lines by cause")
    w("")
    w("| cause | lines | codes | `was_clean` true |")
    w("|---|---|---|---|")
    by_cause: dict[str, Counter] = defaultdict(Counter)
    clean: Counter = Counter()
    for l in a["closes"]:
        by_cause[str(l.get("cause"))][l.get("code")] += 1
        clean[str(l.get("cause"))] += l.get("was_clean") is True
    for cause, codes in sorted(by_cause.items(), key=lambda kv: -sum(kv[1].values())):
        w(f"| {cause} | {sum(codes.values())} | "
          + ", ".join(f"{k}×{v}" for k, v in sorted(codes.items(), key=lambda kv: str(kv[0]))) + f" | {clean[cause]} |")
    w(f"| **total** | {len(a['closes'])} | upgraded connections: {a['upgraded']}"
      + (f" (+{a['ambiguous']} that may have upgraded)" if a["ambiguous"] else "") + f" | {sum(clean.values())} |")
    w("")
    w("### Checks")
    w("")
    for ok, text in r["checks"]:
        w(f"- {'ok' if ok else '**FAILED**'}: {text}")
    w("")
    w("### Errors and oddities")
    w("")
    ev = Counter(l.get("event") for l in a["lines"])
    lv = Counter((l.get("level"), l.get("event")) for l in a["lines"] if l.get("level") in ("warning", "error", "critical"))
    w(f"- Gateway log events: " + ", ".join(f"`{k}` {v}" for k, v in sorted(ev.items(), key=lambda kv: str(kv[0]))))
    w(f"- Gateway warning/error lines: " + (", ".join(f"{lvl} `{e}` ×{n}" for (lvl, e), n in lv.items()) or "none")
      + f"; non-JSON stdout lines: {r['bad_lines']}; stderr: {r['stderr_bytes']} bytes")
    probs = Counter((c.scenario, c.problem) for c in r["conns"] if c.problem)
    if probs:
        w("- Client-side problems (the client saw something its scenario does not expect):")
        for (sc, p), n in probs.most_common(15):
            w(f"  - {sc}: {p} ×{n}")
    else:
        w("- Client-side problems: none")
    for title, items in (("close lines with a cause or code the scenario does not allow", a["wrong"]),
                         ("close lines whose code differs from the one the client saw", a["code_mismatch"]),
                         ("close lines whose counters differ from the client's", a["counters"])):
        if items:
            w(f"- {len(items)} {title}; examples:")
            for c, l in items[:6]:
                w(f"  - {c.scenario} `{c.path}` (client saw {c.seen}, counted {c.counts}, problem: {c.problem}): "
                  f"`{short_line(l)}`")
    for title, items in (("connections without a close line", a["missing"]),):
        if items:
            w(f"- {len(items)} {title}; examples: " + ", ".join(f"{c.scenario} {c.addr}" for c in items[:8]))
    for title, items in (("extra close lines (more than the connections from that address)", a["extra"]),
                         ("close lines from an address no soak connection used", a["unmatched"]),
                         ("close lines with cause internal_error", a["internal"])):
        if items:
            w(f"- {len(items)} {title}; examples:")
            for l in items[:4]:
                w(f"  - `{short_line(l)}`")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(REPO / ".build" / "release" / "wsgate"), help="wsgate binary (default %(default)s)")
    p.add_argument("--minutes", type=float, default=2.0, help="length of the load (default %(default)s)")
    p.add_argument("--connections", type=int, default=9000, help="connections over the whole run (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=500, help="at most this many open at once (default %(default)s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the load this many times on the same gateway, settling and measuring after each "
                        "(a leak grows round after round; a cache does not) (default %(default)s)")
    p.add_argument("--settle", type=float, default=30.0, help="max seconds for active connections to reach 0 (default %(default)s)")
    p.add_argument("--rss-slack-mib", type=int, default=64, help="RSS after settle may exceed the baseline by this (default %(default)s)")
    p.add_argument("--fd-slack", type=int, default=16, help="fds after settle may exceed the baseline by this (default %(default)s)")
    p.add_argument("--sample-interval", type=float, default=2.0, help="seconds between samples (default %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="plan seed (default: random, printed)")
    p.add_argument("--summary", type=Path, help="also write the Markdown summary to this file")
    p.add_argument("--workdir", type=Path, help="keep config and logs here (default: a temp dir, removed on PASS)")
    args = p.parse_args()
    binary = Path(os.path.abspath(args.bin))  # as named (release/ is a symlink), not resolved
    if not binary.exists():
        print(f"soak: no wsgate binary at {binary}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = 2 * args.concurrency + 256  # client sockets + slack; upstream sockets are in their own process
    if hard < need:
        print(f"soak: RLIMIT_NOFILE hard limit {hard} < {need} needed for --concurrency {args.concurrency}",
              file=sys.stderr)
        return 2
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="wsgate-soak-"))
    command = "scripts/soak" + ("" if len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:]))

    def on_term(signum, frame):  # SIGTERM to the soak: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    up = gw = sampler = None
    r: dict = {"failures": []}
    checks: list[tuple[bool, str]] = []
    failures: list[str] = r["failures"]

    def check(ok: bool, text: str) -> None:
        checks.append((ok, text))
        if not ok:
            failures.append(text)

    print(f"soak: nofile soft {soft} -> {hard} (hard {hard}); seed {seed}; workdir {workdir}", file=sys.stderr)
    try:
        up = Upstreams(workdir)
        max_conn = max(20000, 4 * args.concurrency)
        cfg = workdir / "wsgate.yaml"
        cfg.write_text(config_yaml(up, max_conn))
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        gw = Gateway(binary, cfg, workdir)
        port = int(gw.wait_for(lambda l: l.get("event") == "listening", 20)["port"])
        admin = int(gw.wait_for(lambda l: l.get("event") == "admin_listening", 20)["port"])
        print(f"soak: wsgate pid {gw.pid} on :{port} (admin :{admin}); upstreams pid {up.pid}; "
              f"max_connections {max_conn}", file=sys.stderr)
        time.sleep(1.0)
        t0 = time.monotonic()
        baseline = sample(gw, admin, t0)
        peers = {up.ws_echo: "ws upstream", up.ws_faulty: "ws upstream", up.http: "http upstream"}
        fds_base = fd_breakdown(gw.pid, peers)
        pooled = lambda b: b.get("tcp to http upstream ESTABLISHED", 0)  # noqa: E731 - libcurl's idle keep-alive
        print(f"soak: baseline RSS {mib(baseline.rss_kib)}, fds {baseline.fds}, active {baseline.active}", file=sys.stderr)
        ctx = Ctx(port, seed)
        sampler = Sampler(gw, admin, args.sample_interval, t0)
        sampler.start()
        gcpu0 = cpu_seconds(gw.pid) or 0.0
        ucpu0 = cpu_seconds(up.pid) or 0.0
        print(f"soak: load: {args.connections} connections over {args.minutes:g} min, concurrency {args.concurrency}",
              file=sys.stderr)
        rounds: list[dict] = []
        load: dict = {}
        for rd in range(args.rounds):
            ld = asyncio.run(run_load(ctx, args, gw, offset=rd * args.connections))
            for k, v in ld.items():  # sums over the rounds (lags, hold and rate: the largest)
                load[k] = max(load.get(k, 0.0), v) if k.startswith(("lag", "mean", "rate")) else load.get(k, 0.0) + v
            print(f"soak: round {rd + 1}/{args.rounds}: load over after {ld['wall_s']:.1f} s; settling",
                  file=sys.stderr)
            # settle: active back to 0, then give the fds a moment to follow
            settle_t0 = time.monotonic()
            settle_s = None
            while time.monotonic() - settle_t0 < args.settle and gw.alive():
                s = sample(gw, admin, t0)
                if s.active == 0:
                    settle_s = round(time.monotonic() - settle_t0, 1)
                    break
                time.sleep(0.5)
            while (time.monotonic() - settle_t0 < args.settle and gw.alive() and settle_s is not None
                   and (fd_count(gw.pid) or 0) - pooled(fd_breakdown(gw.pid, peers))
                   > (baseline.fds or 0) + args.fd_slack):
                time.sleep(0.5)
            time.sleep(1.0)
            alive = gw.alive()
            after = sample(gw, admin, t0) if alive else None
            fds_after = fd_breakdown(gw.pid, peers) if alive else Counter()
            rounds.append({"round": rd + 1, "settle_s": settle_s, "after": after, "pooled": pooled(fds_after)})
            if after is not None:
                print(f"soak: after round {rd + 1}: RSS {mib(after.rss_kib)}, fds {after.fds} "
                      f"({pooled(fds_after)} idle keep-alive to the http upstream), active {after.active}",
                      file=sys.stderr)
            if not alive or settle_s is None:
                break
        gcpu = cpu_seconds(gw.pid)
        ucpu = cpu_seconds(up.pid)
        sampler.stopped.set()
        sampler.join(timeout=10)
        try:
            up_stats = up.stats()
        except Exception as e:  # noqa: BLE001
            up_stats = {"error": repr(e)}
        metrics_end: dict = {}
        final = None
        if alive:
            try:
                metrics_end = dict(metrics(admin))
            except Exception:  # noqa: BLE001
                pass
            final = asyncio.run(fresh_echo(ctx))
            time.sleep(0.5)
        exit_code = gw.stop()
        a = analyse(ctx, gw)

        # ---- checks
        check(alive and sampler.died_at is None,
              "the gateway stayed up through load and settle"
              + ("" if alive else f" (exit status {gw.proc.returncode}, died at ~{sampler.died_at} s)"))
        check(after is not None and after.active == 0,
              f"`wsgate_connections_active` back to 0 after the load (after {fmt(settle_s)} s; at the end: "
              f"{fmt(after.active if after else None)}; bound {args.settle:g} s)")
        fd_bound = (baseline.fds or 0) + args.fd_slack
        kept_alive = pooled(fds_after) - pooled(fds_base)
        check(after is not None and after.fds is not None and after.fds - kept_alive <= fd_bound,
              f"fds after settle {fmt(after.fds if after else None)}, of which {kept_alive} idle keep-alive connections "
              f"libcurl holds to the http upstream (not counted): {fmt(after.fds - kept_alive if after else None)} "
              f"≤ baseline {baseline.fds} + {args.fd_slack} = {fd_bound}")
        rss_bound = (baseline.rss_kib or 0) + args.rss_slack_mib * 1024
        check(after is not None and after.rss_kib is not None and after.rss_kib <= rss_bound,
              f"RSS after settle {mib(after.rss_kib if after else None)} ≤ baseline {mib(baseline.rss_kib)} + "
              f"{args.rss_slack_mib} MiB = {mib(rss_bound)}")
        check(final is not None and final.problem is None and final.seen == 1000,
              "a fresh echo client is answered after the soak"
              + ("" if final is None or final.problem is None else f" ({final.problem})"))
        check(exit_code == 0, f"SIGTERM after the soak: exit {exit_code} (0 expected)")
        lo, hi = a["upgraded"], a["upgraded"] + a["ambiguous"]
        check(lo <= len(a["closes"]) <= hi and not a["missing"] and not a["extra"] and not a["unmatched"],
              f"one `websocket_close` line per upgraded connection: {len(a['closes'])} lines for {lo} upgraded"
              + (f" (+{a['ambiguous']} that may have upgraded)" if a["ambiguous"] else "")
              + f"; by client address: {len(a['missing'])} without a line, {len(a['extra'])} extra, "
                f"{len(a['unmatched'])} from unknown addresses")
        check(not a["no_cause"], f"every close line has a `cause` ({len(a['no_cause'])} without)")
        check(not a["internal"], f"no close line with cause `internal_error` ({len(a['internal'])})")
        check(not a["wrong"], f"every close line's cause and code are ones its scenario allows ({len(a['wrong'])} not)")
        check(not a["code_mismatch"],
              f"every close line's code is the code its client saw ({len(a['code_mismatch'])} differ)")
        check(not a["counters"],
              f"the message and byte counters of the close line are what the client sent and received, for the "
              f"{a['counted']} connections that sent and received everything and then closed "
              f"({len(a['counters'])} differ)")
        check(not gw.bad_lines, f"only JSON lines on stdout ({len(gw.bad_lines)} others)")
        check(up_stats.get("ws_open", 0) == 0,
              f"every upstream WebSocket leg was closed (open at the upstream after settle: {up_stats.get('ws_open')})")

        by_sc: dict[str, dict] = {}
        wrong_ids = {id(c) for c, _ in a["wrong"]} | {id(c) for c, _ in a["code_mismatch"]}
        for name in list(SCENARIOS) + ["final_echo_check"]:
            cs = [c for c in ctx.conns if c.scenario == name]
            if not cs:
                continue
            by_sc[name] = {"n": len(cs), "upgraded": sum(1 for c in cs if c.upgraded),
                           "problems": sum(1 for c in cs if c.problem),
                           "path": ", ".join(sorted({c.path.split("?")[0] + ("?…" if "?" in c.path else "") for c in cs})),
                           "expect": cs[0].expect if name not in
                           ("ws_upstream_close",) else {"upstream_closed": {3000, 4000, 4001, 1011, 1012, 1013}},
                           "wrong": sum(1 for c in cs if id(c) in wrong_ids)}
        client_util = load["client_cpu_s"] / max(load["wall_s"], 1e-9)
        saturated = "yes" if client_util > 0.85 or load["lag_p99_ms"] > 100 else "no"
        r.update({
            "analysis": a, "baseline": baseline, "after": after, "samples": sampler.samples, "load": load,
            "command": command, "binary": str(binary), "version": version or "?",
            "binary_mtime": dt.datetime.fromtimestamp(binary.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "git": git_head(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} cores, Linux {platform.release()}",
            "seed": seed, "workdir": workdir, "kept": bool(failures) or bool(args.workdir),
            "connections": args.connections, "minutes": args.minutes, "concurrency": args.concurrency,
            "client_open_peak": ctx.open_peak, "settle_s": settle_s, "settle_max": args.settle,
            "interval": args.sample_interval, "rss_slack_mib": args.rss_slack_mib, "rounds": rounds, "fd_slack": args.fd_slack,
            "gateway_cpu_s": None if gcpu is None else round(gcpu - gcpu0, 1),
            "upstreams_cpu_s": None if ucpu is None else round(ucpu - ucpu0, 1),
            "client_saturated": f"{saturated} ({100 * client_util:.0f}% of a core, loop lag p99 {load['lag_p99_ms']:.0f} ms)",
            "metrics_end": metrics_end,
            "upstream_stats_line": ", ".join(f"{k} {v}" for k, v in sorted(up_stats.items())
                                             if k in ("ws_open", "ws_total", "http_conns_open", "http_requests")),
            "conns": ctx.conns, "by_scenario": by_sc, "checks": checks, "bad_lines": len(gw.bad_lines),
            "stderr_bytes": gw.stderr_path.stat().st_size,
            "fds_base": fds_base, "fds_after": fds_after, "kept_alive": kept_alive,
        })
        report = render(r)
        print(report)
        if args.summary:
            args.summary.parent.mkdir(parents=True, exist_ok=True)
            args.summary.write_text(report)
        if failures:
            print(f"soak: FAIL ({len(failures)} checks); logs kept in {workdir}", file=sys.stderr)
            return 1
        print("soak: PASS", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print(f"soak: interrupted; logs in {workdir}", file=sys.stderr)
        failures.append("interrupted")
        return 130
    except Exception:
        failures.append("soak error")
        raise
    finally:
        if sampler is not None:
            sampler.stopped.set()
        if gw is not None and gw.proc.poll() is None:
            gw.stop()
        if up is not None:
            up.stop()
        if not failures and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
