"""Per-client policy: `rate_limit` (token buckets, `throttle` or `close`)
and `limits.max_connections_per_ip`."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import pytest
import websockets

from conftest import addr_of, base_config, client, prometheus_sum, run


def metrics(gw) -> str:
    port = gw.wait_for(lambda l: l.get("event") == "admin_listening")["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def limited_gateway(make_gateway, upstreams, rate_limit: dict, **overrides):
    routes = base_config(upstreams)["routes"] + [{"path": "/rl", "upstream": "builtin:echo", "rate_limit": rate_limit}]
    return make_gateway(routes=routes, **overrides)


def test_over_the_rate_with_close_is_1008(make_gateway, upstreams):
    gw = limited_gateway(make_gateway, upstreams, {"messages_per_second": 5, "burst_messages": 5, "action": "close"})

    async def main():
        async with client(gw, "/rl") as ws:
            for i in range(20):
                await ws.send(f"m{i}")
            got = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    got.append(await asyncio.wait_for(ws.recv(), 10))
            return got, closed.value.rcvd, addr_of(ws)

    got, rcvd, addr = run(main())
    assert (rcvd.code, rcvd.reason) == (1008, "rate limit exceeded")
    assert len(got) < 20
    ev = gw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["initiator"]) == ("rate_limited", 1008, "gateway")
    assert "5 messages/s" in ev["error"]
    assert prometheus_sum("\n".join(l for l in metrics(gw).splitlines() if 'action="close"' in l),
                          "wsgate_rate_limited_total") == 1


def test_within_the_burst_nothing_happens(make_gateway, upstreams):
    gw = limited_gateway(make_gateway, upstreams, {"messages_per_second": 5, "burst_messages": 10, "action": "close"})

    async def main():
        async with client(gw, "/rl") as ws:
            for i in range(10):
                await ws.send(f"m{i}")
            return [await asyncio.wait_for(ws.recv(), 10) for _ in range(10)], addr_of(ws)

    got, addr = run(main())
    assert got == [f"m{i}" for i in range(10)]
    assert gw.close_event(addr)["cause"] == "client_closed"


def test_throttle_slows_the_client_and_loses_nothing(make_gateway, upstreams):
    """60 messages at once with 20/s and a burst of 20: all 60 come back,
    in order, and it takes the bucket's time (40 over the burst at 20/s:
    about 2 s), because the gateway stops reading the client meanwhile."""
    gw = limited_gateway(make_gateway, upstreams, {"messages_per_second": 20, "burst_messages": 20, "action": "throttle"})

    async def main():
        async with client(gw, "/rl") as ws:
            start = time.monotonic()

            async def send_all():
                for i in range(60):
                    await ws.send(f"m{i}")
                    await asyncio.sleep(0)

            sender = asyncio.create_task(send_all())
            got = [await asyncio.wait_for(ws.recv(), 15) for _ in range(60)]
            await sender
            return got, time.monotonic() - start, addr_of(ws)

    got, took, addr = run(main())
    assert got == [f"m{i}" for i in range(60)]
    # Bucket maths as a lower bound: the last 40 cannot pass before 40/20 s,
    # less a read batch's worth of slack.
    assert took >= 1.5, f"60 messages passed in {took:.2f} s at 20/s with a burst of 20"
    assert gw.close_event(addr)["cause"] == "client_closed"
    assert prometheus_sum("\n".join(l for l in metrics(gw).splitlines() if 'action="throttle"' in l),
                          "wsgate_rate_limited_total") >= 1


def test_bytes_per_second_counts_payload(make_gateway, upstreams):
    gw = limited_gateway(make_gateway, upstreams, {"bytes_per_second": 1000, "action": "close"})

    async def main():
        async with client(gw, "/rl") as ws:
            await ws.send("x" * 900)
            assert await asyncio.wait_for(ws.recv(), 10) == "x" * 900
            await ws.send("y" * 900)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd, addr_of(ws)

    rcvd, addr = run(main())
    assert rcvd.code == 1008
    assert "1000 bytes/s" in gw.close_event(addr)["error"]


def test_connections_per_ip_are_capped(make_gateway):
    gw = make_gateway(limits={"max_connections_per_ip": 3})

    async def main():
        held = [await client(gw, "/echo").__aenter__() for _ in range(3)]
        async with client(gw, "/echo") as extra:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(extra.recv(), 10)
            over = (closed.value.rcvd, addr_of(extra))
        await held[0].close()
        await asyncio.sleep(0.2)
        async with client(gw, "/echo") as again:
            await again.send("back")
            back = await asyncio.wait_for(again.recv(), 10)
        for ws in held[1:]:
            await ws.close()
        return over, back

    (rcvd, addr), back = run(main())
    assert (rcvd.code, rcvd.reason) == (1013, "gateway overloaded, try again later")
    ev = gw.close_event(addr)
    assert ev["cause"] == "overloaded" and "max_connections_per_ip" in ev["error"]
    assert back == "back"


def test_rate_limit_config_is_checked(make_gateway, tmp_path):
    import subprocess

    from conftest import BIN, to_yaml
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml({"routes": [
        {"path": "/a", "upstream": "builtin:echo", "rate_limit": {"action": "close"}},
        {"path": "/b", "upstream": "builtin:echo", "rate_limit": {"messages_per_second": 0}},
        {"path": "/c", "upstream": "builtin:echo", "rate_limit": {"bytes_per_second": 10, "burst_messages": 3}},
    ], "limits": {"max_connections_per_ip": -1}}))
    out = subprocess.run([str(BIN), "check-config", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    for needle in ("routes[0].rate_limit: needs messages_per_second or bytes_per_second",
                   "routes[1].rate_limit.messages_per_second", "routes[2].rate_limit.burst_messages",
                   "limits.max_connections_per_ip"):
        assert needle in out.stderr, out.stderr
