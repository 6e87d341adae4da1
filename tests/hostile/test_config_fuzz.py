"""Property-based fuzzing of `wsgate check-config --config PATH` (hypothesis).

Every generated config is written to pytest's `tmp_path` and checked by the
real binary (`WSGATE_BIN`, default `.build/debug/wsgate`, located by the
black-box conftest). For every one of them:

1. the process ends by itself within `TIMEOUT` seconds with exit 0 or 1 (no
   signal, no other code), prints no Swift fatal error or crash report, and
   stays under `MAX_RSS_KIB` of resident memory (its address space is also
   capped at `AS_LIMIT` so a runaway cannot take the machine with it);
2. exit 0 <=> stdout is exactly `PATH: OK (N route[s])` and stderr is empty;
   exit 1 <=> stdout is empty and stderr holds at least one problem, and every
   problem names a YAML key path (`routes[2].upstream`,
   `limits.max_connections`, `close_codes.bogus`, the unknown key itself), or
   is one of the two whole-file errors (`invalid YAML: …`, a root that is
   `expected a mapping, found …`), which then is the only problem.

The output format, as `check-config` prints it (ConfigLoader.swift,
WSGateCommand.swift): every problem goes to stderr as
`PATH: KEYPATH: MESSAGE`, or `PATH: MESSAGE` for a whole-file error; only the
`invalid YAML` message (which quotes the file) and key paths or values that
themselves hold a newline run over several lines. `parse_problems` splits
stderr at lines that start with `PATH: ` and `interpretations` finds every
way to read a problem as `KEYPATH: MESSAGE` with KEYPATH valid in `GRAMMAR`.

On top of that a partial reference checker (`expected_problems`) lists the
key paths a config *must* be flagged at (a wrong type, an out-of-range
integer, an unknown key, a missing required key, a bad route path or URL, …):
each must be among the problems printed. Generated valid configs (and the
shipped ones, and `RICH_CONFIG`, which uses every key of the README's
configuration reference) must exit 0.

Strategies: valid configs built from the key table; mutations of the seeds
(dropped keys, typos and unknown keys, wrong types, huge/negative/float/null/
bool/unicode/very long values, out-of-range ports and close codes, bad URLs
and schemes, duplicate and malformed route paths); random YAML documents;
raw text and bytes (YAML token soup, invalid UTF-8, byte-level mutations of
the seed files); alias bombs (billion laughs), which must end as fast.

Keys the loader is gaining (`OPTIONAL_KEYS`, not yet in the README) are
probed once per run: the reference checker treats each as known or unknown
as the binary under test does, and claims only type errors for them.

Measuring: the child's peak RSS is its VmHWM, sampled every 20 ms while it
runs (wait4's ru_maxrss starts at the forking parent's, this Python's, so it
only counts when above ours). The Swift crash backtracer is off in the child
(`SWIFT_BACKTRACE=enable=no`) so that a crash shows as a signal at once; the
runtime's `Fatal error: …` line is still printed and caught.

Reproducible: hypothesis is derandomized (the same examples every run) unless
`WSGATE_TEST_SEED` is set, which then seeds it. No example database is
written; hypothesis's other files go to $TMPDIR/wsgate-hypothesis.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import resource
import select
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

# Hypothesis keeps a cache (and writes patch files for failures) under
# ./.hypothesis by default: keep it out of the source tree.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "wsgate-hypothesis"))

from hypothesis import HealthCheck, Phase, given, note, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from blackbox_conftest import BIN, REPO, clean_env

# --------------------------------------------------------------------------
# bounds and settings

TIMEOUT = 10.0  # seconds for one check-config run
MAX_RSS_KIB = 256 * 1024  # a config check needs ~35 MiB; 256 MiB is a bug
AS_LIMIT = 1 << 30  # the child's address space (RLIMIT_AS)
OUTPUT_CAP = 4 << 20  # bytes kept per stream; more is drained and flagged
CRASH_MARKERS = (
    "Fatal error", "Illegal instruction", "Segmentation", "Program crashed", "Stack dump",
    "Current stack trace", "Aborted", "Bus error", "Trace/breakpoint trap",
)

_SEED_ENV = os.environ.get("WSGATE_TEST_SEED", "").strip()


def fuzz(max_examples: int):
    """@settings for every property: bounded, reproducible, no database."""

    def wrap(f):
        f = settings(
            max_examples=max_examples,
            deadline=None,
            derandomize=not _SEED_ENV,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            print_blob=False,
            suppress_health_check=[
                HealthCheck.function_scoped_fixture,
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
                HealthCheck.large_base_example,
            ],
        )(f)
        if _SEED_ENV:
            f = seed(int(_SEED_ENV, 0))(f)
        return f

    return wrap


# --------------------------------------------------------------------------
# running check-config


def _child_limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _child_env() -> dict[str, str]:
    env = clean_env()  # no WSGATE_* overrides
    env["SWIFT_BACKTRACE"] = "enable=no"
    return env


CHILD_ENV = _child_env()


@dataclass
class Outcome:
    path: Path
    status: int | None  # exit code, or -signal
    timed_out: bool
    elapsed: float
    maxrss_kib: int
    stdout: str
    stderr: str
    truncated: bool

    def describe(self) -> str:
        what = "killed after the timeout" if self.timed_out else (
            f"signal {signal.Signals(-self.status).name}" if self.status is not None and self.status < 0
            else f"exit {self.status}")
        rss = f"max RSS {self.maxrss_kib} KiB" if self.maxrss_kib else "RSS not sampled (ended within 20 ms)"
        return (f"{what}, {self.elapsed:.2f} s, {rss}"
                f"\n--- stdout ---\n{_clip(self.stdout)}\n--- stderr ---\n{_clip(self.stderr)}")


def _clip(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else text[:n] + f"\n… ({len(text) - n} more characters)"


def _drain(pipe, sink: bytearray, flags: dict) -> None:
    while True:
        chunk = pipe.read1(65536) if hasattr(pipe, "read1") else pipe.read(65536)
        if not chunk:
            break
        room = OUTPUT_CAP - len(sink)
        if room > 0:
            sink += chunk[:room]
        if len(chunk) > room:
            flags["truncated"] = True
    pipe.close()


def _binary_stamp():
    try:
        st_ = os.stat(BIN)
        return (st_.st_ino, st_.st_size, st_.st_mtime_ns)
    except FileNotFoundError:
        return None


def _wait_for_binary(limit: float = 120.0) -> None:
    """The binary may be relinked under us by a concurrent `swift build`."""
    end = time.monotonic() + limit
    while not (BIN.exists() and os.access(BIN, os.X_OK)):
        if time.monotonic() > end:
            pytest.fail(f"wsgate binary not found at {BIN} (run `swift build` or set WSGATE_BIN)")
        time.sleep(0.5)


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _run_once(path: Path) -> Outcome:
    _wait_for_binary()
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN), "check-config", "--config", str(path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=path.parent, env=CHILD_ENV, preexec_fn=_child_limits)
    out, err, flags = bytearray(), bytearray(), {"truncated": False}
    readers = [threading.Thread(target=_drain, args=(proc.stdout, out, flags), daemon=True),
               threading.Thread(target=_drain, args=(proc.stderr, err, flags), daemon=True)]
    for r in readers:
        r.start()
    # Peak RSS: the child's VmHWM, sampled while it runs. (Its ru_maxrss from
    # wait4 is no use below our own: a forked child's high-water mark starts
    # at its parent's, this Python process's.)
    peak = 0
    pidfd = os.pidfd_open(proc.pid)
    try:
        timed_out = False
        while True:
            left = start + TIMEOUT - time.monotonic()
            if left <= 0:
                timed_out = True
                os.kill(proc.pid, signal.SIGKILL)  # our own child, by its PID
                break
            ready, _, _ = select.select([pidfd], [], [], min(0.02, left))
            if ready:
                break
            peak = max(peak, _vm_hwm_kib(proc.pid))
        _, wstatus, usage = os.wait4(proc.pid, 0)
    finally:
        os.close(pidfd)
    elapsed = time.monotonic() - start
    if usage.ru_maxrss > resource.getrusage(resource.RUSAGE_SELF).ru_maxrss:
        peak = max(peak, usage.ru_maxrss)  # above ours: the child's own
    status = os.waitstatus_to_exitcode(wstatus)
    proc.returncode = status  # reaped here; Popen must not wait again
    for r in readers:
        r.join(timeout=10)
    return Outcome(path, None if timed_out else status, timed_out, elapsed, peak,
                   out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), flags["truncated"])


def run_check(path: Path) -> Outcome:
    """One check-config run, repeated once if the binary was replaced (or
    could not be executed) meanwhile: a concurrent `swift build` relinks it."""
    before = _binary_stamp()
    try:
        outcome = _run_once(path)
        if _binary_stamp() == before:
            return outcome
    except OSError:  # ETXTBSY/ENOEXEC/ENOENT while the linker writes it
        pass
    time.sleep(2)
    return _run_once(path)


_counter = itertools.count()


def write_config(tmp_path: Path, data: bytes | str) -> Path:
    d = tmp_path / f"ex{next(_counter)}"
    d.mkdir()
    p = d / "wsgate.yaml"
    p.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return p


# --------------------------------------------------------------------------
# the key table: which keys exist, what the paths of problems may be

LIMIT_KEYS = ("max_connections", "max_message_bytes", "handshake_timeout_ms", "idle_timeout_ms")
INT_KEYS: dict[str, tuple[int, int]] = {
    "listen.port": (0, 65535),
    "admin.port": (0, 65535),
    "limits.max_connections": (1, 10_000_000),
    "limits.max_message_bytes": (1, 1 << 30),
    "limits.handshake_timeout_ms": (1, 3_600_000),
    "limits.idle_timeout_ms": (0, 86_400_000),
    "timeouts.upstream_connect_ms": (1, 3_600_000),
    "timeouts.upstream_handshake_ms": (1, 3_600_000),
    "timeouts.http_request_ms": (1, 3_600_000),
    "timeouts.close_handshake_ms": (1, 3_600_000),
    "shutdown.drain_timeout_ms": (0, 3_600_000),
}
ENUM_KEYS = {
    "log.level": ("trace", "debug", "info", "notice", "warning", "error"),
    "log.format": ("json", "text"),
}
STRING_KEYS = {"listen.host", "admin.host"}
SECTIONS: dict[str, list[str]] = {
    "listen": ["host", "port", "tls"],
    "admin": ["host", "port"],
    "limits": list(LIMIT_KEYS),
    "timeouts": ["upstream_connect_ms", "upstream_handshake_ms", "http_request_ms", "close_handshake_ms"],
    "shutdown": ["drain_timeout_ms", "close_code"],
    "log": ["level", "format"],
}
TOP_KEYS = list(SECTIONS) + ["routes", "close_codes"]
ROUTE_KEYS = ["path", "upstream", "forward_headers", "origins", "http", "tls"]
HTTP_KEYS = ["method", "connect_url", "disconnect_url", "on_error"]
ROUTE_TLS_KEYS = ["ca_file", "server_name", "insecure_skip_verify"]

# Keys that are being added to the loader (not yet in the README). Whether
# the binary under test knows each is probed once (`_probe_optional_keys`);
# only type errors are claimed for them.
OPTIONAL_KEYS: dict[str, str] = {
    "limits.max_header_bytes": "int",
    "limits.max_pending_handshakes": "int",
    "log.redact_query": "list",
    "trusted_proxies": "list",
}
OPTIONAL_VALID = {  # values every version that knows the key accepts
    "limits.max_header_bytes": [16384, 65536],
    "limits.max_pending_handshakes": [1000, 1],
    "log.redact_query": [["token", "access_token"], []],
    "trusted_proxies": [["10.0.0.0/8", "127.0.0.1"], []],
}
SUPPORTED_OPTIONAL: set[str] = set()  # filled by the probe

CAUSES = ("client_closed", "client_gone", "client_protocol_error", "client_invalid_utf8",
          "client_message_too_big", "upstream_closed", "upstream_unreachable", "upstream_tls_error",
          "upstream_timeout", "upstream_handshake_rejected", "upstream_protocol_error", "upstream_reset",
          "upstream_http_error", "idle_timeout", "shutdown", "overloaded", "internal_error")
NOT_OVERRIDABLE = {"client_closed", "client_gone", "upstream_closed"}
NEVER_FORWARDED = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-accept",
    "sec-websocket-extensions", "sec-websocket-protocol", "x-forwarded-for",
    "x-wsgate-connection-id", "x-wsgate-message-type",
}
TOKEN_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")


def section_keys(section: str) -> list[str]:
    keys = list(SECTIONS[section])
    keys += [p.split(".", 1)[1] for p in OPTIONAL_KEYS if p.startswith(section + ".") and p in SUPPORTED_OPTIONAL]
    return keys


def top_keys() -> list[str]:
    return TOP_KEYS + [p for p in OPTIONAL_KEYS if "." not in p and p in SUPPORTED_OPTIONAL]


# The grammar of key paths: a mapping's known keys, lists (`[N]`), leaves,
# and `close_codes`, whose keys are any text (its problems are per key).
LEAF = None
LIST_OF = "list"
ANY_KEY = "any"
_ROUTE_GRAMMAR = {
    "path": LEAF, "upstream": LEAF, "forward_headers": (LIST_OF, LEAF), "origins": (LIST_OF, LEAF),
    "http": {k: LEAF for k in HTTP_KEYS}, "tls": {k: LEAF for k in ROUTE_TLS_KEYS},
}
GRAMMAR: dict = {
    "listen": {"host": LEAF, "port": LEAF, "tls": {"certificate": LEAF, "private_key": LEAF}},
    "admin": {"host": LEAF, "port": LEAF},
    "limits": {k: LEAF for k in LIMIT_KEYS},
    "timeouts": {k: LEAF for k in SECTIONS["timeouts"]},
    "shutdown": {k: LEAF for k in SECTIONS["shutdown"]},
    "log": {k: LEAF for k in SECTIONS["log"]},
    "routes": (LIST_OF, _ROUTE_GRAMMAR),
    "close_codes": (ANY_KEY, LEAF),
}
for _p, _kind in OPTIONAL_KEYS.items():  # a path to one of these is a key path in any version
    _parts = _p.split(".")
    _node = GRAMMAR
    for _part in _parts[:-1]:
        _node = _node[_part]
    _node[_parts[-1]] = (LIST_OF, LEAF) if _kind == "list" else LEAF

UNKNOWN_KEY_MSG = re.compile(r"unknown key(?: \(did you mean [^()\n]+\?\))?")
WHOLE_FILE_MSG = re.compile(
    r"invalid YAML: .+|expected a mapping, found (?:a list|a scalar|an empty value|an alias)", re.S)


def _names_path(node, s: str, root: bool, unknown: bool) -> bool:
    if s == "":
        return not root  # the empty path names nothing
    if isinstance(node, dict):
        if not root:
            if not s.startswith("."):
                return False
            s = s[1:]
        for name, child in node.items():
            if s.startswith(name):
                rest = s[len(name):]
                if (rest == "" or rest[0] in ".[") and _names_path(child, rest, False, unknown):
                    return True
        # an unknown key of this mapping, printed as written (`limits.max_conections`)
        return unknown and (s != "" or not root)
    if node is LEAF:
        return False
    kind, item = node
    if kind == LIST_OF:
        m = re.match(r"\[(\d+)\]", s)
        return bool(m) and _names_path(item, s[m.end():], False, unknown)
    if kind == ANY_KEY:  # close_codes.<any cause text>
        return s.startswith(".")
    return False


def names_key_path(key_path: str, message: str) -> bool:
    return _names_path(GRAMMAR, key_path, True, bool(UNKNOWN_KEY_MSG.fullmatch(message)))


def interpretations(text: str) -> list[tuple[str, str]]:
    """Every reading of a problem as KEYPATH: MESSAGE with a valid KEYPATH
    (a key of unknown text may itself hold ': ')."""
    found = []
    for m in re.finditer(": ", text):
        key_path, message = text[:m.start()], text[m.end():]
        if message.strip() and names_key_path(key_path, message):
            found.append((key_path, message))
    return found


@dataclass
class Problem:
    text: str
    readings: list[tuple[str, str]]
    whole_file: bool


def parse_problems(path: Path, stderr: str) -> tuple[list[Problem], list[str]]:
    """Splits stderr into problems (a new one at each `PATH: `), returns them
    and the complaints about the format."""
    prefix = f"{path}: "
    complaints: list[str] = []
    chunks: list[str] = []
    lines = stderr.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    else:
        complaints.append("stderr does not end with a newline")
    for line in lines:
        if line.startswith(prefix):
            chunks.append(line[len(prefix):])
        elif chunks:
            chunks[-1] += "\n" + line  # a multi-line message or key
        else:
            complaints.append(f"stderr starts with a line that is not a problem: {line!r}")
    problems = []
    for text in chunks:
        readings = interpretations(text)
        whole = bool(WHOLE_FILE_MSG.fullmatch(text))
        if not readings and not whole:
            complaints.append(f"problem without a YAML key path: {text!r}")
        problems.append(Problem(text, readings, whole))
    if any(p.whole_file and not p.readings for p in problems) and len(problems) > 1:
        complaints.append("a whole-file error among other problems")
    return problems, complaints


# --------------------------------------------------------------------------
# a partial reference checker: key paths a config must be flagged at


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_ascii_str(v) -> bool:
    return isinstance(v, str) and v.isascii()


def key_text(k) -> str | None:
    """The key as check-config sees it after YAML (PyYAML's rendering)."""
    if isinstance(k, str):
        return k
    if k is None:
        return "null"
    if isinstance(k, bool):
        return "true" if k else "false"
    if is_int(k):
        return str(k)
    return None


def swift_int(text: str) -> int | None:
    """Swift's `Int(String)`."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        return None
    v = int(text)
    return v if -(1 << 63) <= v < (1 << 63) else None


def url_problem(s: str) -> tuple[str | None, str | None]:
    """URLParts.parse for an ASCII string: (reason, scheme)."""
    i = s.find("://")
    if i < 0:
        return "not a URL", None
    scheme = s[:i].lower()
    if scheme not in ("ws", "wss", "http", "https"):
        return "unsupported scheme", scheme
    rest = s[i + 3:]
    if any(c in " #\n\r\x0b\x0c" for c in rest):
        return "URL must not contain spaces or a fragment", scheme
    end = min([j for j in (rest.find("/"), rest.find("?")) if j >= 0], default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        return "credentials in the URL are not supported", scheme
    port_text = None
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return "unterminated IPv6 address", scheme
        host, after = authority[1:close], authority[close + 1:]
        if after.startswith(":"):
            port_text = after[1:]
        elif after:
            return "invalid authority", scheme
    elif ":" in authority:
        c = authority.rfind(":")
        host, port_text = authority[:c], authority[c + 1:]
    else:
        host = authority
    if not host:
        return "missing host", scheme
    if port_text is not None:
        p = swift_int(port_text)
        if p is None or not 1 <= p <= 65535:
            return "invalid port", scheme
    return None, scheme


def upstream_problem(s: str) -> tuple[str | None, str | None]:
    """(reason, kind) for an ASCII upstream; kind: echo | ws | wss | http | https."""
    if s == "builtin:echo":
        return None, "echo"
    if s.startswith("builtin:"):
        return "unknown builtin", None
    return url_problem(s)


def route_path_problem(s: str) -> str | None:
    """RoutePattern.validate for an ASCII string."""
    if not s.startswith("/"):
        return "must start with /"
    if "?" in s or "#" in s:
        return "must not contain a query or fragment"
    if any(b <= 0x20 or b >= 0x7F for b in s.encode()):
        return "must not contain spaces, control or non-ASCII characters"
    body = s[:-2] if s.endswith("/*") else s
    if "*" in body:
        return "* is only allowed as a trailing /*"
    return None


def allowed_override(code: int) -> bool:
    return (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999 or code == 1006)


class Expect:
    def __init__(self, pki: dict[str, str]):
        self.pki = pki
        self.must: list[tuple[str, str]] = []  # (key path, why)

    def add(self, path: str, why: str) -> None:
        self.must.append((path, why))

    def unknown_keys(self, mapping: dict, parent: str, allowed: list[str]) -> None:
        for k in mapping:
            if isinstance(k, str) and k in allowed:
                continue
            text = key_text(k)
            if text is None or (parent == "" and text == ""):
                continue  # an unrenderable key; the root's empty key is the generic check's
            self.add(f"{parent}.{text}" if parent else text, "unknown key")

    def int_leaf(self, path: str, v, lo: int, hi: int) -> None:
        if not (is_int(v) and lo <= v <= hi):
            self.add(path, f"an integer in {lo}...{hi}")

    def leaf(self, path: str, v) -> None:
        if path in INT_KEYS:
            self.int_leaf(path, v, *INT_KEYS[path])
        elif path == "shutdown.close_code":
            if not (is_int(v) and v in (1001, 1012)):
                self.add(path, "1001 or 1012")
        elif path in ENUM_KEYS:
            if not (isinstance(v, str) and v in ENUM_KEYS[path]):
                self.add(path, "one of " + "|".join(ENUM_KEYS[path]))
        elif path in STRING_KEYS:
            if isinstance(v, (list, dict)):
                self.add(path, "a string")
        elif path == "listen.tls":
            self.server_tls(v)
        elif path in OPTIONAL_KEYS:
            kind = OPTIONAL_KEYS[path]
            if kind == "int" and not is_int(v):
                self.add(path, "an integer")
            if kind == "list":
                self.scalar_list(path, v)

    def scalar_list(self, path: str, v) -> None:
        if not isinstance(v, list):
            self.add(path, "a list")
            return
        for i, item in enumerate(v):
            if isinstance(item, (list, dict)):
                self.add(f"{path}[{i}]", "a string")

    def server_tls(self, v) -> None:
        if not isinstance(v, dict):
            self.add("listen.tls", "a mapping")
            return
        self.unknown_keys(v, "listen.tls", ["certificate", "private_key"])
        ok = {}
        for key, good in (("certificate", self.pki["cert"]), ("private_key", self.pki["key"])):
            path = f"listen.tls.{key}"
            if key not in v:
                self.add(path, "required key is missing")
            elif isinstance(v[key], (list, dict)):
                self.add(path, "a string")
            else:
                ok[key] = v[key] == good
        if len(ok) == 2:  # both named: both files are loaded
            for key, good in ok.items():
                if not good:
                    self.add(f"listen.tls.{key}", "a loadable PEM file")

    def check(self, doc) -> None:
        if not isinstance(doc, dict):
            return
        self.unknown_keys(doc, "", top_keys())
        for section in SECTIONS:
            if section not in doc:
                continue
            v = doc[section]
            if not isinstance(v, dict):
                self.add(section, "a mapping")
                continue
            keys = section_keys(section)
            self.unknown_keys(v, section, keys)
            for k in keys:
                if k in v:
                    self.leaf(f"{section}.{k}", v[k])
        for p in OPTIONAL_KEYS:
            if "." not in p and p in SUPPORTED_OPTIONAL and p in doc:
                self.leaf(p, doc[p])
        self.routes(doc)
        self.close_codes(doc)
        self.port_conflict(doc)

    def routes(self, doc: dict) -> None:
        if "routes" not in doc:
            self.add("routes", "required key is missing")
            return
        routes = doc["routes"]
        if not isinstance(routes, list):
            self.add("routes", "a list")
            return
        if not routes:
            self.add("routes", "at least one route")
        accepted: set[str] = set()
        for i, r in enumerate(routes):
            p = f"routes[{i}]"
            if not isinstance(r, dict):
                self.add(p, "a mapping")
                continue
            self.unknown_keys(r, p, ROUTE_KEYS)
            if "path" not in r:
                self.add(f"{p}.path", "required key is missing")
            else:
                v = r["path"]
                if not isinstance(v, str):  # a non-scalar, or a number/null/bool: no leading /
                    self.add(f"{p}.path", "a string starting with /")
                elif not v.isascii():
                    self.add(f"{p}.path", "an ASCII path")
                else:
                    why = route_path_problem(v)
                    if why:
                        self.add(f"{p}.path", why)
                    elif v in accepted:
                        self.add(f"{p}.path", "duplicate path")
                    else:
                        accepted.add(v)
            kind = None
            if "upstream" not in r:
                self.add(f"{p}.upstream", "required key is missing")
            else:
                v = r["upstream"]
                if not isinstance(v, str):  # a non-scalar, or a number/null/bool: no "://"
                    self.add(f"{p}.upstream", "an upstream URL")
                elif v.isascii():
                    why, kind = upstream_problem(v)
                    if why:
                        self.add(f"{p}.upstream", why)
                        kind = None
            if "forward_headers" in r:
                fh = r["forward_headers"]
                if not isinstance(fh, list):
                    self.add(f"{p}.forward_headers", "a list")
                else:
                    for j, h in enumerate(fh):
                        hp = f"{p}.forward_headers[{j}]"
                        if isinstance(h, (list, dict)):
                            self.add(hp, "a string")
                        elif is_ascii_str(h):
                            if not h or any(c not in TOKEN_CHARS for c in h):
                                self.add(hp, "a header name")
                            elif h.lower() in NEVER_FORWARDED:
                                self.add(hp, "a header the gateway does not set")
            if "origins" in r:
                self.scalar_list(f"{p}.origins", r["origins"])
            if "http" in r:
                self.route_http(p, r["http"], kind)
            if "tls" in r:
                self.route_tls(p, r["tls"], kind)

    def route_http(self, p: str, h, kind: str | None) -> None:
        if kind in ("echo", "ws", "wss"):
            self.add(f"{p}.http", "only for http upstreams")
        if not isinstance(h, dict):
            self.add(f"{p}.http", "a mapping")
            return
        self.unknown_keys(h, f"{p}.http", HTTP_KEYS)
        if "method" in h:
            v = h["method"]
            if not isinstance(v, str) or (v.isascii() and v.upper() not in ("POST", "PUT", "PATCH")):
                self.add(f"{p}.http.method", "POST | PUT | PATCH")
        for key in ("connect_url", "disconnect_url"):
            if key in h:
                v = h[key]
                if not isinstance(v, str):
                    self.add(f"{p}.http.{key}", "an http URL")
                elif v.isascii():
                    why, scheme = url_problem(v)
                    if why or scheme not in ("http", "https"):
                        self.add(f"{p}.http.{key}", why or "an http URL")
        if "on_error" in h and not (isinstance(h["on_error"], str) and h["on_error"] in ("close", "reply")):
            self.add(f"{p}.http.on_error", "close | reply")

    def route_tls(self, p: str, t, kind: str | None) -> None:
        if not isinstance(t, dict):
            self.add(f"{p}.tls", "a mapping")
            return
        if kind in ("echo", "ws", "http"):
            self.add(f"{p}.tls", "only for TLS upstreams")
        self.unknown_keys(t, f"{p}.tls", ROUTE_TLS_KEYS)
        if "ca_file" in t and t["ca_file"] != self.pki["ca"]:
            self.add(f"{p}.tls.ca_file", "a loadable PEM file")
        if "server_name" in t:
            v = t["server_name"]
            if isinstance(v, (list, dict)) or (is_ascii_str(v) and (not v or any(c in " /:" for c in v))):
                self.add(f"{p}.tls.server_name", "a host name")
        if "insecure_skip_verify" in t and not isinstance(t["insecure_skip_verify"], bool):
            self.add(f"{p}.tls.insecure_skip_verify", "true or false")

    def close_codes(self, doc: dict) -> None:
        if "close_codes" not in doc:
            return
        cc = doc["close_codes"]
        if not isinstance(cc, dict):
            self.add("close_codes", "a mapping")
            return
        for k, v in cc.items():
            text = key_text(k)
            if text is None:
                continue
            path = f"close_codes.{text}"
            if not (isinstance(k, str) and k in CAUSES):
                self.add(path, "unknown cause")
            elif not (is_int(v) and 0 <= v <= 65535):
                self.add(path, "an integer in 0...65535")
            elif k in NOT_OVERRIDABLE:
                self.add(path, "not overridable")
            elif not allowed_override(v):
                self.add(path, "an allowed close code")

    def port_conflict(self, doc: dict) -> None:
        def effective(section, key, default):
            sec = doc.get(section)
            if not isinstance(sec, dict) or key not in sec:
                return default
            v = sec[key]
            if key == "port":
                return v if is_int(v) and 0 <= v <= 65535 else default
            if isinstance(v, str):
                return v
            return default if isinstance(v, (list, dict)) else None  # other scalars: not claimed

        lh, lp = effective("listen", "host", "0.0.0.0"), effective("listen", "port", 8080)
        ah, ap = effective("admin", "host", "127.0.0.1"), effective("admin", "port", 9090)
        if None in (lh, ah):
            return
        if lp != 0 and lp == ap and (lh == ah or "0.0.0.0" in (lh, ah)):
            self.add("admin.port", "must differ from listen.port")


def expected_problems(doc, pki: dict[str, str]) -> list[tuple[str, str]]:
    e = Expect(pki)
    e.check(doc)
    return e.must


# --------------------------------------------------------------------------
# checking one outcome


def crash_findings(outcome: Outcome, config_text: str) -> list[str]:
    found = []
    if outcome.timed_out:
        found.append(f"did not finish within {TIMEOUT} s")
    elif outcome.status not in (0, 1):
        found.append(f"exit status {outcome.status} (expected 0 or 1)")
    for marker in CRASH_MARKERS:
        if marker in outcome.stdout + outcome.stderr and marker not in config_text:
            found.append(f"printed {marker!r}")
    if outcome.maxrss_kib > MAX_RSS_KIB:
        found.append(f"max RSS {outcome.maxrss_kib} KiB > {MAX_RSS_KIB} KiB")
    if outcome.truncated:
        found.append(f"more than {OUTPUT_CAP} bytes of output")
    return found


def format_findings(outcome: Outcome, path: Path) -> list[str]:
    """Property 2: exit status and output agree; every problem has a key path."""
    if outcome.status == 0:
        found = []
        if not re.fullmatch(re.escape(f"{path}: OK (") + r"(\d+) routes?\)\n", outcome.stdout):
            found.append(f"exit 0 without exactly `{path}: OK (N routes)` on stdout")
        if outcome.stderr:
            found.append("exit 0 with problems printed")
        return found
    if outcome.status != 1:
        return []  # a crash, reported as such
    found = []
    if outcome.stdout:
        found.append("exit 1 with output on stdout")
    if not outcome.stderr.strip():
        found.append("exit 1 without any problem printed")
    _, complaints = parse_problems(path, outcome.stderr)
    return found + complaints


def report(title: str, findings: list[str], config_text: str, outcome: Outcome) -> str:
    return (f"{title}:\n  - " + "\n  - ".join(findings)
            + f"\n--- config ({len(config_text)} characters) ---\n{_clip(config_text)}"
            + f"\n--- check-config: {outcome.describe()}")


def check_text(tmp_path: Path, data: bytes | str) -> tuple[Path, Outcome, str]:
    """Runs check-config on `data`; asserts properties 1 and 2."""
    path = write_config(tmp_path, data)
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    outcome = run_check(path)
    crashes = crash_findings(outcome, text)
    assert not crashes, report("check-config crashed, hung or blew up", crashes, text, outcome)
    fmt = format_findings(outcome, path)
    assert not fmt, report("check-config output breaks the problem format", fmt, text, outcome)
    return path, outcome, text


def check_doc(tmp_path: Path, doc, pki: dict[str, str], dump: dict | None = None,
              must_pass: bool = False) -> Outcome:
    """Emits `doc` as YAML, runs check-config, asserts the generic properties,
    the reference checker's expected key paths and, if `must_pass`, exit 0."""
    doc = materialize(doc, pki)
    text = emit(doc, dump or {})
    try:
        note(f"config:\n{_clip(text)}")
    except Exception:  # not inside a hypothesis test
        pass
    path, outcome, text = check_text(tmp_path, text)
    problems, _ = parse_problems(path, outcome.stderr) if outcome.status == 1 else ([], [])
    whole = [p for p in problems if p.whole_file and not p.readings]
    if whole:
        # PyYAML's output is YAML: the only whole-file errors it may get are a
        # root that is no mapping, or keys that read the same after YAML (null/"null").
        bad = [p.text for p in whole if not (
            (not isinstance(doc, dict) and p.text.startswith("expected a mapping"))
            or (p.text.startswith("invalid YAML") and "keys to be unique" in p.text))]
        assert not bad, report("a whole-file error for a well-formed document", bad, text, outcome)
        return outcome
    if not isinstance(doc, dict):
        assert outcome.status == 1, report("a root that is no mapping was accepted", [], text, outcome)
        return outcome
    seen = {kp for p in problems for kp, _ in p.readings}
    missing = [f"{kp}: {why}" for kp, why in expected_problems(doc, pki) if kp not in seen]
    assert not missing, report("problems check-config must report, by key path, are missing",
                               missing, text, outcome)
    if must_pass:
        assert outcome.status == 0, report("a valid config was rejected", ["exit 1"], text, outcome)
        n = len(doc["routes"])
        assert outcome.stdout == f"{path}: OK ({n} route{'' if n == 1 else 's'})\n", outcome.describe()
    return outcome


# --------------------------------------------------------------------------
# emitting YAML

PLACEHOLDERS = {"@@CERT@@": "cert", "@@KEY@@": "key", "@@CA@@": "ca"}


def materialize(value, pki: dict[str, str]):
    """Replaces the PEM placeholders by the session's files."""
    if isinstance(value, str) and value in PLACEHOLDERS:
        return pki[PLACEHOLDERS[value]]
    if isinstance(value, list):
        return [materialize(v, pki) for v in value]
    if isinstance(value, dict):
        return {k: materialize(v, pki) for k, v in value.items()}
    return value


def emit(doc, options: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False, **options)


dump_options = st.fixed_dictionaries({
    "default_flow_style": st.sampled_from([False, True, None]),
    "allow_unicode": st.booleans(),
    "width": st.sampled_from([80, 20, 1000]),
    "indent": st.sampled_from([2, 4]),
})

# --------------------------------------------------------------------------
# seeds

# Every key of the README's configuration reference, with files that load.
RICH_CONFIG = """\
listen:
  host: 0.0.0.0
  port: 8080
  tls:
    certificate: @@CERT@@
    private_key: @@KEY@@
admin:
  host: 127.0.0.1
  port: 9090
limits:
  max_connections: 10000
  max_message_bytes: 1048576
  handshake_timeout_ms: 5000
  idle_timeout_ms: 0
timeouts:
  upstream_connect_ms: 3000
  upstream_handshake_ms: 5000
  http_request_ms: 10000
  close_handshake_ms: 2000
shutdown:
  drain_timeout_ms: 10000
  close_code: 1001
log:
  format: json
  level: info
routes:
  - path: /echo
    upstream: builtin:echo
  - path: /chat/*
    upstream: ws://127.0.0.1:9001/chat
    forward_headers: [authorization, cookie]
    origins: ["https://app.example.com"]
  - path: /secure/*
    upstream: wss://chat.internal:9443/ws
    tls:
      ca_file: @@CA@@
      server_name: chat.internal
      insecure_skip_verify: false
  - path: /api
    upstream: http://127.0.0.1:9002/messages
    http:
      method: POST
      connect_url: http://127.0.0.1:9002/connect
      disconnect_url: http://127.0.0.1:9002/disconnect
      on_error: close
close_codes:
  upstream_reset: 1014
"""

SHIPPED = [REPO / "config" / "wsgate.yaml", *sorted((REPO / "config" / "examples").glob("*.yaml"))]


def rich_text(pki: dict[str, str]) -> str:
    text = RICH_CONFIG
    for ph, name in PLACEHOLDERS.items():
        text = text.replace(ph, pki[name])
    return text


def seed_docs() -> list[dict]:
    docs = [yaml.safe_load(RICH_CONFIG.replace("@@CERT@@", '"@@CERT@@"').replace("@@KEY@@", '"@@KEY@@"')
                           .replace("@@CA@@", '"@@CA@@"'))]
    docs += [yaml.safe_load(p.read_text()) for p in SHIPPED]
    return docs


SEED_DOCS = seed_docs()


def with_optional_keys(doc: dict, choice: int = 0) -> dict:
    """The seed plus every optional key the binary knows, at a valid value."""
    doc = copy.deepcopy(doc)
    for p in sorted(SUPPORTED_OPTIONAL):
        value = OPTIONAL_VALID[p][choice % len(OPTIONAL_VALID[p])]
        if "." in p:
            section, key = p.split(".")
            doc.setdefault(section, {})[key] = copy.deepcopy(value)
        else:
            doc[p] = copy.deepcopy(value)
    return doc


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A CA and a server certificate with its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)

    def make(cn, issuer=None, issuer_key=None, ca=False):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (x509.CertificateBuilder().subject_name(name)
                .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(issuer_key or key, hashes.SHA256()))
        return cert, key

    ca, ca_key = make("wsgate fuzz CA", ca=True)
    server, server_key = make("localhost", ca, ca_key)
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module", autouse=True)
def _probe_optional_keys(tmp_path_factory):
    """Which of `OPTIONAL_KEYS` the binary under test knows: each is set to a
    value of the wrong shape; a known key gets a problem other than `unknown key`."""
    d = tmp_path_factory.mktemp("probe")
    SUPPORTED_OPTIONAL.clear()
    for p, kind in OPTIONAL_KEYS.items():
        wrong = "{x: 1}" if kind == "list" else "[]"
        if "." in p:
            section, key = p.split(".")
            text = f"{section}:\n  {key}: {wrong}\n"
        else:
            text = f"{p}: {wrong}\n"
        text += "routes: [{path: /a, upstream: 'builtin:echo'}]\n"
        path = write_config(d, text)
        out = run_check(path)
        assert out.status == 1, out.describe()
        lines = [line for line in out.stderr.splitlines() if line.startswith(f"{path}: {p}: ")]
        assert lines, out.describe()
        if not any("unknown key" in line for line in lines):
            SUPPORTED_OPTIONAL.add(p)
    yield
    SUPPORTED_OPTIONAL.clear()


# --------------------------------------------------------------------------
# the seeds pass (a check-config that rejects everything fails here)


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_pass(tmp_path, shipped):
    text = shipped.read_text()
    path, outcome, _ = check_text(tmp_path, text)
    n = len(yaml.safe_load(text)["routes"])
    assert outcome.status == 0 and outcome.stdout == f"{path}: OK ({n} route{'' if n == 1 else 's'})\n", \
        outcome.describe()


def test_rich_config_passes_and_uses_every_key(tmp_path, pki):
    used = set()

    def walk(v, prefix):
        if isinstance(v, dict):
            for k, x in v.items():
                used.add(f"{prefix}.{k}" if prefix else k)
                walk(x, f"{prefix}.{k}" if prefix else k)
        elif isinstance(v, list):
            for x in v:
                walk(x, prefix + "[]")

    walk(yaml.safe_load(rich_text(pki)), "")
    documented = set(TOP_KEYS) | {f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys}
    documented |= {"listen.tls.certificate", "listen.tls.private_key"}
    documented |= {f"routes[].{k}" for k in ROUTE_KEYS}
    documented |= {f"routes[].http.{k}" for k in HTTP_KEYS} | {f"routes[].tls.{k}" for k in ROUTE_TLS_KEYS}
    assert documented <= used, sorted(documented - used)
    path, outcome, _ = check_text(tmp_path, rich_text(pki))
    assert outcome.status == 0 and outcome.stdout == f"{path}: OK (4 routes)\n", outcome.describe()
    for i in range(2):  # and with the keys the binary has beyond the README
        check_doc(tmp_path, with_optional_keys(SEED_DOCS[0], i), pki, must_pass=True)


# --------------------------------------------------------------------------
# strategies: valid configs

HOST_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
URL_HOST = st.one_of(
    st.lists(HOST_LABEL, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["[::1]", "[fd00::7]", "[2001:db8::1]"]),
)
URL_PATH_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#?")
URL_QUERY_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "#")


@st.composite
def valid_urls(draw, schemes):
    scheme = draw(st.sampled_from(schemes))
    if draw(st.booleans()):
        scheme = scheme.upper()
    url = f"{scheme}://{draw(URL_HOST)}"
    if draw(st.booleans()):
        url += f":{draw(st.integers(1, 65535))}"
    if draw(st.booleans()):
        url += "/" + draw(st.text(URL_PATH_CHARS, max_size=15))
    if draw(st.booleans()):
        url += "?" + draw(st.text(URL_QUERY_CHARS, max_size=15))
    return url


ROUTE_PATH_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#?*")
valid_route_paths = st.builds(
    lambda body, prefix: "/" + body + ("/*" if prefix else ""),
    st.text(ROUTE_PATH_CHARS, max_size=20), st.booleans())
header_names = st.text("".join(sorted(TOKEN_CHARS)), min_size=1, max_size=20).filter(
    lambda h: h.lower() not in NEVER_FORWARDED)
any_text = st.text(max_size=30)


@st.composite
def valid_routes(draw):
    kind = draw(st.sampled_from(["echo", "ws", "http"]))
    route: dict[str, Any] = {"path": draw(valid_route_paths)}
    if kind == "echo":
        route["upstream"] = "builtin:echo"
    elif kind == "ws":
        route["upstream"] = draw(valid_urls(["ws", "wss"]))
    else:
        route["upstream"] = draw(valid_urls(["http", "https"]))
    if draw(st.booleans()):
        route["forward_headers"] = draw(st.lists(header_names, max_size=4))
    if draw(st.booleans()):
        route["origins"] = draw(st.lists(any_text, max_size=3))
    if kind == "http" and draw(st.booleans()):
        http = {}
        if draw(st.booleans()):
            http["method"] = draw(st.sampled_from(["POST", "PUT", "PATCH", "post", "Put", "pAtCh"]))
        for key in ("connect_url", "disconnect_url"):
            if draw(st.booleans()):
                http[key] = draw(valid_urls(["http", "https"]))
        if draw(st.booleans()):
            http["on_error"] = draw(st.sampled_from(["close", "reply"]))
        route["http"] = http
    if route["upstream"].lower().startswith(("wss:", "https:")) and draw(st.booleans()):
        tls: dict[str, Any] = {}
        if draw(st.booleans()):
            tls["ca_file"] = "@@CA@@"
        if draw(st.booleans()):
            tls["server_name"] = draw(st.text(min_size=1, max_size=20).filter(
                lambda s: not any(c in " /:" for c in s)))
        if draw(st.booleans()):
            tls["insecure_skip_verify"] = draw(st.booleans())
        route["tls"] = tls
    keys = draw(st.permutations(list(route)))
    return {k: route[k] for k in keys}


@st.composite
def valid_configs(draw):
    doc: dict[str, Any] = {}
    for section in ("listen", "admin"):
        if draw(st.booleans()):
            sec = {}
            if draw(st.booleans()):
                sec["host"] = draw(st.one_of(any_text, st.sampled_from(["0.0.0.0", "127.0.0.1", "::"])))
            if draw(st.booleans()):
                sec["port"] = draw(st.integers(0, 65535))
            if section == "listen" and draw(st.booleans()):
                sec["tls"] = {"certificate": "@@CERT@@", "private_key": "@@KEY@@"}
            doc[section] = sec
    for section in ("limits", "timeouts", "shutdown"):
        if draw(st.booleans()):
            sec = {}
            for key in SECTIONS[section]:
                if draw(st.booleans()):
                    path = f"{section}.{key}"
                    if path in INT_KEYS:
                        sec[key] = draw(st.integers(*INT_KEYS[path]))
                    else:
                        sec[key] = draw(st.sampled_from([1001, 1012]))
            doc[section] = sec
    if draw(st.booleans()):
        doc["log"] = {k.split(".")[1]: draw(st.sampled_from(v)) for k, v in ENUM_KEYS.items() if draw(st.booleans())}
    for p in sorted(SUPPORTED_OPTIONAL):
        if draw(st.booleans()):
            value = draw(st.sampled_from(OPTIONAL_VALID[p]))
            if "." in p:
                section, key = p.split(".")
                if isinstance(doc.get(section), dict):
                    doc[section][key] = value
            else:
                doc[p] = value
    doc["routes"] = draw(st.lists(valid_routes(), min_size=1, max_size=4, unique_by=lambda r: r["path"]))
    if draw(st.booleans()):
        doc["close_codes"] = draw(st.dictionaries(
            st.sampled_from([c for c in CAUSES if c not in NOT_OVERRIDABLE]),
            st.one_of(st.sampled_from([1000, 1001, 1002, 1003, 1006, 1007, 1011, 1014]), st.integers(3000, 4999)),
            max_size=4))
    # admin.port must differ from listen.port
    lp = doc.get("listen", {}).get("port", 8080)
    ap = doc.get("admin", {}).get("port", 9090)
    if lp != 0 and lp == ap:
        doc.setdefault("admin", {})["port"] = lp % 65535 + 1
    order = draw(st.permutations(list(doc)))
    return {k: doc[k] for k in order}


@fuzz(max_examples=100)
@given(doc=valid_configs(), dump=dump_options)
def test_valid_configs_pass(tmp_path, pki, doc, dump):
    check_doc(tmp_path, doc, pki, dump, must_pass=True)


# --------------------------------------------------------------------------
# strategies: hostile values and mutations

INTERESTING_INTS = [
    0, -1, 1, 2, 1023, 1024, 65535, 65536, 70000, 10_000_000, 10_000_001, 3_600_000, 3_600_001,
    86_400_000, 86_400_001, 1 << 30, (1 << 30) + 1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63,
    -(2**63), -(2**63) - 1, 2**64, 2**70, -(2**70), 10**30,
]
CLOSE_CODES = [-1, 0, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011, 1012, 1013, 1014,
               1015, 1016, 2999, 3000, 3999, 4000, 4999, 5000, 65535, 65536]
BAD_UPSTREAMS = [
    "", "builtin:", "builtin:echo2", "builtin:ECHO", "echo", "ws:/x", "ws//x", "ftp://x", "FTP://x/y",
    "file:///etc/passwd", "javascript:alert(1)", "ws://", "ws:///path", "ws://:80", "ws://h:0",
    "ws://h:65536", "ws://h:-1", "ws://h:", "ws://h:+", "ws://h:80x", "ws://h:99999999999999999999",
    "ws://u:p@h/", "ws://[::1", "ws://[::1]x", "ws://[]:80", "ws://h/a b", "ws://h/#frag", "ws://h\n/x",
    "ws://h:80/\u2028", "wss://é.example/", "http://h\r\n/x", " ws://h", "ws ://h",
]
GOOD_UPSTREAMS = ["builtin:echo", "ws://127.0.0.1:9/", "wss://x.example:443/a?b=c", "http://h/x",
                  "HTTPS://H:1/", "ws://[::1]:8080/p", "ws://h:80:80", "ws://h\t/", "ws://h:+80/",
                  "http://h:080", "wss://h/?#", "ws://h?x"]
BAD_PATHS = ["", "echo", "/a?b", "/a#b", "/a b", "/\t", "/é", "/a*", "/*/x", "/**", "*", "/a/*/*",
             "//*x", "/\x7f", "/\x00", " /a", "/a\n", "\\a"]
GOOD_PATHS = ["/", "/*", "//*", "/a/*", "/a.b~c/d", "/%20", "/echo", "/chat/*"]
HEADERS = ["authorization", "Cookie", "host", "Connection", "Sec-WebSocket-Key", "X-Forwarded-For",
           "UPGRADE", "bad header", "", "a:b", "é", "\u212a", "x\n", "X-Custom_1!#$%&'*+-.^_`|~"]
SCALAR_STRINGS = [
    "", " ", "\t", "\n", "null", "~", "yes", "no", "on", "off", "0x1F", "0o17", "1_000", "+80", "007",
    "1e3", "8080", "-0", ".inf", ".nan", "∞", "🙂", "é", "e\u0301", "\x00", "\ufeff", "\u2028",
    "\u202e", "a\nb", "a\r\nb", "POST", "post", "GET", "json", "TEXT", "DEBUG", "reply", "close",
    "true", "false", "/etc/passwd", "/dev/null", "/dev/zero", "/", "/nonexistent/ca.pem", "@@CERT@@",
    "@@KEY@@", "@@CA@@", "*a", "&a", "!!int 5", "{x: 1}", "[1]", "'", '"', "%", "@", "`", "- a",
    "? a", "a: b", "# c", "${HOME}", "%s%n", "../../etc/passwd", "0.0.0.0", "::", "127.0.0.1",
]
long_strings = st.builds(lambda s, n: s * n, st.sampled_from(["a", "é", "🙂", "ab ", "\\", "/"]),
                         st.integers(1000, 100_000))
scalars = st.one_of(
    st.sampled_from(INTERESTING_INTS), st.integers(), st.sampled_from(CLOSE_CODES),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.sampled_from(SCALAR_STRINGS), st.text(max_size=40),
)
hostile_values = st.one_of(
    scalars, scalars, scalars,
    long_strings,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=8), scalars, max_size=3),
    st.builds(list), st.builds(dict),
)


def hostile_for(path: tuple) -> st.SearchStrategy:
    """Hostile values that fit the slot (a URL slot gets URLs, …) or not."""
    last = path[-1] if path else None
    parent = path[-2] if len(path) >= 2 else None
    special = []
    if last == "upstream":
        special = [st.sampled_from(BAD_UPSTREAMS + GOOD_UPSTREAMS)]
    elif last in ("connect_url", "disconnect_url"):
        special = [st.sampled_from(BAD_UPSTREAMS + GOOD_UPSTREAMS)]
    elif last == "path":
        special = [st.sampled_from(BAD_PATHS + GOOD_PATHS)]
    elif parent == "forward_headers" or last == "forward_headers":
        special = [st.sampled_from(HEADERS), st.lists(st.sampled_from(HEADERS), max_size=3)]
    elif parent == "close_codes" or last == "close_code":
        special = [st.sampled_from(CLOSE_CODES)]
    elif last == "port":
        special = [st.sampled_from([0, 1, 8080, 9090, 65535, 65536, -1, 70000, 2**70])]
    elif last in ("ca_file", "certificate", "private_key"):
        special = [st.sampled_from(["@@CERT@@", "@@KEY@@", "@@CA@@", "/etc/passwd", "/dev/null", "/",
                                    "", "/nonexistent.pem", "/dev/zero", "wsgate.yaml"])]
    elif last in ("method", "on_error", "level", "format"):
        special = [st.sampled_from(["POST", "put", "GET", "close", "reply", "CLOSE", "json", "text",
                                    "JSON", "info", "INFO", "fatal", "warn"])]
    elif last in ("origins", "trusted_proxies", "redact_query"):
        special = [st.lists(st.one_of(st.text(max_size=10), st.builds(list), st.builds(dict)), max_size=3)]
    # a copy: the doc is mutated in place, a shared constant must not be
    return (st.one_of(*special, hostile_values) if special else hostile_values).map(copy.deepcopy)


def typo_of(name: str) -> st.SearchStrategy:
    letters = "abcdefghijklmnopqrstuvwxyz_"

    @st.composite
    def typo(draw):
        n = name
        kind = draw(st.sampled_from(["insert", "delete", "replace", "swap", "upper", "suffix", "space", "dash"]))
        i = draw(st.integers(0, max(len(n) - 1, 0)))
        if kind == "insert":
            return n[:i] + draw(st.sampled_from(letters)) + n[i:]
        if kind == "delete" and n:
            return n[:i] + n[i + 1:]
        if kind == "replace" and n:
            return n[:i] + draw(st.sampled_from(letters)) + n[i + 1:]
        if kind == "swap" and len(n) > 1:
            i = min(i, len(n) - 2)
            return n[:i] + n[i + 1] + n[i] + n[i + 2:]
        if kind == "upper":
            return n.upper()
        if kind == "suffix":
            return n + draw(st.sampled_from(["s", "_ms", "2", " ", ":"]))
        if kind == "space":
            return " " + n
        return n.replace("_", "-")

    return typo()


ALL_KEY_NAMES = sorted(set(TOP_KEYS) | {k for ks in SECTIONS.values() for k in ks} | set(ROUTE_KEYS)
                       | set(HTTP_KEYS) | set(ROUTE_TLS_KEYS) | {"certificate", "private_key"}
                       | set(CAUSES) | {p.split(".")[-1] for p in OPTIONAL_KEYS})
NON_STR_KEYS = [None, True, False, 0, 1, -1, 2**70]
new_keys = st.one_of(
    st.sampled_from(ALL_KEY_NAMES).flatmap(typo_of),
    st.sampled_from(ALL_KEY_NAMES),
    st.text(max_size=12),
    st.sampled_from(["", " ", "<<", "~", "null", "a.b", "x[0]", "a: b", "routes[0]", "é", "\n", "k\ny"]),
    st.sampled_from(NON_STR_KEYS),
)


def slots(doc) -> list[tuple]:
    """Paths to every value below the root."""
    out = []

    def walk(v, path):
        if isinstance(v, dict):
            for k, x in v.items():
                out.append(path + (k,))
                walk(x, path + (k,))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                out.append(path + (i,))
                walk(x, path + (i,))

    walk(doc, ())
    return out


def containers(doc, kind) -> list[tuple]:
    return [()] * isinstance(doc, kind) + [p for p in slots(doc) if isinstance(get(doc, p), kind)]


def get(doc, path: tuple):
    for k in path:
        doc = doc[k]
    return doc


def rendered_keys(d: dict) -> list[str | None]:
    return [key_text(k) for k in d]


def put_key(d: dict, key, value) -> None:
    """Adds a key unless it would read the same as another one after YAML."""
    text = key_text(key)
    if key in d or text not in rendered_keys(d):
        d[key] = value


@st.composite
def mutated(draw):
    doc = copy.deepcopy(draw(st.sampled_from(SEED_DOCS)))
    if draw(st.booleans()):
        doc = with_optional_keys(doc, draw(st.integers(0, 1)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "replace", "replace_leaf", "replace_leaf", "add_key", "add_key",
                                   "rename", "dup_route", "wrap", "move", "misplace", "conflict", "root"]))
        all_slots = slots(doc)
        if op == "root":
            if draw(st.integers(0, 9)) == 0:
                doc = copy.deepcopy(draw(hostile_values))
            continue
        if not isinstance(doc, (dict, list)) or not all_slots:
            break
        if op == "drop":
            p = draw(st.sampled_from(all_slots))
            del get(doc, p[:-1])[p[-1]]
        elif op == "replace":
            p = draw(st.sampled_from(all_slots))
            get(doc, p[:-1])[p[-1]] = draw(hostile_for(p))
        elif op == "replace_leaf":
            leaves = [p for p in all_slots if not isinstance(get(doc, p), (dict, list))]
            if leaves:
                p = draw(st.sampled_from(leaves))
                get(doc, p[:-1])[p[-1]] = draw(hostile_for(p))
        elif op == "misplace":  # http settings on a ws route, tls on a plain one, …
            routes = doc.get("routes") if isinstance(doc, dict) else None
            dict_routes = [r for r in routes if isinstance(r, dict)] if isinstance(routes, list) else []
            if dict_routes:
                r = draw(st.sampled_from(dict_routes))
                key, value = draw(st.sampled_from([
                    ("http", {"method": "POST"}), ("http", {}), ("tls", {"insecure_skip_verify": True}),
                    ("tls", {}), ("upstream", "builtin:echo"), ("upstream", "ws://h:1/"),
                    ("upstream", "http://h:1/"), ("upstream", "wss://h/"), ("upstream", "https://h/")]))
                r[key] = copy.deepcopy(value)
        elif op == "conflict":  # admin on the listener's port
            if isinstance(doc, dict):
                port = draw(st.sampled_from([0, 8080, 9090, 1]))
                for section in ("listen", "admin"):
                    if not isinstance(doc.get(section), dict):
                        doc[section] = {}
                    doc[section]["port"] = port
                    if draw(st.booleans()):
                        doc[section]["host"] = draw(st.sampled_from(["0.0.0.0", "127.0.0.1", "::1", "h"]))
        elif op == "add_key":
            dicts = containers(doc, dict)
            if dicts:
                p = draw(st.sampled_from(dicts))
                put_key(get(doc, p), draw(new_keys), copy.deepcopy(draw(st.one_of(hostile_values, st.sampled_from(
                    [8080, "builtin:echo", "/x", {"port": 1}, [{"path": "/y", "upstream": "builtin:echo"}]])))))
        elif op == "rename":
            keyed = [p for p in all_slots if not isinstance(p[-1], int)]
            if keyed:
                p = draw(st.sampled_from(keyed))
                parent = get(doc, p[:-1])
                value = parent.pop(p[-1])
                new = draw(typo_of(p[-1]) if isinstance(p[-1], str) else new_keys)
                put_key(parent, new, value)
        elif op == "dup_route":
            routes = doc.get("routes") if isinstance(doc, dict) else None
            if isinstance(routes, list) and routes:
                routes.insert(draw(st.integers(0, len(routes))),
                              copy.deepcopy(draw(st.sampled_from(routes))))
        elif op == "wrap":
            p = draw(st.sampled_from(all_slots))
            parent = get(doc, p[:-1])
            how = draw(st.sampled_from(["list", "dict", "empty_list", "empty_dict"]))
            parent[p[-1]] = {"list": [parent[p[-1]]], "dict": {"value": parent[p[-1]]},
                             "empty_list": [], "empty_dict": {}}[how]
        elif op == "move":  # a key into another mapping (port into limits, …)
            keyed = [p for p in all_slots if not isinstance(p[-1], int)]
            dicts = containers(doc, dict)
            if keyed and dicts:
                src = draw(st.sampled_from(keyed))
                dst = draw(st.sampled_from(dicts))
                if dst[:len(src)] != src:  # not into itself
                    value = get(doc, src[:-1]).pop(src[-1])
                    put_key(get(doc, dst), src[-1], value)
    return doc


@fuzz(max_examples=250)
@given(doc=mutated(), dump=dump_options)
def test_mutated_configs(tmp_path, pki, doc, dump):
    check_doc(tmp_path, doc, pki, dump)


# --------------------------------------------------------------------------
# strategies: random documents

doc_keys = st.one_of(st.sampled_from(ALL_KEY_NAMES), st.text(max_size=10), st.sampled_from(NON_STR_KEYS))


@st.composite
def dict_with_unique_keys(draw, values):
    d: dict = {}
    for _ in range(draw(st.integers(0, 5))):
        put_key(d, draw(doc_keys), draw(values))
    return d


random_docs = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), dict_with_unique_keys(children)),
    max_leaves=25,
)
random_roots = st.one_of(dict_with_unique_keys(random_docs), dict_with_unique_keys(random_docs), random_docs)


@fuzz(max_examples=150)
@given(doc=random_roots, dump=dump_options)
def test_random_documents(tmp_path, pki, doc, dump):
    check_doc(tmp_path, doc, pki, dump)


# --------------------------------------------------------------------------
# strategies: raw text and bytes

YAML_TOKENS = [
    ": ", ":", "- ", "-", "\n", "\n  ", "  ", "\t", " ", "&a ", "*a", "&b ", "*b", "!!str ", "!!int ",
    "!!binary ", "!!python/object:os.system ", "!foo ", "!<tag:x> ", "? ", "{", "}", "[", "]", ", ", "'",
    '"', "#", "%YAML 1.2\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "|\n", ">-\n", "<<: *a\n", "\\u00e9",
    "\\x00", "\x00", "\ufeff", "\r\n", "\r", "\u2028", "\x85", "~", "null", "0x10", "1e9", "-1", "2e308",
    "99999999999999999999999", "é", "🙂", "routes", "listen", "port", "path", "upstream", "/echo",
    "builtin:echo", "ws://h:1/", "close_codes", "upstream_reset", "limits", "max_connections",
]
token_soup = st.lists(st.sampled_from(YAML_TOKENS), max_size=60).map("".join)


def seed_texts(pki: dict[str, str]) -> list[str]:
    return [rich_text(pki)] + [p.read_text() for p in SHIPPED]


@st.composite
def byte_mutations(draw, texts):
    data = bytearray(draw(st.sampled_from(texts)).encode())
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "dup", "cut"]))
        if kind == "insert":
            data[i:i] = draw(st.one_of(st.binary(min_size=1, max_size=4),
                                       st.sampled_from(YAML_TOKENS).map(str.encode)))
        elif kind == "delete":
            del data[i:i + draw(st.integers(1, 4))]
        elif kind == "replace" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif kind == "dup":
            j = draw(st.integers(0, len(data)))
            data[i:i] = data[min(i, j):max(i, j)][:200]
        elif kind == "cut":
            del data[i:]
    return bytes(data)


@fuzz(max_examples=150)
@given(data=st.data())
def test_raw_text_and_bytes(tmp_path, pki, data):
    raw = data.draw(st.one_of(
        st.binary(max_size=400),
        st.text(max_size=400).map(lambda s: s.encode("utf-8", "surrogatepass")),
        token_soup.map(lambda s: s.encode("utf-8", "surrogatepass")),
        token_soup.map(lambda s: ("routes:\n  - " + s).encode("utf-8", "surrogatepass")),
        byte_mutations(seed_texts(pki)),
        byte_mutations(seed_texts(pki)),
    ), label="config bytes")
    check_text(tmp_path, raw)


# --------------------------------------------------------------------------
# hand-written corner cases (each its own test, so each bug is its own failure)

_R = "routes: [{path: /a, upstream: 'builtin:echo'}]\n"
TRICKY: dict[str, bytes | str] = {
    "empty_file": "",
    "only_a_comment": "# nothing here\n",
    "null_document": "~\n",
    "empty_quoted_document": "''\n",
    "list_document": "- routes\n",
    "root_empty_key": '"": 1\n' + _R,
    "root_anchored_empty_key": "&a : 1\n" + _R,
    "root_list_key": "? [a]\n: 1\n" + _R,
    "root_mapping_key": "? {a: 1}\n: 1\n" + _R,
    "nested_empty_key": 'limits: {"": 1}\n' + _R,
    "nested_list_key": "limits: {? [a] : 1}\n" + _R,
    "route_empty_key": "routes: [{path: /a, upstream: 'builtin:echo', '': 1}]\n",
    "close_codes_empty_key": "close_codes: {'': 1011}\n" + _R,
    "close_codes_list_key": "close_codes: {? [a] : 1011}\n" + _R,
    "key_with_newline": 'limits: {"a\\nb": 1}\n' + _R,
    "key_with_colon_space": '"a: unknown key": 1\n' + _R,
    "key_with_config_path_text": '"wsgate.yaml: x": 1\n' + _R,
    "null_and_bool_keys": "null: 1\ntrue: 2\n1: 3\n" + _R,
    "duplicate_keys": _R + "limits: {max_connections: 5, max_connections: 6}\n",
    "merge_key": "<<: {listen: {port: 1}}\n" + _R,
    "undefined_alias": "routes: *nope\n",
    "self_alias": "routes: &a [*a]\n",
    "two_documents": _R + "---\nfoo: 1\n",
    "python_tag": "limits: !!python/object/apply:os.system [true]\n" + _R,
    "bom": "\ufeff" + _R,
    "nul_byte": _R + "limits: {max_connections: \x00}\n",
    "invalid_utf8": b"routes: [{path: /\xff\xfe, upstream: 'builtin:echo'}]\n",
    "invalid_utf8_key": b"\xc3(: 1\n" + _R.encode(),
    "tab_indent": "routes:\n\t- path: /a\n",
    "crlf": _R.replace("\n", "\r\n") + "limits:\r\n  max_connections: 5\r\n",
    "deep_flow_nesting": "[" * 100_000 + "]" * 100_000,
    "deep_block_nesting": "routes:\n" + "- " * 5000 + "x\n",
    "deep_mapping_nesting": "routes: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
    "one_long_line": "routes: " + "a" * 1_000_000 + "\n",
    "long_key": "a" * 100_000 + ": 1\n" + _R,
    "many_unknown_keys": "".join(f"k{i}: {i}\n" for i in range(5_000)) + _R,
    "many_routes": "routes:\n" + "".join(f"  - {{path: /r{i}, upstream: 'ws://h:{i % 65535 + 1}/x'}}\n"
                                           for i in range(5_000)),
    "many_duplicate_routes": "routes:\n" + "  - {path: /a, upstream: 'builtin:echo'}\n" * 5_000,
    "huge_ints": "limits: {max_connections: 1180591620717411303424, max_message_bytes: -1180591620717411303424}\n"
                 "close_codes: {upstream_reset: 99999999999999999999999}\n" + _R,
    "int_edges": "limits: {max_connections: 9223372036854775807, max_message_bytes: -9223372036854775808}\n"
                 "listen: {port: 9223372036854775808}\n" + _R,
}


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_tricky_configs(tmp_path, name):
    check_text(tmp_path, TRICKY[name])


# --------------------------------------------------------------------------
# alias bombs: must end as fast as any other config


def laughs(levels: int, width: int, leaf: str) -> str:
    out = [f"l0: &l0 [{', '.join([leaf] * width)}]"]
    for i in range(1, levels):
        out.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(out) + "\n"


ROUTE = "{path: /a, upstream: 'builtin:echo'}"
BOMB_SITES = {
    "unused": "routes: [" + ROUTE + "]\n",
    "routes": "routes: *top\n",
    "origins": "routes: [{path: /a, upstream: 'builtin:echo', origins: *top}]\n",
    "forward_headers": "routes: [{path: /a, upstream: 'builtin:echo', forward_headers: *top}]\n",
    "limits": "limits: *top\nroutes: [" + ROUTE + "]\n",
    "close_codes": "close_codes: *top\nroutes: [" + ROUTE + "]\n",
    "mapping_key": "limits:\n  ? *top\n  : 1\nroutes: [" + ROUTE + "]\n",
}


def bomb(levels: int, width: int, leaf: str, site: str) -> str:
    text = laughs(levels, width, leaf).replace(f"l{levels - 1}: &l{levels - 1} ", "top: &top ")
    return text + BOMB_SITES[site]


@pytest.mark.parametrize("site", sorted(BOMB_SITES))
def test_billion_laughs(tmp_path, site):
    """9 levels of 9 aliases (9^9 leaves once expanded), used in each place."""
    check_text(tmp_path, bomb(9, 9, "[lol]", site))


@fuzz(max_examples=40)
@given(levels=st.integers(1, 12), width=st.integers(1, 12),
       leaf=st.sampled_from(["lol", "[lol]", "{a: 1}", "''", "[]", "{}", "/a", "1"]),
       site=st.sampled_from(sorted(set(BOMB_SITES) - {"mapping_key"})))
def test_alias_ladders(tmp_path, levels, width, leaf, site):
    """Wider and deeper ladders in every place but a mapping key (that one is
    `test_billion_laughs[mapping_key]` and `test_alias_keys`)."""
    check_text(tmp_path, bomb(levels, width, leaf, site))


@fuzz(max_examples=20)
@given(levels=st.integers(1, 4), width=st.integers(1, 6),
       leaf=st.sampled_from(["lol", "[lol]", "{a: 1}", "''", "[]", "{}"]))
def test_alias_keys(tmp_path, levels, width, leaf):
    """Small ladders (at most 6^4 nodes) as a mapping key: still a problem with a key path."""
    check_text(tmp_path, bomb(levels, width, leaf, "mapping_key"))


def test_alias_amplified_problems(tmp_path):
    """An 18 KB file whose aliases make 3,000 routes each with 3,000 bad origins:
    nine million problems. It must still end within the timeout and the memory
    bound (a cap on the problems printed, or on alias expansion, would do)."""
    n = 3000
    text = (f"o: &o [{','.join(['[]'] * n)}]\n"
            "r: &r {path: /a, upstream: 'builtin:echo', origins: *o}\n"
            f"routes: [{','.join(['*r'] * n)}]\n")
    check_text(tmp_path, text)
