"""Property-based fuzzing of `wsgate check-config --config PATH` (hypothesis).

Every generated config is written under pytest's `tmp_path` and checked by the
real binary (`WSGATE_BIN`, default `.build/debug/wsgate`, located by the
black-box conftest). For every one of them:

1. the process ends by itself within `TIMEOUT` seconds with exit 0 or 1 (no
   signal, no other code), prints no Swift fatal error or crash report, and
   its peak RSS stays under `MAX_RSS_KIB` (its address space is also capped at
   `AS_LIMIT` so that a runaway cannot take the machine with it);
2. exit 0 <=> stdout is exactly `PATH: OK (N route[s])` and stderr is empty;
   exit 1 <=> stdout is empty and stderr holds one problem per line,
   `PATH: KEYPATH: MESSAGE` with KEYPATH valid in `GRAMMAR`, or a single
   whole-file problem: `PATH: invalid YAML: …` (which may quote the file over
   several lines) or `PATH: expected a mapping, found …`.

Key paths, as ConfigLoader.swift prints them: known keys by name, list items
as `[N]` (`routes[1].upstreams[0].url`); an unknown key as written
(`limits.max_conections`) unless it is empty, only blanks or holds control
characters, then JSON-quoted (`""`, `listen." "`, `limits."a\\nb"`); a key that
is no scalar by its kind (`limits.(a list)`, `close_codes.(a mapping)`).

`SCHEMA` holds every key and what it accepts. From it come the key-path
grammar, the valid configs generated, the key names and values the mutations
use, and the reference checker `Expect`: the key paths a document must be
flagged at (a wrong type, an out-of-range integer, an unknown or missing key,
a bad URL, route path or pool member, a hash key without `balance: hash`, pool
settings on the echo, …), each of which must be among the problems printed.
When `Expect` finds nothing and could judge every value (it only judges ASCII
text), check-config must accept the document. `RICH_CONFIG` uses every key;
it, the shipped configs and the README's configuration reference must pass.

Strategies: valid configs; mutations of the seeds (dropped, renamed, moved and
unknown keys, wrong types, hostile values, pools with bad members, pool and
TLS/HTTP settings where they do not belong, port conflicts); random YAML
documents; raw text and bytes (YAML token soup, invalid UTF-8, byte-level
mutations of the seeds); alias bombs and aliases as keys, which must be
refused fast with their whole-file problem.

Bugs this fuzzer found, since fixed, stay as regression cases in `FIXED_BUGS`.

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
import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import yaml

# Hypothesis keeps a cache (and writes patch files for failures) under
# ./.hypothesis by default: keep it out of the source tree.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "wsgate-hypothesis"))

from hypothesis import HealthCheck, Phase, given, note, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from blackbox_conftest import BIN, REPO, clean_env  # noqa: E402

# --------------------------------------------------------------------------
# bounds and settings

TIMEOUT = 10.0  # seconds for one check-config run
MAX_RSS_KIB = 256 * 1024  # a config check needs ~35 MiB; 256 MiB is a bug
AS_LIMIT = 1 << 30  # the child's address space (RLIMIT_AS)
OUTPUT_CAP = 4 << 20  # bytes kept per stream; more is drained and flagged
MAX_VALUES = 200_000  # values once aliases are expanded (YAMLBounds.maxNodes)
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
                HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                HealthCheck.filter_too_much, HealthCheck.large_base_example,
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


CHILD_ENV = {**clean_env(), "SWIFT_BACKTRACE": "enable=no"}  # and no WSGATE_* overrides


@dataclass
class Outcome:
    path: Path
    status: int | None  # exit code, -signal, or None when killed after the timeout
    elapsed: float
    maxrss_kib: int
    stdout: str
    stderr: str
    truncated: bool

    def describe(self) -> str:
        what = ("killed after the timeout" if self.status is None
                else f"signal {signal.Signals(-self.status).name}" if self.status < 0 else f"exit {self.status}")
        rss = f"max RSS {self.maxrss_kib} KiB" if self.maxrss_kib else "RSS not sampled (ended within 20 ms)"
        return (f"{what}, {self.elapsed:.2f} s, {rss}"
                f"\n--- stdout ---\n{_clip(self.stdout)}\n--- stderr ---\n{_clip(self.stderr)}")


def _clip(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else text[:n] + f"\n… ({len(text) - n} more characters)"


def _drain(pipe, sink: bytearray, flags: dict) -> None:
    while chunk := pipe.read1(65536):
        room = OUTPUT_CAP - len(sink)
        sink += chunk[:max(room, 0)]
        if len(chunk) > room:
            flags["truncated"] = True
    pipe.close()


def _binary_stamp():
    try:
        s = os.stat(BIN)
        return (s.st_ino, s.st_size, s.st_mtime_ns)
    except FileNotFoundError:
        return None


def _wait_for_binary(settled: bool, limit: float = 180.0) -> None:
    """Until the binary is there (and, if `settled`, unchanged for a second):
    a concurrent `swift build` may be relinking it."""
    end, last = time.monotonic() + limit, None
    while True:
        stamp = _binary_stamp()
        if stamp and os.access(BIN, os.X_OK) and (not settled or stamp == last):
            return
        if time.monotonic() > end:
            pytest.fail(f"no settled wsgate binary at {BIN} (run `swift build` or set WSGATE_BIN)")
        last = stamp
        time.sleep(1)


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
    peak, timed_out = 0, False
    pidfd = os.pidfd_open(proc.pid)
    try:
        while not select.select([pidfd], [], [], 0.02)[0]:
            peak = max(peak, _vm_hwm_kib(proc.pid))
            if time.monotonic() - start > TIMEOUT:
                timed_out = True
                os.kill(proc.pid, signal.SIGKILL)  # our own child, by its PID
                break
        _, wstatus, usage = os.wait4(proc.pid, 0)
    finally:
        os.close(pidfd)
    elapsed = time.monotonic() - start
    if usage.ru_maxrss > resource.getrusage(resource.RUSAGE_SELF).ru_maxrss:
        peak = max(peak, usage.ru_maxrss)  # above ours: the child's own
    proc.returncode = os.waitstatus_to_exitcode(wstatus)  # reaped here; Popen must not wait again
    for r in readers:
        r.join(timeout=10)
    return Outcome(path, None if timed_out else proc.returncode, elapsed, peak,
                   out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), flags["truncated"])


def run_check(path: Path) -> Outcome:
    """One check-config run, run again once the binary has settled if it was
    replaced (or could not be executed) meanwhile, or crashed within a minute
    of being written: a concurrent `swift build` relinks it."""
    _wait_for_binary(settled=False)
    for _ in range(3):
        before = _binary_stamp()
        try:
            outcome = _run_once(path)
        except OSError:  # ETXTBSY/ENOEXEC/ENOENT while the linker writes it
            outcome = None
        fresh = before is None or time.time() - before[2] / 1e9 < 60
        if outcome and _binary_stamp() == before and (outcome.status in (0, 1) or not fresh):
            return outcome
        _wait_for_binary(settled=True)
    return _run_once(path)


_counter = itertools.count()


def write_config(tmp_path: Path, data: bytes | str) -> Path:
    d = tmp_path / f"ex{next(_counter)}"
    d.mkdir()
    p = d / "wsgate.yaml"
    p.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return p


# --------------------------------------------------------------------------
# values as check-config reads them


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def scalar_text(v) -> str:
    """A scalar's text as check-config reads it (PyYAML writes None as `null`, …)."""
    return v if isinstance(v, str) else yaml.safe_dump(v).removesuffix("\n...\n")


def is_plain_key(text: str) -> bool:
    """Whether a problem path shows the key as written (ConfigLoader's childPath)."""
    return text.strip(" \t") != "" and not any(c < " " or c == "\x7f" for c in text)


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def json_quote(s: str) -> str:
    """JSONText.quoted."""
    return '"' + "".join(_JSON_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c in "\x7f\u2028\u2029" else c)
                         for c in s) + '"'


def shown_key(key) -> str:
    text = scalar_text(key)
    return text if is_plain_key(text) else json_quote(text)


def child(parent: str, key) -> str:
    return f"{parent}.{shown_key(key)}" if parent else shown_key(key)


def swift_int(text: str) -> int | None:
    """Swift's `Int(String)`."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        return None
    v = int(text)
    return v if -(1 << 63) <= v < (1 << 63) else None


class URL(NamedTuple):
    scheme: str
    host: str
    port: int
    path: str
    query: str | None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


ECHO = URL("builtin", "echo", 0, "", None)


def parse_url(s: str) -> tuple[str | None, URL | None]:
    """URLParts.parse for ASCII text: (why it is refused, the URL)."""
    scheme, sep, rest = s.partition("://")
    if not sep:
        return "not a URL", None
    scheme = scheme.lower()
    if scheme not in ("ws", "wss", "http", "https"):
        return "unsupported scheme", None
    if any(c in " #\n\r\x0b\x0c" for c in rest):
        return "URL must not contain spaces or a fragment", None
    end = min([j for j in (rest.find("/"), rest.find("?")) if j >= 0], default=len(rest))
    authority, rest = rest[:end], rest[end:]
    if "@" in authority:
        return "credentials in the URL are not supported", None
    port_text = None
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return "unterminated IPv6 address", None
        host, after = authority[1:close], authority[close + 1:]
        if after.startswith(":"):
            port_text = after[1:]
        elif after:
            return "invalid authority", None
    elif ":" in authority:
        host, _, port_text = authority.rpartition(":")
    else:
        host = authority
    if not host:
        return "missing host", None
    port = 443 if scheme in ("wss", "https") else 80
    if port_text is not None:
        port = swift_int(port_text)
        if port is None or not 1 <= port <= 65535:
            return "invalid port", None
    path, q, query = rest.partition("?")
    return None, URL(scheme, host.lower(), port, path or "/", query if q else None)


def parse_upstream(s: str) -> tuple[str | None, URL | None]:
    """UpstreamTarget.parse for ASCII text; the echo is `ECHO`."""
    if s == "builtin:echo":
        return None, ECHO
    if s.startswith("builtin:"):
        return "unknown builtin", None
    return parse_url(s)


def ip_version(text: str) -> int | None:
    """IPNetwork.parseAddress: 4, 6, or None."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        try:
            socket.inet_pton(family, text)
            return version
        except (OSError, ValueError):  # ValueError: a NUL byte
            pass
    return None


def is_port_text(text: str) -> bool:
    p = swift_int(text)
    return p is not None and 1 <= p <= 65535


# Judges of a scalar's text: True (accepted), False (refused) or None (not
# judged: the Swift rules work on Characters and Unicode case mapping, these
# only on ASCII).

def ascii_only(judge: Callable[[str], bool]) -> Callable[[str], bool | None]:
    return lambda t: judge(t) if t.isascii() else None


TOKEN_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")
NEVER_FORWARDED = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-accept",
    "sec-websocket-extensions", "sec-websocket-protocol", "x-forwarded-for",
    "x-wsgate-connection-id", "x-wsgate-message-type",
}


def is_token(t: str) -> bool:
    return t != "" and all(c in TOKEN_CHARS for c in t)


def route_path_ok(t: str) -> bool:
    """RoutePattern.validate (exact for any text: non-ASCII is refused)."""
    body = t[:-2] if t.endswith("/*") else t
    return (t.startswith("/") and "?" not in t and "#" not in t
            and all(0x20 < b < 0x7F for b in t.encode("utf-8", "surrogatepass")) and "*" not in body)


def hash_key_ok(t: str) -> bool:
    """PoolSettings.HashKey.parse."""
    if t == "client_ip":
        return True
    kind, colon, name = t.partition(":")
    if not colon or not name or " " in name or "\t" in name:
        return False
    return is_token(name.lower()) if kind == "header" else kind in ("query", "cookie")


def ip_network_ok(t: str) -> bool:
    address, slash, prefix = t.partition("/")
    version = ip_version(address)
    if version is None or not slash:
        return version is not None
    p = swift_int(prefix)
    return p is not None and 0 <= p <= (32 if version == 4 else 128) and not prefix.startswith("+")


def resolver_ok(t: str) -> bool:
    """ResolverAddress.init: `IP`, `IPv4:port`, `[IPv6]`, `[IPv6]:port`."""
    host = t
    if t.startswith("[") and "]" in t:
        close = t.index("]")
        host, rest = t[1:close], t[close + 1:]
        if rest and not (rest.startswith(":") and is_port_text(rest[1:])):
            return False
    elif t.count(":") == 1:
        host, _, port = t.partition(":")
        if not is_port_text(port):
            return False
    return ip_version(host) is not None


def http_url_ok(t: str) -> bool:
    why, url = parse_url(t)
    return why is None and url.scheme in ("http", "https")


# --------------------------------------------------------------------------
# the schema: every key of the config file and what it accepts

any_text = st.text(st.characters(blacklist_characters="\x00"), max_size=30)  # a NUL is refused anywhere


# A leaf's rule: `ok(value, pki)` says whether check-config accepts the value
# (None: it cannot be judged here), `what` it expects, `valid` generates one.

@dataclass(frozen=True)
class Int:
    lo: int
    hi: int
    what = property(lambda self: f"an integer in {self.lo}...{self.hi}")
    valid = property(lambda self: st.integers(self.lo, self.hi))

    def ok(self, v, pki) -> bool:
        return is_int(v) and self.lo <= v <= self.hi


@dataclass(frozen=True)
class AutoOrInt(Int):
    """`workers`: the plain word `auto` or an integer in range."""
    what = property(lambda self: f"auto or an integer in {self.lo}...{self.hi}")
    valid = property(lambda self: st.one_of(st.just("auto"), st.integers(self.lo, self.hi)))

    def ok(self, v, pki) -> bool:
        return v == "auto" or super().ok(v, pki)


@dataclass(frozen=True)
class OneOf:
    values: tuple
    what = property(lambda self: " | ".join(map(str, self.values)))
    valid = property(lambda self: st.sampled_from(self.values))

    def ok(self, v, pki) -> bool:
        return type(v) is type(self.values[0]) and v in self.values


@dataclass(frozen=True)
class Bool:
    what = "true or false"
    valid = st.booleans()

    def ok(self, v, pki) -> bool:
        return isinstance(v, bool)


@dataclass(frozen=True)
class Text:
    """A scalar, read as its text (`5` is "5"), judged by `judge`."""
    judge: Callable[[str], bool | None] = lambda t: True
    what: str = "a string"
    valid: Any = any_text

    def ok(self, v, pki) -> bool | None:
        # check-config refuses a NUL in any value (C strings would cut it)
        if isinstance(v, (list, dict)) or "\x00" in scalar_text(v):
            return False
        return self.judge(scalar_text(v))


@dataclass(frozen=True)
class PemFile:
    """A PEM file, loaded: one of the session's files (`pki`) by name."""
    loads: tuple[str, ...]  # the pki files that hold what is loaded
    what = "a loadable PEM file"
    valid = property(lambda self: st.sampled_from([f"@@{name.upper()}@@" for name in self.loads]))

    def ok(self, v, pki) -> bool:
        return any(v == pki[name] for name in self.loads)


@dataclass(frozen=True)
class Strings:
    """A list of scalars, each judged by `item`."""
    item: Text = Text()


@dataclass(frozen=True)
class Required:
    rule: Any


@dataclass(frozen=True)
class ListOf:
    """In key paths: a list whose items are `item`."""
    item: Any


ANY_KEY = "any key"  # in key paths: a mapping whose keys are any text (close_codes)


@dataclass(frozen=True)
class Custom:
    """A value with rules of its own: `check(expect, path, value)`; `grammar`
    for its key paths, `valid` to generate it."""
    check: Callable
    grammar: Any
    valid: Any = None


LEAF_RULES = (Int, OneOf, Bool, Text, PemFile)

URL_HOST = st.one_of(
    st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True), min_size=1, max_size=3).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.sampled_from(["[::1]", "[fd00::7]", "[2001:db8::1]"]),
)
URL_TARGET = st.builds(
    lambda path, query: path + query,
    st.one_of(st.just(""), st.text("".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#?"), max_size=15)
              .map(lambda s: "/" + s)),
    st.one_of(st.just(""), st.text("".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "#"), max_size=15)
              .map(lambda s: "?" + s)))


@st.composite
def url_authorities(draw):
    authority = draw(URL_HOST)
    if draw(st.booleans()):
        authority += f":{draw(st.integers(1, 65535))}"
    return authority


@st.composite
def valid_urls(draw, schemes):
    scheme = draw(st.sampled_from(schemes))
    return f"{draw(st.sampled_from([scheme, scheme.upper()]))}://{draw(url_authorities())}{draw(URL_TARGET)}"


def printable_ascii(exclude: str = "", min_size=1, max_size=12):
    return st.text("".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in exclude),
                   min_size=min_size, max_size=max_size)


header_names = st.text("".join(sorted(TOKEN_CHARS)), min_size=1, max_size=20)
valid_hash_keys = st.one_of(
    st.just("client_ip"), header_names.map("header:".__add__),
    printable_ascii().map("query:".__add__), printable_ascii().map("cookie:".__add__))
valid_networks = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
    st.builds("{}/{}".format, st.ip_addresses(v=4), st.integers(0, 32)),
    st.builds("{}/{}".format, st.ip_addresses(v=6), st.integers(0, 128)))
valid_resolvers = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), st.ip_addresses(v=6).map("[{}]".format),
    st.builds("{}:{}".format, st.ip_addresses(v=4), st.integers(1, 65535)),
    st.builds("[{}]:{}".format, st.ip_addresses(v=6), st.integers(1, 65535)))

CAUSES = ("client_closed", "client_gone", "client_protocol_error", "client_invalid_utf8",
          "client_message_too_big", "upstream_closed", "upstream_unreachable", "upstream_tls_error",
          "upstream_timeout", "upstream_handshake_rejected", "upstream_protocol_error", "upstream_reset",
          "upstream_http_error", "idle_timeout", "shutdown", "overloaded", "rate_limited", "internal_error")
NOT_OVERRIDABLE = {"client_closed", "client_gone", "upstream_closed"}


def allowed_override(code: int) -> bool:
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999 or code == 1006


PORT = Int(0, 65535)
SERVER_TLS = {"certificate": Required(Text()), "private_key": Required(Text())}
SERVER_FILES = {"certificate": PemFile(("cert", "ca")), "private_key": PemFile(("key",))}
UPSTREAM = Text(ascii_only(lambda t: parse_upstream(t)[0] is None), "an upstream URL or builtin:echo")
MEMBER = {"url": Required(UPSTREAM), "weight": Int(1, 1000)}
HEALTH = {
    "path": Text(ascii_only(lambda t: t.startswith("/") and not any(c in " #\n\r\x0b\x0c" for c in t)),
                 "an absolute path", printable_ascii("#").map("/".__add__)),
    "interval_ms": Int(100, 3_600_000),
    "timeout_ms": Int(1, 3_600_000),
    "unhealthy_after": Int(1, 100),
    "healthy_after": Int(1, 100),
}
EJECT = {"consecutive_failures": Int(1, 1000), "base_ms": Int(1, 3_600_000), "max_ms": Int(1, 86_400_000)}
RATE_LIMIT = {
    "messages_per_second": Int(1, 10_000_000),
    "bytes_per_second": Int(1, 1 << 40),
    "burst_messages": Int(1, 10_000_000),
    "action": OneOf(("throttle", "close")),
}
CLOSE_CODE_OVERRIDES = Custom(lambda e, path, v: e.close_codes(path, v), ANY_KEY, st.deferred(lambda: st.dictionaries(
    st.sampled_from([c for c in CAUSES if c not in NOT_OVERRIDABLE]),
    st.integers(0, 4999).filter(allowed_override), max_size=4)))
# pool settings at their defaults: what a builtin:echo route may still say
POOL_DEFAULTS = {"balance": "round_robin", "discovery": "none", "dns_refresh_ms": 5000,
                 "eject": {"consecutive_failures": 3, "base_ms": 5000, "max_ms": 60000}}
HTTP = {
    "method": Text(ascii_only(lambda t: t.upper() in ("POST", "PUT", "PATCH")), "POST | PUT | PATCH",
                   st.sampled_from(["POST", "PUT", "PATCH", "post", "Put", "pAtCh"])),
    "connect_url": Text(ascii_only(http_url_ok), "an http(s) URL", valid_urls(["http", "https"])),
    "disconnect_url": Text(ascii_only(http_url_ok), "an http(s) URL", valid_urls(["http", "https"])),
    "on_error": OneOf(("close", "reply")),
}
ROUTE_TLS = {
    "ca_file": PemFile(("ca", "cert")),
    "server_name": Text(ascii_only(lambda t: t != "" and not any(c in " /:" for c in t)), "a host name",
                        st.text(min_size=1, max_size=20).filter(lambda s: not any(c in " /:" for c in s))),
    "insecure_skip_verify": Bool(),
}


ROUTE_PATH_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#?*")
ROUTE = {
    "path": Required(Text(route_path_ok, "a route path", st.builds(
        lambda body, prefix: "/" + body + ("/*" if prefix else ""), st.text(ROUTE_PATH_CHARS, max_size=20),
        st.booleans()))),
    "upstream": UPSTREAM,
    "upstreams": Custom(lambda e, path, v: e.upstreams(path, v), ListOf(MEMBER)),
    "balance": OneOf(("round_robin", "least_connections", "hash")),
    "hash_key": Text(ascii_only(hash_key_ok), "a hash key", valid_hash_keys),
    "retries": Int(0, 100),
    "health": HEALTH,
    "eject": EJECT,
    "discovery": OneOf(("none", "dns")),
    "dns_refresh_ms": Int(100, 3_600_000),
    "close_profile": OneOf(("iana", "legacy", "app")),
    "close_codes": CLOSE_CODE_OVERRIDES,
    "rate_limit": Custom(lambda e, path, v: e.rate_limit(path, v), RATE_LIMIT, st.deferred(lambda: valid_rate_limits())),
    "forward_headers": Strings(Text(ascii_only(lambda t: is_token(t) and t.lower() not in NEVER_FORWARDED),
                                    "a header name the gateway does not set",
                                    header_names.filter(lambda h: h.lower() not in NEVER_FORWARDED))),
    "origins": Strings(),
    "http": HTTP,
    "tls": ROUTE_TLS,
}
POOL_KEYS = ("balance", "hash_key", "retries", "health", "eject", "discovery", "dns_refresh_ms")
SCHEMA = {
    "listen": {"host": Text(valid=st.one_of(any_text, st.sampled_from(["0.0.0.0", "127.0.0.1", "::"]))),
               "port": PORT,
               "tls": Custom(lambda e, path, v: e.server_tls(path, v), SERVER_TLS,
                             st.just({"certificate": "@@CERT@@", "private_key": "@@KEY@@"}))},
    "admin": {"host": Text(valid=st.sampled_from(["0.0.0.0", "127.0.0.1", "::1", "localhost"])), "port": PORT},
    "limits": {
        "max_connections": Int(1, 10_000_000),
        "max_message_bytes": Int(1, 1 << 30),
        "handshake_timeout_ms": Int(1, 3_600_000),
        "idle_timeout_ms": Int(0, 86_400_000),
        "max_header_bytes": Int(1024, 1 << 20),
        "max_pending_handshakes": Int(1, 10_000_000),
        "max_connections_per_ip": Int(0, 10_000_000),
    },
    "timeouts": {k: Int(1, 3_600_000) for k in
                 ("upstream_connect_ms", "upstream_handshake_ms", "http_request_ms", "close_handshake_ms")},
    "shutdown": {"drain_timeout_ms": Int(0, 3_600_000), "spread_ms": Int(0, 3_600_000), "close_code": OneOf((1001, 1012))},
    "log": {
        "level": OneOf(("trace", "debug", "info", "notice", "warning", "error")),
        "format": OneOf(("json", "text")),
        "buffer_bytes": Int(65_536, 1 << 30),
        "redact_query": Strings(Text(ascii_only(lambda t: t != "" and not any(c in "&=#? " for c in t)),
                                     "a query parameter name", printable_ascii("&=#?"))),
    },
    "routes": Required(Custom(lambda e, path, v: e.routes(path, v), ListOf(ROUTE), st.deferred(
        lambda: valid_route_lists()))),
    "close_codes": CLOSE_CODE_OVERRIDES,
    "trusted_proxies": Strings(Text(ascii_only(ip_network_ok), "an IP address or CIDR network", valid_networks)),
    "resolver": Strings(Text(ascii_only(resolver_ok), "an IP address with an optional port", valid_resolvers)),
    "workers": AutoOrInt(1, 1024),
}


def unwrap(rule):
    return rule.rule if isinstance(rule, Required) else rule


def grammar(rule):
    """The key paths below a rule: a dict of names, ListOf, ANY_KEY or None (a leaf)."""
    rule = unwrap(rule)
    if isinstance(rule, Custom):
        return grammar(rule.grammar)
    if isinstance(rule, dict):
        return {k: grammar(r) for k, r in rule.items()}
    if isinstance(rule, ListOf):
        return ListOf(grammar(rule.item))
    if isinstance(rule, Strings):
        return ListOf(None)
    return ANY_KEY if rule == ANY_KEY else None


GRAMMAR = grammar(SCHEMA)


def schema_paths(node=GRAMMAR, prefix: str = "") -> set[str]:
    """Every key of the grammar, as `routes[].upstreams[].url`."""
    if isinstance(node, ListOf):
        return schema_paths(node.item, prefix + "[]")
    if not isinstance(node, dict):
        return set()
    return {p for k, c in node.items() for p in {f"{prefix}.{k}".lstrip("."), *schema_paths(c, f"{prefix}.{k}")}}


def schema_rules(rule=SCHEMA, name=None):
    """(key name, leaf rule) for every leaf of the schema."""
    rule = unwrap(rule)
    if isinstance(rule, Custom):
        rule = rule.grammar
    if isinstance(rule, ListOf):
        yield from schema_rules(rule.item, name)
    elif isinstance(rule, dict):
        for k, r in rule.items():
            yield from schema_rules(r, k)
    elif isinstance(rule, Strings):
        yield name, rule.item
    elif isinstance(rule, LEAF_RULES):
        yield name, rule


ALL_KEY_NAMES = sorted({p.replace("[]", "").rsplit(".", 1)[-1] for p in schema_paths()} | set(CAUSES))

# --------------------------------------------------------------------------
# the problems printed: one per line, each with a key path

NON_SCALAR_KEY = re.compile(r"\((?:a list|a mapping|an alias)\)")
UNKNOWN_KEY_MSG = re.compile(r"unknown key(?: \(did you mean ([a-z_]+)\?\))?")
WHOLE_FILE_MSG = re.compile(
    r"invalid YAML: .+|expected a mapping, found (?:a list|a scalar|an empty value|an alias)", re.S)
# Problems that may run over several lines: the YAML parser's (which quote the
# file), and PEM load failures, which print the file's path as written.
MULTI_LINE = re.compile(r"invalid YAML: |.*: cannot load (?:PEM certificates|a PEM private key) from ", re.S)
ALIAS_KEY_MSG = "invalid YAML: line {}: an alias used as a mapping key (keys must be plain names)"
ALIAS_KEY_RE = re.escape(ALIAS_KEY_MSG).replace(r"\{\}", "[0-9]+")
TOO_MANY_VALUES_MSG = f"invalid YAML: more than {MAX_VALUES} values once its aliases are expanded"


def is_shown_key(s: str) -> bool:
    """Whether `s` is how a problem path shows some key."""
    if is_plain_key(s):
        return True
    try:
        key = json.loads(s)
    except ValueError:
        return False
    return isinstance(key, str) and not is_plain_key(key) and json_quote(key) == s


def names_key_path(node, path: str, message: str, top: bool = True) -> bool:
    """Whether `path` (with its problem's `message`) is a key path below `node`
    of the grammar: known keys, `[N]`, and a last key that is unknown."""
    if path == "":
        return not top  # the empty path names nothing
    if isinstance(node, ListOf):
        m = re.match(r"\[[0-9]+\]", path)
        return bool(m) and names_key_path(node.item, path[m.end():], message, False)
    if not top:
        if not path.startswith("."):
            return False
        path = path[1:]
    if node == ANY_KEY:  # close_codes: every key is its own problem's
        return is_shown_key(path) and (message != "unknown cause (keys must be strings)"
                                       or bool(NON_SCALAR_KEY.fullmatch(path)))
    if not isinstance(node, dict):
        return False
    for name, below in node.items():
        rest = path[len(name):]
        if path.startswith(name) and rest[:1] in ("", ".", "[") and names_key_path(below, rest, message, False):
            return True
    if NON_SCALAR_KEY.fullmatch(path) and message == "unknown key (keys must be strings)":
        return True
    m = UNKNOWN_KEY_MSG.fullmatch(message)  # an unknown key, which may hold `.`, `[` or `: `
    return bool(m) and is_shown_key(path) and (m[1] is None or m[1] in node)


def interpretations(text: str) -> list[tuple[str, str]]:
    """Every reading of a problem as KEYPATH: MESSAGE with a valid KEYPATH
    (a key of unknown text may itself hold ': ')."""
    return [(text[:m.start()], text[m.end():]) for m in re.finditer(": ", text)
            if text[m.end():].strip() and names_key_path(GRAMMAR, text[:m.start()], text[m.end():])]


@dataclass
class Problem:
    text: str
    readings: list[tuple[str, str]]
    whole_file: bool


def parse_problems(path: Path, stderr: str) -> tuple[list[Problem], list[str]]:
    """Splits stderr into problems (a new one at each line that starts with
    `PATH: `); returns them and the complaints about the format."""
    prefix = f"{path}: "
    complaints: list[str] = []
    chunks: list[str] = []
    lines = stderr.split("\n")
    if lines[-1] == "":
        lines.pop()
    else:
        complaints.append("stderr does not end with a newline")
    for line in lines:
        if line.startswith(prefix):
            chunks.append(line[len(prefix):])
        elif chunks and MULTI_LINE.match(chunks[-1]):
            chunks[-1] += "\n" + line
        else:
            complaints.append(f"a line that is no problem (nor the rest of one): {line!r}")
    problems = []
    for text in chunks:
        problems.append(Problem(text, interpretations(text), bool(WHOLE_FILE_MSG.fullmatch(text))))
        if not problems[-1].readings and not problems[-1].whole_file:
            complaints.append(f"problem without a YAML key path: {text!r}")
    if any(p.whole_file and not p.readings for p in problems) and len(problems) > 1:
        complaints.append("a whole-file error among other problems")
    return problems, complaints


# --------------------------------------------------------------------------
# the reference checker: key paths a document must be flagged at


@dataclass
class Expect:
    """The problems a document must get, by key path: a reference for the
    rules (what is refused, and where), not for the wording."""
    pki: dict[str, str]
    must: list[tuple[str, str]] = field(default_factory=list)  # (key path, why)
    sure: bool = True  # every value was judged; False: `must` may miss some

    def add(self, path: str, why: str) -> None:
        self.must.append((path, why))

    def check(self, doc) -> Expect:
        if isinstance(doc, dict):
            self.section("", SCHEMA, doc)
            self.cross_checks(doc)
        return self

    def verdict(self, rule, v) -> bool | None:
        ok = rule.ok(v, self.pki)
        if ok is None:
            self.sure = False
        return ok

    def value(self, path: str, rule, v) -> None:
        rule = unwrap(rule)
        if isinstance(rule, dict):
            self.section(path, rule, v)
        elif isinstance(rule, Custom):
            rule.check(self, path, v)
        elif isinstance(rule, Strings):
            if not isinstance(v, list):
                return self.add(path, "a list")
            for i, item in enumerate(v):
                if isinstance(item, (list, dict)):
                    self.add(f"{path}[{i}]", "a string")
                else:
                    self.value(f"{path}[{i}]", rule.item, item)
        elif self.verdict(rule, v) is False:
            self.add(path, rule.what)

    def section(self, path: str, keys: dict, v) -> bool:
        """A mapping read by its keys: unknown keys, missing required ones, and
        every known key's value. False if it is no mapping."""
        if not isinstance(v, dict):
            self.add(path, "a mapping")
            return False
        for k in v:
            if not (isinstance(k, str) and k in keys):
                self.add(child(path, k), "unknown key")
        for k, rule in keys.items():
            if k in v:
                self.value(child(path, k), rule, v[k])
            elif isinstance(rule, Required):
                self.add(child(path, k), "required key is missing")
        return True

    def server_tls(self, path: str, v) -> None:
        """`listen.tls`: both files are loaded, once both are named."""
        if self.section(path, SERVER_TLS, v) and all(k in v and not isinstance(v[k], (list, dict))
                                                     for k in SERVER_FILES):
            for k, rule in SERVER_FILES.items():
                self.value(f"{path}.{k}", rule, v[k])

    def routes(self, path: str, v) -> None:
        if not isinstance(v, list):
            return self.add(path, "a list")
        if not v:
            self.add(path, "at least one route")
        accepted: set[str] = set()
        for i, r in enumerate(v):
            if self.section(f"{path}[{i}]", ROUTE, r):
                self.route(f"{path}[{i}]", r, accepted)

    def route(self, p: str, r: dict, accepted: set[str]) -> None:
        """What a route's keys say together."""
        if isinstance(r.get("path"), str) and route_path_ok(r["path"]):
            if r["path"] in accepted:
                self.add(f"{p}.path", "duplicate path")
            accepted.add(r["path"])
        single, pool = "upstream" in r, "upstreams" in r
        if single and pool:
            self.add(f"{p}.upstreams", "either upstream or upstreams")
        elif not single and not pool:
            self.add(f"{p}.upstream", "required key is missing (or give upstreams)")
        scheme = self.upstream_scheme(r) if single != pool else None
        if "http" in r and scheme in ("builtin", "ws", "wss"):
            self.add(f"{p}.http", "only for http:// and https:// upstreams")
        if isinstance(r.get("tls"), dict) and scheme in ("builtin", "ws", "http"):
            self.add(f"{p}.tls", "only for wss:// and https:// upstreams")
        hashing = r.get("balance") == "hash"
        if "hash_key" in r:
            valid = ROUTE["hash_key"].ok(r["hash_key"], self.pki)
            if valid is not None and valid != hashing:
                self.add(f"{p}.hash_key", "exactly with balance: hash")
        elif hashing:
            self.add(f"{p}.hash_key", "required with balance: hash")
        if scheme == "builtin" and self.has_pool_settings(r):
            self.add(f"{p}.upstream", "builtin:echo takes no pool settings")

    def upstream_scheme(self, r: dict) -> str | None:
        """The scheme of the route's (first) upstream, `builtin` for the echo;
        None when it has none, or it cannot be judged."""
        if "upstream" in r:
            candidates = [r["upstream"]]
        else:
            pool = r["upstreams"] if isinstance(r["upstreams"], list) else []
            candidates = [m["url"] if isinstance(m, dict) else m for m in pool if not isinstance(m, dict) or "url" in m]
        for v in candidates:
            if isinstance(v, (list, dict)):
                continue
            text = scalar_text(v)
            if not text.isascii():
                return None
            why, url = parse_upstream(text)
            if why is None and (url is not ECHO or "upstream" in r):
                return url.scheme
        return None

    def has_pool_settings(self, r: dict) -> bool:
        """Whether the route sets a pool setting to other than its default."""
        def set_to(key, v, default=None):
            return self.verdict(ROUTE[key] if key in ROUTE else EJECT[key], v) and v != default

        return (any(k in r and set_to(k, r[k], POOL_DEFAULTS.get(k)) for k in
                    ("balance", "hash_key", "retries", "discovery", "dns_refresh_ms"))
                or isinstance(r.get("health"), dict)
                or (isinstance(r.get("eject"), dict)
                    and any(k in EJECT and set_to(k, v, POOL_DEFAULTS["eject"][k]) for k, v in r["eject"].items())))

    def upstreams(self, path: str, v) -> None:
        """`upstreams`: URLs or `{url, weight}`, one scheme, one path and query,
        no endpoint twice, no echo."""
        if not isinstance(v, list):
            return self.add(path, "a list")
        if not v:
            return self.add(path, "at least one upstream")
        first, endpoints, judged = None, set(), True
        for i, item in enumerate(v):
            p = f"{path}[{i}]"
            if isinstance(item, list):
                self.add(p, "a URL or a mapping")
                continue
            if isinstance(item, dict):
                self.section(p, MEMBER, item)
                if "url" not in item or isinstance(item["url"], (list, dict)):
                    continue
                item = item["url"]
            else:
                self.value(p, UPSTREAM, item)
            text = scalar_text(item)
            judged = judged and text.isascii()
            why, url = parse_upstream(text) if text.isascii() else ("not judged", None)
            if url is ECHO:
                self.add(f"{p}.url", "builtin:echo cannot be a pool member")
            if why or url is ECHO or not judged:
                continue
            if first is None:
                first = url
            elif url.scheme != first.scheme:
                self.add(f"{p}.url", "one scheme per route")
                continue
            elif (url.path, url.query) != (first.path, first.query):
                self.add(f"{p}.url", "the first member's path and query")
                continue
            if url.endpoint in endpoints:
                self.add(f"{p}.url", "duplicate target")
            endpoints.add(url.endpoint)

    def rate_limit(self, path: str, v) -> None:
        """`rate_limit`: a rate of messages or bytes; a burst only with a message rate."""
        if self.section(path, RATE_LIMIT, v):
            mps, bps, burst = (k in v and RATE_LIMIT[k].ok(v[k], self.pki)
                               for k in ("messages_per_second", "bytes_per_second", "burst_messages"))
            if not mps and not bps:
                self.add(path, "needs messages_per_second or bytes_per_second")
            elif burst and not mps:
                self.add(f"{path}.burst_messages", "only applies with messages_per_second")

    def close_codes(self, path: str, v) -> None:
        if not isinstance(v, dict):
            return self.add(path, "a mapping")
        for cause, code in v.items():
            p = child(path, cause)
            if not (isinstance(cause, str) and cause in CAUSES):
                self.add(p, "unknown cause")
            elif not (is_int(code) and 0 <= code <= 65535):
                self.add(p, "an integer in 0...65535")
            elif cause in NOT_OVERRIDABLE:
                self.add(p, "not overridable")
            elif not allowed_override(code):
                self.add(p, "an allowed close code")

    def cross_checks(self, doc: dict) -> None:
        """Settings that depend on each other, as they end up (an invalid value is the default)."""
        def setting(section: str, key: str, default):
            sec = doc.get(section)
            v = sec.get(key, default) if isinstance(sec, dict) else default
            if isinstance(SCHEMA[section][key], Int):
                return v if SCHEMA[section][key].ok(v, self.pki) else default
            return default if isinstance(v, (list, dict)) else scalar_text(v)

        spread = setting("shutdown", "spread_ms", 0)
        if spread > 0 and spread >= setting("shutdown", "drain_timeout_ms", 10_000):
            self.add("shutdown.spread_ms", "must be less than shutdown.drain_timeout_ms")

        lh, lp = setting("listen", "host", "0.0.0.0"), setting("listen", "port", 8080)
        ah, ap = setting("admin", "host", "127.0.0.1"), setting("admin", "port", 9090)
        if lp != 0 and lp == ap:
            if not (lh.isascii() and ah.isascii()):
                self.sure = False  # Swift compares strings by canonical equivalence
            elif lh == ah or "0.0.0.0" in (lh, ah):
                self.add("admin.port", "must differ from listen.port")


# --------------------------------------------------------------------------
# checking one run


def crash_findings(outcome: Outcome, config_text: str) -> list[str]:
    found = []
    if outcome.status is None:
        found.append(f"did not finish within {TIMEOUT} s")
    elif outcome.status not in (0, 1):
        found.append(f"exit status {outcome.status} (expected 0 or 1)")
    found += [f"printed {m!r}" for m in CRASH_MARKERS if m in outcome.stdout + outcome.stderr and m not in config_text]
    if outcome.maxrss_kib > MAX_RSS_KIB:
        found.append(f"max RSS {outcome.maxrss_kib} KiB > {MAX_RSS_KIB} KiB")
    if outcome.truncated:
        found.append(f"more than {OUTPUT_CAP} bytes of output")
    return found


def format_findings(outcome: Outcome, path: Path) -> list[str]:
    """Property 2: exit status and output agree; every problem has a key path."""
    if outcome.status == 0:
        found = [] if re.fullmatch(re.escape(f"{path}: OK (") + r"[0-9]+ routes?\)\n", outcome.stdout) else [
            f"exit 0 without exactly `{path}: OK (N routes)` on stdout"]
        return found + ["exit 0 with problems printed"] * bool(outcome.stderr)
    if outcome.status != 1:
        return []  # a crash, reported as such
    found = ["exit 1 with output on stdout"] * bool(outcome.stdout)
    found += ["exit 1 without any problem printed"] * (not outcome.stderr.strip())
    return found + parse_problems(path, outcome.stderr)[1]


def report(title: str, findings: list[str], config_text: str, outcome: Outcome) -> str:
    return (f"{title}:\n  - " + "\n  - ".join(findings)
            + f"\n--- config ({len(config_text)} characters) ---\n{_clip(config_text)}"
            + f"\n--- check-config: {outcome.describe()}")


@dataclass
class Checked:
    path: Path
    outcome: Outcome
    text: str

    @property
    def problems(self) -> list[str]:
        return [p.text for p in parse_problems(self.path, self.outcome.stderr)[0]] if self.outcome.status == 1 else []

    def expect(self, title: str, ok: bool, *findings: str) -> None:
        assert ok, report(title, list(findings) or ["see below"], self.text, self.outcome)

    def expect_problems(self, want: list[str]) -> None:
        self.expect("check-config must print exactly these problems", self.problems == want, *want)

    def expect_ok(self, routes: int) -> None:
        self.expect("a valid config was rejected", self.outcome.status == 0 and self.outcome.stdout
                    == f"{self.path}: OK ({routes} route{'' if routes == 1 else 's'})\n")


def check_text(tmp_path: Path, data: bytes | str) -> Checked:
    """Runs check-config on `data`; asserts properties 1 and 2."""
    path = write_config(tmp_path, data)
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    outcome = run_check(path)
    crashes = crash_findings(outcome, text)
    assert not crashes, report("check-config crashed, hung or blew up", crashes, text, outcome)
    fmt = format_findings(outcome, path)
    assert not fmt, report("check-config output breaks the problem format", fmt, text, outcome)
    return Checked(path, outcome, text)


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, but a value used twice is written twice, not as
    an alias, and text is double-quoted (so escaped) when it holds
    - a NEL, which PyYAML writes raw in single quotes, where libyaml reads a
      line break (folded into a space)."""

    def ignore_aliases(self, data):
        return True

    def represent_str(self, data):
        quote = "\x85" in data
        return self.represent_scalar("tag:yaml.org,2002:str", data, style='"' if quote else None)


_Dumper.add_representer(str, _Dumper.represent_str)


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


dump_options = st.fixed_dictionaries({
    "default_flow_style": st.sampled_from([False, True, None]),
    "allow_unicode": st.booleans(),
    "width": st.sampled_from([80, 20, 1000]),
    "indent": st.sampled_from([2, 4]),
})


def check_doc(tmp_path: Path, doc, pki: dict[str, str], dump: dict | None = None, must_pass: bool = False) -> None:
    """Writes `doc` as YAML, runs check-config and asserts the generic
    properties, the reference checker's key paths and, when the checker finds
    nothing (it must, with `must_pass`), that the config is accepted."""
    doc = materialize(doc, pki)
    text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, **(dump or {}))
    try:
        note(f"config:\n{_clip(text)}")
    except Exception:  # not inside a hypothesis test
        pass
    run = check_text(tmp_path, text)
    if not isinstance(doc, dict):
        return run.expect_problems([f"expected a mapping, found {'a list' if isinstance(doc, list) else 'a scalar'}"])
    problems = parse_problems(run.path, run.outcome.stderr)[0] if run.outcome.status == 1 else []
    whole = [p.text for p in problems if p.whole_file and not p.readings]
    run.expect("a whole-file error for a mapping PyYAML wrote", not whole, *whole)
    expect = Expect(pki).check(doc)
    if must_pass:
        assert not expect.must, f"the generator made an invalid config: {expect.must}\n{text}"
    seen = {kp for p in problems for kp, _ in p.readings}
    missing = [f"{kp}: {why}" for kp, why in expect.must if kp not in seen]
    run.expect("problems check-config must report, by key path, are missing", not missing, *missing)
    if must_pass or (not expect.must and expect.sure):
        run.expect_ok(len(doc["routes"]))


# --------------------------------------------------------------------------
# seeds

# Every key of SCHEMA, with files that load.
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
  max_header_bytes: 16384
  max_pending_handshakes: 1000
  max_connections_per_ip: 100
timeouts:
  upstream_connect_ms: 3000
  upstream_handshake_ms: 5000
  http_request_ms: 10000
  close_handshake_ms: 2000
shutdown:
  drain_timeout_ms: 10000
  spread_ms: 2000
  close_code: 1001
log:
  format: json
  level: info
  redact_query: [token, access_token]
  buffer_bytes: 4194304
trusted_proxies: [10.0.0.0/8, "fd00::/8", 127.0.0.1]
resolver: [10.0.0.10, "10.0.0.11:5353", "[fd00::a]:53"]
workers: 2
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
  - path: /pool/*
    upstreams:
      - ws://10.0.0.1:9001/chat
      - {url: ws://10.0.0.2:9001/chat, weight: 3}
      - url: ws://chat.internal/chat
    balance: hash
    hash_key: header:X-User
    retries: 1
    health: {path: /healthz, interval_ms: 2000, timeout_ms: 1000, unhealthy_after: 2, healthy_after: 2}
    eject: {consecutive_failures: 3, base_ms: 5000, max_ms: 60000}
    discovery: dns
    dns_refresh_ms: 5000
    close_profile: legacy
    close_codes: {upstream_timeout: 4504}
    rate_limit: {messages_per_second: 100, bytes_per_second: 1048576, burst_messages: 200, action: close}
  - path: /hooks
    upstreams: [https://10.0.0.3:9443/m, https://10.0.0.4:9443/m]
    balance: least_connections
    http: {method: PUT}
    tls: {ca_file: @@CA@@}
close_codes:
  upstream_reset: 1014
"""

SHIPPED = [REPO / "config" / "wsgate.yaml", *sorted((REPO / "config" / "examples").glob("*.yaml"))]


def rich_text(pki: dict[str, str]) -> str:
    text = RICH_CONFIG
    for ph, name in PLACEHOLDERS.items():
        text = text.replace(ph, pki[name])
    return text


SEED_DOCS = [yaml.safe_load(re.sub(r"(@@[A-Z]+@@)", r'"\1"', RICH_CONFIG)),
             *(yaml.safe_load(p.read_text()) for p in SHIPPED)]


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


# --------------------------------------------------------------------------
# the seeds pass (a check-config that rejects everything fails here)


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_pass(tmp_path, shipped):
    text = shipped.read_text()
    check_text(tmp_path, text).expect_ok(len(yaml.safe_load(text)["routes"]))


def test_rich_config_passes_and_uses_every_key(tmp_path, pki):
    def used(v, prefix=""):
        if isinstance(v, dict):
            return {p for k, x in v.items() for p in {f"{prefix}.{k}".lstrip("."), *used(x, f"{prefix}.{k}")}}
        if isinstance(v, list):
            return {p for x in v for p in used(x, prefix + "[]")}
        return set()

    assert schema_paths() <= used(SEED_DOCS[0]), sorted(schema_paths() - used(SEED_DOCS[0]))
    check_text(tmp_path, rich_text(pki)).expect_ok(len(SEED_DOCS[0]["routes"]))
    check_doc(tmp_path, SEED_DOCS[0], pki, must_pass=True)


def test_readme_reference_config_passes(tmp_path, pki):
    """The README's configuration reference, with the session's PEM files."""
    readme = (REPO / "README.md").read_text()
    text = re.search(r"## Configuration reference.*?```yaml\n(.*?)```", readme, re.S)[1]
    for key, name in (("certificate", "cert"), ("private_key", "key"), ("ca_file", "ca")):
        text = re.sub(rf"({key}: )\S+", rf"\g<1>{pki[name]}", text)
    run = check_text(tmp_path, text)
    run.expect_ok(len(yaml.safe_load(text)["routes"]))


# --------------------------------------------------------------------------
# strategies: valid configs


def valid_value(rule):
    rule = unwrap(rule)
    if isinstance(rule, dict):
        return valid_section(rule)
    if isinstance(rule, Strings):
        return st.lists(rule.item.valid, max_size=3)
    return rule.valid


@st.composite
def shuffled(draw, d: dict) -> dict:
    return {k: d[k] for k in draw(st.permutations(list(d)))}


@st.composite
def valid_section(draw, keys: dict, only=None):
    """Some of the keys (every required one), each at a valid value."""
    out = {k: draw(valid_value(rule)) for k, rule in keys.items()
           if (only is None or k in only) and (isinstance(rule, Required) or draw(st.booleans()))}
    return draw(shuffled(out))


@st.composite
def valid_route_lists(draw):
    """1 to 5 routes, of different kinds (a list of routes would be mostly of one)."""
    schemes = draw(st.permutations(["builtin", "ws", "wss", "http", "https"]))[:draw(st.integers(1, 5))]
    routes = [draw(valid_routes(scheme)) for scheme in schemes]
    return list({r["path"]: r for r in routes}.values())  # a later route with the same path replaces one


@st.composite
def valid_routes(draw, scheme: str):
    route: dict[str, Any] = {"path": draw(ROUTE["path"].rule.valid)}
    if scheme == "builtin":
        route["upstream"] = "builtin:echo"
        for key in draw(st.sets(st.sampled_from(sorted(POOL_DEFAULTS)))):  # at their defaults, which it may have
            default = POOL_DEFAULTS[key]
            route[key] = {k: v for k, v in default.items() if draw(st.booleans())} if key == "eject" else default
    else:
        target = draw(URL_TARGET)
        authorities = draw(st.lists(url_authorities(), min_size=1, max_size=4,
                                    unique_by=lambda a: parse_url(f"{scheme}://{a}")[1].endpoint))
        urls = [f"{draw(st.sampled_from([scheme, scheme.upper()]))}://{a}{target}" for a in authorities]
        if len(urls) == 1 and draw(st.booleans()):
            route["upstream"] = urls[0]
        else:
            route["upstreams"] = [draw(st.one_of(st.just(u), st.just({"url": u}), MEMBER["weight"].valid.map(
                lambda w, u=u: {"url": u, "weight": w}))) for u in urls]
        route.update(draw(valid_section(ROUTE, only=set(POOL_KEYS) - {"hash_key"})))
        if route.get("balance") == "hash":
            route["hash_key"] = draw(ROUTE["hash_key"].valid)
    route.update(draw(valid_section(ROUTE, only={"forward_headers", "origins", "close_profile", "close_codes",
                                                  "rate_limit"})))
    if scheme in ("http", "https") and draw(st.booleans()):
        route["http"] = draw(valid_section(HTTP))
    if scheme in ("wss", "https") and draw(st.booleans()):
        route["tls"] = draw(valid_section(ROUTE_TLS))
    return draw(shuffled(route))


@st.composite
def valid_rate_limits(draw):
    limit = draw(valid_section(RATE_LIMIT))
    if "burst_messages" in limit or "bytes_per_second" not in limit:
        limit.setdefault("messages_per_second", draw(RATE_LIMIT["messages_per_second"].valid))
    return limit


@st.composite
def valid_configs(draw):
    doc = draw(valid_section(SCHEMA))
    shutdown = doc.get("shutdown", {})
    if "spread_ms" in shutdown:  # less than the drain, or 0
        shutdown["spread_ms"] %= max(shutdown.get("drain_timeout_ms", 10_000), 1)
    lp = doc.get("listen", {}).get("port", 8080)
    if lp != 0 and lp == doc.get("admin", {}).get("port", 9090):
        doc.setdefault("admin", {})["port"] = lp % 65535 + 1  # admin.port must differ from listen.port
    return doc


@fuzz(max_examples=100)
@given(doc=valid_configs(), dump=dump_options)
def test_valid_configs_pass(tmp_path, pki, doc, dump):
    check_doc(tmp_path, doc, pki, dump, must_pass=True)


# --------------------------------------------------------------------------
# strategies: hostile values and mutations

INTERESTING_INTS = sorted({n for _, rule in schema_rules() if isinstance(rule, Int)
                           for n in (rule.lo - 1, rule.lo, rule.hi, rule.hi + 1)}
                          | {2**31, 2**32, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**70, -(2**70), 10**30})
CLOSE_CODES = [-1, 0, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011, 1012, 1013, 1014,
               1015, 1016, 2999, 3000, 3999, 4000, 4999, 5000, 65535, 65536]
UPSTREAMS = [
    "", "builtin:", "builtin:echo2", "builtin:ECHO", "echo", "ws:/x", "ws//x", "ftp://x", "FTP://x/y",
    "file:///etc/passwd", "javascript:alert(1)", "ws://", "ws:///path", "ws://:80", "ws://h:0",
    "ws://h:65536", "ws://h:-1", "ws://h:", "ws://h:+", "ws://h:80x", "ws://h:99999999999999999999",
    "ws://u:p@h/", "ws://[::1", "ws://[::1]x", "ws://[]:80", "ws://h/a b", "ws://h/#frag", "ws://h\n/x",
    "ws://h:80/\u2028", "wss://é.example/", "http://h\r\n/x", " ws://h", "ws ://h",
    "builtin:echo", "ws://127.0.0.1:9/", "wss://x.example:443/a?b=c", "http://h/x", "HTTPS://H:1/",
    "ws://[::1]:8080/p", "ws://h:80:80", "ws://h\t/", "ws://h:+80/", "http://h:080", "wss://h/?#", "ws://h?x",
]
# pool members: the same endpoint twice (b, B:80), other schemes, paths and queries, the echo
MEMBER_URLS = ["ws://a/x", "ws://b/x", "WS://B:80/x", "ws://a:81/x", "wss://c/x", "ws://d/y", "ws://e/x?q",
               "http://f/x", "builtin:echo", "ws://[::1]/x", "ws://[::1]:80/x", "ftp://g/x", "ws://h:0/x", "ws://a/x?"]
ROUTE_PATHS = ["", "echo", "/a?b", "/a#b", "/a b", "/\t", "/é", "/a*", "/*/x", "/**", "*", "/a/*/*",
               "//*x", "/\x7f", "/\x00", " /a", "/a\n", "\\a", "/", "/*", "//*", "/a/*", "/a.b~c/d", "/%20"]
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
    scalars, scalars, scalars, long_strings,
    st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=8), scalars, max_size=3),
    st.builds(list), st.builds(dict),
)
members = st.one_of(
    st.sampled_from(MEMBER_URLS),
    st.fixed_dictionaries({"url": st.sampled_from(MEMBER_URLS)},
                          optional={"weight": st.sampled_from([0, 1, 1000, 1001, -1, "2"]), "wieght": st.just(2)}),
    st.fixed_dictionaries({}, optional={"weight": st.just(1)}),  # no url
    scalars, st.lists(scalars, max_size=2))

# By the key a value is at (or whose list it is in): values made for it.
SLOT_VALUES: dict[str, list] = {
    **{name: [n for n in INTERESTING_INTS if n < 2**31] for name, rule in schema_rules() if isinstance(rule, Int)},
    "upstream": UPSTREAMS, "url": MEMBER_URLS + UPSTREAMS, "connect_url": UPSTREAMS, "disconnect_url": UPSTREAMS,
    "path": ROUTE_PATHS + ["/healthz?x=1", "/h#x", "healthz"], "port": [0, 1, 8080, 9090, 65535, 65536, -1, 2**70],
    "close_code": CLOSE_CODES, **{cause: CLOSE_CODES for cause in CAUSES},
    "certificate": ["@@CERT@@", "@@KEY@@", "@@CA@@", "/etc/passwd", "/dev/null", "/", "", "/nonexistent.pem",
                    "/dev/zero", "wsgate.yaml"],
    "hash_key": ["client_ip", "CLIENT_IP", "header:X-User", "header:bad header", "header:", "query:t", "cookie:s",
                 "cookie:a\tb", "body:x", "query", ":x", "header:é"],
    **{k: ["POST", "put", "GET", "close", "reply", "CLOSE", "json", "text", "JSON", "info", "INFO", "fatal",
           "round_robin", "least_connections", "hash", "HASH", "random", "none", "dns", "DNS", "srv", "iana",
           "legacy", "app", "APP", "throttle", "drop"]
       for k in ("method", "on_error", "level", "format", "balance", "discovery", "close_profile", "action")},
}
SLOT_VALUES["private_key"] = SLOT_VALUES["ca_file"] = SLOT_VALUES["certificate"]
LIST_ITEMS = {
    "forward_headers": st.sampled_from(HEADERS),
    "origins": st.one_of(st.text(max_size=10), st.builds(list), st.builds(dict)),
    "redact_query": st.sampled_from(["token", "", "a b", "a=b", "a&b", "#", "?", "é", "TOKEN", "x\ny"]),
    "trusted_proxies": st.sampled_from(["10.0.0.0/8", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/",
                                        "::/0", "fd00::/129", "[::1]", "::1%eth0", "1.2.3", "01.2.3.4", "h", "",
                                        "1.2.3.4/8/8", "é"]),
    "resolver": st.sampled_from(["10.0.0.10", "10.0.0.10:53", "10.0.0.10:0", "10.0.0.10:", ":53", "[::1]:53",
                                 "[::1]53", "[::1", "::1", "::1:53", "h:53", "10.0.0.10:+53", "1.2.3.4:65536"]),
    "upstreams": members,
}


def hostile_for(path: tuple) -> st.SearchStrategy:
    """Hostile values that fit the slot (a URL slot gets URLs, …) or not."""
    name = next((k for k in reversed(path) if isinstance(k, str)), None)
    special = [st.sampled_from(SLOT_VALUES[name])] if name in SLOT_VALUES else []
    if name in LIST_ITEMS:
        special.append(LIST_ITEMS[name] if isinstance(path[-1], int) else st.lists(LIST_ITEMS[name], max_size=4))
    # a copy: the doc is mutated in place, a shared constant must not be
    return st.one_of(*special, hostile_values).map(copy.deepcopy)


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


NON_STR_KEYS = [None, True, False, 0, 1, -1, 2**70]
ODD_KEYS = ["", " ", "\t", " \t ", "a\tb", "\x7f", "\x1b[0m", "\r", "\u2028", "\x85", "<<", "~", "null", "a.b",
            "x[0]", "a: b", "routes[0]", "(a list)", '""', '"x"', "é", "\n", "k\ny"]
new_keys = st.one_of(
    st.sampled_from(ALL_KEY_NAMES).flatmap(typo_of), st.sampled_from(ALL_KEY_NAMES), st.text(max_size=12),
    st.sampled_from(ODD_KEYS), st.sampled_from(NON_STR_KEYS))

# (key, value) the `route_key` mutation sets on a route: settings where they
# do not belong (http on a ws route, pool keys on the echo, …) or do
ROUTE_SETTINGS = [
    ("http", {"method": "POST"}), ("http", {}), ("tls", {"insecure_skip_verify": True}), ("tls", {}),
    ("upstream", "builtin:echo"), ("upstream", "ws://h:1/"), ("upstream", "http://h:1/"),
    ("upstream", "wss://h/"), ("upstream", "https://h/"), ("upstreams", ["ws://a/x", "ws://b/x"]),
    ("upstreams", [{"url": "wss://a/"}]), ("upstreams", ["http://a/", {"url": "http://b/", "weight": 2}]),
    ("upstreams", []), ("balance", "hash"), ("balance", "least_connections"), ("balance", "round_robin"),
    ("hash_key", "client_ip"), ("hash_key", "header:X-User"), ("retries", 0), ("retries", 3), ("health", {}),
    ("health", {"path": "/h"}), ("eject", {}), ("eject", {"base_ms": 5000}), ("eject", {"max_ms": 1}),
    ("discovery", "dns"), ("discovery", "none"), ("dns_refresh_ms", 5000), ("dns_refresh_ms", 100),
    ("close_profile", "legacy"), ("close_codes", {"upstream_reset": 4000, "client_gone": 1000}), ("rate_limit", {}),
    ("rate_limit", {"burst_messages": 5}), ("rate_limit", {"bytes_per_second": 1, "burst_messages": 5}),
    ("rate_limit", {"messages_per_second": 0, "action": "close"}),
]


def slots(doc, path=()) -> list[tuple]:
    """Paths to every value below `doc`."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    return [p for k, v in items for p in [path + (k,), *slots(v, path + (k,))]]


def get(doc, path: tuple):
    for k in path:
        doc = doc[k]
    return doc


def mapping_at(doc: dict, key) -> dict:
    """doc[key], made a mapping if it is none."""
    if not isinstance(doc.get(key), dict):
        doc[key] = {}
    return doc[key]


def put_key(d: dict, key, value) -> None:
    """Adds a key unless it would read the same as another one after YAML."""
    if key in d or scalar_text(key) not in map(scalar_text, d):
        d[key] = value


@st.composite
def mutated(draw):
    doc = copy.deepcopy(draw(st.sampled_from(SEED_DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "replace", "replace_leaf", "replace_leaf", "add_key", "add_key",
                                   "rename", "dup_route", "wrap", "move", "route_key", "route_key", "pool",
                                   "conflict", "root"]))
        all_slots = slots(doc)
        dicts = [()] * isinstance(doc, dict) + [p for p in all_slots if isinstance(get(doc, p), dict)]
        keyed = [p for p in all_slots if not isinstance(p[-1], int)]
        routes = doc.get("routes") if isinstance(doc, dict) else None
        dict_routes = [r for r in routes if isinstance(r, dict)] if isinstance(routes, list) else []
        if op == "root":
            if draw(st.integers(0, 9)) == 0:
                doc = draw(hostile_values.map(copy.deepcopy))
        elif not all_slots:
            break
        elif op == "drop":
            p = draw(st.sampled_from(all_slots))
            del get(doc, p[:-1])[p[-1]]
        elif op in ("replace", "replace_leaf"):
            leaves = [p for p in all_slots if op == "replace" or not isinstance(get(doc, p), (dict, list))]
            if leaves:
                p = draw(st.sampled_from(leaves))
                get(doc, p[:-1])[p[-1]] = draw(hostile_for(p))
        elif op == "route_key" and dict_routes:
            key, value = draw(st.sampled_from(ROUTE_SETTINGS))
            draw(st.sampled_from(dict_routes))[key] = copy.deepcopy(value)
        elif op == "pool" and dict_routes:  # a pool of hostile members, with or without its upstream
            r = draw(st.sampled_from(dict_routes))
            r["upstreams"] = draw(st.lists(members, min_size=1, max_size=5).map(copy.deepcopy))
            if draw(st.booleans()):
                r.pop("upstream", None)
        elif op == "conflict" and isinstance(doc, dict) and draw(st.booleans()):  # admin on the listener's port
            port = draw(st.sampled_from([0, 8080, 9090, 1]))
            for section in ("listen", "admin"):
                mapping_at(doc, section)["port"] = port
                if draw(st.booleans()):
                    doc[section]["host"] = draw(st.sampled_from(["0.0.0.0", "127.0.0.1", "::1", "h"]))
        elif op == "conflict" and isinstance(doc, dict):  # the drain's closes spread over as long as it, or longer
            mapping_at(doc, "shutdown").update({k: draw(st.sampled_from([0, 1, 1000, 10_000]))
                                                for k in ("drain_timeout_ms", "spread_ms")})
        elif op == "add_key" and dicts:
            put_key(get(doc, draw(st.sampled_from(dicts))), draw(new_keys), draw(st.one_of(hostile_values, st.sampled_from(
                [8080, "builtin:echo", "/x", {"port": 1}, [{"path": "/y", "upstream": "builtin:echo"}]])).map(copy.deepcopy)))
        elif op == "rename" and keyed:
            p = draw(st.sampled_from(keyed))
            parent = get(doc, p[:-1])
            value = parent.pop(p[-1])
            put_key(parent, draw(typo_of(p[-1]) if isinstance(p[-1], str) else new_keys), value)
        elif op == "dup_route" and isinstance(routes, list) and routes:
            routes.insert(draw(st.integers(0, len(routes))), copy.deepcopy(draw(st.sampled_from(routes))))
        elif op == "wrap":
            p = draw(st.sampled_from(all_slots))
            parent = get(doc, p[:-1])
            parent[p[-1]] = draw(st.sampled_from([[parent[p[-1]]], {"value": parent[p[-1]]}, [], {}]))
        elif op == "move" and keyed and dicts:  # a key into another mapping (port into limits, …)
            src, dst = draw(st.sampled_from(keyed)), draw(st.sampled_from(dicts))
            if dst[:len(src)] != src:  # not into itself
                put_key(get(doc, dst), src[-1], get(doc, src[:-1]).pop(src[-1]))
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
    scalars, lambda children: st.one_of(st.lists(children, max_size=4), dict_with_unique_keys(children)),
    max_leaves=25)


@fuzz(max_examples=150)
@given(doc=st.one_of(dict_with_unique_keys(random_docs), dict_with_unique_keys(random_docs), random_docs),
       dump=dump_options)
def test_random_documents(tmp_path, pki, doc, dump):
    check_doc(tmp_path, doc, pki, dump)


# --------------------------------------------------------------------------
# strategies: raw text and bytes

YAML_TOKENS = [
    ": ", ":", "- ", "-", "\n", "\n  ", "  ", "\t", " ", "&a ", "*a", "&b ", "*b", "!!str ", "!!int ",
    "!!binary ", "!!python/object:os.system ", "!foo ", "!<tag:x> ", "? ", "{", "}", "[", "]", ", ", "'",
    '"', "#", "%YAML 1.2\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "|\n", ">-\n", "<<: *a\n", "\\u00e9",
    "\\x00", "\x00", "\ufeff", "\r\n", "\r", "\u2028", "\x85", "~", "null", "0x10", "1e9", "-1", "2e308",
    "99999999999999999999999", "é", "🙂", "routes", "listen", "port", "path", "upstream", "upstreams", "url",
    "/echo", "builtin:echo", "ws://h:1/", "close_codes", "upstream_reset", "limits", "max_connections",
]
token_soup = st.lists(st.sampled_from(YAML_TOKENS), max_size=60).map("".join)


@st.composite
def byte_mutations(draw, texts):
    data = bytearray(draw(st.sampled_from(texts)).encode())
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "dup", "cut"]))
        if kind == "insert":
            data[i:i] = draw(st.one_of(st.binary(min_size=1, max_size=4), st.sampled_from(YAML_TOKENS).map(str.encode)))
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
    seeds = [rich_text(pki)] + [p.read_text() for p in SHIPPED]
    encoded = lambda s: s.encode("utf-8", "surrogatepass")  # noqa: E731
    check_text(tmp_path, data.draw(st.one_of(
        st.binary(max_size=400), st.text(max_size=400).map(encoded), token_soup.map(encoded),
        token_soup.map(lambda s: encoded("routes:\n  - " + s)), byte_mutations(seeds), byte_mutations(seeds),
    ), label="config bytes"))


# --------------------------------------------------------------------------
# hand-written corner cases (each its own test, so each bug is its own failure),
# with the exact problems where they are defined

_R = "routes: [{path: /a, upstream: 'builtin:echo'}]\n"
TRICKY: dict[str, bytes | str | tuple[str, list[str]]] = {
    "empty_file": ("", ["routes: required key is missing"]),
    "only_a_comment": ("# nothing here\n", ["routes: required key is missing"]),
    "null_document": ("~\n", ["expected a mapping, found a scalar"]),
    "empty_quoted_document": ("''\n", ["expected a mapping, found a scalar"]),
    "list_document": ("- routes\n", ["expected a mapping, found a list"]),
    "root_empty_key": ('"": 1\n' + _R, ['"": unknown key']),
    "root_anchored_empty_key": ("&a : 1\n" + _R, ['"": unknown key']),
    "root_list_key": ("? [a]\n: 1\n" + _R, ["(a list): unknown key (keys must be strings)"]),
    "root_mapping_key": ("? {a: 1}\n: 1\n" + _R, ["(a mapping): unknown key (keys must be strings)"]),
    "nested_empty_key": ('listen: {"": 1}\n' + _R, ['listen."": unknown key']),
    "blank_keys": ('listen: {" ": 1, "\\t": 2, " \\t ": 3, " a": 4}\n' + _R,
                   ['listen." ": unknown key', 'listen."\\t": unknown key', 'listen." \\t ": unknown key',
                    "listen. a: unknown key"]),
    "nested_list_key": ("limits: {? [a] : 1}\n" + _R, ["limits.(a list): unknown key (keys must be strings)"]),
    "route_empty_key": ("routes: [{path: /a, upstream: 'builtin:echo', '': 1}]\n", ['routes[0]."": unknown key']),
    "close_codes_empty_key": ("close_codes: {'': 1011}\n" + _R, ['close_codes."": unknown cause']),
    "close_codes_list_key": ("close_codes: {? [a] : 1011}\n" + _R,
                             ["close_codes.(a list): unknown cause (keys must be strings)"]),
    "close_codes_mapping_key": ("close_codes: {? {a: 1} : 1011}\n" + _R,
                                ["close_codes.(a mapping): unknown cause (keys must be strings)"]),
    "key_with_newline": ('limits: {"a\\nb": 1}\n' + _R, ['limits."a\\nb": unknown key']),
    "key_with_controls": ('limits: {"a\\x7fb\\e": 1, "\\u2028": 2, "é ": 3}\n' + _R,
                          ['limits."a\\u007fb\\u001b": unknown key', "limits.\u2028: unknown key",
                           "limits.é : unknown key"]),
    "key_with_colon_space": ('"a: unknown key": 1\n' + _R, ["a: unknown key: unknown key"]),
    "key_with_config_path_text": ('"wsgate.yaml: x": 1\n' + _R, ["wsgate.yaml: x: unknown key"]),
    "null_and_bool_keys": ("null: 1\ntrue: 2\n1: 3\n" + _R, ["null: unknown key", "true: unknown key", "1: unknown key"]),
    "pool_problems": ("""\
routes:
 - {path: /a}
 - {path: /b, upstream: "ws://h/", upstreams: ["ws://h/"]}
 - {path: /c, upstreams: ["ws://a/x", {url: "ws://b/x", weight: 0}, {url: "wss://c/x"}, {weight: 2}, "builtin:echo",
     {url: "ws://d/y"}, "ws://a:80/x", [1], {url: "ws://e/x", w: 1}, "ftp://f/x"], balance: hash}
 - {path: /d, upstream: builtin:echo, retries: 1, hash_key: client_ip}
 - {path: /e, upstreams: [], balance: bogus, hash_key: "x", discovery: x}
 - {path: /f, upstream: builtin:echo, balance: round_robin, discovery: none, eject: {base_ms: 5000}}
 - {path: /g, upstreams: ["ws://a/"], http: {}}
""", [
        "routes[0].upstream: required key is missing (or give upstreams)",
        "routes[1].upstreams: use either upstream or upstreams, not both",
        "routes[2].upstreams[1].weight: 0 is out of range 1...1000",
        "routes[2].upstreams[2].url: one scheme per route: the first member is ws://",
        "routes[2].upstreams[3].url: required key is missing",
        "routes[2].upstreams[4].url: builtin:echo cannot be a pool member",
        "routes[2].upstreams[5].url: every member must have the same path and query as the first (/x)",
        "routes[2].upstreams[6].url: duplicate target a:80",
        "routes[2].upstreams[7]: expected a mapping, found a list",
        "routes[2].upstreams[8].w: unknown key",
        'routes[2].upstreams[9]: unsupported scheme "ftp"',
        "routes[2].hash_key: required with balance: hash",
        "routes[3].hash_key: only applies to balance: hash",
        "routes[3].upstream: builtin:echo takes no pool settings (balance, retries, health, eject, discovery)",
        "routes[4].upstreams: at least one upstream is required",
        'routes[4].balance: invalid value "bogus" (expected round_robin | least_connections | hash)',
        'routes[4].hash_key: invalid hash key "x" (expected header:NAME | query:NAME | cookie:NAME | client_ip)',
        'routes[4].discovery: invalid value "x" (expected none | dns)',
        "routes[6].http: only applies to http:// and https:// upstreams",
    ]),
    "new_top_level_keys": ('trusted_proxies: ["10.0.0.0/33", 5]\nresolver: ["h:53"]\n'
                           'log: {redact_query: ["a b"], buffer_bytes: 1}\nlimits: {max_header_bytes: 1023}\n' + _R, [
        "limits.max_header_bytes: 1023 is out of range 1024...1048576",
        "log.buffer_bytes: 1 is out of range 65536...1073741824",
        'log.redact_query[0]: invalid query parameter name "a b"',
        'trusted_proxies[0]: not an IP address or CIDR network: "10.0.0.0/33"',
        'trusted_proxies[1]: not an IP address or CIDR network: "5"',
        'resolver[0]: expected an IP address with an optional port (10.0.0.10:53), found "h:53"',
    ]),
    "route_policies": ("""\
limits: {max_connections_per_ip: -1}
shutdown: {drain_timeout_ms: 1000, spread_ms: 1000}
routes:
 - {path: /a, upstream: "ws://h/", close_profile: IANA, close_codes: {bogus: 1, upstream_reset: 1, client_closed: 1000,
    "": 1}, rate_limit: {}}
 - {path: /b, upstream: "ws://h/", rate_limit: {bytes_per_second: 1, burst_messages: 5, action: drop}}
 - {path: /c, upstream: "ws://h/", rate_limit: {messages_per_second: 0, bytes_per_second: 1099511627777}}
 - {path: /d, upstream: "ws://h/", rate_limit: [], close_codes: []}
""", [
        "limits.max_connections_per_ip: -1 is out of range 0...10000000",
        'routes[0].close_profile: invalid value "IANA" (expected iana | legacy | app)',
        "routes[0].close_codes.bogus: unknown cause",
        "routes[0].close_codes.upstream_reset: 1 is not allowed (use 1000-1003, 1007-1014, 3000-4999, or 1006 to "
        "drop the TCP connection)",
        "routes[0].close_codes.client_closed: cannot be overridden: the code is the one the peer sent",
        'routes[0].close_codes."": unknown cause',
        "routes[0].rate_limit: needs messages_per_second or bytes_per_second",
        'routes[1].rate_limit.action: invalid value "drop" (expected throttle | close)',
        "routes[1].rate_limit.burst_messages: only applies with messages_per_second",
        "routes[2].rate_limit.messages_per_second: 0 is out of range 1...10000000",
        "routes[2].rate_limit.bytes_per_second: 1099511627777 is out of range 1...1099511627776",
        "routes[2].rate_limit: needs messages_per_second or bytes_per_second",
        "routes[3].close_codes: expected a mapping, found a list",
        "routes[3].rate_limit: expected a mapping, found a list",
        "shutdown.spread_ms: must be less than shutdown.drain_timeout_ms (1000), which bounds the whole drain",
    ]),
    "duplicate_keys": _R + "limits: {max_connections: 5, max_connections: 6}\n",
    "merge_key": "<<: {listen: {port: 1}}\n" + _R,
    "undefined_alias": "routes: *nope\n",
    "self_alias": "routes: &a [*a]\n",
    "two_documents": _R + "---\nfoo: 1\n",
    "python_tag": "limits: !!python/object/apply:os.system [true]\n" + _R,
    "bom": ("\ufeff" + _R, []),
    "nul_byte": _R + "limits: {max_connections: \x00}\n",
    "invalid_utf8": b"routes: [{path: /\xff\xfe, upstream: 'builtin:echo'}]\n",
    "invalid_utf8_key": b"\xc3(: 1\n" + _R.encode(),
    "tab_indent": "routes:\n\t- path: /a\n",
    "crlf": (_R.replace("\n", "\r\n") + "limits:\r\n  max_connections: 5\r\n", []),
    "deep_flow_nesting": "[" * 100_000 + "]" * 100_000,
    "deep_block_nesting": "routes:\n" + "- " * 5000 + "x\n",
    "deep_mapping_nesting": "routes: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
    "one_long_line": "routes: " + "a" * 1_000_000 + "\n",
    "long_key": "a" * 100_000 + ": 1\n" + _R,
    "many_unknown_keys": "".join(f"k{i}: {i}\n" for i in range(5_000)) + _R,
    "many_routes": "routes:\n" + "".join(f"  - {{path: /r{i}, upstream: 'ws://h:{i % 65535 + 1}/x'}}\n"
                                           for i in range(5_000)),
    "big_pool": "routes:\n  - path: /p\n    upstreams:\n" + "".join(f"      - ws://h{i}/x\n" for i in range(5_000)),
    "many_duplicate_routes": "routes:\n" + "  - {path: /a, upstream: 'builtin:echo'}\n" * 5_000,
    "huge_ints": "limits: {max_connections: 1180591620717411303424, max_message_bytes: -1180591620717411303424}\n"
                 "close_codes: {upstream_reset: 99999999999999999999999}\n" + _R,
    "int_edges": "limits: {max_connections: 9223372036854775807, max_message_bytes: -9223372036854775808}\n"
                 "listen: {port: 9223372036854775808}\n" + _R,
}


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_tricky_configs(tmp_path, name):
    text, want = TRICKY[name] if isinstance(TRICKY[name], tuple) else (TRICKY[name], None)
    run = check_text(tmp_path, text)
    if want is not None:
        run.expect_problems(want)


# --------------------------------------------------------------------------
# aliases: bombs must be refused as fast as any other config, and an alias
# as a key before it is parsed


def expanded_size(text: str) -> int:
    """The values of a document once its aliases are expanded (as YAMLBounds counts)."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if id(node) not in sizes:
            below = node.value if isinstance(node, yaml.SequenceNode) else [
                n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
            sizes[id(node)] = 1 + sum(map(size, below))
        return sizes[id(node)]

    return size(yaml.compose(text))


def laughs(levels: int, width: int, leaf: str) -> str:
    out = [f"l0: &l0 [{', '.join([leaf] * width)}]"]
    out += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(out) + "\n"


BOMB_SITES = {
    "unused": _R,
    "routes": "routes: *top\n",
    "origins": "routes: [{path: /a, upstream: 'builtin:echo', origins: *top}]\n",
    "forward_headers": "routes: [{path: /a, upstream: 'builtin:echo', forward_headers: *top}]\n",
    "upstreams": "routes: [{path: /a, upstreams: *top}]\n",
    "trusted_proxies": "trusted_proxies: *top\n" + _R,
    "limits": "limits: *top\n" + _R,
    "close_codes": "close_codes: *top\n" + _R,
    "mapping_key": "limits:\n  ? *top\n  : 1\n" + _R,
}


def check_bomb(tmp_path: Path, levels: int, width: int, leaf: str, site: str) -> None:
    text = laughs(levels, width, leaf).replace(f"l{levels - 1}: &l{levels - 1} ", "top: &top ") + BOMB_SITES[site]
    run = check_text(tmp_path, text)
    if site == "mapping_key":
        run.expect_problems([ALIAS_KEY_MSG.format(text.split("\n").index("  ? *top") + 1)])
    elif expanded_size(text) > MAX_VALUES:
        run.expect_problems([TOO_MANY_VALUES_MSG])
    else:
        run.expect("an alias ladder within the bound was refused as a whole",
                   TOO_MANY_VALUES_MSG not in run.problems)


@pytest.mark.parametrize("site", sorted(BOMB_SITES))
def test_billion_laughs(tmp_path, site):
    """9 levels of 9 aliases (9^9 leaves once expanded), used in each place."""
    check_bomb(tmp_path, 9, 9, "[lol]", site)


@fuzz(max_examples=40)
@given(levels=st.integers(1, 12), width=st.integers(1, 12),
       leaf=st.sampled_from(["lol", "[lol]", "{a: 1}", "''", "[]", "{}", "/a", "1"]),
       site=st.sampled_from(sorted(BOMB_SITES)))
def test_alias_ladders(tmp_path, levels, width, leaf, site):
    check_bomb(tmp_path, levels, width, leaf, site)


@pytest.mark.parametrize("size", [MAX_VALUES, MAX_VALUES + 1])
def test_expanded_values_bound(tmp_path, size):
    """Exactly at the bound is read; one value more is refused."""
    head = "x: &x [" + ", ".join(["0"] * 999) + "]\ny: [" + ", ".join(["*x"] * 150) + "]\n" + _R
    pad = size - expanded_size(head + "p: []\n")
    text = head + f"p: [{', '.join(['0'] * pad)}]\n"
    assert expanded_size(text) == size
    run = check_text(tmp_path, text)
    if size > MAX_VALUES:
        run.expect_problems([TOO_MANY_VALUES_MSG])
    else:
        run.expect_problems(["x: unknown key", "y: unknown key", "p: unknown key"])


ALIAS_KEYS = {  # an alias used as a key, and the line it is on
    "explicit_key": ("a: &a x\nlimits:\n  ? *a\n  : 1\n", 3),
    "implicit_key": ("a: &a x\nlimits:\n  *a : 1\n", 3),
    "top_level": ("a: &a x\n*a : 1\n", 2),
    "flow_mapping": ("a: &a x\nlimits: {*a : 1}\n", 2),
    "flow_explicit": ("a: &a x\nlimits: {? *a}\n", 2),
    "flow_pair_in_list": ("a: &a x\nlimits: [*a : 1]\n", 2),
    "in_a_list_item": ("a: &a x\nlimits:\n  - ? *a\n", 3),
    "after_a_comment": ("a: &a x # *b : 1\nlimits:\n  ? *a # c\n  : 1\n", 3),
    "list_alias": ("a: &a [1]\nlimits: {*a : 1}\n", 2),
}


@pytest.mark.parametrize("name", sorted(ALIAS_KEYS))
def test_alias_as_key(tmp_path, name):
    text, line = ALIAS_KEYS[name]
    check_text(tmp_path, text + _R).expect_problems([ALIAS_KEY_MSG.format(line)])


def test_alias_amplified_problems(tmp_path):
    """An 18 KB file whose aliases make 3,000 routes each with 3,000 bad origins
    (nine million problems): refused by the bound, fast and within the memory limit."""
    n = 3000
    text = (f"o: &o [{','.join(['[]'] * n)}]\n"
            "r: &r {path: /a, upstream: 'builtin:echo', origins: *o}\n"
            f"routes: [{','.join(['*r'] * n)}]\n")
    check_text(tmp_path, text).expect_problems([TOO_MANY_VALUES_MSG])


# --------------------------------------------------------------------------
# bugs this fuzzer found, fixed: each case with the problem it must get

FIXED_BUGS = {  # the config, and a problem it must get (None: it is valid)
    # YAMLBounds.aliasUsedAsKey takes `*` after a `?` in plain text for an
    # alias used as a key: a valid config is refused.
    "question_mark_star_in_plain_text": ("routes:\n- path: /\n  upstream: ws://h/x?*\n", None),
    # YAMLBounds.aliasUsedAsKey misses an alias on the line after its `?`, and
    # Yams hashes the expanded key: 8 levels of 9 take 30 s, 9 levels minutes.
    "alias_key_on_the_next_line": ("a: &a [1]\nlimits:\n  ?\n    *a\n  : 1\n" + _R, ALIAS_KEY_RE),
    "alias_key_on_the_next_line_in_flow": ("a: &a [1]\nlimits: {?\n  *a}\n" + _R, ALIAS_KEY_RE),
    # inet_pton and the PEM loaders get C strings: a value is cut at its first NUL.
    "nul_in_trusted_proxy": ('trusted_proxies: ["10.0.0.1\\0junk"]\n' + _R, r"trusted_proxies\[0\]: .*"),
    "nul_in_resolver": ('resolver: ["10.0.0.1\\0junk"]\n' + _R, r"resolver\[0\]: .*"),
    "nul_in_ca_file": ("routes: [{path: /a, upstream: 'wss://h/', tls: {ca_file: \"@@CA@@\\0junk\"}}]\n",
                       r"routes\[0\]\.tls\.ca_file: .*"),
    # A list of names whose items are checked after stringList: the index is
    # the item's among the strings, so the item after a non-string gets [0].
    **{f"index_after_a_non_string_{key.rsplit('.', 1)[-1]}": (text, re.escape(key) + r"\[1\]: .*")
       for key, text in (("trusted_proxies", "trusted_proxies: [[], x]\n" + _R), ("resolver", "resolver: [[], x]\n" + _R),
                         ("log.redact_query", "log: {redact_query: [[], a b]}\n" + _R),
                         ("routes[0].forward_headers", "routes: [{path: /a, upstream: builtin:echo, "
                                                       "forward_headers: [[], a b]}]\n"))},
}


@pytest.mark.parametrize("name", sorted(FIXED_BUGS))
def test_fixed_bugs_stay_fixed(tmp_path, pki, name):
    text, want = FIXED_BUGS[name]
    run = check_text(tmp_path, text.replace("@@CA@@", pki["ca"]))
    if want is None:
        run.expect_ok(1)
    else:
        run.expect("the bug is back", any(re.fullmatch(want, p, re.S) for p in run.problems), want)
