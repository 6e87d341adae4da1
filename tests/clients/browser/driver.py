#!/usr/bin/env python3
"""Matrix client for a browser's own `WebSocket` (PROTOCOL.md is the contract), no WebDriver.

    driver.py --browser chromium|firefox CASES.json
    driver.py --browser chromium|firefox --version

Serves page.html and the cases on http://127.0.0.1:PORT (a thread), starts the browser
headless on that page with a fresh profile, and prints each result the page posts as one
line on stdout. The page runs the cases (see page.html); this program only carries them.

  GET  /page.html  the page            POST /result  one result line (JSON)
  GET  /cases      the cases (JSON)    POST /done    every case has run
                                       POST /log     page diagnostics, copied to stderr

It ends at /done, or when the browser dies, or when no page asked for /cases within
STARTUP_S, or at the overall deadline (sum of timeout_ms + 60 s). Then it stops the browser
(its whole process group), removes the profile and prints a line for every case that has
none, with error "browser ended before the case ran"; that makes the exit status 1.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "page.html"
STARTUP_S = 30.0  # from launch to the page's GET /cases; a page that never loads fails fast

# Headless, no first-run UI, no network of its own (there is no internet here), and no
# throttling of timers or the renderer: the page's timers bound the cases.
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-dev-shm-usage", "--no-proxy-server", "--disable-extensions", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
    "--disable-domain-reliability", "--metrics-recording-only", "--password-store=basic",
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    # Even with the flags above it looks up accounts.google.com, clients2.google.com and
    # update.googleapis.com; the cases only ever name loopback, so every other name fails here.
    # No spaces after the commas: with them Chromium ignores the rules without a word.
    "--host-resolver-rules=MAP * ~NOTFOUND,EXCLUDE 127.0.0.1,EXCLUDE localhost",
]

# Firefox prefs (user.js in the fresh profile): nothing reaches out at startup, no proxy for
# loopback, and no RFC 6455 §7.2.3 back-off between WebSocket attempts to a host that just
# failed (Firefox delays them; one failing case would slow the next ones to the same server).
FIREFOX_PREFS = {
    "network.proxy.type": 0,
    "network.proxy.allow_hijacking_localhost": False,
    "network.websocket.delay-failed-reconnects": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.predictor.enabled": False,
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.startup.page": 0,
    "browser.sessionstore.resume_from_crash": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.search.update": False,
    "browser.region.network.url": "",
    "browser.topsites.contile.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "media.gmp-manager.updateEnabled": False,
    "services.settings.server": "http://127.0.0.1:1/",  # honoured with MOZ_REMOTE_SETTINGS_DEVTOOLS
    "dom.push.enabled": False,
    "dom.push.connection.enabled": False,
    "dom.push.serverURL": "",
    "security.OCSP.enabled": 0,
    "toolkit.startup.max_resumed_crashes": -1,
}


def browser_command(browser: str, profile: Path, url: str) -> tuple[list[str], dict]:
    """The command line and environment that start `browser` headless on `url`."""
    env = dict(os.environ)
    if browser == "chromium":
        return ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url], env
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                             for k, v in FIREFOX_PREFS.items()))
    # Release builds ignore services.settings.server unless this is set: without it Firefox
    # syncs Remote Settings from firefox.settings.services.mozilla.com at startup.
    env.update(MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1", MOZ_REMOTE_SETTINGS_DEVTOOLS="1")
    return ["firefox-esr", "--headless", "--no-remote", "--profile", str(profile), url], env


def version(browser: str) -> str:
    """`Chromium 156.0.8078.114` / `Firefox ESR 153.8.0` from the browser's own --version."""
    exe = "chromium" if browser == "chromium" else "firefox-esr"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.split()
    if browser == "chromium":  # "Chromium 156.0.8078.114 built on Debian GNU/Linux 12 (bookworm)"
        return f"Chromium {out[1]}"
    return f"Firefox ESR {out[-1].removesuffix('esr')}"  # "Mozilla Firefox 153.8.0esr"


class Stopped(Exception):
    """SIGTERM or SIGINT reached the driver: stop the browser and report what is missing."""


def stopped(signum, _frame) -> None:
    raise Stopped(signum)


class Run:
    """What the page has reported so far; the HTTP threads write it, main() waits on it."""

    def __init__(self, cases: list[dict]) -> None:
        self.cases = cases
        self.cases_json = json.dumps(cases).encode()
        self.cond = threading.Condition()
        self.printed: set[str] = set()
        self.loaded = 0.0    # when the page asked for /cases (monotonic), 0 before
        self.done = False    # the page posted /done
        self.closed = False  # the driver has given up: late results are dropped

    def result(self, body: bytes) -> None:
        r = json.loads(body)
        with self.cond:
            if self.closed or r.get("id") in self.printed:
                return
            self.printed.add(r.get("id"))
            print(json.dumps(r, ensure_ascii=False), flush=True)
            self.cond.notify_all()

    def close(self) -> list[dict]:
        """Stops taking results; the cases that have none."""
        with self.cond:
            self.closed = True
            return [c for c in self.cases if c["id"] not in self.printed]


def make_handler(run: Run) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/page.html":
                self.reply(200, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif self.path == "/cases":
                with run.cond:
                    run.loaded = run.loaded or time.monotonic()
                    run.cond.notify_all()
                self.reply(200, run.cases_json, "application/json")
            else:
                self.reply(404, b"", "text/plain")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/result":
                run.result(body)
            elif self.path == "/log":
                sys.stderr.write(f"page: {body.decode(errors='replace')}\n")
            elif self.path == "/done":
                with run.cond:
                    run.done = True
                    run.cond.notify_all()
            self.reply(204, b"", "text/plain")

        def reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # no access log on stderr
            pass

    return Handler


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the browser's process group, up to 5 s for it to exit, then SIGKILL to
    whatever is left of the group (renderers, content processes)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass


def wait_for_page(run: Run, proc: subprocess.Popen, started: float, deadline: float) -> str:
    """Waits for /done; otherwise returns why the run ended early ("" after /done)."""
    with run.cond:
        while not run.done:
            now = time.monotonic()
            if proc.poll() is not None:
                return f"the browser exited ({proc.returncode})"
            if not run.loaded and now > started + STARTUP_S:
                return f"the page did not load within {STARTUP_S:.0f} s"
            if now > deadline:
                return "the overall deadline passed"
            run.cond.wait(0.2)
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--browser", choices=("chromium", "firefox"), required=True)
    ap.add_argument("--version", action="store_true")
    ap.add_argument("cases", nargs="?")
    args = ap.parse_args()
    if args.version:
        print(version(args.browser))
        return 0
    if not args.cases:
        ap.error("CASES.json is required")
    signal.signal(signal.SIGTERM, stopped)  # so the browser is stopped and its profile removed
    signal.signal(signal.SIGINT, stopped)

    cases = json.loads(Path(args.cases).read_text())
    run = Run(cases)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(run))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/page.html"

    tmp = Path(tempfile.mkdtemp(prefix=f"wsgate-{args.browser}-"))
    profile, log = tmp / "profile", tmp / "browser.log"
    profile.mkdir()
    cmd, env = browser_command(args.browser, profile, url)
    started = time.monotonic()
    deadline = started + sum(c.get("timeout_ms", 15000) for c in cases) / 1000 + 60
    # The browser's own output (dbus, GL and sandbox chatter) goes to a file, shown on failure.
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    signum = 0
    try:
        why = wait_for_page(run, proc, started, deadline)
    except Stopped as e:
        signum = e.args[0]
        why = f"the driver got {signal.Signals(signum).name}"
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the cleanup short
        signal.signal(sig, signal.SIG_IGN)
    stop(proc)
    server.shutdown()
    missing = run.close()
    if run.loaded:
        sys.stderr.write(f"{args.browser}: page loaded {run.loaded - started:.1f} s after launch, "
                         f"{time.monotonic() - run.loaded:.1f} s of cases\n")
    if why or missing:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        sys.stderr.write("".join(f"{args.browser}| {line}\n" for line in tail))
        sys.stderr.write(f"{args.browser}: {why or 'the page finished'}, {len(missing)} case(s) unreported\n")
    shutil.rmtree(tmp, ignore_errors=True)
    for c in missing:
        print(json.dumps({"id": c["id"], "opened": False, "status": None, "protocol": None, "messages": [],
                          "pongs": 0, "code": None, "reason": None, "clean": None,
                          "error": "browser ended before the case ran", "unsupported": [], "timeout": False,
                          "elapsed_ms": 0}), flush=True)
    return 128 + signum if signum else 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
