"""Normal relaying: builtin:echo and a ws:// echo upstream, driven by the
`websockets` client. Each connection must end with exactly one
`websocket_close` line whose counters match what was sent."""

from __future__ import annotations

import asyncio

import pytest

from conftest import DEFAULT_MAX, RNG, addr_of, client, run

ROUTES = ["/echo", "/up/echo"]
SIZES = [0, 125, 126, 65535, 65536, 64 * 1024 + 1, DEFAULT_MAX]


def payload(kind: str, size: int):
    if kind == "text":
        return ("abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1))[:size]
    return RNG.randbytes(size)  # seeded: WSGATE_TEST_SEED replays it


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", ["text", "binary"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}B")
def test_echo_sizes(gateway, route, kind, size):
    msg = payload(kind, size)

    async def main():
        async with client(gateway, route) as ws:
            await ws.send(msg)
            got = await asyncio.wait_for(ws.recv(), 10)
            return addr_of(ws), got, ws.close_code

    addr, got, code = run(main())
    assert type(got) is type(msg), f"{kind} message came back as {type(got).__name__}"
    assert got == msg
    ev = gateway.close_event(addr)
    assert ev["cause"] == "client_closed"
    assert ev["code"] == 1000
    assert ev["initiator"] == "client"
    assert ev["was_clean"] is True
    n = len(msg.encode()) if isinstance(msg, str) else len(msg)
    assert (ev["messages_in"], ev["messages_out"]) == (1, 1)
    assert (ev["bytes_in"], ev["bytes_out"]) == (n, n)


@pytest.mark.parametrize("route", ROUTES)
def test_several_messages_in_order_and_counters(gateway, route):
    msgs = ["one", b"\x00\x01two", "three \u20ac", b"", "", "five"]

    async def main():
        async with client(gateway, route) as ws:
            for m in msgs:
                await ws.send(m)
            got = [await asyncio.wait_for(ws.recv(), 10) for _ in msgs]
            return addr_of(ws), got

    addr, got = run(main())
    assert got == msgs
    ev = gateway.close_event(addr)
    n = sum(len(m.encode()) if isinstance(m, str) else len(m) for m in msgs)
    assert (ev["messages_in"], ev["messages_out"]) == (len(msgs), len(msgs))
    assert (ev["bytes_in"], ev["bytes_out"]) == (n, n)
    assert ev["route"] == route
    assert ev["client_addr"] == addr


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_fragmented_message_is_echoed_whole(gateway, route, kind):
    frags = ["ab", "cd", "", "ef\u20ac"] if kind == "text" else [b"\x00\x01", b"\x02", b"", b"\xff" * 300]
    whole = "".join(frags) if kind == "text" else b"".join(frags)

    async def main():
        async with client(gateway, route) as ws:
            await ws.send(frags)  # an iterable is sent as one fragmented message
            got = await asyncio.wait_for(ws.recv(), 10)
            return addr_of(ws), got

    addr, got = run(main())
    assert got == whole
    ev = gateway.close_event(addr)
    n = len(whole.encode()) if kind == "text" else len(whole)
    assert (ev["messages_in"], ev["messages_out"]) == (1, 1), "a fragmented message counts as one message"
    assert (ev["bytes_in"], ev["bytes_out"]) == (n, n)


def test_fragmented_message_of_exactly_the_limit_passes(gateway):
    chunk = 256 * 1024
    frags = [RNG.randbytes(chunk) for _ in range(DEFAULT_MAX // chunk)]
    whole = b"".join(frags)
    assert len(whole) == DEFAULT_MAX

    async def main():
        async with client(gateway, "/echo") as ws:
            await ws.send(frags)
            return await asyncio.wait_for(ws.recv(), 10)

    assert run(main()) == whole


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("data", [b"", b"ping-payload", bytes(range(125))], ids=["empty", "short", "125B"])
def test_ping_is_answered_with_same_payload(gateway, route, data):
    async def main():
        async with client(gateway, route) as ws:
            pongs: list[bytes] = []  # the payload of every pong the client receives
            acknowledge = ws.acknowledge_pings  # websockets calls it once per received pong

            def record(payload: bytes) -> None:
                pongs.append(bytes(payload))
                acknowledge(payload)

            ws.acknowledge_pings = record
            waiter = await ws.ping(data)  # resolves only on a pong with this payload
            await asyncio.wait_for(waiter, 10)
            await ws.send("after ping")
            assert await asyncio.wait_for(ws.recv(), 10) == "after ping"
            return pongs, waiter

    pongs, waiter = run(main())
    assert pongs == [data], f"expected exactly one pong carrying the ping's payload, got {pongs}"
    assert waiter.done() and not waiter.cancelled() and waiter.exception() is None


@pytest.mark.parametrize("route", ROUTES)
def test_client_offering_permessage_deflate_still_works(gateway, route):
    msg = "compressible " * 5000

    async def main():
        async with client(gateway, route, compression="deflate") as ws:
            await ws.send(msg)
            return await asyncio.wait_for(ws.recv(), 10)

    assert run(main()) == msg


@pytest.mark.parametrize("code,reason", [(1000, ""), (1001, "going"), (3000, "app"), (4001, "done"), (4999, "x" * 123)])
def test_client_close_code_is_echoed(gateway, code, reason):
    async def main():
        async with client(gateway, "/echo") as ws:
            await ws.send("hi")
            await asyncio.wait_for(ws.recv(), 10)
            await ws.close(code, reason)
            return addr_of(ws), ws.close_code, ws.close_reason

    addr, got_code, got_reason = run(main())
    assert (got_code, got_reason) == (code, reason)
    ev = gateway.close_event(addr)
    assert ev["cause"] == "client_closed"
    assert ev["initiator"] == "client"
    assert ev["was_clean"] is True
    assert (ev["code"], ev["reason"]) == (code, reason)
    assert (ev["messages_in"], ev["messages_out"], ev["bytes_in"], ev["bytes_out"]) == (1, 1, 2, 2)


def test_client_close_is_relayed_to_ws_upstream(gateway, upstreams):
    path = "/chat/close-relay?t=1"

    async def main():
        async with client(gateway, path) as ws:
            await ws.send("hi")
            await asyncio.wait_for(ws.recv(), 10)
            await ws.close(4001, "done")
            return addr_of(ws), ws.close_code, ws.close_reason

    addr, code, reason = run(main())
    assert (code, reason) == (4001, "done")
    rec = upstreams.record(path)
    assert rec["closed"].wait(10), "upstream connection did not end"
    assert rec["close_rcvd"] == (4001, "done"), "client's close code/reason must be relayed to the upstream"
    ev = gateway.close_event(addr)
    assert ev["cause"] == "client_closed"
    assert ev["initiator"] == "client"
    assert (ev["code"], ev["reason"], ev["was_clean"]) == (4001, "done", True)
    assert ev["upstream_code"] == 4001
    assert ev["route"] == "/chat/*"
    assert ev["upstream"].startswith("ws://127.0.0.1:")


def test_log_line_has_all_contract_fields(gateway):
    async def main():
        async with client(gateway, "/echo") as ws:
            await ws.send("x")
            await asyncio.wait_for(ws.recv(), 10)
            return addr_of(ws)

    ev = gateway.close_event(run(main()))
    fields = ["ts", "level", "event", "connection_id", "route", "upstream", "client_addr", "code", "reason",
              "was_clean", "initiator", "cause", "upstream_code", "upstream_reason", "upstream_status", "error",
              "duration_ms", "messages_in", "messages_out", "bytes_in", "bytes_out"]
    missing = [f for f in fields if f not in ev]
    assert not missing, f"missing fields {missing} in {ev}"
    assert ev["upstream"] == "builtin:echo"
    assert ev["route"] == "/echo"
    assert isinstance(ev["connection_id"], str) and ev["connection_id"]
    assert isinstance(ev["duration_ms"], int) and ev["duration_ms"] >= 0
    assert ev["upstream_status"] is None


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_drops_tcp(gateway, upstreams, route, how):
    import rawws

    path = route if route == "/echo" else f"/chat/gone-{how}"

    async def main():
        ws = await rawws.RawWS.connect(gateway.port, path)
        await ws.send_frame(rawws.OP_TEXT, b"hello")
        op, data, _ = await ws.read_message()
        assert (op, data) == (rawws.OP_TEXT, b"hello")
        if how == "rst":
            ws.abort()
        else:
            ws.close_tcp()
        return ws.local_addr

    addr = run(main())
    ev = gateway.close_event(addr)
    assert ev["cause"] == "client_gone"
    assert ev["code"] == 1006
    assert ev["was_clean"] is False
    assert ev["initiator"] == "client"
    assert (ev["messages_in"], ev["messages_out"], ev["bytes_in"], ev["bytes_out"]) == (1, 1, 5, 5)
    if route != "/echo":
        rec = upstreams.record(path)
        assert rec["closed"].wait(10), "the upstream connection must be ended when the client is gone"
