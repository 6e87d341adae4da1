#!/usr/bin/env python3
"""wsgate benchmarks against nginx and HAProxy, in one run. Not a test: no
timing assertions; it prints figures and, with --write, regenerates
docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.svg.

    python3 benchmarks/run.py [--scenarios a,b,c,d,e,cap] [--reps N] [--messages M]
                              [--smoke] [--write] [--build-dir DIR]
                              [--baseline-bin DIR] [--json FILE]

Targets: direct (client -> echo), wsgate (ws:// route, default `workers: auto`,
one event loop per core), wsgate-w1 (the same binary and config plus `workers: 1`:
the like-for-like pair with nginx and HAProxy below, on a machine where the client
and the echo share the cores), nginx (proxy_pass with the Upgrade/Connection map,
worker_processes 1), haproxy (mode http, nbthread 1). wsgate-w1 runs right after
wsgate in a, b, c, d and e (not in cap). The client and the echo upstream are
`wsgate-bench load` / `echo-server`.
With --baseline-bin DIR (a directory holding the `wsgate` release binary of an
older build), a target wsgate-base runs right after wsgate and wsgate-w1: that
binary with the same generated config (default workers only: there is no
workers: 1 run of the baseline), in a, b, c, d and e, for a before/after in one
run; the run ends with a wsgate vs wsgate-base comparison on stderr.
`wsgate-bench` always comes from --build-dir. Not with --write (the docs never
mix builds).

Scenarios:
  a  1 connection, 64 B, 1 in flight (ping-pong), M messages
  b  50 connections x 1 KiB, 1 in flight each, M messages
  c  50 connections x 64 KiB, 1 in flight each, M/5 messages (nginx: proxy_buffer_size 64k)
  d  RSS per idle proxied connection at K = 1000 and 5000 (fresh proxy per K and rep)
  e  WS -> HTTP: 64 connections x 1 KiB through an http:// route of wsgate to the
     echo's HTTP echo, next to two ceilings POSTing 1 KiB to it directly in the same
     rep: `wrk -t1 -c64` (the echo's) and benchmarks/curl_driver.c (libcurl's own
     cost: one thread, multi interface, 64 easy handles, keep-alive; compiled here
     with gcc, or cc/clang, -O2 -Wall -Werror -lcurl into the run's temp dir)
  cap  wsgate holds 9,000 concurrent proxied idle connections

Targets are interleaved rep by rep (each rep runs direct, wsgate, wsgate-w1,
nginx, haproxy in turn); figures are the median with min-max over the reps; the
doc's "Against nginx" table puts each proxy (wsgate-w1 too) over nginx. A
missing nginx or HAProxy drops its target with a warning, except in CI (CI=true) or with
WSGATE_REQUIRE_BENCH_TARGETS=1 (set by .ci/run): there the run goes on and
then fails, as it always does when scenario e finds no wrk. Proxy CPU is
utime+stime from /proc/PID/stat summed over all the proxy's processes, as a
delta over the measured run. Everything binds to 127.0.0.1; every process
started here is stopped by its PID (SIGTERM, then SIGKILL); every wait is bounded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TARGETS = ["direct", "wsgate", "wsgate-w1", "nginx", "haproxy"]
PROXIES = ["wsgate", "wsgate-w1", "nginx", "haproxy"]
ALL_SCENARIOS = ["a", "b", "c", "d", "e", "cap"]
# Opt-in (--scenarios pool): not part of the default run or docs/benchmarks.md.
EXTRA_SCENARIOS = ["pool", "push"]
LOAD_SCENARIOS = {
    "a": {"title": "1 connection × 64 B, ping-pong", "connections": 1, "size": 64, "in_flight": 1, "messages_factor": 1.0},
    "b": {"title": "50 connections × 1 KiB, 1 in flight each", "connections": 50, "size": 1024, "in_flight": 1, "messages_factor": 1.0},
    "c": {"title": "50 connections × 64 KiB, 1 in flight each", "connections": 50, "size": 65536, "in_flight": 1, "messages_factor": 0.2},
}
COLORS = {"direct": "#9e9e9e", "wsgate": "#1f77b4", "wsgate-w1": "#17becf", "wsgate-base": "#9467bd",
          "nginx": "#2ca02c", "haproxy": "#d62728"}
BASE = "wsgate-base"  # the target --baseline-bin adds: an older wsgate binary, same config as wsgate
W1 = "wsgate-w1"  # the same wsgate binary and config plus `workers: 1` (one event loop)
LEGEND = {"wsgate": "wsgate (workers: auto)", W1: "wsgate-w1 (workers: 1)"}  # the chart's legend
CURL_DRIVER = Path(__file__).resolve().parent / "curl_driver.c"  # scenario e: libcurl's own cost
CLK_TCK = os.sysconf("SC_CLK_TCK")


def truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def targets_required() -> bool:
    """In CI (or with WSGATE_REQUIRE_BENCH_TARGETS=1) a missing nginx or
    HAProxy is a failure, not a skipped target."""
    return truthy("CI") or truthy("WSGATE_REQUIRE_BENCH_TARGETS")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class BenchFailure(Exception):
    pass


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and int(st[1]) == pid:
                kids.append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        if proc_stat(p) is None:
            continue
        tree.append(p)
        todo += children_of(p)
    return tree


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """utime+stime per process of the tree (threads included), keyed by PID."""
    out = {}
    for p in process_tree(pid):
        st = proc_stat(p)
        if st:
            out[p] = (int(st[11]) + int(st[12])) / CLK_TCK
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(p, 0.0) for p, v in after.items())


def tree_rss_kb(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Proc:
    """A child process whose output (stdout+stderr) goes to a log file and a
    line queue, read by a thread, so waiting for a line is bounded."""

    live: list["Proc"] = []
    started = 0

    def __init__(self, name: str, argv: list[str], logdir: Path, stdin: bool = False):
        Proc.started += 1
        self.name = name
        self.log_path = logdir / f"{name}.{Proc.started}.log"
        self.lines: queue.Queue[str] = queue.Queue()
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, cwd=logdir)
        Proc.live.append(self)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @property
    def pid(self) -> int:
        return self.p.pid

    def _read(self) -> None:
        with open(self.log_path, "w") as out:
            for raw in self.p.stdout:
                line = raw.decode(errors="replace")
                out.write(line)
                out.flush()
                self.lines.put(line)

    def tail(self, n: int = 15) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-n:])
        except OSError:
            return ""

    def wait_line(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchFailure(f"{self.name}: timed out after {timeout:.0f} s waiting for {pattern!r}\n{self.tail()}")
            try:
                line = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.p.poll() is not None and self.lines.empty():
                    self.reader.join(1)
                    if self.lines.empty():
                        raise BenchFailure(f"{self.name}: exited ({self.p.returncode}) before printing {pattern!r}\n{self.tail()}")
                continue
            if re.search(pattern, line):
                return line

    def send(self, text: str) -> None:
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def close_stdin(self) -> None:
        try:
            self.p.stdin.close()
        except (OSError, AttributeError):
            pass

    def wait_exit(self, timeout: float) -> bool:
        try:
            self.p.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        """SIGTERM to the process, then SIGKILL; then the same for any of its
        children (e.g. an nginx worker) that outlived it, each by PID."""
        if self in Proc.live:
            Proc.live.remove(self)
        kids = [(k, (proc_stat(k) or [None] * 22)[19]) for k in process_tree(self.p.pid) if k != self.p.pid]
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            if not self.wait_exit(15):
                self.p.kill()
                self.wait_exit(5)
        for pid, started in kids:
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
                st = proc_stat(pid)
                if st is None or st[19] != started or st[0] == "Z":
                    break
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and (s := proc_stat(pid)) and s[19] == started and s[0] != "Z":
                    time.sleep(0.05)
        self.close_stdin()
        self.reader.join(2)

    @classmethod
    def stop_all(cls) -> None:
        for p in list(reversed(cls.live)):
            try:
                p.stop()
            except Exception as e:  # keep stopping the others
                log(f"stopping {p.name} (pid {p.pid}): {e}")


def haproxy_maxconn() -> int:
    """HAProxy refuses to start unless it can raise its FD limit to 2 x maxconn
    + a few: 20000, or what the hard limit allows (9,900 with 20,000)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 20000 if hard == resource.RLIM_INFINITY else min(20000, (hard - 200) // 2)


def fresh_dir(tmp: Path, name: str) -> Path:
    i = 1
    while (tmp / f"{name}{i}").exists():
        i += 1
    (tmp / f"{name}{i}").mkdir()
    return tmp / f"{name}{i}"


def wait_port(port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise BenchFailure(f"{proc.name} exited ({proc.p.returncode}) at start\n{proc.tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchFailure(f"{proc.name}: port {port} not accepting after {timeout:.0f} s\n{proc.tail()}")


# ---------------------------------------------------------------- the programs under test

def nginx_config(d: Path, port: int, echo_port: int, single_process: bool = False) -> str:
    """The benchmark's nginx: one worker, the WebSocket Upgrade map, 64 KiB
    proxy buffers for scenario c's `/big`. `single_process` (no master, for
    benchmarks/callgrind.py) runs the worker itself in the one process."""
    # the WebSocket proxying both locations share
    proxy = f"""      proxy_pass http://127.0.0.1:{echo_port};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
"""
    return f"""worker_processes 1;
{"master_process off;" if single_process else ""}
worker_rlimit_nofile 20000;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
{proxy}    }}
    # scenario c (64 KiB messages): 64 KiB proxy buffers
    location /big {{
{proxy}      proxy_buffer_size 64k;
      proxy_buffers 4 64k;
    }}
  }}
}}
"""


class Bench:
    def __init__(self, bin_dir: Path, tmp: Path, smoke: bool, base_bin: Path | None = None):
        self.bin = bin_dir
        self.base_bin = base_bin  # --baseline-bin: where the wsgate-base target's `wsgate` is
        self.tmp = tmp
        self.smoke = smoke
        self.echo: Proc | None = None
        self.echo_port = 0
        self.curl_driver_bin: Path | None = None
        self.workers: dict[str, int] = {}  # per wsgate target: the event loops its "listening" line reports

    def start_echo(self) -> None:
        self.echo = Proc("echo", [str(self.bin / "wsgate-bench"), "echo-server", "--host", "127.0.0.1", "--port", "0"], self.tmp)
        self.echo_port = int(json.loads(self.echo.wait_line(r'"event":"listening"', 20))["port"])

    def start_proxy(self, target: str) -> tuple[Proc, str, dict[str, str]]:
        """Starts a fresh proxy in front of the echo server. Returns it, its
        base URL and the per-scenario paths."""
        if target == BASE:
            return self.start_wsgate(self.base_bin / "wsgate", BASE)
        if target == W1:
            return self.start_wsgate(name=W1, workers=1)
        return {"wsgate": self.start_wsgate, "nginx": self.start_nginx, "haproxy": self.start_haproxy}[target]()

    def start_wsgate(self, binary: Path | None = None, name: str = "wsgate", workers: int | None = None):
        """wsgate (default: the --build-dir binary) with the benchmark config;
        `binary`/`name` run another build of it with the very same config;
        `workers` adds that top-level key (wsgate-w1: 1), nothing else changes."""
        d = fresh_dir(self.tmp, name)
        cfg = d / "wsgate.yaml"
        cfg.write_text((f"workers: {workers}\n" if workers is not None else "") + f"""listen: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
shutdown: {{drain_timeout_ms: 3000}}
routes:
  - {{path: /ws, upstream: "ws://127.0.0.1:{self.echo_port}/"}}
  - {{path: /big, upstream: "ws://127.0.0.1:{self.echo_port}/"}}
  - {{path: /api, upstream: "http://127.0.0.1:{self.echo_port}/"}}
""")
        gw = Proc(name, [str(binary or self.bin / "wsgate"), "--config", str(cfg)], d)
        listening = json.loads(gw.wait_line(r'"event":"listening"', 30))
        if "workers" in listening:  # older builds do not say
            self.workers[name] = listening["workers"]
            if workers is not None and listening["workers"] != workers:
                gw.stop()
                raise BenchFailure(f"{name}: configured workers: {workers}, but it runs {listening['workers']}")
        return gw, f"ws://127.0.0.1:{listening['port']}", {"ws": "/ws", "big": "/big", "api": "/api"}

    def start_nginx(self):
        d = fresh_dir(self.tmp, "nginx")
        os.chmod(d, 0o755)  # the worker may run as nobody
        port = free_port()
        conf = d / "nginx.conf"
        conf.write_text(nginx_config(d, port, self.echo_port))
        ng = Proc("nginx", ["nginx", "-p", str(d), "-c", str(conf)], d)
        wait_port(port, ng, 20)
        return ng, f"ws://127.0.0.1:{port}", {"ws": "/", "big": "/big"}

    def start_haproxy(self):
        d = fresh_dir(self.tmp, "haproxy")
        port = free_port()
        cfg = d / "haproxy.cfg"
        maxconn = haproxy_maxconn()
        cfg.write_text(f"""global
  nbthread 1
  maxconn {maxconn}

defaults
  mode http
  maxconn {maxconn}
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h

frontend fe
  bind 127.0.0.1:{port}
  default_backend echo

backend echo
  server echo 127.0.0.1:{self.echo_port}
""")
        hp = Proc("haproxy", ["haproxy", "-f", str(cfg), "-db"], d)
        wait_port(port, hp, 20)
        return hp, f"ws://127.0.0.1:{port}", {"ws": "/", "big": "/"}

    # ---- clients

    def load(self, url: str, connections: int, size: int, in_flight: int, messages: int) -> dict:
        timeout = 60 if self.smoke else 900
        argv = [str(self.bin / "wsgate-bench"), "load", "--url", url, "-c", str(connections), "-w", str(in_flight),
                "-s", str(size), "-m", str(messages), "--timeout", str(timeout - 10)]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchFailure(f"load {url}: no result within {timeout} s")
        lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if not lines:  # crashed; with errors it still prints its result (and exits 1)
            raise BenchFailure(f"load {url}: exit {out.returncode}, no result\n{out.stdout[-1500:]}{out.stderr[-1500:]}")
        r = json.loads(lines[-1])
        if out.returncode != 0 and not r.get("errors"):
            raise BenchFailure(f"load {url}: exit {out.returncode}\n{out.stderr[-1500:]}")
        return r

    def idle(self, url: str, k: int) -> tuple[Proc, dict]:
        client = Proc("idle", [str(self.bin / "wsgate-bench"), "idle", "--url", url, "-k", str(k), "--parallel", "200"],
                      self.tmp, stdin=True)
        try:
            ready = json.loads(client.wait_line(r'"event":"idle_ready"', 30 if self.smoke else 300))
        except BenchFailure:
            client.stop()
            raise
        return client, ready

    def idle_status(self, client: Proc) -> dict:
        client.send("status\n")
        return json.loads(client.wait_line(r'"event":"idle_status"', 20))

    def end_idle(self, client: Proc) -> None:
        client.close_stdin()
        if not client.wait_exit(30):
            log("idle client did not exit after stdin closed; stopping it")
        client.stop()

    def wrk_post(self, port: int, connections: int, seconds: int, body_size: int) -> dict:
        script = self.tmp / "post.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = string.rep("a", {body_size})\n'
                          f'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-s", str(script), f"http://127.0.0.1:{port}/"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            raise BenchFailure("wrk did not finish")
        m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
        if not m:
            raise BenchFailure(f"wrk: no result\n{out.stdout}{out.stderr}")
        errors = 0
        if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out.stdout):
            errors += sum(int(x) for x in e.groups())
        if e := re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout):
            errors += int(e.group(1))
        lat = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out.stdout)
        return {"requests_per_s": float(m.group(1)), "errors": errors, "latency_avg": lat.group(1) if lat else None}

    def build_curl_driver(self) -> Path:
        """benchmarks/curl_driver.c, compiled once per run into the temp dir
        (gcc, else cc or clang; -Wall -Werror)."""
        if self.curl_driver_bin:
            return self.curl_driver_bin
        cc = next((c for c in ("gcc", "cc", "clang") if shutil.which(c)), None)
        if not cc:
            raise BenchFailure("no C compiler (gcc, cc or clang) for benchmarks/curl_driver.c")
        out = self.tmp / "curl_driver"
        argv = [cc, "-O2", "-Wall", "-Werror", "-o", str(out), str(CURL_DRIVER), "-lcurl"]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise BenchFailure(f"{shlex.join(argv)}: no result within 120 s")
        if r.returncode != 0:
            raise BenchFailure(f"{shlex.join(argv)} failed ({r.returncode}; libcurl4-openssl-dev installed?)\n{r.stdout}{r.stderr}")
        self.curl_driver_bin = out
        return out

    def curl_post(self, port: int, connections: int, seconds: int, body_size: int) -> dict:
        """libcurl alone POSTing to the echo: benchmarks/curl_driver.c's JSON
        (requests_per_s, cpu_s of its own process, ...) plus cpu_s_per_100k."""
        argv = [str(self.build_curl_driver()), f"http://127.0.0.1:{port}/", str(connections), str(body_size), str(seconds)]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            raise BenchFailure("curl_driver did not finish")
        lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if out.returncode != 0 or not lines:
            raise BenchFailure(f"curl_driver: exit {out.returncode}, no result\n{out.stdout[-1500:]}{out.stderr[-1500:]}")
        r = json.loads(lines[-1])
        r["cpu_s_per_100k"] = round(r["cpu_s"] / r["requests"] * 100_000, 4) if r["requests"] else None
        return r


# ---------------------------------------------------------------- statistics

def summary(xs: list[float]) -> dict | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# ---------------------------------------------------------------- scenarios

class Runner:
    def __init__(self, args, bench: Bench, targets: list[str]):
        self.args = args
        self.b = bench
        self.targets = targets
        self.proxies = [t for t in targets if t != "direct"]
        self.problems: list[str] = []
        self.w = max(8, *map(len, targets))  # target column of the progress lines

    def problem(self, msg: str) -> None:
        log(f"PROBLEM: {msg}")
        self.problems.append(msg)

    def load_scenarios(self, names: list[str]) -> dict:
        """a, b, c with one long-lived instance of each proxy, targets interleaved."""
        results = {}
        running = {}
        try:
            for t in self.proxies:
                try:
                    running[t] = self.b.start_proxy(t)
                except BenchFailure as e:
                    self.problem(f"{t} did not start: {e}")
            targets = ["direct"] + [t for t in self.proxies if t in running]
            for name in names:
                sc = LOAD_SCENARIOS[name]
                messages = max(sc["connections"], int(self.args.messages * sc["messages_factor"]))
                warm = max(sc["connections"], min(messages // 10, 10_000))
                path_key = "big" if name == "c" else "ws"
                urls = {"direct": f"ws://127.0.0.1:{self.b.echo_port}/"}
                for t, (_, base, paths) in running.items():
                    urls[t] = base + paths[path_key]
                runs = {t: [] for t in targets}
                log(f"== scenario {name}: {sc['title']}, {messages} messages per run, {self.args.reps} rep(s)")
                for t in targets:  # warm-up, not measured
                    try:
                        self.b.load(urls[t], sc["connections"], sc["size"], sc["in_flight"], warm)
                    except BenchFailure as e:
                        self.problem(f"{name}/{t} warm-up: {e}")
                for rep in range(self.args.reps):
                    for t in targets:
                        proc = running[t][0] if t in running else None
                        before = tree_cpu_seconds(proc.pid) if proc else None
                        try:
                            r = self.b.load(urls[t], sc["connections"], sc["size"], sc["in_flight"], messages)
                        except BenchFailure as e:
                            self.problem(f"{name}/{t} rep {rep + 1}: {e}")
                            continue
                        if proc:
                            cpu = cpu_delta(before, tree_cpu_seconds(proc.pid))
                            r["proxy_cpu_s"] = round(cpu, 3)
                            r["proxy_cpu_s_per_100k"] = round(cpu / r["messages"] * 100_000, 4) if r["messages"] else None
                        if r["errors"] or r["messages"] < messages - sc["connections"]:
                            self.problem(f"{name}/{t} rep {rep + 1}: {r['errors']} error(s), {r['messages']}/{messages} messages: {r.get('error_samples')}")
                        runs[t].append(r)
                        log(f"   rep {rep + 1} {t:{self.w}} {r['msgs_per_s']:>10,.0f} msgs/s  p50 {us(r['p50_us']):>9}  p99 {us(r['p99_us']):>9}"
                            + (f"  proxy CPU {r['proxy_cpu_s_per_100k']:.3f} s/100k" if r.get('proxy_cpu_s_per_100k') is not None else "")
                            + f"  client CPU {r['client_cpu_s']} s")
                results[name] = self.summarise_load(name, sc, messages, runs)
        finally:
            for t, (p, _, _) in running.items():
                p.stop()
        return results

    def summarise_load(self, name, sc, messages, runs) -> dict:
        out = {"title": sc["title"], "connections": sc["connections"], "size": sc["size"], "in_flight": sc["in_flight"],
               "messages": messages, "targets": {}}
        direct = runs.get("direct", [])
        for t, rs in runs.items():
            s = {"msgs_per_s": summary([r["msgs_per_s"] for r in rs]),
                 "p50_us": summary([r["p50_us"] for r in rs]),
                 "p99_us": summary([r["p99_us"] for r in rs]),
                 "p999_us": summary([r["p999_us"] for r in rs]),
                 "client_cpu_s": summary([r["client_cpu_s"] for r in rs])}
            if t != "direct":
                s["proxy_cpu_s_per_100k"] = summary([r.get("proxy_cpu_s_per_100k") for r in rs])
                # latency added over direct, pairing each rep with the same rep's direct run
                pairs = list(zip(rs, direct))
                s["added_p50_us"] = summary([r["p50_us"] - d["p50_us"] for r, d in pairs])
                s["added_p99_us"] = summary([r["p99_us"] - d["p99_us"] for r, d in pairs])
            out["targets"][t] = {"summary": s, "runs": rs}
        nginx = (out["targets"].get("nginx") or {}).get("summary", {}).get("proxy_cpu_s_per_100k")
        for t in self.proxies:
            s = out["targets"].get(t, {}).get("summary", {})
            cpu = s.get("proxy_cpu_s_per_100k")
            s["cpu_vs_nginx"] = cpu["median"] / nginx["median"] if cpu and nginx and nginx["median"] else None
        return out

    def idle_once(self, target: str, k: int, label: str = "d") -> dict:
        proc, base, paths = self.b.start_proxy(target)
        client = None
        try:
            # one connection opened and closed first, so one-time lazy set-up is not counted per connection
            warm, ready = self.b.idle(base + paths["ws"], 1)
            self.b.end_idle(warm)
            if ready["open"] != 1:
                raise BenchFailure(f"warm-up connection failed: {ready}")
            time.sleep(0.5)
            rss0 = tree_rss_kb(proc.pid)
            client, ready = self.b.idle(base + paths["ws"], k)
            time.sleep(0.5 if self.args.smoke else 2.0)
            status = self.b.idle_status(client)
            rssk = tree_rss_kb(proc.pid)
            r = {"k": k, "open": ready["open"], "failed": ready["failed"], "still_open": status["open"],
                 "connect_seconds": ready["seconds"], "rss0_kb": rss0, "rssk_kb": rssk,
                 "rss_per_conn_bytes": round((rssk - rss0) * 1024 / k), "errors": ready.get("errors", [])}
            if ready["failed"] or status["open"] != k:
                self.problem(f"{label}/{target} K={k}: open {ready['open']}, failed {ready['failed']}, "
                             f"still open {status['open']}: {ready.get('errors')}")
            return r
        finally:
            if client:
                self.b.end_idle(client)
            proc.stop()

    def scenario_d(self) -> dict:
        ks = [20] if self.args.smoke else [1000, 5000]
        log(f"== scenario d: idle RSS per proxied connection, K = {ks}, fresh proxy each time")
        res = {"ks": ks, "targets": {t: {str(k): {"runs": []} for k in ks} for t in self.proxies}}
        for k in ks:
            for rep in range(self.args.reps):
                for t in self.proxies:
                    try:
                        r = self.idle_once(t, k)
                    except BenchFailure as e:
                        self.problem(f"d/{t} K={k} rep {rep + 1}: {e}")
                        continue
                    res["targets"][t][str(k)]["runs"].append(r)
                    log(f"   K={k} rep {rep + 1} {t:{self.w}} open {r['open']} failed {r['failed']}  "
                        f"RSS {r['rss0_kb']} -> {r['rssk_kb']} KB  = {r['rss_per_conn_bytes'] / 1024:.1f} KB/conn")
        for t in self.proxies:
            for k in ks:
                cell = res["targets"][t][str(k)]
                cell["summary"] = {"rss_per_conn_bytes": summary([r["rss_per_conn_bytes"] for r in cell["runs"]])}
        return res

    def scenario_e(self) -> dict:
        """wsgate, wsgate-w1 (and wsgate-base, if given) through the http://
        route; in each rep the two ceilings against the echo directly (wrk,
        then the libcurl driver), then each gateway in turn, same echo."""
        messages = self.args.messages
        seconds = 1 if self.args.smoke else 5
        gateways = [t for t in ("wsgate", W1, BASE) if t in self.proxies]
        log(f"== scenario e: WS -> HTTP through {', '.join(gateways) or 'wsgate'}, 64 × 1 KiB, {messages} messages; "
            f"ceilings wrk -t1 -c64 -d{seconds}s and curl_driver 64 handles {seconds} s")
        res = {"connections": 64, "size": 1024, "messages": messages, "wrk_seconds": seconds, "curl_seconds": seconds,
               "wrk": [], "curl": [], **{t: [] for t in gateways}}
        if "wsgate" not in self.proxies:
            return res
        if not shutil.which("wrk"):
            self.problem("wrk not found (apt-get install wrk): no ceiling for scenario e")
        try:
            self.b.build_curl_driver()
        except BenchFailure as e:
            self.problem(f"e/curl_driver: {e}")
        running = {"wsgate": self.b.start_wsgate()}
        try:
            for t in gateways[1:]:
                try:
                    running[t] = self.b.start_proxy(t)
                except BenchFailure as e:
                    self.problem(f"e/{t} did not start: {e}")
            urls = {t: base + paths["api"] for t, (_, base, paths) in running.items()}
            for t in running:
                try:
                    self.b.load(urls[t], 64, 1024, 1, max(64, min(messages // 10, 10_000)))  # warm-up
                except BenchFailure as e:
                    self.problem(f"e warm-up: {e}" if t == "wsgate" else f"e/{t} warm-up: {e}")
            for rep in range(self.args.reps):
                if shutil.which("wrk"):
                    try:
                        w = self.b.wrk_post(self.b.echo_port, 64, seconds, 1024)
                        res["wrk"].append(w)
                        if w["errors"]:
                            self.problem(f"e/wrk rep {rep + 1}: {w['errors']} error(s)")
                        log(f"   rep {rep + 1} {'wrk':{self.w}} {w['requests_per_s']:>10,.0f} req/s")
                    except BenchFailure as e:
                        self.problem(f"e/wrk rep {rep + 1}: {e}")
                if self.b.curl_driver_bin:
                    try:
                        c = self.b.curl_post(self.b.echo_port, 64, seconds, 1024)
                        res["curl"].append(c)
                        if c["errors"]:
                            self.problem(f"e/curl_driver rep {rep + 1}: {c['errors']} error(s)")
                        log(f"   rep {rep + 1} {'curl':{self.w}} {c['requests_per_s']:>10,.0f} req/s  "
                            f"own CPU {c['cpu_s_per_100k']:.3f} s/100k  new connections {c['new_connections']}")
                    except BenchFailure as e:
                        self.problem(f"e/curl_driver rep {rep + 1}: {e}")
                for t, (gw, _, _) in running.items():
                    before = tree_cpu_seconds(gw.pid)
                    try:
                        r = self.b.load(urls[t], 64, 1024, 1, messages)
                    except BenchFailure as e:
                        self.problem(f"e/{t} rep {rep + 1}: {e}")
                        continue
                    cpu = cpu_delta(before, tree_cpu_seconds(gw.pid))
                    r["proxy_cpu_s"] = round(cpu, 3)
                    r["proxy_cpu_s_per_100k"] = round(cpu / r["messages"] * 100_000, 4) if r["messages"] else None
                    if r["errors"] or r["messages"] < messages - 64:
                        self.problem(f"e/{t} rep {rep + 1}: {r['errors']} error(s), {r['messages']}/{messages}: {r.get('error_samples')}")
                    res[t].append(r)
                    log(f"   rep {rep + 1} {t:{self.w}} {r['msgs_per_s']:>10,.0f} msgs/s  p50 {us(r['p50_us']):>9}  p99 {us(r['p99_us']):>9}"
                        f"  proxy CPU {r['proxy_cpu_s_per_100k']:.3f} s/100k")
        finally:
            for gw, _, _ in running.values():
                gw.stop()
        res["summary"] = self.summarise_e(res["wsgate"], res["wrk"], res["curl"])
        if W1 in res:
            res["w1_summary"] = self.summarise_e(res[W1], res["wrk"], res["curl"])
        if BASE in res:  # the same fields for the baseline build, next to "summary"
            res["base_summary"] = self.summarise_e(res[BASE], res["wrk"], res["curl"])
        return res

    @staticmethod
    def summarise_e(runs: list[dict], wrk: list[dict], curl: list[dict]) -> dict:
        """One gateway's figures; the ceilings' are repeated in each (and the
        percentages pair each rep's gateway run with that rep's ceiling run)."""
        return {
            "wrk_requests_per_s": summary([w["requests_per_s"] for w in wrk]),
            "curl_requests_per_s": summary([c["requests_per_s"] for c in curl]),
            "curl_cpu_s_per_100k": summary([c["cpu_s_per_100k"] for c in curl]),
            "curl_percent_of_wrk": summary([100 * c["requests_per_s"] / w["requests_per_s"]
                                            for c, w in zip(curl, wrk) if w["requests_per_s"]]),
            "wsgate_msgs_per_s": summary([r["msgs_per_s"] for r in runs]),
            "p50_us": summary([r["p50_us"] for r in runs]), "p99_us": summary([r["p99_us"] for r in runs]),
            "proxy_cpu_s_per_100k": summary([r["proxy_cpu_s_per_100k"] for r in runs]),
            # per rep: that rep's wsgate rate over that rep's ceiling
            "percent_of_ceiling": summary([100 * r["msgs_per_s"] / w["requests_per_s"]
                                           for r, w in zip(runs, wrk) if w["requests_per_s"]]),
            "percent_of_curl": summary([100 * r["msgs_per_s"] / c["requests_per_s"]
                                        for r, c in zip(runs, curl) if c["requests_per_s"]]),
        }

    def scenario_cap(self) -> dict:
        k = 250 if self.args.smoke else 9000
        log(f"== capacity: wsgate holding {k} proxied idle connections")
        try:
            r = self.idle_once("wsgate", k, "cap")
        except BenchFailure as e:
            self.problem(f"cap: {e}")
            return {"k": k, "error": str(e)}
        log(f"   open {r['open']} failed {r['failed']} still open {r['still_open']}  wsgate RSS {r['rssk_kb'] / 1024:.1f} MB "
            f"({r['rss_per_conn_bytes'] / 1024:.1f} KB/conn), connected in {r['connect_seconds']} s")
        return r


    def scenario_pool(self) -> dict:
        """Upstream pools: (1) CPU per message through a pool of 3 echo
        targets next to a single upstream (scenario b's load, interleaved);
        (2) connection churn over the pool while one target is killed:
        how many connections failed, by when they started."""
        bench = self.b
        echoes = []
        for i in range(3):
            # 0.0.0.0: the first one is also reached as 127.0.0.2 and 127.0.0.3.
            e = Proc(f"echo{i}", [str(bench.bin / "wsgate-bench"), "echo-server", "--host", "0.0.0.0", "--port", "0"], bench.tmp)
            echoes.append((e, int(json.loads(e.wait_line(r'"event":"listening"', 20))["port"])))
        d = fresh_dir(bench.tmp, "wsgate-pool")
        cfg = d / "wsgate.yaml"
        members = ", ".join(f'"ws://127.0.0.1:{port}/"' for _, port in echoes)
        cfg.write_text(f"""listen: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
shutdown: {{drain_timeout_ms: 3000}}
routes:
  - {{path: /single, upstream: "ws://127.0.0.1:{echoes[0][1]}/"}}
  - {{path: /pool, upstreams: [{members}]}}
  - {{path: /pool-same, upstreams: ["ws://127.0.0.1:{echoes[0][1]}/", "ws://127.0.0.2:{echoes[0][1]}/", "ws://127.0.0.3:{echoes[0][1]}/"]}}
""")
        gw = Proc("wsgate-pool", [str(bench.bin / "wsgate"), "--config", str(cfg)], d)
        port = int(json.loads(gw.wait_line(r'"event":"listening"', 30))["port"])
        base = f"ws://127.0.0.1:{port}"
        out: dict = {"cpu": {}, "churn": {}}
        try:
            sc = LOAD_SCENARIOS["b"]
            messages = max(sc["connections"], self.args.messages)
            # The CPU comparison goes to the same echo process either way (the
            # pool's three targets are three addresses of it), so that only the
            # gateway's own cost of a pool is measured.
            log(f"== pool: 50 × 1 KiB through /single and /pool-same (3 targets, one echo), {messages} messages, {self.args.reps} rep(s)")
            runs = {"single": [], "pool-same": []}
            for name in runs:
                bench.load(f"{base}/{name}", sc["connections"], sc["size"], 1, max(sc["connections"], messages // 10))
            for rep in range(self.args.reps):
                for name in runs:
                    before = tree_cpu_seconds(gw.pid)
                    r = bench.load(f"{base}/{name}", sc["connections"], sc["size"], 1, messages)
                    cpu = cpu_delta(before, tree_cpu_seconds(gw.pid))
                    r["proxy_cpu_s_per_100k"] = round(cpu / r["messages"] * 100_000, 4) if r["messages"] else None
                    runs[name].append(r)
                    log(f"   rep {rep + 1} {name:6} {r['msgs_per_s']:>10,.0f} msgs/s  p99 {us(r['p99_us']):>9}  "
                        f"proxy CPU {r['proxy_cpu_s_per_100k']:.3f} s/100k")
            for name, rs in runs.items():
                out["cpu"][name] = {"msgs_per_s": summary([r["msgs_per_s"] for r in rs]),
                                    "proxy_cpu_s_per_100k": summary([r["proxy_cpu_s_per_100k"] for r in rs])}
            single = out["cpu"]["single"]["proxy_cpu_s_per_100k"]
            pooled = out["cpu"]["pool-same"]["proxy_cpu_s_per_100k"]
            out["cpu"]["pool_vs_single"] = pooled["median"] / single["median"] if single and pooled and single["median"] else None
            out["churn"] = self.pool_churn(f"{base}/pool", echoes[1][0])
        finally:
            gw.stop()
            for e, _ in echoes:
                e.stop()
        c = out["churn"]
        log(f"   churn: {c['connections']} connections in {c['seconds']} s ({c['connections_per_s']:.0f}/s), "
            f"target killed at {c['killed_at_s']} s; failed: {c['failed_before_kill']} before, "
            f"{c['failed_in_flight_at_kill']} in flight at the kill (their target died mid-session), "
            f"{c['failed_started_after_kill']} started after it")
        if c["failed_started_after_kill"] or c["failed_before_kill"]:
            self.problem(f"pool: {c['failed_started_after_kill']} connection(s) started after the kill failed, "
                         f"{c['failed_before_kill']} before it: {c['samples']}")
        return out

    def pool_churn(self, url: str, victim: "Proc") -> dict:
        """Workers connect, send 5 messages, read the 5 echoes, close, again,
        for a few seconds; one target is SIGKILLed a third of the way in."""
        import asyncio
        import websockets

        seconds = 3.0 if self.args.smoke else 9.0
        kill_at = seconds / 3
        records = []

        async def worker(deadline):
            while time.monotonic() < deadline:
                start = time.monotonic()
                error = None
                try:
                    async with websockets.connect(url, open_timeout=10, close_timeout=5, proxy=None,
                                                  ping_interval=None, compression=None) as ws:
                        for i in range(5):
                            await ws.send(b"x" * 64)
                        for i in range(5):
                            await asyncio.wait_for(ws.recv(), 10)
                except Exception as e:  # what the client sees is the point
                    error = repr(e)[:200]
                records.append((start, time.monotonic(), error))

        async def main():
            t0 = time.monotonic()
            deadline = t0 + seconds
            workers = [asyncio.create_task(worker(deadline)) for _ in range(20)]
            await asyncio.sleep(kill_at)
            killed = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            await asyncio.gather(*workers)
            return t0, killed

        t0, killed = asyncio.run(main())
        failed = [(s, e, err) for s, e, err in records if err]
        return {
            "seconds": seconds, "connections": len(records), "connections_per_s": len(records) / seconds,
            "killed_at_s": round(killed - t0, 2),
            "failed_before_kill": sum(1 for s, e, _ in failed if e < killed),
            "failed_in_flight_at_kill": sum(1 for s, e, _ in failed if s < killed <= e),
            "failed_started_after_kill": sum(1 for s, e, _ in failed if s >= killed),
            "samples": [err for _, _, err in failed[:5]],
        }


    def scenario_push(self) -> dict:
        """The control API: push latency (POST → the client has it) to one
        connection, and broadcast throughput to one channel with K
        subscribers on one instance (deliveries per second, gateway CPU per
        100k deliveries). Subscribers are raw sockets that read and discard,
        so the client side stays cheap."""
        import asyncio
        import http.client
        import threading

        from aiohttp import web

        bench = self.b
        k = 200 if self.args.smoke else 5000
        pushes = 100 if self.args.smoke else 1000
        publishes = 5 if self.args.smoke else 20
        ids: list[str] = []
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        async def connect(request):
            ids.append(request.headers.get("X-WSGate-Connection-Id", ""))
            return web.Response(status=204, headers={"X-WSGate-Channels": "bench"})

        async def start():
            app = web.Application()
            app.router.add_post("/connect", connect)
            app.router.add_post("/m", lambda r: web.Response(status=204))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, site._server.sockets[0].getsockname()[1]

        runner, hook_port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        d = fresh_dir(bench.tmp, "wsgate-push")
        cfg = d / "wsgate.yaml"
        cfg.write_text(f"""listen: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
limits: {{max_connections: 20000}}
routes:
  - {{path: /live, upstream: "http://127.0.0.1:{hook_port}/m", http: {{connect_url: "http://127.0.0.1:{hook_port}/connect"}}}}
""")
        gw = Proc("wsgate-push", [str(bench.bin / "wsgate"), "--config", str(cfg)], d)
        port = int(json.loads(gw.wait_line(r'"event":"listening"', 30))["port"])
        admin = int(json.loads(gw.wait_line(r'"event":"admin_listening"', 30))["port"])
        out: dict = {}
        try:
            log(f"== push: latency over {pushes} pushes to one connection; broadcast to {k} subscribers × {publishes}")
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)

            def post(path: str, body: bytes) -> tuple[int, bytes]:
                conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
                r = conn.getresponse()
                return r.status, r.read()

            async def subscriber(reader_only: bool):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /live HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                await reader.readuntil(b"\r\n\r\n")
                return reader, writer

            async def latency():
                import websockets
                samples = []
                async with websockets.connect(f"ws://127.0.0.1:{port}/live", proxy=None, compression=None) as ws:
                    while not ids:
                        await asyncio.sleep(0.01)
                    cid = ids[-1]
                    for i in range(pushes):
                        t0 = time.perf_counter()
                        status, _ = await asyncio.to_thread(post, f"/@connections/{cid}", b"p%d" % i)
                        await ws.recv()
                        samples.append((time.perf_counter() - t0) * 1e6)
                        if status != 200:
                            raise BenchFailure(f"push answered {status}")
                samples.sort()
                return samples

            samples = asyncio.run(latency())
            out["push_latency_us"] = {"p50": round(samples[len(samples) // 2]), "p99": round(samples[int(len(samples) * 0.99)]),
                                      "max": round(samples[-1]), "n": len(samples)}

            async def broadcast():
                conns = []
                for i in range(0, k, 200):
                    conns += await asyncio.gather(*(subscriber(True) for _ in range(min(200, k - i))))
                received = [0]

                async def drain(reader):
                    try:
                        while True:
                            chunk = await reader.read(65536)
                            if not chunk:
                                return
                            received[0] += len(chunk)
                    except Exception:
                        return
                readers = [asyncio.create_task(drain(r)) for r, _ in conns]
                await asyncio.sleep(1.0)
                before = tree_cpu_seconds(gw.pid)
                t0 = time.perf_counter()
                delivered = 0
                for i in range(publishes):
                    status, body = await asyncio.to_thread(post, "/channels/bench", b"x" * 64)
                    delivered += json.loads(body)["delivered"]
                seconds = time.perf_counter() - t0
                cpu = cpu_delta(before, tree_cpu_seconds(gw.pid))
                for _, w in conns:
                    w.close()
                for t in readers:
                    t.cancel()
                return delivered, seconds, cpu

            delivered, seconds, cpu = asyncio.run(broadcast())
            out["broadcast"] = {"subscribers": k, "publishes": publishes, "delivered": delivered,
                                "deliveries_per_s": round(delivered / seconds), "gateway_cpu_s_per_100k": round(cpu / delivered * 100_000, 3)}
            if delivered != k * publishes:
                self.problem(f"push: {delivered} of {k * publishes} deliveries")
        finally:
            gw.stop()
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        p, bc = out["push_latency_us"], out["broadcast"]
        log(f"   push latency p50 {p['p50']} µs, p99 {p['p99']} µs; broadcast {bc['deliveries_per_s']:,} deliveries/s, "
            f"{bc['gateway_cpu_s_per_100k']} gateway CPU-s per 100k deliveries")
        return out


# ---------------------------------------------------------------- environment

def first_line(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (subprocess.TimeoutExpired, OSError):
        return None
    text = (out.stdout.strip() or out.stderr.strip())
    return text.splitlines()[0].strip() if text else None


def environment() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    return {
        "machine": {"nproc": os.cpu_count(), "cpu": cpu, "kernel": f"{platform.system()} {platform.release()}"},
        "versions": {
            "swift": first_line(["swift", "--version"]),
            "nginx": first_line(["nginx", "-v"]),
            "haproxy": first_line(["haproxy", "-v"]),
            "libcurl": first_line(["curl-config", "--version"]),
            "wrk": re.sub(r"\s*Copyright.*", "", first_line(["wrk", "-v"]) or "") or None,
        },
    }


# ---------------------------------------------------------------- report

def us(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    sign = "+" if signed and v >= 0 else ""
    if abs(v) >= 1000:
        return f"{sign}{v / 1000:.2f} ms"
    return f"{sign}{v:.0f} µs"


def med(s: dict | None, fmt: str = "{:,.0f}", rng: bool = True) -> str:
    if not s:
        return "–"
    text = fmt.format(s["median"])
    if rng and s["n"] > 1:
        text += f" ({fmt.format(s['min'])}–{fmt.format(s['max'])})"
    return text


def extras_markdown(r: dict) -> str:
    """docs/benchmarks-pools-push.md: the opt-in scenarios pool and push."""
    env = r["environment"]
    m, v = env["machine"], env["versions"]
    L = ["# Benchmarks: upstream pools and backend push", "",
         "<!-- generated by benchmarks/run.py --scenarios pool,push --write; do not edit by hand -->", "",
         f"Generated on {r['date']} by `{r['command']}`.", "",
         f"- Machine: {m['nproc']} cores (`nproc`), {m['cpu']}, {m['kernel']}; {v['swift']} (release build, Swift libraries linked statically as in the Docker image).",
         "- Client, gateway and upstreams share the machine's cores.", ""]
    pool = r["scenarios"].get("pool")
    if pool:
        cpu, churn = pool["cpu"], pool["churn"]
        L += ["## Pool of three echo targets", "",
              "Scenario (b)'s load (50 connections × 1 KiB, 1 in flight each) through a route with one upstream "
              "and through a route with a pool of three targets, interleaved rep by rep. The three targets are three "
              "addresses (127.0.0.1–3) of the same echo process, so that only the gateway's own cost of the pool is "
              "compared.", "",
              "| route | msgs/s | gateway CPU-s / 100k msgs |", "|---|---|---|"]
        for name in ("single", "pool-same"):
            L.append(f"| {name} | {med(cpu[name]['msgs_per_s'])} | {med(cpu[name]['proxy_cpu_s_per_100k'], '{:.2f}')} |")
        if cpu.get("pool_vs_single"):
            L += ["", f"Pool / single CPU per message: {cpu['pool_vs_single']:.3f}."]
        L += ["", f"Churn: 20 clients connecting, sending 5 messages and closing, for {churn['seconds']} s; one target "
              f"SIGKILLed at {churn['killed_at_s']} s. {churn['connections']:,} connections "
              f"({churn['connections_per_s']:.0f}/s); failed: {churn['failed_before_kill']} before the kill, "
              f"{churn['failed_in_flight_at_kill']} in flight at the kill, {churn['failed_started_after_kill']} started after it.", ""]
    push = r["scenarios"].get("push")
    if push:
        p, b = push["push_latency_us"], push["broadcast"]
        L += ["## Backend push", "",
              f"- Push latency (POST `/@connections/{{id}}` → the client has the message; {p['n']} pushes, one at a time): "
              f"p50 {p['p50']} µs, p99 {p['p99']} µs, max {p['max']} µs.",
              f"- Broadcast: {b['subscribers']:,} subscribers of one channel on one instance, {b['publishes']} publishes of 64 B: "
              f"{b['delivered']:,} deliveries, {b['deliveries_per_s']:,} per second, "
              f"{b['gateway_cpu_s_per_100k']} gateway CPU-s per 100k deliveries.", ""]
    if r.get("problems"):
        L += ["## Problems", ""] + [f"- {x}" for x in r["problems"]] + [""]
    return "\n".join(L)


def vs_nginx_markdown(r: dict) -> list[str]:
    """The comparison in brief: each proxy over nginx, median over median, per
    load scenario (CPU per message, throughput) and per K of (d) (RSS per
    idle connection). Empty without nginx."""
    sc = r["scenarios"]
    proxies = [t for t in r["targets"] if t not in ("direct", "nginx")]
    rows = []

    def ratio(x, y):
        return f"{x['median'] / y['median']:.2f}×" if x and y and y["median"] else "–"

    for name in ("a", "b", "c"):
        if name in sc and "nginx" in sc[name]["targets"]:
            cell = lambda t, key: sc[name]["targets"].get(t, {}).get("summary", {}).get(key)
            rows.append([f"({name}) proxy CPU per message"] + [ratio(cell(t, "proxy_cpu_s_per_100k"), cell("nginx", "proxy_cpu_s_per_100k")) for t in proxies])
            rows.append([f"({name}) msgs/s"] + [ratio(cell(t, "msgs_per_s"), cell("nginx", "msgs_per_s")) for t in proxies])
    if "d" in sc and "nginx" in sc["d"]["targets"]:
        for k in sc["d"]["ks"]:
            cell = lambda t: sc["d"]["targets"].get(t, {}).get(str(k), {}).get("summary", {}).get("rss_per_conn_bytes")
            rows.append([f"(d) RSS per idle connection, K = {k:,}"] + [ratio(cell(t), cell("nginx")) for t in proxies])
    if not rows:
        return []
    L = ["## Against nginx", "",
         "Each target's median over nginx's median in the same run (CPU and RSS: lower is better; msgs/s: higher is "
         "better)." + (" wsgate runs with the default `workers: auto`, wsgate-w1 with `workers: 1` like nginx's one "
                       "worker process and HAProxy's one thread." if W1 in proxies else ""), "",
         "| | " + " | ".join(f"{t} / nginx" for t in proxies) + " |", "|---|" + "---|" * len(proxies)]
    L += ["| " + " | ".join(row) + " |" for row in rows]
    return L + [""]


def markdown(r: dict) -> str:
    env = r["environment"]
    m, v = env["machine"], env["versions"]
    base = BASE in r["targets"]
    w1 = W1 in r["targets"]
    L = [
        "# Benchmarks",
        "",
        "<!-- generated by benchmarks/run.py --write; do not edit by hand -->",
        "",
        f"Generated on {r['date']} by `{r['command']}`.",
        "",
        f"- Machine: {m['nproc']} cores (`nproc`), {m['cpu']}, {m['kernel']}",
        f"- {v['swift']} (release build, Swift libraries linked statically); {v['nginx']}; {v['haproxy']}; {v['libcurl']}; {v['wrk']}",
        f"- {r['settings']['reps']} rep{'s' if r['settings']['reps'] != 1 else ''}; in every rep the targets run in turn "
        f"({', '.join(r['targets'])}), "
        "so drift hits them alike. Figures: median (min–max) over the reps.",
        "- Client (`wsgate-bench load`, closed loop, HDR histogram of every round trip, 3 significant digits), "
        "echo upstream (`wsgate-bench echo-server`) and proxy share the machine's cores: absolute rates are low, "
        "ratios are what count. The client reports its own CPU use, so a saturated client is visible.",
        "- Proxy CPU: utime+stime from `/proc/PID/stat`, summed over all the proxy's processes "
        "(nginx master and worker), delta over the measured run, per 100,000 messages (each message is a round trip: "
        "the proxy relays it both ways).",
        "- Proxies: wsgate with `ws://` routes and the default `workers: auto` (one event loop per core); "
        "nginx `worker_processes 1`, `proxy_pass` with the Upgrade/Connection "
        "map, `worker_connections 20000` (scenario c: `proxy_buffer_size 64k`); HAProxy `mode http`, `nbthread 1`, "
        f"`maxconn {r['settings']['haproxy_maxconn']}`, `timeout tunnel 1h`, default `tune.bufsize`. All on 127.0.0.1.",
        "",
    ]
    if w1:
        n = r["settings"].get("wsgate_workers", {}).get("wsgate", m["nproc"])
        L[-1:-1] = [f"- wsgate-w1: the same `wsgate` binary and config plus `workers: 1` (one event loop instead of "
                    f"wsgate's {n}), run right after wsgate in every rep. wsgate-w1 next to nginx `worker_processes 1` and "
                    "HAProxy `nbthread 1` is the like-for-like pair on a machine where the client and the echo share the "
                    "cores with the proxy; wsgate is what a default install does."]
    if base:
        L[-1:-1] = [f"- wsgate-base: the `wsgate` binary in `{r['settings']['baseline_bin']}` (an older build) with the same "
                    "config as wsgate (default workers), run right after it in every rep."]
    if r["skipped"]:
        L += [f"Skipped: {'; '.join(r['skipped'])}.", ""]
    sc = r["scenarios"]
    L += vs_nginx_markdown(r)
    for name in ("a", "b", "c"):
        if name not in sc:
            continue
        s = sc[name]
        L += [f"## ({name}) {s['title']}", "",
              f"{s['messages']:,} messages per run.", "",
              "| target | msgs/s | p50 | p99 | p99.9 | added p50 | added p99 | proxy CPU-s / 100k msgs | CPU vs nginx | client CPU-s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for t, cell in s["targets"].items():
            x = cell["summary"]
            added50 = us(x["added_p50_us"]["median"], signed=True) if x.get("added_p50_us") else "–"
            added99 = us(x["added_p99_us"]["median"], signed=True) if x.get("added_p99_us") else "–"
            ratio = f"{x['cpu_vs_nginx']:.2f}×" if x.get("cpu_vs_nginx") else "–"
            L.append(f"| {t} | {med(x['msgs_per_s'])} | {us(x['p50_us']['median']) if x['p50_us'] else '–'} | "
                     f"{us(x['p99_us']['median']) if x['p99_us'] else '–'} | {us(x['p999_us']['median']) if x['p999_us'] else '–'} | "
                     f"{added50} | {added99} | {med(x.get('proxy_cpu_s_per_100k'), '{:.2f}')} | {ratio} | "
                     f"{med(x['client_cpu_s'], '{:.2f}', rng=False)} |")
        L.append("")
    if "d" in sc:
        d = sc["d"]
        L += ["## (d) Memory per idle proxied connection", "",
              "A fresh proxy for every K and rep: one connection opened and closed (one-time set-up), RSS with 0 "
              "connections, then K idle upgraded WebSocket connections client → proxy → echo, RSS again. "
              "RSS = sum of `VmRSS` over the proxy's processes; per connection = difference / K.", "",
              "| target | " + " | ".join(f"K = {k:,}" for k in d["ks"]) + " | RSS with 0 connections |",
              "|---|" + "---|" * (len(d["ks"]) + 1)]
        for t, byk in d["targets"].items():
            cells = []
            for k in d["ks"]:
                s = byk[str(k)]["summary"]["rss_per_conn_bytes"]
                cells.append(med({**s, "median": s["median"] / 1024, "min": s["min"] / 1024, "max": s["max"] / 1024}, "{:.1f}") + " KB"
                             if s else "–")
            # the proxy's RSS before its K connections, over every run of every K
            idle = [r["rss0_kb"] / 1024 for k in d["ks"] for r in byk[str(k)].get("runs", []) if r.get("rss0_kb")]
            cells.append(f"{statistics.median(idle):.1f} ({min(idle):.1f}–{max(idle):.1f}) MiB" if idle else "–")
            L.append(f"| {t} | " + " | ".join(cells) + " |")
        L.append("")
    if "e" in sc and sc["e"].get("summary"):
        e, s = sc["e"], sc["e"]["summary"]
        curl = bool(s.get("curl_requests_per_s"))
        L += ["## (e) WS → HTTP", "",
              f"64 WebSocket connections, 1 KiB binary messages, 1 in flight each, {e['messages']:,} messages per run, "
              "through an `http://` route of wsgate (one POST per message, libcurl) to the HTTP echo of "
              "`wsgate-bench echo-server`. Two ceilings POST 1 KiB bodies to the same echo directly (keep-alive) in the "
              f"same rep: `wrk -t1 -c64 -d{e['wrk_seconds']}s` (the echo's ceiling) and "
              f"[`benchmarks/curl_driver.c`](../benchmarks/curl_driver.c) for {e.get('curl_seconds', e['wrk_seconds'])} s "
              "(libcurl's own cost: one thread, the multi interface driven from epoll as in wsgate, 64 easy handles, "
              "the same request headers as wsgate's, nothing else). Each gateway is shown as a share of both, "
              "pairing each rep with the same rep's ceiling. Own CPU: the gateway's, or the curl driver's process "
              "(`getrusage`), per 100,000 requests or messages.", "",
              "| | requests or messages / s | p50 | p99 | own CPU-s / 100k | % of wrk | % of curl driver |",
              "|---|---|---|---|---|---|---|",
              f"| wrk → echo (ceiling) | {med(s['wrk_requests_per_s'])} | | | | | |"]
        if curl:
            L.append(f"| curl driver → echo (libcurl's own cost) | {med(s['curl_requests_per_s'])} | | | "
                     f"{med(s.get('curl_cpu_s_per_100k'), '{:.2f}')} | {med(s.get('curl_percent_of_wrk'), '{:.0f} %')} | |")
        for t, key in (("wsgate", "summary"), (W1, "w1_summary"), (BASE, "base_summary")):
            if g := e.get(key):
                L.append(f"| wsgate-bench → {t} → echo | {med(g['wsgate_msgs_per_s'])} | "
                         f"{us(g['p50_us']['median']) if g['p50_us'] else '–'} | {us(g['p99_us']['median']) if g['p99_us'] else '–'} | "
                         f"{med(g['proxy_cpu_s_per_100k'], '{:.2f}')} | {med(g['percent_of_ceiling'], '{:.0f} %')} | "
                         f"{med(g.get('percent_of_curl'), '{:.0f} %')} |")
        L.append("")
    if "cap" in sc and "open" in sc["cap"]:
        c = sc["cap"]
        L += ["## Capacity", "",
              f"wsgate holding {c['k']:,} concurrent proxied idle connections (client → wsgate → echo), "
              "connected at most 200 at a time:", "",
              "| open | failed | still open after settling | connect time | wsgate RSS | per connection |",
              "|---|---|---|---|---|---|",
              f"| {c['open']:,} | {c['failed']} | {c['still_open']:,} | {c['connect_seconds']:.1f} s | "
              f"{c['rssk_kb'] / 1024:.1f} MB | {c['rss_per_conn_bytes'] / 1024:.1f} KB |", ""]
    L += ["![proxy CPU per 100k messages and idle memory per connection](benchmarks.svg)", "",
          "Raw results, every run: [benchmarks.json](benchmarks.json).", ""]
    return "\n".join(L)


# ---------------------------------------------------------------- wsgate vs wsgate-base

def comparison(r: dict) -> list[dict]:
    """Per scenario and metric: the median of wsgate, of wsgate-base and
    new/base (None where either is missing)."""
    sc, rows = r["scenarios"], []

    def add(scenario, metric, new, old, kind):
        n, o = (new or {}).get("median"), (old or {}).get("median")
        rows.append({"scenario": scenario, "metric": metric, "kind": kind, "wsgate": n, BASE: o,
                     "ratio": n / o if n is not None and o else None})

    for name in ("a", "b", "c"):
        if name in sc:
            new = sc[name]["targets"].get("wsgate", {}).get("summary", {})
            old = sc[name]["targets"].get(BASE, {}).get("summary", {})
            add(name, "msgs/s", new.get("msgs_per_s"), old.get("msgs_per_s"), "rate")
            add(name, "proxy CPU-s / 100k", new.get("proxy_cpu_s_per_100k"), old.get("proxy_cpu_s_per_100k"), "cpu")
            add(name, "p50", new.get("p50_us"), old.get("p50_us"), "us")
            add(name, "p99", new.get("p99_us"), old.get("p99_us"), "us")
    if "d" in sc:
        for k in sc["d"]["ks"]:
            cell = lambda t: sc["d"]["targets"].get(t, {}).get(str(k), {}).get("summary", {}).get("rss_per_conn_bytes")
            add("d", f"RSS / idle conn, K={k}", cell("wsgate"), cell(BASE), "bytes")
    if "e" in sc and sc["e"].get("summary"):
        new, old = sc["e"]["summary"], sc["e"].get("base_summary") or {}
        add("e", "msgs/s", new.get("wsgate_msgs_per_s"), old.get("wsgate_msgs_per_s"), "rate")
        add("e", "proxy CPU-s / 100k", new.get("proxy_cpu_s_per_100k"), old.get("proxy_cpu_s_per_100k"), "cpu")
        add("e", "p50", new.get("p50_us"), old.get("p50_us"), "us")
        add("e", "p99", new.get("p99_us"), old.get("p99_us"), "us")
        add("e", "% of wrk ceiling", new.get("percent_of_ceiling"), old.get("percent_of_ceiling"), "pct")
        add("e", "% of curl driver", new.get("percent_of_curl"), old.get("percent_of_curl"), "pct")
    return rows


def log_comparison(r: dict, rows: list[dict]) -> None:
    def fmt(v, kind):
        if v is None:
            return "–"
        return {"rate": f"{v:,.0f}", "cpu": f"{v:.3f}", "us": us(v), "bytes": f"{v / 1024:.1f} KB", "pct": f"{v:.0f} %"}[kind]

    reps = r["settings"]["reps"]
    log(f"== wsgate ({r['settings']['build_dir']}) vs wsgate-base ({r['settings']['baseline_bin']}), same run")
    log(f"   medians over {reps} rep{'s' if reps != 1 else ''}; new/base = wsgate / wsgate-base "
        "(msgs/s, %: higher is better; CPU, latency, RSS: lower is better)")
    log(f"   {'':3}{'metric':22}{'wsgate':>14}{'wsgate-base':>14}{'new/base':>10}")
    last = None
    for row in rows:
        ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "–"
        log(f"   {row['scenario'] if row['scenario'] != last else '':3}{row['metric']:22}"
            f"{fmt(row['wsgate'], row['kind']):>14}{fmt(row[BASE], row['kind']):>14}{ratio:>10}")
        last = row["scenario"]


# ---------------------------------------------------------------- chart

def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_ticks(vmax: float, n: int = 4) -> list[float]:
    if vmax <= 0:
        return [0, 1]
    raw = vmax / n
    mag = 10 ** int(f"{raw:e}".split("e")[1])
    step = next(f * mag for f in (1, 2, 2.5, 5, 10) if f * mag >= raw)
    ticks, t = [], 0.0
    while t < vmax + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def tick_label(v: float) -> str:
    return f"{v:g}"


def svg_chart(r: dict) -> str:
    """Small multiples of horizontal bars (median, min–max whiskers): proxy CPU
    per 100k messages for each load scenario (own scale each), then idle RSS
    per connection for each K (one scale)."""
    W, left, right = 760, 130, 70
    plot_w = W - left - right
    bar_h, gap = 18, 6
    y = 0
    parts: list[str] = []

    def text(x, y, s, size=12, anchor="start", weight="normal", fill="#222"):
        parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                     f'font-weight="{weight}" fill="{fill}">{esc(s)}</text>')

    def group(title: str, rows: list[tuple[str, dict | None]], vmax: float, unit: str, fmt: str):
        nonlocal y
        text(10, y + 14, title, 13, weight="bold")
        y += 24
        ticks = nice_ticks(vmax)
        scale = plot_w / ticks[-1]
        top = y
        height = len(rows) * (bar_h + gap)
        for t in ticks:
            x = left + t * scale
            parts.append(f'<line x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{top + height}" stroke="#e3e3e3"/>')
            text(x, top + height + 13, tick_label(t), 10, "middle", fill="#666")
        text(left + plot_w + 16, top + height + 13, unit, 10, fill="#666")
        for target, s in rows:
            text(left - 8, y + bar_h - 5, target, 12, "end")
            if s:
                w = s["median"] * scale
                parts.append(f'<rect x="{left}" y="{y}" width="{max(w, 1):.1f}" height="{bar_h}" fill="{COLORS[target]}" rx="2"/>')
                if s["n"] > 1:
                    x1, x2, cy = left + s["min"] * scale, left + s["max"] * scale, y + bar_h / 2
                    parts.append(f'<line x1="{x1:.1f}" y1="{cy}" x2="{x2:.1f}" y2="{cy}" stroke="#000" stroke-width="1.2"/>')
                    for x in (x1, x2):
                        parts.append(f'<line x1="{x:.1f}" y1="{cy - 5}" x2="{x:.1f}" y2="{cy + 5}" stroke="#000" stroke-width="1.2"/>')
                label_x = left + max(w, s["max"] * scale) + 6
                text(label_x, y + bar_h - 5, fmt.format(s["median"]), 11)
            else:
                text(left + 6, y + bar_h - 5, "not measured", 11, fill="#999")
            y += bar_h + gap
        y += 26

    sc = r["scenarios"]
    proxies = [t for t in PROXIES if t in r["targets"]]
    y = 10
    text(10, y + 16, f"{' and '.join(t for t in ('wsgate', W1) if t in proxies) or 'wsgate'} vs nginx vs HAProxy, "
                     "one echo upstream (lower is better)", 15, weight="bold")
    y += 22
    m = r["environment"]["machine"]
    reps = r["settings"]["reps"]
    text(10, y + 12, f"{r['date']} · {m['nproc']} cores, {m['cpu']} · {reps} rep{'s' if reps != 1 else ''} · "
                     "client, proxy and echo on one machine", 11, fill="#555")
    y += 26
    lx = 10
    for t in proxies:
        label = LEGEND.get(t, t)
        parts.append(f'<rect x="{lx}" y="{y}" width="12" height="12" fill="{COLORS[t]}" rx="2"/>')
        text(lx + 17, y + 10, label, 12)
        lx += 17 + round(6.3 * len(label)) + 18
    y += 20
    text(10, y + 10, "bar = median, whisker = min–max over the reps", 11, fill="#555")
    y += 24
    text(10, y + 12, "Proxy CPU seconds per 100,000 messages (utime+stime, all proxy processes)", 13, weight="bold", fill="#333")
    y += 24
    for name in ("a", "b", "c"):
        if name not in sc:
            continue
        rows = [(t, sc[name]["targets"].get(t, {}).get("summary", {}).get("proxy_cpu_s_per_100k")) for t in proxies]
        vmax = max([s["max"] for _, s in rows if s] or [1])
        group(f"({name}) {sc[name]['title']}", rows, vmax, "CPU-s", "{:.2f} s")
    if "d" in sc:
        text(10, y + 12, "Memory per idle proxied connection (RSS delta / K, fresh proxy each time)", 13, weight="bold", fill="#333")
        y += 24
        d = sc["d"]
        cells = {}
        for k in d["ks"]:
            for t in proxies:
                s = d["targets"].get(t, {}).get(str(k), {}).get("summary", {}).get("rss_per_conn_bytes")
                cells[(k, t)] = {**s, "median": s["median"] / 1024, "min": s["min"] / 1024, "max": s["max"] / 1024} if s else None
        vmax = max([s["max"] for s in cells.values() if s] or [1])
        for k in d["ks"]:
            group(f"(d) K = {k:,} idle connections", [(t, cells[(k, t)]) for t in proxies], vmax, "KB", "{:.1f} KB")
    H = y + 10
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'font-family="Helvetica, Arial, sans-serif">\n<rect width="{W}" height="{H}" fill="#fff"/>\n')
    return head + "\n".join(parts) + "\n</svg>\n"


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="comma-separated subset of a,b,c,d,e,cap (default: all)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions, targets interleaved in each (default 3)")
    ap.add_argument("--messages", type=int, default=100_000, help="messages per load run, M (scenario c: M/5; default 100000)")
    ap.add_argument("--smoke", action="store_true", help="tiny counts, 1 rep, idle K=20, capacity K=250: keeps the tool working (used by scripts/test)")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md, .json and .svg from this run")
    default_bin = Path(os.environ["WSGATE_BUILD_DIR"]) / "release" if os.environ.get("WSGATE_BUILD_DIR") else REPO / ".build" / "release"
    ap.add_argument("--build-dir", type=Path, default=default_bin,
                    help="directory with the release binaries wsgate and wsgate-bench (default: $WSGATE_BUILD_DIR/release or .build/release)")
    ap.add_argument("--baseline-bin", type=Path, metavar="DIR",
                    help="directory with the wsgate release binary of an older build: adds the target wsgate-base (same config, "
                         "default workers, right after wsgate and wsgate-w1 in scenarios a-e) and a wsgate vs wsgate-base comparison at the end; not with --write")
    ap.add_argument("--json", type=Path, metavar="FILE",
                    help="write this run's results (every run and the summaries) to FILE; unlike --write, never touches docs/")
    args = ap.parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if bad := [s for s in scenarios if s not in ALL_SCENARIOS + EXTRA_SCENARIOS]:
        ap.error(f"unknown scenario(s) {bad}; choose from {ALL_SCENARIOS + EXTRA_SCENARIOS}")
    if args.smoke and args.write:
        ap.error("--smoke --write would overwrite the published figures with smoke counts; refusing")
    if args.baseline_bin and args.write:
        ap.error("--baseline-bin --write would publish wsgate-base (another build) next to wsgate in docs/benchmarks.*; "
                 "refusing: compare with --baseline-bin (optionally --json FILE), publish with a run without it")
    if args.reps < 1 or args.messages < 1:
        ap.error("--reps and --messages must be positive")
    if args.smoke:
        args.reps, args.messages = 1, 2000
    bin_dir = args.build_dir if args.build_dir.is_absolute() else (Path.cwd() / args.build_dir)
    for exe in ("wsgate", "wsgate-bench"):
        if not (bin_dir / exe).exists():
            log(f"{bin_dir / exe} not found: build first (scripts/bench does: swift build -c release --static-swift-stdlib)")
            return 2
    base_bin = None
    if args.baseline_bin:
        base_bin = args.baseline_bin if args.baseline_bin.is_absolute() else (Path.cwd() / args.baseline_bin)
        if not os.access(base_bin / "wsgate", os.X_OK):
            log(f"--baseline-bin: {base_bin / 'wsgate'} not found or not executable: build the baseline first "
                "(e.g. swift build -c release in a checkout of the older commit) and pass its .build/release")
            return 2
        if (base_bin / "wsgate").resolve() == (bin_dir / "wsgate").resolve():
            log(f"note: wsgate-base and wsgate are the same binary ({bin_dir / 'wsgate'}): an A/A run")

    targets, skipped, missing_required = ["direct", "wsgate", W1] + ([BASE] if base_bin else []), [], []
    for tool, pkg in (("nginx", "nginx-light"), ("haproxy", "haproxy")):
        if shutil.which(tool):
            targets.append(tool)
        else:
            msg = f"{tool} not installed (apt-get install {pkg}): target {tool} skipped"
            skipped.append(msg)
            if targets_required():
                missing_required.append(f"{msg}; required in CI (CI=true or WSGATE_REQUIRE_BENCH_TARGETS=1)")
            else:
                log(f"WARNING: {msg}")
    if "e" in scenarios and not shutil.which("wrk"):
        skipped.append("wrk not installed (apt-get install wrk): no ceiling in scenario e")

    command = os.environ.get("WSGATE_BENCH_COMMAND") or "python3 benchmarks/run.py" + ("" if len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:]))
    results = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "command": command, "environment": environment(),
               "settings": {"reps": args.reps, "messages": args.messages, "smoke": args.smoke, "scenarios": scenarios,
                            "haproxy_maxconn": haproxy_maxconn()},
               "targets": targets, "skipped": skipped, "scenarios": {}}
    if base_bin:  # only then, so a run without --baseline-bin writes exactly what it always did
        results["settings"].update({"build_dir": str(bin_dir), "baseline_bin": str(base_bin)})
    started = time.monotonic()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with tempfile.TemporaryDirectory(prefix="wsgate-bench-") as d:
        tmp = Path(d)
        bench = Bench(bin_dir, tmp, args.smoke, base_bin)
        runner = Runner(args, bench, targets)
        for msg in missing_required:
            runner.problem(msg)
        try:
            bench.start_echo()
            if load := [s for s in scenarios if s in LOAD_SCENARIOS]:
                results["scenarios"].update(runner.load_scenarios(load))
            if "d" in scenarios:
                results["scenarios"]["d"] = runner.scenario_d()
            if "e" in scenarios:
                results["scenarios"]["e"] = runner.scenario_e()
            if "cap" in scenarios:
                results["scenarios"]["cap"] = runner.scenario_cap()
            if "pool" in scenarios:
                results["scenarios"]["pool"] = runner.scenario_pool()
            if "push" in scenarios:
                results["scenarios"]["push"] = runner.scenario_push()
        except BenchFailure as e:
            runner.problem(str(e))
        except KeyboardInterrupt:
            runner.problem("interrupted")
        finally:
            Proc.stop_all()
    results["settings"]["wsgate_workers"] = bench.workers
    results["seconds"] = round(time.monotonic() - started, 1)
    results["problems"] = runner.problems
    if base_bin:
        results["comparison"] = comparison(results)

    print(markdown(results))
    log(f"finished in {results['seconds']} s")
    if base_bin:
        log_comparison(results, results["comparison"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        log(f"wrote {args.json}")
    if runner.problems:
        log(f"{len(runner.problems)} problem(s):")
        for p in runner.problems:
            log(f"  - {p.splitlines()[0]}")
        if args.write:
            log("not writing docs: the run had problems")
        return 1
    if args.write and set(scenarios) <= set(EXTRA_SCENARIOS):
        # Only the opt-in scenarios ran: they have a page of their own, and
        # docs/benchmarks.md (the comparison with nginx and HAProxy) stays.
        DOCS.mkdir(exist_ok=True)
        (DOCS / "benchmarks-pools-push.md").write_text(extras_markdown(results))
        (DOCS / "benchmarks-pools-push.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        log("wrote docs/benchmarks-pools-push.md and .json")
        return 0
    if args.write:
        DOCS.mkdir(exist_ok=True)
        (DOCS / "benchmarks.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        (DOCS / "benchmarks.md").write_text(markdown(results))
        (DOCS / "benchmarks.svg").write_text(svg_chart(results))
        log("wrote docs/benchmarks.md, docs/benchmarks.json, docs/benchmarks.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
