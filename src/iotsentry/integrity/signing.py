"""Ed25519 signing of model artifacts, a trust store with rotation and revocation, and verified loading.

A model artifact is a flat directory of regular files (``weights.npz``, ``manifest.json``, ...).
:func:`sign_model_dir` writes ``signature.json`` into it: a statement listing **every** other
file with its SHA-256 and size, the signing key id and a UTC timestamp, plus an Ed25519 signature
over the canonical JSON of that statement (sorted keys, no whitespace, ASCII, prefixed by
``iotsentry-signature-v1\\n`` for domain separation). Sub-directories, symbolic links and other
non-regular entries are refused when signing and rejected when verifying, so nothing in the
directory escapes the signature.

Keys: ``<key_id>.key`` is a PKCS8 PEM private key created with mode 0600 (never readable by
others, not even briefly); ``<key_id>.pub`` is the SubjectPublicKeyInfo PEM public key. The key
id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key.

Trust store: ``trusted_keys.json`` in a key directory holds ``{"format": "iotsentry-keyring",
"version": 1, "keys": [{key_id, public_key (base64 raw), created, status, retired_at?,
revoked_at?}]}`` (a bare list of such entries is read too). Status ``active`` (at most one, the
signing key), ``retired`` (verifies signatures dated no later than its ``retired_at``; cannot
sign), ``revoked`` (verifies nothing). ``signed_at`` is asserted by the signer, so a retired
key that may have leaked must be revoked, not merely retired. Updates are atomic (write +
rename) but not locked against concurrent writers.

Loading: :func:`load_verified` verifies and then hands the loader a private snapshot of exactly
the bytes that were hashed, so the files cannot be swapped between the check and the load.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from iotsentry.errors import InputError, IotSentryError

__all__ = [
    "KEYRING_FILE",
    "SIGNATURE_FILE",
    "FileDigest",
    "IntegrityError",
    "KeyInfo",
    "Keyring",
    "VerifiedArtifact",
    "generate_keypair",
    "key_id_of",
    "load_keyring",
    "load_verified",
    "revoke_key",
    "rotate_key",
    "sign_model_dir",
    "trust_key",
    "verify_model_dir",
]

SIGNATURE_FILE = "signature.json"
KEYRING_FILE = "trusted_keys.json"
FORMAT = "iotsentry-signature"
VERSION = 1
ALGORITHM = "ed25519"
_DOMAIN = b"iotsentry-signature-v1\n"
_STATUSES = ("active", "retired", "revoked")
_CHUNK = 1 << 20
_KEY_ID = re.compile(r"[0-9a-f]{16}")

T = TypeVar("T")
PublicKeyLike: TypeAlias = Ed25519PublicKey | bytes | str | Path


class IntegrityError(IotSentryError):
    """A model artifact or key failed an integrity check; the message names the path and problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        line = f"{self.path}: {problem}"  # names can hold control characters: keep it one line
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in line))


@dataclass(frozen=True)
class KeyInfo:
    """A public key with its trust-store status (and, for a new key pair, where its files are)."""

    key_id: str
    public_key: bytes
    created: str
    status: str = "active"
    retired_at: str | None = None
    revoked_at: str | None = None
    private_key_path: Path | None = None
    public_key_path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """The trust-store entry (no file paths)."""
        d: dict[str, Any] = {
            "key_id": self.key_id,
            "public_key": base64.b64encode(self.public_key).decode(),
            "created": self.created,
            "status": self.status,
        }
        if self.retired_at:
            d["retired_at"] = self.retired_at
        if self.revoked_at:
            d["revoked_at"] = self.revoked_at
        return d


@dataclass(frozen=True)
class FileDigest:
    """SHA-256 (hex) and size in bytes of one artifact file."""

    sha256: str
    size: int


@dataclass(frozen=True)
class VerifiedArtifact:
    """What a successful verification established."""

    model_dir: Path
    key_id: str
    signed_at: str
    files: dict[str, FileDigest]


@dataclass
class Keyring:
    """Trusted public keys by key id; ``path`` is the ``trusted_keys.json`` it came from, if any."""

    keys: dict[str, KeyInfo] = field(default_factory=dict)
    path: Path | None = None

    @property
    def active(self) -> KeyInfo | None:
        """The current signing key, if any."""
        return next((k for k in self.keys.values() if k.status == "active"), None)

    @classmethod
    def from_public_keys(cls, keys: Sequence[PublicKeyLike]) -> Keyring:
        """A keyring trusting each given key as active."""
        out: dict[str, KeyInfo] = {}
        for k in keys:
            raw = _raw_public(k)
            out[key_id_of(raw)] = KeyInfo(key_id_of(raw), raw, created="")
        return cls(out)


KeyringLike: TypeAlias = Keyring | str | Path | Sequence[PublicKeyLike]


# -- helpers ------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def key_id_of(public_key: PublicKeyLike) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def _raw_public(key: PublicKeyLike) -> bytes:
    """Raw 32 bytes from a key object, raw bytes, base64 text, PEM bytes/text or a ``.pub`` file."""
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, Path):
        return _raw_public(key.read_bytes())
    data = key.encode() if isinstance(key, str) else bytes(key)
    if data.lstrip().startswith(b"-----BEGIN"):
        loaded = serialization.load_pem_public_key(data)
        if not isinstance(loaded, Ed25519PublicKey):
            raise IntegrityError("<public key>", "not an Ed25519 public key")
        return _raw_public(loaded)
    if isinstance(key, str):
        try:
            data = base64.b64decode(key, validate=True)
        except binascii.Error:
            raise IntegrityError("<public key>", "public key is neither PEM nor base64") from None
    if len(data) != 32:
        raise IntegrityError("<public key>", f"raw Ed25519 public key must be 32 bytes, not {len(data)}")
    return data


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first byte on, atomically; refuse to overwrite."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the target exists; the file appears complete
        except FileExistsError:
            raise IntegrityError(path, "already exists; refusing to overwrite a key file") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _replace_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (write to a temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- keys and the trust store ----------------------------------------------------------------------
def generate_keypair(directory: str | Path, name: str | None = None) -> KeyInfo:
    """Create an Ed25519 key pair in ``directory`` (created with mode 0700 if missing).

    Writes ``<stem>.key`` (PKCS8 PEM, unencrypted, mode 0600) and ``<stem>.pub`` (PEM), where
    ``stem`` is ``name`` if given, else the key id. Existing files are never overwritten. The key
    is *not* added to a trust store (see :func:`rotate_key` / :func:`trust_key`).
    """
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    priv = Ed25519PrivateKey.generate()
    raw = _raw_public(priv.public_key())
    key_id = key_id_of(raw)
    stem = name or key_id
    if not stem or "/" in stem or stem.startswith("."):
        raise IntegrityError(d, f"invalid key name {stem!r}")
    key_path, pub_path = d / f"{stem}.key", d / f"{stem}.pub"
    pem = priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_file(key_path, pem, 0o600)
    _write_new_file(pub_path, pub, 0o644)
    return KeyInfo(key_id, raw, _now(), private_key_path=key_path, public_key_path=pub_path)


def _keyring_file(location: str | Path) -> Path:
    p = Path(location)
    return p if p.name == KEYRING_FILE or p.is_file() else p / KEYRING_FILE


def load_keyring(location: str | Path) -> Keyring:
    """Read ``trusted_keys.json`` from a directory (or that file's path); empty if it is absent."""
    path = _keyring_file(location)
    if not path.exists():
        return Keyring({}, path)
    try:
        doc = json.loads(path.read_text())
        entries = doc["keys"] if isinstance(doc, dict) else doc
        keys: dict[str, KeyInfo] = {}
        for e in entries:
            raw = base64.b64decode(e["public_key"], validate=True)
            info = KeyInfo(
                key_id=str(e["key_id"]),
                public_key=raw,
                created=str(e.get("created", "")),
                status=str(e["status"]),
                retired_at=e.get("retired_at"),
                revoked_at=e.get("revoked_at"),
            )
            if len(raw) != 32 or key_id_of(raw) != info.key_id or info.status not in _STATUSES:
                raise ValueError(f"inconsistent entry for key {info.key_id}")
            for t in (info.retired_at, info.revoked_at):
                if t is not None:
                    _parse_time(t)
            keys[info.key_id] = info
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise IntegrityError(path, f"unreadable trust store ({e})") from None
    return Keyring(keys, path)


def _save_keyring(ring: Keyring) -> None:
    assert ring.path is not None
    doc = {"format": "iotsentry-keyring", "version": 1, "keys": [k.to_json() for k in ring.keys.values()]}
    _replace_file(ring.path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def trust_key(keyring_dir: str | Path, key: KeyInfo) -> KeyInfo:
    """Add a new key to the trust store as the active key; refused if another key is active."""
    ring = load_keyring(keyring_dir)
    current = ring.active
    if current is not None and current.key_id != key.key_id:
        raise IntegrityError(ring.path or keyring_dir, f"key {current.key_id} is already active; rotate")
    if key.key_id in ring.keys and ring.keys[key.key_id].status != "active":
        raise IntegrityError(ring.path or keyring_dir, f"key {key.key_id} was {ring.keys[key.key_id].status}")
    ring.keys[key.key_id] = replace(key, status="active", retired_at=None, revoked_at=None)
    _save_keyring(ring)
    return key


def rotate_key(keyring_dir: str | Path) -> KeyInfo:
    """Generate a new active key in ``keyring_dir``; the previous active key becomes ``retired``."""
    d = Path(keyring_dir)
    ring = load_keyring(d)  # fail early on a damaged store, before creating files
    new = generate_keypair(d)
    now = new.created
    for kid, k in list(ring.keys.items()):
        if k.status == "active":
            ring.keys[kid] = replace(k, status="retired", retired_at=now)
    ring.keys[new.key_id] = new
    _save_keyring(ring)
    return new


def revoke_key(keyring_dir: str | Path, key_id: str) -> KeyInfo:
    """Mark ``key_id`` revoked: every signature it made fails verification from now on."""
    ring = load_keyring(keyring_dir)
    if key_id not in ring.keys:
        raise IntegrityError(ring.path or keyring_dir, f"no key {key_id} in the trust store")
    info = ring.keys[key_id]
    if info.status != "revoked":
        info = replace(info, status="revoked", revoked_at=_now())
        ring.keys[key_id] = info
        _save_keyring(ring)
    return info


def _as_keyring(keyring: KeyringLike) -> Keyring:
    if isinstance(keyring, Keyring):
        return keyring
    if isinstance(keyring, str | Path):
        ring = load_keyring(keyring)
        if not ring.keys:
            raise IntegrityError(ring.path or keyring, "trust store is missing or empty")
        return ring
    return Keyring.from_public_keys(keyring)


# -- artifact files ----------------------------------------------------------------------------------
def _artifact_files(d: Path) -> list[str]:
    """Names of the regular files of ``d`` (except the signature); other entries are errors."""
    if not d.is_dir():
        raise IntegrityError(d, "not a model directory")
    names = []
    with os.scandir(d) as it:
        for e in it:
            if e.name == SIGNATURE_FILE:
                continue
            if e.is_symlink() or not e.is_file(follow_symlinks=False):
                raise IntegrityError(d / e.name, "not a regular file (artifacts must be flat, no links)")
            names.append(e.name)
    return sorted(names)


def _read_file(path: Path, keep: bool) -> tuple[FileDigest, bytes | None]:
    """Hash one regular file without following links; return its bytes too when ``keep``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise IntegrityError(path, f"cannot read ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IntegrityError(path, "not a regular file")
        h, parts, size = hashlib.sha256(), [], 0
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if keep:
                parts.append(chunk)
    return FileDigest(h.hexdigest(), size), b"".join(parts) if keep else None


def _canonical(statement: dict[str, Any]) -> bytes:
    return _DOMAIN + json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise IntegrityError(path, f"cannot load private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityError(path, "not an Ed25519 private key")
    return key


# -- sign and verify ----------------------------------------------------------------------------------
def sign_model_dir(
    model_dir: str | Path, private_key_path: str | Path, *, keyring: str | Path | None = None
) -> dict[str, Any]:
    """Sign every file of a flat model directory; write and return ``signature.json``'s content.

    ``keyring`` (default: the private key's directory when it holds ``trusted_keys.json``) is
    consulted to refuse keys that are not the active key of that trust store.
    """
    d, key_path = Path(model_dir), Path(private_key_path)
    priv = _load_private(key_path)
    key_id = key_id_of(priv.public_key())
    ring_loc = Path(keyring) if keyring is not None else key_path.parent
    if keyring is not None or (ring_loc / KEYRING_FILE).exists():
        entry = load_keyring(ring_loc).keys.get(key_id)
        if entry is None or entry.status != "active":
            state = "not in the trust store" if entry is None else entry.status
            raise IntegrityError(key_path, f"key {key_id} is {state}; sign with the active key")
    files = {n: asdict(_read_file(d / n, keep=False)[0]) for n in _artifact_files(d)}
    if not files:
        raise IntegrityError(d, "nothing to sign (empty directory)")
    statement = {
        "format": FORMAT,
        "version": VERSION,
        "algorithm": ALGORITHM,
        "key_id": key_id,
        "signed_at": _now(),
        "files": files,
    }
    doc = {**statement, "signature": base64.b64encode(priv.sign(_canonical(statement))).decode()}
    _replace_file(d / SIGNATURE_FILE, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return doc


def _read_signature(d: Path) -> tuple[dict[str, Any], bytes]:
    sig_path = d / SIGNATURE_FILE
    if not d.is_dir():
        raise IntegrityError(d, "not a model directory")
    if not sig_path.exists():
        raise IntegrityError(d, f"unsigned model artifact (no {SIGNATURE_FILE})")
    try:
        doc = json.loads(_read_file(sig_path, keep=True)[1] or b"")
        statement = {k: v for k, v in doc.items() if k != "signature"}
        sig = base64.b64decode(doc["signature"], validate=True)
        ok = (
            statement.get("format") == FORMAT
            and statement.get("version") == VERSION
            and statement.get("algorithm") == ALGORITHM
            and isinstance(statement.get("key_id"), str)
            and _KEY_ID.fullmatch(statement["key_id"]) is not None
            and isinstance(statement.get("signed_at"), str)
            and isinstance(statement.get("files"), dict)
        )
        if not ok:
            raise ValueError("not an iotsentry-signature version 1 ed25519 document")
        _parse_time(statement["signed_at"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise IntegrityError(sig_path, f"malformed signature file ({e})") from None
    return statement, sig


def _check_key(d: Path, ring: Keyring, statement: dict[str, Any], sig: bytes) -> None:
    kid = statement["key_id"]
    info = ring.keys.get(kid)
    if info is None:
        raise IntegrityError(d, f"signed by unknown key {kid} (not in the trust store)")
    if info.status == "revoked":
        raise IntegrityError(d, f"signed by revoked key {kid}")
    try:
        Ed25519PublicKey.from_public_bytes(info.public_key).verify(sig, _canonical(statement))
    except InvalidSignature:
        raise IntegrityError(d, f"bad signature (signature.json does not verify with key {kid})") from None
    retired_at = info.retired_at if info.status == "retired" else None
    if retired_at and _parse_time(statement["signed_at"]) > _parse_time(retired_at):
        raise IntegrityError(d, f"signed by key {kid} after it was retired at {info.retired_at}")


def _verify(d: Path, keyring: KeyringLike, keep: bool) -> tuple[VerifiedArtifact, dict[str, bytes]]:
    statement, sig = _read_signature(d)
    _check_key(d, _as_keyring(keyring), statement, sig)
    try:
        expected = {
            str(n): FileDigest(str(v["sha256"]), int(v["size"])) for n, v in statement["files"].items()
        }
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(d / SIGNATURE_FILE, f"malformed file list ({e})") from None
    present = _artifact_files(d)
    extra = sorted(set(present) - set(expected))
    if extra:
        raise IntegrityError(d / extra[0], "file not covered by the signature")
    missing = sorted(set(expected) - set(present))
    if missing:
        raise IntegrityError(d / missing[0], "file listed in the signature is missing")
    blobs: dict[str, bytes] = {}
    for name, want in expected.items():
        got, data = _read_file(d / name, keep)
        if got.size != want.size:
            raise IntegrityError(d / name, f"size {got.size} differs from the signed {want.size} bytes")
        if got.sha256 != want.sha256:
            raise IntegrityError(d / name, "content differs from the signed SHA-256 (altered)")
        if data is not None:
            blobs[name] = data
    return VerifiedArtifact(d, statement["key_id"], statement["signed_at"], expected), blobs


def verify_model_dir(model_dir: str | Path, keyring: KeyringLike) -> VerifiedArtifact:
    """Check ``signature.json`` against trusted keys and every file against it.

    ``keyring`` is a :class:`Keyring`, a directory holding ``trusted_keys.json`` (or that file),
    or a list of public keys (key objects, raw 32 bytes, base64, PEM, ``.pub`` paths).

    Raises
    ------
    IntegrityError
        Unsigned, unknown / revoked key, bad signature, altered, extra or missing file.
    """
    return _verify(Path(model_dir), keyring, keep=False)[0]


def load_verified(
    model_dir: str | Path, keyring: KeyringLike, loader: Callable[[Path], T], *, snapshot: bool = True
) -> T:
    """Verify ``model_dir``, then return ``loader(path)`` (e.g. ``load_flow_model``).

    With ``snapshot`` (default) the verified bytes are written into a private temporary directory
    (mode 0700) that the loader reads and that is deleted afterwards, so what is loaded is exactly
    what was hashed even if ``model_dir`` changes meanwhile. The loader must therefore read
    everything before it returns (no memory mapping); ``InputError`` paths are mapped back to
    ``model_dir``. With ``snapshot=False`` the loader reads ``model_dir`` itself: a writer with
    access to that directory could swap a file between verification and loading.
    """
    d = Path(model_dir)
    _, blobs = _verify(d, keyring, keep=snapshot)
    if not snapshot:
        return loader(d)
    tmp = Path(tempfile.mkdtemp(prefix="iotsentry-verified-"))
    try:
        for name, data in blobs.items():
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            return loader(tmp)
        except InputError as e:
            raise InputError(e.path.replace(str(tmp), str(d), 1), e.problem) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
