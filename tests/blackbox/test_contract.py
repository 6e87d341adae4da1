"""Contract promises of the README that no other black-box test would catch
breaking: the timers (handshake, upstream connect, close handshake, drain,
idle in both directions), SIGINT, the config path and environment overrides,
log format and level, upstream protocol errors, DNS failures, the HTTP hooks,
HTTP response mapping, "stop accepting" during the drain and the latency
histograms.

Each timer under test is short and faces a peer that never answers; every
other timer is generous, so a loaded machine cannot flip a verdict."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import websockets
from websockets.protocol import State

import rawws
from conftest import Gateway, addr_of, client, run
from contract_support import (
    Launched,
    Servers,
    SynDropPeer,
    admin_port,
    closed_port,
    free_port,
    http_get,
    poll,
    sample,
    write_config,
)
from rawws import OP_CLOSE, OP_CONT, OP_TEXT, frame

GENEROUS = {"upstream_connect_ms": 10000, "upstream_handshake_ms": 10000, "http_request_ms": 10000,
            "close_handshake_ms": 5000}
LOGGER_INFO_EVENTS = {"listening", "admin_listening", "file_limit"}
LOGGER_NOTICE_EVENTS = {"draining", "stopped"}


# --------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def servers():
    s = Servers()
    yield s
    s.stop()


def echo_route() -> dict:
    return {"path": "/echo", "upstream": "builtin:echo"}


def own_ws_route(servers: Servers) -> dict:
    return {"path": "/own/*", "upstream": f"ws://127.0.0.1:{servers.ws_port}/own"}


def base(**over) -> dict:
    cfg = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "timeouts": dict(GENEROUS),
        "log": {"format": "json", "level": "info"},
        "routes": [echo_route()],
    }
    cfg.update(over)
    return cfg


@pytest.fixture
def launch(tmp_path):
    """launch(name, config=..., args=..., cwd=..., env=..., ready=...): a
    wsgate process with its own command line. Afterwards each is stopped by
    PID and must have exited 0 with well-formed logs."""
    started: list[Launched] = []

    def _launch(name, *, config, args, cwd=None, env=None, ready="json") -> Launched:
        p = Launched(tmp_path, name, args=args, cwd=cwd or tmp_path, config=config, env_extra=env, ready=ready)
        fmt = (env or {}).get("WSGATE_LOG_FORMAT") or config.get("log", {}).get("format", "json")
        p.json_log = fmt == "json"
        started.append(p)
        return p

    yield _launch
    problems = []
    for p in started:
        p.stop()
        problems += p.problems()
    assert not problems, "; ".join(problems)


async def echo_once(gw, path="/echo", msg="ping") -> str:
    """One echo round trip and a normal close; returns the client address."""
    async with client(gw, path) as ws:
        await ws.send(msg)
        assert await asyncio.wait_for(ws.recv(), 5) == msg
        return addr_of(ws)


async def closed_by_gateway(gw, path, send=None, headers=None, recv_timeout=12.0):
    """Opens a connection (upgrade must succeed), optionally sends one
    message, and waits for the gateway to close it: (addr, close frame)."""
    kw = {"additional_headers": headers} if headers else {}
    async with client(gw, path, open_timeout=15, **kw) as ws:
        addr = addr_of(ws)
        if send is not None:
            await ws.send(send)
        with pytest.raises(websockets.ConnectionClosed) as ei:
            while True:
                await asyncio.wait_for(ws.recv(), recv_timeout)
    return addr, ei.value.rcvd


async def wait_eof(reader: asyncio.StreamReader, timeout: float) -> None:
    """Read until the peer closes TCP (EOF or reset); TimeoutError if not."""
    async def _drain():
        try:
            while await reader.read(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
    await asyncio.wait_for(_drain(), timeout)


# --------------------------------------------------------------------------
# 1. limits.handshake_timeout_ms


@pytest.mark.parametrize("behaviour", ["sends_nothing", "partial_request", "trickles_headers"])
def test_handshake_timeout_drops_slow_client_with_408(make_gateway, behaviour):
    """A client that opens TCP and never finishes its upgrade request is
    dropped after handshake_timeout_ms and logged as websocket_reject 408 —
    also when it keeps trickling header bytes (slowloris)."""
    budget_ms = 500
    gw = make_gateway(limits={"handshake_timeout_ms": budget_ms}, timeouts=dict(GENEROUS))

    async def main():
        mark = gw.mark()
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 5)
        sock = writer.get_extra_info("sockname")
        addr = f"{sock[0]}:{sock[1]}"
        gw.note_open(addr, mark)
        t0 = time.monotonic()
        trickler = None
        if behaviour == "partial_request":
            writer.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
            await writer.drain()
        elif behaviour == "trickles_headers":
            async def trickle():
                writer.write(b"GET /echo HTTP/1.1\r\n")
                for i in range(40):  # at most 6 s of one header line every 150 ms
                    await asyncio.sleep(0.15)
                    writer.write(f"X-Slow-{i}: x\r\n".encode())
                    await writer.drain()
            trickler = asyncio.ensure_future(trickle())
        got = b""
        try:
            async def read_all():
                nonlocal got
                try:
                    while chunk := await reader.read(65536):
                        got += chunk
                except (ConnectionResetError, BrokenPipeError):
                    pass
            await asyncio.wait_for(read_all(), 8)
        except asyncio.TimeoutError:
            pytest.fail(f"the gateway kept an unfinished upgrade request open for 8 s (budget {budget_ms} ms)")
        finally:
            elapsed = time.monotonic() - t0
            if trickler is not None:
                trickler.cancel()
                try:
                    await trickler
                except (asyncio.CancelledError, Exception):
                    pass
            writer.transport.abort()
        return addr, got, elapsed

    addr, got, elapsed = run(main())
    assert b" 101 " not in got
    assert elapsed >= budget_ms / 1000 * 0.8, f"dropped after {elapsed:.3f}s, before the {budget_ms} ms budget"
    assert elapsed < 5, f"dropped only after {elapsed:.3f}s; budget {budget_ms} ms"
    ev = gw.reject_event(addr)
    assert ev["status"] == 408, ev
    gw.barrier()
    assert gw.close_events(addr) == []


# --------------------------------------------------------------------------
# 2. timeouts.upstream_connect_ms


@pytest.fixture
def syn_drop():
    peer = SynDropPeer()
    if not peer.full:
        peer.close()
        pytest.fail("could not fill the accept queue of a backlog-0 listener (SYNs were not dropped)")
    yield peer
    peer.close()


def test_upstream_connect_timeout_1014(make_gateway, syn_drop):
    """A ws upstream whose TCP connect never completes (its SYNs are dropped):
    after upstream_connect_ms the client gets 1014 `upstream timeout`."""
    budget_ms = 700
    gw = make_gateway(timeouts=dict(GENEROUS, upstream_connect_ms=budget_ms),
                      routes=[echo_route(), {"path": "/syndrop", "upstream": f"ws://127.0.0.1:{syn_drop.port}/x"}])
    addr, rcvd = run(closed_by_gateway(gw, "/syndrop"))
    assert rcvd is not None, "the client must get a close frame"
    assert (rcvd.code, rcvd.reason) == (1014, "upstream timeout")
    ev = gw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["initiator"], ev["was_clean"]) == ("upstream_timeout", 1014, "gateway", True)
    # The connect timer decided, not upstream_handshake_ms (10 s).
    assert budget_ms * 0.8 <= ev["duration_ms"] < 5000, ev


# --------------------------------------------------------------------------
# 3. timeouts.close_handshake_ms -> was_clean false


def test_unanswered_close_is_aborted_after_close_handshake_ms(make_gateway):
    """The gateway closes 1009; the client never answers nor closes. After
    close_handshake_ms the gateway closes TCP and logs was_clean: false."""
    budget_ms = 700
    gw = make_gateway(limits={"max_message_bytes": 1024}, timeouts=dict(GENEROUS, close_handshake_ms=budget_ms))

    async def main():
        ws = await rawws.RawWS.connect(gw.port, "/echo")
        # Two fragments of 600 bytes: each frame is fine, the message is over 1024.
        ws.send(frame(OP_TEXT, b"a" * 600, fin=False))
        ws.send(frame(OP_CONT, b"a" * 600, fin=True))
        await ws.drain()
        while True:
            f = await ws.read_frame(5)
            if f.opcode == OP_CLOSE:
                break
        t0 = time.monotonic()
        try:
            await wait_eof(ws.reader, 8)
        except asyncio.TimeoutError:
            pytest.fail("the gateway never closed TCP after its unanswered close frame")
        elapsed = time.monotonic() - t0
        ws.abort()
        return ws.local_addr, f.close_code, elapsed

    addr, code, elapsed = run(main())
    assert code == 1009
    assert budget_ms / 1000 * 0.8 <= elapsed < 5, f"TCP closed {elapsed:.3f}s after the close frame; budget {budget_ms} ms"
    ev = gw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["initiator"]) == ("client_message_too_big", 1009, "gateway")
    assert ev["was_clean"] is False, f"the client never answered the close frame: {ev}"


# --------------------------------------------------------------------------
# 4. shutdown.drain_timeout_ms aborts the rest


async def drain_victim(gw):
    """A raw client that echoes once, then never answers the shutdown close."""
    ws = await rawws.RawWS.connect(gw.port, "/echo")
    await ws.send_frame(OP_TEXT, b"hi")
    assert (await ws.read_message())[:2] == (OP_TEXT, b"hi")
    t_sig = time.monotonic()
    gw.terminate()
    res = await ws.expect_close(timeout=5, reply=False)
    return ws, res, t_sig


def test_drain_timeout_drops_unanswering_client_and_exits_0(make_gateway):
    drain_ms = 1000
    gw = make_gateway(shutdown={"drain_timeout_ms": drain_ms, "close_code": 1001},
                      timeouts=dict(GENEROUS, close_handshake_ms=10000))

    async def main():
        ws, res, t_sig = await drain_victim(gw)
        rc = await asyncio.to_thread(gw.wait_exit, 15)
        took = time.monotonic() - t_sig
        ws.abort()
        return ws.local_addr, res, rc, took

    addr, res, rc, took = run(main())
    assert res.code == 1001, "the client must get shutdown.close_code first"
    assert rc == 0
    # The drain timer decided: not before it, and well before close_handshake_ms (10 s).
    assert drain_ms / 1000 * 0.9 <= took < 8, f"exited {took:.3f}s after SIGTERM; drain_timeout_ms={drain_ms}"
    evs = gw.close_events(addr)
    assert len(evs) == 1, evs
    ev = evs[0]
    assert (ev["cause"], ev["code"], ev["initiator"]) == ("shutdown", 1001, "gateway")
    assert ev["was_clean"] is False
    assert not gw.final_checks()


def test_drain_timeout_line_says_drain_timeout(make_gateway):
    """README, Graceful drain: 'after drain_timeout_ms whatever is still open
    is dropped (cause shutdown, error drain timeout, still one line each)'."""
    gw = make_gateway(shutdown={"drain_timeout_ms": 800, "close_code": 1001},
                      timeouts=dict(GENEROUS, close_handshake_ms=10000))

    async def main():
        ws, res, _ = await drain_victim(gw)
        rc = await asyncio.to_thread(gw.wait_exit, 15)
        ws.abort()
        return ws.local_addr, rc

    addr, rc = run(main())
    assert rc == 0
    (ev,) = gw.close_events(addr)
    assert ev["cause"] == "shutdown"
    assert ev["error"] == "drain timeout", ev


# --------------------------------------------------------------------------
# 5. the idle timer is reset by traffic in either direction


IDLE_MS = 900
TICK_S = 0.3  # IDLE_MS / 3
TICKS = 9     # 2.7 s of traffic: three idle periods


@pytest.fixture
def idle_gw(make_gateway, servers):
    return make_gateway(limits={"idle_timeout_ms": IDLE_MS}, timeouts=dict(GENEROUS),
                        routes=[echo_route(), own_ws_route(servers)])


def test_idle_timer_reset_by_client_traffic(idle_gw):
    """Client -> upstream traffic only (the upstream never sends)."""
    gw = idle_gw

    async def main():
        async with client(gw, "/own/sink") as ws:
            for i in range(TICKS):
                await asyncio.sleep(TICK_S)  # the traffic pattern itself
                await ws.send(f"keep {i}")
            assert ws.state is State.OPEN, "closed although the client sent every idle_timeout/3"
            t_last = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), IDLE_MS / 1000 + 5)
            return addr_of(ws), ei.value.rcvd, time.monotonic() - t_last

    addr, rcvd, quiet = run(main())
    assert rcvd is not None and (rcvd.code, rcvd.reason) == (1001, "idle timeout")
    assert quiet >= IDLE_MS / 1000 * 0.8
    ev = gw.close_event(addr)
    assert (ev["cause"], ev["code"]) == ("idle_timeout", 1001)
    assert (ev["messages_in"], ev["messages_out"]) == (TICKS, 0)
    assert ev["duration_ms"] >= TICKS * TICK_S * 1000


def test_idle_timer_reset_by_upstream_traffic(idle_gw):
    """Upstream -> client traffic only (the client never sends)."""
    gw = idle_gw

    async def main():
        async with client(gw, f"/own/push?interval_ms={int(TICK_S * 1000)}&count={TICKS}") as ws:
            for i in range(TICKS):
                try:
                    assert await asyncio.wait_for(ws.recv(), 5) == f"tick {i}"
                except websockets.ConnectionClosed as e:
                    pytest.fail(f"closed after {i} pushed messages although the upstream sent every "
                                f"idle_timeout/3: {e.rcvd}")
            t_last = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), IDLE_MS / 1000 + 5)
            return addr_of(ws), ei.value.rcvd, time.monotonic() - t_last

    addr, rcvd, quiet = run(main())
    assert rcvd is not None and (rcvd.code, rcvd.reason) == (1001, "idle timeout")
    assert quiet >= IDLE_MS / 1000 * 0.8
    ev = gw.close_event(addr)
    assert (ev["cause"], ev["code"]) == ("idle_timeout", 1001)
    assert (ev["messages_in"], ev["messages_out"]) == (0, TICKS)
    assert ev["duration_ms"] >= TICKS * TICK_S * 1000


# --------------------------------------------------------------------------
# 6. SIGINT drains like SIGTERM


def test_sigint_starts_the_graceful_drain(launch, tmp_path):
    cfg = base(shutdown={"drain_timeout_ms": 5000, "close_code": 1012})
    f = write_config(tmp_path / "sigint.yaml", cfg)
    gw = launch("sigint", config=cfg, args=["--config", str(f)])

    async def main():
        async with client(gw, "/echo") as ws:
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), 5) == "x"
            gw.send_signal(signal.SIGINT)
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), 8)
            return addr_of(ws), ei.value.rcvd

    addr, rcvd = run(main())
    assert rcvd is not None and rcvd.code == 1012, f"SIGINT must close clients with shutdown.close_code: {rcvd}"
    assert gw.wait_exit(15) == 0
    (ev,) = gw.close_events(addr)
    assert (ev["cause"], ev["code"], ev["was_clean"]) == ("shutdown", 1012, True)
    assert [l for l in gw.snapshot() if l.get("event") == "draining"], "no `draining` line"


# --------------------------------------------------------------------------
# 7. the default config path and $WSGATE_CONFIG


def cfg_with_route(path: str) -> dict:
    return base(routes=[{"path": path, "upstream": "builtin:echo"}])


def test_default_config_path_relative_to_cwd(launch, tmp_path):
    cfg = cfg_with_route("/from-default")
    write_config(tmp_path / "dflt" / "config" / "wsgate.yaml", cfg)
    gw = launch("dflt", config=cfg, args=[], cwd=tmp_path / "dflt")
    run(echo_once(gw, "/from-default"))


def test_wsgate_config_env_used_without_config_flag(launch, tmp_path):
    cwd = tmp_path / "envcfg"
    write_config(cwd / "config" / "wsgate.yaml", cfg_with_route("/from-default"))
    env_cfg = cfg_with_route("/from-env")
    env_file = write_config(tmp_path / "elsewhere" / "env.yaml", env_cfg)
    flag_cfg = cfg_with_route("/from-flag")
    flag_file = write_config(tmp_path / "elsewhere" / "flag.yaml", flag_cfg)

    gw = launch("envcfg", config=env_cfg, args=[], cwd=cwd, env={"WSGATE_CONFIG": str(env_file)})
    run(echo_once(gw, "/from-env"))
    res = run(rawws.http_request(gw.port, rawws.upgrade_request(gw.port, "/from-default")))
    assert res.status == 404, "$WSGATE_CONFIG must win over config/wsgate.yaml"

    # --config wins over $WSGATE_CONFIG.
    gw2 = launch("flagcfg", config=flag_cfg, args=["serve", "--config", str(flag_file)], cwd=cwd,
                 env={"WSGATE_CONFIG": str(env_file)})
    run(echo_once(gw2, "/from-flag"))
    res = run(rawws.http_request(gw2.port, rawws.upgrade_request(gw2.port, "/from-env")))
    assert res.status == 404


# --------------------------------------------------------------------------
# 8. WSGATE_* overrides on the real binary


def test_env_listen_port_override(launch, tmp_path):
    port = free_port()
    cfg = base()
    f = write_config(tmp_path / "lp.yaml", cfg)
    gw = launch("lp", config=cfg, args=["--config", str(f)], env={"WSGATE_LISTEN_PORT": str(port)})
    assert gw.port == port, f"listening on {gw.port}, WSGATE_LISTEN_PORT={port}"
    run(echo_once(gw))


def test_env_admin_port_override(launch, tmp_path):
    port = free_port()
    cfg = base()
    f = write_config(tmp_path / "ap.yaml", cfg)
    gw = launch("ap", config=cfg, args=["--config", str(f)], env={"WSGATE_ADMIN_PORT": str(port)})
    assert admin_port(gw) == port
    assert http_get(port, "/healthz") == (200, "ok\n")


def test_env_log_level_debug_override(launch, tmp_path):
    cfg = base()  # log.level: info in the file
    f = write_config(tmp_path / "dbg.yaml", cfg)
    gw = launch("dbg", config=cfg, args=["--config", str(f)], env={"WSGATE_LOG_LEVEL": "debug"})
    addr = run(echo_once(gw))
    gw.wait_close_event(addr)
    gw.wait_for(lambda l: l.get("level") == "debug", 5)


def test_env_log_level_error_override(launch, tmp_path):
    port = free_port()  # the `listening` line will be filtered out: a fixed port
    cfg = base(listen={"host": "127.0.0.1", "port": port})
    f = write_config(tmp_path / "err.yaml", cfg)
    gw = launch("err", config=cfg, args=["--config", str(f)], env={"WSGATE_LOG_LEVEL": "error"}, ready=port)
    run(echo_once(gw))
    gw.terminate()
    assert gw.wait_exit() == 0
    shown = [l for l in gw.snapshot() if l.get("event") in LOGGER_INFO_EVENTS | LOGGER_NOTICE_EVENTS]
    assert not shown, f"level error must hide info and notice lines: {shown}"


def test_env_log_format_text_override(launch, tmp_path):
    cfg = base()  # log.format: json in the file
    f = write_config(tmp_path / "txt.yaml", cfg)
    gw = launch("txt", config=cfg, args=["--config", str(f)], env={"WSGATE_LOG_FORMAT": "text"}, ready="text")
    run(echo_once(gw))
    gw.wait_raw(lambda t: "websocket_close" in t and "cause=client_closed" in t, 5)
    gw.terminate()
    assert gw.wait_exit() == 0
    assert gw.lines == [], f"format text must not print JSON lines: {gw.lines[:3]}"


# --------------------------------------------------------------------------
# 9. log.format / log.level from the config file


def test_log_text_format_and_debug_level_from_config(launch, tmp_path):
    cfg = base(log={"format": "text", "level": "debug"})
    f = write_config(tmp_path / "textdbg.yaml", cfg)
    gw = launch("textdbg", config=cfg, args=["--config", str(f)], ready="text")
    run(echo_once(gw))
    gw.wait_raw(lambda t: "websocket_close" in t and "cause=client_closed" in t and "code=1000" in t, 5)
    gw.wait_raw(lambda t: " DEBUG " in t, 5)
    gw.terminate()
    assert gw.wait_exit() == 0
    assert gw.lines == [], f"format text must not print JSON lines: {gw.lines[:3]}"
    assert any(" NOTICE draining" in t for t in gw.raw_snapshot())


def test_log_level_warning_from_config(launch, tmp_path):
    port = free_port()
    cfg = base(listen={"host": "127.0.0.1", "port": port}, log={"format": "json", "level": "warning"},
               routes=[echo_route(), {"path": "/insecure", "upstream": f"wss://127.0.0.1:{closed_port()}/x",
                                      "tls": {"insecure_skip_verify": True}}])
    f = write_config(tmp_path / "warn.yaml", cfg)
    gw = launch("warn", config=cfg, args=["--config", str(f)], ready=port)
    warn = gw.wait_for(lambda l: l.get("event") == "tls_verification_disabled", 5)
    assert warn["level"] == "warning"
    run(echo_once(gw))
    gw.terminate()
    assert gw.wait_exit() == 0
    shown = [l for l in gw.snapshot() if l.get("event") in LOGGER_INFO_EVENTS | LOGGER_NOTICE_EVENTS]
    assert not shown, f"level warning must hide info and notice lines: {shown}"


# --------------------------------------------------------------------------
# one shared gateway for 10-12, 14, 15, 17


@pytest.fixture(scope="module")
def cgw(servers, tmp_path_factory):
    b = f"http://127.0.0.1:{servers.http_port}"
    raw = f"ws://127.0.0.1:{servers.raw_port}"
    cfg = base(
        limits={"max_message_bytes": 65536},
        routes=[
            echo_route(),
            own_ws_route(servers),
            {"path": "/bad/masked", "upstream": f"{raw}/masked"},
            {"path": "/bad/opcode3", "upstream": f"{raw}/opcode3"},
            {"path": "/bad/accept", "upstream": f"{raw}/badaccept"},
            {"path": "/dns", "upstream": "ws://no-such-host.invalid/x"},
            {"path": "/h/echo", "upstream": f"{b}/echo"},
            {"path": "/h/connect-refused", "upstream": f"{b}/echo",
             "http": {"connect_url": f"http://127.0.0.1:{closed_port()}/connect"}},
            {"path": "/h/connect-headers", "upstream": f"{b}/echo", "forward_headers": ["authorization"],
             "http": {"connect_url": f"{b}/connect"}},
            {"path": "/h/json-not-utf8", "upstream": f"{b}/json-not-utf8"},
            {"path": "/h/status", "upstream": f"{b}/status"},
        ])
    gw = Gateway(cfg, tmp_path_factory.mktemp("contract"), "contract")
    yield gw
    assert gw.stop() == 0
    assert not gw.final_checks()


# 10. upstream_protocol_error


@pytest.mark.parametrize("path", ["/bad/masked", "/bad/opcode3"])
def test_invalid_frame_from_ws_upstream_is_upstream_protocol_error(cgw, path):
    addr, rcvd = run(closed_by_gateway(cgw, path, send="hello"))
    assert rcvd is not None and rcvd.code == 1014, rcvd
    ev = cgw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["initiator"]) == ("upstream_protocol_error", 1014, "gateway")
    assert ev["messages_out"] == 0, "the invalid frame must not reach the client"


def test_invalid_upgrade_response_from_ws_upstream_is_upstream_protocol_error(cgw):
    """101 with a Sec-WebSocket-Accept that does not match the key."""
    addr, rcvd = run(closed_by_gateway(cgw, "/bad/accept"))
    assert rcvd is not None and rcvd.code == 1014, rcvd
    ev = cgw.close_event(addr)
    assert (ev["cause"], ev["code"]) == ("upstream_protocol_error", 1014)


# 11. ws:// DNS failure


def test_ws_upstream_dns_failure_is_unreachable(cgw):
    addr, rcvd = run(closed_by_gateway(cgw, "/dns"))
    assert rcvd is not None and (rcvd.code, rcvd.reason) == (1014, "upstream unreachable"), rcvd
    ev = cgw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["was_clean"]) == ("upstream_unreachable", 1014, True)
    assert ev["error"]


# 12. connect_url: transport failure; the same headers as message requests


def test_connect_url_refused_is_unreachable(cgw, servers):
    addr, rcvd = run(closed_by_gateway(cgw, "/h/connect-refused"))
    assert rcvd is not None and (rcvd.code, rcvd.reason) == (1014, "upstream unreachable"), rcvd
    ev = cgw.close_event(addr)
    assert (ev["cause"], ev["code"]) == ("upstream_unreachable", 1014)
    assert servers.http_requests("/echo", ev["connection_id"]) == [], "no message may be relayed"


def test_connect_url_gets_the_same_headers_as_message_requests(cgw, servers):
    hdrs = {"Authorization": "Bearer c0nnect", "X-Forwarded-For": "203.0.113.9", "Cookie": "not=listed"}

    async def main():
        async with client(cgw, "/h/connect-headers", additional_headers=hdrs) as ws:
            await ws.send("m1")
            assert await asyncio.wait_for(ws.recv(), 5) == "m1"
            return addr_of(ws)

    addr = run(main())
    cid = cgw.close_event(addr)["connection_id"]
    (hook,) = servers.http_requests("/connect", cid)
    (msg,) = servers.http_requests("/echo", cid)
    assert hook["method"] == "POST" and hook["body"] == b""
    for h in (hook, msg):
        assert h["headers"].get("x-wsgate-connection-id") == cid
        # The client's own X-Forwarded-For is replaced: 127.0.0.1 is not a trusted proxy.
        assert h["headers"].get("x-forwarded-for") == "127.0.0.1"
        assert h["headers"].get("authorization") == "Bearer c0nnect"
        assert "cookie" not in h["headers"]


# 14. application/json that is not UTF-8 -> binary


def test_json_body_not_utf8_becomes_binary(cgw):
    async def main():
        async with client(cgw, "/h/json-not-utf8") as ws:
            await ws.send("q")
            return await asyncio.wait_for(ws.recv(), 5)

    got = run(main())
    assert isinstance(got, bytes), f"expected a binary message, got text {got!r}"
    assert got == b'{"a":"\xff\xfe"}'


# 15. other 2xx statuses


def test_other_2xx_bodies_are_delivered_empty_ones_are_not(cgw):
    async def main():
        async with client(cgw, "/h/status") as ws:
            for m in ["201:created", "202:", "202:accepted", "201:", "203:nonauth", "200:end"]:
                await ws.send(m)
            # Replies come in message order: the empty 2xx bodies produced nothing.
            return [await asyncio.wait_for(ws.recv(), 5) for _ in range(4)], addr_of(ws)

    got, addr = run(main())
    assert got == ["created", "accepted", "nonauth", "end"]
    ev = cgw.close_event(addr)
    assert (ev["cause"], ev["messages_in"], ev["messages_out"]) == ("client_closed", 6, 4)


# 17. the latency histograms observe


def test_latency_histograms_count_observations(cgw):
    port = admin_port(cgw)

    def counts():
        text = http_get(port, "/metrics")[1]
        return (sample(text, "wsgate_upstream_connect_seconds_count"),
                sample(text, "wsgate_http_upstream_request_seconds_count"))

    connect0, http0 = counts()
    assert connect0 is not None and http0 is not None, "both histograms must be exported"

    async def ws_conn():
        async with client(cgw, "/own/sink") as ws:
            await ws.send("x")
    run(ws_conn())
    grown = poll(lambda: counts()[0] > connect0, 5)
    assert grown, f"wsgate_upstream_connect_seconds_count stayed {connect0} after a ws upstream connection"

    http1 = counts()[1]
    run(echo_once(cgw, "/h/echo", "over http"))
    grown = poll(lambda: counts()[1] > http1, 5)
    assert grown, f"wsgate_http_upstream_request_seconds_count stayed {http1} after an HTTP upstream message"


# --------------------------------------------------------------------------
# 13. disconnect_url failure: one warning, no retry


def test_disconnect_url_failure_warns_once_and_is_not_retried(make_gateway, servers):
    b = f"http://127.0.0.1:{servers.http_port}"
    gw = make_gateway(timeouts=dict(GENEROUS), routes=[
        echo_route(),
        {"path": "/h/hooked", "upstream": f"{b}/echo", "http": {"disconnect_url": f"{b}/fail500"}}])
    addr = run(echo_once(gw, "/h/hooked", "bye soon"))
    cid = gw.close_event(addr)["connection_id"]
    warn = gw.wait_for(lambda l: l.get("event") == "disconnect_hook_failed" and l.get("connection_id") == cid, 10)
    assert warn["level"] == "warning"
    hits = lambda: len(servers.http_requests("/fail500", cid))  # noqa: E731
    assert hits() == 1
    retried = poll(lambda: hits() > 1, 1.5)  # bounded watch for a retry
    assert not retried, f"disconnect_url was retried: {hits()} requests"
    assert gw.stop() == 0
    assert hits() == 1
    warnings = [l for l in gw.snapshot() if l.get("level") == "warning" and l.get("connection_id") == cid]
    assert len(warnings) == 1, warnings


# --------------------------------------------------------------------------
# 16. stop accepting during the drain


async def try_new_upgrade(port: int):
    """A new connection to the listen port: 'refused', 'reset', 'no answer',
    or the bytes the gateway answered (b'' = closed without an answer)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
    except (ConnectionRefusedError, OSError):
        return "refused"
    except asyncio.TimeoutError:
        return "no answer"
    try:
        writer.write(("\r\n".join(rawws.upgrade_request(port, "/echo")) + "\r\n\r\n").encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 3)
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except asyncio.TimeoutError:
        return "no answer"
    finally:
        writer.transport.abort()


def status_or_none(port: int, path: str) -> int | None:
    try:
        return http_get(port, path, timeout=3)[0]
    except OSError:
        return None


def test_draining_gateway_stops_accepting(make_gateway):
    gw = make_gateway(shutdown={"drain_timeout_ms": 10000, "close_code": 1001},
                      timeouts=dict(GENEROUS, close_handshake_ms=10000))
    aport = admin_port(gw)
    assert run(try_new_upgrade(gw.port))[:12] == b"HTTP/1.1 101"  # accepting before the drain

    async def main():
        ws = await rawws.RawWS.connect(gw.port, "/echo")
        gw.terminate()
        f = await ws.read_frame(5)  # the shutdown close: the drain is under way
        assert f.opcode == OP_CLOSE and f.close_code == 1001
        ready = await asyncio.to_thread(poll, lambda: status_or_none(aport, "/readyz") == 503, 5)
        new = await try_new_upgrade(gw.port)
        # Let the drain finish: answer the close.
        await ws.send_frame(OP_CLOSE, f.payload[:2])
        await wait_eof(ws.reader, 5)
        ws.close_tcp()
        return ws.local_addr, ready, new

    addr, ready, new = run(main())
    assert ready, "/readyz must answer 503 while draining"
    assert not (isinstance(new, bytes) and b" 101 " in new), f"a new upgrade was accepted during the drain: {new!r}"
    assert gw.wait_exit(15) == 0
    (ev,) = gw.close_events(addr)
    assert (ev["cause"], ev["code"], ev["was_clean"]) == ("shutdown", 1001, True)
