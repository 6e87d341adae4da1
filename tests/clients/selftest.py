#!/usr/bin/env python3
"""Checks one client program against the driver protocol (PROTOCOL.md) without
a gateway: a Python `websockets` server on loopback plays each kind of peer.

    python3 tests/clients/selftest.py tests/clients/gorilla

Builds the client (`build`), runs it on a fixed list of cases and prints each
result line; exits 1 if a line is missing, is not valid JSON, or lacks a
field. It does not judge the codes:
libraries differ, and that difference is what the matrix records.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from websockets.asyncio.server import serve

REPO = Path(__file__).resolve().parents[2]
FIELDS = {"id", "opened", "status", "protocol", "messages", "pongs", "code", "reason", "clean",
          "error", "unsupported", "timeout", "elapsed_ms"}


async def handler(ws) -> None:
    path = ws.request.path.split("?")[0]
    if path == "/echo":
        async for msg in ws:
            await ws.send(msg)
    elif path.startswith("/close/"):
        code = int(path.rsplit("/", 1)[1])
        await ws.close(code, f"closing with {code}")
    elif path == "/fragments":
        await ws.send(["frag-1 ", "frag-2 ", "frag-3"])  # one text message in three frames
        async for msg in ws:
            await ws.send(msg)
    elif path == "/hold":
        await asyncio.sleep(1.0)
        await ws.close(1001, "bye after 1 s")


def process_request(conn, request):
    if request.path.startswith("/status/"):
        status = int(request.path.rsplit("/", 1)[1])
        return conn.respond(status, "refused\n")
    return None


def select_subprotocol(conn, offered):
    return "chat.v1" if "chat.v1" in offered else None


def cases(port: int) -> list[dict]:
    u = f"ws://127.0.0.1:{port}"
    return [
        {"id": "echo", "url": f"{u}/echo", "steps": [
            {"send": "text", "data": "héllo ✓"}, {"send": "binary", "hex": "000102ff"},
            {"expect": 2}, {"close": 1000, "reason": "done"}], "timeout_ms": 5000},
        {"id": "subprotocol", "url": f"{u}/echo", "protocols": ["chat.v2", "chat.v1"],
         "steps": [{"close": 1000, "reason": "done"}], "timeout_ms": 5000},
        {"id": "big", "url": f"{u}/echo", "steps": [
            {"send": "text", "repeat": "abcdefgh", "times": 131072}, {"expect": 1},
            {"close": 1000, "reason": "done"}], "timeout_ms": 10000},
        {"id": "fragments", "url": f"{u}/fragments", "steps": [
            {"expect": 1}, {"send": "fragments", "parts": ["a-", "b-", "c"]}, {"expect": 2},
            {"close": 1000, "reason": "done"}], "timeout_ms": 5000},
        {"id": "ping", "url": f"{u}/echo", "steps": [{"ping": "p1"}, {"close": 1000, "reason": "done"}],
         "timeout_ms": 5000},
        *({"id": f"server_close_{c}", "url": f"{u}/close/{c}", "steps": [], "timeout_ms": 5000}
          for c in (1000, 1001, 1011, 1012, 1013, 1014, 4000, 4502)),
        {"id": "hold", "url": f"{u}/hold", "steps": [], "timeout_ms": 5000},
        {"id": "status_404", "url": f"{u}/status/404", "steps": [], "timeout_ms": 5000},
        {"id": "refused", "url": "ws://127.0.0.1:1/x", "steps": [], "timeout_ms": 5000},
    ]


def main() -> int:
    folder = Path(sys.argv[1]).resolve()
    subprocess.run([str(folder / "build")], check=True)
    print(subprocess.run([str(folder / "run"), "--version"], check=True, capture_output=True, text=True).stdout.strip())
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start():
        return await serve(handler, "127.0.0.1", 0, max_size=None, process_request=process_request,
                           select_subprotocol=select_subprotocol)

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    port = server.sockets[0].getsockname()[1]
    all_cases = cases(port)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(all_cases, f)
    out = subprocess.run([str(folder / "run"), f.name], capture_output=True, text=True, timeout=120)
    sys.stderr.write(out.stderr[-4000:])
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    ok = out.returncode == 0 and len(lines) == len(all_cases)
    for case, line in zip(all_cases, lines):
        try:
            r = json.loads(line)
        except ValueError:
            print(f"NOT JSON: {line!r}")
            ok = False
            continue
        missing = FIELDS - r.keys()
        if missing or r["id"] != case["id"]:
            ok = False
            print(f"BAD LINE ({'missing ' + ', '.join(sorted(missing)) if missing else 'id'}): {line}")
        else:
            print(line)
    print(f"exit {out.returncode}; {len(lines)} lines for {len(all_cases)} cases: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
