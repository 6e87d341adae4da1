#!/usr/bin/env python3
"""Matrix client for aiohttp's `ClientSession.ws_connect`. PROTOCOL.md is the contract.

aiohttp cannot send a message in fragments (listed as unsupported). It hides
pongs while it answers pings itself (`autoping=True`), so this client turns
autoping off and answers pings itself, as an application that wants to see
pongs has to.

What does not depend on the library (the message record, the result line, the
step loop with `expect` and `sleep_ms`, the timeout, the main loop) is in
tests/clients/python-common/matrixclient.py.
"""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python-common"))
from matrixclient import main, new_result, record, steps, text, timed  # noqa: E402


async def run_case(session: aiohttp.ClientSession, case: dict) -> dict:
    r = new_result(case)
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
                        r["messages"].append(record(msg.data))
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        r["messages"].append(record(bytes(msg.data)))
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

        async def do(step: dict) -> None:
            if step.get("send") == "text":
                await ws.send_str(text(step))
            elif step.get("send") == "binary":
                await ws.send_bytes(bytes.fromhex(step["hex"]))
            elif step.get("send") == "fragments":
                if "fragments" not in r["unsupported"]:
                    r["unsupported"].append("fragments")
                await ws.send_str("".join(step["parts"]))
            elif "ping" in step:
                before = r["pongs"]
                await ws.ping(step["ping"].encode())
                while r["pongs"] == before and not rd.done():
                    changed.clear()
                    await changed.wait()
            elif "close" in step:
                # close() sends the close frame and reads until the peer's close (the reader is
                # running, so it waits for the reader to see it)
                await ws.close(code=step["close"], message=step.get("reason", "").encode())
                if r["code"] is None:
                    r["code"] = ws.close_code

        try:
            await steps(case, r, rd, changed, do)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        await rd
        if r["code"] is None and ws.close_code is not None:
            r["code"] = ws.close_code
        exc = ws.exception()
        if exc is not None and f"{type(exc).__name__}: {exc}" not in errors:
            errors.append(f"{type(exc).__name__}: {exc}")

    def abort() -> None:
        if "ws" in holder:
            holder["ws"]._response.close()  # abort the TCP connection

    return await timed(case, r, errors, body, on_timeout=abort)


if __name__ == "__main__":
    # one ClientSession for all the cases
    main(f"aiohttp {aiohttp.__version__}", run_case, session=aiohttp.ClientSession)
