"""Audit log: chain integrity, every tamper kind named at the right line, checkpoints, concurrency, CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
from pathlib import Path

import pytest

from iotsentry.integrity import audit_cli
from iotsentry.integrity.audit import (
    CHECKPOINT,
    GENESIS,
    AuditError,
    AuditLog,
    read_records,
    record_hash,
    verify,
)
from iotsentry.integrity.signing import generate_keypair, revoke_key, rotate_key, trust_key


def _write_log(path: Path, n: int = 10, **kw: object) -> list[str]:
    with AuditLog(path, actor="tester", **kw) as log:  # type: ignore[arg-type]
        for i in range(n):
            log.append("threshold.change", f"dev-{i}", {"old": i, "new": i + 1})
    return path.read_text().splitlines(keepends=True)


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def _edit(line: str, **changes: object) -> str:
    rec = json.loads(line)
    rec.update(changes)
    return json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"


def _rehash(line: str, **changes: object) -> str:
    rec = json.loads(line)
    rec.update(changes)
    rec["hash"] = record_hash(rec)
    return json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"


def test_records_form_a_chain_and_verify(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write_log(log, 5)
    recs = list(read_records(log))
    assert [r.seq for r in recs] == [0, 1, 2, 3, 4]
    assert recs[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(recs))
    assert all(r.hash == record_hash(r.to_json()) for r in recs)
    assert recs[0].timestamp.endswith("Z") and "T" in recs[0].timestamp
    assert recs[2].details == {"old": 2, "new": 3} and recs[2].actor == "tester"
    rep = verify(log)
    assert rep.ok and rep.records == 5 and rep.last_seq == 4 and rep.head_hash == recs[-1].hash
    assert len(lines) == 5


def test_chain_resumes_after_restart(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, 3)
    with AuditLog(log) as again:
        assert again.head()[0] == 2
        rec = again.append("baseline.reset", "00:17:88:75:b3:82", {"why": "re-learn"})
    assert rec.seq == 3
    assert verify(log).ok and verify(log).records == 4


def test_edited_record_is_named(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    lines = _write_log(log, 8)
    lines[4] = _edit(lines[4], details={"old": 4, "new": 999})
    _rewrite(log, lines)
    rep = verify(log)
    assert not rep.ok and rep.bad_line == 5 and rep.problem == "edited", rep.reason
    assert rep.reason.startswith("line 5:")


def test_edited_record_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    lines = _write_log(log, 8)
    lines[4] = _rehash(lines[4], actor="mallory")
    _rewrite(log, lines)
    rep = verify(log)
    assert not rep.ok and rep.bad_line == 6 and rep.problem == "chain-broken", rep.reason


def test_deleted_record_is_named(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    lines = _write_log(log, 8)
    del lines[3]
    _rewrite(log, lines)
    rep = verify(log)
    assert not rep.ok and rep.bad_line == 4 and rep.problem == "deleted", rep.reason
    assert "seq 3 deleted" in rep.reason
    # the first record too
    lines = _write_log(tmp_path / "b.jsonl", 4)
    _rewrite(tmp_path / "b.jsonl", lines[1:])
    rep = verify(tmp_path / "b.jsonl")
    assert rep.bad_line == 1 and rep.problem == "deleted"


def test_reordered_records_are_named(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    lines = _write_log(log, 8)
    lines[2], lines[3] = lines[3], lines[2]
    _rewrite(log, lines)
    rep = verify(log)
    assert not rep.ok and rep.bad_line == 3 and rep.problem == "reordered", rep.reason
    assert "line 4" in rep.reason


def test_truncated_tail_is_named(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    _write_log(log, 6)
    data = log.read_bytes()
    log.write_bytes(data[:-25])
    rep = verify(log)
    assert not rep.ok and rep.bad_line == 6 and rep.problem == "truncated", rep.reason
    # a writer refuses to extend a log with a torn last line
    with pytest.raises(AuditError, match="partial record"):
        AuditLog(log)


def test_malformed_line_is_named(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    lines = _write_log(log, 5)
    lines[1] = "garbage\n"
    _rewrite(log, lines)
    rep = verify(log)
    assert rep.bad_line == 2 and rep.problem == "malformed"


def _keys(tmp_path: Path) -> Path:
    kd = tmp_path / "keys"
    trust_key(kd, generate_keypair(kd, "audit"))
    return kd


def test_signed_checkpoints_verify_against_the_trust_store(tmp_path: Path) -> None:
    kd = _keys(tmp_path)
    log = tmp_path / "a.jsonl"
    _write_log(log, 10, signing_key=kd / "audit.key", checkpoint_every=4)
    recs = list(read_records(log))
    cps = [r for r in recs if r.action == CHECKPOINT]
    assert len(cps) >= 2
    assert all(r.details["head_hash"] == r.prev_hash for r in cps)
    rep = verify(log, keyring=kd)
    assert rep.ok and rep.trusted_checkpoints == len(cps), rep.reason
    assert verify(log, keyring=kd / "audit.pub").ok
    # a log with no checkpoint fails against a keyring (it could have been rewritten entirely)
    plain = tmp_path / "plain.jsonl"
    _write_log(plain, 3)
    rep = verify(plain, keyring=kd)
    assert not rep.ok and rep.problem == "no-trusted-checkpoint"


def test_whole_chain_rewrite_is_caught_by_the_checkpoint(tmp_path: Path) -> None:
    kd = _keys(tmp_path)
    log = tmp_path / "a.jsonl"
    lines = _write_log(log, 6, signing_key=kd / "audit.key", checkpoint_every=3)
    # rewrite record 1 and recompute every hash after it, keeping all links consistent
    recs = [json.loads(x) for x in lines]
    recs[1]["details"] = {"old": 1, "new": 12345}
    prev = recs[0]["hash"]
    for r in recs[1:]:
        r["prev_hash"] = prev
        if r["action"] == CHECKPOINT:
            r["details"]["head_hash"] = prev  # the tamperer cannot re-sign
        r["hash"] = record_hash(r)
        prev = r["hash"]
    _rewrite(log, [json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in recs])
    assert verify(log).ok  # the chain alone is consistent again ...
    rep = verify(log, keyring=kd)  # ... but not against the trusted key
    first_cp = next(i for i, r in enumerate(recs) if r["action"] == CHECKPOINT)
    assert not rep.ok and rep.problem == "bad-checkpoint" and rep.bad_line == first_cp + 1, rep.reason


def test_checkpoint_by_an_untrusted_or_revoked_key_is_bad(tmp_path: Path) -> None:
    kd = _keys(tmp_path)
    other = tmp_path / "other"
    generate_keypair(other, "rogue")
    log = tmp_path / "a.jsonl"
    _write_log(log, 2, signing_key=other / "rogue.key")
    with AuditLog(log, signing_key=other / "rogue.key") as w:
        w.checkpoint()
    rep = verify(log, keyring=kd)
    assert rep.problem == "bad-checkpoint" and rep.bad_line == 3 and "unknown key" in rep.reason
    # rotation keeps old checkpoints valid; revocation does not
    log2 = tmp_path / "b.jsonl"
    with AuditLog(log2, signing_key=kd / "audit.key") as w:
        w.append("model.load", "m1", {})
        w.checkpoint()
    new = rotate_key(kd)
    assert verify(log2, keyring=kd).ok
    with AuditLog(log2, signing_key=new.private_key_path) as w:
        w.append("key.rotate", new.key_id, {})
        w.checkpoint()
    assert verify(log2, keyring=kd).trusted_checkpoints == 2
    old_id = next(k for k in verify(log2, keyring=kd).key_ids if k != new.key_id)
    revoke_key(kd, old_id)
    rep = verify(log2, keyring=kd)
    assert rep.problem == "bad-checkpoint" and rep.bad_line == 2 and "revoked" in rep.reason


def _worker(path: str, tag: str, n: int) -> None:
    with AuditLog(path, actor=tag) as log:
        for i in range(n):
            log.append("alert.ack", f"{tag}-{i}", {"i": i})


def test_concurrent_appends_from_two_processes_keep_one_valid_chain(tmp_path: Path) -> None:
    log = tmp_path / "shared.jsonl"
    AuditLog(log).close()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(log), t, 150)) for t in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rep = verify(log)
    assert rep.ok and rep.records == 300, rep.reason
    actors = [r.actor for r in read_records(log)]
    assert actors.count("p1") == 150 and actors.count("p2") == 150


def test_batch_append_is_one_chain(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    with AuditLog(log, fsync=False) as w:
        out = w.append_many([("alert.assign", f"a{i}", {"to": "soc"}) for i in range(5)])
    assert [r.seq for r in out] == [0, 1, 2, 3, 4] and verify(log).ok
    with pytest.raises(AuditError):
        AuditLog(tmp_path / "b.jsonl").append("Bad Action!")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="iotsentry")
    audit_cli.register(ap.add_subparsers(dest="command", required=True))
    return ap


def test_cli_verify_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kd = _keys(tmp_path)
    log = tmp_path / "a.jsonl"
    lines = _write_log(log, 5, signing_key=kd / "audit.key", checkpoint_every=5)
    args = _parser().parse_args(["audit", "verify", str(log), "--trusted-keys", str(kd)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("ok:")
    args = _parser().parse_args(["audit", "show", str(log), "--tail", "2"])
    assert args.func(args) == 0
    shown = capsys.readouterr().out.strip().splitlines()
    assert len(shown) == 2 and CHECKPOINT in shown[-1]
    lines[2] = _edit(lines[2], subject="other")
    _rewrite(log, lines)
    args = _parser().parse_args(["audit", "verify", str(log), "--json"])
    assert args.func(args) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["bad_line"] == 3 and doc["problem"] == "edited"
    args = _parser().parse_args(["audit", "verify", str(log)])
    assert args.func(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("BROKEN:") and "line 3" in err and "\n" not in err
