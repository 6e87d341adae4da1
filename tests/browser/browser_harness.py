"""Helpers for the headless-Chromium suite: the browser (Selenium + Debian's
chromedriver), the test page's HTTP server, log-line matching, and the
renderer of docs/close-codes.md.

The gateway process, the ws upstream fixtures, the HTTP backend and the TLS
certificates come from the black-box suite (tests/blackbox), imported as they
are. Nothing here reads /work/shared or downloads anything: Chromium and
chromedriver are Debian's (`apt-get install chromium chromium-driver`),
Selenium is PyPI's, and Selenium Manager is kept offline.
"""

from __future__ import annotations

import http.server
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BLACKBOX = REPO / "tests" / "blackbox"
if str(BLACKBOX) not in sys.path:
    sys.path.insert(0, str(BLACKBOX))

import conftest as bb  # noqa: E402  (tests/blackbox/conftest.py: Gateway, Upstreams, …)

DOC = REPO / "docs" / "close-codes.md"
PAGE = HERE / "page.html"

CASE_TIMEOUT = 20.0  # the browser's CloseEvent for one case (more than any gateway budget, 10 s)
LOG_TIMEOUT = 10.0   # the log line after the CloseEvent


def truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def browser_required() -> bool:
    """In CI (and under scripts/test, which installs Chromium first) a missing
    browser is a failure, never a silent skip."""
    return truthy("CI") or truthy("WSGATE_REQUIRE_BROWSER")


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or fail/skip with what is missing."""
    def locate(env: str, name: str) -> str:
        path = os.environ.get(env) or shutil.which(name) or ""
        return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else ""

    chromium = locate("WSGATE_CHROMIUM", "chromium")
    driver = locate("WSGATE_CHROMEDRIVER", "chromedriver")
    missing = []
    if not chromium:
        missing.append("chromium (apt-get install chromium)")
    if not driver:
        missing.append("chromedriver (apt-get install chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -r tests/browser/requirements.txt)")
    if missing:
        msg = "browser suite needs: " + ", ".join(missing) + " (scripts/setup --test installs them)"
        if browser_required():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return chromium, driver


# --------------------------------------------------------------------------
# the test page, served over http://127.0.0.1


class PageServer:
    def __init__(self) -> None:
        body = PAGE.read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.split("?")[0] in ("/", "/page.html"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="page-server", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}/page.html"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# --------------------------------------------------------------------------
# headless Chromium through Selenium and Debian's chromedriver


class Browser:
    """One headless Chromium with the test page loaded; each case is one
    `WebSocket` opened by `window.wsCase` in that page."""

    def __init__(self, page_url: str) -> None:
        chromium, driver_path = find_browser()
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download anything
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-proxy-server", "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update"):
            opts.add_argument(arg)
        self.driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
        try:
            self.driver.set_page_load_timeout(15)
            self.driver.set_script_timeout(15)
            self.driver.get(page_url)
            self.version = str(self.driver.capabilities.get("browserVersion", "?"))
            assert self.driver.execute_script("return typeof window.wsCase") == "function", "test page did not load"
        except BaseException:
            self.quit()
            raise

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    def start(self, case_id: str, url: str, opts: dict | None = None) -> None:
        self.driver.execute_script("window.wsCase(arguments[0], arguments[1], arguments[2])",
                                   case_id, url, opts or {})

    def result(self, case_id: str) -> dict:
        return self.driver.execute_script("return window.cases[arguments[0]] || null", case_id)

    def wait(self, case_id: str, pred: Callable[[dict], bool], what: str,
             timeout: float = CASE_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = self.result(case_id)
            if r is not None and (pred(r) or r.get("exception")):
                assert not r.get("exception"), f"{case_id}: new WebSocket threw {r['exception']}"
                return r
            if time.monotonic() > deadline:
                raise AssertionError(f"{case_id}: the page saw no {what} within {timeout}s; state: {r!r}")
            time.sleep(0.02)

    def wait_open(self, case_id: str) -> dict:
        return self.wait(case_id, lambda r: r["opened"] or r["close"] is not None, "open")

    def wait_closed(self, case_id: str, timeout: float = CASE_TIMEOUT) -> dict:
        return self.wait(case_id, lambda r: r["close"] is not None, "CloseEvent", timeout)

    def close_socket(self, case_id: str, code: int = 1000, reason: str = "done") -> None:
        self.driver.execute_script("window.wsClose(arguments[0], arguments[1], arguments[2])",
                                   case_id, code, reason)

    def quit(self) -> None:
        try:
            self.driver.quit()  # stops chromedriver (its own process) and the browser it started
        except Exception:
            pass


# --------------------------------------------------------------------------
# log lines of one case


def lines_since(gw: bb.Gateway, mark: int, event: str) -> list[dict]:
    with gw.cond:
        return [l for l in gw.lines[mark:] if l.get("event") == event]


def wait_line(gw: bb.Gateway, mark: int, pred: Callable[[dict], bool], what: str,
              timeout: float = LOG_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    with gw.cond:
        while True:
            for line in gw.lines[mark:]:
                if pred(line):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0 or gw.eof:
                raise AssertionError(f"no {what} line; last lines:\n" + "\n".join(gw.raw_lines[-15:]))
            gw.cond.wait(remaining)


def header(headers: list, name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


# --------------------------------------------------------------------------
# docs/close-codes.md


def md(value: Any) -> str:
    """A table cell: JSON-ish scalars in code spans."""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int):
        return f"`{value}`"
    s = str(value)
    if s == "":
        return '`""`'
    return "`" + s.replace("|", "\\|").replace("`", "'") + "`"


def events_text(events: list[str]) -> str:
    """['open','message','message','close'] -> 'open, message ×2, close'."""
    out: list[str] = []
    for e in events:
        if out and out[-1][0] == e:
            out[-1] = (e, out[-1][1] + 1)
        else:
            out.append((e, 1))
    return ", ".join(e if n == 1 else f"{e} ×{n}" for e, n in out)


def render_doc(chromium_major: str, settings: list[str], rows: list[dict], rejects: list[dict]) -> str:
    """docs/close-codes.md from the run's observations, in the order the
    cases are defined. Holds nothing that varies between runs (of one
    Chromium major version)."""
    out = [
        "# Close codes as a browser sees them",
        "",
        "<!-- Generated by scripts/close-codes (tests/browser/test_browser.py). Do not edit by hand. -->",
        "",
        f"This table is written by a run of the browser suite: headless Chromium {chromium_major} "
        "(Debian's `chromium`, driven by Selenium and `chromedriver`) opened one `WebSocket` per "
        "row through a real `wsgate` to real upstream servers on loopback, and recorded what the "
        "page saw: the events in order and the `CloseEvent`. Next to it are the fields of the "
        "gateway's `websocket_close` line for that same connection. For every row the run "
        "asserted that the browser's `code`, `reason` and `wasClean` equal the line's `code`, "
        "`reason` and `was_clean`, and that they are the codes the close-code table in the "
        "[README](../README.md#close-codes) promises.",
        "",
        "Regenerate with `scripts/close-codes`. Every other run of the browser suite renders the table "
        "too and fails if it differs from this file.",
        "",
        "Gateway settings for the run: " + "; ".join(settings) + ".",
        "",
        "## Upgraded connections",
        "",
        "| cause | what happened | page events | `code` | `reason` | `wasClean` "
        "| log `code` | log `reason` | log `was_clean` | `initiator` | `upstream_code` "
        "| `upstream_reason` | `upstream_status` |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, l = r["browser"]["close"], r["line"]
        out.append("| " + " | ".join([
            md(l["cause"]), r["happened"], events_text(r["browser"]["events"]),
            md(b["code"]), md(b["reason"]), md(b["wasClean"]),
            md(l["code"]), md(l["reason"]), md(l["was_clean"]), md(l["initiator"]),
            md(l["upstream_code"]), md(l["upstream_reason"]), md(l["upstream_status"]),
        ]) + " |")
    out += [
        "",
        "`page events` are the `WebSocket`'s `open`, `message`, `error` and `close` events in the "
        "order they fired. Where the upstream failed, the page still got `open`: the gateway "
        "upgrades the client first so that it can tell it, in the close frame, what went wrong.",
        "",
        "## Refused before the upgrade",
        "",
        "These requests never become WebSocket connections: the gateway answers the upgrade "
        "request with an HTTP status and logs a `websocket_reject` line (no `websocket_close`). "
        "A browser cannot see the status; its `CloseEvent` is the generic one below.",
        "",
        "| what happened | page events | `code` | `reason` | `wasClean` | log `event` | log `status` | log `reason` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rejects:
        b, l = r["browser"]["close"], r["line"]
        out.append("| " + " | ".join([
            r["happened"], events_text(r["browser"]["events"]),
            md(b["code"]), md(b["reason"]), md(b["wasClean"]),
            md(l["event"]), md(l["status"]), md(l["reason"]),
        ]) + " |")
    return "\n".join(out) + "\n"
