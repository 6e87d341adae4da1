"""Client-side protocol rules (RFC 6455 §5, §7), with hand-built frames over
raw asyncio sockets. A violation must end the connection with a close frame
(1002 / 1007 / 1009), a completed close handshake, and one log line."""

from __future__ import annotations

import asyncio
import struct

import pytest

import rawws
from rawws import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, frame
from conftest import DEFAULT_MAX, run

PROTOCOL_ROUTES = ["/echo", "/up/echo"]


async def violate(gw, frames: list[bytes], *, path="/echo", warmup=False):
    ws = await rawws.RawWS.connect(gw.port, path)
    if warmup:
        await ws.send_frame(OP_TEXT, b"warm")
        assert (await ws.read_message())[:2] == (OP_TEXT, b"warm")
    for f in frames:
        ws.send(f)
    try:
        await ws.drain(10)
    except (ConnectionResetError, BrokenPipeError):
        pass  # the gateway may stop reading once it has seen the violation
    res = await ws.expect_close(timeout=10)
    ws.close_tcp()  # an orderly FIN, as a browser would after the close handshake
    return ws.local_addr, res


def check(gw, addr, res, code, cause):
    assert res.code is not None, f"expected close {code}, but TCP ended without a close frame (reset={res.reset})"
    assert res.code == code, f"expected close {code}, got {res.code} {res.reason!r}"
    assert res.code not in (1005, 1006, 1015) and res.close_frame_len != 1
    assert len(res.reason.encode()) <= 123
    assert res.tcp_closed, "the gateway must close TCP after the close handshake"
    ev = gw.close_event(addr)
    assert ev["cause"] == cause
    assert ev["code"] == code
    assert ev["reason"] == res.reason
    assert ev["initiator"] == "gateway"
    assert ev["was_clean"] is True, (
        f"client got close {res.code}, answered it with a close frame, and the gateway closed TCP "
        f"{res.eof_after_reply_s}s after that reply; yet the log says was_clean=false: {ev}")
    return ev


VIOLATIONS_1002 = {
    "unmasked_text": [frame(OP_TEXT, b"hello", mask=False)],
    "rsv1_set": [frame(OP_TEXT, b"hello", rsv=4)],
    "rsv2_set": [frame(OP_BINARY, b"hello", rsv=2)],
    "rsv3_set_on_ping": [frame(OP_PING, b"p", rsv=1)],
    "reserved_data_opcode_3": [frame(0x3, b"x")],
    "reserved_data_opcode_7": [frame(0x7, b"x")],
    "reserved_control_opcode_B": [frame(0xB, b"x")],
    "reserved_control_opcode_F": [frame(0xF)],
    "continuation_without_start": [frame(OP_CONT, b"x", fin=True)],
    "continuation_without_start_unfinished": [frame(OP_CONT, b"x", fin=False)],
    "text_inside_fragmented_text": [frame(OP_TEXT, b"ab", fin=False), frame(OP_TEXT, b"cd")],
    "binary_inside_fragmented_text": [frame(OP_TEXT, b"ab", fin=False), frame(OP_BINARY, b"cd")],
    "text_inside_fragmented_binary": [frame(OP_BINARY, b"ab", fin=False), frame(OP_CONT, b"c", fin=False),
                                      frame(OP_TEXT, b"d")],
    "ping_126_bytes": [frame(OP_PING, b"p" * 126)],
    "pong_126_bytes": [frame(OP_PONG, b"p" * 126)],
    "close_126_bytes": [frame(OP_CLOSE, struct.pack("!H", 1000) + b"r" * 124)],
    "fragmented_ping": [frame(OP_PING, b"ab", fin=False), frame(OP_CONT, b"cd")],
    "fragmented_close": [frame(OP_CLOSE, struct.pack("!H", 1000), fin=False)],
    "close_payload_1_byte": [frame(OP_CLOSE, b"\x03")],
}


@pytest.mark.parametrize("name", list(VIOLATIONS_1002))
def test_protocol_violation_1002(gateway, name):
    addr, res = run(violate(gateway, VIOLATIONS_1002[name]))
    check(gateway, addr, res, 1002, "client_protocol_error")


@pytest.mark.parametrize("path", PROTOCOL_ROUTES)
def test_unmasked_frame_after_traffic_counts(gateway, path):
    addr, res = run(violate(gateway, [frame(OP_TEXT, b"hello", mask=False)], path=path, warmup=True))
    ev = check(gateway, addr, res, 1002, "client_protocol_error")
    assert (ev["messages_in"], ev["messages_out"], ev["bytes_in"], ev["bytes_out"]) == (1, 1, 4, 4)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_with_invalid_code(gateway, code):
    addr, res = run(violate(gateway, [frame(OP_CLOSE, rawws.close_payload(code, b"x"))]))
    check(gateway, addr, res, 1002, "client_protocol_error")


INVALID_UTF8 = {
    "single_frame_ff": [frame(OP_TEXT, b"abc\xffdef")],
    "overlong_encoding": [frame(OP_TEXT, b"\xc0\xaf")],
    "surrogate": [frame(OP_TEXT, b"\xed\xa0\x80")],
    "above_u10ffff": [frame(OP_TEXT, b"\xf4\x90\x80\x80")],
    "truncated_at_end": [frame(OP_TEXT, b"ok \xe2\x82")],
    "invalid_in_second_fragment": [frame(OP_TEXT, b"valid ", fin=False), frame(OP_CONT, b"\xff", fin=False),
                                   frame(OP_CONT, b"tail")],
    "split_sequence_broken": [frame(OP_TEXT, b"\xe2", fin=False), frame(OP_CONT, b"\x28\xa1")],
    "truncated_at_last_fragment": [frame(OP_TEXT, b"ab", fin=False), frame(OP_CONT, b"\xf0\x9f\x98")],
}


@pytest.mark.parametrize("name", list(INVALID_UTF8))
def test_invalid_utf8_text_1007(gateway, name):
    addr, res = run(violate(gateway, INVALID_UTF8[name]))
    check(gateway, addr, res, 1007, "client_invalid_utf8")


@pytest.mark.parametrize("path", PROTOCOL_ROUTES)
def test_invalid_utf8_on_ws_upstream_route(gateway, path):
    addr, res = run(violate(gateway, [frame(OP_TEXT, b"\xff")], path=path))
    check(gateway, addr, res, 1007, "client_invalid_utf8")


@pytest.mark.parametrize(
    "frags",
    [
        [b"\xe2", b"\x82\xac"],  # U+20AC split 1|2
        [b"\xe2\x82", b"\xac"],  # U+20AC split 2|1
        [b"a\xf0\x9f", b"\x98", b"\x80b"],  # U+1F600 across three fragments
        [b"", b"\xc3", b"", b"\xa9"],  # empty fragments around a split U+00E9
    ],
    ids=["euro_1_2", "euro_2_1", "emoji_3_frags", "with_empty_frags"],
)
def test_code_point_split_across_fragments_passes(gateway, frags):
    async def main():
        ws = await rawws.RawWS.connect(gateway.port, "/echo")
        for i, f in enumerate(frags):
            op = OP_TEXT if i == 0 else OP_CONT
            ws.send(frame(op, f, fin=i == len(frags) - 1))
        await ws.drain()
        op, data, _ = await ws.read_message()
        ws.send(frame(OP_CLOSE, rawws.close_payload(1000)))
        res = await ws.expect_close()
        return ws.local_addr, op, data, res

    addr, op, data, res = run(main())
    assert op == OP_TEXT
    assert data == b"".join(frags)
    assert res.code == 1000
    ev = gateway.close_event(addr)
    assert ev["cause"] == "client_closed"


TOO_BIG = {
    "binary_single_frame": lambda: [frame(OP_BINARY, b"\x00" * (DEFAULT_MAX + 1))],
    "text_single_frame": lambda: [frame(OP_TEXT, b"a" * (DEFAULT_MAX + 1))],
    "binary_fragments": lambda: [frame(OP_BINARY, b"\x00" * 400_000, fin=False),
                                 frame(OP_CONT, b"\x00" * 400_000, fin=False),
                                 frame(OP_CONT, b"\x00" * 400_000)],
    "text_fragments_limit_plus_one": lambda: [frame(OP_TEXT, b"a" * (DEFAULT_MAX // 2), fin=False),
                                              frame(OP_CONT, b"a" * (DEFAULT_MAX // 2), fin=False),
                                              frame(OP_CONT, b"a")],
}


@pytest.mark.parametrize("name", list(TOO_BIG))
def test_message_over_limit_1009(gateway, name):
    addr, res = run(violate(gateway, TOO_BIG[name]()))
    check(gateway, addr, res, 1009, "client_message_too_big")


def test_message_over_limit_on_ws_upstream_route(gateway):
    addr, res = run(violate(gateway, TOO_BIG["binary_single_frame"](), path="/up/echo"))
    check(gateway, addr, res, 1009, "client_message_too_big")


def test_over_limit_frame_is_skipped_and_the_close_reply_awaited(gateway):
    """A frame a little over the limit (a browser's too-big message): the
    gateway answers 1009 at once, drops the frame's bytes as they come, and
    keeps TCP open until the client's close reply arrives after them, as a
    close handshake goes (Firefox reports `wasClean: false` when the server
    ends TCP before its reply). No FIN while the reply is still to come."""
    async def main():
        ws = await rawws.RawWS.connect(gateway.port, "/echo")
        ws.send(frame(OP_TEXT, b"a" * (DEFAULT_MAX + 1)))
        await ws.drain(10)
        f = await ws.read_frame()
        assert (f.opcode, f.close_code) == (OP_CLOSE, 1009)
        try:
            early = await asyncio.wait_for(ws.reader.read(1), 0.5)
        except asyncio.TimeoutError:
            early = None  # nothing, and no FIN: still waiting for our reply
        assert early is None, f"the gateway ended TCP (or sent {early!r}) before the client's close reply"
        ws.send(frame(OP_CLOSE, f.payload[:2]))
        await ws.drain()
        rest = await asyncio.wait_for(ws.reader.read(), 10)
        assert rest == b"", "TCP closed after the close reply"
        return ws.local_addr

    addr = run(main())
    ev = gateway.close_event(addr)
    assert (ev["cause"], ev["code"], ev["was_clean"]) == ("client_message_too_big", 1009, True)


def test_frame_header_announcing_too_much_is_rejected_early(gateway):
    """A 64-bit length far over the limit: the gateway must not wait for the
    payload (it never comes) but close 1009 right away."""
    hdr = bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 40) + b"\x01\x02\x03\x04"
    addr, res = run(violate(gateway, [hdr]))
    check(gateway, addr, res, 1009, "client_message_too_big")


# ------------------------------------------------------------- valid control frames


@pytest.mark.parametrize("path", PROTOCOL_ROUTES)
@pytest.mark.parametrize("payload", [b"", b"hello-ping", bytes(range(125))], ids=["empty", "short", "125B"])
def test_raw_ping_gets_pong_with_same_payload(gateway, path, payload):
    async def main():
        ws = await rawws.RawWS.connect(gateway.port, path)
        await ws.send_frame(OP_PING, payload)
        f = await ws.read_frame()
        ws.abort()
        return f

    f = run(main())
    assert f.opcode == OP_PONG, f"expected a pong, got opcode {f.opcode:#x}"
    assert f.payload == payload
    assert f.fin and f.rsv == 0 and not f.masked


def test_ping_between_fragments_is_answered_and_message_survives(gateway):
    async def main():
        ws = await rawws.RawWS.connect(gateway.port, "/echo")
        ws.send(frame(OP_TEXT, b"ab", fin=False))
        ws.send(frame(OP_PING, b"mid"))
        ws.send(frame(OP_CONT, b"cd", fin=False))
        ws.send(frame(OP_PONG, b"unsolicited"))
        ws.send(frame(OP_CONT, b"ef"))
        await ws.drain()
        got = []
        def done():
            final = any(f.opcode in (OP_TEXT, OP_CONT) and f.fin for f in got)
            return final and any(f.opcode == OP_PONG for f in got)

        while not done():
            got.append(await ws.read_frame())
        ws.abort()
        return got

    frames = run(main())
    pongs = [f for f in frames if f.opcode == OP_PONG]
    data = b"".join(f.payload for f in frames if f.opcode in (OP_TEXT, OP_CONT))
    assert [p.payload for p in pongs] == [b"mid"]
    assert data == b"abcdef"


def test_unsolicited_pong_is_ignored(gateway):
    async def main():
        ws = await rawws.RawWS.connect(gateway.port, "/echo")
        await ws.send_frame(OP_PONG, b"whatever")
        await ws.send_frame(OP_TEXT, b"next")
        op, data, controls = await ws.read_message()
        ws.abort()
        return op, data

    assert run(main()) == (OP_TEXT, b"next")


@pytest.mark.parametrize("path", PROTOCOL_ROUTES)
@pytest.mark.parametrize("delivery", ["one_write", "byte_by_byte"])
def test_frames_however_tcp_splits_them(gateway, path, delivery):
    """The gateway frames the byte stream itself: many frames in one segment,
    a frame split at every byte, and a ping between the fragments of a message
    must all come out as the same messages, in order, with the ping answered."""
    frames = [frame(OP_TEXT, b"first"), frame(OP_BINARY, bytes(range(200)))]
    frames += [frame(OP_TEXT, b"frag-", fin=False), frame(OP_PING, b"mid"), frame(OP_CONT, "\u20ac".encode(), fin=False)]
    frames += [frame(OP_CONT, b"-end"), frame(OP_BINARY, b"\x00" * 70000), frame(OP_TEXT, b"")]
    wire = b"".join(frames)
    expected = [(OP_TEXT, b"first"), (OP_BINARY, bytes(range(200))), (OP_TEXT, "frag-\u20ac-end".encode()),
                (OP_BINARY, b"\x00" * 70000), (OP_TEXT, b"")]

    async def main():
        ws = await rawws.RawWS.connect(gateway.port, path)
        if delivery == "one_write":
            ws.send(wire)
            await ws.drain()
        else:
            for i in range(0, 400):  # the first frames byte by byte, the rest at once
                ws.send(wire[i:i + 1])
                await ws.drain()
            ws.send(wire[400:])
            await ws.drain()
        got, controls = [], []
        for _ in expected:
            opcode, data, seen = await ws.read_message(timeout=10)
            got.append((opcode, data))
            controls += seen
        await ws.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        res = await ws.expect_close(timeout=10, reply=False)
        ws.close_tcp()
        return ws.local_addr, got, controls, res

    addr, got, controls, res = run(main())
    assert got == expected
    assert [(f.opcode, f.payload) for f in controls] == [(OP_PONG, b"mid")]
    assert res.code == 1000
    ev = gateway.close_event(addr)
    assert ev["cause"] == "client_closed" and ev["was_clean"] is True
    assert (ev["messages_in"], ev["messages_out"]) == (5, 5)
    n = sum(len(d) for _, d in expected)
    assert (ev["bytes_in"], ev["bytes_out"]) == (n, n)


@pytest.mark.parametrize("path", PROTOCOL_ROUTES)
def test_frames_sent_with_the_upgrade_request(gateway, path):
    """Frames in the same segment as the upgrade request (before the 101) are
    not lost: NIO holds them during the upgrade and hands them to the leg."""
    import asyncio
    import base64

    async def main():
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        key = base64.b64encode(rawws.RNG.randbytes(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        writer.write(request + frame(OP_TEXT, b"early") + frame(OP_BINARY, b"\x01\x02"))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        ws = rawws.RawWS(reader, writer, head.decode("latin-1"))
        got = [(await ws.read_message())[:2] for _ in range(2)]
        await ws.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        res = await ws.expect_close(timeout=10, reply=False)
        ws.close_tcp()
        return got, res

    got, res = run(main())
    assert got == [(OP_TEXT, b"early"), (OP_BINARY, b"\x01\x02")]
    assert res.code == 1000


def test_echo_keeps_data_before_a_later_pong(gateway):
    """builtin:echo: a ping sent after a message is answered after that
    message is echoed (one client read can hold both)."""
    async def main():
        ws = await rawws.RawWS.connect(gateway.port, "/echo")
        ws.send(frame(OP_TEXT, b"a") + frame(OP_PING, b"p") + frame(OP_TEXT, b"b"))
        await ws.drain()
        got = [await ws.read_frame() for _ in range(3)]
        await ws.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        await ws.expect_close(timeout=10, reply=False)
        ws.close_tcp()
        return [(f.opcode, f.payload) for f in got]

    assert run(main()) == [(OP_TEXT, b"a"), (OP_PONG, b"p"), (OP_TEXT, b"b")]
