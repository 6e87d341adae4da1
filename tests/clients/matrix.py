"""The client compatibility matrix: real WebSocket libraries behind a real wsgate.

Every client in CLIENTS is a small program over one library (PROTOCOL.md is
their shared contract). The run drives each of them through every close cause
a client can observe (ROWS), once per `close_profile` (a route per profile),
plus the feature checks (FEATURES) and the two refusals before the upgrade
(REJECTS), and pairs each client's report with the gateway's `websocket_close`
line for the same connection. Connections are matched by a tag in the query
(`?c=<client>.<row>.<profile>`), which the gateway appends to the upstream URL
and so writes into the line's `upstream` field.

Upstreams are the black-box suite's real servers on loopback (tests/blackbox),
plus two of this file's own: `/frag` sends a message in three frames, `/kick`
asks the control API to close the connection that reached it.

`Matrix.run()` does it all and returns the observations; `render()` turns them
into docs/clients.md. tests/clients/test_matrix.py asserts on them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BLACKBOX = REPO / "tests" / "blackbox"
if str(BLACKBOX) not in sys.path:
    sys.path.insert(0, str(BLACKBOX))

import jwt  # noqa: E402  (PyJWT)
from cryptography import x509  # noqa: E402
from websockets.asyncio.server import serve as ws_serve  # noqa: E402

import conftest as bb  # noqa: E402  (tests/blackbox/conftest.py: Gateway, Upstreams, …)

sys.path.insert(0, str(HERE / "python-common"))
from matrixclient import fnv  # noqa: E402  (the digest every client reports, PROTOCOL.md)
from test_http_upstream import Backend  # noqa: E402
from test_tls import TLSUpstreams, make_cert, write_pem  # noqa: E402

OUT = Path(os.environ.get("WSGATE_CLIENTS_OUT", REPO / ".build-clients"))
DOC = REPO / "docs" / "clients.md"

# In the order of the doc's columns.
CLIENTS = ["chromium", "firefox", "node-ws", "gorilla", "nhooyr", "okhttp", "python-websockets",
           "python-aiohttp", "swift"]
TITLES = {
    "chromium": "Chromium", "firefox": "Firefox ESR", "node-ws": "Node `ws`", "gorilla": "Go gorilla",
    "nhooyr": "Go nhooyr", "okhttp": "OkHttp", "python-websockets": "Py websockets",
    "python-aiohttp": "Py aiohttp", "swift": "Swift HB",
}
PROFILES = ["iana", "legacy", "app"]
# README "Close codes": what each profile turns a table code into.
PROFILE_MAP = {"iana": {}, "legacy": {1012: 1001, 1013: 1011, 1014: 1011}, "app": {1011: 4500, 1013: 4503, 1014: 4502}}

MAX_MESSAGE = 1 << 20          # limits.max_message_bytes: a 1 MiB message passes, one byte more is 1009
TIMERS = {"upstream_handshake_ms": 500, "http_request_ms": 800}
IDLE_MS = 600
DRAIN_MS = 10000
HMAC_SECRET = "matrix-secret-0123456789abcdef-0123456789"  # ≥ 32 bytes, HS256
CASE_TIMEOUT_MS = 20000        # more than any gateway budget (10 s)
TOKEN_LIFETIME_S = 14          # first token_expired case: every client has connected by then
TOKEN_STEP_S = 4               # each later profile's token lives this much longer
KICK = (4001, "session replaced")

TEXT = "héllo ✓"
T = {"send": "text", "data": TEXT}
CLOSE = {"close": 1000, "reason": "done"}


@dataclass(frozen=True)
class Row:
    key: str
    cause: str
    happened: str
    route: str               # under /<profile>
    code: int                # the README's code (profile iana)
    reason: str | None       # None: any reason with this prefix in `reason_prefix`
    clean: bool = True
    gateway: str = "main"    # main | timers | idle | overload | shutdown-1001 | shutdown-1012
    steps: tuple = ()
    round: str = ""          # "" one case after another | "shutdown" | "token"
    reason_prefix: str = ""


ROWS = [
    Row("client_closed", "client_closed", "the client sent a message, got the echo, closed with 1000 \"done\"",
        "/echo", 1000, "done", steps=(T, {"expect": 1}, CLOSE)),
    Row("client_too_big", "client_message_too_big", f"the client sent a {MAX_MESSAGE + 1}-byte message",
        "/echo", 1009, f"message too big (limit {MAX_MESSAGE} bytes)",
        steps=({"send": "text", "repeat": "x", "times": MAX_MESSAGE + 1},)),
    Row("upstream_4000", "upstream_closed", "`ws://` upstream closed with 4000 \"bye\"", "/bye", 4000, "bye",
        steps=(T,)),
    Row("upstream_1005", "upstream_closed", "`ws://` upstream sent an empty close frame", "/nocode", 1005, "",
        steps=(T,)),
    Row("upstream_reset", "upstream_reset", "`ws://` upstream reset its TCP connection", "/reset", 1006, "",
        clean=False, steps=(T,)),
    Row("unreachable", "upstream_unreachable", "`ws://` upstream refused the connection", "/refused", 1014,
        "upstream unreachable"),
    Row("tls", "upstream_tls_error", "`wss://` upstream with a self-signed certificate", "/wss-untrusted", 1014,
        "upstream TLS error"),
    Row("ws_timeout", "upstream_timeout", "`ws://` upstream never answered the upgrade", "/blackhole", 1014,
        "upstream timeout", gateway="timers"),
    Row("rejected_403", "upstream_handshake_rejected", "`ws://` upstream answered the upgrade with 403",
        "/reject403", 1014, "upstream rejected the handshake (HTTP 403)"),
    Row("protocol_error", "upstream_protocol_error", "`ws://` upstream sent text that is not UTF-8",
        "/badutf8", 1014, "upstream protocol error"),
    Row("http_500", "upstream_http_error", "`http://` upstream answered 500", "/h/s500", 1011,
        "upstream HTTP 500", steps=(T,)),
    Row("http_502", "upstream_http_error", "`http://` upstream answered 502", "/h/s502", 1014,
        "upstream HTTP 502", steps=(T,)),
    Row("http_503", "upstream_http_error", "`http://` upstream answered 503", "/h/s503", 1013,
        "upstream HTTP 503", steps=(T,)),
    Row("http_504", "upstream_http_error", "`http://` upstream answered 504", "/h/s504", 1014,
        "upstream HTTP 504", steps=(T,)),
    Row("http_404", "upstream_http_error", "`http://` upstream answered 404", "/h/s404", 1008,
        "upstream HTTP 404", steps=(T,)),
    Row("hook_403", "upstream_http_error", "`connect_url` hook answered 403", "/h/denied", 1008,
        "upstream HTTP 403"),
    Row("http_timeout", "upstream_timeout", "`http://` upstream never answered", "/h/hang", 1014,
        "upstream timeout", gateway="timers", steps=(T,)),
    Row("idle", "idle_timeout", f"no frame either way for `idle_timeout_ms: {IDLE_MS}`", "/echo", 1001,
        "idle timeout", gateway="idle"),
    Row("overloaded", "overloaded", "`max_connections` reached", "/echo", 1013,
        "gateway overloaded, try again later", gateway="overload"),
    Row("shutdown_1001", "shutdown", "SIGTERM, `shutdown.close_code: 1001`", "/echo", 1001,
        "gateway shutting down", gateway="shutdown-1001", round="shutdown"),
    Row("shutdown_1012", "shutdown", "SIGTERM, `shutdown.close_code: 1012`", "/echo", 1012,
        "gateway restarting", gateway="shutdown-1012", round="shutdown"),
    Row("unauthorized", "unauthorized", "the route requires a JWT; none was sent", "/auth", 1008, None,
        reason_prefix="unauthorized: "),
    Row("token_expired", "token_expired", "the JWT's `exp` passed while connected", "/auth", 1008,
        "token expired", round="token"),
    Row("rate_limited", "rate_limited", "over `rate_limit` (1 message/s, `action: close`)", "/rate", 1008,
        "rate limit exceeded", steps=(T, T, T, T)),
    Row("kicked", "kicked", f"the backend called `DELETE /@connections/{{id}}?code={KICK[0]}`", "/kick",
        KICK[0], KICK[1]),
]


@dataclass(frozen=True)
class Feature:
    key: str
    what: str
    gateway: str
    route: str
    steps: tuple
    protocols: tuple = ()


BIG = {"send": "text", "repeat": "abcdefgh", "times": MAX_MESSAGE // 8}
FEATURES = [
    Feature("subprotocol", "offered `chat.v2, chat.v1`; the upstream chose `chat.v1`", "main", "/echo",
            (T, {"expect": 1}, CLOSE), ("chat.v2", "chat.v1")),
    Feature("big", "a 1 MiB text message echoed", "main", "/echo", (BIG, {"expect": 1}, CLOSE)),
    Feature("fragments", "a message the upstream sent in 3 frames; one the client sent in 3 frames", "main",
            "/frag", ({"expect": 1}, {"send": "fragments", "parts": ["a-", "b-", "c"]}, {"expect": 2}, CLOSE)),
    Feature("ping", "a ping answered by a pong", "main", "/echo", ({"ping": "p1"}, CLOSE)),
    Feature("keepalive", f"pings every 200 ms keep an idle route (`idle_timeout_ms: {IDLE_MS}`) open for 1.6 s",
            "idle", "/echo", tuple(s for _ in range(8) for s in ({"ping": "k"}, {"sleep_ms": 200})) + (CLOSE,)),
]


@dataclass(frozen=True)
class Reject:
    key: str
    what: str
    path: str
    status: int


REJECTS = [
    Reject("no_route", "no route for the path", "/nowhere", 404),
    Reject("auth_reject", "JWT missing on a route with `on_failure: reject`", "/iana/auth-reject", 401),
]


# Rows no profile can make visible for a client: (client, row) -> what the
# library does. Each is the library's own behaviour, recorded by the run (the
# suite fails if one goes away); the doc and the README name them.
KNOWN_LIMITS = {
    ("python-aiohttp", "upstream_1005"):
        "an upstream's empty close frame (1005, no code) comes out as code 0 with an `EofStream` error",
}


def mapped(code: int, profile: str) -> int:
    return PROFILE_MAP[profile].get(code, code)


# --------------------------------------------------------------------------
# the two upstreams of this file's own


class ScriptedUpstream:
    """`/frag`: sends "frag-1 frag-2 frag-3" as three frames, then echoes.
    `/kick`: asks the gateway's control API to close this very connection
    (by the `X-WSGate-Connection-Id` it received) with KICK."""

    def __init__(self) -> None:
        self.admin_port = 0  # set per gateway, before any /kick case runs
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="scripted", daemon=True).start()

        async def start():
            return await ws_serve(self.handler, "127.0.0.1", 0, max_size=None, ping_interval=None)

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handler(self, ws) -> None:
        path = ws.request.path.split("?")[0]
        if path.startswith("/frag"):
            await ws.send(["frag-1 ", "frag-2 ", "frag-3"])
            async for msg in ws:
                await ws.send(msg)
        elif path.startswith("/kick"):
            cid = ws.request.headers["X-WSGate-Connection-Id"]
            await asyncio.sleep(0.3)
            url = (f"http://127.0.0.1:{self.admin_port}/@connections/{cid}"
                   f"?code={KICK[0]}&reason={urllib.request.quote(KICK[1])}")
            await self.loop.run_in_executor(None, lambda: urllib.request.urlopen(
                urllib.request.Request(url, method="DELETE"), timeout=10).read())
            async for _ in ws:
                pass

    def stop(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)


# --------------------------------------------------------------------------
# gateways


def gateway_configs(up: bb.Upstreams, backend: Backend, tls: TLSUpstreams, scripted: ScriptedUpstream) -> dict:
    e = f"ws://127.0.0.1:{up.echo_port}"
    c = f"ws://127.0.0.1:{up.closer_port}"
    b = f"http://127.0.0.1:{backend.port}"
    s = f"ws://127.0.0.1:{scripted.port}"
    auth = {"jwt": {"hmac_secret_env": "WSGATE_JWT_SECRET", "token_from": ["query:access_token"], "leeway_ms": 0}}

    def per_profile(routes: dict) -> list:
        out = []
        for p in PROFILES:
            for path, extra in routes.items():
                out.append({"path": f"/{p}{path}", "close_profile": p, **extra})
        return out

    def cfg(routes: list, limits: dict | None = None, timeouts: dict | None = None, shutdown: dict | None = None):
        out = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "limits": {"max_message_bytes": MAX_MESSAGE, **(limits or {})},
            "timeouts": {**bb.FIXTURE_TIMEOUTS, **(timeouts or {})},
            "log": {"format": "json", "level": "info"},
            "routes": [{"path": "/barrier", "upstream": "builtin:echo"}, *routes],
        }
        if shutdown:
            out["shutdown"] = shutdown
        return out

    echo = {"/echo": {"upstream": f"{e}/plain"}}
    main = per_profile({
        **echo,
        "/frag": {"upstream": f"{s}/frag"},
        "/kick": {"upstream": f"{s}/kick"},
        "/bye": {"upstream": f"{c}/bye"},
        "/nocode": {"upstream": f"{c}/nocode"},
        "/badutf8": {"upstream": f"{c}/badutf8"},
        "/reset": {"upstream": f"ws://127.0.0.1:{up.reset_port}/x"},
        "/refused": {"upstream": f"ws://127.0.0.1:{up.closed_port}/x"},
        "/wss-untrusted": {"upstream": f"wss://localhost:{tls.wss_port}/"},
        "/reject403": {"upstream": f"ws://127.0.0.1:{up.reject403_port}/x"},
        **{f"/h/s{n}": {"upstream": f"{b}/status/{n}"} for n in (404, 500, 502, 503, 504)},
        "/h/denied": {"upstream": f"{b}/echo", "http": {"connect_url": f"{b}/hook/403"}},
        "/auth": {"upstream": f"{e}/plain", "auth": auth},
        "/auth-reject": {"upstream": f"{e}/plain", "auth": {**auth, "on_failure": "reject"}},
        "/rate": {"upstream": f"{e}/plain",
                  "rate_limit": {"messages_per_second": 1, "burst_messages": 1, "action": "close"}},
    })
    return {
        "main": cfg(main),
        "timers": cfg(per_profile({"/blackhole": {"upstream": f"ws://127.0.0.1:{up.blackhole_port}/x"},
                                   "/h/hang": {"upstream": f"{b}/hang"}}), timeouts=TIMERS),
        "idle": cfg(per_profile(echo), limits={"idle_timeout_ms": IDLE_MS}),
        "overload": cfg([{"path": "/hold", "upstream": "builtin:echo"}, *per_profile(echo)],
                        limits={"max_connections": 1}),
        "shutdown-1001": cfg(per_profile(echo), shutdown={"close_code": 1001, "drain_timeout_ms": DRAIN_MS}),
        "shutdown-1012": cfg(per_profile(echo), shutdown={"close_code": 1012, "drain_timeout_ms": DRAIN_MS}),
    }


def admin_port(gw: bb.Gateway) -> int:
    line = gw.wait_for(lambda l: l.get("event") == "admin_listening")
    return int(line["port"])


def active_connections(gw: bb.Gateway) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port(gw)}/metrics", timeout=10) as r:
        return int(bb.prometheus_sum(r.read().decode(), "wsgate_connections_active"))


# --------------------------------------------------------------------------
# running the clients


def build_clients(names: list[str]) -> dict[str, str]:
    """Builds every client (a missing one fails: CI never skips) and returns
    each one's `--version` line."""
    versions = {}
    for name in names:
        folder = HERE / name
        subprocess.run([str(folder / "build")], check=True, timeout=1800)
        out = subprocess.run([str(folder / "run"), "--version"], check=True, capture_output=True, text=True,
                             timeout=120)
        versions[name] = out.stdout.strip().splitlines()[0]
    return versions


def run_client(name: str, cases: list[dict], tmp: Path) -> dict[str, dict]:
    """Runs one client process over `cases`; returns its result lines by id
    (a case the client never answered gets an `error` saying so)."""
    path = tmp / f"{name}-{cases[0]['id']}.json"
    path.write_text(json.dumps(cases))
    budget = sum(c["timeout_ms"] for c in cases) / 1000 + 90
    try:
        out = subprocess.run([str(HERE / name / "run"), str(path)], capture_output=True, text=True,
                             timeout=budget, start_new_session=True)
        stdout, note = out.stdout, ("" if out.returncode == 0 else f"exit {out.returncode}: {out.stderr[-800:]}")
    except subprocess.TimeoutExpired as e:
        stdout, note = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "hung"
    results = {}
    for line in stdout.splitlines():
        try:
            r = json.loads(line)
            results[r["id"]] = r
        except (ValueError, KeyError, TypeError):
            continue
    for c in cases:
        results.setdefault(c["id"], {"id": c["id"], "missing": True, "error": f"no result line ({note or 'no output'})"})
    return results


def case(client: str, key: str, profile: str, url_base: str, path: str, steps, protocols=(), query: str = "") -> dict:
    tag = f"{client}.{key}.{profile}"
    return {"id": tag, "url": f"{url_base}{path}?c={tag}{query}", "protocols": list(protocols),
            "steps": list(steps), "timeout_ms": CASE_TIMEOUT_MS}


@dataclass
class Observation:
    client: str
    key: str          # row / feature / reject key
    profile: str
    result: dict
    line: dict | None  # the gateway's websocket_close (or websocket_reject) line


@dataclass
class Matrix:
    clients: list[str] = field(default_factory=lambda: list(CLIENTS))
    parallel: int = 3

    def run(self, tmp: Path) -> tuple[list[Observation], dict[str, str], list[str]]:
        """Returns (observations, client versions, gateway problems)."""
        versions = build_clients(self.clients)
        stack = []
        problems: list[str] = []
        obs: list[Observation] = []
        try:
            up = bb.Upstreams(); stack.append(up.stop)
            backend = Backend(); stack.append(backend.stop)
            cert, key = make_cert("untrusted", sans=[x509.DNSName("localhost")])
            tls = TLSUpstreams({"cert": write_pem(tmp / "untrusted.pem", cert),
                                "key": write_pem(tmp / "untrusted.key", key=key)}); stack.append(tls.stop)
            scripted = ScriptedUpstream(); stack.append(scripted.stop)
            configs = gateway_configs(up, backend, tls, scripted)
            env = {"WSGATE_JWT_SECRET": HMAC_SECRET}
            gws: dict[str, bb.Gateway] = {}
            for name in ("main", "timers", "idle", "overload"):
                gws[name] = bb.Gateway(configs[name], tmp, name=name, env=env)
                stack.append(gws[name].finish)
            scripted.admin_port = admin_port(gws["main"])
            base = {n: f"ws://127.0.0.1:{g.port}" for n, g in gws.items()}
            holder = self._hold(base["overload"] + "/hold"); stack.append(holder.close)

            # 1. one case after another, each client in its own process
            def sequential(client: str) -> list[dict]:
                cs = []
                for p in PROFILES:
                    for row in ROWS:
                        if not row.round:
                            cs.append(case(client, row.key, p, base[row.gateway], f"/{p}{row.route}", row.steps))
                for f in FEATURES:
                    cs.append(case(client, f.key, "iana", base[f.gateway], f"/iana{f.route}", f.steps, f.protocols))
                for rj in REJECTS:
                    cs.append(case(client, rj.key, "-", base["main"], rj.path, ()))
                return cs

            with ThreadPoolExecutor(self.parallel) as pool:
                per_client = dict(zip(self.clients, pool.map(lambda c: run_client(c, sequential(c), tmp),
                                                             self.clients)))
            # 2. token expiry: every client at once, one case per profile, tokens staggered
            t0 = time.time()
            tokens = {p: jwt.encode({"sub": f"matrix-{p}", "exp": int(t0 + TOKEN_LIFETIME_S + TOKEN_STEP_S * i)},
                                    HMAC_SECRET, algorithm="HS256") for i, p in enumerate(PROFILES)}
            with ThreadPoolExecutor(len(self.clients)) as pool:
                token_runs = list(pool.map(lambda c: run_client(c, [
                    case(c, "token_expired", p, base["main"], f"/{p}/auth", (), query=f"&access_token={tokens[p]}")
                    for p in PROFILES], tmp), self.clients))
            for c, rs in zip(self.clients, token_runs):
                per_client[c].update(rs)
            # 3. shutdown: a gateway per (close code, profile), every client connected, then SIGTERM
            shutdown_lines: list[dict] = []
            for gname in ("shutdown-1001", "shutdown-1012"):
                row = next(r for r in ROWS if r.gateway == gname)
                for p in PROFILES:
                    rs, lines, problem = self._shutdown_round(configs[gname], tmp, gname, p, row)
                    for c in self.clients:
                        per_client[c].update(rs[c])
                    shutdown_lines += lines
                    problems += problem

            # pair every result with its line
            lines = [l for g in gws.values() for l in g.snapshot()] + shutdown_lines
            for name in ("main", "timers", "idle", "overload"):
                gws[name].barrier()
            lines = [l for g in gws.values() for l in g.snapshot()] + shutdown_lines
            for c in self.clients:
                for rid, r in per_client[c].items():
                    _, key, profile = rid.split(".", 2)
                    obs.append(Observation(c, key, profile, r, find_line(lines, rid, key)))
        finally:
            for stop in reversed(stack):
                try:
                    out = stop()
                    if isinstance(out, list):
                        problems += out
                except Exception as e:  # keep stopping the rest
                    problems.append(f"stopping: {e!r}")
        return obs, versions, problems

    def _hold(self, url: str):
        """The overload gateway's only slot, held for the whole run."""
        import websockets.sync.client as sync_client
        return sync_client.connect(url, open_timeout=10)

    def _shutdown_round(self, config: dict, tmp: Path, gname: str, profile: str, row: Row):
        gw = bb.Gateway(config, tmp, name=f"{gname}-{profile}")
        base = f"ws://127.0.0.1:{gw.port}"
        problems: list[str] = []
        results: dict[str, dict] = {}
        with ThreadPoolExecutor(len(self.clients)) as pool:
            futures = {c: pool.submit(run_client, c, [case(c, row.key, profile, base, f"/{profile}/echo", ())], tmp)
                       for c in self.clients}
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and active_connections(gw) < len(self.clients):
                if all(f.done() for f in futures.values()):
                    break
                time.sleep(0.2)
            connected = active_connections(gw)
            if connected < len(self.clients):
                problems.append(f"{gname}/{profile}: only {connected} of {len(self.clients)} clients connected")
            gw.send_signal(signal.SIGTERM)
            gw.expect_exit(0, "SIGTERM")
            for c, f in futures.items():
                results[c] = f.result()
        gw.wait_exit()
        problems += gw.finish()
        return results, gw.snapshot(), problems


def find_line(lines: list[dict], tag: str, key: str) -> dict | None:
    event = "websocket_reject" if any(r.key == key for r in REJECTS) else "websocket_close"
    for l in lines:
        if l.get("event") != event:
            continue
        where = l.get("upstream") if event == "websocket_close" else l.get("path")
        if where and f"c={tag}" in where:
            return l
    return None



# --------------------------------------------------------------------------
# docs/clients.md


def normalise(text: str | None) -> str | None:
    """Error texts without what changes from run to run (ports, tags)."""
    if text is None:
        return None
    text = re.sub(r"(127\.0\.0\.1|localhost|\[::1\]):\d+", r"\1:PORT", text)
    text = re.sub(r"\?c=[A-Za-z0-9_.\-]+", "?c=…", text)
    return text


def view(r: dict) -> tuple:
    """What the application saw: (code, reason, clean, error) as reported."""
    return (r.get("code"), r.get("reason"), r.get("clean"), normalise(r.get("error")))


def faithful(o: Observation) -> bool:
    """The client reported the gateway's close as the log line has it: the
    same code, the same reason where the API gives one, and the same clean
    flag where the API has one."""
    r, l = o.result, o.line or {}
    if r.get("missing") or o.line is None:
        return False
    if l.get("code") == 1006 and r.get("code") is None and r.get("error"):
        return True  # 1006 is never sent: an API that reports the drop as an error shows it as it is
    if l.get("code") == 1005 and r.get("code") is None and not r.get("error"):
        return True  # 1005 is "no code in the close frame": an API that reports no code says just that
    if r.get("code") != l.get("code"):
        return False
    if r.get("reason") is not None and r.get("reason") != l.get("reason"):
        return False
    if r.get("clean") is not None and r.get("clean") != l.get("was_clean"):
        return False
    return True


def describe(r: dict) -> str:
    parts = []
    if r.get("code") is not None:
        parts.append(f"code `{r['code']}`")
    else:
        parts.append("no close code")
    if r.get("reason") not in (None, ""):
        parts.append(f"reason `{r['reason']}`")
    if r.get("clean") is not None:
        parts.append(f"clean `{str(r['clean']).lower()}`")
    if r.get("error"):
        parts.append(f"error `{normalise(r['error'])}`")
    if r.get("timeout"):
        parts.append("no close within the case's timeout")
    return ", ".join(parts)


def feature_ok(o: Observation) -> str:
    """✓, ✗ (with what happened) or n/a for one feature observation."""
    r = o.result
    unsupported = set(r.get("unsupported") or ())
    msgs = r.get("messages") or []
    if o.key == "subprotocol":
        if "protocols" in unsupported:
            return "n/a"
        return "✓" if r.get("protocol") == "chat.v1" and len(msgs) == 1 else f"✗ protocol `{r.get('protocol')}`"
    if o.key == "big":
        want = fnv(("abcdefgh" * (MAX_MESSAGE // 8)).encode())
        ok = len(msgs) == 1 and msgs[0]["len"] == MAX_MESSAGE and msgs[0]["fnv"] == want
        return "✓" if ok else f"✗ {[m.get('len') for m in msgs]}"
    if o.key == "fragments":
        got = [m.get("data") for m in msgs]
        recv = "✓" if got[:1] == ["frag-1 frag-2 frag-3"] else "✗"
        sent = "n/a" if "fragments" in unsupported else ("✓" if got[1:2] == ["a-b-c"] else "✗")
        return f"received {recv}, sent {sent}"
    if o.key == "ping":
        return "n/a" if "ping" in unsupported else ("✓" if r.get("pongs", 0) >= 1 else "✗ no pong")
    if o.key == "keepalive":
        if "ping" in unsupported:
            return "n/a"
        cause = (o.line or {}).get("cause")
        return "✓" if cause == "client_closed" and r.get("pongs", 0) >= 8 else f"✗ `{cause}`, {r.get('pongs')} pongs"
    raise KeyError(o.key)


def render(obs: list[Observation], versions: dict[str, str]) -> str:
    clients = [c for c in CLIENTS if c in versions]
    by = {(o.client, o.key, o.profile): o for o in obs}
    rows = [r for r in ROWS]
    out = [
        "# What real WebSocket clients see",
        "",
        "<!-- Generated by scripts/clients (tests/clients/test_matrix.py). Do not edit by hand. -->",
        "",
        "wsgate tells a client why its connection ended, in the close code and reason. Whether the application "
        "learns it depends on its WebSocket library: some refuse codes they think reserved, some hide the "
        "reason. This page is written by a run of `tests/clients`: each client below is a small program over one "
        "real library (`tests/clients/<name>/`, all from Debian or PyPI), driven through a real `wsgate` to real "
        "upstream servers on loopback, once per cause and once per `close_profile`. Each cell is what the "
        "library's API handed the program, next to the gateway's `websocket_close` line for that same connection.",
        "",
        "Regenerate with `scripts/clients`; every other run of the suite renders this page and fails if it differs.",
        "",
        "## Which profile for which client",
        "",
        "A cause is *visible* when the client reported the code the log line has, the same reason (where the "
        "API gives reasons) and the same clean flag (where the API has one). Profiles are set per route "
        "(`close_profile`, see the README's close-code table).",
        "",
        "| client | " + " | ".join(f"`{p}`" for p in PROFILES) + " | use |",
        "|---|" + "---|" * (len(PROFILES) + 1),
    ]
    for c in clients:
        cells, good = [], []
        limits = [why for (client, _), why in KNOWN_LIMITS.items() if client == c]
        for p in PROFILES:
            got = [(r, by.get((c, r.key, p))) for r in rows]
            n = sum(1 for _, o in got if o is not None and faithful(o))
            cells.append(f"{n} of {len(rows)}" + (" ✓" if n == len(rows) else ""))
            if all(o is not None and (faithful(o) or (c, r.key) in KNOWN_LIMITS) for r, o in got):
                good.append(f"`{p}`")
        use = ", ".join(good) if good else "none shows every cause"
        if good and limits:
            use += " (every cause but one no profile can change: " + "; ".join(limits) + ")"
        out.append(f"| {TITLES[c]} | " + " | ".join(cells) + f" | {use} |")
    out += ["", "## Clients", "", "| client | library as run | program |", "|---|---|---|"]
    for c in clients:
        out.append(f"| {TITLES[c]} | {versions[c]} | `tests/clients/{c}/` |")
    out += ["", "Gateway settings for the run: "
            f"`limits.max_message_bytes: {MAX_MESSAGE}`; "
            + "; ".join(f"`timeouts.{k}: {v}`" for k, v in bb.FIXTURE_TIMEOUTS.items())
            + "; for the two `upstream_timeout` rows: "
            + " and ".join(f"`timeouts.{k}: {v}`" for k, v in TIMERS.items())
            + f"; `limits.idle_timeout_ms: {IDLE_MS}` (idle rows); `limits.max_connections: 1` (overloaded row, "
            f"the slot held by another connection); `shutdown.drain_timeout_ms: {DRAIN_MS}`; JWT routes: HS256, "
            "`token_from: [query:access_token]`, `leeway_ms: 0`."]
    for p in PROFILES:
        notes: dict[tuple, int] = {}
        note_text: list[str] = []
        out += ["", f"## Profile `{p}`", "",
                "`n ✓`: the client reported code `n` and the log line's reason. `error ✓`: the API reported the "
                "dropped connection (1006 is never sent) as an error. `no code ✓`: the API reported a close "
                "without a code, which is what 1005 means. ✗: the client's view differs (see the notes under "
                "the table).", "",
                "| cause | what happened | log line | " + " | ".join(TITLES[c] for c in clients) + " |",
                "|---|---|---|" + "---|" * len(clients)]
        for r in rows:
            line = next((by[(c, r.key, p)].line for c in clients if (c, r.key, p) in by and by[(c, r.key, p)].line),
                        None) or {}
            log = f"`{line.get('code')}` {line.get('reason') or ''}".rstrip()
            cells = []
            for c in clients:
                o = by.get((c, r.key, p))
                if o is None:
                    cells.append("—")
                elif faithful(o):
                    code = o.result["code"]
                    cells.append(f"{code} ✓" if code is not None else ("error ✓" if o.result.get("error") else "no code ✓"))
                else:
                    key = (c, view(o.result))
                    if key not in notes:
                        notes[key] = len(notes) + 1
                        note_text.append(f"{notes[key]}. {TITLES[c]}: {describe(o.result)}")
                    cells.append(f"✗ {o.result.get('code') if o.result.get('code') is not None else '—'} "
                                 f"({notes[key]})")
            out.append(f"| `{r.cause}` | {r.happened} | {log} | " + " | ".join(cells) + " |")
        if note_text:
            out += ["", "Where the client's view differs:", "", *note_text]
    out += ["", "## Refused before the upgrade", "",
            "The gateway answers with an HTTP status and logs a `websocket_reject` line. Browsers never expose "
            "the status; other libraries do.", "",
            "| what happened | log `status` | " + " | ".join(TITLES[c] for c in clients) + " |",
            "|---|---|" + "---|" * len(clients)]
    for rj in REJECTS:
        cells = []
        status = None
        for c in clients:
            o = by.get((c, rj.key, "-"))
            if o is None:
                cells.append("—")
                continue
            status = status or (o.line or {}).get("status")
            s = o.result.get("status")
            cells.append(f"{s} ✓" if s == rj.status else ("status hidden" if s is None else f"✗ {s}"))
        out.append(f"| {rj.what} (`{rj.path}`) | `{status}` | " + " | ".join(cells) + " |")
    out += ["", "## Features through the gateway", "",
            "n/a: the library has no API for it (it cannot offer subprotocols, send fragments, or send a ping and "
            "see the pong).",
            "", "| check | " + " | ".join(TITLES[c] for c in clients) + " |", "|---|" + "---|" * len(clients)]
    for f in FEATURES:
        cells = [feature_ok(by[(c, f.key, "iana")]) if (c, f.key, "iana") in by else "—" for c in clients]
        out.append(f"| {f.what} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # a quick look: python3 tests/clients/matrix.py python-websockets [...]
    import dataclasses
    with tempfile.TemporaryDirectory() as d:
        o, v, probs = Matrix(clients=sys.argv[1:] or list(CLIENTS)).run(Path(d))
    print(json.dumps({"versions": v, "problems": probs, "obs": [dataclasses.asdict(x) for x in o]}, ensure_ascii=False))
