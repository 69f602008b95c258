"""``/models``: the configured model artifact directories, their manifests and signature status.

Each configured path is either a model directory (it holds ``manifest.json``) or a folder whose
sub-directories holding ``manifest.json`` are model directories. Signatures are verified on
every request with :func:`iotsentry.integrity.signing.verify_model_dir` against the trusted
keys given to the app; nothing is loaded, so nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from iotsentry.api.auth import require_read
from iotsentry.api.errors import not_found
from iotsentry.api.schemas import ErrorOut, ModelFileOut, ModelOut, SignatureOut

__all__ = ["MANIFEST", "describe_model", "discover_model_dirs", "router"]

MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 1 << 20

router = APIRouter(
    prefix="/models",
    tags=["models"],
    dependencies=[Depends(require_read)],
    responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}},
)


def discover_model_dirs(paths: Sequence[str | Path]) -> dict[str, Path]:
    """Model directories by unique name (the directory name, ``-2``, ``-3``... on clashes)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / MANIFEST).is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(c for c in p.iterdir() if c.is_dir() and (c / MANIFEST).is_file())
    out: dict[str, Path] = {}
    for d in found:
        name, n = d.name, 1
        while name in out:
            n += 1
            name = f"{d.name}-{n}"
        out[name] = d
    return out


def _manifest(d: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = d / MANIFEST
    try:
        if path.is_symlink() or path.stat().st_size > _MAX_MANIFEST_BYTES:
            return None, "manifest.json is a link or larger than 1 MiB"
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"cannot read manifest.json: {e}"
    if not isinstance(doc, dict):
        return None, "manifest.json is not a JSON object"
    return doc, None


def _files(d: Path) -> list[ModelFileOut]:
    out = []
    try:
        with os.scandir(d) as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    out.append(ModelFileOut(name=e.name, size=e.stat(follow_symlinks=False).st_size))
    except OSError:
        return []
    return sorted(out, key=lambda f: f.name)


def _signature(d: Path, keyring: Any) -> SignatureOut:
    from iotsentry.integrity.signing import SIGNATURE_FILE, IntegrityError, verify_model_dir

    if not (d / SIGNATURE_FILE).exists():
        return SignatureOut(status="unsigned", key_id=None, signed_at=None, error=f"no {SIGNATURE_FILE}")
    if keyring is None:
        return SignatureOut(
            status="not_checked", key_id=None, signed_at=None, error="no trusted keys configured"
        )
    try:
        v = verify_model_dir(d, keyring)
    except IntegrityError as e:
        return SignatureOut(status="invalid", key_id=None, signed_at=None, error=e.problem)
    except OSError as e:
        return SignatureOut(status="invalid", key_id=None, signed_at=None, error=f"cannot read: {e}")
    return SignatureOut(status="verified", key_id=v.key_id, signed_at=v.signed_at, error=None)


def describe_model(name: str, d: Path, keyring: Any) -> ModelOut:
    """Manifest, files and signature status of one model directory."""
    manifest, err = _manifest(d)
    return ModelOut(
        name=name,
        path=str(d),
        manifest=manifest,
        manifest_error=err,
        files=_files(d),
        signature=_signature(d, keyring),
    )


@router.get("", response_model=list[ModelOut], summary="Model directories and signature status")
def list_models(request: Request) -> list[ModelOut]:
    """Every configured model directory (found again on each request), ordered by name."""
    dirs = discover_model_dirs(request.app.state.model_dirs)
    keyring = request.app.state.trusted_keys
    return [describe_model(n, d, keyring) for n, d in sorted(dirs.items())]


@router.get(
    "/{name}", response_model=ModelOut, summary="One model directory", responses={404: {"model": ErrorOut}}
)
def get_model(request: Request, name: str) -> ModelOut:
    """One model directory by name."""
    dirs = discover_model_dirs(request.app.state.model_dirs)
    if name not in dirs:
        raise not_found(f"model {name!r}")
    return describe_model(name, dirs[name], request.app.state.trusted_keys)
