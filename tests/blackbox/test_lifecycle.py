"""Gateways with their own config: SIGTERM drain, close_codes overrides,
max_connections, idle timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest
import websockets

import rawws
from conftest import addr_of, client, run


def test_sigterm_drains_with_1001_and_exits_0(make_gateway):
    gw = make_gateway()

    async def main():
        async with client(gw, "/echo") as a, client(gw, "/up/echo") as b:
            for ws in (a, b):
                await ws.send("before")
                assert await asyncio.wait_for(ws.recv(), 5) == "before"
            gw.terminate()
            results = []
            for ws in (a, b):
                with pytest.raises(websockets.ConnectionClosed) as ei:
                    await asyncio.wait_for(ws.recv(), 8)
                results.append((addr_of(ws), ei.value.rcvd))
            return results

    results = run(main())
    rc = gw.wait_exit(15)
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
        rc = gw.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(gw.pid, signal.SIGKILL)
        gw.proc.wait(timeout=5)
        pytest.fail("wsgate ignored a SIGTERM sent right after it logged `listening` (killed after 5 s); "
                    f"log: {gw.raw_lines}")
    assert rc == 0, f"exit status {rc}; log: {gw.raw_lines}"


def test_shutdown_close_code_1012(make_gateway):
    gw = make_gateway(shutdown={"drain_timeout_ms": 3000, "close_code": 1012})

    async def main():
        async with client(gw, "/echo") as ws:
            gw.terminate()
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), 8)
            return addr_of(ws), ei.value.rcvd

    addr, rcvd = run(main())
    assert gw.wait_exit(15) == 0
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
    gw.stop()


async def closed_after(gw, path, send=None):
    async with client(gw, path) as ws:
        if send is not None:
            await ws.send(send)
        with pytest.raises(websockets.ConnectionClosed) as ei:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
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
            assert await asyncio.wait_for(first.recv(), 5) == "1"
            # over the limit: accepted, then closed 1013
            async with client(gw, "/echo") as second:
                with pytest.raises(websockets.ConnectionClosed) as ei:
                    await asyncio.wait_for(second.recv(), 5)
                second_addr = addr_of(second)
            await first.send("2")
            assert await asyncio.wait_for(first.recv(), 5) == "2"
            return second_addr, ei.value.rcvd

    addr, rcvd = run(main())
    assert rcvd is not None and rcvd.code == 1013
    ev = gw.wait_event(addr, "websocket_close", 5)
    assert (ev["cause"], ev["code"], ev["initiator"], ev["was_clean"]) == ("overloaded", 1013, "gateway", True)


def test_idle_timeout_1001(make_gateway):
    gw = make_gateway(limits={"idle_timeout_ms": 300})

    async def main():
        async with client(gw, "/echo") as ws:
            await ws.send("x")
            await asyncio.wait_for(ws.recv(), 5)
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), 5)
            return addr_of(ws), ei.value.rcvd

    addr, rcvd = run(main())
    assert rcvd is not None and rcvd.code == 1001
    ev = gw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["initiator"]) == ("idle_timeout", 1001, "gateway")
    assert ev["duration_ms"] >= 300
