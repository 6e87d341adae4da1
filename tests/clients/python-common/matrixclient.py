"""The part of the Python client-matrix drivers that does not depend on the
WebSocket library (tests/clients/PROTOCOL.md is the contract): the message record
(length, FNV-1a, data), a case's result line, the steps that need no library, the
case's timeout and timing, and the program's main loop (`--version`, then one JSON
line per case).

Each driver (tests/clients/python-websockets, tests/clients/python-aiohttp) keeps
what is its library's: connecting, receiving, sending, pinging and closing, and how
it aborts a connection. The drivers import this file by path (it is not an installed package):

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python-common"))
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, Awaitable, Callable


def fnv(data: bytes) -> str:
    """FNV-1a 32-bit of data, as 8 lowercase hex digits."""
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


def record(msg: str | bytes) -> dict:
    """A received data message (str: text, bytes: binary) as the result line records it:
    length in bytes (UTF-8 for text), FNV-1a, and the text or the hex of binary up to 64 bytes."""
    raw = msg.encode() if isinstance(msg, str) else bytes(msg)
    small = len(raw) <= 64
    return {"type": "text" if isinstance(msg, str) else "binary", "len": len(raw), "fnv": fnv(raw),
            "data": (msg if isinstance(msg, str) else raw.hex()) if small else None}


def new_result(case: dict) -> dict:
    """The result line of a case before anything happened (`elapsed_ms` is set by `timed`)."""
    return {"id": case["id"], "opened": False, "status": None, "protocol": None, "messages": [], "pongs": 0,
            "code": None, "reason": None, "clean": None, "error": None, "unsupported": [], "timeout": False}


def text(step: dict) -> str:
    """The message of a `send: text` step: `data`, or `repeat` `times` times."""
    return step["repeat"] * step["times"] if "repeat" in step else step["data"]


async def steps(case: dict, r: dict, reader: asyncio.Task, received: asyncio.Event,
                do: Callable[[dict], Awaitable[None]]) -> None:
    """Runs the case's steps in order until the reader task ends. It does `expect` (wait
    until that many messages in total have been received, or the reader ends; `received` is
    the event the reader sets on each message and when it ends) and `sleep_ms` (wait, still
    receiving) itself, and gives the others (`send`, `ping`, `close`) to do(step), which does
    them with the library. What do() raises is the caller's to catch."""
    for step in case.get("steps", []):
        if reader.done():
            break
        if "expect" in step:
            while len(r["messages"]) < step["expect"] and not reader.done():
                received.clear()
                await received.wait()
        elif "sleep_ms" in step:
            await asyncio.sleep(step["sleep_ms"] / 1000)
        else:
            await do(step)


async def timed(case: dict, r: dict, errors: list[str], body: Callable[[], Awaitable[None]],
                on_timeout: Callable[[], None] | None = None) -> dict:
    """Runs body() for at most the case's `timeout_ms`; on timeout sets `timeout` and calls
    on_timeout (to abort the connection). Then fills `error` (errors joined with ` | `) and
    `elapsed_ms`, and returns r."""
    start = time.monotonic()
    try:
        await asyncio.wait_for(body(), case.get("timeout_ms", 15000) / 1000)
    except asyncio.TimeoutError:
        r["timeout"] = True
        if on_timeout is not None:
            on_timeout()
    r["error"] = " | ".join(errors) or None
    r["elapsed_ms"] = int((time.monotonic() - start) * 1000)
    return r


def main(library: str, run_case: Callable[..., Awaitable[dict]],
         session: Callable[[], Any] | None = None) -> None:
    """A driver's main: `--version` prints `<library>, Python <version>`; `CASES.json` runs
    the cases one at a time and prints one JSON line per case, flushed.

    run_case(case) returns the result line. With session (a factory of an async context
    manager, e.g. aiohttp.ClientSession), one is opened for all the cases and each call is
    run_case(<what it yields>, case)."""
    if sys.argv[1:] == ["--version"]:
        print(f"{library}, Python {sys.version.split()[0]}")
        return

    async def loop() -> None:
        with open(sys.argv[1]) as f:
            cases = json.load(f)
        if session is None:
            for case in cases:
                print(json.dumps(await run_case(case), ensure_ascii=False), flush=True)
        else:
            async with session() as s:
                for case in cases:
                    print(json.dumps(await run_case(s, case), ensure_ascii=False), flush=True)

    asyncio.run(loop())
