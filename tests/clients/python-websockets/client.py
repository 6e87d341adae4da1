#!/usr/bin/env python3
"""Matrix client for Python `websockets` (the asyncio API). PROTOCOL.md is the contract."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode


def fnv(data: bytes) -> str:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


def record(msg) -> dict:
    raw = msg.encode() if isinstance(msg, str) else bytes(msg)
    small = len(raw) <= 64
    return {"type": "text" if isinstance(msg, str) else "binary", "len": len(raw), "fnv": fnv(raw),
            "data": (msg if isinstance(msg, str) else raw.hex()) if small else None}


async def run_case(case: dict) -> dict:
    r = {"id": case["id"], "opened": False, "status": None, "protocol": None, "messages": [], "pongs": 0,
         "code": None, "reason": None, "clean": None, "error": None, "unsupported": [], "timeout": False}
    errors: list[str] = []
    got = asyncio.Event()

    async def body() -> None:
        try:
            ws = await connect(case["url"], subprotocols=case.get("protocols") or None, max_size=None,
                               ping_interval=None, open_timeout=None, close_timeout=10)
        except InvalidStatus as e:
            r["status"] = e.response.status_code
            errors.append(str(e))
            return
        except Exception as e:  # refused, reset, bad handshake: what the API raised
            errors.append(f"{type(e).__name__}: {e}")
            return
        r["opened"], r["status"], r["protocol"] = True, 101, ws.subprotocol or ""

        async def reader() -> None:
            try:
                async for msg in ws:
                    r["messages"].append(record(msg))
                    got.set()
            except ConnectionClosed:
                pass
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
            finally:
                got.set()

        rd = asyncio.create_task(reader())
        try:
            for step in case.get("steps", []):
                if rd.done():
                    break
                if "send" in step:
                    if step["send"] == "binary":
                        await ws.send(bytes.fromhex(step["hex"]))
                    elif step["send"] == "fragments":
                        await ws.send(iter(step["parts"]))  # an iterable: one frame per part
                    elif "repeat" in step:
                        await ws.send(step["repeat"] * step["times"])
                    else:
                        await ws.send(step["data"])
                elif "expect" in step:
                    while len(r["messages"]) < step["expect"] and not rd.done():
                        got.clear()
                        await got.wait()
                elif "ping" in step:
                    waiter = await ws.ping(step["ping"].encode())
                    await asyncio.wait([asyncio.ensure_future(waiter), rd], return_when=asyncio.FIRST_COMPLETED)
                    if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                        r["pongs"] += 1
                elif "sleep_ms" in step:
                    await asyncio.sleep(step["sleep_ms"] / 1000)
                elif "close" in step:
                    await ws.close(step["close"], step.get("reason", ""))
        except ConnectionClosed:
            pass
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        await rd
        await ws.wait_closed()
        if ws.close_code is not None:
            r["code"], r["reason"] = ws.close_code, ws.close_reason
        # websockets' own notion: the closing handshake completed when a close frame went each way
        r["clean"] = ws.protocol.close_rcvd is not None and ws.protocol.close_sent is not None

    start = time.monotonic()
    try:
        await asyncio.wait_for(body(), case.get("timeout_ms", 15000) / 1000)
    except asyncio.TimeoutError:
        r["timeout"] = True
    r["error"] = " | ".join(errors) or None
    r["elapsed_ms"] = int((time.monotonic() - start) * 1000)
    return r


async def main() -> None:
    for case in json.load(open(sys.argv[1])):
        print(json.dumps(await run_case(case), ensure_ascii=False), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--version"]:
        print(f"websockets {websockets.__version__}, Python {sys.version.split()[0]}")
    else:
        asyncio.run(main())
