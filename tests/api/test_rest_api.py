"""The REST API over a store filled by the real analysis of the generated smart-home capture."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # starlette 1.x warns that its TestClient wants httpx2
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from fastapi import FastAPI

from iotsentry.alerts.policy import alert_dedup_key
from iotsentry.api import api_cli
from iotsentry.api.alerts import decode_cursor, encode_cursor
from iotsentry.api.app import create_app
from iotsentry.api.auth import SAFE_METHODS, Authenticator
from iotsentry.api.tokens import create_token, hash_token, parse_duration
from iotsentry.api.ui_static import SHELL_PATHS
from iotsentry.cli import main as iotsentry_main
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.schema import Alert, Device
from iotsentry.store import MIGRATIONS, Store, schema_version

pytestmark = pytest.mark.filterwarnings("ignore:.*starlette.testclient.*")

INFECTED = "28:57:be:1e:8f:ed"  # the camera generate_home(seed=7) infects


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analysed_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by `iotsentry analyze` on the demo capture (never modified: copy it)."""
    out = tmp_path_factory.mktemp("analysed")
    pcap = out / "home.pcap"
    generate_home(pcap, seed=7)
    assert iotsentry_main(["analyze", str(pcap), "--out-dir", str(out), "--site", "demo"]) == 0
    return out / "iotsentry.db"


@pytest.fixture
def db(analysed_db: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "iotsentry.db"
    shutil.copy(analysed_db, dst)
    return dst


class Api:
    """A test client with an admin and a read token."""

    def __init__(self, store: Store, app: FastAPI) -> None:
        self.store = store
        self.app = app
        self.client = TestClient(app)
        self.admin_token, _ = create_token(store, "alice", "admin")
        self.read_token, _ = create_token(store, "dashboard", "read")

    def h(self, token: str | None) -> dict[str, str]:
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    def get(self, path: str, token: str | None = "read", **kw: Any) -> Any:
        tok = {"read": self.read_token, "admin": self.admin_token}.get(token or "", token)
        return self.client.get(path, headers=self.h(tok), **kw)

    def post(self, path: str, token: str | None = "admin", **kw: Any) -> Any:
        tok = {"read": self.read_token, "admin": self.admin_token}.get(token or "", token)
        return self.client.post(path, headers=self.h(tok), **kw)


@pytest.fixture
def api(db: Path) -> Iterator[Api]:
    store = Store(db)
    try:
        yield Api(store, create_app(store))
    finally:
        store.close()


def _concrete(path: str) -> str:
    """A request path for a route template: ``1`` for every parameter (ids are integers or strings)."""
    out, i = "", 0
    while i < len(path):
        if path[i] == "{":
            j = path.index("}", i)
            out += "1"
            i = j + 1
        else:
            out += path[i]
            i += 1
    return out


def _endpoints(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app routes, included routers flattened.

    A route without methods (a mount, a websocket) fails: a new kind of route must be looked at.
    """
    try:  # FastAPI >= 0.13x keeps included routers as lazy nodes in app.routes
        from fastapi.routing import iter_route_contexts

        routes: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # older FastAPI: app.routes is already flat
        routes = list(app.routes)
    found = []
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        assert path and methods, f"route without path/methods, look at it: {route!r}"
        for method in sorted(methods):
            found.append((method, _concrete(path)))
    assert found
    return found


# -- authentication and scopes -----------------------------------------------------------------------


# The ONLY exception to "every route needs a token": GET of the web dashboard's static shell
# (HTML/JS/CSS, no data; see iotsentry.api.ui_static). Listed here literally, on purpose.
DASHBOARD_SHELL = frozenset({"/ui", "/ui/", "/ui/index.html", "/ui/app.js", "/ui/style.css"})


def test_every_route_needs_a_valid_token_and_the_right_scope(api: Api) -> None:
    app = api.app
    assert app.docs_url is None and app.redoc_url is None and app.openapi_url is None
    endpoints = _endpoints(app)
    paths = {p for _, p in endpoints}
    assert {"/openapi.json", "/docs", "/health", "/devices", "/alerts", "/models", "/runs"} <= paths
    assert "/whoami" in paths
    assert ("POST", "/alerts/1/ack") in endpoints and ("POST", "/alerts/1/assign") in endpoints
    assert SHELL_PATHS == DASHBOARD_SHELL
    public = {("GET", p) for p in DASHBOARD_SHELL}
    assert public <= set(endpoints)
    assert {(m, p) for m, p in endpoints if p.startswith("/ui")} == public  # nothing else under /ui
    endpoints = [e for e in endpoints if e not in public]  # checked in test_only_the_dashboard_shell_...
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer iots_not-a-real-token"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {api.read_token}"},
        {"Authorization": api.read_token},
        {"Authorization": "Bearer " + "x" * 5000},
    ]
    for method, path in endpoints:
        for headers in bad_headers:
            r = api.client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = api.client.request(method, path, headers=api.h(api.read_token), json={"assignee": "x"})
        if method in SAFE_METHODS:
            assert r.status_code not in (401, 403), (method, path, r.text)
        else:
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"] == "forbidden"
        r = api.client.request(method, path, headers=api.h(api.admin_token), json={"assignee": "x"})
        assert r.status_code not in (401, 403), (method, path, r.text)


def test_only_the_dashboard_shell_is_served_without_a_token(api: Api) -> None:
    device_ids = [d["device_id"] for d in api.get("/devices").json()["items"]]
    assert device_ids
    for path in sorted(DASHBOARD_SHELL):
        r = api.client.get(path, headers={}, follow_redirects=False)
        if path == "/ui":
            assert r.status_code == 307 and r.headers["location"] == "/ui/"
            continue
        assert r.status_code == 200, (path, r.text)
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert not any(d in r.text for d in device_ids)  # the shell holds no data
        for method in ("POST", "PUT", "DELETE", "PATCH"):  # only GET is allowed without a token
            assert api.client.request(method, path, headers={}).status_code == 401, (method, path)
    assert api.client.get("/ui/", headers={}).headers["content-type"].startswith("text/html")
    assert api.client.get("/ui/app.js", headers={}).headers["content-type"].startswith("text/javascript")
    # exact paths only: no prefix, pattern or path trick reaches anything else without a token
    for path in ("/ui/x", "/ui/app.js/", "/ui//app.js", "/UI/", "/ui/../devices", "/ui/%2e%2e/devices",
                 "/ui/app.js/../../devices", "/uix", "/ui/index.html?x=/devices"):  # fmt: skip
        r = api.client.get(path, headers={})
        if path.startswith("/ui/index.html?"):
            assert r.status_code == 200
        else:
            assert r.status_code == 401, (path, r.text)
    r = api.client.head("/ui/", headers={})
    assert r.status_code == 401
    # the dashboard's own data route needs a token like every other
    assert api.get("/whoami", token=None).status_code == 401
    assert api.get("/whoami").json() == {"name": "dashboard", "scope": "read"}
    assert api.get("/whoami", token="admin").json() == {"name": "alice", "scope": "admin"}


def test_a_route_added_later_without_dependencies_is_still_protected(api: Api) -> None:
    @api.app.get("/added-later")
    def added() -> dict[str, str]:
        return {"open": "no"}

    @api.app.delete("/added-later")
    def removed() -> dict[str, str]:
        return {"open": "no"}

    assert api.get("/added-later", token=None).status_code == 401
    assert api.get("/added-later").status_code == 200
    assert api.client.delete("/added-later", headers=api.h(api.read_token)).status_code == 403
    assert api.client.delete("/added-later", headers=api.h(api.admin_token)).status_code == 200


def test_unknown_paths_and_methods_need_a_token_too(api: Api) -> None:
    assert api.get("/no/such/path", token=None).status_code == 401
    assert api.client.put("/devices", headers={}).status_code == 401
    r = api.get("/no/such/path")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = api.client.put("/devices", headers=api.h(api.admin_token))
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_openapi_and_docs_need_a_token(api: Api) -> None:
    assert api.get("/openapi.json", token=None).status_code == 401
    assert api.get("/docs", token=None).status_code == 401
    spec = api.get("/openapi.json").json()
    assert "/alerts/{alert_id}/ack" in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    page = api.get("/docs")
    assert (
        page.status_code == 200
        and "SwaggerUIBundle" in page.text
        and "</script" not in page.text.split("SwaggerUIBundle({")[1].split("});")[0]
    )


def test_revoked_and_expired_tokens_are_refused(api: Api) -> None:
    tok, rec = create_token(api.store, "temp", "admin")
    assert api.get("/health", token=tok).status_code == 200
    assert api.store.revoke_api_token(rec.id)
    r = api.get("/health", token=tok)
    assert r.status_code == 401 and r.json()["detail"] == "token revoked"
    assert api.post("/alerts/1/ack", token=tok).status_code == 401
    # the name can be reused once the old token is revoked; the old secret stays dead
    tok2, _ = create_token(api.store, "temp", "read")
    assert api.get("/health", token=tok2).status_code == 200
    assert api.get("/health", token=tok).status_code == 401
    with pytest.raises(ValueError, match="exists"):
        create_token(api.store, "temp", "read")

    old, _ = create_token(api.store, "short", "read", expires_in_s=60, now=time.time() - 120)
    r = api.get("/health", token=old)
    assert r.status_code == 401 and r.json()["detail"] == "token expired"
    fresh, _ = create_token(api.store, "fresh", "read", expires_in_s=3600)
    assert api.get("/health", token=fresh).status_code == 200
    # with a clock one hour and a bit later the same token has expired
    later = create_app(api.store, authenticator=Authenticator(api.store, clock=lambda: time.time() + 3601))
    r = TestClient(later).get("/health", headers=api.h(fresh))
    assert r.status_code == 401 and r.json()["detail"] == "token expired"


def test_tokens_are_stored_hashed_and_last_use_recorded(api: Api, db: Path) -> None:
    assert api.get("/health").status_code == 200
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT name, token_hash, scope, last_used_at FROM api_tokens").fetchall()
    conn.close()
    by_name = {r[0]: r for r in rows}
    assert by_name["dashboard"][1] == hash_token(api.read_token)
    assert api.read_token not in json.dumps(rows)
    assert by_name["dashboard"][3] is not None
    assert len(api.read_token) == len("iots_") + 43


def test_parse_duration() -> None:
    assert parse_duration("90") == 90 and parse_duration("15m") == 900 and parse_duration("2w") == 1209600
    for bad in ("", "0", "-5", "1y", "abc"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- resources ----------------------------------------------------------------------------------------


def _all_pages(api: Api, path: str, limit: int, **params: Any) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    offset, total = 0, None
    while True:
        r = api.get(path, params={**params, "limit": limit, "offset": offset})
        assert r.status_code == 200, r.text
        body = r.json()
        assert total is None or body["total"] == total
        total = body["total"]
        items += body["items"]
        if not body["items"]:
            break
        offset += limit
    assert total is not None
    return items, total


def test_devices_pagination_and_filters(api: Api) -> None:
    items, total = _all_pages(api, "/devices", 2)
    ids = [d["device_id"] for d in items]
    assert total == len(ids) == len(set(ids)) == len(api.store.get_devices()) >= 5
    assert ids == sorted(ids)
    cams = api.get("/devices", params={"type": "camera"}).json()
    assert [d["device_id"] for d in cams["items"]] == [INFECTED] and cams["total"] == 1
    assert cams["items"][0]["open_alerts"] >= 1 and cams["items"][0]["maturity"] is not None
    hik = api.get("/devices", params={"vendor": "HIKVISION"}).json()
    assert hik["total"] == 1
    assert api.get("/devices", params={"vendor": "%"}).json()["total"] == 0  # LIKE wildcards are literal
    mature = api.get("/devices", params={"mature": True}).json()["total"]
    immature = api.get("/devices", params={"mature": False}).json()["total"]
    assert mature + immature == total
    gw = api.get("/devices", params={"is_gateway": True}).json()
    assert gw["total"] == 1 and gw["items"][0]["is_gateway"]
    assert api.get("/devices", params={"q": "192.168.1.107"}).json()["items"][0]["device_id"] == INFECTED


def test_one_device_with_its_latest_baseline(api: Api) -> None:
    d = api.get(f"/devices/{INFECTED}").json()
    assert d["device_id"] == INFECTED and d["vendor"].startswith("Hangzhou Hikvision")
    assert d["baseline"]["profile"]["device_id"] == INFECTED
    assert d["baseline"]["maturity"] == d["maturity"]
    r = api.get("/devices/00:00:00:00:00:00")
    assert r.status_code == 404 and r.json() == {
        "error": "not_found",
        "detail": "device '00:00:00:00:00:00' not found",
    }


def test_baselines(api: Api) -> None:
    items, total = _all_pages(api, "/baselines", 4)
    assert total == len(items) == len(api.store.latest_baselines())
    assert all(b["profile"] is None for b in items)
    full = api.get("/baselines", params={"include_profile": True, "limit": 1}).json()
    assert full["items"][0]["profile"]
    hist = api.get(f"/baselines/{INFECTED}").json()
    assert hist["total"] == 1 and hist["items"][0]["profile"]["device_id"] == INFECTED
    assert api.get("/baselines/unknown-device").status_code == 404


def test_runs_and_health(api: Api) -> None:
    runs = api.get("/runs").json()
    assert runs["total"] == 1 and runs["items"][0]["status"] == "ok"
    run_id = runs["items"][0]["id"]
    assert api.get(f"/runs/{run_id}").json()["stats"]["devices"] == runs["items"][0]["stats"]["devices"]
    assert api.get("/runs", params={"status": "failed"}).json()["total"] == 0
    assert api.get("/runs/999").status_code == 404
    assert api.get("/runs/abc").status_code == 422
    h = api.get("/health").json()
    assert h == {
        "status": "ok",
        "store_reachable": True,
        "schema_version": len(MIGRATIONS),
        "expected_schema_version": len(MIGRATIONS),
        "error": None,
    }


def test_alerts_pagination_offset_and_cursor_agree(api: Api) -> None:
    everything = api.get("/alerts", params={"limit": 1000}).json()
    total = everything["total"]
    assert total == len(everything["items"]) >= 4 and everything["next_cursor"] is None
    by_offset, t2 = _all_pages(api, "/alerts", 2)
    assert t2 == total and [a["id"] for a in by_offset] == [a["id"] for a in everything["items"]]
    by_cursor: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        body = api.get("/alerts", params=params).json()
        assert body["total"] == total
        by_cursor += body["items"]
        if body["next_cursor"] is None:
            break
        params = {"limit": 2, "cursor": body["next_cursor"]}
    assert [a["id"] for a in by_cursor] == [a["id"] for a in everything["items"]]
    last = [(a["last_ts"], a["id"]) for a in by_cursor]
    assert last == sorted(last, reverse=True)
    assert decode_cursor(encode_cursor(1.5, 7)) == (1.5, 7)


def test_alert_filters(api: Api) -> None:
    all_alerts = api.get("/alerts", params={"limit": 1000}).json()["items"]
    assert {a["device_id"] for a in all_alerts} == {INFECTED}
    for sev in (1, 2, 3):
        got = api.get("/alerts", params={"severity": sev, "limit": 1000}).json()
        assert got["total"] == sum(a["severity"] == sev for a in all_alerts)
    both = api.get("/alerts", params=[("severity", 1), ("severity", 3)]).json()["total"]
    assert both == sum(a["severity"] in (1, 3) for a in all_alerts)
    cats = {a["category"] for a in all_alerts}
    assert {"scan", "flood", "c2"} <= cats
    assert api.get("/alerts", params={"category": "c2"}).json()["total"] == 1
    assert api.get("/alerts", params={"device_id": INFECTED}).json()["total"] == len(all_alerts)
    assert api.get("/alerts", params={"device_id": "nobody"}).json()["total"] == 0
    # time range: active in [since, until]
    mid = sorted(a["last_ts"] for a in all_alerts)[len(all_alerts) // 2]
    since = api.get("/alerts", params={"since": mid}).json()["total"]
    assert since == sum(a["last_ts"] >= mid for a in all_alerts)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(mid)))
    assert api.get("/alerts", params={"since": iso}).json()["total"] >= since
    until = api.get("/alerts", params={"until": mid}).json()["total"]
    assert until == sum(a["first_ts"] <= mid for a in all_alerts)
    assert api.get("/alerts", params={"since": mid + 1, "until": mid}).status_code == 422
    summary = api.get("/alerts/summary").json()
    assert summary["total"] == len(all_alerts) and summary["open"] == len(all_alerts)
    assert sum(c["total"] for c in summary["by_category"]) == len(all_alerts)


def test_bad_parameters_are_422_with_json_errors(api: Api) -> None:
    for path in (
        "/alerts?limit=1001",
        "/alerts?limit=0",
        "/alerts?offset=-1",
        "/alerts?severity=0",
        "/alerts?since=yesterday",
        "/alerts?acknowledged=maybe",
        "/alerts?cursor=%%%",
        "/devices?min_maturity=2",
        "/devices?limit=100000",
        "/alerts/0",
        "/alerts/abc",
    ):
        r = api.get(path)
        assert r.status_code == 422, (path, r.text)
        body = r.json()
        assert body["error"] == "validation_error" and isinstance(body["detail"], list), body
    cursor = api.get("/alerts", params={"limit": 1}).json()["next_cursor"]
    assert api.get("/alerts", params={"limit": 1, "offset": 1, "cursor": cursor}).status_code == 422
    assert api.get("/alerts/999999").status_code == 404
    assert api.post("/alerts/1/assign", json={}).status_code == 422
    assert api.post("/alerts/1/assign", json={"assignee": "bob", "extra": 1}).status_code == 422
    assert api.post("/alerts/1/assign", json={"assignee": ""}).status_code == 422
    assert api.post("/alerts/1/ack", json={"note": "x" * 3000}).status_code == 422
    assert api.post("/alerts/999999/ack").status_code == 404
    assert api.post("/alerts/999999/assign", json={"assignee": "bob"}).status_code == 404


def test_acknowledge_and_assign_are_recorded_persisted_and_filterable(api: Api, db: Path) -> None:
    alerts = api.get("/alerts", params={"limit": 1000}).json()["items"]
    first, second = alerts[0]["id"], alerts[1]["id"]
    t0 = time.time()
    r = api.post(f"/alerts/{first}/ack", json={"note": "looked at it"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["acknowledged"] and body["acknowledged_by"] == "alice" and body["acknowledged_at"] >= t0
    assert body["history"][-1]["action"] == "acknowledge" and body["history"][-1]["note"] == "looked at it"
    r = api.post(f"/alerts/{second}/assign", json={"assignee": "Bob Builder"})
    assert r.json()["assignee"] == "Bob Builder" and r.json()["assigned_by"] == "alice"
    # a read token may not change anything
    assert api.post(f"/alerts/{second}/ack", token="read").status_code == 403
    assert api.get(f"/alerts/{second}").json()["acknowledged"] is False

    acked = api.get("/alerts", params={"acknowledged": True}).json()
    assert [a["id"] for a in acked["items"]] == [first] and acked["total"] == 1
    assert api.get("/alerts", params={"acknowledged": False}).json()["total"] == len(alerts) - 1
    assert [a["id"] for a in api.get("/alerts", params={"assignee": "Bob Builder"}).json()["items"]] == [
        second
    ]
    assert api.get("/alerts", params={"assigned": True}).json()["total"] == 1
    assert api.get("/alerts", params={"assigned": False}).json()["total"] == len(alerts) - 1
    assert api.get("/alerts/summary").json()["open"] == len(alerts) - 1
    dev = api.get(f"/devices/{INFECTED}").json()
    assert dev["open_alerts"] == dev["alerts"] - 1

    # re-open and unassign are recorded too
    api.post(f"/alerts/{first}/ack", json={"acknowledged": False})
    api.post(f"/alerts/{second}/assign", json={"assignee": None, "note": "not mine"})
    detail = api.get(f"/alerts/{first}").json()
    assert not detail["acknowledged"] and detail["acknowledged_by"] is None
    assert [h["action"] for h in detail["history"]] == ["acknowledge", "unacknowledge"]
    assert all(h["actor"] == "alice" and h["at"] >= t0 for h in detail["history"])
    api.post(f"/alerts/{first}/ack")

    # persisted: a fresh store and app over the same file see it all
    api.store.close()
    with Store(db) as store:
        again = TestClient(create_app(store))
        h = {"Authorization": f"Bearer {api.read_token}"}
        d1 = again.get(f"/alerts/{first}", headers=h).json()
        d2 = again.get(f"/alerts/{second}", headers=h).json()
    assert d1["acknowledged"] and d1["acknowledged_by"] == "alice" and len(d1["history"]) == 3
    assert d2["assignee"] is None and [x["action"] for x in d2["history"]] == ["assign", "unassign"]
    assert d2["history"][0]["value"] == "Bob Builder" and d2["history"][1]["note"] == "not mine"
    api.store = Store(db)  # the fixture closes it


def test_models_signature_status(api: Api, tmp_path: Path) -> None:
    from iotsentry.integrity.signing import generate_keypair, sign_model_dir, trust_key

    keys = tmp_path / "keys"
    key = trust_key(keys, generate_keypair(keys))
    models = tmp_path / "models"
    for name in ("good", "tampered", "unsigned"):
        d = models / name
        d.mkdir(parents=True)
        (d / "manifest.json").write_text(json.dumps({"detector": name, "version": "1"}))
        (d / "weights.npz").write_bytes(b"weights")
    assert key.private_key_path is not None
    sign_model_dir(models / "good", key.private_key_path)
    sign_model_dir(models / "tampered", key.private_key_path)
    (models / "tampered" / "weights.npz").write_bytes(b"evil!!!")
    (models / "not-a-model").mkdir()

    client = TestClient(create_app(api.store, model_dirs=[models], trusted_keys=keys))
    h = {"Authorization": f"Bearer {api.read_token}"}
    listed = {m["name"]: m for m in client.get("/models", headers=h).json()}
    assert set(listed) == {"good", "tampered", "unsigned"}
    assert listed["good"]["signature"]["status"] == "verified"
    assert listed["good"]["signature"]["key_id"] == key.key_id
    assert listed["good"]["manifest"] == {"detector": "good", "version": "1"}
    assert listed["tampered"]["signature"]["status"] == "invalid"
    assert "altered" in listed["tampered"]["signature"]["error"]
    assert listed["unsigned"]["signature"]["status"] == "unsigned"
    assert client.get("/models/good", headers=h).json()["signature"]["status"] == "verified"
    assert client.get("/models/nope", headers=h).status_code == 404
    assert client.get("/models", headers={}).status_code == 401
    # without a trust store signatures are reported, not trusted
    plain = TestClient(create_app(api.store, model_dirs=[models / "good"]))
    assert plain.get("/models", headers=h).json()[0]["signature"]["status"] == "not_checked"


# -- migration of an old store -------------------------------------------------------------------------


def _legacy_insert(store: Store, run: int, a: Alert) -> None:
    """An alert row as the first schema held it (before incidents and event types)."""
    with store._tx() as c:
        c.execute(
            "INSERT INTO alerts (run_id, ts, device_id, site_id, detector, detector_version, category,"
            " severity, score, threshold, src_ip, src_port, dest_ip, dest_port, proto, flow_id, reason,"
            " eve, dedup_key, count, first_ts, last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?, ?, ?, 1, ?, ?)",
            (run, a.timestamp, a.device_id, a.site_id, a.detector, a.detector_version, a.category,
             a.severity, a.score, a.threshold, a.src_ip, a.src_port, a.dest_ip, a.dest_port, a.proto,
             a.flow_id, a.reason, json.dumps(a.to_eve(), separators=(",", ":")), alert_dedup_key(a),
             a.timestamp, a.timestamp),
        )  # fmt: skip


def test_an_old_schema_store_migrates_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with Store(path, migrations=MIGRATIONS[:1]) as old:
        assert old.version == 1
        run = old.start_run("analyze", ["x.pcap"])
        old.upsert_devices(
            [Device("aa:bb:cc:00:00:01", mac="aa:bb:cc:00:00:01", vendor="Acme", device_type="plug")]
        )
        old.save_baseline("aa:bb:cc:00:00:01", run, {"peers": []}, 0.4, False)
        alert = Alert(
            timestamp=1000.0, flow_id=1, src_ip="10.0.0.2", src_port=1, dest_ip="1.2.3.4", dest_port=23,
            proto="TCP", device_id="aa:bb:cc:00:00:01", site_id="s", detector="profile", detector_version="1",
            score=3.0, threshold=1.0, severity=1, category="scan", reason="scan; baseline: none",
        )  # fmt: skip
        for a in (alert, dataclasses.replace(alert, dest_port=80, timestamp=900.0)):
            _legacy_insert(old, run, a)
        old.finish_run(run, "ok", {"packets": 10})
        assert old.acknowledge(2, "legacy-user")
    conn = sqlite3.connect(path)
    assert schema_version(conn) == 1
    assert "api_tokens" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()

    with Store(path) as store:
        assert store.version == len(MIGRATIONS) >= 2
        assert [d.vendor for d in store.get_devices()] == ["Acme"]
        tok, _ = create_token(store, "ops", "admin")
        c = TestClient(create_app(store))
        h = {"Authorization": f"Bearer {tok}"}
        assert c.get("/health", headers=h).json()["schema_version"] == len(MIGRATIONS)
        devs = c.get("/devices", headers=h).json()
        assert devs["total"] == 1 and devs["items"][0]["maturity"] == 0.4 and not devs["items"][0]["mature"]
        alerts = c.get("/alerts", headers=h).json()
        assert alerts["total"] == 2
        legacy = c.get("/alerts/2", headers=h).json()
        assert legacy["acknowledged"] and legacy["assignee"] == "legacy-user" and legacy["history"] == []
        assert c.post("/alerts/1/assign", headers=h, json={"assignee": "pat"}).json()["assigned_by"] == "ops"
        assert c.get("/runs", headers=h).json()["items"][0]["stats"] == {"packets": 10}
    with Store(path) as again:  # opening a migrated store applies nothing more
        assert again.version == len(MIGRATIONS) and again.get_alert(1) is not None
        assert again.get_alert(1).assignee == "pat"  # type: ignore[union-attr]
        assert again.query_incidents()[1] == 0  # alerts stored before incidents are not folded afterwards


# -- the command line -----------------------------------------------------------------------------------


def test_token_cli_create_list_revoke(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert api_cli.main(["token", "create", "--name", "ci", "--scope", "read", "--store", str(db)]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith("iots_") and "shown only now" in out.err
    assert api_cli.main(["token", "create", "--name", "ci", "--scope", "read", "--store", str(db)]) == 2
    assert "exists" in capsys.readouterr().err
    assert api_cli.main(["token", "create", "--name", "x", "--scope", "read", "--expires-in", "1y",
                         "--store", str(db)]) == 2  # fmt: skip
    capsys.readouterr()
    assert api_cli.main(["token", "list", "--json", "--store", str(db)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["name"], t["scope"], t["valid"]) for t in listed] == [("ci", "read", True)]
    assert secret not in json.dumps(listed)
    with Store(db) as store:
        assert (
            TestClient(create_app(store))
            .get("/health", headers={"Authorization": f"Bearer {secret}"})
            .is_success
        )
    assert api_cli.main(["token", "revoke", "ci", "--store", str(db)]) == 0
    assert api_cli.main(["token", "revoke", "ci", "--store", str(db)]) == 2
    capsys.readouterr()
    assert api_cli.main(["token", "list", "--store", str(db)]) == 0
    assert "revoked" in capsys.readouterr().out
    with Store(db) as store:
        r = TestClient(create_app(store)).get("/health", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 401
    assert api_cli.main(["token", "list", "--store", str(db.parent / "missing.db")]) == 2
