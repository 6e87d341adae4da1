#!/usr/bin/env python3
"""Instructions per relayed message, counted by valgrind's callgrind.

CPU seconds on a shared 2-core machine move with whatever else runs; the
instruction count of the same binary on the same input does not. This runs
`wsgate` (and, with --baseline, an older build) under callgrind in front of
`wsgate-bench echo-server`, warms it up, zeroes the counters, relays a fixed
number of messages with `wsgate-bench load`, dumps, and reports the gateway's
instructions (Ir) per message, in total and for its top functions. With
--nginx, nginx (one process, the benchmark's proxy config) is counted on the
same load, for scale.

    python3 benchmarks/callgrind.py [--bin .build/release] [--baseline DIR] [--nginx]
                                    [--scenario a|b|c] [--messages N] [--top 25]

Scenarios: a = 1 connection × 64 B ping-pong; b = 50 connections × 1 KiB,
1 in flight each; c = the same with 64 KiB; e = 64 connections × 1 KiB through
an `http://` route (one POST per message, libcurl) to the echo's HTTP side
(as in benchmarks/run.py). The gateway runs with `workers: 1`
so that one thread's work is the whole count (the other event loops would only
add their idle wake-ups). Instructions are not time: a syscall counts as one,
and cache misses are free; this is the user-space work per message, which is
what the hot-path changes change.

valgrind 3.19 cannot read the DWARF of a Swift 6.3 build ("possibly corrupted
debuginfo"), so the binaries are copied without it (`objcopy --strip-debug`):
symbols stay, line numbers go. Everything binds to 127.0.0.1; every process is
stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = {"a": {"connections": 1, "size": 64}, "b": {"connections": 50, "size": 1024},
             "c": {"connections": 50, "size": 65536},
             "e": {"connections": 64, "size": 1024, "path": "/api"}}


def wait_line(path: Path, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if re.search(pattern, line):
                    return line
        time.sleep(0.1)
    raise SystemExit(f"timeout waiting for {pattern!r} in {path}:\n{path.read_text(errors='replace')[-2000:] if path.exists() else ''}")


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def load(bench: Path, url: str, scenario: dict, messages: int) -> dict:
    out = subprocess.run([str(bench), "load", "--url", url, "-c", str(scenario["connections"]), "-w", "1",
                          "-s", str(scenario["size"]), "-m", str(messages), "--timeout", "900"],
                         capture_output=True, text=True, timeout=1000, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def nginx_command(tmp: Path, echo_port: int) -> tuple[list[str], int]:
    """nginx with benchmarks/run.py's config, but one process (`master_process
    off`) so that callgrind counts the worker itself."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import nginx_config  # benchmarks/run.py

    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(tmp, port, echo_port, single_process=True))
    return ["nginx", "-p", str(tmp), "-c", str(conf)], port


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listening on {port} after {timeout:.0f} s")


def measure(binary: Path | None, bench: Path, scenario: dict, messages: int, tmp: Path, top: int) -> dict:
    """One gateway binary (None: nginx) under callgrind: Ir per message and
    the top functions."""
    echo_log = tmp / "echo.log"
    echo = subprocess.Popen([str(bench), "echo-server", "--host", "127.0.0.1", "--port", "0"],
                            stdout=open(echo_log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    gw = None
    try:
        echo_port = json.loads(wait_line(echo_log, r'"event":"listening"', 20))["port"]
        out_file = tmp / "callgrind.out"
        gw_log = tmp / "gw.log"
        for old in tmp.glob("callgrind.out*"):
            old.unlink()
        if binary is None:
            command, port = nginx_command(tmp, echo_port)
            gw = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", *command],
                                  stdout=open(gw_log, "w"), stderr=open(tmp / "valgrind.log", "w"),
                                  start_new_session=True)
            wait_port(port, 60)
        else:
            port, gw = start_wsgate(binary, tmp, echo_port, out_file, gw_log)
        url = f"ws://127.0.0.1:{port}{scenario.get('path', '/ws')}"
        load(bench, url, scenario, max(200, messages // 10))  # warm-up: connections, caches, lazy metadata
        subprocess.run(["callgrind_control", "-z", str(gw.pid)], check=True, capture_output=True, timeout=120)
        result = load(bench, url, scenario, messages)
        subprocess.run(["callgrind_control", "-d", "measured", str(gw.pid)], check=True, capture_output=True,
                       timeout=120)
        dumps = sorted(tmp.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
        measured = next(p for p in reversed(dumps) if "measured" in p.read_text(errors="replace")[:4000])
        annotate = subprocess.run(["callgrind_annotate", "--inclusive=no", f"--threshold=100", str(measured)],
                                  capture_output=True, text=True, check=True).stdout
    finally:
        if gw is not None:
            stop(gw)
        stop(echo)
    total = None
    functions = []
    for line in annotate.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(?[\d.]*%?\)?\s*PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*?)\s*$", line)  # self cost, with its share
        # frames that were on the stack when the counters were zeroed (the
        # threads' roots) come out with the whole total: not a function's own cost
        if m and total is not None and int(m.group(1).replace(",", "")) < total // 2:
            functions.append((int(m.group(1).replace(",", "")), m.group(2)))
    if total is None:
        raise SystemExit("callgrind_annotate gave no PROGRAM TOTALS:\n" + annotate[:2000])
    sent = result.get("messages") or messages
    if os.environ.get("WSGATE_CALLGRIND_KEEP") and binary is not None:
        shutil.copy(measured, os.environ["WSGATE_CALLGRIND_KEEP"])
    return {"binary": str(binary) if binary else "nginx", "messages": sent, "ir_total": total, "ir_per_message": total / sent,
            "top": [{"ir_per_message": n / sent, "function": f} for n, f in functions[:top]], "load": result}


def start_wsgate(binary: Path, tmp: Path, echo_port: int, out_file: Path, gw_log: Path):
    stripped = tmp / f"{binary.parent.name}-{binary.name}-nodebug"
    subprocess.run(["objcopy", "--strip-debug", str(binary), str(stripped)], check=True)
    cfg = tmp / "wsgate.yaml"
    cfg.write_text(f"""listen: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
workers: 1
shutdown: {{drain_timeout_ms: 3000}}
routes:
  - {{path: /ws, upstream: "ws://127.0.0.1:{echo_port}/"}}
  - {{path: /api, upstream: "http://127.0.0.1:{echo_port}/"}}
""")
    gw = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
                           str(stripped), "--config", str(cfg)],
                          stdout=open(gw_log, "w"), stderr=open(tmp / "valgrind.log", "w"), start_new_session=True)
    port = json.loads(wait_line(gw_log, r'"event":"listening"', 180))["port"]
    return port, gw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=REPO / ".build" / "release")
    ap.add_argument("--baseline", type=Path, help="directory with an older build's release `wsgate`")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="a")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--nginx", action="store_true", help="also count nginx (worker_processes 1) on the same load")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "objcopy"):
        if not shutil.which(tool):
            print(f"{tool} not found (apt-get install valgrind binutils)", file=sys.stderr)
            return 2
    bench = args.bin / "wsgate-bench"
    results = {}
    with tempfile.TemporaryDirectory(prefix="wsgate-callgrind-") as d:
        runs = [("wsgate", args.bin / "wsgate")]
        if args.baseline:
            runs.append(("baseline", args.baseline / "wsgate"))
        if args.nginx:
            runs.append(("nginx", None))
        for name, binary in runs:
            tmp = Path(d) / name
            tmp.mkdir()
            r = measure(binary, bench, SCENARIOS[args.scenario], args.messages, tmp, args.top)
            results[name] = r
            print(f"== {name} ({r['binary']}): scenario {args.scenario}, {r['messages']} messages: "
                  f"{r['ir_per_message']:,.0f} instructions per message (relayed both ways)")
            for t in r["top"]:
                print(f"   {t['ir_per_message']:>10,.0f}  {t['function'][:150]}")
    for other in ("baseline", "nginx"):
        if other in results:
            a, b = results["wsgate"]["ir_per_message"], results[other]["ir_per_message"]
            print(f"== wsgate / {other}: {a:,.0f} / {b:,.0f} = {a / b:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
