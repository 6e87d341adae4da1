#!/usr/bin/env python3
"""Matrix client for Python `websockets` (the asyncio API). PROTOCOL.md is the contract.

What does not depend on the library (the message record, the result line, the
step loop with `expect` and `sleep_ms`, the timeout, the main loop) is in
tests/clients/python-common/matrixclient.py.
"""

from __future__ import annotations

import asyncio
import os
import sys

import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python-common"))
from matrixclient import main, new_result, record, steps, text, timed  # noqa: E402


async def run_case(case: dict) -> dict:
    r = new_result(case)
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

        async def do(step: dict) -> None:
            if step.get("send") == "text":
                await ws.send(text(step))
            elif step.get("send") == "binary":
                await ws.send(bytes.fromhex(step["hex"]))
            elif step.get("send") == "fragments":
                await ws.send(iter(step["parts"]))  # an iterable: one frame per part
            elif "ping" in step:
                waiter = await ws.ping(step["ping"].encode())
                await asyncio.wait([asyncio.ensure_future(waiter), rd], return_when=asyncio.FIRST_COMPLETED)
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    r["pongs"] += 1
            elif "close" in step:
                await ws.close(step["close"], step.get("reason", ""))

        try:
            await steps(case, r, rd, got, do)
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

    return await timed(case, r, errors, body)


if __name__ == "__main__":
    main(f"websockets {websockets.__version__}", run_case)
