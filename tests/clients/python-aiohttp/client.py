#!/usr/bin/env python3
"""Matrix client for aiohttp's `ClientSession.ws_connect`. PROTOCOL.md is the contract.

aiohttp cannot send a message in fragments (listed as unsupported). It hides
pongs while it answers pings itself (`autoping=True`), so this client turns
autoping off and answers pings itself, as an application that wants to see
pongs has to.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp


def fnv(data: bytes) -> str:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


def record(kind: str, raw: bytes, text: str | None) -> dict:
    small = len(raw) <= 64
    return {"type": kind, "len": len(raw), "fnv": fnv(raw),
            "data": (text if kind == "text" else raw.hex()) if small else None}


async def run_case(session: aiohttp.ClientSession, case: dict) -> dict:
    r = {"id": case["id"], "opened": False, "status": None, "protocol": None, "messages": [], "pongs": 0,
         "code": None, "reason": None, "clean": None, "error": None, "unsupported": [], "timeout": False}
    errors: list[str] = []
    changed = asyncio.Event()
    holder: dict = {}

    async def body() -> None:
        try:
            ws = await session.ws_connect(case["url"], protocols=tuple(case.get("protocols") or ()),
                                          max_msg_size=64 << 20, autoping=False, autoclose=True)
        except aiohttp.WSServerHandshakeError as e:
            r["status"] = e.status
            errors.append(f"{type(e).__name__}: {e}")
            return
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
            return
        holder["ws"] = ws
        r["opened"], r["status"], r["protocol"] = True, 101, ws.protocol or ""

        async def reader() -> None:
            try:
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        r["messages"].append(record("text", msg.data.encode(), msg.data))
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        r["messages"].append(record("binary", bytes(msg.data), None))
                    elif msg.type == aiohttp.WSMsgType.PING:
                        await ws.pong(msg.data)
                    elif msg.type == aiohttp.WSMsgType.PONG:
                        r["pongs"] += 1
                    elif msg.type == aiohttp.WSMsgType.CLOSE:
                        r["code"], r["reason"] = msg.data, msg.extra
                    elif msg.type == aiohttp.WSMsgType.ERROR:
                        errors.append(f"{type(msg.data).__name__}: {msg.data}")
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING) or ws.closed:
                        return
                    changed.set()
            finally:
                changed.set()

        rd = asyncio.create_task(reader())
        try:
            for step in case.get("steps", []):
                if rd.done():
                    break
                if "send" in step:
                    if step["send"] == "binary":
                        await ws.send_bytes(bytes.fromhex(step["hex"]))
                    elif step["send"] == "fragments":
                        if "fragments" not in r["unsupported"]:
                            r["unsupported"].append("fragments")
                        await ws.send_str("".join(step["parts"]))
                    elif "repeat" in step:
                        await ws.send_str(step["repeat"] * step["times"])
                    else:
                        await ws.send_str(step["data"])
                elif "expect" in step:
                    while len(r["messages"]) < step["expect"] and not rd.done():
                        changed.clear()
                        await changed.wait()
                elif "ping" in step:
                    before = r["pongs"]
                    await ws.ping(step["ping"].encode())
                    while r["pongs"] == before and not rd.done():
                        changed.clear()
                        await changed.wait()
                elif "sleep_ms" in step:
                    await asyncio.sleep(step["sleep_ms"] / 1000)
                elif "close" in step:
                    # close() sends the close frame and reads until the peer's close (the reader is
                    # running, so it waits for the reader to see it)
                    await ws.close(code=step["close"], message=step.get("reason", "").encode())
                    if r["code"] is None:
                        r["code"] = ws.close_code
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        await rd
        if r["code"] is None and ws.close_code is not None:
            r["code"] = ws.close_code
        exc = ws.exception()
        if exc is not None and f"{type(exc).__name__}: {exc}" not in errors:
            errors.append(f"{type(exc).__name__}: {exc}")

    start = time.monotonic()
    try:
        await asyncio.wait_for(body(), case.get("timeout_ms", 15000) / 1000)
    except asyncio.TimeoutError:
        r["timeout"] = True
        if "ws" in holder:
            holder["ws"]._response.close()  # abort the TCP connection
    r["error"] = " | ".join(errors) or None
    r["elapsed_ms"] = int((time.monotonic() - start) * 1000)
    return r


async def main() -> None:
    async with aiohttp.ClientSession() as session:
        for case in json.load(open(sys.argv[1])):
            print(json.dumps(await run_case(session, case), ensure_ascii=False), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--version"]:
        print(f"aiohttp {aiohttp.__version__}, Python {sys.version.split()[0]}")
    else:
        asyncio.run(main())
