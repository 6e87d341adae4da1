"""The command line: check-config, --help, --version, bad config at startup."""

from __future__ import annotations

import subprocess

import pytest

from conftest import BIN, REPO, base_config, clean_env, to_yaml


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
    assert r.returncode == 1
    assert "routes" in r.stderr


def test_check_config_unreadable_file(tmp_path):
    r = wsgate("check-config", "--config", str(tmp_path / "does-not-exist.yaml"))
    assert r.returncode == 1
    assert r.stderr.strip()


def test_serve_refuses_bad_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BAD)
    r = wsgate("serve", "--config", str(cfg))
    assert r.returncode != 0


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version(flag):
    r = wsgate(flag)
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).strip()
