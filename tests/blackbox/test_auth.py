"""JWT at the handshake (route `auth.jwt`): real tokens signed here with
PyJWT against a JWKS served by a real HTTP server on loopback, checked by
the real gateway; what the client is told for each way a token can fail;
claims forwarded upstream; expiry mid-session; readiness while the JWKS is
down."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import jwt
import pytest
import websockets
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import addr_of, base_config, client, run

ISSUER = "https://auth.test/"
AUDIENCE = "chat"
HMAC_SECRET = "s3cr3t-hmac-key-for-tests-only-0123456789"


def b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def rsa_jwk(key, kid: str) -> dict:
    pub = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(pub.n), "e": b64(pub.e)}


def ec_jwk(key, kid: str) -> dict:
    pub = key.public_key().public_numbers()
    return {"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
            "x": base64.urlsafe_b64encode(pub.x.to_bytes(32, "big")).rstrip(b"=").decode(),
            "y": base64.urlsafe_b64encode(pub.y.to_bytes(32, "big")).rstrip(b"=").decode()}


class JWKSServer:
    """Serves /jwks.json from `self.keys`; `up` False answers 503. Counts fetches."""

    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.up = True
        self.fetches = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def jwks(request):
            self.fetches += 1
            if not self.up:
                return web.Response(status=503)
            return web.json_response({"keys": self.keys})

        async def start():
            app = web.Application()
            app.router.add_get("/jwks.json", jwks)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def keys():
    return {"rsa1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec1": ec.generate_private_key(ec.SECP256R1()),
            "other": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


@pytest.fixture(scope="module")
def jwks(keys):
    server = JWKSServer()
    server.keys = [rsa_jwk(keys["rsa1"], "rsa1"), ec_jwk(keys["ec1"], "ec1")]
    yield server
    server.stop()


def claims(**over) -> dict:
    now = int(time.time())
    c = {"sub": "user-42", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600, "tenant": "acme"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def token(keys, kid="rsa1", alg="RS256", key=None, **over) -> str:
    signing = key if key is not None else keys[kid]
    return jwt.encode(claims(**over), signing, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def agw(upstreams, jwks, tmp_path_factory):
    from conftest import Gateway
    e = f"ws://127.0.0.1:{upstreams.echo_port}"
    jwt_cfg = {"jwks_url": jwks.url, "issuer": ISSUER, "audiences": [AUDIENCE], "leeway_ms": 1000,
               "token_from": ["header:authorization", "query:access_token", "cookie:session", "subprotocol"],
               "forward_claims": {"sub": "X-User-Id", "tenant": "X-Tenant-Id"}}
    cfg = base_config(upstreams)
    cfg["routes"] = [
        {"path": "/echo", "upstream": "builtin:echo"},
        {"path": "/secure/*", "upstream": f"{e}/inspect-auth", "forward_headers": ["x-user-id", "cookie"],
         "auth": {"jwt": jwt_cfg}},
        {"path": "/strict/*", "upstream": f"{e}/inspect-strict", "auth": {"jwt": jwt_cfg, "on_failure": "reject"}},
        {"path": "/hmac", "upstream": "builtin:echo", "auth": {"jwt": {"hmac_secret_env": "WSGATE_TEST_JWT_SECRET"}}},
    ]
    gw = Gateway(cfg, tmp_path_factory.mktemp("auth"), "auth", env={"WSGATE_TEST_JWT_SECRET": HMAC_SECRET})
    gw.wait_for(lambda l: l.get("event") == "jwks_loaded", timeout=20)
    yield gw
    gw.check_finish()


async def connect_and_inspect(gw, path, **kw):
    """(what the upstream saw, the client's subprotocol, client address)."""
    async with client(gw, path, **kw) as ws:
        info = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return info, ws.subprotocol, addr_of(ws)


async def refused(gw, path, **kw):
    """Connects and waits for the close: (code, reason, client address)."""
    async with client(gw, path, **kw) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        return closed.value.rcvd.code, closed.value.rcvd.reason, addr_of(ws)


def headers_of(info) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in info["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


# --------------------------------------------------------------------------
# a valid token, from every source


@pytest.mark.parametrize("source", ["header", "query", "cookie", "subprotocol"])
def test_a_valid_token_from_each_source_connects(agw, keys, source):
    t = token(keys)
    path, kw = "/secure/room", {}
    if source == "header":
        kw["additional_headers"] = {"Authorization": f"Bearer {t}"}
    elif source == "query":
        path += f"?access_token={t}"
    elif source == "cookie":
        kw["additional_headers"] = {"Cookie": f"theme=dark; session={t}"}
    else:
        kw["subprotocols"] = [f"bearer.{t}"]
    info, sub, addr = run(connect_and_inspect(agw, path, **kw))
    h = headers_of(info)
    assert h["x-user-id"] == ["user-42"] and h["x-tenant-id"] == ["acme"]
    assert "authorization" not in h
    if source == "subprotocol":
        assert "sec-websocket-protocol" not in h, "the token offer must not go upstream"
        assert sub == f"bearer.{t}"
    ev = agw.close_event(addr)
    assert ev["subject"] == "user-42" and ev["cause"] == "client_closed"
    assert t not in json.dumps(ev), "the token must not be logged"


def test_a_forged_claim_header_from_the_client_is_removed(agw, keys):
    t = token(keys)
    info, _, addr = run(connect_and_inspect(agw, "/secure/forge", additional_headers={
        "Authorization": f"Bearer {t}", "X-User-Id": "admin"}))
    assert headers_of(info)["x-user-id"] == ["user-42"]
    agw.close_event(addr)


def test_ec_keys_from_the_jwks_work_too(agw, keys):
    t = token(keys, kid="ec1", alg="ES256")
    info, _, addr = run(connect_and_inspect(agw, "/secure/ec", additional_headers={"Authorization": f"Bearer {t}"}))
    assert headers_of(info)["x-user-id"] == ["user-42"]
    agw.close_event(addr)


# --------------------------------------------------------------------------
# every way a token fails: 101, then 1008 with the reason


def bad_tokens(keys):
    now = int(time.time())
    rsa_public_pem = keys["rsa1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa1"})
    # The classic confusion: HS256 "signed" with the RSA public key as the
    # secret (PyJWT itself refuses to make one, so it is made by hand).
    def seg(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    signing_input = f"{seg({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa1'})}.{seg(claims())}"
    mac = hmac.new(rsa_public_pem, signing_input.encode(), hashlib.sha256).digest()
    hs_confused = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    return {
        "missing": (None, "unauthorized: missing token"),
        "garbage": ("not.a.jwt", "unauthorized: malformed token"),
        "expired": (token(keys, exp=now - 120), "unauthorized: token expired"),
        "not_yet_valid": (token(keys, nbf=now + 120), "unauthorized: token not yet valid"),
        "wrong_audience": (token(keys, aud="billing"), "unauthorized: wrong audience"),
        "wrong_issuer": (token(keys, iss="https://evil.test/"), "unauthorized: wrong issuer"),
        "bad_signature": (token(keys, kid="rsa1", key=keys["other"]), "unauthorized: bad signature"),
        "alg_none": (unsigned, "unauthorized: algorithm none not accepted"),
        "hs_rs_confusion": (hs_confused, "unauthorized: algorithm HS256 not accepted"),
    }


@pytest.mark.parametrize("case", ["missing", "garbage", "expired", "not_yet_valid", "wrong_audience", "wrong_issuer",
                                  "bad_signature", "alg_none", "hs_rs_confusion"])
def test_a_bad_token_is_closed_1008_with_the_reason(agw, keys, case):
    t, reason = bad_tokens(keys)[case]
    kw = {"additional_headers": {"Authorization": f"Bearer {t}"}} if t else {}
    code, got, addr = run(refused(agw, "/secure/room", **kw))
    assert (code, got) == (1008, reason)
    ev = agw.close_event(addr)
    assert (ev["cause"], ev["code"], ev["reason"]) == ("unauthorized", 1008, reason)
    assert ev["subject"] is None
    if t:
        assert t not in json.dumps(ev)


def test_with_on_failure_reject_a_bad_token_gets_401(agw, keys):
    t = token(keys, exp=int(time.time()) - 120)
    s = socket.create_connection(("127.0.0.1", agw.port), timeout=10)
    addr = "%s:%d" % s.getsockname()[:2]
    key = base64.b64encode(b"0123456789abcdef").decode()
    s.sendall(f"GET /strict/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {t}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 401"), data[:100]
    assert b"WWW-Authenticate: Bearer" in data
    rej = agw.reject_event(addr)
    assert rej["status"] == 401 and rej["reason"] == "unauthorized: token expired" and rej["route"] == "/strict/*"


def test_hmac_secret_from_the_environment(agw):
    good = jwt.encode({"sub": "svc", "exp": int(time.time()) + 60}, HMAC_SECRET, algorithm="HS256")
    bad = jwt.encode({"sub": "svc", "exp": int(time.time()) + 60}, "wrong-secret-wrong-secret-wrong-secret", algorithm="HS256")

    async def ok():
        async with client(agw, "/hmac", additional_headers={"Authorization": f"Bearer {good}"}) as ws:
            await ws.send("hi")
            return await asyncio.wait_for(ws.recv(), 10), addr_of(ws)

    reply, addr = run(ok())
    assert reply == "hi" and agw.close_event(addr)["subject"] == "svc"
    code, reason, _ = run(refused(agw, "/hmac", additional_headers={"Authorization": f"Bearer {bad}"}))
    assert (code, reason) == (1008, "unauthorized: bad signature")


# --------------------------------------------------------------------------
# key rotation, expiry, readiness


def test_a_new_key_id_is_fetched_at_once(agw, jwks, keys):
    """Key rotation: a token signed with a key the gateway has not seen
    makes it fetch the JWKS again, and the token passes."""
    before = jwks.fetches
    jwks.keys = jwks.keys + [rsa_jwk(keys["rsa2"], "rsa2")]
    t = token(keys, kid="rsa2")
    info, _, addr = run(connect_and_inspect(agw, "/secure/rotated", additional_headers={"Authorization": f"Bearer {t}"}))
    assert headers_of(info)["x-user-id"] == ["user-42"]
    assert jwks.fetches > before
    agw.close_event(addr)


def test_a_token_that_expires_mid_session_closes_1008_at_exp(agw, keys):
    exp = int(time.time()) + 3
    t = token(keys, exp=exp)

    async def main():
        async with client(agw, "/secure/expiring", additional_headers={"Authorization": f"Bearer {t}"}) as ws:
            await asyncio.wait_for(ws.recv(), 10)  # the inspect upstream's greeting
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 15)
            return closed.value.rcvd, time.time(), addr_of(ws)

    rcvd, at, addr = run(main())
    assert (rcvd.code, rcvd.reason) == (1008, "token expired")
    assert exp - 1 <= at <= exp + 2, f"closed at {at - exp:+.2f} s from exp"
    ev = agw.close_event(addr)
    assert (ev["cause"], ev["subject"]) == ("token_expired", "user-42")


def test_readyz_is_503_until_the_jwks_loads(make_gateway, upstreams, keys):
    server = JWKSServer()
    server.keys = [rsa_jwk(keys["rsa1"], "rsa1")]
    server.up = False
    try:
        routes = base_config(upstreams)["routes"] + [
            {"path": "/s", "upstream": "builtin:echo", "auth": {"jwt": {"jwks_url": server.url, "jwks_refresh_ms": 1000}}}]
        gw = make_gateway(routes=routes)
        admin = gw.wait_for(lambda l: l.get("event") == "admin_listening")["port"]
        gw.wait_for(lambda l: l.get("event") == "jwks_fetch_failed", timeout=15)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5)
        assert e.value.code == 503 and b"signing keys not loaded" in e.value.read()
        server.up = True
        gw.wait_for(lambda l: l.get("event") == "jwks_loaded", timeout=15)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
            assert r.status == 200
        # The JWKS goes down later: the last good keys stay.
        server.up = False
        gw.wait_for(lambda l: l.get("event") == "jwks_fetch_failed" and l.get("reason") == "refresh", timeout=15)
        t = token(keys, aud=None, iss=None)

        async def ok():
            async with client(gw, "/s", additional_headers={"Authorization": f"Bearer {t}"}) as ws:
                await ws.send("still")
                return await asyncio.wait_for(ws.recv(), 10)

        assert run(ok()) == "still"
    finally:
        server.stop()
