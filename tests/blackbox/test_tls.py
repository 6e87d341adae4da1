"""TLS: wss:// clients terminated at the gateway (`listen.tls`), wss:// and
https:// upstreams verified against the system store or a route's `ca_file`,
`server_name`, and the explicit `insecure_skip_verify`."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import subprocess
import threading

import pytest
import websockets
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import serve as ws_serve

from conftest import BIN, FIXTURE_TIMEOUTS, Gateway, addr_of, clean_env, client, run

NOW = datetime.datetime.now(datetime.timezone.utc)


def make_cert(common_name, issuer_cert=None, issuer_key=None, is_ca=False, sans=()):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer_cert.subject if issuer_cert else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(days=1))
               .not_valid_after(NOW + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def write_pem(path, cert=None, key=None):
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_cert("wsgate test CA", is_ca=True)
    # DNS name only: an IP SAN for 127.0.0.1 would let any connection to
    # 127.0.0.1 pass hostname checks, whatever server_name says.
    server, server_key = make_cert("localhost", ca, ca_key, sans=[x509.DNSName("localhost")])
    other, other_key = make_cert("untrusted", sans=[x509.DNSName("localhost")])
    return {
        "ca": write_pem(d / "ca.pem", ca),
        "cert": write_pem(d / "server.pem", server),
        "key": write_pem(d / "server.key", key=server_key),
        "other_cert": write_pem(d / "other.pem", other),
        "other_key": write_pem(d / "other.key", key=other_key),
    }


class TLSUpstreams:
    """A wss:// echo server and an https:// echo server, both with the
    CA-signed certificate, on a background loop."""

    def __init__(self, pki):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["cert"], pki["key"])
        asyncio.run_coroutine_threadsafe(self._start(ctx), self.loop).result(10)

    async def _start(self, ctx):
        async def echo(ws):
            if ws.request.path == "/host":
                await ws.send(ws.request.headers.get("Host", ""))
            async for m in ws:
                await ws.send(m)
        self.wss = await ws_serve(echo, "127.0.0.1", 0, ssl=ctx)
        self.wss_port = self.wss.sockets[0].getsockname()[1]

        async def handler(request):
            return web.Response(body=await request.read(), content_type="text/plain")
        app = web.Application()
        app.router.add_post("/{tail:.*}", handler)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.https_port = site._server.sockets[0].getsockname()[1]

    def stop(self):
        async def _stop():
            self.wss.close()
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def tls_upstreams(pki):
    u = TLSUpstreams(pki)
    yield u
    u.stop()


@pytest.fixture(scope="module")
def tgw(pki, tls_upstreams, tmp_path_factory):
    w, h = tls_upstreams.wss_port, tls_upstreams.https_port
    cfg = {
        "listen": {"host": "127.0.0.1", "port": 0, "tls": {"certificate": pki["cert"], "private_key": pki["key"]}},
        "admin": {"host": "127.0.0.1", "port": 0},
        "timeouts": dict(FIXTURE_TIMEOUTS),
        "routes": [
            {"path": "/echo", "upstream": "builtin:echo"},
            {"path": "/wss-ok", "upstream": f"wss://localhost:{w}/", "tls": {"ca_file": pki["ca"]}},
            {"path": "/wss-untrusted", "upstream": f"wss://localhost:{w}/"},
            {"path": "/wss-insecure", "upstream": f"wss://localhost:{w}/", "tls": {"insecure_skip_verify": True}},
            {"path": "/wss-name-host", "upstream": f"wss://127.0.0.1:{w}/host",
             "tls": {"ca_file": pki["ca"], "server_name": "localhost"}},
            {"path": "/https-hooks", "upstream": f"https://localhost:{h}/x", "tls": {"ca_file": pki["ca"]},
             "http": {"connect_url": f"https://localhost:{h}/connect"}},
            {"path": "/wss-name", "upstream": f"wss://127.0.0.1:{w}/",
             "tls": {"ca_file": pki["ca"], "server_name": "localhost"}},
            {"path": "/wss-wrong-name", "upstream": f"wss://127.0.0.1:{w}/",
             "tls": {"ca_file": pki["ca"], "server_name": "not-the-name.example"}},
            {"path": "/https-ok", "upstream": f"https://localhost:{h}/x", "tls": {"ca_file": pki["ca"]}},
            {"path": "/https-untrusted", "upstream": f"https://localhost:{h}/x"},
            {"path": "/https-insecure", "upstream": f"https://localhost:{h}/x", "tls": {"insecure_skip_verify": True}},
            {"path": "/https-name", "upstream": f"https://127.0.0.1:{h}/x",
             "tls": {"ca_file": pki["ca"], "server_name": "localhost"}},
        ],
    }
    gw = Gateway(cfg, tmp_path_factory.mktemp("tgw"), "tls")
    yield gw
    gw.check_finish()


def client_ctx(pki):
    ctx = ssl.create_default_context(cafile=pki["ca"])
    return ctx


async def echo_once(gw, pki, path, message="hello"):
    # to 127.0.0.1, verifying the certificate's name `localhost`
    async with client(gw, path, ssl=client_ctx(pki), server_hostname="localhost") as ws:
        addr = addr_of(ws)
        try:
            await ws.send(message)
            reply = await asyncio.wait_for(ws.recv(), 20)
        except websockets.ConnectionClosed:  # closed by the gateway (a failed upstream)
            reply = None
    rcvd = ws.protocol.close_rcvd
    return addr, reply, rcvd


def close_line(gw, addr):
    """The connection's websocket_close line, asserted to be its only one
    (after a barrier connection, over wss://, has been logged too)."""
    return gw.close_event(addr)


def test_wss_client_echo(tgw, pki):
    addr, reply, rcvd = run(echo_once(tgw, pki, "/echo"))
    assert reply == "hello"
    assert rcvd.code == 1000
    assert close_line(tgw, addr)["cause"] == "client_closed"
    assert tgw.wait_for(lambda l: l.get("event") == "listening")["tls"] is True


def test_plain_client_on_tls_listener_is_rejected(tgw):
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", tgw.port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(100), 10)
        writer.close()
        return data
    data = run(go())
    assert not data.startswith(b"HTTP/1.1 101")
    line = tgw.wait_for(lambda l: l.get("event") == "websocket_reject" and l.get("reason") == "TLS handshake failed")
    assert line["status"] == 400


@pytest.mark.parametrize("path", ["/wss-ok", "/wss-insecure", "/wss-name", "/https-ok", "/https-insecure", "/https-name"])
def test_verified_or_explicitly_insecure_upstreams_work(tgw, pki, path):
    addr, reply, rcvd = run(echo_once(tgw, pki, path))
    assert reply == "hello", f"{path}: close {rcvd}; gateway log: {tgw.raw_lines[-3:]}"
    line = close_line(tgw, addr)
    assert line["cause"] == "client_closed"


@pytest.mark.parametrize("path", ["/wss-untrusted", "/wss-wrong-name", "/https-untrusted"])
def test_untrusted_upstream_is_a_tls_error(tgw, pki, path):
    addr, reply, rcvd = run(echo_once(tgw, pki, path))
    assert reply is None
    assert rcvd.code == 1014 and rcvd.reason == "upstream TLS error"
    line = close_line(tgw, addr)
    assert line["cause"] == "upstream_tls_error"
    assert line["code"] == 1014 and line["was_clean"] is True
    assert line["error"]


def test_insecure_routes_warned_at_start(tgw):
    warned = {l["route"] for l in tgw.snapshot() if l.get("event") == "tls_verification_disabled"}
    assert warned == {"/wss-insecure", "/https-insecure"}
    assert all(l["level"] == "warning" for l in tgw.snapshot() if l.get("event") == "tls_verification_disabled")


def test_check_config_reports_tls_problems(tmp_path, pki):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"""
listen:
  tls: {{certificate: {tmp_path}/missing.pem, private_key: {pki["key"]}}}
routes:
  - path: /a
    upstream: ws://127.0.0.1:9/x
    tls: {{ca_file: {pki["ca"]}}}
  - path: /b
    upstream: wss://127.0.0.1:9/x
    tls: {{ca_file: {tmp_path}/nope.pem, insecure_skip_verify: maybe}}
""")
    p = subprocess.run([str(BIN), "check-config", "--config", str(bad)], capture_output=True, text=True,
                       timeout=30, env=clean_env())
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    out = p.stdout + p.stderr
    assert "listen.tls.certificate:" in out
    assert "routes[0].tls: only applies to wss:// and https:// upstreams" in out
    assert "routes[1].tls.ca_file:" in out
    assert "routes[1].tls.insecure_skip_verify: expected true or false" in out


def test_client_that_never_sends_close_notify_is_dropped_after_close_handshake_ms(pki, tmp_path):
    """A wss:// client that finishes the WebSocket close handshake but never
    answers the gateway's TLS close_notify (and keeps its TCP open) held the
    connection, and its close line, for NIOSSL's default 5 s. The TLS close
    is bounded by close_handshake_ms like every other close path."""
    import base64
    import os
    import socket
    import struct
    import time

    timeouts = dict(FIXTURE_TIMEOUTS, close_handshake_ms=300)
    gw = Gateway({
        "listen": {"host": "127.0.0.1", "port": 0, "tls": {"certificate": pki["cert"], "private_key": pki["key"]}},
        "admin": {"host": "127.0.0.1", "port": 0},
        "timeouts": timeouts,
        "routes": [{"path": "/echo", "upstream": "builtin:echo"}],
    }, tmp_path, "tls-notify")
    try:
        ctx = ssl.create_default_context(cafile=pki["ca"])
        raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        addr = "%s:%d" % s.getsockname()[:2]
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(f"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        mask = os.urandom(4)
        payload = struct.pack("!H", 1000)
        s.sendall(bytes([0x88, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        echo = s.recv(2 + len(payload))
        assert echo[0] == 0x88, echo
        started = time.monotonic()
        # Now: no close_notify, no FIN; the socket just stays open.
        ev = gw.wait_event(addr, "websocket_close", timeout=20)
        waited = time.monotonic() - started
        assert ev["cause"] == "client_closed" and ev["code"] == 1000
        # A bound, with room: 5 s would be NIOSSL's own default.
        assert waited < 3.5, f"the close line waited {waited:.1f} s for the client's close_notify"
        raw.close()
    finally:
        gw.check_finish()


def test_wss_upstream_with_server_name_gets_that_host(tgw, tls_upstreams):
    """`tls.server_name` names the upstream for SNI and the certificate, and
    so for its virtual host: the handshake's Host is that name."""
    async def main():
        async with client(tgw, "/wss-name-host") as ws:
            return await asyncio.wait_for(ws.recv(), 10), addr_of(ws)

    host, addr = run(main())
    assert host == f"localhost:{tls_upstreams.wss_port}"
    tgw.close_event(addr)


def test_hooks_trust_what_their_route_trusts(tgw):
    """An https:// connect_url of a route with `tls.ca_file` is verified
    against that CA (before, hooks used the system store only and failed)."""
    async def main():
        async with client(tgw, "/https-hooks") as ws:
            await ws.send("via hooks")
            return await asyncio.wait_for(ws.recv(), 10), addr_of(ws)

    reply, addr = run(main())
    assert reply == "via hooks"
    ev = tgw.close_event(addr)
    assert ev["cause"] == "client_closed", ev


def test_a_pool_member_with_a_bad_certificate_is_retried(pki, tls_upstreams, tmp_path):
    """Pools: a wss:// target whose certificate the route does not trust
    fails its TLS handshake before the 101, so the next target is tried; the
    failure is counted per target and cause."""
    import urllib.request

    bad_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    bad_ctx.load_cert_chain(pki["other_cert"], pki["other_key"])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    async def start():
        return await ws_serve(echo, "127.0.0.1", 0, ssl=bad_ctx)

    bad = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    bad_port = bad.sockets[0].getsockname()[1]
    gw = Gateway({
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "timeouts": dict(FIXTURE_TIMEOUTS),
        "routes": [{"path": "/echo", "upstream": "builtin:echo"},
                   {"path": "/pool", "upstreams": [f"wss://localhost:{bad_port}/", f"wss://localhost:{tls_upstreams.wss_port}/"],
                    "tls": {"ca_file": pki["ca"]}}],
    }, tmp_path, "tls-pool")
    try:
        async def main():
            async with client(gw, "/pool") as ws:
                await ws.send("through the pool")
                return await asyncio.wait_for(ws.recv(), 10), addr_of(ws)

        reply, addr = run(main())
        assert reply == "through the pool"
        ev = gw.close_event(addr)
        assert ev["attempts"] == 2 and ev["target"] == f"localhost:{tls_upstreams.wss_port}"
        admin = gw.wait_for(lambda l: l.get("event") == "admin_listening")["port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert (f'wsgate_upstream_attempts_total{{route="/pool",target="localhost:{bad_port}",result="upstream_tls_error"}} 1'
                in metrics), [l for l in metrics.splitlines() if "attempts" in l]
    finally:
        gw.check_finish()
        asyncio.run_coroutine_threadsafe(_close(bad), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


async def _close(server):
    server.close()
    await server.wait_closed()
