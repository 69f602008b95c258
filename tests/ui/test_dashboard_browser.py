"""The web dashboard in a real browser: `iotsentry api` (uvicorn, subprocess) + headless Chromium.

The store is filled by the real analysis of the demo capture; the browser is Debian's
``/usr/bin/chromium`` driven by Playwright for Python (only the pip package: no downloaded
browsers). Skipped when either is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from iotsentry.alerts.policy import AlertPolicy
from iotsentry.api.tokens import create_token
from iotsentry.cli import main as iotsentry_main
from iotsentry.evaluation.synthetic_home import generate_home
from iotsentry.store import CanaryResult, Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INFECTED = "28:57:be:1e:8f:ed"  # the camera generate_home(seed=7) infects
TIMEOUT_MS = 20_000
CANARY_RESULTS = [  # an older run that caught everything, then the latest: two classes missed
    *(CanaryResult(1_700_000_000.0, "profile", c, True, 9.0, 1.0, INFECTED, "run-old")
      for c in ("port-scan", "c2-beacon", "brute-force", "flood", "dns-tunnel")),
    CanaryResult(1_700_003_600.0, "profile", "port-scan", True, 4.25, 1.5, INFECTED, "run-new"),
    CanaryResult(1_700_003_600.0, "profile", "c2-beacon", False, 0.5, 1.5, INFECTED, "run-new"),
    CanaryResult(1_700_003_600.0, "profile", "brute-force", True, 3.0, 1.5, INFECTED, "run-new"),
    CanaryResult(1_700_003_600.0, "profile", "flood", True, 12.0, 1.5, INFECTED, "run-new"),
    CanaryResult(1_700_003_600.0, "profile", "dns-tunnel", False, 1.25, 1.5, INFECTED, "run-new"),
]  # fmt: skip
"""Canary results put in the test store: the "Models & integrity" page shows the latest per class."""

if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
except ImportError:
    pytest.skip("the playwright pip package is missing (pip install playwright)", allow_module_level=True)

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


# -- a tiny PNG decoder (no Pillow needed) ------------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """``(width, height, channels, raw pixel bytes)`` of an 8-bit, non-interlaced RGB/RGBA/grey PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0, (depth, interlace)
            channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b, c = prev[i], prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        else:
            assert ftype == 0, f"bad PNG filter {ftype}"
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)


def png_stats(data: bytes) -> tuple[int, float]:
    """Distinct colours, and the share of pixels unlike the most common (background) colour."""
    w, h, ch, px = decode_png(data)
    colours = Counter(px[i : i + ch] for i in range(0, len(px), ch))
    return len(colours), 1.0 - colours.most_common(1)[0][1] / (w * h)


def test_png_decoder_roundtrip() -> None:
    w, h = 5, 3
    rows = [bytes([x * 40, y * 80, (x + y) * 20]) * 1 for y in range(h) for x in range(w)]
    raw = b"".join(b"\x00" + b"".join(rows[y * w : (y + 1) * w]) for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    assert decode_png(png) == (w, h, 3, b"".join(rows))
    assert png_stats(png)[0] == 15


# -- the server ------------------------------------------------------------------------------------


@dataclass
class Server:
    base: str
    db: Path
    admin_token: str
    read_token: str
    log: Path
    proc: subprocess.Popen[bytes]

    def get(self, path: str, token: str | None = None) -> Any:
        r = httpx.get(
            self.base + path, headers={"Authorization": f"Bearer {token or self.admin_token}"}, timeout=10
        )
        assert r.status_code == 200, (path, r.text)
        return r.json()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _models(root: Path) -> tuple[Path, Path]:
    """A folder of model directories (signed, tampered, unsigned) and the trusted key directory."""
    from iotsentry.integrity.signing import generate_keypair, sign_model_dir, trust_key

    keys, models = root / "keys", root / "models"
    key = trust_key(keys, generate_keypair(keys))
    assert key.private_key_path is not None
    for name in ("good", "tampered", "unsigned"):
        d = models / name
        d.mkdir(parents=True)
        (d / "manifest.json").write_text(json.dumps({"detector": "profile", "version": "1"}))
        (d / "weights.npz").write_bytes(b"weights")
    sign_model_dir(models / "good", key.private_key_path)
    sign_model_dir(models / "tampered", key.private_key_path)
    (models / "tampered" / "weights.npz").write_bytes(b"evil!!!")
    return models, keys


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    out = tmp_path_factory.mktemp("dashboard")
    pcap = out / "home.pcap"
    generate_home(pcap, seed=7)
    assert iotsentry_main(["analyze", str(pcap), "--out-dir", str(out), "--site", "demo"]) == 0
    db = out / "iotsentry.db"
    with Store(db) as store:
        admin, _ = create_token(store, "alice", "admin")
        read, _ = create_token(store, "viewer", "read")
        store.add_canary_results(CANARY_RESULTS)
        notice = AlertPolicy(site_id="demo").make(
            ts=1_705_310_000.0, device_id=INFECTED, detector="profile", detector_version="1", score=1.2,
            threshold=1.0, category="silence", reason="stopped its ~300 s check-ins to 203.0.113.5",
        )  # fmt: skip
        assert notice is not None
        store.add_alerts(None, [notice])  # a notice: shown apart, never an incident
    models, keys = _models(out)
    port = _free_port()
    log = out / "server.log"
    cmd = [sys.executable, "-m", "iotsentry.api.api_cli", "api", "--store", str(db), "--port", str(port),
           "--log-level", "warning", "--model-dir", str(models), "--keyring", str(keys)]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=sink, stderr=sink)
    srv = Server(f"http://127.0.0.1:{port}", db, admin, read, log, proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {log.read_text()}")
            try:
                if httpx.get(f"{srv.base}/ui/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start within 60 s: {log.read_text()}")
            time.sleep(0.2)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Tab:
    """A page in a fresh browser context that records console errors and uncaught exceptions."""

    page: Page
    server: Server
    errors: list[str] = field(default_factory=list)

    def goto(self, route: str = "") -> None:
        self.page.goto(f"{self.server.base}/ui/{route}")

    def login(self, token: str) -> None:
        self.page.fill("#token-input", token)
        self.page.click("#login-button")

    def wait_ready(self, page_name: str) -> None:
        self.page.wait_for_selector(f'#view[data-page="{page_name}"][data-ready="1"]', timeout=TIMEOUT_MS)

    def show(self, route: str, page_name: str) -> None:
        self.page.evaluate("(r) => { window.location.hash = r; }", route)
        self.wait_ready(page_name)

    def unexpected_errors(self, allowed_statuses: tuple[int, ...] = ()) -> list[str]:
        """Console errors, except failed loads with one of ``allowed_statuses`` (expected 401/403s)."""
        ok = tuple(f"status of {s} " for s in allowed_statuses)
        return [
            e
            for e in self.errors
            if not (e.startswith("Failed to load resource") and any(s in e for s in ok))
        ]


@pytest.fixture
def tab(browser: Browser, server: Server) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    t = Tab(page, server)

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            t.errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: t.errors.append(f"uncaught: {exc}"))
    try:
        yield t
    finally:
        context.close()


def _shot(page: Page, path: Path) -> None:
    """Save a full-page screenshot and assert it is not blank."""
    data = page.screenshot(path=str(path), full_page=True)
    colours, ink = png_stats(data)
    assert colours >= 30 and ink >= 0.03, (path.name, colours, ink)


# -- the tests ---------------------------------------------------------------------------------------


def test_the_server_prints_the_dashboard_url(server: Server) -> None:
    assert f"dashboard: {server.base}/ui/" in server.log.read_text()


def test_admin_inventory_device_alerts_models(tab: Tab, server: Server, tmp_path: Path) -> None:
    page = tab.page
    shots = tmp_path / "screenshots"
    shots.mkdir()
    tab.goto()
    page.wait_for_selector("#login-form")
    assert page.is_hidden("#nav")
    tab.login(server.admin_token)
    tab.wait_ready("devices")
    assert page.inner_text("#who") == "alice (admin)"
    assert page.evaluate("sessionStorage.getItem('iotsentry.token')") == server.admin_token
    assert page.evaluate("localStorage.length") == 0

    # inventory: the devices the store holds, with labels, MACs and a risk score
    api_devices = server.get("/devices?limit=1000")
    rows = page.locator("#device-table tbody tr")
    shown = {rows.nth(i).get_attribute("data-device") for i in range(rows.count())}
    assert shown == {d["device_id"] for d in api_devices["items"]} and len(shown) == api_devices["total"]
    assert page.inner_text("#devices-total") == str(api_devices["total"])
    table_text = page.inner_text("#device-table")
    for d in api_devices["items"]:
        assert d["label"] in table_text and (d["mac"] or "") in table_text
    # default sort: risk, highest first -> the infected camera is on top
    assert rows.first.get_attribute("data-device") == INFECTED
    page.click('#device-table th[data-sort="label"]')
    tab.wait_ready("devices")
    labels = [page.locator("#device-table tbody tr").nth(i).locator("td").first.inner_text()
              for i in range(len(shown))]  # fmt: skip
    assert [x.lower() for x in labels] == sorted(x.lower() for x in labels)
    # filtering goes through the API
    page.fill("#dev-filter-q", "HIKVISION")
    expect(page.locator("#device-table tbody tr")).to_have_count(1)  # (no wait_for_function: CSP has no eval)
    tab.wait_ready("devices")
    assert page.evaluate("document.activeElement.id") == "dev-filter-q"  # typing goes on after a refresh
    assert page.input_value("#dev-filter-q") == "HIKVISION"
    page.fill("#dev-filter-q", "")
    expect(page.locator("#device-table tbody tr")).to_have_count(len(shown))
    tab.wait_ready("devices")
    _shot(page, shots / "inventory.png")

    # session survives a reload of the tab (sessionStorage)
    page.reload()
    tab.wait_ready("devices")

    # the device page: baseline and timeline
    page.click(f'#device-table tr[data-device="{INFECTED}"] a.device-link')
    tab.wait_ready("device")
    dev = server.get(f"/devices/{INFECTED}")
    profile = dev["baseline"]["profile"]
    dev_alerts = server.get(f"/alerts?device_id={INFECTED}&limit=1000")["items"]
    assert dev["label"] in page.inner_text("#device-title")
    assert page.locator("#baseline-peers tbody tr").count() == len(profile["peers"]) > 0
    assert page.locator("#baseline-services tbody tr").count() == len(profile["services"]) > 0
    assert page.locator("#baseline-volumes tbody tr").count() == len(profile["per_window"]) > 0
    assert page.inner_text("#maturity-reason") == profile["maturity"]["reason"]
    assert page.locator("#alert-timeline .alert-mark").count() == len(dev_alerts) > 0
    assert page.locator("#alert-timeline .alert-mark circle").first.bounding_box() is not None
    assert page.locator("#device-alerts tbody tr").count() == len(dev_alerts)
    _shot(page, shots / "device.png")

    # the alert queue: open alerts with their reasons; acknowledge and assign through the buttons
    tab.show("#/alerts", "alerts")
    open_alerts = server.get("/alerts?acknowledged=false&limit=25")
    rows = page.locator("#alert-table tbody tr")
    assert rows.count() == len(open_alerts["items"]) > 0
    first = open_alerts["items"][0]
    row = page.locator(f'#alert-table tr[data-alert="{first["id"]}"]')
    assert first["reason"] in row.inner_text()
    assert page.locator("#readonly-note").count() == 0
    assert row.locator("button.ack").is_enabled()
    _shot(page, shots / "alerts.png")
    row.locator("button.ack").click()
    page.wait_for_selector("#alert-flash.flash:not([hidden])")
    tab.wait_ready("alerts")
    assert f"#{first['id']} acknowledged by alice" in page.inner_text("#alert-flash")
    acked = server.get(f"/alerts/{first['id']}")
    assert acked["acknowledged"] and acked["acknowledged_by"] == "alice"
    assert [(x["action"], x["actor"]) for x in acked["history"]] == [("acknowledge", "alice")]
    assert page.locator(f'#alert-table tr[data-alert="{first["id"]}"]').count() == 0  # left the open queue

    second = open_alerts["items"][1]
    row = page.locator(f'#alert-table tr[data-alert="{second["id"]}"]')
    row.locator("input.assignee").fill("Bob Builder")
    row.locator("button.assign").click()
    expect(page.locator("#alert-flash")).to_contain_text(f"#{second['id']} assigned to Bob Builder by alice")
    assigned = server.get(f"/alerts/{second['id']}")
    assert assigned["assignee"] == "Bob Builder" and assigned["assigned_by"] == "alice"

    # filters: severity and status go to the API
    page.select_option("#alert-filter-status", "acked")
    tab.wait_ready("alerts")
    n_acked = server.get("/alerts?acknowledged=true")["total"]
    assert page.locator("#alert-table tbody tr").count() == n_acked == 1
    page.select_option("#alert-filter-status", "all")
    tab.wait_ready("alerts")
    page.check('#alert-filters input[name="severity"][value="1"]')
    tab.wait_ready("alerts")
    high = server.get("/alerts?severity=1&limit=25")
    assert page.locator("#alert-table tbody tr").count() == len(high["items"])

    # models and integrity
    tab.show("#/models", "models")
    assert page.inner_text("#health-status") == "ok"
    status = {
        name: page.locator(f'#models-table [data-model="{name}"]').inner_text()
        for name in ("good", "tampered", "unsigned")
    }
    assert status == {"good": "verified", "tampered": "invalid", "unsigned": "unsigned"}
    assert {m["name"]: m["signature"]["status"] for m in server.get("/models")} == status
    assert page.locator("#runs-table tbody tr").count() == server.get("/runs")["total"] >= 1
    # canary coverage per attack class: the latest result of each stored class
    rows = page.locator("#canary-table tbody tr")
    assert rows.count() == 5
    coverage: dict[str | None, tuple[str, str, str]] = {}
    for i in range(rows.count()):
        cells = rows.nth(i).locator("td")
        cls = cells.nth(0).locator("[data-canary-class]").get_attribute("data-canary-class")
        coverage[cls] = (cells.nth(1).inner_text(), cells.nth(2).inner_text(), cells.nth(3).inner_text())
    latest = {r.attack_class: r for r in CANARY_RESULTS if r.canary_run == "run-new"}
    assert set(coverage) == set(latest)
    for cls, r in latest.items():
        assert coverage[cls][0] == "2023-11-14 23:13:20Z"  # the later run
        assert coverage[cls][1] == ("yes" if r.detected else "no")
        assert coverage[cls][2] == f"{r.score:g} / {r.threshold:g}"
    assert page.locator('#canary-table [data-detected="no"]').count() == 2
    assert page.locator("#canary-history-table tbody tr").count() == len(CANARY_RESULTS)
    assert {c["attack_class"] for c in server.get("/integrity/canaries", server.read_token)["latest"]} == set(
        latest
    )
    _shot(page, shots / "models.png")

    # log out clears the token
    page.click("#logout")
    page.wait_for_selector("#login-form")
    assert page.evaluate("sessionStorage.getItem('iotsentry.token')") is None

    assert tab.unexpected_errors() == []
    print(f"screenshots: {shots}")
    keep = os.environ.get("IOTSENTRY_SCREENSHOT_DIR")
    if keep:
        shutil.copytree(shots, keep, dirs_exist_ok=True)


def test_incident_queue_acknowledge_assign_and_mark_expected(
    tab: Tab, server: Server, tmp_path: Path
) -> None:
    page = tab.page
    tab.goto("#/incidents")
    tab.login(server.admin_token)
    tab.wait_ready("incidents")
    # the queue: the active incidents the API lists, with their cause and count
    queue = server.get("/incidents?status=open&status=acknowledged&limit=25")
    rows = page.locator("#incident-table tbody tr")
    assert rows.count() == len(queue["items"]) > 0
    for item in queue["items"]:
        text = page.locator(f'#incident-table tr[data-incident="{item["incident_id"]}"]').inner_text()
        assert item["cause"] in text and str(item["count"]) in text
    summary = server.get("/incidents/summary")
    for st in ("open", "acknowledged", "expected", "resolved"):
        want = next((r["total"] for r in summary["by_status"] if r["key"] == st), 0)
        assert page.inner_text(f"#incidents-{st}") == str(want)
    # notices are shown apart, with their own count
    notices = server.get("/alerts/summary")["notices"]["total"]
    assert notices == 1 and page.inner_text("#notices-total") == "1"
    assert "stopped its ~300 s check-ins" in page.inner_text("#notice-table")
    assert "check-ins" not in page.inner_text("#incident-table")
    _shot(page, tmp_path / "incidents.png")

    # acknowledge from the queue
    first = queue["items"][0]
    inc = first["incident_id"]
    row = page.locator(f'#incident-table tr[data-incident="{inc}"]')
    assert row.locator("button.ack").is_enabled() and not row.locator("button.reopen").is_enabled()
    row.locator("button.ack").click()
    expect(page.locator("#incident-flash")).to_contain_text(f"Incident {inc} acknowledged by alice")
    tab.wait_ready("incidents")
    got = server.get(f"/incidents/{inc}")
    assert got["status"] == "acknowledged"
    assert [(x["action"], x["actor"]) for x in got["history"]] == [("acknowledge", "alice")]
    row = page.locator(f'#incident-table tr[data-incident="{inc}"]')
    assert row.locator('[data-status="acknowledged"]').count() == 1  # still in the active queue
    row.locator("input.assignee").fill("Bob Builder")
    row.locator("button.assign").click()
    expect(page.locator("#incident-flash")).to_contain_text(
        f"Incident {inc} assigned to Bob Builder by alice"
    )
    assert server.get(f"/incidents/{inc}")["assignee"] == "Bob Builder"

    # the incident page: evidence samples and its alerts; mark expected for the device's group
    tab.wait_ready("incidents")
    page.click(f'#incident-table tr[data-incident="{inc}"] a.incident-link')
    tab.wait_ready("incident")
    detail = server.get(f"/incidents/{inc}")
    assert page.locator("#incident-evidence tbody tr").count() == len(detail["evidence"]) > 0
    assert page.locator("#incident-alerts tbody tr").count() == len(detail["alerts"]) > 0
    assert detail["evidence"][0]["reason"] in page.inner_text("#incident-evidence")
    assert page.inner_text("#incident-assignee") == "Bob Builder"
    assert "None" in page.inner_text("#incident-feedback")  # never marked expected yet
    _shot(page, tmp_path / "incident.png")
    page.click("#incident-actions button.expect-group")
    expect(page.locator("#incident-flash")).to_contain_text(
        f"Incident {inc} marked expected (group) by alice"
    )
    tab.wait_ready("incident")
    got = server.get(f"/incidents/{inc}")
    assert got["status"] == "expected"
    assert [(f["action"], f["scope"], f["created_by"]) for f in got["feedback"]] == [
        ("absorb", "group", "alice")
    ]
    assert page.inner_text("#incident-status") == "expected"
    assert page.locator("#incident-feedback tbody tr").count() == 1
    assert not page.locator("#incident-actions button.expect-device").is_enabled()
    assert page.locator("#incident-actions button.reopen").is_enabled()
    # it left the active queue and is listed under expected
    tab.show("#/incidents", "incidents")
    assert page.locator(f'#incident-table tr[data-incident="{inc}"]').count() == 0
    page.select_option("#incident-filter-status", "expected")
    tab.wait_ready("incidents")
    assert page.locator(f'#incident-table tr[data-incident="{inc}"]').count() == 1
    # reopen: the baseline is asked to revert what it absorbed
    page.locator(f'#incident-table tr[data-incident="{inc}"] button.reopen').click()
    expect(page.locator("#incident-flash")).to_contain_text(f"Incident {inc} re-opened by alice")
    assert [f["action"] for f in server.get(f"/incidents/{inc}")["feedback"]] == ["absorb", "revert"]

    # the inventory shows what the sensor can see of each device (or that it is unknown)
    tab.show("#/devices", "devices")
    for d in server.get("/devices?limit=1000")["items"]:
        cell = page.locator(f'#device-table td[data-visibility="{d["device_id"]}"]').inner_text()
        if d["visibility"]:
            assert all(f"{k.replace('_', ' ')}: " in cell for k in d["visibility"])
        else:
            assert cell == "unknown"
    assert tab.unexpected_errors() == []


def test_read_only_token_sees_disabled_buttons_and_a_clear_403(tab: Tab, server: Server) -> None:
    page = tab.page
    tab.goto("#/alerts")
    tab.login(server.read_token)
    tab.wait_ready("alerts")
    assert page.inner_text("#who") == "viewer (read)"
    assert "read-only token" in page.inner_text("#banner").lower()
    assert "read-only" in page.inner_text("#readonly-note")
    ack = page.locator("#alert-table button.ack")
    assert ack.count() > 0
    assert all(not ack.nth(i).is_enabled() for i in range(ack.count()))
    assert all(not b.is_enabled() for b in page.locator("#alert-table button.assign").all())
    # if the button were enabled anyway (e.g. the scope changed), the API's 403 is shown clearly
    row = page.locator("#alert-table tbody tr").first
    alert_id = row.get_attribute("data-alert")
    row.locator("button.ack").evaluate("b => { b.disabled = false; }")
    row.locator("button.ack").click()
    page.wait_for_selector("#alert-flash.flash.error:not([hidden])")
    text = page.inner_text("#alert-flash")
    assert "403" in text and "admin" in text
    assert alert_id is not None and not server.get(f"/alerts/{alert_id}")["acknowledged"]
    # the incident queue: every action button is disabled, and a forced click gets a clear 403
    tab.show("#/incidents", "incidents")
    assert "read-only" in page.inner_text("#readonly-note")
    buttons = page.locator("#incident-table button")
    assert buttons.count() > 0 and all(not b.is_enabled() for b in buttons.all())
    row = page.locator("#incident-table tbody tr").first
    inc = row.get_attribute("data-incident")
    before = server.get(f"/incidents/{inc}")
    row.locator("button.expect-device").evaluate("b => { b.disabled = false; }")
    row.locator("button.expect-device").click()
    page.wait_for_selector("#incident-flash.flash.error:not([hidden])")
    assert "403" in page.inner_text("#incident-flash")
    assert server.get(f"/incidents/{inc}")["status"] == before["status"]
    assert tab.unexpected_errors(allowed_statuses=(403,)) == []


def test_a_wrong_token_shows_the_login_error(tab: Tab, server: Server) -> None:
    page = tab.page
    tab.goto()
    tab.login("iots_this-is-not-a-valid-token")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "Login failed" in page.inner_text("#login-error")
    assert "invalid token" in page.inner_text("#login-error")
    assert page.is_hidden("#nav") and page.is_hidden("#view")
    assert page.evaluate("sessionStorage.getItem('iotsentry.token')") is None
    # then the right one works in the same tab
    tab.login(server.read_token)
    tab.wait_ready("devices")
    assert page.is_hidden("#login-error")
    assert tab.unexpected_errors(allowed_statuses=(401,)) == []
