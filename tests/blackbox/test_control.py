"""The control API (contract §8, AWS-style `@connections`): a backend pushes
to a connection, reads it, closes it, or publishes to a channel; real
clients receive what was pushed."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest
import websockets
from aiohttp import web

from conftest import addr_of, base_config, client, run

TOKEN = "control-token-for-tests-0123456789"


def admin_port(gw) -> int:
    return gw.wait_for(lambda l: l.get("event") == "admin_listening")["port"]


def call(port: int, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
         token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def open_inspected(gw, path="/chat/inspect-control"):
    """A client through /chat/* whose upstream tells it its connection id."""
    ws = await client(gw, path).__aenter__()
    info = json.loads(await asyncio.wait_for(ws.recv(), 10))
    (cid,) = [v for k, v in info["headers"] if k.lower() == "x-wsgate-connection-id"]
    return ws, cid


def test_push_text_and_binary_then_410_after_close(gateway):
    port = admin_port(gateway)

    async def main():
        ws, cid = await open_inspected(gateway)
        status, _ = await asyncio.to_thread(call, port, "POST", f"/@connections/{cid}", "héllo".encode())
        assert status == 200
        assert await asyncio.wait_for(ws.recv(), 10) == "héllo"
        status, _ = await asyncio.to_thread(call, port, "POST", f"/%40connections/{cid}", b"\x00\xff", "application/octet-stream")
        assert status == 200
        assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\xff"
        # Relayed traffic goes on, interleaved.
        await ws.send("relayed")
        assert await asyncio.wait_for(ws.recv(), 10) == "relayed"
        status, body = await asyncio.to_thread(call, port, "GET", f"/@connections/{cid}")
        assert status == 200
        info = json.loads(body)
        assert info["connection_id"] == cid and info["route"] == "/chat/*" and info["client_addr"] == addr_of(ws)
        assert set(info) == {"connection_id", "route", "client_addr", "connected_at", "last_active_at", "subject", "channels"}
        addr = addr_of(ws)
        await ws.close()
        return cid, addr

    cid, addr = run(main())
    ev = gateway.close_event(addr)
    assert ev["messages_out"] >= 4  # the inspect greeting, two pushes, the echo
    assert call(port, "POST", f"/@connections/{cid}", b"late")[0] == 410
    assert call(port, "GET", f"/@connections/{cid}")[0] == 410
    assert call(port, "DELETE", f"/@connections/{cid}")[0] == 410
    assert call(port, "POST", "/@connections/nobody.01XYZ", b"x")[0] == 410


def test_push_refuses_bad_text_and_oversized_messages(make_gateway):
    gw = make_gateway(limits={"max_message_bytes": 1000})
    port = admin_port(gw)

    async def main():
        ws, cid = await open_inspected(gw)
        bad = await asyncio.to_thread(call, port, "POST", f"/@connections/{cid}", b"\xff\xfe")
        big = await asyncio.to_thread(call, port, "POST", f"/@connections/{cid}", b"x" * 1001)
        ok = await asyncio.to_thread(call, port, "POST", f"/@connections/{cid}", b"x" * 1000)
        got = await asyncio.wait_for(ws.recv(), 10)
        await ws.close()
        return bad[0], big[0], ok[0], got

    assert run(main()) == (400, 413, 200, "x" * 1000)


def test_push_to_a_client_that_does_not_read_gets_429(make_gateway):
    gw = make_gateway()
    port = admin_port(gw)
    import rawws

    async def main():
        ws = await rawws.RawWS.connect(gw.port, "/chat/inspect-slow")
        greeting = await ws.read_frame()
        (cid,) = [v for k, v in json.loads(greeting.payload)["headers"] if k.lower() == "x-wsgate-connection-id"]
        statuses = []
        for _ in range(400):  # 64 KiB each; the client reads none of it
            status, _ = await asyncio.to_thread(call, port, "POST", f"/@connections/{cid}", b"p" * 65536, "application/octet-stream")
            statuses.append(status)
            if status == 429:
                break
        ws.close_tcp()
        return statuses

    statuses = run(main(), timeout=120)
    assert statuses[-1] == 429, f"never 429 after {len(statuses)} pushes"
    assert set(statuses[:-1]) == {200}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'wsgate_push_total{result="busy"} 1' in text
    assert f'wsgate_push_total{{result="sent"}} {len(statuses) - 1}' in text


def test_kick_closes_with_the_backends_code(gateway):
    port = admin_port(gateway)

    async def main():
        ws, cid = await open_inspected(gateway)
        bad = await asyncio.to_thread(call, port, "DELETE", f"/@connections/{cid}?code=1011")
        status, _ = await asyncio.to_thread(call, port, "DELETE", f"/@connections/{cid}?code=4001&reason=banned%20for%20spam")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        return bad[0], status, closed.value.rcvd, addr_of(ws)

    bad, status, rcvd, addr = run(main())
    assert bad == 400 and status == 204
    assert (rcvd.code, rcvd.reason) == (4001, "banned for spam")
    ev = gateway.close_event(addr)
    assert (ev["cause"], ev["code"], ev["reason"], ev["initiator"]) == ("kicked", 4001, "banned for spam", "gateway")


class HookBackend:
    """An HTTP upstream whose connect_url subscribes connections to the
    channels the client named in its `X-Channels` header (a forwarded header:
    the hook gets the same headers as messages)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def connect(request):
            return web.Response(status=204, headers={"X-WSGate-Channels": request.headers.get("X-Channels", "")})

        async def message(request):
            return web.Response(body=await request.read(), content_type="text/plain")

        async def start():
            app = web.Application()
            app.router.add_post("/connect", connect)
            app.router.add_post("/m", message)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_channel_publish_reaches_every_subscriber_once(make_gateway, upstreams):
    backend = HookBackend()
    try:
        b = f"http://127.0.0.1:{backend.port}"
        routes = base_config(upstreams)["routes"] + [
            {"path": "/live", "upstream": f"{b}/m", "forward_headers": ["x-channels"], "http": {"connect_url": f"{b}/connect"}}]
        gw = make_gateway(routes=routes)
        port = admin_port(gw)
        n = 1000

        async def main():
            clients = []
            sem = asyncio.Semaphore(50)

            async def join(i):
                async with sem:
                    ch = "news,sport" if i % 2 == 0 else "news"
                    clients.append((i, await client(gw, "/live", additional_headers={"X-Channels": ch}).__aenter__()))
            await asyncio.gather(*(join(i) for i in range(n)))
            status, body = await asyncio.to_thread(call, port, "POST", "/channels/news", b"headline")
            sport = await asyncio.to_thread(call, port, "POST", "/channels/sport", b"goal")
            none = await asyncio.to_thread(call, port, "POST", "/channels/weather", b"rain")

            async def inbox(ws):
                got = []
                try:
                    while True:
                        got.append(await asyncio.wait_for(ws.recv(), 1.5))
                except asyncio.TimeoutError:
                    return got
            boxes = await asyncio.gather(*(inbox(ws) for _, ws in clients))
            await asyncio.gather(*(ws.close() for _, ws in clients))
            return (status, json.loads(body)), (sport[0], json.loads(sport[1])), json.loads(none[1]), \
                [(i, box) for (i, _), box in zip(clients, boxes)]

        news, sport, none, boxes = run(main(), timeout=180)
        assert news == (200, {"delivered": n, "busy": 0})
        assert sport == (200, {"delivered": n // 2, "busy": 0})
        assert none == {"delivered": 0, "busy": 0}
        for i, box in boxes:
            assert sorted(box) == (sorted(["headline", "goal"]) if i % 2 == 0 else ["headline"]), (i, box)
    finally:
        backend.stop()


def test_a_token_is_required_once_configured(make_gateway):
    gw = make_gateway(control={"host": "127.0.0.1", "port": 0, "token_env": "WSGATE_TEST_CONTROL_TOKEN"},
                      env={"WSGATE_TEST_CONTROL_TOKEN": TOKEN})
    port = gw.wait_for(lambda l: l.get("event") == "control_listening")["port"]

    async def main():
        ws, cid = await open_inspected(gw)
        results = []
        for token in (None, "wrong", TOKEN[:-1], TOKEN):
            results.append((await asyncio.to_thread(call, port, "POST", f"/@connections/{cid}", b"hi", None, token))[0])
        got = await asyncio.wait_for(ws.recv(), 10)
        await ws.close()
        return results, got

    results, got = run(main())
    assert results == [401, 401, 401, 200] and got == "hi"
    # The admin listener does not serve the API when it has its own.
    assert call(admin_port(gw), "POST", "/@connections/x", b"hi", token=TOKEN)[0] == 404


def test_without_a_token_the_control_api_must_be_on_loopback(tmp_path):
    import subprocess

    from conftest import BIN, to_yaml
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml({"control": {"host": "0.0.0.0", "port": 9091},
                             "routes": [{"path": "/echo", "upstream": "builtin:echo"}]}))
    out = subprocess.run([str(BIN), "check-config", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "control.token_env: required when control.host is not a loopback address" in out.stderr


# --------------------------------------------------------------------------
# a cluster of three instances on loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_three_instances_reach_each_others_connections(make_gateway, upstreams):
    backend = HookBackend()
    try:
        b = f"http://127.0.0.1:{backend.port}"
        routes = base_config(upstreams)["routes"] + [
            {"path": "/live", "upstream": f"{b}/m", "forward_headers": ["x-channels"], "http": {"connect_url": f"{b}/connect"}}]
        ports = {name: free_port() for name in "abc"}
        gws = {}
        for name in "abc":
            peers = [f"127.0.0.1:{ports[p]}" for p in "abc" if p != name]
            gws[name] = make_gateway(
                routes=routes, admin={"host": "127.0.0.1", "port": ports[name]},
                cluster={"instance_id": f"gw-{name}", "peers": peers, "refresh_ms": 200})

        async def main():
            on_c, cid = await open_inspected(gws["c"])
            assert cid.startswith("gw-c.")
            # A forwards to C once it has learnt who is who.
            deadline = time.monotonic() + 15
            while True:
                status, _ = await asyncio.to_thread(call, ports["a"], "POST", f"/@connections/{cid}", b"via a")
                if status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert status == 200
            assert await asyncio.wait_for(on_c.recv(), 10) == "via a"
            status, body = await asyncio.to_thread(call, ports["b"], "GET", f"/@connections/{cid}")
            assert status == 200 and json.loads(body)["connection_id"] == cid
            # One subscriber per instance; a publish through B reaches all three.
            subs = {n: await client(gws[n], "/live", additional_headers={"X-Channels": "news"}).__aenter__() for n in "abc"}
            status, body = await asyncio.to_thread(call, ports["b"], "POST", "/channels/news", b"everyone")
            answer = json.loads(body)
            got = {n: await asyncio.wait_for(ws.recv(), 10) for n, ws in subs.items()}
            # C goes away: its ids are gone, A and B go on.
            gws["c"].kill("the test stops instance C")
            await asyncio.sleep(0.6)
            gone, _ = await asyncio.to_thread(call, ports["a"], "POST", f"/@connections/{cid}", b"late")
            status2, body2 = await asyncio.to_thread(call, ports["a"], "POST", "/channels/news", b"still")
            got2 = {n: await asyncio.wait_for(subs[n].recv(), 10) for n in "ab"}
            for n in "ab":
                await subs[n].close()
            return answer, got, gone, json.loads(body2), got2

        answer, got, gone, answer2, got2 = run(main(), timeout=90)
        assert answer["delivered"] == 3 and answer["peers_failed"] == []
        assert got == {"a": "everyone", "b": "everyone", "c": "everyone"}
        assert gone == 410
        assert answer2["delivered"] == 2 and got2 == {"a": "still", "b": "still"}
        assert all(f"127.0.0.1:{ports['c']}" in f for f in answer2["peers_failed"]) and len(answer2["peers_failed"]) <= 1
    finally:
        backend.stop()


def test_peers_found_by_dns(make_gateway, upstreams):
    """`cluster.peers: dns:NAME:PORT`: every address of NAME is a peer (a
    headless Service); each instance finds the other and skips itself."""
    from test_pools import ControlledDNS
    dns = ControlledDNS()
    try:
        port = free_port()
        dns.records["peers.wsgate.test"] = ["127.0.0.1", "127.0.0.2"]
        gws = {}
        for name, host in (("a", "127.0.0.1"), ("b", "127.0.0.2")):
            gws[name] = make_gateway(
                admin={"host": host, "port": port}, resolver=[f"127.0.0.1:{dns.port}"],
                cluster={"instance_id": f"dns-{name}", "peers": f"dns:peers.wsgate.test:{port}", "refresh_ms": 200})

        async def main():
            on_b, cid = await open_inspected(gws["b"])
            deadline = time.monotonic() + 15
            while True:
                status, _ = await asyncio.to_thread(call_host, "127.0.0.1", port, "POST", f"/@connections/{cid}", b"via dns")
                if status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            got = await asyncio.wait_for(on_b.recv(), 10) if status == 200 else None
            await on_b.close()
            return status, got

        assert run(main(), timeout=60) == (200, "via dns")
    finally:
        dns.stop()


def call_host(host: str, port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
