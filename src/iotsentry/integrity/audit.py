"""Hash-chained, append-only audit log of security-relevant events, with signed checkpoints.

Format: JSON lines. Each line is the canonical JSON (sorted keys, no whitespace, ASCII) of one
record ``{seq, timestamp, actor, action, subject, details, prev_hash, hash}``: ``seq`` counts
from 0, ``timestamp`` is RFC 3339 UTC, ``details`` a JSON object, ``prev_hash`` the ``hash`` of
the record before (64 zeros for the first) and ``hash`` the SHA-256 (hex) of
``iotsentry-audit-v1\\n`` followed by the canonical JSON of every other field. Editing, removing
or reordering a record therefore breaks the chain at that line.

Writing: the file is opened ``O_APPEND``; every append takes an exclusive ``flock`` on it, reads
the current last record (so several processes, or a restarted one, continue the same chain),
writes whole lines with one ``write`` and ``fsync`` s before releasing the lock.

Checkpoints: with a signing key (an Ed25519 ``.key`` of :mod:`iotsentry.integrity.signing`) the
writer appends, every ``checkpoint_every`` records or on :meth:`AuditLog.checkpoint`, a record
with action ``audit.checkpoint`` whose details hold ``key_id``, ``head_seq``, ``head_hash`` (the
chain head it covers) and an Ed25519 ``signature`` over the canonical JSON of
``{head_hash, head_seq, key_id, log, timestamp}`` prefixed by ``iotsentry-audit-checkpoint-v1\\n``.
A tamperer who rewrites the whole chain (recomputing every hash) cannot re-sign it, so
:func:`verify` with a trusted keyring catches them. Limits: records after the last checkpoint
are protected only by the hash chain, and removing whole records from the end of the log is
detectable only against a checkpoint or an externally kept head (``VerifyReport.head_hash``).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from iotsentry.errors import IotSentryError
from iotsentry.integrity.signing import Keyring, KeyringLike, key_id_of, load_keyring
from iotsentry.schema import rfc3339

__all__ = [
    "ACTIONS",
    "CHECKPOINT",
    "GENESIS",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "VerifyReport",
    "read_records",
    "record_hash",
    "tail_records",
    "verify",
]

GENESIS = "0" * 64
"""``prev_hash`` of the first record."""
CHECKPOINT = "audit.checkpoint"
ACTIONS = (
    "model.load",
    "model.refused",
    "threshold.change",
    "baseline.reset",
    "alert.ack",
    "alert.assign",
    "key.rotate",
    "canary.result",
    "drift.alert",
    CHECKPOINT,
)
"""The usual actions (any ``[a-z0-9_.-]+`` name is accepted)."""
FIELDS = ("seq", "timestamp", "actor", "action", "subject", "details", "prev_hash", "hash")
_DOMAIN = b"iotsentry-audit-v1\n"
_CP_DOMAIN = b"iotsentry-audit-checkpoint-v1\n"
_ACTION = re.compile(r"[a-z0-9_.-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TAIL_CHUNK = 1 << 16


class AuditError(IotSentryError):
    """The audit log cannot be written (damaged tail, bad key, bad event)."""


@dataclass(frozen=True)
class AuditRecord:
    """One record of the chain."""

    seq: int
    timestamp: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The record as written."""
        return asdict(self)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def record_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a record's fields other than ``hash``."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(_DOMAIN + _canonical(body)).hexdigest()


def _checkpoint_statement(head_seq: int, head_hash: str, key_id: str, timestamp: str) -> bytes:
    doc = {"log": "iotsentry-audit", "head_seq": head_seq, "head_hash": head_hash}
    doc.update(key_id=key_id, timestamp=timestamp)
    return _CP_DOMAIN + _canonical(doc)


def _load_private(key: str | Path | Ed25519PrivateKey) -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    try:
        loaded = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise AuditError(f"{key}: cannot load private key ({e})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise AuditError(f"{key}: not an Ed25519 private key")
    return loaded


def _tail(fd: int) -> tuple[int, bytes | None, bool]:
    """(file size, last complete line or None, whether the file ends inside a line)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, None, False
    end = size
    buf = b""
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        buf = os.pread(fd, end - start, start) + buf
        end = start
        body = buf[:-1] if buf.endswith(b"\n") else buf
        if b"\n" in body or end == 0:
            break
    torn = not buf.endswith(b"\n")
    lines = buf.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is empty or torn
    return size, (complete[-1] if complete else None), torn


class AuditLog:
    """Appends records to a hash-chained JSON-lines log (see module docstring).

    Parameters
    ----------
    path
        The log file (created with mode 0640 when missing; parent directories too).
    actor
        Default ``actor`` of records.
    signing_key
        Ed25519 private key (``.key`` path or key object) for checkpoints; ``None`` for none.
    checkpoint_every
        With a key: append a signed checkpoint after every this many records (0: only on
        :meth:`checkpoint`).
    fsync
        ``fsync`` after every write (one per :meth:`append` / :meth:`append_many` call).

    Raises
    ------
    AuditError
        The log ends with a partial line (a torn write or a cut tail): appending would hide it;
        run :func:`verify` and rotate to a new log.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        actor: str = "iotsentry",
        signing_key: str | Path | Ed25519PrivateKey | None = None,
        checkpoint_every: int = 0,
        fsync: bool = True,
    ) -> None:
        if checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")
        self.path = Path(path)
        self.actor = actor
        self.fsync = fsync
        self.checkpoint_every = int(checkpoint_every)
        self._key = _load_private(signing_key) if signing_key is not None else None
        self.key_id = key_id_of(self._key.public_key()) if self._key is not None else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        self._cache: tuple[int, int, str] | None = None
        """(file size, last seq, last hash) after this writer's last write."""
        with self._locked():
            self._head()

    # -- plumbing -------------------------------------------------------------------------------
    def _locked(self) -> _Lock:
        if self._fd < 0:
            raise AuditError(f"{self.path}: audit log is closed")
        return _Lock(self._fd)

    def _head(self) -> tuple[int, str]:
        """(last seq, last hash) of the file; must hold the lock."""
        size = os.fstat(self._fd).st_size
        if self._cache is not None and self._cache[0] == size:
            return self._cache[1], self._cache[2]
        size, last, torn = _tail(self._fd)
        if torn:
            raise AuditError(f"{self.path}: log ends with a partial record; verify it and start a new log")
        if last is None:
            seq, h = -1, GENESIS
        else:
            try:
                rec = json.loads(last)
                seq, h = int(rec["seq"]), str(rec["hash"])
            except (ValueError, KeyError, TypeError) as e:
                raise AuditError(f"{self.path}: last record is unreadable ({e}); verify the log") from None
            if not _HEX64.fullmatch(h):
                raise AuditError(f"{self.path}: last record has no valid hash; verify the log")
        self._cache = (size, seq, h)
        return seq, h

    def _record(
        self,
        seq: int,
        prev: str,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any],
        ts: float,
    ) -> AuditRecord:
        if not _ACTION.fullmatch(action):
            raise AuditError(f"invalid audit action {action!r} (use [a-z0-9_.-]+)")
        fields: dict[str, Any] = {
            "seq": seq,
            "timestamp": rfc3339(ts),
            "actor": str(actor),
            "action": action,
            "subject": str(subject),
            "details": json.loads(_canonical(dict(details))),  # JSON-only, detached copy
            "prev_hash": prev,
        }
        return AuditRecord(**fields, hash=record_hash(fields))

    def _checkpoint_record(self, seq: int, prev: str, ts: float) -> AuditRecord:
        assert self._key is not None and self.key_id is not None
        stamp = rfc3339(ts)
        sig = self._key.sign(_checkpoint_statement(seq - 1, prev, self.key_id, stamp))
        details = {
            "key_id": self.key_id,
            "head_seq": seq - 1,
            "head_hash": prev,
            "signature": base64.b64encode(sig).decode(),
        }
        return self._record(seq, prev, self.actor, CHECKPOINT, "audit-log", details, ts)

    def _write(self, records: list[AuditRecord]) -> None:
        data = b"".join(_canonical(r.to_json()) + b"\n" for r in records)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self._fd)
        last = records[-1]
        self._cache = (os.fstat(self._fd).st_size, last.seq, last.hash)

    # -- public -----------------------------------------------------------------------------------
    def append(
        self,
        action: str,
        subject: str = "",
        details: Mapping[str, Any] | None = None,
        *,
        actor: str | None = None,
        ts: float | None = None,
    ) -> AuditRecord:
        """Append one event (plus a checkpoint when one is due); returns the event's record."""
        return self.append_many([(action, subject, details or {})], actor=actor, ts=ts)[0]

    def append_many(
        self,
        events: Iterable[tuple[str, str, Mapping[str, Any]]],
        *,
        actor: str | None = None,
        ts: float | None = None,
    ) -> list[AuditRecord]:
        """Append (action, subject, details) events under one lock and one ``fsync``.

        Returns the event records (not the checkpoints written between them).
        """
        items = list(events)
        if not items:
            return []
        out: list[AuditRecord] = []
        with self._locked():
            seq, prev = self._head()
            now = time.time() if ts is None else float(ts)
            written: list[AuditRecord] = []
            for action, subject, details in items:
                rec = self._record(seq + 1, prev, actor or self.actor, action, subject, details, now)
                written.append(rec)
                out.append(rec)
                seq, prev = rec.seq, rec.hash
                if self._key is not None and self.checkpoint_every and (seq + 1) % self.checkpoint_every == 0:
                    cp = self._checkpoint_record(seq + 1, prev, now)
                    written.append(cp)
                    seq, prev = cp.seq, cp.hash
            self._write(written)
        return out

    def checkpoint(self, ts: float | None = None) -> AuditRecord:
        """Append a signed checkpoint covering the chain so far (needs ``signing_key``)."""
        if self._key is None:
            raise AuditError(f"{self.path}: no signing key for checkpoints")
        with self._locked():
            seq, prev = self._head()
            rec = self._checkpoint_record(seq + 1, prev, time.time() if ts is None else float(ts))
            self._write([rec])
        return rec

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record (-1 and :data:`GENESIS` for an empty log)."""
        with self._locked():
            return self._head()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class _Lock:
    """``flock`` held for the ``with`` block."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


# -- reading and verification ----------------------------------------------------------------------
def read_records(path: str | Path) -> Iterator[AuditRecord]:
    """The parsable records of a log in file order (no verification; see :func:`verify`)."""
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
                yield AuditRecord(**{k: rec[k] for k in FIELDS})
            except (ValueError, KeyError, TypeError):
                continue


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`.

    ``bad_line`` is the 1-based line number of the first problem and ``problem`` its kind:
    ``edited``, ``deleted``, ``reordered``, ``chain-broken``, ``truncated``, ``malformed``,
    ``bad-checkpoint`` or ``no-trusted-checkpoint``. ``unsigned_tail`` counts the records after
    the last trusted checkpoint (protected by the chain only).
    """

    path: str
    ok: bool
    records: int = 0
    checkpoints: int = 0
    trusted_checkpoints: int = 0
    last_seq: int = -1
    head_hash: str = GENESIS
    unsigned_tail: int = 0
    bad_line: int | None = None
    problem: str | None = None
    reason: str = ""
    key_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    def summary(self) -> str:
        """One line: ``ok ...`` or ``BROKEN ...`` with the reason."""
        if self.ok:
            signed = f", {self.trusted_checkpoints} trusted checkpoint(s)" if self.trusted_checkpoints else ""
            tail = f", {self.unsigned_tail} record(s) after the last one" if self.trusted_checkpoints else ""
            return f"ok: {self.path}: {self.records} records, head seq {self.last_seq}{signed}{tail}"
        return f"BROKEN: {self.path}: {self.reason}"


def _as_ring(keyring: KeyringLike) -> Keyring:
    if isinstance(keyring, Keyring):
        return keyring
    if isinstance(keyring, str | Path):
        p = Path(keyring)
        if p.suffix == ".pub":
            return Keyring.from_public_keys([p])
        ring = load_keyring(p)
        if not ring.keys:
            raise AuditError(f"{keyring}: trust store is missing or empty")
        return ring
    return Keyring.from_public_keys(keyring)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _check_checkpoint(rec: Mapping[str, Any], ring: Keyring | None) -> tuple[str | None, bool]:
    """(problem or None, whether it was verified against a trusted key)."""
    d = rec["details"]
    try:
        kid, head_seq, head_hash = str(d["key_id"]), int(d["head_seq"]), str(d["head_hash"])
        sig = base64.b64decode(str(d["signature"]), validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        return "checkpoint details are malformed", False
    if head_seq != rec["seq"] - 1 or head_hash != rec["prev_hash"]:
        return "checkpoint does not cover the chain head before it", False
    if ring is None:
        return None, False
    info = ring.keys.get(kid)
    if info is None:
        return f"checkpoint signed by unknown key {kid} (not trusted)", False
    if info.status == "revoked":
        return f"checkpoint signed by revoked key {kid}", False
    try:
        Ed25519PublicKey.from_public_bytes(info.public_key).verify(
            sig, _checkpoint_statement(head_seq, head_hash, kid, str(rec["timestamp"]))
        )
    except InvalidSignature:
        return f"checkpoint signature does not verify with key {kid}", False
    retired = info.retired_at if info.status == "retired" else None
    if retired and _parse_time(str(rec["timestamp"])) > _parse_time(retired):
        return f"checkpoint signed by key {kid} after it was retired", False
    return None, True


def _valid_shape(rec: Any) -> bool:
    return (
        isinstance(rec, dict)
        and set(rec) == set(FIELDS)
        and isinstance(rec["seq"], int)
        and not isinstance(rec["seq"], bool)
        and all(
            isinstance(rec[k], str) for k in ("timestamp", "actor", "action", "subject", "prev_hash", "hash")
        )
        and isinstance(rec["details"], dict)
    )


def verify(path: str | Path, keyring: KeyringLike | None = None) -> VerifyReport:
    """Check the chain of an audit log (and its checkpoints against ``keyring`` when given).

    ``keyring`` is a :class:`~iotsentry.integrity.signing.Keyring`, a directory holding
    ``trusted_keys.json`` (or that file), a ``.pub`` file, or a list of public keys. With a
    keyring, every checkpoint must verify with a trusted, non-revoked key and a non-empty log
    must hold at least one.

    Returns
    -------
    VerifyReport
        ``ok`` or the first bad line with the kind of problem and a one-line reason.
    """
    p = Path(path)
    ring = _as_ring(keyring) if keyring is not None else None
    rep = VerifyReport(str(p), ok=True)
    try:
        data = p.read_bytes()
    except OSError as e:
        return _fail(rep, None, "malformed", f"cannot read ({e.strerror or e})")
    lines = data.split(b"\n")
    tail_torn = lines[-1] != b""
    if not tail_torn:
        lines = lines[:-1]
    parsed: list[Any] = []
    for raw in lines:
        try:
            parsed.append(json.loads(raw))
        except ValueError:
            parsed.append(None)
    seq_line = {r["seq"]: i for i, r in enumerate(parsed) if _valid_shape(r)}
    prev_seq, prev_hash = -1, GENESIS
    since_trusted = 0
    for i, rec in enumerate(parsed):
        n = i + 1
        last = i == len(parsed) - 1
        if last and tail_torn:
            return _fail(rep, n, "truncated", "last record is cut short (no end of line): truncated tail")
        if not _valid_shape(rec):
            return _fail(rep, n, "malformed", "not an audit record (unparsable or wrong fields)")
        if record_hash(rec) != rec["hash"]:
            return _fail(
                rep, n, "edited", f"seq {rec['seq']}: content does not match its hash (record edited)"
            )
        seq, want = rec["seq"], prev_seq + 1
        if seq != want:
            later = seq_line.get(want)
            if later is not None and later > i:
                why = f"seq {seq} where {want} was expected; seq {want} is at line {later + 1}: reordered"
                return _fail(rep, n, "reordered", why)
            if seq > want:
                gone = f"seq {want}" if seq == want + 1 else f"seqs {want}..{seq - 1}"
                return _fail(rep, n, "deleted", f"seq {seq} where {want} was expected: {gone} deleted")
            return _fail(
                rep, n, "reordered", f"seq {seq} after seq {prev_seq}: records reordered or duplicated"
            )
        if rec["prev_hash"] != prev_hash:
            where = "the chain start" if n == 1 else f"line {n - 1}'s hash"
            why = f"seq {seq}: prev_hash does not match {where} (an earlier record was replaced or rewritten)"
            return _fail(rep, n, "chain-broken", why)
        if rec["action"] == CHECKPOINT:
            problem, trusted = _check_checkpoint(rec, ring)
            if problem is not None:
                return _fail(rep, n, "bad-checkpoint", f"seq {seq}: {problem}")
            rep.checkpoints += 1
            if trusted:
                rep.trusted_checkpoints += 1
                since_trusted = 0
                kid = str(rec["details"]["key_id"])
                if kid not in rep.key_ids:
                    rep.key_ids.append(kid)
        else:
            since_trusted += 1
        rep.records += 1
        prev_seq, prev_hash = seq, rec["hash"]
        rep.last_seq, rep.head_hash = seq, prev_hash
    rep.unsigned_tail = since_trusted
    if ring is not None and rep.records and not rep.trusted_checkpoints:
        return _fail(rep, None, "no-trusted-checkpoint", "no checkpoint signed by a trusted key")
    return rep


def _fail(rep: VerifyReport, line: int | None, problem: str, why: str) -> VerifyReport:
    rep.ok = False
    rep.bad_line = line
    rep.problem = problem
    rep.reason = f"line {line}: {why}" if line is not None else why
    return rep


def tail_records(path: str | Path, n: int | None = None) -> Sequence[AuditRecord]:
    """The last ``n`` parsable records (all when ``n`` is None)."""
    recs = list(read_records(path))
    return recs if n is None else recs[-n:] if n > 0 else []
