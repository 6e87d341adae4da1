"""Loopback upstreams for the soak (`scripts/soak`), run as a process of their own.

`python3 tests/soak/upstreams.py` starts, on 127.0.0.1 and free ports:

* **ws echo** (`websockets`): echoes every message; `/…/stream` instead sends
  16 KiB binary messages for as long as the gateway takes them (for clients
  that never read).
* **ws faulty** (`websockets`): echoes, and ends the connection as its path's
  query says (the soak's client picks the fate, so that it knows which close it
  must see): `fate=close&code=C&after=N` closes with code C after N echoed
  messages, `fate=drop&after=N` resets the TCP connection (SO_LINGER 0) after N,
  `fate=random` decides per message (mostly echo; sometimes a close with one of
  4000/4001/1011/1013, sometimes a reset).
* **http** (raw asyncio HTTP/1.1 with keep-alive, so that libcurl reuses
  connections as in production): every request's body is `INDEX|payload`;
  requests with INDEX < `after` (query) are answered 200 with the body echoed,
  later ones as the path says: `/ok`, `/slow` (every request 0.1-1.5 s late),
  `/500`, `/503`, `/reset` (RST instead of an answer), `/flaky` (per request:
  mostly 200, sometimes slow, 500, 503 or a reset). `GET /_stats` answers
  the counters below as JSON.

It prints one JSON line with the ports, then serves until SIGTERM/SIGINT.
Counters (`/_stats`): ws connections open now and in total, HTTP connections
open, requests by fate. After the soak, `ws_open` must be back to 0: the
gateway closed every upstream leg it opened.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import signal
import socket
import struct
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import serve as ws_serve

STATS: Counter = Counter()
RNG = random.Random()
STREAM_CHUNK = b"s" * 16384


def rst(transport) -> None:
    """Drop a TCP connection with a RST (SO_LINGER 0, then close)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def query_of(path: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(path)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


# --------------------------------------------------------------------------
# WebSocket upstreams


async def ws_echo(ws) -> None:
    STATS["ws_open"] += 1
    STATS["ws_total"] += 1
    try:
        path, _ = query_of(ws.request.path)
        if path.endswith("/stream"):
            STATS["ws_stream"] += 1
            while True:
                await ws.send(STREAM_CHUNK)
        async for msg in ws:
            await ws.send(msg)
    except websockets.ConnectionClosed:
        pass
    except Exception as e:  # noqa: BLE001 - a fixture must not die; count it
        STATS[f"ws_echo_error:{type(e).__name__}"] += 1
    finally:
        STATS["ws_open"] -= 1


async def ws_faulty(ws) -> None:
    STATS["ws_open"] += 1
    STATS["ws_total"] += 1
    try:
        _, q = query_of(ws.request.path)
        fate = q.get("fate", "echo")
        after = int(q.get("after", "0"))
        n = 0
        while True:
            if fate == "close" and n >= after:
                STATS["ws_fate_close"] += 1
                await ws.close(int(q.get("code", "4000")), q.get("reason", "bye"))
                return
            if fate == "drop" and n >= after:
                STATS["ws_fate_drop"] += 1
                rst(ws.transport)
                return
            msg = await ws.recv()
            if fate == "random":
                r = RNG.random()
                if r < 0.06:
                    STATS["ws_fate_close"] += 1
                    code = RNG.choice((4000, 4001, 1011, 1013))
                    await ws.close(code, "random close")
                    return
                if r < 0.10:
                    STATS["ws_fate_drop"] += 1
                    rst(ws.transport)
                    return
            await ws.send(msg)
            n += 1
    except websockets.ConnectionClosed:
        pass
    except Exception as e:  # noqa: BLE001
        STATS[f"ws_faulty_error:{type(e).__name__}"] += 1
    finally:
        STATS["ws_open"] -= 1


# --------------------------------------------------------------------------
# HTTP upstream (HTTP/1.1, keep-alive, Content-Length bodies)


def http_response(status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> bytes:
    reason = {200: "OK", 500: "Internal Server Error", 503: "Service Unavailable", 404: "Not Found"}.get(status, "X")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def http_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    STATS["http_conns_open"] += 1
    STATS["http_conns_total"] += 1
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    body += chunk[:-2]
            else:
                body = await reader.readexactly(int(headers.get("content-length", "0")))
            path, q = query_of(target)
            STATS["http_requests"] += 1
            if path == "/_stats":
                writer.write(http_response(200, json.dumps(dict(STATS)).encode(), "application/json"))
                await writer.drain()
                continue
            fate = path.rsplit("/", 1)[-1]
            idx_s, _, _ = body.partition(b"|")
            try:
                idx = int(idx_s)
            except ValueError:
                idx = 0
            if idx < int(q.get("after", "0")):
                fate = "ok"
            if fate == "flaky":
                r = RNG.random()
                fate = "ok" if r < 0.90 else "slow" if r < 0.94 else "500" if r < 0.96 else "503" if r < 0.98 else "reset"
            STATS[f"http_fate_{fate}"] += 1
            if fate == "slow":
                await asyncio.sleep(RNG.uniform(0.1, 1.5))
                fate = "ok"
            if fate == "ok":
                writer.write(http_response(200, body))
            elif fate in ("500", "503"):
                writer.write(http_response(int(fate), b"backend says no"))
            elif fate == "reset":
                rst(writer.transport)
                return
            else:
                writer.write(http_response(404, b"unknown fate"))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    except Exception as e:  # noqa: BLE001
        STATS[f"http_error:{type(e).__name__}"] += 1
    finally:
        STATS["http_conns_open"] -= 1
        writer.transport.abort()


# --------------------------------------------------------------------------


async def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    kw = dict(max_size=None, ping_interval=None, compression=None, close_timeout=5, backlog=4096)
    echo = await ws_serve(ws_echo, "127.0.0.1", 0, **kw)
    faulty = await ws_serve(ws_faulty, "127.0.0.1", 0, **kw)
    http = await asyncio.start_server(http_conn, "127.0.0.1", 0, backlog=4096)
    port = lambda s: s.sockets[0].getsockname()[1]  # noqa: E731
    print(json.dumps({"event": "upstreams_listening", "ws_echo": port(echo), "ws_faulty": port(faulty),
                      "http": port(http), "nofile": hard}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in (echo, faulty, http):
        s.close()
    print(json.dumps({"event": "upstreams_stopped", "stats": dict(STATS), "cpu_s": round(time.process_time(), 2)}),
          flush=True)


if __name__ == "__main__":
    asyncio.run(main())
