"""End to end in headless Chromium: a real page opens a `WebSocket` per case
through the real `wsgate` binary to real upstream servers on loopback, and
each case asserts that the browser's `CloseEvent` (`code`, `reason`,
`wasClean`) equals the gateway's `websocket_close` line for that connection
(`code`, `reason`, `was_clean`), and that both are what the close-code table
promises. From a run in which every case passed, the last test renders
docs/close-codes.md and fails if it differs from the committed file;
`WSGATE_WRITE_CLOSE_CODES=1` (what scripts/close-codes sets) writes it instead.

    python3 -m pytest -q tests/browser          # checks docs/close-codes.md
    scripts/close-codes                          # regenerates it

Budgets: every gateway has timer budgets a loaded machine meets (TIMEOUTS,
DRAIN_MS), so that the browser's close reply never races a short timer. The
two `upstream_timeout` rows use a gateway of their own ("timers") with short
budgets against upstreams that never answer, so that the timer decides.

One browser, one page, one case at a time: a case's log line is the only
`websocket_close` the gateway writes on the case's route between the case's
start and a barrier connection after it (matched by order), and wherever the
upstream sees the connection it is also matched by the `X-WSGate-Connection-Id`
the upstream received.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import pytest
from aiohttp import web
from cryptography import x509

import browser_harness as h
from browser_harness import bb

from test_http_upstream import Backend  # tests/blackbox: aiohttp backend (echo, statuses, slow, hooks)
from test_tls import TLSUpstreams, make_cert, write_pem  # tests/blackbox: certificates, wss/https servers

MAX_MESSAGE = 1024
IDLE_MS = 500
TIMEOUTS = dict(bb.FIXTURE_TIMEOUTS)  # 10 s each: met by a loaded machine with Chromium on the same cores
TIMER_TIMEOUTS = {  # the "timers" gateway only: its upstreams never answer
    "upstream_handshake_ms": 500,
    "http_request_ms": 800,
}
DRAIN_MS = 10000

TEXT = "héllo ✓"
BYTES = [0, 1, 2, 255]
TEXT_MSG = {"type": "text", "data": TEXT}
BYTES_MSG = {"type": "binary", "hex": "000102ff"}


@dataclass(frozen=True)
class Case:
    name: str           # pytest id; the page connects to `route?case=name`
    route: str          # the configured route path (the log line's `route`)
    happened: str       # the doc's "what happened" cell
    cause: str          # expected per the contract / README
    code: int
    reason: str
    was_clean: bool
    gateway: str = "main"      # main | timers | idle | overload | shutdown-1001 | shutdown-1012
    flow: str = "plain"        # plain | overload | shutdown
    send: tuple = ()           # messages the page sends once open
    close_after: int = 0       # the page closes 1000 "done" after this many messages
    protocols: tuple = ()      # subprotocols the page offers
    messages: tuple = ()       # messages the page must receive
    protocol: str = ""         # the subprotocol the page must end up with
    id_from: str = ""          # "ws" | "http" | "hook": the upstream that records X-WSGate-Connection-Id
    log: tuple = ()            # further expected log fields, (name, value) pairs


T = {"text": TEXT}
B = {"bytes": BYTES}

CASES = [
    # -- normal traffic, ended by the page
    Case("echo_text", "/up/echo", "`ws://` upstream echoed a text message; the page closed with 1000 \"done\"",
         "client_closed", 1000, "done", True, send=(T,), close_after=1, messages=(TEXT_MSG,), id_from="ws",
         log=(("initiator", "client"),)),
    Case("echo_binary", "/up/echo", "`ws://` upstream echoed a binary message; the page closed with 1000 \"done\"",
         "client_closed", 1000, "done", True, send=(B,), close_after=1, messages=(BYTES_MSG,), id_from="ws",
         log=(("initiator", "client"),)),
    Case("subprotocol", "/up/echo", "the page offered `chat.v2, chat.v1`; the `ws://` upstream chose `chat.v1`, "
         "which the page got; echo; the page closed",
         "client_closed", 1000, "done", True, protocols=("chat.v2", "chat.v1"), protocol="chat.v1",
         send=(T,), close_after=1, messages=(TEXT_MSG,), id_from="ws"),
    Case("builtin_echo", "/echo", "`builtin:echo` echoed text and binary; the page closed",
         "client_closed", 1000, "done", True, send=(T, B), close_after=2, messages=(TEXT_MSG, BYTES_MSG)),
    Case("http_echo", "/h/echo", "`http://` upstream answered each message (200, body echoed); the page closed",
         "client_closed", 1000, "done", True, send=(T, B), close_after=2, messages=(TEXT_MSG, BYTES_MSG),
         id_from="http"),
    Case("client_too_big", "/up/echo", f"the page sent a 2000-byte text message (limit {MAX_MESSAGE})",
         "client_message_too_big", 1009, f"message too big (limit {MAX_MESSAGE} bytes)", True,
         send=({"repeat": "x", "times": 2000},), id_from="ws", log=(("initiator", "gateway"),)),
    # -- ws:// upstreams failing
    Case("ws_upstream_closed", "/bye", "`ws://` upstream echoed one message, then closed with 4000 \"bye\"",
         "upstream_closed", 4000, "bye", True, send=(T,), messages=(TEXT_MSG,),
         log=(("initiator", "upstream"), ("upstream_code", 4000), ("upstream_reason", "bye"))),
    Case("ws_upstream_closed_no_code", "/nocode", "`ws://` upstream echoed one message, then sent an empty close frame",
         "upstream_closed", 1005, "", True, send=(T,), messages=(TEXT_MSG,), log=(("initiator", "upstream"),)),
    Case("ws_upstream_reset", "/reset", "`ws://` upstream read the first message, then reset its TCP connection (RST)",
         "upstream_reset", 1006, "", False, send=(T,), log=(("initiator", "upstream"),)),
    Case("ws_upstream_refused", "/refused", "`ws://` upstream port closed: connection refused",
         "upstream_unreachable", 1014, "upstream unreachable", True, log=(("initiator", "gateway"),)),
    Case("ws_upstream_tls", "/wss-untrusted", "`wss://` upstream presented a self-signed certificate",
         "upstream_tls_error", 1014, "upstream TLS error", True),
    Case("ws_upstream_timeout", "/blackhole",
         f"`ws://` upstream accepted TCP but never answered the upgrade (`upstream_handshake_ms: "
         f"{TIMER_TIMEOUTS['upstream_handshake_ms']}`)",
         "upstream_timeout", 1014, "upstream timeout", True, gateway="timers"),
    Case("ws_upstream_403", "/reject403", "`ws://` upstream answered the upgrade with HTTP 403",
         "upstream_handshake_rejected", 1014, "upstream rejected the handshake (HTTP 403)", True,
         log=(("upstream_status", 403),)),
    Case("ws_upstream_too_big", "/upbig", f"`ws://` upstream sent a 1 MiB message (limit {MAX_MESSAGE})",
         "upstream_protocol_error", 1014, "upstream protocol error", True),
    Case("ws_upstream_bad_utf8", "/upbadutf8", "`ws://` upstream sent a text message that is not UTF-8",
         "upstream_protocol_error", 1014, "upstream protocol error", True),
    # -- http:// upstreams failing (one message each)
    Case("http_500", "/h/s500", "`http://` upstream answered the page's message with 500",
         "upstream_http_error", 1011, "upstream HTTP 500", True, send=(T,), id_from="http",
         log=(("upstream_status", 500),)),
    Case("http_502", "/h/s502", "`http://` upstream answered the page's message with 502",
         "upstream_http_error", 1014, "upstream HTTP 502", True, send=(T,), id_from="http",
         log=(("upstream_status", 502),)),
    Case("http_503", "/h/s503", "`http://` upstream answered the page's message with 503",
         "upstream_http_error", 1013, "upstream HTTP 503", True, send=(T,), id_from="http",
         log=(("upstream_status", 503),)),
    Case("http_504", "/h/s504", "`http://` upstream answered the page's message with 504",
         "upstream_http_error", 1014, "upstream HTTP 504", True, send=(T,), id_from="http",
         log=(("upstream_status", 504),)),
    Case("http_404", "/h/s404", "`http://` upstream answered the page's message with 404",
         "upstream_http_error", 1008, "upstream HTTP 404", True, send=(T,), id_from="http",
         log=(("upstream_status", 404),)),
    Case("http_connect_403", "/h/denied", "`http://` route's `connect_url` answered 403 before relaying",
         "upstream_http_error", 1008, "upstream HTTP 403", True, id_from="hook",
         log=(("upstream_status", 403),)),
    Case("http_timeout", "/h/hang",
         f"`http://` upstream never answered the page's message (`http_request_ms: {TIMER_TIMEOUTS['http_request_ms']}`)",
         "upstream_timeout", 1014, "upstream timeout", True, send=(T,), gateway="timers", id_from="http"),
    Case("http_refused", "/h/refused", "`http://` upstream port closed: connection refused",
         "upstream_unreachable", 1014, "upstream unreachable", True, send=(T,)),
    Case("https_tls", "/https-untrusted", "`https://` upstream presented a self-signed certificate",
         "upstream_tls_error", 1014, "upstream TLS error", True, send=(T,)),
    # -- limits and lifecycle (a gateway of their own each)
    Case("idle", "/up/echo", f"no frame either way for `idle_timeout_ms: {IDLE_MS}`",
         "idle_timeout", 1001, "idle timeout", True, gateway="idle", id_from="ws",
         log=(("initiator", "gateway"),)),
    Case("overloaded", "/echo", "`max_connections: 1` and another page connection held open",
         "overloaded", 1013, "gateway overloaded, try again later", True, gateway="overload", flow="overload"),
    Case("shutdown_1001", "/up/echo", "the gateway got SIGTERM (`shutdown.close_code: 1001`)",
         "shutdown", 1001, "gateway shutting down", True, gateway="shutdown-1001", flow="shutdown", id_from="ws"),
    Case("shutdown_1012", "/up/echo", "the gateway got SIGTERM (`shutdown.close_code: 1012`)",
         "shutdown", 1012, "gateway restarting", True, gateway="shutdown-1012", flow="shutdown", id_from="ws"),
]


@dataclass(frozen=True)
class Reject:
    name: str
    path: str
    happened: str
    status: int


REJECTS = [
    Reject("no_route", "/nowhere", "no route for the path", 404),
    Reject("origin", "/origin", "the page's `Origin` is not in the route's `origins`", 403),
]

SETTINGS = [
    f"`limits.max_message_bytes: {MAX_MESSAGE}`",
    *(f"`timeouts.{k}: {v}`" for k, v in TIMEOUTS.items()),
    "for the two `upstream_timeout` rows only, whose upstreams never answer: "
    + " and ".join(f"`timeouts.{k}: {v}`" for k, v in TIMER_TIMEOUTS.items()),
    f"`limits.idle_timeout_ms: {IDLE_MS}` (idle row only)",
    "`limits.max_connections: 1` (overloaded row only)",
    f"`shutdown.drain_timeout_ms: {DRAIN_MS}`",
]

RESULTS: dict[str, dict] = {}
REJECT_RESULTS: dict[str, dict] = {}
ATTEMPTED: set[str] = set()  # cases that ran in this session (not deselected)
PASSED: set[str] = set()     # cases whose every assertion held


# --------------------------------------------------------------------------
# fixtures


class RecordingBackend(Backend):
    """The black-box suite's aiohttp backend, also recording the connection id
    of status, slow and hook requests."""

    async def status(self, request: web.Request) -> web.Response:
        self.record(request, await request.read())
        return await super().status(request)

    async def hang(self, request: web.Request) -> web.Response:
        self.record(request, await request.read())
        return await super().hang(request)

    async def hook(self, request: web.Request) -> web.Response:
        self.record(request, await request.read())
        return await super().hook(request)


def closed_port() -> int:
    return bb.Upstreams._closed_port()


def configs(up: bb.Upstreams, backend: Backend, tls: TLSUpstreams) -> dict[str, dict]:
    e = f"ws://127.0.0.1:{up.echo_port}"
    c = f"ws://127.0.0.1:{up.closer_port}"
    b = f"http://127.0.0.1:{backend.port}"

    def cfg(routes: list, limits: dict | None = None, shutdown: dict | None = None,
            timeouts: dict | None = None) -> dict:
        out = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "limits": {"max_message_bytes": MAX_MESSAGE, **(limits or {})},
            "timeouts": {**TIMEOUTS, **(timeouts or {})},
            "log": {"format": "json", "level": "info"},
            # the first builtin:echo route is the barrier the black-box Gateway uses
            "routes": [{"path": "/barrier", "upstream": "builtin:echo"}, *routes],
        }
        if shutdown:
            out["shutdown"] = shutdown
        return out

    main = cfg([
        {"path": "/echo", "upstream": "builtin:echo"},
        {"path": "/origin", "upstream": "builtin:echo", "origins": ["https://app.example.com"]},
        {"path": "/up/echo", "upstream": f"{e}/plain"},
        {"path": "/bye", "upstream": f"{c}/bye"},
        {"path": "/nocode", "upstream": f"{c}/nocode"},
        {"path": "/upbig", "upstream": f"{c}/big"},
        {"path": "/upbadutf8", "upstream": f"{c}/badutf8"},
        {"path": "/refused", "upstream": f"ws://127.0.0.1:{up.closed_port}/x"},
        {"path": "/refused-legacy", "upstream": f"ws://127.0.0.1:{up.closed_port}/x", "close_profile": "legacy"},
        {"path": "/refused-app", "upstream": f"ws://127.0.0.1:{up.closed_port}/x", "close_profile": "app"},
        {"path": "/reject403", "upstream": f"ws://127.0.0.1:{up.reject403_port}/x"},
        {"path": "/reset", "upstream": f"ws://127.0.0.1:{up.reset_port}/x"},
        {"path": "/wss-untrusted", "upstream": f"wss://localhost:{tls.wss_port}/"},
        {"path": "/https-untrusted", "upstream": f"https://localhost:{tls.https_port}/x"},
        {"path": "/h/echo", "upstream": f"{b}/echo"},
        {"path": "/h/s404", "upstream": f"{b}/status/404"},
        {"path": "/h/s500", "upstream": f"{b}/status/500"},
        {"path": "/h/s502", "upstream": f"{b}/status/502"},
        {"path": "/h/s503", "upstream": f"{b}/status/503"},
        {"path": "/h/s504", "upstream": f"{b}/status/504"},
        {"path": "/h/refused", "upstream": f"http://127.0.0.1:{closed_port()}/x"},
        {"path": "/h/denied", "upstream": f"{b}/echo", "http": {"connect_url": f"{b}/hook/403"}},
    ])
    up_echo = [{"path": "/up/echo", "upstream": f"{e}/plain"}]
    return {
        "main": main,
        "timers": cfg([
            {"path": "/blackhole", "upstream": f"ws://127.0.0.1:{up.blackhole_port}/x"},
            {"path": "/h/hang", "upstream": f"{b}/hang"},
        ], timeouts=TIMER_TIMEOUTS),
        "idle": cfg(up_echo, limits={"idle_timeout_ms": IDLE_MS}),
        "overload": cfg([{"path": "/hold", "upstream": "builtin:echo"}, {"path": "/echo", "upstream": "builtin:echo"}],
                        limits={"max_connections": 1}),
        "shutdown-1001": cfg(up_echo, shutdown={"close_code": 1001, "drain_timeout_ms": DRAIN_MS}),
        "shutdown-1012": cfg(up_echo, shutdown={"close_code": 1012, "drain_timeout_ms": DRAIN_MS}),
        # A pool whose first two targets are dead (connection refused).
        "pool": cfg([{"path": "/pool", "upstreams": [
            f"ws://127.0.0.1:{closed_port()}/plain", f"ws://127.0.0.1:{up.closed_port}/plain", f"{e}/plain"]}]),
    }


class Env:
    def __init__(self, tmp) -> None:
        self.tmp = tmp
        self.stack: list = []  # things to stop, in reverse order
        self.gateways: dict[str, bb.Gateway] = {}  # the current gateway of each name
        self.started: list[bb.Gateway] = []        # every gateway started, for the final checks
        self.browser: h.Browser | None = None

    def start(self) -> None:
        h.find_browser()  # fail (CI) or skip before starting anything
        self.up = bb.Upstreams()
        self.stack.append(self.up.stop)
        self.backend = RecordingBackend()
        self.stack.append(self.backend.stop)
        cert, key = make_cert("untrusted", sans=[x509.DNSName("localhost")])  # self-signed: no CA trusts it
        pki = {"cert": write_pem(self.tmp / "untrusted.pem", cert), "key": write_pem(self.tmp / "untrusted.key", key=key)}
        self.tls = TLSUpstreams(pki)
        self.stack.append(self.tls.stop)
        self.configs = configs(self.up, self.backend, self.tls)
        self.page = h.PageServer()
        self.stack.append(self.page.stop)
        self.browser = h.Browser(self.page.url)
        self.stack.append(self.browser.quit)

    def gateway(self, name: str) -> bb.Gateway:
        """The long-lived gateway `name`; shutdown gateways are made fresh."""
        if name.startswith("shutdown") or name not in self.gateways or not self.gateways[name].alive():
            gw = bb.Gateway(self.configs[name], self.tmp, f"{name}-{len(self.stack)}")
            self.stack.append(gw.stop)
            self.started.append(gw)
            self.gateways[name] = gw
        return self.gateways[name]

    def finish_gateways(self) -> list[str]:
        """Stops every gateway started so far and runs the final checks of
        the black-box suite on each (exit 0 after SIGTERM, only JSON lines,
        one websocket_close line per upgraded connection)."""
        return [p for gw in self.started for p in gw.finish()]

    def stop(self) -> list[str]:
        problems = self.finish_gateways()
        while self.stack:
            try:
                self.stack.pop()()
            except Exception as exc:  # keep stopping the rest
                problems.append(f"teardown: {exc!r}")
        return problems


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("browser"))
    try:
        e.start()
        yield e
    finally:
        problems = e.stop()
    assert not problems, "; ".join(problems)


# --------------------------------------------------------------------------
# cases


def connection_id_seen_upstream(env: Env, case: Case) -> str | None:
    if case.id_from == "ws":
        rec = env.up.record(f"/plain?case={case.name}")
        return h.header(rec["headers"], "X-WSGate-Connection-Id")
    if case.id_from in ("http", "hook"):
        # the route's URL gets the client's query appended; a connect_url does not
        match = (lambda p: p.endswith(f"?case={case.name}")) if case.id_from == "http" else \
                (lambda p: p.startswith("/hook/"))
        ids = {cid for cid, reqs in list(env.backend.seen.items()) if any(match(r["path"]) for r in reqs)}
        assert len(ids) == 1, f"the HTTP upstream saw connection ids {ids} for case {case.name}"
        return ids.pop()
    return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_close_event_matches_log(env: Env, case: Case) -> None:
    ATTEMPTED.add(case.name)
    browser = env.browser
    gw = env.gateway(case.gateway)
    url = f"ws://127.0.0.1:{gw.port}{case.route}?case={case.name}"
    opts: dict = {"send": list(case.send)}
    if case.close_after:
        opts["closeAfter"] = case.close_after
    if case.protocols:
        opts["protocols"] = list(case.protocols)

    mark = gw.mark()
    holder = f"{case.name}-holder"
    if case.flow == "overload":  # one connection held open, at the limit
        browser.start(holder, f"ws://127.0.0.1:{gw.port}/hold?case={holder}")
        assert browser.wait_open(holder)["opened"], "the holder connection did not open"
    browser.start(case.name, url, opts)
    if case.flow == "shutdown":
        assert browser.wait_open(case.name)["opened"], "the connection did not open before SIGTERM"
        gw.terminate()
    seen = browser.wait_closed(case.name)
    line = h.wait_line(gw, mark, lambda l: l.get("event") == "websocket_close" and l.get("route") == case.route,
                       f"websocket_close for route {case.route}")
    if case.flow == "overload":
        browser.close_socket(holder)
        assert browser.wait_closed(holder)["close"] == {"code": 1000, "reason": "done", "wasClean": True}
        held = h.wait_line(gw, mark, lambda l: l.get("event") == "websocket_close" and l.get("route") == "/hold",
                           "websocket_close for the holder")
        assert (held["cause"], held["code"]) == ("client_closed", 1000)
    if case.flow == "shutdown":
        assert gw.wait_exit() == 0, "the gateway did not exit 0 after SIGTERM"
    else:
        gw.barrier()  # a later connection's line is in, so any extra line of ours would be too

    # Matching by order: one case at a time, so the only close lines the
    # gateway wrote since the case started are this connection's, the
    # holder's and the barrier's.
    closes = h.lines_since(gw, mark, "websocket_close")
    ours = [l for l in closes if l["route"] == case.route]
    strays = [l for l in closes if l["route"] not in (case.route, "/barrier", "/hold")]
    assert len(ours) == 1 and not strays, f"expected one websocket_close for {case.route}: {closes}"
    # ... and by connection id wherever the upstream saw the connection.
    cid = connection_id_seen_upstream(env, case)
    if case.id_from:
        assert cid == line["connection_id"], f"upstream saw {cid}, log line has {line['connection_id']}"

    RESULTS[case.name] = {"case": case.name, "happened": case.happened, "browser": seen, "line": line}

    # 1. the browser's CloseEvent is exactly the log line
    close = seen["close"]
    assert (close["code"], close["reason"], close["wasClean"]) == (line["code"], line["reason"], line["was_clean"]), \
        f"browser CloseEvent {close} != log line {line}"
    # 2. both are what the contract promises
    assert line["cause"] == case.cause, line
    assert (line["code"], line["reason"], line["was_clean"]) == (case.code, case.reason, case.was_clean), line
    for key, value in case.log:
        assert line[key] == value, f"log {key}={line[key]!r}, expected {value!r}: {line}"
    # 3. what the page saw before the close
    assert seen["opened"], f"the page never saw onopen: {seen}"
    assert seen["protocol"] == case.protocol, seen
    assert seen["messages"] == list(case.messages), seen
    if case.id_from == "ws" and case.protocols:
        rec = env.up.record(f"/plain?case={case.name}")
        assert rec["subprotocol"] == case.protocol
        assert h.header(rec["headers"], "Sec-WebSocket-Protocol") == ", ".join(case.protocols)
    PASSED.add(case.name)


@pytest.mark.parametrize("case", REJECTS, ids=lambda c: c.name)
def test_rejected_before_upgrade(env: Env, case: Reject) -> None:
    ATTEMPTED.add(case.name)
    browser = env.browser
    gw = env.gateway("main")
    mark = gw.mark()
    browser.start(case.name, f"ws://127.0.0.1:{gw.port}{case.path}?case={case.name}")
    seen = browser.wait_closed(case.name)
    line = h.wait_line(gw, mark, lambda l: l.get("event") == "websocket_reject"
                       and str(l.get("path", "")).split("?")[0] == case.path, f"websocket_reject for {case.path}")
    gw.barrier()
    REJECT_RESULTS[case.name] = {"case": case.name, "happened": case.happened, "browser": seen, "line": line}
    assert line["status"] == case.status, line
    assert not seen["opened"], seen
    assert seen["close"] == {"code": 1006, "reason": "", "wasClean": False}, seen
    strays = [l for l in h.lines_since(gw, mark, "websocket_close") if l["route"] != "/barrier"]
    assert not strays, f"a rejected request must not get a websocket_close line: {strays}"
    PASSED.add(case.name)


def test_close_codes_doc_is_current(env: Env) -> None:
    """Renders docs/close-codes.md from this run (in the order the cases are
    defined), only from a run in which every case ran and passed and every
    gateway passed its final checks, and compares it with the committed
    file: a difference fails (the doc is stale, or the behaviour changed).
    With WSGATE_WRITE_CLOSE_CODES=1 (scripts/close-codes) it writes the file
    instead."""
    write = h.truthy("WSGATE_WRITE_CLOSE_CODES")
    names = [c.name for c in CASES] + [r.name for r in REJECTS]
    skipped = [n for n in names if n not in ATTEMPTED]
    if skipped:
        msg = f"docs/close-codes.md needs every case; not run in this session: {skipped}"
        if write:
            pytest.fail(f"not writing {msg}")
        pytest.skip(f"not checking {msg}")
    failed = [n for n in names if n not in PASSED]
    if failed:
        pytest.fail(f"docs/close-codes.md is only rendered from a fully passing run; failed cases: {failed}")
    problems = env.finish_gateways()
    assert not problems, "gateway final checks failed, not rendering docs/close-codes.md: " + "; ".join(problems)
    text = h.render_doc(env.browser.major, SETTINGS,
                        [RESULTS[c.name] for c in CASES], [REJECT_RESULTS[r.name] for r in REJECTS])
    committed = h.DOC.read_text() if h.DOC.exists() else ""
    if write:
        if text != committed:
            h.DOC.parent.mkdir(parents=True, exist_ok=True)
            h.DOC.write_text(text)
        return
    # Debian ships new Chromium majors as security updates: the browser's
    # version is reported, not compared (what the browser *saw* still is).
    version = re.compile(r"headless Chromium \d+")
    if version.sub("headless Chromium N", text) != version.sub("headless Chromium N", committed):
        diff = "".join(difflib.unified_diff(committed.splitlines(keepends=True), text.splitlines(keepends=True),
                                            "docs/close-codes.md (committed)", "docs/close-codes.md (this run)"))
        pytest.fail("docs/close-codes.md differs from what this run observed: regenerate it with "
                    "scripts/close-codes (WSGATE_WRITE_CLOSE_CODES=1) and review the change\n" + diff,
                    pytrace=False)


def test_a_pool_with_two_dead_targets_still_serves_the_page(env: Env) -> None:
    """Upstream pools, from a browser: two of three targets refuse
    connections; the page's connection opens, echoes and closes cleanly, and
    the log line says which target served it after how many attempts."""
    gw = env.gateway("pool")
    mark = gw.mark()
    env.browser.start("pool", f"ws://127.0.0.1:{gw.port}/pool?case=pool", {"send": [T], "closeAfter": 1})
    seen = env.browser.wait_closed("pool")
    assert seen["opened"] and seen["messages"] == [TEXT_MSG], seen
    assert seen["close"] == {"code": 1000, "reason": "done", "wasClean": True}, seen
    line = h.wait_line(gw, mark, lambda l: l.get("event") == "websocket_close" and l.get("route") == "/pool",
                       "websocket_close for /pool")
    assert line["cause"] == "client_closed"
    assert line["target"] == f"127.0.0.1:{env.up.echo_port}"
    assert line["attempts"] == 3


@pytest.mark.parametrize("route,code", [("/refused", 1014), ("/refused-legacy", 1011), ("/refused-app", 4502)])
def test_close_profiles_in_the_browser(env: Env, route: str, code: int) -> None:
    """`close_profile`: an unreachable upstream is 1014 for `iana`, 1011 for
    `legacy`, 4502 for `app`; the reason says the same thing in each, and
    the page's CloseEvent is the log line."""
    gw = env.gateway("main")
    mark = gw.mark()
    name = f"profile{route.replace('/', '-')}"
    env.browser.start(name, f"ws://127.0.0.1:{gw.port}{route}?case={name}")
    seen = env.browser.wait_closed(name)
    line = h.wait_line(gw, mark, lambda l: l.get("event") == "websocket_close" and l.get("route") == route,
                       f"websocket_close for {route}")
    assert seen["close"] == {"code": code, "reason": "upstream unreachable", "wasClean": True}, seen
    assert (line["code"], line["reason"], line["was_clean"], line["cause"]) == (code, "upstream unreachable", True,
                                                                              "upstream_unreachable")


def test_a_page_receives_a_push_and_a_kick(env: Env) -> None:
    """The control API, from a browser: a message pushed by the backend
    arrives as a MessageEvent, and a kick's code and reason arrive as the
    CloseEvent's."""
    import urllib.request

    gw = env.gateway("main")
    admin = gw.wait_for(lambda l: l.get("event") == "admin_listening")["port"]
    env.browser.start("push", f"ws://127.0.0.1:{gw.port}/up/echo?case=push")
    assert env.browser.wait_open("push")["opened"]
    rec = env.up.record("/plain?case=push")
    cid = h.header(rec["headers"], "X-WSGate-Connection-Id")

    def call(method: str, path: str, body: bytes | None = None) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status

    assert call("POST", f"/@connections/{cid}", "pushed to the page".encode()) == 200
    env.browser.wait("push", lambda r: {"data": "pushed to the page", "type": "text"} in r["messages"], "the pushed message")
    assert call("DELETE", f"/@connections/{cid}?code=4001&reason=kicked%20by%20the%20backend") == 204
    seen = env.browser.wait_closed("push")
    assert seen["close"] == {"code": 4001, "reason": "kicked by the backend", "wasClean": True}, seen
    line = gw.wait_for(lambda l: l.get("event") == "websocket_close" and l.get("connection_id") == cid)
    assert (line["cause"], line["code"]) == ("kicked", 4001)
