"""What a gateway at the internet's edge must not take from a client on its
word: oversized request heads, piles of half-open handshakes, a forged
`X-Forwarded-For` (see test_upstream_ws.py) and secrets in URLs that would
otherwise end up in the logs.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time

import websockets

from blackbox_conftest import addr_of, client, prometheus_sum, run
from test_bounds import echo_works, metrics_text


def handshake_bytes(path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def response_head(s: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


# --------------------------------------------------------------------------
# limits.max_header_bytes


def test_request_head_over_max_header_bytes_gets_431(make_gateway):
    """A 64 KiB header got a 101 from the build before (NIO's own limit is
    ~80 KiB); the default bound is 16 KiB, and what is over it gets 431 and
    a reject line, not a WebSocket."""
    gw = make_gateway()
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    addr = "%s:%d" % s.getsockname()[:2]
    s.sendall(handshake_bytes("/echo", "X-Filler: " + "a" * 65536 + "\r\n"))
    head = response_head(s)
    assert head.startswith(b"HTTP/1.1 431"), head[:200]
    rej = gw.reject_event(addr)
    assert rej["status"] == 431
    s.close()
    echo_works(gw)


def test_request_head_under_max_header_bytes_is_upgraded(make_gateway):
    """The bound is the configured one, not a smaller accident: 12 KiB of
    headers pass with the default 16 KiB, and fail once the limit is 8 KiB."""
    filler = "X-Filler: " + "b" * 12_000 + "\r\n"
    gw = make_gateway()
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(handshake_bytes("/echo", filler))
    assert response_head(s).startswith(b"HTTP/1.1 101")
    s.close()

    small = make_gateway(limits={"max_header_bytes": 8192})
    s = socket.create_connection(("127.0.0.1", small.port), timeout=10)
    s.sendall(handshake_bytes("/echo", filler))
    assert response_head(s).startswith(b"HTTP/1.1 431")
    s.close()


def test_request_head_trickled_byte_by_byte_is_bounded_too(make_gateway):
    """The count runs across reads: a head sent in small pieces is measured
    as a whole."""
    gw = make_gateway(limits={"max_header_bytes": 4096})
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = handshake_bytes("/echo", "X-Filler: " + "c" * 6000 + "\r\n")
    try:
        for i in range(0, len(data), 500):
            s.sendall(data[i:i + 500])
            time.sleep(0.002)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert response_head(s).startswith(b"HTTP/1.1 431")
    s.close()


# --------------------------------------------------------------------------
# limits.max_pending_handshakes


def test_pending_handshakes_are_bounded(make_gateway):
    """Sockets that connect and never finish a request head each hold an fd
    until handshake_timeout_ms; past max_pending_handshakes new ones are
    closed unread (reject line, counter), and service returns once the
    pending ones are gone."""
    limit = 20
    gw = make_gateway(limits={"max_pending_handshakes": limit, "handshake_timeout_ms": 30000})
    idle = [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(limit)]
    for s in idle:
        s.sendall(b"GET /echo HTTP/1.1\r\n")  # and never the rest
    time.sleep(0.5)  # let the gateway accept them all
    # The next one is refused: closed without an answer. (Should a probe
    # have been accepted before an idle socket was, that idle socket was the
    # one refused: add another and probe again.)
    deadline = time.monotonic() + 10
    refused = False
    answers = []
    while time.monotonic() < deadline and not refused:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        try:
            s.sendall(handshake_bytes("/echo"))
            answer = s.recv(100)
            answers.append(answer[:40])
            refused = answer == b""
        except (ConnectionResetError, BrokenPipeError):
            refused = True
        finally:
            s.close()
        if not refused:
            extra = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            extra.sendall(b"GET /echo HTTP/1.1\r\n")
            idle.append(extra)
            time.sleep(0.1)
    assert len(idle) < 2 * limit, f"{len(idle)} idle sockets before one was refused"
    assert refused, f"a connection over max_pending_handshakes was served: {answers[:3]} ({len(answers)} tries)"
    gw.wait_for(lambda l: l.get("event") == "websocket_reject" and l.get("status") == 503)
    assert prometheus_sum(metrics_text(gw), "wsgate_handshakes_refused_total") >= 1
    for s in idle:
        s.close()
    # The slots come back when the pending connections go.
    deadline = time.monotonic() + 10
    while True:
        try:
            echo_works(gw)
            break
        except (AssertionError, OSError, websockets.exceptions.WebSocketException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --------------------------------------------------------------------------
# log.redact_query


def test_query_secrets_never_reach_the_log(make_gateway):
    """Contract §8: parameters named in log.redact_query are logged as
    REDACTED, in close lines (the upstream URL carries the client's query),
    reject lines and warnings; other parameters stay readable."""
    gw = make_gateway()
    secret = "s3cr3t-" + os.urandom(6).hex()

    async def main():
        async with client(gw, f"/chat/x?room=7&access_token={secret}&Token={secret}") as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 10) == "hi"
            return addr_of(ws)

    addr = run(main())
    ev = gw.close_event(addr)
    assert "room=7" in ev["upstream"]
    assert "access_token=REDACTED" in ev["upstream"] and "Token=REDACTED" in ev["upstream"]
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    raddr = "%s:%d" % s.getsockname()[:2]
    s.sendall(handshake_bytes(f"/nowhere?%74oken={secret}&sig={secret}"))
    assert response_head(s).startswith(b"HTTP/1.1 404")
    s.close()
    rej = gw.reject_event(raddr)
    assert rej["path"] == "/nowhere?%74oken=REDACTED&sig=REDACTED"
    gw.stop()
    assert secret not in "\n".join(gw.raw_lines)


def test_redact_query_is_configurable(make_gateway):
    """An operator's own list replaces the default one."""
    gw = make_gateway(log={"format": "json", "level": "info", "redact_query": ["session"]})

    async def main():
        async with client(gw, "/chat/y?session=abc&token=visible") as ws:
            await ws.send("hi")
            await asyncio.wait_for(ws.recv(), 10)
            return addr_of(ws)

    ev = gw.close_event(run(main()))
    assert ev["upstream"].endswith("/chat/y?session=REDACTED&token=visible")


# --------------------------------------------------------------------------
# contract §8 log fields


def test_close_line_has_target_attempts_and_subject(gateway, upstreams):
    """Contract §8: `target`, `attempts` and `subject` are always present
    (null when not used)."""
    async def main(path):
        async with client(gateway, path) as ws:
            await ws.send("x")
            await asyncio.wait_for(ws.recv(), 10)
            return addr_of(ws)

    relayed = gateway.close_event(run(main("/up/echo")))
    assert relayed["target"] == f"127.0.0.1:{upstreams.echo_port}"
    assert relayed["attempts"] == 1
    assert relayed["subject"] is None
    builtin = gateway.close_event(run(main("/echo")))
    assert (builtin["target"], builtin["attempts"], builtin["subject"]) == (None, None, None)


# --------------------------------------------------------------------------
# log.buffer_bytes: a stalled stdout


def test_a_stalled_stdout_does_not_stop_the_gateway(tmp_path, upstreams):
    """A log reader that stops reading (a stuck shipper, a paused `docker
    logs`) fills the pipe; the build before then blocked every event loop in
    write(2). Now lines wait in a bounded buffer, clients and /healthz are
    still served, what did not fit is counted in
    wsgate_log_lines_dropped_total, and a `log_lines_dropped` line reports
    the gap once stdout moves again. Every line that is written is whole."""
    import json
    import select
    import subprocess
    import urllib.request
    from websockets.sync.client import connect

    from blackbox_conftest import BIN, base_config, to_yaml

    cfg = base_config(upstreams)
    cfg["log"] = {"format": "json", "level": "info", "buffer_bytes": 65536}
    path = tmp_path / "gw.yaml"
    path.write_text(to_yaml(cfg))
    proc = subprocess.Popen([str(BIN), "--config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        ports, pending = {}, b""
        deadline = time.monotonic() + 20
        while len(ports) < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if not ready:
                continue
            pending += os.read(proc.stdout.fileno(), 65536)
            *done, pending = pending.split(b"\n")
            for raw in done:
                line = json.loads(raw)
                if line.get("event") in ("listening", "admin_listening"):
                    ports[line["event"]] = line["port"]
        assert len(ports) == 2, f"no listening lines: {ports}"
        # From here on nobody reads stdout: 64 KiB of pipe, 64 KiB of buffer.
        for i in range(600):
            with connect(f"ws://127.0.0.1:{ports['listening']}/echo?n={i}&filler={'f' * 200}",
                         open_timeout=10, close_timeout=10, proxy=None) as ws:
                ws.send("x")
                assert ws.recv(timeout=10) == "x"
        admin = f"http://127.0.0.1:{ports['admin_listening']}"
        with urllib.request.urlopen(f"{admin}/healthz", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as r:
            dropped = prometheus_sum(r.read().decode(), "wsgate_log_lines_dropped_total")
        assert dropped > 0, "600 close lines fit in 128 KiB?"
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
        lines = [json.loads(raw) for raw in (pending + rest).split(b"\n") if raw]  # every line whole JSON
        reports = [l for l in lines if l.get("event") == "log_lines_dropped"]
        assert reports and sum(r["count"] for r in reports) >= dropped
        closes = [l for l in lines if l.get("event") == "websocket_close"]
        assert len(closes) + sum(r["count"] for r in reports) >= 600
        assert lines[-1]["event"] == "stopped", "lines written at exit are flushed"
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# --------------------------------------------------------------------------
# the admin listener


def test_admin_listener_connections_are_capped(make_gateway):
    """128 sockets that connect to the admin listener and say nothing: the
    next one is closed unread, and /healthz answers again once they go."""
    import urllib.request

    gw = make_gateway()
    admin = gw.wait_for(lambda l: l.get("event") == "admin_listening")["port"]
    idle = [socket.create_connection(("127.0.0.1", admin), timeout=10) for _ in range(128)]
    time.sleep(0.5)  # let the listener accept them all
    extra = socket.create_connection(("127.0.0.1", admin), timeout=10)
    try:
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = extra.recv(100)
    except ConnectionResetError:
        answer = b""
    extra.close()
    assert answer == b"", f"connection 129 was served: {answer!r}"
    for s in idle:
        s.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as r:
                assert r.status == 200
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --------------------------------------------------------------------------
# early data: bytes sent after the upgrade request, before the 101


def test_a_flood_before_the_101_is_cut_at_64_kib_and_closed_1009(make_gateway, upstreams):
    """A client must wait for the 101 before it sends frames (RFC 6455
    §4.1). One that sends 1 MB at once while its upstream takes a second to
    answer: what the gateway read of it past 64 KiB is discarded, not kept,
    and the client learns why right after its 101 (1009, cause
    client_message_too_big)."""
    import threading

    from blackbox_conftest import rawws

    async def slow_upstream(reader, writer):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        await asyncio.sleep(1.0)
        key = rawws.parse_headers(head).get("sec-websocket-key", "")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     + f"Sec-WebSocket-Accept: {rawws.accept_for(key)}\r\n\r\n".encode())
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(), 20)
        except Exception:
            pass
        writer.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(asyncio.start_server(slow_upstream, "127.0.0.1", 0), loop).result(10)
    try:
        port = server.sockets[0].getsockname()[1]
        from blackbox_conftest import FIXTURE_TIMEOUTS, base_config
        gw = make_gateway(routes=base_config(upstreams)["routes"] + [
            {"path": "/slow101", "upstream": f"ws://127.0.0.1:{port}/x"}],
            # This upstream never answers the close it is sent.
            timeouts=dict(FIXTURE_TIMEOUTS, close_handshake_ms=500))
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        key = os.urandom(4)
        frame = bytes([0x82, 0x80 | 126]) + struct.pack("!H", 60000) + key + bytes(60000)  # masked zeros = key bytes
        s.sendall(handshake_bytes("/slow101") + frame * 17)
        data = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and len(data.split(b"\r\n\r\n", 1)[1]) >= 4:
                break
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert rest[:1] == b"\x88" and struct.unpack("!H", rest[2:4])[0] == 1009, rest[:16]
        s.close()
        ev = gw.wait_for(lambda l: l.get("event") == "websocket_close" and l.get("route") == "/slow101")
        assert (ev["cause"], ev["code"]) == ("client_message_too_big", 1009)
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_an_upstream_that_breaks_the_protocol_is_not_waited_for(make_gateway, upstreams):
    """An upstream sends a reserved opcode: RFC 6455 §7.1.7, the gateway
    fails that connection (close 1002 to the upstream, then its TCP goes)
    instead of waiting close_handshake_ms for a reply it would not read. The
    client hears 1014 and the line is written at once."""
    import threading

    from blackbox_conftest import FIXTURE_TIMEOUTS, base_config, rawws

    got = {}

    async def breaker(reader, writer):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = rawws.parse_headers(head).get("sec-websocket-key", "")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     + f"Sec-WebSocket-Accept: {rawws.accept_for(key)}\r\n\r\n".encode())
        writer.write(bytes([0x83, 0]))  # reserved opcode 3
        await writer.drain()
        try:
            got["bytes"] = await asyncio.wait_for(reader.read(), 30)  # never answers; reads until EOF
        except Exception as e:
            got["error"] = repr(e)
        writer.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(asyncio.start_server(breaker, "127.0.0.1", 0), loop).result(10)
    try:
        port = server.sockets[0].getsockname()[1]
        gw = make_gateway(routes=base_config(upstreams)["routes"] + [
            {"path": "/breaker", "upstream": f"ws://127.0.0.1:{port}/x"}],
            timeouts=dict(FIXTURE_TIMEOUTS, close_handshake_ms=20000))

        async def main():
            async with client(gw, "/breaker") as ws:
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except websockets.ConnectionClosed:
                    pass
                return addr_of(ws), ws.protocol.close_rcvd

        started = time.monotonic()
        addr, rcvd = run(main())
        assert rcvd is not None and rcvd.code == 1014
        ev = gw.close_event(addr)
        waited = time.monotonic() - started
        assert ev["cause"] == "upstream_protocol_error"
        assert waited < 10, f"the close line waited {waited:.1f} s (close_handshake_ms is 20 s)"
        deadline = time.monotonic() + 10
        while "bytes" not in got and "error" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
        data = got.get("bytes", b"")
        assert data[:1] == b"\x88" and struct.unpack("!H", rawws.apply_mask(data[6:8], data[2:6]))[0] == 1002, data[:16]
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
