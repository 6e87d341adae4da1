"""The client compatibility matrix as a test (matrix.py does the running).

One run drives every client in matrix.CLIENTS through every row, profile,
feature and refusal; the tests below then check, from that one run:

* the gateway's side: each connection's `websocket_close` line has the cause,
  code (after the route's profile), reason and clean flag the README promises;
* each client's side: at least one profile shows it every cause (KNOWN_LIMITS
  lists the rows no profile can fix, with the evidence; the README repeats it);
* the features every library has an API for work through the gateway;
* docs/clients.md is what this run renders (`WSGATE_WRITE_CLIENTS=1`, which
  scripts/clients sets, writes it instead; only a full run may write it).

A client that does not build or run fails the suite: CI never skips one.
"""

from __future__ import annotations

import difflib
import os

import pytest

import matrix as m

KNOWN_LIMITS = m.KNOWN_LIMITS


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    obs, versions, problems = m.Matrix().run(tmp_path_factory.mktemp("clients"))
    if os.environ.get("WSGATE_CLIENTS_DUMP"):  # the raw observations, for a look
        import dataclasses
        import json
        with open(os.environ["WSGATE_CLIENTS_DUMP"], "w") as f:
            json.dump({"versions": versions, "problems": problems, "obs": [dataclasses.asdict(o) for o in obs]}, f,
                      ensure_ascii=False)
    return obs, versions, problems


def by_key(obs):
    return {(o.client, o.key, o.profile): o for o in obs}


def test_gateways_ran_clean(run):
    _, _, problems = run
    assert problems == []


@pytest.mark.parametrize("client", m.CLIENTS)
def test_every_case_has_a_result_and_a_log_line(run, client):
    obs = [o for o in run[0] if o.client == client]
    expected = len(m.ROWS) * len(m.PROFILES) + len(m.FEATURES) + len(m.REJECTS)
    assert len(obs) == expected
    missing = [f"{o.key}/{o.profile}: {o.result.get('error')}" for o in obs if o.result.get("missing")]
    assert missing == []
    unmatched = [f"{o.key}/{o.profile}" for o in obs if o.line is None]
    assert unmatched == []
    timeouts = [f"{o.key}/{o.profile}" for o in obs if o.result.get("timeout")]
    assert timeouts == []


@pytest.mark.parametrize("profile", m.PROFILES)
def test_log_lines_follow_the_close_table(run, profile):
    """The gateway's own record, whatever the client made of it."""
    wrong = []
    for o in run[0]:
        row = next((r for r in m.ROWS if r.key == o.key), None)
        if row is None or o.profile != profile or o.line is None:
            continue
        l = o.line
        want_reason_ok = (l.get("reason") == row.reason if row.reason is not None
                          else str(l.get("reason")).startswith(row.reason_prefix))
        # `was_clean` also depends on the client: one that fails the connection
        # instead of answering the close frame (gorilla on 1014, OkHttp on
        # 1012-1014) leaves it false. Only a row that can never be clean is checked.
        clean_ok = row.clean or l.get("was_clean") is False
        if (l.get("cause"), l.get("code")) != (row.cause, m.mapped(row.code, profile)) or not clean_ok \
                or not want_reason_ok:
            wrong.append(f"{o.client} {row.key}: {l.get('cause')} {l.get('code')} {l.get('reason')!r} "
                         f"clean={l.get('was_clean')}")
    assert wrong == []


@pytest.mark.parametrize("client", m.CLIENTS)
def test_some_profile_shows_the_client_every_cause(run, client):
    obs = by_key(run[0])
    best = {}
    for p in m.PROFILES:
        hidden = [r.key for r in m.ROWS if (client, r.key) not in KNOWN_LIMITS
                  and not m.faithful(obs[(client, r.key, p)])]
        best[p] = hidden
    assert any(not hidden for hidden in best.values()), best


def test_known_limits_are_still_real(run):
    """A limit that no longer shows (a library fixed it) must leave the list."""
    obs = by_key(run[0])
    for (client, key), why in KNOWN_LIMITS.items():
        assert not any(m.faithful(obs[(client, key, p)]) for p in m.PROFILES), why


@pytest.mark.parametrize("client", m.CLIENTS)
def test_features_work_where_the_library_has_an_api(run, client):
    obs = by_key(run[0])
    verdicts = {f.key: m.feature_ok(obs[(client, f.key, "iana")]) for f in m.FEATURES}
    assert [f"{k}: {v}" for k, v in verdicts.items() if "✗" in v] == []
    # every library receives what the upstream fragmented, and every one that can offer subprotocols gets one
    assert verdicts["subprotocol"] in ("✓", "n/a") and verdicts["fragments"].startswith("received ✓")


@pytest.mark.parametrize("client", m.CLIENTS)
def test_refusals_before_the_upgrade(run, client):
    obs = by_key(run[0])
    for rj in m.REJECTS:
        o = obs[(client, rj.key, "-")]
        assert o.line is not None and o.line.get("status") == rj.status
        assert o.result.get("opened") is False
        status = o.result.get("status")
        assert status in (rj.status, None), status
        if status is None:  # a library that hides the status must say so
            assert "status" in (o.result.get("unsupported") or []), o.result


def test_docs_clients_md(run):
    obs, versions, problems = run
    text = m.render(obs, versions)
    if os.environ.get("WSGATE_WRITE_CLIENTS") == "1":
        assert problems == [] and set(versions) == set(m.CLIENTS), "only a full, clean run writes the doc"
        m.DOC.write_text(text)
        return
    current = m.DOC.read_text() if m.DOC.exists() else ""
    diff = "".join(difflib.unified_diff(current.splitlines(True), text.splitlines(True), "docs/clients.md", "this run"))
    assert text == current, "docs/clients.md differs from this run (scripts/clients regenerates it):\n" + diff
