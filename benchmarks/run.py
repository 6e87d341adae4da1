#!/usr/bin/env python3
"""wsgate benchmarks. Not a test: prints figures and (with --write) updates
docs/benchmarks.md.

Scenario `ws-http` (WS -> HTTP upstream): 64 client connections send 1 KiB
messages through an `http://` route to nginx serving a fixed 200, measured
with wsgate-bench; in the same run `wrk` POSTs 1 KiB bodies to the same nginx
directly, which is the ceiling.

Scenario `relay`: wsgate-bench against the fast echo upstream directly and
through a `ws://` route, 50 connections x 1 KiB, in-flight 1.

Everything binds to 127.0.0.1 and every process started here is stopped by
its PID.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / ".build" / "release"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, argv, stdout=subprocess.PIPE, **kw):
        self.p = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, **kw)

    def wait_line(self, pattern: str, timeout=20.0) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.p.stdout.readline().decode(errors="replace")
            if not line and self.p.poll() is not None:
                break
            if re.search(pattern, line):
                return line
        raise RuntimeError(f"timed out waiting for {pattern!r} from {self.p.args}")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def start_nginx(tmp: Path) -> tuple[Proc, int]:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok"; }}
  }}
}}
""")
    nginx = Proc(["nginx", "-c", str(conf), "-p", str(tmp)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return nginx, port


def start_gateway(tmp: Path, routes: str) -> tuple[Proc, int]:
    cfg = tmp / "wsgate.yaml"
    cfg.write_text(f"""listen: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
routes:
{routes}
""")
    log = tmp / "wsgate.log"
    gw = Proc([str(RELEASE / "wsgate"), "--config", str(cfg)], stdout=open(log, "wb"))
    deadline = time.time() + 20
    while time.time() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"event":"listening"' in line:
                return gw, int(json.loads(line)["port"])
        time.sleep(0.05)
    raise RuntimeError("wsgate did not start")


def bench(url: str, c: int, w: int, s: int, m: int) -> dict:
    out = subprocess.run([str(RELEASE / "wsgate-bench"), "load", "--url", url, "-c", str(c), "-w", str(w), "-s", str(s), "-m", str(m)],
                         capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def wrk_post(port: int, connections: int, seconds: int, body_size: int, tmp: Path) -> float:
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = string.rep("a", {body_size})\nwrk.headers["Content-Type"] = "application/octet-stream"\n')
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-s", str(script), f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1))


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def scenario_ws_http(tmp: Path, reps: int, messages: int) -> dict:
    nginx, nport = start_nginx(tmp)
    gw, gport = start_gateway(tmp, f'  - {{path: /api, upstream: "http://127.0.0.1:{nport}/"}}')
    try:
        bench(f"ws://127.0.0.1:{gport}/api", 64, 1, 1024, 5000)  # warm-up
        ceiling, through = [], []
        for _ in range(reps):
            ceiling.append(wrk_post(nport, 64, 5, 1024, tmp))
            r = bench(f"ws://127.0.0.1:{gport}/api", 64, 1, 1024, messages)
            through.append(r)
        return {"ceiling": ceiling, "wsgate": through}
    finally:
        gw.stop()
        nginx.stop()


def scenario_relay(tmp: Path, reps: int, messages: int) -> dict:
    echo = Proc([str(RELEASE / "wsgate-bench"), "echo-server", "--port", "0"])
    eport = int(json.loads(echo.wait_line("listening"))["port"])
    gw, gport = start_gateway(tmp, f'  - {{path: /ws, upstream: "ws://127.0.0.1:{eport}/"}}')
    try:
        bench(f"ws://127.0.0.1:{gport}/ws", 50, 1, 1024, 10000)
        direct, through, cpu = [], [], []
        for _ in range(reps):
            direct.append(bench(f"ws://127.0.0.1:{eport}/", 50, 1, 1024, messages))
            before = gw.cpu_seconds()
            through.append(bench(f"ws://127.0.0.1:{gport}/ws", 50, 1, 1024, messages))
            cpu.append((gw.cpu_seconds() - before) / messages * 100_000)
        return {"direct": direct, "wsgate": through, "cpu_per_100k": cpu}
    finally:
        gw.stop()
        echo.stop()


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["ws-http", "relay", "all"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--smoke", action="store_true", help="tiny counts, to keep the tool working (used by tests)")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md from this run")
    args = ap.parse_args()
    if args.smoke:
        args.reps, args.messages = 1, 2000
    for tool in ["nginx", "wrk"]:
        if not shutil.which(tool) and args.scenario in ("ws-http", "all"):
            sys.exit(f"{tool} not found (apt-get install nginx-light wrk iproute2)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
        if args.scenario in ("ws-http", "all"):
            r = scenario_ws_http(tmp, args.reps, args.messages)
            c = median(r["ceiling"])
            w = median([x["msgs_per_s"] for x in r["wsgate"]])
            results["ws_http"] = {"wrk_ceiling_rps": c, "wsgate_msgs_per_s": w, "ratio": w / c,
                                  "p50_us": median([x["p50_us"] for x in r["wsgate"]]),
                                  "p99_us": median([x["p99_us"] for x in r["wsgate"]]),
                                  "runs": r}
        if args.scenario in ("relay", "all"):
            r = scenario_relay(tmp, args.reps, args.messages)
            results["relay"] = {"direct_msgs_per_s": median([x["msgs_per_s"] for x in r["direct"]]),
                                "wsgate_msgs_per_s": median([x["msgs_per_s"] for x in r["wsgate"]]),
                                "direct_p50_us": median([x["p50_us"] for x in r["direct"]]),
                                "wsgate_p50_us": median([x["p50_us"] for x in r["wsgate"]]),
                                "wsgate_cpu_s_per_100k": median(r["cpu_per_100k"]),
                                "runs": r}
        print(json.dumps(results, indent=1))
        if args.write:
            write_markdown(results, args)


def write_markdown(r: dict, args) -> None:
    nginx_version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    curl_version = subprocess.run(["curl-config", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python3 benchmarks/run.py {args.scenario} --reps {args.reps} --messages {args.messages} --write` "
        f"on {r['date']}: {r['machine']}; nginx {nginx_version}, {curl_version}, release build.",
        "Every figure is the median of the reps; load generator, gateway and upstream share the machine's cores, "
        "so absolute numbers are low and ratios are what count.",
        "",
    ]
    if "ws_http" in r:
        w = r["ws_http"]
        lines += [
            "## WS → HTTP (HTTP upstream through libcurl)",
            "",
            "64 WebSocket connections, 1 message of 1 KiB in flight each, through an `http://` route to nginx "
            "(`worker_processes 1`, `return 200`). Ceiling: `wrk -t1 -c64` POSTing 1 KiB bodies to the same nginx directly.",
            "",
            "| | requests or messages / s | p50 | p99 |",
            "|---|---|---|---|",
            f"| wrk → nginx (ceiling) | {w['wrk_ceiling_rps']:,.0f} | | |",
            f"| wsgate-bench → wsgate → nginx | {w['wsgate_msgs_per_s']:,.0f} | {w['p50_us']/1000:.2f} ms | {w['p99_us']/1000:.2f} ms |",
            f"| ratio | {w['ratio']*100:.0f} % of the ceiling | | |",
            "",
        ]
    if "relay" in r:
        x = r["relay"]
        lines += [
            "## WebSocket relay (`ws://` route)",
            "",
            "50 connections × 1 KiB messages, 1 in flight each, to `wsgate-bench echo-server`, directly and through wsgate. "
            "Gateway CPU is utime+stime from `/proc/PID/stat` over the measured run.",
            "",
            "| | msgs / s | p50 | gateway CPU-s per 100k messages |",
            "|---|---|---|---|",
            f"| direct | {x['direct_msgs_per_s']:,.0f} | {x['direct_p50_us']/1000:.2f} ms | |",
            f"| through wsgate | {x['wsgate_msgs_per_s']:,.0f} | {x['wsgate_p50_us']/1000:.2f} ms | {x['wsgate_cpu_s_per_100k']:.2f} |",
            "",
        ]
    (REPO / "docs" / "benchmarks.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
