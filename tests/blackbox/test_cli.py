"""The command line: check-config, --help, --version, bad config at startup."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import BIN, REPO, base_config, clean_env, to_yaml

VERSION_SWIFT = REPO / "Sources" / "WSGatePolicy" / "Support" / "Version.swift"


def source_version() -> str:
    """The version string the binary is built with (WSGateVersion.string)."""
    m = re.search(r'static let string = "([^"]+)"', VERSION_SWIFT.read_text())
    assert m, f"no version string in {VERSION_SWIFT}"
    return m.group(1)


def wsgate(*args, cwd=None, env=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=20,
                          cwd=cwd, env=env or clean_env())


def test_check_config_good_file(upstreams, tmp_path):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(to_yaml(base_config(upstreams)) + "\n")
    r = wsgate("check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr


def test_check_config_shipped_default(tmp_path):
    r = wsgate("check-config", "--config", str(REPO / "config" / "wsgate.yaml"))
    assert r.returncode == 0, r.stderr


BAD = """\
listen:
  host: 127.0.0.1
  port: 0
limits:
  max_conections: 10
routes:
  - path: /echo
    upstream: builtin:echo
  - path: /ok
    upstream: builtin:echo
  - path: /files
    upstream: ftp://127.0.0.1:21/x
"""


def test_check_config_bad_file_names_every_problem(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BAD)
    r = wsgate("check-config", "--config", str(cfg))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "limits.max_conections" in r.stderr, r.stderr
    assert "routes[2].upstream" in r.stderr, r.stderr


def test_check_config_missing_routes(tmp_path):
    cfg = tmp_path / "noroutes.yaml"
    cfg.write_text("listen:\n  port: 0\n")
    r = wsgate("check-config", "--config", str(cfg))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "routes" in r.stderr


def test_check_config_unreadable_file(tmp_path):
    r = wsgate("check-config", "--config", str(tmp_path / "does-not-exist.yaml"))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip()


def test_serve_refuses_bad_config(tmp_path):
    """Exit 1 (not a crash: a signal would give a negative status), with one
    JSON `config_error` line per problem on stdout and nothing else."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BAD)
    r = wsgate("serve", "--config", str(cfg))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = [json.loads(l) for l in r.stdout.splitlines()]  # only JSON lines on stdout
    assert lines and all(l.get("event") == "config_error" and l.get("level") == "error" for l in lines), lines
    assert {l.get("key") for l in lines} >= {"limits.max_conections", "routes[2].upstream"}, lines
    assert not any(l.get("event") == "listening" for l in lines)


def test_help():
    r = wsgate("--help")
    assert r.returncode == 0, r.stderr
    assert "USAGE:" in r.stdout and "check-config" in r.stdout and "healthcheck" in r.stdout, r.stdout


def test_version_prints_the_built_version():
    r = wsgate("--version")
    assert r.returncode == 0, r.stderr
    version = source_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", version), version
    assert r.stdout == f"{version}\n", (r.stdout, r.stderr)
