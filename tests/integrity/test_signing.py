"""Model signing: real Ed25519 keys, a real trained flow model, every tamper and trust case, the CLI."""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotsentry.errors import InputError, IotSentryError
from iotsentry.integrity import keys_cli
from iotsentry.integrity.signing import (
    KEYRING_FILE,
    SIGNATURE_FILE,
    IntegrityError,
    KeyInfo,
    generate_keypair,
    key_id_of,
    load_keyring,
    load_verified,
    revoke_key,
    rotate_key,
    sign_model_dir,
    trust_key,
    verify_model_dir,
)

HEADER = (
    "ts,uid,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto,service,duration,orig_bytes,resp_bytes,"
    "conn_state,local_orig,local_resp,missed_bytes,history,orig_pkts,orig_ip_bytes,resp_pkts,"
    "resp_ip_bytes,tunnel_parents,label,detailed-label"
)


def _flow_csv(path: Path) -> Path:
    """A small IoT-23-style labeled CSV: benign TLS sessions and a malicious telnet scan."""
    rng = np.random.default_rng(0)
    rows = [HEADER]
    for i in range(60):
        ts = f"{1_600_000_000 + 2.5 * i:.6f}"
        if i % 3 == 0:
            rows.append(
                f"{ts},C{i:05d},192.168.1.50,{40000 + i},203.0.113.{i % 7 + 1},23,tcp,,0.0001,0,0,S0,,,0,"
                "S,1,60,0,0,,Malicious,PartOfAHorizontalPortScan"
            )
        else:
            rows.append(
                f"{ts},C{i:05d},192.168.1.20,{50000 + i},198.51.100.{i % 5 + 1},443,tcp,ssl,"
                f"{rng.uniform(0.5, 3):.4f},{rng.integers(300, 900)},{rng.integers(2000, 9000)},SF,,,0,"
                f"ShADadFf,{rng.integers(8, 20)},1200,{rng.integers(8, 20)},9000,,Benign,-"
            )
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real flow model directory (trained once per module)."""
    from iotsentry.detectors.flow_models import train_flows

    root = tmp_path_factory.mktemp("trained")
    train_flows([_flow_csv(root / "flows.csv")], root / "model", "hgb")
    return root / "model"


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    rotate_key(d)  # first key: active
    return d


@pytest.fixture
def signed(trained: Path, keydir: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    sign_model_dir(model, _active_key(keydir))
    return model


def _active_key(keydir: Path) -> Path:
    active = load_keyring(keydir).active
    assert active is not None
    return keydir / f"{active.key_id}.key"


def _retired_key(keydir: Path) -> Path:
    kid = next(k.key_id for k in load_keyring(keydir).keys.values() if k.status == "retired")
    return keydir / f"{kid}.key"


def _fails(model: Path, keyring: object, *words: str) -> IntegrityError:
    with pytest.raises(IntegrityError) as ei:
        verify_model_dir(model, keyring)  # type: ignore[arg-type]
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return ei.value


# -- keys ------------------------------------------------------------------------------------------------
def test_generate_keypair_files_mode_and_stable_key_id(tmp_path: Path) -> None:
    info = generate_keypair(tmp_path / "k")
    assert info.private_key_path == tmp_path / "k" / f"{info.key_id}.key"
    assert stat.S_IMODE(os.stat(info.private_key_path).st_mode) == 0o600
    priv = serialization.load_pem_private_key(info.private_key_path.read_bytes(), password=None)
    assert isinstance(priv, Ed25519PrivateKey)
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == info.public_key and len(raw) == 32
    import hashlib

    assert info.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert key_id_of(info.public_key_path.read_bytes()) == info.key_id  # type: ignore[union-attr]
    assert key_id_of(base64.b64encode(raw).decode()) == info.key_id
    assert [p.name for p in (tmp_path / "k").iterdir() if p.name.endswith(".tmp")] == []


def test_private_key_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        info = generate_keypair(tmp_path, name="signer")
    finally:
        os.umask(old)
    assert info.private_key_path == tmp_path / "signer.key"
    assert stat.S_IMODE(os.stat(tmp_path / "signer.key").st_mode) == 0o600


def test_key_files_are_never_overwritten(tmp_path: Path) -> None:
    generate_keypair(tmp_path, name="same")
    before = (tmp_path / "same.key").read_bytes()
    with pytest.raises(IntegrityError, match="refusing to overwrite"):
        generate_keypair(tmp_path, name="same")
    assert (tmp_path / "same.key").read_bytes() == before


def test_rotate_retires_the_previous_key_and_revoke_marks_it(tmp_path: Path) -> None:
    first = rotate_key(tmp_path)
    second = rotate_key(tmp_path)
    ring = load_keyring(tmp_path)
    assert ring.active is not None and ring.active.key_id == second.key_id
    assert ring.keys[first.key_id].status == "retired" and ring.keys[first.key_id].retired_at
    revoke_key(tmp_path, first.key_id)
    doc = json.loads((tmp_path / KEYRING_FILE).read_text())
    entry = next(k for k in doc["keys"] if k["key_id"] == first.key_id)
    assert entry["status"] == "revoked" and entry["revoked_at"]
    assert base64.b64decode(entry["public_key"]) == first.public_key
    with pytest.raises(IntegrityError, match="no key"):
        revoke_key(tmp_path, "0" * 16)


def test_damaged_trust_store_is_one_clear_error(tmp_path: Path) -> None:
    info = rotate_key(tmp_path)
    doc = json.loads((tmp_path / KEYRING_FILE).read_text())
    doc["keys"][0]["key_id"] = "f" * 16  # does not match the public key
    (tmp_path / KEYRING_FILE).write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="unreadable trust store"):
        load_keyring(tmp_path)
    assert info.key_id != "f" * 16


def test_trust_key_refuses_a_second_active_key(tmp_path: Path) -> None:
    rotate_key(tmp_path)
    with pytest.raises(IntegrityError, match="already active"):
        trust_key(tmp_path, generate_keypair(tmp_path / "other"))


# -- sign / verify / load ---------------------------------------------------------------------------------
def test_round_trip_sign_verify_load(signed: Path, keydir: Path, trained: Path) -> None:
    from iotsentry.detectors.flow_models import load_flow_model

    doc = json.loads((signed / SIGNATURE_FILE).read_text())
    assert doc["format"] == "iotsentry-signature" and doc["version"] == 1 and doc["algorithm"] == "ed25519"
    assert set(doc["files"]) == {"manifest.json", "weights.npz"}
    assert doc["signed_at"].endswith("Z")
    manifest = json.loads((signed / "manifest.json").read_text())
    assert doc["files"]["weights.npz"]["sha256"] == manifest["weights_sha256"]
    assert doc["files"]["weights.npz"]["size"] == (signed / "weights.npz").stat().st_size

    v = verify_model_dir(signed, keydir)
    assert v.key_id == doc["key_id"] == load_keyring(keydir).active.key_id  # type: ignore[union-attr]
    assert v.signed_at == doc["signed_at"] and v.files["manifest.json"].size > 0

    model, m2 = load_verified(signed, keydir, load_flow_model)
    ref, _ = load_flow_model(trained)
    assert m2 == manifest
    X = np.random.default_rng(1).random((5, len(manifest["feature_names"])))
    np.testing.assert_array_equal(model.evaluate(X)[0], ref.evaluate(X)[0])


def test_keyring_as_list_of_public_keys(signed: Path, keydir: Path) -> None:
    active = load_keyring(keydir).active
    assert active is not None
    assert verify_model_dir(signed, [active.public_key]).key_id == active.key_id
    assert verify_model_dir(signed, [keydir / f"{active.key_id}.pub"]).key_id == active.key_id
    other = Ed25519PrivateKey.generate().public_key()
    _fails(signed, [other], "unknown key", active.key_id)


def test_unsigned_artifact(trained: Path, keydir: Path) -> None:
    _fails(trained, keydir, str(trained), "unsigned")


def test_flipped_byte_in_weights(signed: Path, keydir: Path) -> None:
    w = signed / "weights.npz"
    raw = bytearray(w.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    w.write_bytes(bytes(raw))
    _fails(signed, keydir, "weights.npz", "SHA-256")


def test_edited_manifest(signed: Path, keydir: Path) -> None:
    m = signed / "manifest.json"
    doc = json.loads(m.read_text())
    doc["classes"] = ["benign"]
    m.write_text(json.dumps(doc, indent=2, sort_keys=True))
    _fails(signed, keydir, "manifest.json")


def test_same_size_edit_of_manifest(signed: Path, keydir: Path) -> None:
    m = signed / "manifest.json"
    m.write_text(m.read_text().replace('"hgb"', '"mlp"'))
    _fails(signed, keydir, "manifest.json", "SHA-256")


def test_extra_file(signed: Path, keydir: Path) -> None:
    (signed / "extra.npz").write_bytes(b"not signed")
    _fails(signed, keydir, "extra.npz", "not covered")


def test_missing_file(signed: Path, keydir: Path) -> None:
    (signed / "weights.npz").unlink()
    _fails(signed, keydir, "weights.npz", "missing")


def test_subdirectory_and_symlink_refused(trained: Path, keydir: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(trained, model)
    (model / "sub").mkdir()
    with pytest.raises(IntegrityError, match="not a regular file"):
        sign_model_dir(model, _active_key(keydir))
    (model / "sub").rmdir()
    sign_model_dir(model, _active_key(keydir))
    (model / "link").symlink_to(model / "weights.npz")
    _fails(model, keydir, "link", "not a regular file")


def test_unknown_key(signed: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    rotate_key(other)
    _fails(signed, other, "unknown key")


def test_revoked_key(signed: Path, keydir: Path) -> None:
    kid = verify_model_dir(signed, keydir).key_id
    revoke_key(keydir, kid)
    _fails(signed, keydir, "revoked key", kid)


def test_retired_key_still_verifies_old_signatures_but_cannot_sign(signed: Path, keydir: Path) -> None:
    old_key = _active_key(keydir)
    old = verify_model_dir(signed, keydir).key_id
    new = rotate_key(keydir)
    assert load_keyring(keydir).keys[old].status == "retired"
    assert verify_model_dir(signed, keydir).key_id == old
    with pytest.raises(IntegrityError, match="retired"):
        sign_model_dir(signed, old_key)
    sign_model_dir(signed, new.private_key_path)  # type: ignore[arg-type]
    assert verify_model_dir(signed, keydir).key_id == new.key_id


def test_retired_key_signature_dated_after_retirement_fails(signed: Path, keydir: Path) -> None:
    rotate_key(keydir)
    loose = signed.parent / "loose.key"  # a copy of the retired key outside its trust store
    shutil.copy(_retired_key(keydir), loose)
    sign_model_dir(signed, loose)
    _fails(signed, keydir, "after it was retired")


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("signature", None, ("bad signature",)),
        ("signed_at", "2001-01-01T00:00:00.000000Z", ("bad signature",)),
        ("key_id", "0123456789abcdef", ("unknown key",)),
        ("files", {}, ("bad signature",)),
        ("format", "other", ("malformed signature file",)),
    ],
)
def test_altered_signature_file(
    signed: Path, keydir: Path, field: str, value: object, words: tuple[str]
) -> None:
    p = signed / SIGNATURE_FILE
    doc = json.loads(p.read_text())
    if value is None:
        sig = bytearray(base64.b64decode(doc["signature"]))
        sig[0] ^= 0x80
        value = base64.b64encode(bytes(sig)).decode()
    doc[field] = value
    p.write_text(json.dumps(doc))
    _fails(signed, keydir, str(signed), *words)


def test_not_json_signature(signed: Path, keydir: Path) -> None:
    (signed / SIGNATURE_FILE).write_text("{nope")
    _fails(signed, keydir, SIGNATURE_FILE, "malformed")


def test_resigning_covers_new_files(signed: Path, keydir: Path) -> None:
    (signed / "notes.txt").write_text("training notes\n")
    sign_model_dir(signed, _active_key(keydir))
    assert "notes.txt" in verify_model_dir(signed, keydir).files


def test_load_verified_refuses_before_calling_the_loader(signed: Path, keydir: Path) -> None:
    (signed / "manifest.json").write_text("{}")
    calls: list[Path] = []
    with pytest.raises(IntegrityError):
        load_verified(signed, keydir, calls.append)
    assert calls == []


def test_load_verified_hands_over_a_snapshot_of_the_verified_bytes(signed: Path, keydir: Path) -> None:
    def loader(d: Path) -> bytes:
        assert d != signed and stat.S_IMODE(d.stat().st_mode) == 0o700
        (signed / "weights.npz").write_bytes(b"swapped after verification")
        return (d / "weights.npz").read_bytes()

    original = (signed / "weights.npz").read_bytes()
    assert load_verified(signed, keydir, loader) == original


def test_load_verified_maps_loader_errors_to_the_model_dir(signed: Path, keydir: Path) -> None:
    def loader(d: Path) -> None:
        raise InputError(d / "manifest.json", "bad manifest")

    with pytest.raises(InputError) as ei:
        load_verified(signed, keydir, loader)
    assert str(ei.value) == f"{signed / 'manifest.json'}: bad manifest"


def test_detector_artifact_with_detector_load(keydir: Path, tmp_path: Path) -> None:
    from iotsentry.detectors.flow_classifier import FlowIForest

    X = np.random.default_rng(0).random((64, 3))
    det = FlowIForest(n_estimators=5, random_state=0).fit(X)
    det.save(tmp_path / "det")
    sign_model_dir(tmp_path / "det", _active_key(keydir))
    loaded = load_verified(tmp_path / "det", keydir, FlowIForest.load)
    np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))


def test_integrity_error_is_one_line_iotsentry_error() -> None:
    e = IntegrityError("dir/evil\nname", "problem")
    assert isinstance(e, IotSentryError) and "\n" not in str(e)


def test_import_does_not_pull_heavy_libraries() -> None:
    code = (
        "import sys, iotsentry.integrity.signing, iotsentry.integrity.keys_cli;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numba', 'sklearn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- command line ------------------------------------------------------------------------------------------
def _cli(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="iotsentry")
    keys_cli.register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(list(argv))
    try:
        return int(args.func(args))
    except IotSentryError as e:  # what iotsentry.cli.main does
        print(f"iotsentry: error: {e}", file=sys.stderr)
        return 2


def test_cli_keys_and_model(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kd, model = tmp_path / "keys", tmp_path / "model"
    shutil.copytree(trained, model)
    assert _cli("keys", "generate", "--dir", str(kd)) == 0
    first = load_keyring(kd).active
    assert first is not None and first.key_id in capsys.readouterr().out
    assert _cli("keys", "generate", "--dir", str(kd)) == 2
    assert "keys rotate" in capsys.readouterr().err

    assert _cli("model", "sign", str(model), "--key", str(kd / f"{first.key_id}.key")) == 0
    capsys.readouterr()
    assert _cli("model", "verify", str(model), "--keyring", str(kd)) == 0
    assert capsys.readouterr().out.startswith(first.key_id)

    assert _cli("keys", "rotate", "--dir", str(kd)) == 0
    capsys.readouterr()
    assert _cli("keys", "list", "--dir", str(kd), "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert {k["status"] for k in listed} == {"active", "retired"}
    assert _cli("model", "verify", str(model), "--keyring", str(kd)) == 0
    capsys.readouterr()

    assert _cli("keys", "revoke", "--dir", str(kd), first.key_id) == 0
    assert _cli("keys", "list", "--dir", str(kd)) == 0
    assert "revoked" in capsys.readouterr().out
    assert _cli("model", "verify", str(model), "--keyring", str(kd)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("iotsentry: error: ") and "revoked key" in err


def test_cli_verify_exit_2_on_tampering(
    signed: Path, keydir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (signed / "weights.npz").write_bytes(b"tampered")
    ns = argparse.Namespace(dir=str(signed), keyring=str(keydir))
    assert keys_cli.cmd_model_verify(ns) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights.npz" in err


def test_keyinfo_json_round_trip(tmp_path: Path) -> None:
    info = rotate_key(tmp_path)
    assert isinstance(info, KeyInfo)
    assert load_keyring(tmp_path / KEYRING_FILE).keys[info.key_id].to_json() == info.to_json()
