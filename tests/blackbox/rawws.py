"""Hand-built WebSocket frames and HTTP requests over raw asyncio sockets.

Used where the `websockets` library refuses to misbehave: protocol
violations, abrupt TCP drops, HTTP-level rejects. Every read is bounded by a
timeout so that no test can hang.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

DEFAULT_TIMEOUT = 10.0

# Masking keys and handshake keys: conftest replaces this with its seeded RNG
# (reseeded per test from WSGATE_TEST_SEED), so that a run can be replayed.
RNG = random.Random()

# (before(port) -> token, after(port, token, local_addr)): set by conftest to
# tell the gateway fixture which log lines can belong to a new connection.
HOOKS = (lambda port: None, lambda port, token, addr: None)


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """Encode one frame. `rsv` is a 3-bit value (RSV1=4, RSV2=2, RSV3=1).
    `length` overrides the advertised payload length (for lying frames)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = RNG.randbytes(4)
    return head + key + apply_mask(payload, key)


def apply_mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    if code is None:
        return b""
    return struct.pack("!H", code) + reason


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8") if self.opcode == OP_CLOSE else ""


class PeerClosed(Exception):
    """The gateway closed the TCP connection (EOF or reset) while we read."""


@dataclass
class CloseResult:
    code: int | None  # None: no close frame at all (TCP dropped)
    reason: str
    close_frame_len: int | None
    frames_before: list = field(default_factory=list)
    tcp_closed: bool = False  # gateway closed TCP after the close handshake
    reset: bool = False
    eof_after_reply_s: float | None = None  # seconds from our close reply to the gateway's EOF


class RawWS:
    """A minimal, deliberately permissive WebSocket client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response_head: str):
        self.reader = reader
        self.writer = writer
        self.response_head = response_head
        sock = writer.get_extra_info("sockname")
        self.local_addr = f"{sock[0]}:{sock[1]}"

    @classmethod
    async def connect(
        cls, port: int, path: str, *, headers: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> "RawWS":
        token = HOOKS[0](port)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, limit=4 * 1024 * 1024), timeout
        )
        sock = writer.get_extra_info("sockname")
        HOOKS[1](port, token, f"{sock[0]}:{sock[1]}")
        key = base64.b64encode(RNG.randbytes(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        text = head.decode("latin-1")
        status_line = text.split("\r\n", 1)[0]
        if " 101 " not in status_line + " ":
            writer.transport.abort()
            raise AssertionError(f"expected 101, got {status_line!r}")
        hdrs = parse_headers(text)
        assert hdrs.get("sec-websocket-accept") == accept_for(key), f"bad accept header in {text!r}"
        return cls(reader, writer, text)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        await asyncio.wait_for(self.writer.drain(), timeout)

    async def send_frame(self, opcode: int, payload: bytes = b"", **kw) -> None:
        self.writer.write(frame(opcode, payload, **kw))
        await self.drain()

    async def read_frame(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        async def _read() -> Frame:
            try:
                b0, b1 = await self.reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
                masked = bool(b1 & 0x80)
                key = await self.reader.readexactly(4) if masked else b""
                payload = await self.reader.readexactly(n)
            except asyncio.IncompleteReadError as e:
                raise PeerClosed("EOF") from e
            except (ConnectionResetError, BrokenPipeError) as e:
                raise PeerClosed(repr(e)) from e
            if masked:
                payload = apply_mask(payload, key)
            return Frame(bool(b0 & 0x80), (b0 >> 4) & 0x7, b0 & 0xF, masked, payload)

        return await asyncio.wait_for(_read(), timeout)

    async def read_message(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, bytes, list[Frame]]:
        """Read one data message (reassembling fragments). Control frames
        seen on the way are returned in the third element."""
        controls: list[Frame] = []
        opcode = None
        parts: list[bytes] = []
        while True:
            f = await self.read_frame(timeout)
            if f.opcode >= 0x8:
                controls.append(f)
                if f.opcode == OP_CLOSE:
                    raise AssertionError(f"unexpected close {f.close_code} {f.payload[2:]!r}")
                continue
            if opcode is None:
                opcode = f.opcode
            parts.append(f.payload)
            if f.fin:
                return opcode, b"".join(parts), controls

    async def expect_close(self, timeout: float = DEFAULT_TIMEOUT, reply: bool = True) -> CloseResult:
        """Read until the gateway's close frame, answer it, and wait for the
        gateway to close TCP. A TCP end without a close frame gives code None."""
        before: list[Frame] = []
        while True:
            try:
                f = await self.read_frame(timeout)
            except PeerClosed as e:
                return CloseResult(None, "", None, before, tcp_closed=True, reset="Reset" in str(e))
            if f.opcode == OP_CLOSE:
                break
            before.append(f)
        result = CloseResult(f.close_code, f.close_reason, len(f.payload), before)
        if reply:
            try:
                self.writer.write(frame(OP_CLOSE, f.payload[:2]))
                await self.drain()
            except (ConnectionResetError, BrokenPipeError):
                pass
        t0 = time.monotonic()
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout)
            result.eof_after_reply_s = round(time.monotonic() - t0, 3)
            result.tcp_closed = rest == b""
        except (ConnectionResetError, BrokenPipeError):
            result.tcp_closed = True
            result.reset = True
        except asyncio.TimeoutError:
            result.tcp_closed = False
        return result

    def abort(self) -> None:
        """Drop the TCP connection with a RST."""
        sock = self.writer.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.writer.transport.abort()

    def close_tcp(self) -> None:
        """Drop the TCP connection with a FIN, no close frame."""
        self.writer.close()


def parse_headers(head: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip().lower()] = v.strip()
    return out


@dataclass
class HTTPResult:
    status: int
    headers: dict[str, str]
    body: bytes
    local_addr: str


async def http_request(port: int, request_lines: list[str], timeout: float = DEFAULT_TIMEOUT) -> HTTPResult:
    """Send a raw HTTP/1.1 request and read the response (until the server
    closes or Content-Length is satisfied)."""
    token = HOOKS[0](port)
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    sock = writer.get_extra_info("sockname")
    local = f"{sock[0]}:{sock[1]}"
    HOOKS[1](port, token, local)
    try:
        writer.write(("\r\n".join(request_lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        headers = parse_headers(head)
        if "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
        else:
            body = await asyncio.wait_for(reader.read(), timeout)
        return HTTPResult(status, headers, body, local)
    finally:
        writer.transport.abort()


def upgrade_request(port: int, path: str, *, key: str | None = "dGhlIHNhbXBsZSBub25jZQ==",
                    version: str | None = "13", upgrade: bool = True, extra: list[str] | None = None) -> list[str]:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade"]
        if key is not None:
            lines.append(f"Sec-WebSocket-Key: {key}")
        if version is not None:
            lines.append(f"Sec-WebSocket-Version: {version}")
    lines += extra or []
    return lines
