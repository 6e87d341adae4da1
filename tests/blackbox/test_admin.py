"""The admin listener: /healthz, /readyz (503 while draining), /metrics in the
Prometheus text format with bounded labels; the file-descriptor limit log."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request

import rawws
from conftest import FIXTURE_TIMEOUTS, client, addr_of, run


def admin_port(gw) -> int:
    return int(gw.wait_for(lambda l: l.get("event") == "admin_listening")["port"])


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def wait_metrics(port: int, pred, what: str, timeout: float = 10.0) -> str:
    """Scrape /metrics until pred(text) holds (bounded polling), return the text."""
    deadline = time.monotonic() + timeout
    while True:
        text = get(port, "/metrics")[1]
        if pred(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics never showed {what} within {timeout}s:\n{text}")
        time.sleep(0.05)


def metric(text: str, name: str, **labels) -> float | None:
    """The value of one sample, matching the given labels exactly."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if found == {k: str(v) for k, v in labels.items()}:
            return float(m.group(4))
    return None


def test_health_and_readiness(gateway):
    port = admin_port(gateway)
    assert get(port, "/healthz")[:2] == (200, "ok\n")
    assert get(port, "/readyz")[:2] == (200, "ready\n")
    assert get(port, "/nope")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405


def test_metrics_count_connections_messages_and_closes(make_gateway):
    gw = make_gateway()
    port = admin_port(gw)
    before = get(port, "/metrics")[1]
    assert metric(before, "wsgate_connections_active") == 0

    async def go():
        async with client(gw, "/echo") as ws:
            for m in ["a", "bb", "ccc"]:
                await ws.send(m)
                await ws.recv()
            during = get(port, "/metrics")[1]
            await ws.close(4001, "bye")
            return addr_of(ws), during
    addr, during = run(go())
    assert metric(during, "wsgate_connections_active") == 1
    gw.close_event(addr)
    # A connection's counters are updated right after its line is written:
    # wait for the gauge instead of assuming the scrape comes late enough.
    wait_metrics(port, lambda t: metric(t, "wsgate_connections_active") == 0, "no active connection")
    status, text, headers = get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert metric(text, "wsgate_connections_active") == 0
    # The barrier connection of close_event() counts too: at least ours.
    assert metric(text, "wsgate_connections_total", route="/echo") >= 2
    # A code the client chose is bucketed (4001 -> 4xxx): clients cannot create series.
    assert metric(text, "wsgate_close_events_total", code="4xxx", cause="client_closed", route="/echo") == 1
    assert metric(text, "wsgate_messages_total", direction="in") >= 3
    assert metric(text, "wsgate_messages_total", direction="out") >= 3
    assert metric(text, "wsgate_bytes_total", direction="in") >= 6
    assert "# TYPE wsgate_upstream_connect_seconds histogram" in text
    assert "# TYPE wsgate_http_upstream_request_seconds histogram" in text


def test_failed_upstream_counted_with_code_and_cause(make_gateway):
    gw = make_gateway()
    port = admin_port(gw)

    async def go():
        async with client(gw, "/refused") as ws:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except Exception:
                pass
            return addr_of(ws)
    gw.close_event(run(go()))
    text = wait_metrics(port, lambda t: metric(t, "wsgate_connections_active") == 0, "no active connection")
    assert metric(text, "wsgate_close_events_total", code=1014, cause="upstream_unreachable", route="/refused") == 1


def test_labels_never_come_from_clients(make_gateway):
    gw = make_gateway()
    port = admin_port(gw)

    async def go():
        for path in ["/evil_label_x", "/chat/evil_suffix_y?evil_query_z=1"]:
            try:
                async with client(gw, path) as ws:
                    await ws.send("x")
                    await asyncio.wait_for(ws.recv(), 10)
            except Exception:
                pass
    run(go())
    # Wait until both requests are in: the reject is logged, and the prefix
    # route's connection is counted and closed.
    gw.wait_for(lambda l: l.get("event") == "websocket_reject" and "evil_label_x" in str(l.get("path")))
    gw.wait_for(lambda l: l.get("event") == "websocket_close" and l.get("route") == "/chat/*")
    text = wait_metrics(port, lambda t: metric(t, "wsgate_connections_total", route="/chat/*") == 1
                        and metric(t, "wsgate_connections_active") == 0, "the /chat/* connection counted and closed")
    for needle in ["evil_label_x", "evil_suffix_y", "evil_query_z"]:
        assert needle not in text
    # The prefix route is labelled with its configured path.
    assert metric(text, "wsgate_connections_total", route="/chat/*") == 1


def test_readyz_is_503_while_draining(make_gateway):
    # The client never answers the gateway's close: the close timer (2 s)
    # keeps the drain busy, and ends it long before the drain timeout.
    gw = make_gateway(timeouts={**FIXTURE_TIMEOUTS, "close_handshake_ms": 2000},
                      shutdown={"drain_timeout_ms": 10000, "close_code": 1001})
    port = admin_port(gw)

    async def go():
        ws = await rawws.RawWS.connect(gw.port, "/echo")
        gw.terminate()
        deadline = time.monotonic() + 10
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = await asyncio.to_thread(get, port, "/readyz")
            except Exception:
                seen = None
            if seen and seen[0] == 503:
                break
            await asyncio.sleep(0.05)
        res = await ws.expect_close(timeout=10, reply=False)
        return seen, res
    seen, res = run(go())
    assert seen is not None and seen[0] == 503 and seen[1] == "draining\n"
    assert res.code == 1001
    assert gw.wait_exit() == 0
    draining = [l for l in gw.snapshot() if l.get("event") == "draining"]
    assert len(draining) == 1


def test_file_limit_logged(gateway):
    line = gateway.wait_for(lambda l: l.get("event") == "file_limit")
    assert line["soft"] == line["hard"] or line["soft"] >= 1024
    assert line["soft"] >= line["soft_before"]


def event_loop_threads(pid: int) -> int:
    """SwiftNIO names its event-loop threads `NIO-ELT-<group>-#<n>`."""
    import os
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            names.append(f.read().strip())
    return sum(1 for n in names if n.startswith("NIO-ELT-"))


def test_workers_sets_the_number_of_event_loops(make_gateway):
    """`workers: N` (or WSGATE_WORKERS) runs N event loops, and the
    `listening` line says how many; `auto` is the cores available."""
    import os
    for gw, want in ((make_gateway(workers=3), 3), (make_gateway(env={"WSGATE_WORKERS": "1"}), 1),
                     (make_gateway(), len(os.sched_getaffinity(0)))):
        line = gw.wait_for(lambda l: l.get("event") == "listening")
        assert line["workers"] == want
        assert event_loop_threads(gw.pid) == want
        async def echo():
            async with client(gw, "/echo") as ws:
                await ws.send("x")
                assert await asyncio.wait_for(ws.recv(), 10) == "x"
        run(echo())


def test_traffic_counters_move_while_a_connection_is_open(make_gateway):
    """The message counters are brought up to date at most once a second per
    open connection, not only at its close: a long-lived connection's
    traffic shows while it lasts."""
    gw = make_gateway()
    port = admin_port(gw)

    async def go():
        async with client(gw, "/echo") as ws:
            for round_ in range(3):
                await ws.send("tick")
                await ws.recv()
                await asyncio.sleep(0.6)
            await ws.send("last")
            await ws.recv()
            # Still open: at least the traffic of more than a second ago shows.
            text = wait_metrics(port, lambda t: (metric(t, "wsgate_messages_total", direction="in") or 0) >= 2,
                                "the open connection's messages")
            assert metric(text, "wsgate_connections_active") == 1
    run(go())
