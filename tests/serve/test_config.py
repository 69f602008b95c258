"""The serve configuration: the example parses; every problem is one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotsentry.serve.cli import main
from iotsentry.serve.config import ConfigError, load_config

GOOD = """
[store]
target = "data/iotsentry.db"

[[source]]
kind = "pcap-dir"
name = "lan"
path = "spool"
settle_s = 2.5

[[source]]
kind = "netflow"
port = 2055

[learning]
seconds = 600

[[sink]]
uri = "syslog+udp://127.0.0.1:514"
[[sink]]
path = "alerts.jsonl"

[api]
enabled = true
port = 8088

[canary]
interval_s = 3600

[audit]
path = "audit.jsonl"

[model]
dir = "models/flows"
keyring = "keys"
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "serve.toml"
    p.write_text(text)
    return p


def test_the_example_parses_into_typed_values_with_paths_from_the_file(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.store == str(tmp_path / "data" / "iotsentry.db")
    lan, nf = cfg.sources
    assert (lan.kind, lan.name, lan.path, lan.settle_s) == ("pcap-dir", "lan", tmp_path / "spool", 2.5)
    assert (nf.kind, nf.name, nf.port) == ("netflow", "netflow-1", 2055)
    assert cfg.learning_seconds == 600.0
    assert [s.uri for s in cfg.sinks] == ["syslog+udp://127.0.0.1:514", f"jsonl:{tmp_path / 'alerts.jsonl'}"]
    assert cfg.api.enabled and cfg.api.port == 8088 and cfg.api.host == "127.0.0.1"
    assert cfg.canary_interval_s == 3600.0
    assert cfg.model_dir == tmp_path / "models" / "flows" and cfg.model_keyring == tmp_path / "keys"
    assert cfg.resolved_state_dir() == tmp_path / "data" / "serve-state"


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (
            ("[learning]\nseconds = 600", "[learning]\nseconds = 600\nsecnds = 3"),
            "learning.secnds",
            "unknown key",
        ),
        (("seconds = 600", "seconds = -5"), "learning.seconds", "must be > 0"),
        (("seconds = 600", 'seconds = "ten"'), "learning.seconds", "finite number"),
        (('kind = "netflow"', 'kind = "sflow"'), "source[1].kind", "expected one of"),
        (("port = 2055", "port = 70000"), "source[1].port", "between 0 and 65535"),
        (('path = "spool"', 'directory = "spool"'), "source[0].directory", "unknown key"),
        (("[api]\nenabled = true", "[api]\nenabled = 1"), "api.enabled", "true or false"),
        (
            ('uri = "syslog+udp://127.0.0.1:514"', 'uri = "carrier-pigeon://x"'),
            "sink[0].uri",
            "unknown scheme",
        ),
        (
            ('[[sink]]\npath = "alerts.jsonl"', '[[sink]]\npath = "a"\nuri = "memory:"'),
            "sink[1]",
            "exactly one",
        ),
        (('keyring = "keys"', ""), "model.keyring", "required"),
        (('name = "lan"', 'name = "netflow-1"'), "source[1].name", "duplicate"),
        (("[canary]", "[canaries]"), "canaries", "unknown section"),
    ],
)
def test_each_problem_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, change: tuple[str, str], key: str, words: str
) -> None:
    assert change[0] in GOOD
    p = _write(tmp_path, GOOD.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: {key}: "), msg
    assert words in msg, msg


def test_missing_store_target_no_source_and_bad_toml(tmp_path: Path) -> None:
    for text, key in (
        (GOOD.replace('target = "data/iotsentry.db"', ""), "store.target"),
        ("[store]\ntarget = 'x.db'\n", "source"),
        ("[store\n", "-"),
    ):
        with pytest.raises(ConfigError) as ei:
            load_config(_write(tmp_path, text))
        assert f": {key}: " in str(ei.value) and "\n" not in str(ei.value)


def test_check_config_prints_ok_or_the_one_line_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(tmp_path, GOOD)
    assert main(["--check-config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("seconds = 600", "seconds = 0"))
    assert main(["--check-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "learning.seconds" in err and str(bad) in err


def test_the_shipped_example_config_is_valid_with_its_commented_sources_too(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "serve.example.toml"
    cfg = load_config(example)
    assert [s.kind for s in cfg.sources] == ["pcap-dir"] and cfg.api.enabled
    assert cfg.audit_path is not None and cfg.audit_path.is_absolute()
    # the commented-out alternatives are valid too once enabled
    text = example.read_text()
    enabled = "\n".join(
        line[2:]
        if line.startswith("# [[")
        or line.startswith("# kind")
        or line.startswith("# name")
        or line.startswith("# host")
        or line.startswith("# port")
        or line.startswith("# uri")
        else line
        for line in text.splitlines()
    )
    (tmp_path / "all.toml").write_text(enabled)
    full = load_config(tmp_path / "all.toml")
    assert [s.kind for s in full.sources] == ["pcap-dir", "netflow"] and len(full.sinks) == 2
