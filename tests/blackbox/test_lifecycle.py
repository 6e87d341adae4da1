"""Gateways with their own config: SIGTERM drain, close_codes overrides,
max_connections, idle timeout, the close-handshake timer."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest
import websockets

import rawws
from conftest import FIXTURE_TIMEOUTS, addr_of, client, run


def test_sigterm_drains_with_1001_and_exits_0(make_gateway):
    gw = make_gateway()

    async def main():
        async with client(gw, "/echo") as a, client(gw, "/up/echo") as b:
            for ws in (a, b):
                await ws.send("before")
                assert await asyncio.wait_for(ws.recv(), 10) == "before"
            gw.terminate()
            results = []
            for ws in (a, b):
                with pytest.raises(websockets.ConnectionClosed) as ei:
                    await asyncio.wait_for(ws.recv(), 15)
                results.append((addr_of(ws), ei.value.rcvd))
            return results

    results = run(main())
    rc = gw.wait_exit()
    assert rc == 0, f"exit status {rc} after SIGTERM"
    for addr, rcvd in results:
        assert rcvd is not None, "client must get a close frame on shutdown"
        assert rcvd.code == 1001
        evs = gw.close_events(addr)
        assert len(evs) == 1, evs
        ev = evs[0]
        assert ev["cause"] == "shutdown"
        assert ev["code"] == 1001
        assert ev["initiator"] == "gateway"
        assert ev["was_clean"] is True
        assert (ev["messages_in"], ev["messages_out"]) == (1, 1)
    assert not gw.bad_lines


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_right_after_listening_exits_0(make_gateway, attempt):
    """SIGTERM as soon as `listening` is logged: the gateway is serving, so
    it must drain and exit 0 (not die of the signal, not ignore it)."""
    gw = make_gateway()
    gw.terminate()
    try:
        # no connection to drain: the exit follows at once; 15 s is only a bound
        rc = gw.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        gw.kill("it ignored a SIGTERM sent right after `listening`")
        pytest.fail("wsgate ignored a SIGTERM sent right after it logged `listening` (killed after 15 s); "
                    f"log: {gw.raw_lines}")
    assert rc == 0, f"exit status {rc}; log: {gw.raw_lines}"


def test_shutdown_close_code_1012(make_gateway):
    gw = make_gateway(shutdown={"drain_timeout_ms": 10000, "close_code": 1012})

    async def main():
        async with client(gw, "/echo") as ws:
            gw.terminate()
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), 15)
            return addr_of(ws), ei.value.rcvd

    addr, rcvd = run(main())
    assert gw.wait_exit() == 0
    assert rcvd is not None and rcvd.code == 1012
    (ev,) = gw.close_events(addr)
    assert (ev["cause"], ev["code"]) == ("shutdown", 1012)


@pytest.fixture(scope="module")
def override_gw(upstreams, tmp_path_factory):
    from conftest import Gateway, base_config

    cfg = base_config(upstreams)
    cfg["close_codes"] = {
        "upstream_unreachable": 1011,
        "upstream_reset": 1014,
        "upstream_handshake_rejected": 1006,
        "client_protocol_error": 4002,
    }
    gw = Gateway(cfg, tmp_path_factory.mktemp("override"), "override")
    yield gw
    gw.check_finish()


async def closed_after(gw, path, send=None):
    async with client(gw, path) as ws:
        if send is not None:
            await ws.send(send)
        with pytest.raises(websockets.ConnectionClosed) as ei:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        return addr_of(ws), ei.value.rcvd


def test_close_codes_override_unreachable(override_gw):
    addr, rcvd = run(closed_after(override_gw, "/refused"))
    assert rcvd is not None and rcvd.code == 1011
    ev = override_gw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["was_clean"]) == ("upstream_unreachable", 1011, True)


def test_close_codes_override_reset_sends_close_frame(override_gw):
    addr, rcvd = run(closed_after(override_gw, "/reset", send="first"))
    assert rcvd is not None, "with upstream_reset: 1014 the client must get a close frame"
    assert rcvd.code == 1014
    ev = override_gw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["was_clean"]) == ("upstream_reset", 1014, True)


def test_close_codes_override_1006_drops_tcp(override_gw):
    addr, rcvd = run(closed_after(override_gw, "/reject403"))
    assert rcvd is None, f"code 1006 means: drop TCP without a close frame; got {rcvd}"
    ev = override_gw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["was_clean"]) == ("upstream_handshake_rejected", 1006, False)
    assert ev["upstream_status"] == 403


def test_close_codes_override_client_protocol_error(override_gw):
    async def main():
        ws = await rawws.RawWS.connect(override_gw.port, "/echo")
        ws.send(rawws.frame(rawws.OP_TEXT, b"x", mask=False))
        res = await ws.expect_close()
        ws.abort()
        return ws.local_addr, res

    addr, res = run(main())
    assert res.code == 4002
    ev = override_gw.close_event(addr)
    assert (ev["cause"], ev["code"]) == ("client_protocol_error", 4002)


def test_max_connections_overloaded_1013(make_gateway):
    gw = make_gateway(limits={"max_connections": 1})

    async def main():
        async with client(gw, "/echo") as first:
            await first.send("1")
            assert await asyncio.wait_for(first.recv(), 10) == "1"
            # over the limit: accepted, then closed 1013
            async with client(gw, "/echo") as second:
                with pytest.raises(websockets.ConnectionClosed) as ei:
                    await asyncio.wait_for(second.recv(), 10)
                second_addr = addr_of(second)
            await first.send("2")
            assert await asyncio.wait_for(first.recv(), 10) == "2"
            return second_addr, ei.value.rcvd

    addr, rcvd = run(main())
    assert rcvd is not None and rcvd.code == 1013
    ev = gw.wait_event(addr, "websocket_close", 10)
    assert (ev["cause"], ev["code"], ev["initiator"], ev["was_clean"]) == ("overloaded", 1013, "gateway", True)


def test_idle_timeout_1001(make_gateway):
    """The client never sends anything after its upgrade, so only the idle
    timer can end the connection (a message exchanged first would race the
    300 ms timer on a loaded machine)."""
    gw = make_gateway(limits={"idle_timeout_ms": 300})

    async def main():
        async with client(gw, "/echo") as ws:
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), 15)
            return addr_of(ws), ei.value.rcvd

    addr, rcvd = run(main())
    assert rcvd is not None and rcvd.code == 1001
    ev = gw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["initiator"]) == ("idle_timeout", 1001, "gateway")
    assert ev["duration_ms"] >= 300
    assert (ev["messages_in"], ev["messages_out"]) == (0, 0)


def test_close_handshake_timer_ends_tcp_of_a_silent_client(make_gateway):
    """The gateway closes (upstream refused → 1014) and the client never
    answers the close frame: after close_handshake_ms the gateway ends the TCP
    connection itself, and the connection is logged once."""
    budget_ms = 1000
    gw = make_gateway(timeouts={**FIXTURE_TIMEOUTS, "close_handshake_ms": budget_ms})

    async def main():
        t0 = time.monotonic()
        ws = await rawws.RawWS.connect(gw.port, "/refused")
        res = await ws.expect_close(timeout=15, reply=False)  # the close frame, then the gateway's end of TCP
        elapsed = time.monotonic() - t0
        ws.abort()
        return ws.local_addr, res, elapsed

    addr, res, elapsed = run(main())
    assert (res.code, res.reason) == (1014, "upstream unreachable")
    assert res.tcp_closed, "the gateway must end TCP itself once the close timer fires"
    assert elapsed >= budget_ms / 1000 * 0.9, f"TCP ended {elapsed:.3f}s after connecting, before the close timer"
    ev = gw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["initiator"]) == ("upstream_unreachable", 1014, "gateway")
