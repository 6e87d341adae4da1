"""`shutdown.spread_ms`: a drain's closes spread over a window, so that the
clients of an instance that goes away do not all reconnect at once."""

from __future__ import annotations

import asyncio
import signal
import time

import websockets

from conftest import client, run


def close_times(gw, n: int) -> list[float]:
    """Opens n echo connections, sends SIGTERM, returns when (seconds after
    the signal) each client received its close frame, sorted."""
    async def main():
        conns = []
        for _ in range(n):
            conns.append(await client(gw, "/echo").__aenter__())
        times = []

        async def wait(ws):
            try:
                await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed as e:
                assert e.rcvd is not None and e.rcvd.code == 1001, e
                times.append(time.monotonic() - start)

        start = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        await asyncio.gather(*(wait(ws) for ws in conns))
        return sorted(times)

    return run(main(), timeout=60)


def test_closes_are_spread_over_the_window(make_gateway):
    gw = make_gateway(shutdown={"drain_timeout_ms": 10000, "close_code": 1001, "spread_ms": 2000})
    times = close_times(gw, 200)
    assert len(times) == 200
    # Spread, not bunched: the closes cover most of the window, and each
    # quarter of it holds a fair share (uniform: 50 each).
    assert times[-1] - times[0] > 1.5, (times[0], times[-1])
    for q in range(4):
        share = sum(1 for t in times if q * 0.5 <= t - times[0] < (q + 1) * 0.5)
        assert 25 <= share <= 80, f"quarter {q}: {share} closes"
    assert gw.wait_exit(20) == 0
    lines = [l for l in gw.snapshot() if l.get("event") == "websocket_close" and l.get("cause") == "shutdown"]
    assert len(lines) == 200


def test_without_spread_every_close_goes_at_once(make_gateway):
    gw = make_gateway(shutdown={"drain_timeout_ms": 10000, "close_code": 1001})
    times = close_times(gw, 50)
    assert times[-1] - times[0] < 1.0, (times[0], times[-1])
    assert gw.wait_exit(20) == 0
