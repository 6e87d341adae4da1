"""Upstream pools: several targets per route, balancing, retry before the
101, passive ejection, active health checks, consistent hashing, DNS
discovery, and HTTP pools that never send a request twice. Every target is
a real server on loopback; one is stopped and started again where the test
needs a target to die."""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time
import urllib.request

import pytest
import websockets
from aiohttp import web
from websockets.asyncio.server import serve as ws_serve

from conftest import FIXTURE_TIMEOUTS, addr_of, base_config, client, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    """A WebSocket echo upstream that says its name first, with GET /healthz,
    on a fixed port so that it can be stopped and started again. Counts the
    connections it accepted."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, host: str = "127.0.0.1") -> None:
        self.loop = loop
        self.name = name
        self.host = host
        self.port = free_port()
        self.server = None
        self.connections = 0
        self.health_checks = 0
        self.start()

    async def _handler(self, ws) -> None:
        self.connections += 1
        await ws.send(self.name)
        try:
            async for m in ws:
                await ws.send(m)
        except websockets.ConnectionClosed:
            pass

    def _process_request(self, connection, request):
        if request.path == "/healthz":
            self.health_checks += 1
            return connection.respond(200, "ok\n")
        return None

    def start(self) -> None:
        async def go():
            self.server = await ws_serve(self._handler, self.host, self.port, process_request=self._process_request)
            self.loop.servers.append(self.server)
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def stop(self) -> None:
        async def go():
            self.server.close()
            await self.server.wait_closed()
            self.loop.servers.remove(self.server)
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/x"

    @property
    def id(self) -> str:
        return f"{self.host}:{self.port}"


@pytest.fixture
def loop():
    """An event loop on a thread for the test's upstream servers; at the end
    every server is closed and every task finished before it stops."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    loop.servers = []
    yield loop

    async def shutdown():
        for server in loop.servers:
            server.close()
        for server in loop.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except Exception:
                pass
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(shutdown(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def pool_gateway(make_gateway, upstreams, route: dict, **overrides):
    routes = base_config(upstreams)["routes"] + [route]
    return make_gateway(routes=routes, **overrides)


async def greet(gw, path: str) -> tuple[str, str]:
    """Connects, returns (the target's name, client address) after one echo."""
    async with client(gw, path) as ws:
        name = await asyncio.wait_for(ws.recv(), 10)
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 10) == "ping"
        return name, addr_of(ws)


def admin_json(gw, path: str):
    port = gw.wait_for(lambda l: l.get("event") == "admin_listening")["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def pool_state(gw, route: str = "/pool") -> dict[str, dict]:
    """GET /upstreams: the route's targets by id."""
    (entry,) = [r for r in admin_json(gw, "/upstreams")["routes"] if r["route"] == route]
    return {t["target"]: t for t in entry["targets"]}


def admin_text(gw, path: str) -> str:
    port = gw.wait_for(lambda l: l.get("event") == "admin_listening")["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


# --------------------------------------------------------------------------
# balancing and retry


def test_round_robin_spreads_by_weight(make_gateway, upstreams, loop):
    a, b = Target(loop, "a"), Target(loop, "b")
    gw = pool_gateway(make_gateway, upstreams, {
        "path": "/pool", "upstreams": [{"url": a.url, "weight": 2}, {"url": b.url}]})
    names = [run(greet(gw, "/pool"))[0] for _ in range(30)]
    assert collections.Counter(names) == {"a": 20, "b": 10}


def test_a_dead_target_is_retried_and_no_client_sees_it(make_gateway, upstreams, loop):
    """One of three targets refuses connections: every client is served by
    another one; the close lines say which target served it and how many
    attempts it took; after `eject.consecutive_failures` the dead one is
    skipped without an attempt."""
    targets = [Target(loop, n) for n in "abc"]
    targets[1].stop()
    gw = pool_gateway(make_gateway, upstreams, {
        "path": "/pool", "upstreams": [t.url for t in targets], "eject": {"consecutive_failures": 2, "base_ms": 60000}})
    results = [run(greet(gw, "/pool")) for _ in range(12)]
    assert all(name in ("a", "c") for name, _ in results)
    lines = [gw.close_event(addr) for _, addr in results]
    assert all(l["cause"] == "client_closed" for l in lines)
    assert {l["target"] for l in lines} == {targets[0].id, targets[2].id}
    retried = [l for l in lines if l["attempts"] == 2]
    assert len(retried) == 2, [l["attempts"] for l in lines]  # then b is ejected
    assert all(l["attempts"] in (1, 2) for l in lines)
    metrics = admin_text(gw, "/metrics")
    assert f'wsgate_upstream_attempts_total{{route="/pool",target="{targets[1].id}",result="upstream_unreachable"}} 2' in metrics
    health = gw.wait_for(lambda l: l.get("event") == "upstream_health" and l.get("target") == targets[1].id)
    assert health["healthy"] is False and health["route"] == "/pool"
    state = pool_state(gw)
    assert state[targets[1].id]["available"] is False and state[targets[1].id]["ejected_for_ms"] > 0
    assert state[targets[0].id]["available"] is True


def test_when_every_target_fails_the_error_lists_every_attempt(make_gateway, upstreams, loop):
    targets = [Target(loop, n) for n in "ab"]
    for t in targets:
        t.stop()
    gw = pool_gateway(make_gateway, upstreams, {"path": "/pool", "upstreams": [t.url for t in targets]})

    async def main():
        async with client(gw, "/pool") as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd, addr_of(ws)

    rcvd, addr = run(main())
    assert (rcvd.code, rcvd.reason) == (1014, "upstream unreachable")
    ev = gw.close_event(addr)
    assert ev["cause"] == "upstream_unreachable" and ev["attempts"] == 2
    assert ev["target"] in (targets[0].id, targets[1].id)
    assert targets[0].id in ev["error"] and targets[1].id in ev["error"] and "; " in ev["error"], ev["error"]


def test_a_target_that_never_answers_the_upgrade_is_retried(make_gateway, upstreams, loop):
    """Accepts TCP and never answers: the handshake timeout counts as a
    failure before the 101, so the next target is tried."""
    good = Target(loop, "good")
    gw = pool_gateway(make_gateway, upstreams, {
        "path": "/pool", "balance": "round_robin",
        "upstreams": [f"ws://127.0.0.1:{upstreams.blackhole_port}/x", good.url]},
        timeouts=dict(FIXTURE_TIMEOUTS, upstream_handshake_ms=300))
    results = [run(greet(gw, "/pool")) for _ in range(2)]
    assert [n for n, _ in results] == ["good", "good"]
    attempts = sorted(gw.close_event(addr)["attempts"] for _, addr in results)
    assert attempts == [1, 2]


def test_an_answer_other_than_101_is_not_retried(make_gateway, upstreams, loop):
    """A target that answers the upgrade with 403 has spoken: the client
    hears 1014 at once, the next target is not tried."""
    good = Target(loop, "good")
    gw = pool_gateway(make_gateway, upstreams, {
        "path": "/pool", "upstreams": [f"ws://127.0.0.1:{upstreams.reject403_port}/x", good.url]})

    async def main():
        async with client(gw, "/pool") as ws:
            try:
                return await asyncio.wait_for(ws.recv(), 10), addr_of(ws)
            except websockets.ConnectionClosed as e:
                return e.rcvd.code, addr_of(ws)

    first, addr = run(main())
    assert first == 1014
    ev = gw.close_event(addr)
    assert ev["cause"] == "upstream_handshake_rejected" and ev["attempts"] == 1
    assert good.connections == 0


def test_least_connections_prefers_the_idle_target(make_gateway, upstreams, loop):
    a, b = Target(loop, "a"), Target(loop, "b")
    gw = pool_gateway(make_gateway, upstreams, {
        "path": "/pool", "balance": "least_connections", "upstreams": [a.url, b.url]})

    async def main():
        held = []
        names = []
        for _ in range(3):  # three long connections, spread over a and b
            ws = await client(gw, "/pool").__aenter__()
            held.append(ws)
            names.append(await asyncio.wait_for(ws.recv(), 10))
        # Now one target holds two: the next connection goes to the other.
        counts = collections.Counter(names)
        lighter = min(counts, key=counts.get) if len(counts) == 2 else ({"a", "b"} - set(counts)).pop()
        nxt, _ = await greet(gw, "/pool")
        for ws in held:
            await ws.close()
        return counts, lighter, nxt

    counts, lighter, nxt = run(main())
    assert sorted(counts.values()) == [1, 2]
    assert nxt == lighter


# --------------------------------------------------------------------------
# active health checks


def test_health_checks_take_a_target_out_and_back_in(make_gateway, upstreams, loop):
    targets = [Target(loop, n) for n in "abc"]
    gw = pool_gateway(make_gateway, upstreams, {
        "path": "/pool", "upstreams": [t.url for t in targets],
        "health": {"path": "/healthz", "interval_ms": 200, "timeout_ms": 500, "unhealthy_after": 2, "healthy_after": 2}})
    assert {run(greet(gw, "/pool"))[0] for _ in range(6)} == {"a", "b", "c"}
    targets[1].stop()
    down = gw.wait_for(lambda l: l.get("event") == "upstream_health" and l.get("target") == targets[1].id, timeout=15)
    assert down["healthy"] is False
    # Taken out by the checks: no client attempt goes to it.
    before = targets[1].connections
    results = [run(greet(gw, "/pool")) for _ in range(9)]
    assert {n for n, _ in results} == {"a", "c"}
    assert all(gw.close_event(addr)["attempts"] == 1 for _, addr in results)
    assert targets[1].connections == before
    assert 'wsgate_upstream_healthy{route="/pool",target="%s"} 0' % targets[1].id in admin_text(gw, "/metrics")
    targets[1].start()
    up = gw.wait_for(lambda l: l.get("event") == "upstream_health" and l.get("target") == targets[1].id
                     and l.get("healthy") is True, timeout=15)
    assert "2 in a row" in up["reason"]
    assert "b" in {run(greet(gw, "/pool"))[0] for _ in range(6)}


def test_when_every_target_is_unhealthy_they_are_tried_anyway(make_gateway, upstreams, loop):
    """Panic mode: the health checks say no target is healthy (their
    /healthz fails), but the targets still serve WebSockets: clients are
    served rather than refused."""
    a = Target(loop, "a")
    gw = pool_gateway(make_gateway, upstreams, {
        "path": "/pool", "upstreams": [a.url],
        "health": {"path": "/nothing-here", "interval_ms": 100, "unhealthy_after": 1}})
    gw.wait_for(lambda l: l.get("event") == "upstream_health" and l.get("healthy") is False, timeout=15)
    assert run(greet(gw, "/pool"))[0] == "a"


# --------------------------------------------------------------------------
# consistent hashing


def test_hash_keeps_keys_on_their_target_and_moves_only_a_dead_targets_keys(make_gateway, upstreams, loop):
    targets = [Target(loop, n) for n in "abc"]
    gw = pool_gateway(make_gateway, upstreams, {
        "path": "/pool", "balance": "hash", "hash_key": "query:room", "upstreams": [t.url for t in targets],
        "eject": {"consecutive_failures": 1, "base_ms": 60000}})
    rooms = [f"room{i}" for i in range(1000)]

    async def place(selected):
        out = {}
        sem = asyncio.Semaphore(10)

        async def one(room):
            async with sem:
                async with client(gw, f"/pool?room={room}") as ws:
                    out[room] = await asyncio.wait_for(ws.recv(), 10)
        await asyncio.gather(*(one(r) for r in selected))
        return out

    first = run(place(rooms), timeout=120)
    share = collections.Counter(first.values())
    assert set(share) == {"a", "b", "c"} and min(share.values()) > len(rooms) * 0.15, share
    assert run(place(rooms), timeout=120) == first, "a key changed target with nothing changed"
    # A restart of target a: every key keeps its target.
    targets[0].stop()
    targets[0].start()
    again = run(place(rooms), timeout=120)
    assert again == first
    # Target b dies: only b's keys move, and they spread over a and c.
    targets[1].stop()
    moved = run(place(rooms), timeout=120)
    changed = {r for r in rooms if moved[r] != first[r]}
    assert changed == {r for r in rooms if first[r] == "b"}
    assert set(moved[r] for r in changed) == {"a", "c"}


# --------------------------------------------------------------------------
# DNS discovery


class ControlledDNS:
    """A DNS server (dnslib) on loopback whose A records the test sets."""

    def __init__(self) -> None:
        from dnslib import QTYPE, RR, A
        from dnslib.server import BaseResolver, DNSServer

        self.records: dict[str, list[str]] = {}
        self.queries = 0
        outer = self

        class Resolver(BaseResolver):
            def resolve(self, request, handler):
                outer.queries += 1
                reply = request.reply()
                name = str(request.q.qname).rstrip(".")
                if request.q.qtype == QTYPE.A:
                    for ip in outer.records.get(name, []):
                        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=1))
                return reply

        self.port = free_port()
        self.server = DNSServer(Resolver(), port=self.port, address="127.0.0.1")
        self.server.start_thread()

    def stop(self) -> None:
        self.server.stop()


def test_dns_discovery_follows_the_answers(make_gateway, upstreams, loop):
    """`discovery: dns` with a `resolver` the test controls: every A record
    is a target; records that appear get connections, records that go stop
    getting them, and each change is logged once."""
    dns = ControlledDNS()
    port = free_port()
    one, two = Target.__new__(Target), Target.__new__(Target)
    for t, name, host in ((one, "one", "127.0.0.1"), (two, "two", "127.0.0.2")):
        t.loop, t.name, t.host, t.port, t.server, t.connections, t.health_checks = loop, name, host, port, None, 0, 0
        t.start()
    try:
        dns.records["chat.wsgate.test"] = ["127.0.0.1"]
        gw = pool_gateway(make_gateway, upstreams, {
            "path": "/pool", "upstreams": [f"ws://chat.wsgate.test:{port}/x"], "discovery": "dns", "dns_refresh_ms": 200},
            resolver=[f"127.0.0.1:{dns.port}"])
        gw.wait_for(lambda l: l.get("event") == "upstream_targets" and l.get("targets") == [f"127.0.0.1:{port}"], timeout=15)
        assert {run(greet(gw, "/pool"))[0] for _ in range(4)} == {"one"}
        dns.records["chat.wsgate.test"] = ["127.0.0.1", "127.0.0.2"]
        gw.wait_for(lambda l: l.get("event") == "upstream_targets" and l.get("added") == [f"127.0.0.2:{port}"], timeout=15)
        assert set(pool_state(gw)) == {f"127.0.0.1:{port}", f"127.0.0.2:{port}"}
        assert collections.Counter(run(greet(gw, "/pool"))[0] for _ in range(6)) == {"one": 3, "two": 3}
        dns.records["chat.wsgate.test"] = ["127.0.0.2"]
        gw.wait_for(lambda l: l.get("event") == "upstream_targets" and l.get("removed") == [f"127.0.0.1:{port}"], timeout=15)
        assert {run(greet(gw, "/pool"))[0] for _ in range(4)} == {"two"}
        # An empty answer keeps the last targets rather than leaving none.
        dns.records["chat.wsgate.test"] = []
        queries = dns.queries
        deadline = time.monotonic() + 10
        while dns.queries < queries + 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run(greet(gw, "/pool"))[0] == "two"
    finally:
        dns.stop()


# --------------------------------------------------------------------------
# http:// pools


class CountingHTTP:
    """An HTTP upstream that echoes with its name and counts requests per
    message body."""

    def __init__(self, loop, name: str) -> None:
        self.loop, self.name, self.port = loop, name, free_port()
        self.bodies: collections.Counter = collections.Counter()

        async def handler(request):
            body = await request.read()
            self.bodies[body] += 1
            return web.Response(text=f"{self.name}:{body.decode()}")

        async def go():
            app = web.Application()
            app.router.add_post("/{tail:.*}", handler)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        asyncio.run_coroutine_threadsafe(go(), loop).result(10)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)


def test_http_pool_spreads_requests_and_never_sends_one_twice(make_gateway, upstreams, loop):
    a, b = CountingHTTP(loop, "a"), CountingHTTP(loop, "b")
    dead = free_port()
    gw = pool_gateway(make_gateway, upstreams, {
        "path": "/hpool", "upstreams": [f"http://127.0.0.1:{a.port}/m", f"http://127.0.0.1:{dead}/m", f"http://127.0.0.1:{b.port}/m"]})

    async def main():
        async with client(gw, "/hpool") as ws:
            replies = []
            for i in range(30):
                await ws.send(f"msg{i}")
                replies.append(await asyncio.wait_for(ws.recv(), 10))
            return replies, addr_of(ws)

    replies, addr = run(main())
    assert [r.split(":", 1)[1] for r in replies] == [f"msg{i}" for i in range(30)]
    assert {r.split(":", 1)[0] for r in replies} == {"a", "b"}
    every = a.bodies + b.bodies
    assert all(every[f"msg{i}".encode()] == 1 for i in range(30)), every
    ev = gw.close_event(addr)
    assert ev["cause"] == "client_closed" and ev["attempts"] >= 30
    a.stop()
    b.stop()


# --------------------------------------------------------------------------
# check-config


def test_check_config_reports_pool_problems_with_key_paths(tmp_path):
    import subprocess

    from conftest import BIN, to_yaml
    cfg = {"routes": [
        {"path": "/a", "upstreams": [{"url": "ws://h:1/x", "weight": 0}, {"url": "http://h:2/x"}]},
        {"path": "/b", "upstreams": ["ws://h:1/x"], "balance": "hash"},
        {"path": "/c", "upstream": "ws://h:1/x", "upstreams": ["ws://h:2/x"]},
    ]}
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    out = subprocess.run([str(BIN), "check-config", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    text = out.stderr + out.stdout
    for needle in ("routes[0].upstreams[0].weight", "routes[0].upstreams[1].url: one scheme per route",
                   "routes[1].hash_key: required with balance: hash", "routes[2].upstreams: use either upstream or upstreams"):
        assert needle in text, text
