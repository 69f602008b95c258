"""Real Flower deployment of the flow classifier: TLS, SuperNode keys, split, scaler, and a live run."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import socket
import stat
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import data_path

pytest.importorskip("flwr")

from iotsentry.errors import IotSentryError
from iotsentry.federated import deploy
from iotsentry.federated.sites import class_time_split, combine_moments, moments


def test_class_time_split_is_per_class_and_in_time() -> None:
    rng = np.random.default_rng(0)
    ts = rng.permutation(100).astype(float)
    y = np.array(["benign"] * 90 + ["malicious"] * 10)
    tr, te = class_time_split(y, 0.8, ts=ts)

    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(100))
    for c, n in (("benign", 90), ("malicious", 10)):
        a, b = tr[y[tr] == c], te[y[te] == c]
        assert (len(a), len(b)) == (round(0.8 * n), n - round(0.8 * n))
        assert ts[a].max() < ts[b].min()  # within a class, every held-out row is later
    assert np.all(np.diff(ts[tr]) >= 0) and np.all(np.diff(ts[te]) >= 0)


def test_class_time_split_small_classes_and_bad_fraction() -> None:
    tr, te = class_time_split(["benign", "malicious", "malicious"], 0.8, ts=[3.0, 1.0, 2.0])
    assert tr.tolist() == [1, 0]  # malicious 1 (t=1), benign 0 (t=3): one row of a class trains
    assert te.tolist() == [2]
    with pytest.raises(ValueError):
        class_time_split(["benign"], 1.0, ts=[1.0])


def test_scaler_from_site_sums_equals_pooled_mean_std() -> None:
    rng = np.random.default_rng(1)
    parts = [
        rng.normal(loc=i, scale=1 + i, size=(n, 5)).astype(np.float32) for i, n in enumerate((7, 300, 41))
    ]
    mean, std = combine_moments(moments(X) for X in parts)
    pooled = np.vstack(parts).astype(np.float64)
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-5, atol=1e-5)
    assert mean.dtype == np.float32 and std.dtype == np.float32


def test_tls_certificate_validates_for_loopback_and_key_is_private(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    tls = deploy.make_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    store = Store([ca])
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = PolicyBuilder().store(store).build_server_verifier(name).verify(cert, [])
        assert chain[-1] == ca
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("example.org")).verify(cert, [])
    assert stat.S_IMODE(os.stat(tls.server_key).st_mode) == 0o600


def test_supernode_keys_are_openssh_p384(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    keys = deploy.make_node_keys(tmp_path, "site-1")
    priv = load_ssh_private_key(keys.private_key.read_bytes(), None)
    pub = load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(priv, ec.EllipticCurvePrivateKey) and isinstance(pub, ec.EllipticCurvePublicKey)
    assert priv.curve.name == "secp384r1"
    assert priv.public_key().public_numbers() == pub.public_numbers()
    assert stat.S_IMODE(os.stat(keys.private_key).st_mode) == 0o600


def test_app_project_declares_the_deployment_components(tmp_path: Path) -> None:
    app = deploy.write_app_project(tmp_path, {"num-rounds": 2, "out-dir": "/x y/out"})
    cfg = tomllib.loads((app / "pyproject.toml").read_text())
    assert cfg["tool"]["flwr"]["app"]["components"] == deploy.APP_COMPONENTS
    assert cfg["tool"]["flwr"]["app"]["config"]["num-rounds"] == 2
    assert cfg["tool"]["flwr"]["app"]["config"]["out-dir"] == "/x y/out"
    from flwr.common.config import validate_config

    ok, errors, _ = validate_config(cfg, check_module=True, project_dir=app)
    assert ok, errors
    with pytest.raises(IotSentryError):
        deploy.write_app_project(tmp_path, {"no-such-key": 1})


def test_user_errors_name_the_path(tmp_path: Path) -> None:
    from iotsentry.federated.deploy_cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    missing = tmp_path / "nope"
    args = parser.parse_args(
        ["site", "--data", str(missing), "--superlink", "127.0.0.1:9", "--auth-key", "k"]
    )
    with pytest.raises(IotSentryError, match=str(missing)):
        args.func(args)

    data = tmp_path / "site"
    data.mkdir()
    (data / "x-labeled.csv").write_text("")
    bad = tmp_path / "no-ca.pem"
    args = parser.parse_args(
        [
            "site",
            "--data",
            str(data),
            "--superlink",
            "127.0.0.1:9",
            "--root-cert",
            str(bad),
            "--auth-key",
            "k",
        ]
    )
    with pytest.raises(IotSentryError, match=str(bad)):
        args.func(args)

    args = parser.parse_args(["server", "--state-dir", str(tmp_path / "state"), "--rounds", "0"])
    with pytest.raises(IotSentryError, match="--rounds 0"):
        args.func(args)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(IotSentryError, match=f"127.0.0.1:{port}: port in use"):
            deploy.start_superlink(tmp_path / "state", port=port)
    assert deploy.leftover_processes(tmp_path / "state") == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_superlink_and_three_authenticated_supernodes_complete_rounds(tmp_path: Path) -> None:
    from iotsentry.detectors.flow_mlp import FlowMLP
    from iotsentry.detectors.flow_models import load_flow_model, score_flows

    files = [
        data_path("iot23", "csv", "CTU-Malware-Capture-44-1-labeled.csv"),
        data_path("iot23", "csv", "CTU-Malware-Capture-20-1-labeled.csv"),
        data_path("iot23", "csv", "CTU-Malware-Capture-21-1-labeled.csv"),
    ]
    sites = []
    for i, f in enumerate(files):
        d = tmp_path / "data" / f"site-{i}"
        d.mkdir(parents=True)
        (d / f.name).symlink_to(f)
        sites.append(d)
    state = tmp_path / "state"
    procs: list[deploy.FlowerProcess] = []
    link = None
    try:
        link = deploy.start_superlink(state)  # TLS + --enable-supernode-auth by default
        assert link.ca_cert is not None and not link.insecure

        # refused: a SuperNode whose key was never registered ...
        rogue = deploy.make_node_keys(state / "rogue-keys", "rogue")
        p = deploy.start_supernode(
            link.address, sites[0], state / "nodes", root_cert=link.ca_cert, auth_key=rogue.private_key,
            name="rogue", max_retries=0,
        )  # fmt: skip
        procs.append(p)
        assert p.popen.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in p.log_path.read_text()

        keys = [deploy.make_node_keys(state / "keys", f"site-{i}") for i in range(3)]
        node_ids = [deploy.register_supernode(link, k.public_key, f"site-{i}") for i, k in enumerate(keys)]

        # ... and a registered one that does not trust the SuperLink's CA (TLS check)
        other_ca = deploy.make_tls(state / "other-tls").ca_cert
        p = deploy.start_supernode(
            link.address, sites[0], state / "nodes", root_cert=other_ca, auth_key=keys[0].private_key,
            name="wrong-ca", max_retries=0,
        )  # fmt: skip
        procs.append(p)
        assert p.popen.wait(timeout=60) != 0
        assert "CERTIFICATE_VERIFY_FAILED" in p.log_path.read_text()

        for i, (d, k) in enumerate(zip(sites, keys, strict=True)):
            procs.append(
                deploy.start_supernode(
                    link.address,
                    d,
                    state / "nodes",
                    root_cert=link.ca_cert,
                    auth_key=k.private_key,
                    name=f"site-{i}",
                )
            )
        out = tmp_path / "out"
        run_config: dict[str, object] = {"num-rounds": 2, "min-nodes": 3, "out-dir": str(out)}
        signing = importlib.util.find_spec("iotsentry.integrity.signing") is not None
        if signing:  # sign the model directory when the integrity package is present
            from iotsentry.integrity.signing import generate_keypair

            signer = generate_keypair(tmp_path / "signing")
            run_config["signing-key"] = str(signer.private_key_path)
        res = deploy.run_app(link, run_config, timeout=240)

        summary = res["summary"]
        assert res["status"] == "finished:completed"
        assert summary["completed_rounds"] == 2
        assert {s["node_id"] for s in summary["sites"]} == set(node_ids)
        for rnd in summary["rounds"]:
            assert rnd["n_trained"] == 3
            assert {s["node_id"] for s in rnd["sites"] if s["trained"] and s["evaluated"]} == set(node_ids)
            assert all(s["bytes_up"] > 0 and s["bytes_down"] > s["bytes_up"] for s in rnd["sites"])
            assert all(s["auc"] is not None and 0.0 <= s["auc"] <= 1.0 for s in rnd["sites"])
        assert (out / "fl-summary.json").is_file()

        listed = {int(n["node-id"]): n["status"] for n in deploy.list_supernodes(link)}
        assert listed == dict.fromkeys(node_ids, "online")  # the rogue key never became a node

        model, manifest = load_flow_model(out / "model")
        assert isinstance(model, FlowMLP)
        assert manifest["model"] == "mlp" and manifest["training"]["federated"]
        _, _, score, _ = score_flows(files[0], out / "model")
        assert summary["signed"] == signing
        if signing:
            from iotsentry.integrity.signing import verify_model_dir

            assert verify_model_dir(out / "model", [signer.public_key]).key_id == signer.key_id
        assert np.isfinite(score).all() and len(score) > 0
    finally:
        left = deploy.stop_all([*procs, link.process if link else None], state)
    assert left == []
    assert deploy.leftover_processes(state) == []
    assert all(not p.alive() for p in procs)
