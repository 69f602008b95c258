"""The real server: `iotsentry api` (uvicorn) in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from iotsentry.api.tokens import create_token
from iotsentry.schema import Device
from iotsentry.store import Store


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
def test_uvicorn_serves_the_api_on_loopback(tmp_path: Path) -> None:
    db = tmp_path / "iotsentry.db"
    with Store(db) as store:
        store.upsert_devices([Device("aa:bb:cc:dd:ee:ff", mac="aa:bb:cc:dd:ee:ff", vendor="Acme")])
        token, _ = create_token(store, "server-test", "read")
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "iotsentry.api.api_cli", "api", "--store", str(db), "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"server exited with {proc.returncode}: {err}")
            try:
                r = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail("server did not start within 60 s")
                time.sleep(0.2)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        h = {"Authorization": f"Bearer {token}"}
        r = httpx.get(f"{base}/devices", headers=h, timeout=5)
        assert r.status_code == 200
        assert r.json()["total"] == 1 and r.json()["items"][0]["vendor"] == "Acme"
        assert "server" not in r.headers  # no version banner
        assert httpx.get(f"{base}/openapi.json", timeout=5).status_code == 401
        assert httpx.post(f"{base}/alerts/1/ack", headers=h, timeout=5).status_code == 403
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
