"""ws:// upstreams: what reaches the upstream (path, query, headers,
subprotocols) and how upstream closes and failures reach the client."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets

from conftest import FIXTURE_TIMEOUTS, FORGED_REASON, SECRET, addr_of, client, run


def headers_of(info) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in info["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


async def inspect(gw, path, **kw):
    """Connect through the /chat/* route to the inspect upstream and return
    (what the upstream saw, the client's subprotocol, client addr)."""
    async with client(gw, path, **kw) as ws:
        info = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.send("still relaying")
        assert await asyncio.wait_for(ws.recv(), 10) == "still relaying"
        return info, ws.subprotocol, addr_of(ws)


@pytest.mark.parametrize(
    "client_path,upstream_path",
    [
        ("/chat/inspect", "/chat/inspect"),
        ("/chat/inspect?x=1&y=two", "/chat/inspect?x=1&y=two"),
        ("/chat/room1/inspect/deep?q=%20a", "/chat/room1/inspect/deep?q=%20a"),
    ],
)
def test_prefix_route_appends_suffix_and_query(gateway, client_path, upstream_path):
    info, _, addr = run(inspect(gateway, client_path))
    assert info["path"] == upstream_path
    ev = gateway.close_event(addr)
    assert ev["route"] == "/chat/*"
    assert ev["cause"] == "client_closed"


def test_subprotocol_negotiated_through_upstream(gateway):
    info, sub, addr = run(inspect(gateway, "/chat/inspect-sub", subprotocols=["chat.v2", "chat.v1"]))
    assert sub == "chat.v1", "the client must see the subprotocol the upstream selected"
    assert info["subprotocol"] == "chat.v1"
    offered = headers_of(info).get("sec-websocket-protocol", [])
    offered_list = [p.strip() for h in offered for p in h.split(",")]
    assert offered_list == ["chat.v2", "chat.v1"], f"upstream must see the client's offer, saw {offered}"
    gateway.close_event(addr)


def test_no_subprotocol_when_none_offered(gateway):
    info, sub, addr = run(inspect(gateway, "/chat/inspect-nosub"))
    assert sub is None
    assert "sec-websocket-protocol" not in headers_of(info)
    gateway.close_event(addr)


def test_forward_headers_and_x_forwarded_for(gateway):
    hdrs = {"Authorization": "Bearer abc.def", "Cookie": "session=42; theme=dark", "X-Not-Listed": "private"}
    info, _, addr = run(inspect(gateway, "/chat/inspect-headers", additional_headers=hdrs))
    seen = headers_of(info)
    assert seen.get("authorization") == ["Bearer abc.def"]
    assert seen.get("cookie") == ["session=42; theme=dark"]
    assert "x-not-listed" not in seen, "only forward_headers may be copied from the client's handshake"
    xff = seen.get("x-forwarded-for")
    assert xff, f"X-Forwarded-For missing; upstream saw {sorted(seen)}"
    assert xff[-1].split(",")[-1].strip() == "127.0.0.1"
    gateway.close_event(addr)


def test_x_forwarded_for_from_an_untrusted_peer_is_replaced(gateway):
    """README: at the edge a client's own X-Forwarded-For is a claim anyone
    can make; without `trusted_proxies` the upstream gets the peer's address
    only, and the log names the peer."""
    info, _, addr = run(inspect(gateway, "/chat/inspect-xff", additional_headers={"X-Forwarded-For": "6.6.6.6"}))
    assert headers_of(info).get("x-forwarded-for") == ["127.0.0.1"]
    assert gateway.close_event(addr)["client_addr"] == addr


def test_x_forwarded_for_from_a_trusted_proxy_is_appended(make_gateway):
    """README: from a peer in `trusted_proxies` the chain is kept and the
    peer appended; the log's client_addr is the right-most address that is
    not a trusted proxy."""
    gw = make_gateway(trusted_proxies=["127.0.0.0/8", "10.0.0.0/8"])
    info, _, addr = run(inspect(gw, "/chat/inspect-xff2", additional_headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7, 10.9.9.9"}))
    xff = ",".join(headers_of(info).get("x-forwarded-for", []))
    assert [p.strip() for p in xff.split(",")] == ["6.6.6.6", "203.0.113.7", "10.9.9.9", "127.0.0.1"]
    (cid,) = headers_of(info)["x-wsgate-connection-id"]
    ev = gw.wait_for(lambda l: l.get("event") == "websocket_close" and l.get("connection_id") == cid)
    assert ev["client_addr"] == "203.0.113.7"


def test_upstream_sees_connection_id_of_log_line(gateway):
    """README: the upstream handshake carries X-WSGate-Connection-Id, the id in the log line."""
    info, _, addr = run(inspect(gateway, "/chat/inspect-id"))
    ids = headers_of(info).get("x-wsgate-connection-id")
    ev = gateway.close_event(addr)
    assert ids == [ev["connection_id"]]


def test_upstream_close_4000_bye_is_relayed(gateway):
    async def main():
        async with client(gateway, "/bye") as ws:
            await ws.send("hello")
            echoed = await asyncio.wait_for(ws.recv(), 10)
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), 10)
            return addr_of(ws), echoed, ei.value

    addr, echoed, exc = run(main())
    assert echoed == "hello"
    assert exc.rcvd is not None, "client must receive a close frame"
    assert (exc.rcvd.code, exc.rcvd.reason) == (4000, "bye")
    ev = gateway.close_event(addr)
    assert ev["cause"] == "upstream_closed"
    assert ev["initiator"] == "upstream"
    assert (ev["code"], ev["reason"], ev["was_clean"]) == (4000, "bye", True)
    assert (ev["upstream_code"], ev["upstream_reason"]) == (4000, "bye")
    assert (ev["messages_in"], ev["messages_out"], ev["bytes_in"], ev["bytes_out"]) == (1, 1, 5, 5)


def test_upstream_close_without_code_gives_empty_close_frame(gateway):
    async def main():
        async with client(gateway, "/nocode") as ws:
            await ws.send("hello")
            await asyncio.wait_for(ws.recv(), 10)
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), 10)
            return addr_of(ws), ei.value

    addr, exc = run(main())
    assert exc.rcvd is not None, "client must receive a close frame"
    assert exc.rcvd.code == 1005, f"expected a close frame without a code, got {exc.rcvd}"
    ev = gateway.close_event(addr)
    assert ev["cause"] == "upstream_closed"
    assert ev["initiator"] == "upstream"
    assert ev["code"] == 1005
    assert ev["was_clean"] is True


def test_upstream_close_reason_cannot_forge_log_lines(gateway):
    async def main():
        async with client(gateway, "/forge") as ws:
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), 10)
            return addr_of(ws), ei.value

    addr, exc = run(main())
    assert exc.rcvd is not None
    assert (exc.rcvd.code, exc.rcvd.reason) == (4001, FORGED_REASON)
    ev = gateway.close_event(addr)
    assert ev["cause"] == "upstream_closed"
    assert ev["reason"] == FORGED_REASON
    assert ev["upstream_reason"] == FORGED_REASON
    forged = [l for l in gateway.snapshot() if l.get("cause") == "forged"]
    assert not forged, f"a close reason produced a forged log line: {forged}"


# ---------------------------------------------------------------- failures


async def expect_close_after_connect(gw, path, send=None, recv_timeout=10):
    async with client(gw, path) as ws:
        if send is not None:
            await ws.send(send)
        with pytest.raises(websockets.ConnectionClosed) as ei:
            while True:
                await asyncio.wait_for(ws.recv(), recv_timeout)
        return addr_of(ws), ei.value, ws.close_code


def test_upstream_refused(gateway):
    addr, exc, _ = run(expect_close_after_connect(gateway, "/refused"))
    assert exc.rcvd is not None, "client must get a close frame, not a dropped connection"
    assert (exc.rcvd.code, exc.rcvd.reason) == (1014, "upstream unreachable")
    ev = gateway.close_event(addr)
    assert ev["cause"] == "upstream_unreachable"
    assert (ev["code"], ev["reason"]) == (1014, "upstream unreachable")
    assert ev["was_clean"] is True
    assert ev["initiator"] == "gateway"
    assert ev["route"] == "/refused"
    assert (ev["upstream_code"], ev["upstream_reason"], ev["upstream_status"]) == (None, None, None)
    assert (ev["messages_in"], ev["messages_out"], ev["bytes_in"], ev["bytes_out"]) == (0, 0, 0, 0)


def test_upstream_handshake_rejected_403(gateway):
    addr, exc, _ = run(expect_close_after_connect(gateway, "/reject403"))
    assert exc.rcvd is not None, "client must get a close frame"
    assert exc.rcvd.code == 1014
    assert SECRET not in exc.rcvd.reason, "the reason must not leak upstream secrets"
    assert len(exc.rcvd.reason.encode()) <= 123
    ev = gateway.close_event(addr)
    assert ev["cause"] == "upstream_handshake_rejected"
    assert ev["code"] == 1014
    assert ev["reason"] == exc.rcvd.reason
    assert ev["upstream_status"] == 403
    assert ev["was_clean"] is True
    assert ev["initiator"] == "gateway"


def test_upstream_reset_after_first_message(gateway, upstreams):
    upstreams.reset_got_message.clear()
    addr, exc, close_code = run(expect_close_after_connect(gateway, "/reset", send="first"))
    assert upstreams.reset_got_message.is_set(), "the first message must have reached the upstream"
    assert exc.rcvd is None, f"client TCP must be dropped without a close frame, got {exc.rcvd}"
    assert close_code == 1006
    ev = gateway.close_event(addr)
    assert ev["cause"] == "upstream_reset"
    assert ev["code"] == 1006
    assert ev["was_clean"] is False
    assert ev["initiator"] == "upstream"
    assert ev["upstream_code"] is None
    assert (ev["messages_in"], ev["bytes_in"], ev["messages_out"]) == (1, 5, 0)


def test_upstream_never_answers_upgrade_times_out(make_gateway, upstreams):
    """A gateway of its own with a short upgrade budget; the upstream accepts
    TCP and never answers, so the timer decides (every other budget stays
    generous: the client's close reply must not race a short close timer)."""
    handshake_ms = 1000
    gateway = make_gateway(timeouts={**FIXTURE_TIMEOUTS, "upstream_handshake_ms": handshake_ms})
    t0 = time.monotonic()
    addr, exc, _ = run(expect_close_after_connect(gateway, "/blackhole", recv_timeout=15))
    elapsed = time.monotonic() - t0
    assert exc.rcvd is not None, "client must get a close frame"
    assert exc.rcvd.code == 1014
    assert elapsed >= handshake_ms / 1000 * 0.9, f"closed after {elapsed:.3f}s, before the handshake timeout"
    ev = gateway.close_event(addr)
    assert ev["cause"] == "upstream_timeout"
    assert ev["code"] == 1014
    assert ev["was_clean"] is True
    assert ev["initiator"] == "gateway"
    assert ev["duration_ms"] >= handshake_ms * 0.9


def test_upstream_message_over_limit(gateway):
    addr, exc, _ = run(expect_close_after_connect(gateway, "/upbig"))
    assert exc.rcvd is not None, "client must get a close frame"
    assert exc.rcvd.code == 1014
    ev = gateway.close_event(addr)
    assert ev["cause"] == "upstream_protocol_error"
    assert ev["code"] == 1014
    assert ev["initiator"] == "gateway"
    assert ev["messages_out"] == 0


def test_upstream_invalid_utf8_text(gateway):
    addr, exc, _ = run(expect_close_after_connect(gateway, "/upbadutf8"))
    assert exc.rcvd is not None, "client must get a close frame"
    assert exc.rcvd.code == 1014
    ev = gateway.close_event(addr)
    assert ev["cause"] == "upstream_protocol_error"
    assert ev["code"] == 1014
    assert ev["messages_out"] == 0


def test_upstream_frames_reach_the_client_with_minimal_lengths(gateway):
    """Upstream frames are relayed as bytes; one whose length is not in the
    shortest encoding is re-encoded, so the client only sees valid framing."""
    import struct

    import rawws

    async def main():
        ws = await rawws.RawWS.connect(gateway.port, "/longlengths")
        await ws.send_frame(rawws.OP_TEXT, b"hello")
        raw = await asyncio.wait_for(ws.reader.readexactly(14), 10)
        await ws.send_frame(rawws.OP_CLOSE, struct.pack("!H", 1000))
        res = await ws.expect_close(timeout=10, reply=False)
        ws.close_tcp()
        return ws.local_addr, raw, res

    addr, raw, res = run(main())
    assert raw == b"\x81\x05hello" * 2
    assert res.code == 1000
    ev = gateway.close_event(addr)
    assert (ev["messages_in"], ev["messages_out"]) == (1, 2)
    assert ev["bytes_out"] == 10
