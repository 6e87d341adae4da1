"""HTTP upstreams (libcurl): each client message becomes one HTTP request to a
real aiohttp server on loopback; the response comes back as a message, and
failures end the connection with the contract's close code and one log line."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time

import pytest
import websockets
from aiohttp import web

from conftest import FIXTURE_TIMEOUTS, SEED, Gateway, addr_of, client, run

MAX = 65536  # limits.max_message_bytes for these gateways


class Backend:
    """An aiohttp app on its own loop/thread, plus a raw TCP server that
    answers with garbage instead of HTTP."""

    def __init__(self) -> None:
        self.seen: dict[str, list[dict]] = {}  # connection id -> requests
        self.hooks: list[dict] = []
        self.rng = random.Random(f"{SEED}:backend")  # the /random delays (WSGATE_TEST_SEED replays them)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.release = asyncio.Event()  # set at stop(): ends the requests /hang holds
        app = web.Application(client_max_size=4 * MAX)
        app.router.add_post("/echo", self.echo)
        app.router.add_post("/echo/{tail:.*}", self.echo)
        app.router.add_post("/json", self.fixed(lambda: web.json_response({"ok": True, "n": 1})))
        app.router.add_post("/binary", self.fixed(lambda: web.Response(body=b"\x00\x01\xfe\xff",
                                                                        content_type="application/octet-stream")))
        app.router.add_post("/text-not-utf8", self.fixed(lambda: web.Response(body=b"ok\xff", content_type="text/plain")))
        app.router.add_post("/empty", self.fixed(lambda: web.Response(status=204)))
        app.router.add_post("/empty200", self.fixed(lambda: web.Response(status=200, body=b"")))
        app.router.add_post("/status/{code}", self.status)
        app.router.add_post("/hang", self.hang)
        app.router.add_post("/big", self.fixed(lambda: web.Response(body=b"x" * (MAX + 1), content_type="text/plain")))
        app.router.add_post("/random", self.random_delay)
        app.router.add_post("/hook/{result}", self.hook)
        app.router.add_put("/put", self.echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.garbage = await asyncio.start_server(self.garbage_conn, "127.0.0.1", 0)
        self.garbage_port = self.garbage.sockets[0].getsockname()[1]

    def record(self, request: web.Request, body: bytes) -> None:
        cid = request.headers.get("X-WSGate-Connection-Id", "?")
        self.seen.setdefault(cid, []).append({
            "method": request.method, "path": request.path_qs, "headers": dict(request.headers), "body": body})

    def fixed(self, make):
        """A handler that reads and records the request, then answers with make()."""
        async def handler(request: web.Request) -> web.Response:
            return await self.consume(request, make())
        return handler

    async def consume(self, request: web.Request, response: web.Response) -> web.Response:
        self.record(request, await request.read())
        return response

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.record(request, body)
        return web.Response(body=body, headers={"Content-Type": request.headers.get("Content-Type", "application/octet-stream")})

    async def status(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=int(request.match_info["code"]), text="backend secret detail")

    async def hang(self, request: web.Request) -> web.Response:
        """Never answers within a test: only the gateway's request timer can
        end such a request (the backend lets go when it stops)."""
        await request.read()
        try:
            await asyncio.wait_for(self.release.wait(), 300)
        except asyncio.TimeoutError:
            pass
        return web.Response(text="too late")

    async def random_delay(self, request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(self.rng.random() * 0.01)
        return web.Response(body=body, content_type="text/plain")

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.hooks.append({"path": request.path, "headers": dict(request.headers), "body": body})
        result = request.match_info["result"]
        return web.Response(status=int(result))

    async def garbage_conn(self, reader, writer) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
            await writer.drain()
        except Exception:
            pass
        writer.close()

    def stop(self) -> None:
        async def _stop():
            self.release.set()
            self.garbage.close()
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def backend():
    b = Backend()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def hgw(backend, tmp_path_factory):
    """Generous budgets (FIXTURE_TIMEOUTS): no case here may depend on a timer
    firing, or not, on a loaded machine. That includes /h/nxdomain, where the
    resolver must answer NXDOMAIN within upstream_connect_ms. The request
    timeout has its own gateway (timer_hgw)."""
    b = f"http://127.0.0.1:{backend.port}"
    cfg = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "limits": {"max_message_bytes": MAX},
        "timeouts": dict(FIXTURE_TIMEOUTS),
        "routes": [
            {"path": "/echo", "upstream": "builtin:echo"},
            {"path": "/h/echo/*", "upstream": f"{b}/echo", "forward_headers": ["authorization"]},
            {"path": "/h/json", "upstream": f"{b}/json"},
            {"path": "/h/binary", "upstream": f"{b}/binary"},
            {"path": "/h/text-not-utf8", "upstream": f"{b}/text-not-utf8"},
            {"path": "/h/empty", "upstream": f"{b}/empty"},
            {"path": "/h/empty200", "upstream": f"{b}/empty200"},
            {"path": "/h/s404", "upstream": f"{b}/status/404"},
            {"path": "/h/s500", "upstream": f"{b}/status/500"},
            {"path": "/h/s502", "upstream": f"{b}/status/502"},
            {"path": "/h/s503", "upstream": f"{b}/status/503"},
            {"path": "/h/s504", "upstream": f"{b}/status/504"},
            {"path": "/h/s503reply", "upstream": f"{b}/status/503", "http": {"on_error": "reply"}},
            {"path": "/h/big", "upstream": f"{b}/big"},
            {"path": "/h/closed", "upstream": f"http://127.0.0.1:{closed_port()}/x"},
            {"path": "/h/nxdomain", "upstream": "http://no-such-host.invalid/x"},
            {"path": "/h/garbage", "upstream": f"http://127.0.0.1:{backend.garbage_port}/x"},
            {"path": "/h/random", "upstream": f"{b}/random"},
            {"path": "/h/put", "upstream": f"{b}/put", "http": {"method": "PUT"}},
            {"path": "/h/denied", "upstream": f"{b}/echo", "http": {"connect_url": f"{b}/hook/403"}},
            {"path": "/h/hooked", "upstream": f"{b}/echo",
             "http": {"connect_url": f"{b}/hook/200", "disconnect_url": f"{b}/hook/204"}},
        ],
    }
    gw = Gateway(cfg, tmp_path_factory.mktemp("hgw"), "http")
    yield gw
    gw.check_finish()


TIMER_REQUEST_MS = 800


@pytest.fixture(scope="module")
def timer_hgw(backend, tmp_path_factory):
    """A short http_request_ms, for the one route whose upstream never
    answers: the timer decides. Every other budget stays generous."""
    cfg = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "limits": {"max_message_bytes": MAX},
        "timeouts": {**FIXTURE_TIMEOUTS, "http_request_ms": TIMER_REQUEST_MS},
        "routes": [
            {"path": "/echo", "upstream": "builtin:echo"},
            {"path": "/h/hang", "upstream": f"http://127.0.0.1:{backend.port}/hang"},
        ],
    }
    gw = Gateway(cfg, tmp_path_factory.mktemp("timer_hgw"), "http-timer")
    yield gw
    gw.check_finish()


async def roundtrip(gw, path, messages, **kw):
    async with client(gw, path, **kw) as ws:
        replies = []
        for m in messages:
            await ws.send(m)
            replies.append(await asyncio.wait_for(ws.recv(), 10))
        addr = addr_of(ws)
    return addr, replies, ws


async def failing(gw, path, message="x", timeout=20):
    """Sends one message and returns (addr, close code, reason) the client
    saw. `timeout` is longer than any budget of the gateway (10 s), so that
    the gateway's verdict arrives before the client gives up."""
    async with client(gw, path) as ws:
        addr = addr_of(ws)
        await ws.send(message)
        with pytest.raises(websockets.ConnectionClosed):
            extra = await asyncio.wait_for(ws.recv(), timeout)
            raise AssertionError(f"expected the connection to close, got a message {extra!r}")
    rcvd = ws.protocol.close_rcvd
    return addr, (rcvd.code if rcvd else 1006), (rcvd.reason if rcvd else "")


def test_text_and_binary_echo_with_content_types(hgw, backend):
    async def go():
        async with client(hgw, "/h/echo/a?q=1") as ws:
            for m in ["héllo", b"\x00\x01\x02", "", "x" * 5000]:
                await ws.send(m)
            replies = [await asyncio.wait_for(ws.recv(), 10) for _ in range(3)]
            return addr_of(ws), replies
    addr, replies = run(go())
    assert replies[0] == "héllo" and isinstance(replies[0], str)
    assert replies[1] == b"\x00\x01\x02"
    # The empty text message is a request with an empty body: an empty
    # response sends nothing, so the next reply is the 5000-byte one.
    assert replies[2] == "x" * 5000
    ev = hgw.close_event(addr)
    assert ev["cause"] == "client_closed" and ev["code"] == 1000
    assert ev["messages_in"] == 4 and ev["messages_out"] == 3
    reqs = backend.seen[ev["connection_id"]]
    assert [r["path"] for r in reqs] == ["/echo/a?q=1"] * 4
    assert reqs[0]["method"] == "POST"
    assert reqs[0]["headers"]["Content-Type"] == "text/plain; charset=utf-8"
    assert reqs[0]["headers"]["X-WSGate-Message-Type"] == "text"
    assert reqs[1]["headers"]["Content-Type"] == "application/octet-stream"
    assert reqs[1]["headers"]["X-WSGate-Message-Type"] == "binary"
    assert reqs[0]["headers"]["X-WSGate-Connection-Id"] == ev["connection_id"]
    assert reqs[0]["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert reqs[0]["body"] == "héllo".encode()


def test_forward_headers_and_xff(hgw, backend):
    addr, replies, _ = run(roundtrip(hgw, "/h/echo/z", ["hi"], additional_headers={
        "Authorization": "Bearer t0k", "Cookie": "not=forwarded", "X-Forwarded-For": "203.0.113.9"}))
    ev = hgw.close_event(addr)
    h = backend.seen[ev["connection_id"]][0]["headers"]
    assert h["Authorization"] == "Bearer t0k"
    assert "Cookie" not in h
    assert h["X-Forwarded-For"] == "127.0.0.1", "a client's own X-Forwarded-For is replaced at the edge"


def test_json_is_text_binary_is_binary(hgw):
    _, r1, _ = run(roundtrip(hgw, "/h/json", ["q"]))
    assert isinstance(r1[0], str) and json.loads(r1[0]) == {"ok": True, "n": 1}
    _, r2, _ = run(roundtrip(hgw, "/h/binary", ["q"]))
    assert r2 == [b"\x00\x01\xfe\xff"]
    # text/plain that is not UTF-8 must not become a text frame.
    _, r3, _ = run(roundtrip(hgw, "/h/text-not-utf8", ["q"]))
    assert r3 == [b"ok\xff"]


def test_put_method(hgw, backend):
    addr, replies, _ = run(roundtrip(hgw, "/h/put", ["p"]))
    assert replies == ["p"]
    ev = hgw.close_event(addr)
    assert backend.seen[ev["connection_id"]][0]["method"] == "PUT"


@pytest.mark.parametrize("path", ["/h/empty", "/h/empty200"])
def test_no_content_sends_nothing(hgw, backend, path):
    query = f"?t={path.rsplit('/', 1)[1]}-{time.monotonic_ns()}"

    async def go():
        async with client(hgw, path + query) as ws:
            await ws.send("a")
            await ws.send("b")
            # Both requests have reached the backend (wait for that, bounded);
            # their empty answers must not become messages.
            deadline = time.monotonic() + 10
            while sum(r["path"].endswith(query) for reqs in list(backend.seen.values()) for r in reqs) < 2:
                assert time.monotonic() < deadline, "the backend never saw both requests"
                await asyncio.sleep(0.02)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
            return addr_of(ws)
    addr = run(go())
    ev = hgw.close_event(addr)
    assert ev["messages_in"] == 2 and ev["messages_out"] == 0 and ev["cause"] == "client_closed"


@pytest.mark.parametrize("path,status,code", [
    ("/h/s404", 404, 1008), ("/h/s500", 500, 1011), ("/h/s502", 502, 1014),
    ("/h/s503", 503, 1013), ("/h/s504", 504, 1014)])
def test_http_error_statuses(hgw, path, status, code):
    addr, got, reason = run(failing(hgw, path))
    assert got == code
    assert reason == f"upstream HTTP {status}"
    assert "secret" not in reason
    ev = hgw.close_event(addr)
    assert ev["cause"] == "upstream_http_error"
    assert ev["code"] == code and ev["reason"] == reason
    assert ev["upstream_status"] == status
    assert ev["was_clean"] is True and ev["initiator"] == "gateway"


def test_on_error_reply(hgw):
    addr, replies, _ = run(roundtrip(hgw, "/h/s503reply", ["a", "b"]))
    assert [json.loads(r) for r in replies] == [{"error": {"status": 503, "cause": "upstream_http_error"}}] * 2
    ev = hgw.close_event(addr)
    assert ev["cause"] == "client_closed" and ev["messages_out"] == 2


@pytest.mark.parametrize("gw_name,path,cause", [
    ("timer_hgw", "/h/hang", "upstream_timeout"),  # the upstream never answers: the 800 ms timer decides
    ("hgw", "/h/closed", "upstream_unreachable"),
    ("hgw", "/h/nxdomain", "upstream_unreachable"),  # the resolver has upstream_connect_ms: 10000 to say NXDOMAIN
    ("hgw", "/h/garbage", "upstream_protocol_error"),
    ("hgw", "/h/big", "upstream_protocol_error"),
])
def test_transport_failures(request, gw_name, path, cause):
    hgw = request.getfixturevalue(gw_name)
    addr, got, reason = run(failing(hgw, path))
    assert got == 1014
    ev = hgw.close_event(addr)
    assert ev["cause"] == cause
    assert ev["code"] == 1014 and ev["reason"] == reason
    assert isinstance(ev["error"], str) and ev["error"]
    assert ev["upstream_status"] is None
    if cause == "upstream_timeout":
        assert ev["duration_ms"] >= TIMER_REQUEST_MS * 0.9, ev


def test_connect_url_403_refuses(hgw, backend):
    async def go():
        async with client(hgw, "/h/denied") as ws:
            addr = addr_of(ws)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 20)
        return addr, ws.protocol.close_rcvd
    addr, rcvd = run(go())
    assert rcvd.code == 1008
    ev = hgw.close_event(addr)
    assert ev["cause"] == "upstream_http_error" and ev["upstream_status"] == 403


def test_disconnect_url_gets_the_close_event(hgw, backend):
    before = len(backend.hooks)

    async def go():
        async with client(hgw, "/h/hooked") as ws:
            await ws.send("one")
            assert await asyncio.wait_for(ws.recv(), 10) == "one"
            await ws.close(4100, "done here")
            return addr_of(ws)
    addr = run(go())
    ev = hgw.close_event(addr)
    line = next(l for l in hgw.raw_lines if f'"connection_id":"{ev["connection_id"]}"' in l and "websocket_close" in l)

    async def wait_hooks():
        deadline = time.monotonic() + 10
        while len(backend.hooks) < before + 2:
            assert time.monotonic() < deadline, f"hooks seen: {backend.hooks[before:]}"
            await asyncio.sleep(0.02)
    run(wait_hooks())
    new = backend.hooks[before:]
    connect = next(h for h in new if h["path"] == "/hook/200")
    disconnect = next(h for h in new if h["path"] == "/hook/204")
    assert connect["body"] == b""
    assert connect["headers"]["X-WSGate-Connection-Id"] == ev["connection_id"]
    assert disconnect["headers"]["Content-Type"] == "application/json"
    assert disconnect["body"].decode() == line
    body = json.loads(disconnect["body"])
    assert body["code"] == 4100 and body["reason"] == "done here" and body["cause"] == "client_closed"


def test_order_200_connections_x_50_messages(backend, tmp_path):
    """Replies come back in each connection's send order while the backend
    answers after random delays; connections run concurrently. (A gateway of
    its own: 10,000 requests to a Python backend need a generous timeout.)"""
    cfg = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "timeouts": {**FIXTURE_TIMEOUTS, "http_request_ms": 60000},
        "routes": [{"path": "/echo", "upstream": "builtin:echo"},  # for the barrier
                   {"path": "/h/random", "upstream": f"http://127.0.0.1:{backend.port}/random"}],
    }
    gw = Gateway(cfg, tmp_path, "order")

    async def one(i):
        async with client(gw, "/h/random") as ws:
            msgs = [f"{i}:{n}" for n in range(50)]
            for m in msgs:
                await ws.send(m)
            got = [await asyncio.wait_for(ws.recv(), 20) for _ in msgs]
            return got == msgs, got[:5]

    async def all_():
        return await asyncio.gather(*(one(i) for i in range(200)))
    try:
        results = run(all_(), timeout=120)
    finally:
        problems = gw.finish()
    assert not problems, "; ".join(problems)
    bad = [r for r in results if not r[0]]
    assert not bad, f"{len(bad)} connections got replies out of order, e.g. {bad[:2]}"
    closes = [l for l in gw.lines if l.get("event") == "websocket_close"]
    assert len(closes) == 200
    assert all(l["cause"] == "client_closed" and l["messages_in"] == 50 and l["messages_out"] == 50 for l in closes)
