"""HTTP-level rejections before the upgrade: the right status, a
`websocket_reject` log line, and no `websocket_close` line."""

from __future__ import annotations

import asyncio

import pytest
import websockets

import rawws
from conftest import client, run


def reject(gw, lines):
    res = run(rawws.http_request(gw.port, lines))
    ev = gw.reject_event(res.local_addr)
    return res, ev


def no_close_line(gw, addr):
    gw.barrier()
    assert gw.close_events(addr) == [], "a rejected request must not produce a websocket_close line"


@pytest.mark.parametrize("path", ["/nope", "/echo/extra", "/echox", "/", "/up"])
def test_no_route_404(gateway, path):
    res, ev = reject(gateway, rawws.upgrade_request(gateway.port, path))
    assert res.status == 404
    assert ev["status"] == 404
    no_close_line(gateway, res.local_addr)


def test_plain_get_on_route_426(gateway):
    res, ev = reject(gateway, rawws.upgrade_request(gateway.port, "/echo", upgrade=False))
    assert res.status == 426
    assert res.headers.get("upgrade", "").lower() == "websocket", "RFC 7231 §6.5.15: 426 must send Upgrade"
    assert ev["status"] == 426
    no_close_line(gateway, res.local_addr)


@pytest.mark.parametrize("version", ["8", "14", "abc"])
def test_bad_websocket_version_426(gateway, version):
    res, ev = reject(gateway, rawws.upgrade_request(gateway.port, "/echo", version=version))
    assert res.status == 426
    assert res.headers.get("sec-websocket-version") == "13", \
        "RFC 6455 §4.4: a 426 for an unsupported version must list the supported one"
    assert ev["status"] == 426
    no_close_line(gateway, res.local_addr)


def test_missing_key_400(gateway):
    res, ev = reject(gateway, rawws.upgrade_request(gateway.port, "/echo", key=None))
    assert res.status == 400
    assert ev["status"] == 400
    no_close_line(gateway, res.local_addr)


def test_origin_not_allowed_403(gateway):
    res, ev = reject(gateway, rawws.upgrade_request(gateway.port, "/origin",
                                                    extra=["Origin: https://evil.example.com"]))
    assert res.status == 403
    assert ev["status"] == 403
    no_close_line(gateway, res.local_addr)


def test_origin_not_allowed_403_with_websockets_client(gateway):
    async def main():
        with pytest.raises(websockets.InvalidStatus) as ei:
            async with client(gateway, "/origin", origin="https://app.example.com.evil.test"):
                pass
        return ei.value.response.status_code

    assert run(main()) == 403


def test_allowed_origin_is_accepted(gateway):
    async def main():
        async with client(gateway, "/origin", origin="https://app.example.com") as ws:
            await ws.send("o")
            return await asyncio.wait_for(ws.recv(), 10)

    assert run(main()) == "o"


def test_reject_does_not_disturb_other_connections(gateway):
    async def main():
        async with client(gateway, "/echo") as ws:
            await rawws.http_request(gateway.port, rawws.upgrade_request(gateway.port, "/nope"))
            await ws.send("still here")
            return await asyncio.wait_for(ws.recv(), 10)

    assert run(main()) == "still here"


def test_oversized_headers_431(gateway):
    res, ev = reject(gateway, rawws.upgrade_request(gateway.port, "/echo", extra=["X-Big: " + "a" * 200_000]))
    assert res.status == 431
    assert ev["status"] == 431 and ev["reason"] == "request headers too large"
    no_close_line(gateway, res.local_addr)


def test_garbage_instead_of_http_400(gateway):
    res, ev = reject(gateway, ["\x16\x03\x01 this is not HTTP at all"])
    assert res.status == 400
    assert ev["status"] == 400 and ev["reason"] == "malformed HTTP request"
