"""The command line and the REST API over a PostgreSQL store chosen by a DSN (real server).

``iotsentry analyze --db DSN`` fills the store, ``iotsentry token create/list --store DSN``
manage tokens, and ``create_app(DSN)`` serves it: every route needs a valid token and the
right scope, as over SQLite (tests/api/test_rest_api.py).
"""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # starlette 1.x warns that its TestClient wants httpx2
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from fastapi import FastAPI

from iotsentry.api.app import create_app
from iotsentry.api.auth import SAFE_METHODS
from iotsentry.cli import main as iotsentry_main
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.store import PostgresStore

pytestmark = pytest.mark.filterwarnings("ignore:.*starlette.testclient.*")


def _concrete(path: str) -> str:
    """A request path for a route template: ``1`` for every ``{parameter}``."""
    out, i = "", 0
    while i < len(path):
        if path[i] == "{":
            i = path.index("}", i) + 1
            out += "1"
        else:
            out += path[i]
            i += 1
    return out


def _endpoints(app: FastAPI) -> list[tuple[str, str]]:
    try:  # FastAPI >= 0.13x keeps included routers as lazy nodes in app.routes
        from fastapi.routing import iter_route_contexts

        routes: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # older FastAPI: app.routes is already flat
        routes = list(app.routes)
    found = []
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        assert path and methods, f"route without path/methods, look at it: {route!r}"
        found += [(method, _concrete(path)) for method in sorted(methods)]
    assert found
    return found


def _public_shell() -> frozenset[str]:
    try:
        from iotsentry.api.ui_static import SHELL_PATHS
    except ImportError:  # no dashboard: every route needs a token
        return frozenset()
    return frozenset(SHELL_PATHS)


def test_cli_and_api_over_postgres(
    pg_schema_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pcap = tmp_path / "home.pcap"
    generate_home(pcap, seed=7)
    out = tmp_path / "out"
    argv = ["analyze", str(pcap), "--out-dir", str(out), "--site", "demo", "--db", pg_schema_dsn]
    assert iotsentry_main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"]["db"] == pg_schema_dsn  # no password in it to hide
    assert not (out / "iotsentry.db").exists()  # nothing went to the default SQLite file

    assert (
        iotsentry_main(["token", "create", "--name", "alice", "--scope", "admin", "--store", pg_schema_dsn])
        == 0
    )
    admin = capsys.readouterr().out.strip()
    assert (
        iotsentry_main(["token", "create", "--name", "dash", "--scope", "read", "--store", pg_schema_dsn])
        == 0
    )
    read = capsys.readouterr().out.strip()
    assert iotsentry_main(["token", "list", "--json", "--store", pg_schema_dsn]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == ["alice", "dash"]

    app = create_app(pg_schema_dsn)
    assert isinstance(app.state.store, PostgresStore)
    with TestClient(app) as client:  # the lifespan closes the store the app opened
        devices = client.get("/devices", headers={"Authorization": f"Bearer {read}"}).json()
        assert devices["total"] == len(report["devices"]) > 0
        alerts = client.get("/alerts", headers={"Authorization": f"Bearer {read}"}).json()
        assert alerts["total"] > 0
        health = client.get("/health", headers={"Authorization": f"Bearer {read}"}).json()
        assert health["status"] == "ok" and health["store_reachable"]

        endpoints = _endpoints(app)
        assert ("POST", "/alerts/1/ack") in endpoints and ("GET", "/devices") in endpoints
        # the dashboard's static shell (no data) is public; tests/api checks it, on any store
        endpoints = [(m, p) for m, p in endpoints if not (m == "GET" and p in _public_shell())]
        bad_headers: list[dict[str, str]] = [
            {},
            {"Authorization": "Bearer iots_not-a-real-token"},
            {"Authorization": f"Basic {read}"},
            {"Authorization": "Bearer " + "x" * 5000},
        ]
        for method, path in endpoints:
            for headers in bad_headers:
                r = client.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
            r = client.request(
                method, path, headers={"Authorization": f"Bearer {read}"}, json={"assignee": "x"}
            )
            if method in SAFE_METHODS:
                assert r.status_code not in (401, 403), (method, path, r.text)
            else:
                assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path, r.text)
            r = client.request(
                method, path, headers={"Authorization": f"Bearer {admin}"}, json={"assignee": "x"}
            )
            assert r.status_code not in (401, 403), (method, path, r.text)
        first = alerts["items"][0]["id"]
        r = client.post(f"/alerts/{first}/ack", headers={"Authorization": f"Bearer {admin}"}, json={})
        assert r.status_code == 200 and r.json()["acknowledged"] is True
        # incidents: what analyze folded (the same ids as its JSON report), and an expected mark
        incidents = client.get("/incidents", headers={"Authorization": f"Bearer {read}"}).json()
        assert sorted(i["incident_id"] for i in incidents["items"]) == sorted(
            i["incident_id"] for i in report["incidents"]
        )
        inc = incidents["items"][0]["incident_id"]
        r = client.post(
            f"/incidents/{inc}/expected",
            headers={"Authorization": f"Bearer {admin}"},
            json={"scope": "group"},
        )
        assert r.status_code == 200 and r.json()["status"] == "expected"
        assert [(f["action"], f["scope"]) for f in r.json()["feedback"]] == [("absorb", "group")]
    assert iotsentry_main(["incidents", "reopen", inc, "--db", pg_schema_dsn, "--as", "bob"]) == 0
    capsys.readouterr()
    assert iotsentry_main(["incidents", "show", inc, "--db", pg_schema_dsn, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "open" and [f["action"] for f in shown["feedback"]] == ["absorb", "revert"]


def test_cli_reports_an_unreachable_dsn_in_one_line_without_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"postgresql://iot:s3cret@127.0.0.1:{port}/iotsentry"
    for argv in (
        ["token", "list", "--store", dsn],
        ["token", "create", "--name", "a", "--scope", "read", "--store", dsn],
    ):
        assert iotsentry_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "s3cret" not in err and len(err.splitlines()) == 1, err
        assert f"postgresql://iot:***@127.0.0.1:{port}/iotsentry" in err and "cannot connect" in err
