"""Zeek conn.log (TSV/JSON, IoT-23 and Slips labeled variants) and flow-CSV readers."""

from __future__ import annotations

import csv
import json
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import data_path
from iotsentry.capture.flowcsv import iter_flow_csv, read_flow_csv
from iotsentry.capture.zeek import iter_conn_log, read_conn_log, read_flows
from iotsentry.errors import InputError, LinesSkipped
from iotsentry.schema import FlowBatch, ip_from_str, ip_to_str, mac_from_str

IOT23 = ("iot23", "zeek")
SLIPS = ("scan-bruteforce-exfil-samples", "stratosphere-slips")
ICS = ("ics-pcap-zeek-logs",)


def _labels(b: FlowBatch) -> Counter[tuple[str, str]]:
    return Counter(zip(b.label.tolist(), b.detailed_label.tolist(), strict=True))


def _reference_rows(path: Path) -> list[list[str]]:
    """Data rows of a Zeek TSV log split the simple way (an independent, per-row reference)."""
    rows = []
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            head, *rest = line.split("   ")  # IoT-23: tunnel_parents   label   detailed-label
            rows.append(head.split("\t") + rest)
    return rows


def _check_row(b: FlowBatch, i: int, ref: dict[str, str], unset: tuple[str, ...]) -> None:
    """Compare row ``i`` of a batch with a {zeek column: text} row."""

    def num(key: str) -> float:
        return 0.0 if ref[key] in unset else float(ref[key])

    assert b.ts[i] == float(ref["ts"])
    assert b.duration[i] == num("duration")
    assert (b.src_ip_hi[i], b.src_ip_lo[i]) == ip_from_str(ref["id.orig_h"])
    assert (b.dst_ip_hi[i], b.dst_ip_lo[i]) == ip_from_str(ref["id.resp_h"])
    assert (b.src_port[i], b.dst_port[i]) == (int(ref["id.orig_p"]), int(ref["id.resp_p"]))
    assert b.src_pkts[i] == num("orig_pkts") and b.dst_pkts[i] == num("resp_pkts")
    assert b.src_bytes[i] == num("orig_ip_bytes") and b.dst_bytes[i] == num("resp_ip_bytes")
    assert b.src_payload[i] == num("orig_bytes") and b.dst_payload[i] == num("resp_bytes")
    assert b.uid[i] == ref["uid"]
    assert b.conn_state[i] == ref["conn_state"]
    assert b.service[i] == ("" if ref["service"] in unset else ref["service"])
    assert b.history[i] == ("" if ref["history"] in unset else ref["history"])


# ---------------------------------------------------------------------------------------------
# IoT-23 labeled conn logs (counts from iot23/SOURCE.md)
# ---------------------------------------------------------------------------------------------

IOT23_LOGS = {
    "CTU-Honeypot-Capture-4-1": (452, {("benign", "-"): 452}),
    "CTU-IoT-Malware-Capture-34-1": (
        23_145,
        {
            ("malicious", "DDoS"): 14_394,
            ("malicious", "C&C"): 6_706,
            ("benign", "-"): 1_923,
            ("malicious", "PartOfAHorizontalPortScan"): 122,
        },
    ),
    "CTU-IoT-Malware-Capture-42-1": (
        4_426,
        {("benign", "-"): 4_420, ("malicious", "FileDownload"): 3, ("malicious", "C&C-FileDownload"): 3},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(IOT23_LOGS))
def test_iot23_conn_log_counts_and_labels(scenario: str) -> None:
    path = data_path(*IOT23, scenario, "conn.log.labeled")
    flows, labels = IOT23_LOGS[scenario]
    b = read_conn_log(path)
    assert len(b) == flows
    assert _labels(b) == labels
    assert np.array_equal(b.flow_id, np.arange(flows))
    assert (b.first_index == -1).all()
    # every row equals an independent per-row split of the text
    ref = _reference_rows(path)
    assert len(ref) == flows
    header = (
        next(line for line in path.read_text().splitlines() if line.startswith("#fields"))
        .replace("   ", "\t")
        .split("\t")[1:]
    )
    for i in range(0, flows, max(1, flows // 200)):
        _check_row(b, i, dict(zip(header, ref[i], strict=True)), ("-", "(empty)"))


@pytest.mark.slow
def test_iot23_34_1_spot_rows_and_speed() -> None:
    path = data_path(*IOT23, "CTU-IoT-Malware-Capture-34-1", "conn.log.labeled")
    t0 = time.perf_counter()
    b = read_conn_log(path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"23k rows took {elapsed:.2f} s"
    # first data row (line 9):
    # 1545403816.962094 CrDn63WjJEmrWGjqf 192.168.1.195 41040 185.244.25.235 80 tcp - 3.139211 0 0 S0
    # - - 0 S 3 180 0 0 -   Benign   -
    assert b.ts[0] == 1545403816.962094 and b.uid[0] == "CrDn63WjJEmrWGjqf"
    assert (b.src_ip_hi[0], b.src_ip_lo[0]) == ip_from_str("192.168.1.195")
    assert (b.dst_ip_hi[0], b.dst_ip_lo[0]) == ip_from_str("185.244.25.235")
    assert (b.src_port[0], b.dst_port[0], b.proto[0]) == (41040, 80, 6)
    assert b.duration[0] == 3.139211 and b.service[0] == "" and b.conn_state[0] == "S0"
    assert (b.src_pkts[0], b.src_bytes[0], b.dst_pkts[0], b.dst_bytes[0]) == (3, 180, 0, 0)
    assert (b.label[0], b.detailed_label[0]) == ("benign", "-")
    # second row has unset duration/bytes: "-" -> 0
    assert b.uid[1] == "CY9lJW3gh1Eje4usP6" and b.duration[1] == 0.0 and b.src_payload[1] == 0
    assert (b.src_pkts[1], b.src_bytes[1]) == (1, 60)
    # last row: udp NTP
    assert b.uid[-1] == "Ct2Yhy4d33oL3yyZY9" and b.proto[-1] == 17 and b.dst_port[-1] == 123


@pytest.mark.slow
def test_iot23_42_1_http_row() -> None:
    b = read_conn_log(data_path(*IOT23, "CTU-IoT-Malware-Capture-42-1", "conn.log.labeled"))
    # line 9: ... 104.24.96.120 80 tcp http 3.909013 83 67212 SF - - 4380 ShADadttFf 54 3371 50 69224 -
    #         Malicious   FileDownload
    i = int(np.nonzero(b.uid == "CXY5uG2sSmjJ0grfY2")[0][0])
    assert i == 0
    assert b.service[i] == "http" and b.history[i] == "ShADadttFf"
    assert (b.src_payload[i], b.dst_payload[i]) == (83, 67212)
    assert (b.src_pkts[i], b.src_bytes[i], b.dst_pkts[i], b.dst_bytes[i]) == (54, 3371, 50, 69224)
    assert (b.label[i], b.detailed_label[i]) == ("malicious", "FileDownload")
    assert (b.label[1], b.detailed_label[1]) == ("malicious", "C&C-FileDownload")


@pytest.mark.slow
def test_iter_conn_log_chunks_concatenate_to_whole() -> None:
    path = data_path(*IOT23, "CTU-IoT-Malware-Capture-42-1", "conn.log.labeled")
    whole = read_conn_log(path)
    chunks = list(iter_conn_log(path, chunk_rows=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 1000, 1000, 426]
    joined = FlowBatch.concat(chunks)
    assert set(joined.columns) == set(whole.columns)
    for k, v in whole.columns.items():
        assert np.array_equal(joined.columns[k], v), k


# ---------------------------------------------------------------------------------------------
# Stratosphere Slips test data
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_slips_vertical_json_conn_log() -> None:
    path = data_path(*SLIPS, "port-scans", "vertical", "conn.log")
    b = read_conn_log(path)
    assert len(b) == 50
    assert Counter(b.conn_state.tolist()) == {"REJ": 43, "SF": 4, "RSTO": 3}
    assert len(set(b.dst_port.tolist())) == 44
    assert {ip_to_str(h, lo) for h, lo in zip(b.src_ip_hi, b.src_ip_lo, strict=True)} == {"192.168.1.9"}
    dst = Counter(ip_to_str(h, lo) for h, lo in zip(b.dst_ip_hi, b.dst_ip_lo, strict=True))
    assert dst == {"45.33.32.156": 46, "192.168.1.1": 3, "185.199.110.133": 1}  # grep -c of the text
    assert not b.has("label")  # unlabeled log: no label column
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for i, rec in enumerate(records):  # every row against the JSON text
        _check_row(b, i, {k: str(v) for k, v in rec.items()} | {"service": rec.get("service", "-")}, ("-",))
        # JSON logs carry L2 addresses
        assert b.src_mac[i] == mac_from_str(rec["orig_l2_addr"])
        assert b.dst_mac[i] == mac_from_str(rec["resp_l2_addr"])
    assert set(b.src_mac.tolist()) == {mac_from_str("c4:23:60:3d:fd:d3")}
    assert read_flows(path).n == 50


@pytest.mark.slow
def test_slips_horizontal_tsv_relative_timestamps() -> None:
    b = read_conn_log(data_path(*SLIPS, "port-scans", "horizontal", "conn.log"))
    assert len(b) == 41
    assert (b.ts[0], b.ts[-1]) == (928.943457, 958.869115)  # relative, loaded as given
    assert (b.ts.min(), b.ts.max()) == (928.943457, 960.869113)
    assert int(((b.proto == 6) & (b.dst_port == 80)).sum()) == 30
    assert len({(h, lo) for h, lo in zip(b.dst_ip_hi, b.dst_ip_lo, strict=True)}) == 29
    # line 9: ... 195.113.214.219 80 tcp http 0.055687 261 1077 SF ... ShADadfF 5 473 5 1281 (empty)
    assert (b.service[0], b.history[0], b.src_payload[0], b.dst_bytes[0]) == ("http", "ShADadfF", 261, 1281)


@pytest.mark.slow
def test_slips_test18_labeled_tab_separated() -> None:
    b = read_conn_log(
        data_path(*SLIPS, "test18-malicious-ctu-sme-11-win", "zeek-labeled", "conn.log.labeled")
    )
    assert len(b) == 766
    labels = Counter(b.label.tolist())
    assert labels == {"malicious": 719, "benign": 44, "unknown": 3}
    det = _labels(b)
    assert det[("malicious", "From_malicious-To_malicious-Malware_data_exfiltration-RemcosRAT")] == 719
    assert det[("benign", "From_benign-To_benign-Device_chromecast_tv_assistant")] == 20
    assert det[("benign", "From_benign-To_benign")] == 12
    assert det[("benign", "From_benign-To_benign-Multicast")] == 7
    assert det[("unknown", "-")] == 3  # "(empty)" detailedlabel -> "-"
    mal = b.label == "malicious"
    assert Counter(b.conn_state[mal].tolist()) == {"REJ": 718, "S0": 1}
    assert int(b.src_payload[mal].sum()) == 0 and set(b.dst_port[mal].tolist()) == {5888}


@pytest.mark.slow
def test_non_conn_zeek_log_is_refused() -> None:
    path = data_path(*SLIPS, "test18-malicious-ctu-sme-11-win", "zeek-labeled", "dns.log.labeled")
    with pytest.raises(InputError, match="dns"):
        read_conn_log(path)


# ---------------------------------------------------------------------------------------------
# ICS Zeek logs (counts from ics-pcap-zeek-logs/SOURCE.md)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("parts", "flows", "origins"),
    [
        (("4SICS-GeekLounge-151020", "conn.log"), 12_444, 8),
        (("ETHERNET_IP-mb", "conn.log"), 160, 19),
        (("TRIDIUM-jace2", "conn.log"), 1_730, 42),
    ],
)
def test_ics_conn_logs(parts: tuple[str, ...], flows: int, origins: int) -> None:
    b = read_flows(data_path(*ICS, *parts))
    assert len(b) == flows
    assert len({(h, lo) for h, lo in zip(b.src_ip_hi, b.src_ip_lo, strict=True)}) == origins
    assert not b.has("label")


@pytest.mark.slow
def test_ics_details() -> None:
    b = read_conn_log(data_path(*ICS, "4SICS-GeekLounge-151020", "conn.log"))
    ports = Counter(b.dst_port.tolist())
    assert ports[102] == 7_201 and ports[53] == 2_652
    t = read_conn_log(data_path(*ICS, "TRIDIUM-jace2", "conn.log"))
    svc = Counter(t.service.tolist())
    assert (svc["dns"], svc["http"], svc["dhcp"]) == (732, 26, 17)
    s7 = sorted(data_path(*ICS, "S7").glob("*/conn.log"))
    assert len(s7) == 2
    for p in s7:
        f = read_conn_log(p)
        assert len(f) == 2 and set(f.dst_port.tolist()) == {102}


@pytest.mark.slow
def test_ics_icmpv6_is_58() -> None:
    b = read_conn_log(data_path(*ICS, "ETHERNET_IP-mb", "conn.log"))
    v6 = b.src_ip_hi != 0
    assert v6.any()
    icmp_rows = [
        ln for ln in _reference_rows(data_path(*ICS, "ETHERNET_IP-mb", "conn.log")) if ln[6] == "icmp"
    ]
    n6 = sum(":" in r[2] for r in icmp_rows)
    assert int((b.proto == 58).sum()) == n6 and int((b.proto == 1).sum()) == len(icmp_rows) - n6


# ---------------------------------------------------------------------------------------------
# IoT-23 flow CSVs
# ---------------------------------------------------------------------------------------------

CSVS = {
    "CTU-Honeypot-Capture-5-1-labeled.csv": (1_374, {("benign", "-"): 1_374}),
    "CTU-Honeypot-Capture-7-1-labeled.csv": (130, {("benign", "-"): 130}),
    "CTU-Malware-Capture-20-1-labeled.csv": (3_209, {("benign", "-"): 3_193, ("malicious", "C&C-Torii"): 16}),
    "CTU-Malware-Capture-21-1-labeled.csv": (3_286, {("benign", "-"): 3_272, ("malicious", "C&C-Torii"): 14}),
    "CTU-Malware-Capture-44-1-labeled.csv": (
        237,
        {
            ("benign", "-"): 211,
            ("malicious", "C&C"): 14,
            ("malicious", "C&C-FileDownload"): 11,
            ("malicious", "DDoS"): 1,
        },
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CSVS))
def test_iot23_csv(name: str) -> None:
    path = data_path("iot23", "csv", name)
    flows, labels = CSVS[name]
    b = read_flow_csv(path)
    assert len(b) == flows
    assert _labels(b) == labels
    assert np.array_equal(b.flow_id, np.arange(flows))
    with path.open(newline="") as f:
        ref = list(csv.DictReader(f))
    for i in range(0, flows, max(1, flows // 100)):
        _check_row(b, i, ref[i], ("",))
    assert read_flows(path).n == flows  # the dispatcher recognises the header


@pytest.mark.slow
def test_csv_spot_row() -> None:
    b = read_flow_csv(data_path("iot23", "csv", "CTU-Malware-Capture-44-1-labeled.csv"))
    # 1547150789.067208,CzsY0D4B96NTr8m7ld,192.168.1.199,59222,46.101.251.172,80,tcp,http,1.686784,149,
    # 171750,SF,,,11584,ShADadttfF,122,7741,122,178102,,Malicious,C&C-FileDownload
    assert b.uid[0] == "CzsY0D4B96NTr8m7ld" and b.service[0] == "http"
    assert (b.src_payload[0], b.dst_payload[0], b.dst_bytes[0]) == (149, 171750, 178102)
    assert (b.label[0], b.detailed_label[0]) == ("malicious", "C&C-FileDownload")
    ipv6 = read_flow_csv(data_path("iot23", "csv", "CTU-Honeypot-Capture-5-1-labeled.csv"))
    # last row: fe80::1c5c:213d:7cf8:890,143,ff02::16,0,icmp -> ICMPv6 type 143 (MLDv2 report)
    assert ip_to_str(ipv6.src_ip_hi[-1], ipv6.src_ip_lo[-1]) == "fe80::1c5c:213d:7cf8:890"
    assert (ipv6.proto[-1], ipv6.src_port[-1], ipv6.history[-1]) == (58, 143, "")


@pytest.mark.slow
def test_iter_flow_csv_chunks() -> None:
    path = data_path("iot23", "csv", "CTU-Malware-Capture-20-1-labeled.csv")
    chunks = list(iter_flow_csv(path, chunk_rows=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 1000, 209]
    assert np.array_equal(FlowBatch.concat(chunks).flow_id, np.arange(3209))


# ---------------------------------------------------------------------------------------------
# Bad input (small files made from real heads, then damaged)
# ---------------------------------------------------------------------------------------------


def _head(path: Path, n: int) -> list[str]:
    return path.read_text().splitlines(keepends=True)[:n]


def test_random_bytes(tmp_path: Path) -> None:
    p = tmp_path / "random.log"
    p.write_bytes(np.random.default_rng(7).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for reader in (read_conn_log, read_flows, read_flow_csv):
        with pytest.raises(InputError) as err:
            reader(p)
        assert str(p) in str(err.value)
    with pytest.raises(InputError, match="not a Zeek conn log or flow CSV"):
        read_flows(p)


def test_text_that_is_no_log(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("hello,world\n1,2\n")
    with pytest.raises(InputError, match="not a Zeek conn log or flow CSV"):
        read_flows(p)


def test_empty_files(tmp_path: Path) -> None:
    p = tmp_path / "empty.log"
    p.write_bytes(b"")
    for reader in (read_conn_log, read_flows, read_flow_csv):
        b = reader(p)
        assert isinstance(b, FlowBatch) and len(b) == 0


@pytest.mark.slow
def test_header_only_tsv_is_empty(tmp_path: Path) -> None:
    p = tmp_path / "conn.log"
    p.write_text("".join(_head(data_path(*IOT23, "CTU-Honeypot-Capture-4-1", "conn.log.labeled"), 8)))
    assert len(read_conn_log(p)) == 0


def _skipping(read: Callable[[], FlowBatch], path: Path, count: int, first: str) -> FlowBatch:
    """Run ``read``: exactly one LinesSkipped warning, naming the file, the count and the first line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read()
    skipped = [w.message for w in caught if issubclass(w.category, LinesSkipped)]
    assert len(skipped) == 1, [str(w.message) for w in caught]
    msg = str(skipped[0])
    assert msg.startswith(f"{path}: skipped {count} malformed line(s); the first, ") and re.search(first, msg)
    return got


@pytest.mark.slow
def test_wrong_column_count_names_line(tmp_path: Path) -> None:
    lines = _head(data_path(*IOT23, "CTU-IoT-Malware-Capture-34-1", "conn.log.labeled"), 20)
    lines[11] = lines[11].replace("\t", "", 1)  # file line 12 loses a column
    p = tmp_path / "conn.log.labeled"
    p.write_text("".join(lines))
    got = _skipping(lambda: read_conn_log(p), p, 1, r"line 12: 22 columns, expected 23")
    assert len(got) == 20 - 8 - 1  # 8 header lines, the bad row skipped


@pytest.mark.slow
def test_truncated_last_row(tmp_path: Path) -> None:
    text = data_path(*SLIPS, "port-scans", "horizontal", "conn.log").read_text()
    p = tmp_path / "conn.log"
    p.write_text(text[: len(text) - 40])  # cut in the middle of the last row (line 49)
    got = _skipping(lambda: read_conn_log(p), p, 1, r"line 49: \d+ columns, expected")
    assert len(got) == len(read_conn_log(data_path(*SLIPS, "port-scans", "horizontal", "conn.log"))) - 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (3, "999.1.2.3", "id.orig_h"),
        (4, "http", "id.orig_p"),
        (18, "12x", "orig_ip_bytes"),
        (7, "sctpx", "proto"),
    ],
)
def test_bad_values_name_line_and_column(tmp_path: Path, column: int, value: str, message: str) -> None:
    lines = _head(data_path(*ICS, "ETHERNET_IP-mb", "conn.log"), 30)
    parts = lines[20].split("\t")
    parts[column - 1] = value
    lines[20] = "\t".join(parts)
    p = tmp_path / "conn.log"
    p.write_text("".join(lines))
    got = _skipping(lambda: read_conn_log(p), p, 1, rf"line 21: bad {message} value")
    assert len(got) == 30 - 8 - 1


@pytest.mark.slow
def test_bad_json_line(tmp_path: Path) -> None:
    lines = _head(data_path(*SLIPS, "port-scans", "vertical", "conn.log"), 10)
    lines[4] = lines[4][:50] + "\n"
    p = tmp_path / "conn.json"
    p.write_text("".join(lines))
    got = _skipping(lambda: read_flows(p), p, 1, r"line 5: not valid JSON")
    assert len(got) == 9


@pytest.mark.slow
def test_joy_json_is_not_a_conn_log() -> None:
    path = data_path("nemea-siot-joy-flows", "ipcam", "no-cloud", "no-cloud-video.json")
    with pytest.raises(InputError, match="not a Zeek conn log"):
        read_flows(path)


@pytest.mark.slow
def test_bad_csv_row(tmp_path: Path) -> None:
    lines = _head(data_path("iot23", "csv", "CTU-Honeypot-Capture-7-1-labeled.csv"), 10)
    lines[6] = lines[6].rstrip("\n") + ",extra\n"
    p = tmp_path / "flows.csv"
    p.write_text("".join(lines))
    got = _skipping(lambda: read_flows(p), p, 1, r"line 7: 24 columns, expected 23")
    assert len(got) == 10 - 1 - 1  # the header, the bad row skipped


@pytest.mark.slow
def test_many_bad_values_are_skipped_row_by_row_and_the_rest_kept(tmp_path: Path) -> None:
    """More bad rows in a chunk than the drop-and-retry budget: the rows are converted one at a
    time; every good row is kept, in order, with consecutive flow ids."""
    src = data_path(*ICS, "ETHERNET_IP-mb", "conn.log")
    lines = _head(src, 400)
    first_data = next(i for i, x in enumerate(lines) if not x.startswith("#"))
    bad = list(range(first_data, len(lines), 7))[:60]
    for i in bad:
        parts = lines[i].split("\t")
        parts[17] = "12x"  # orig_ip_bytes
        lines[i] = "\t".join(parts)
    p = tmp_path / "conn.log"
    p.write_text("".join(lines))
    got = _skipping(lambda: read_conn_log(p), p, len(bad), rf"line {bad[0] + 1}: bad orig_ip_bytes value")
    whole = read_conn_log(src)
    data = [i for i in range(first_data, len(lines)) if not lines[i].startswith("#")]
    keep = [k for k, i in enumerate(data) if i not in bad]
    assert len(got) == len(keep)
    assert np.array_equal(got.columns["ts"], whole.columns["ts"][keep])
    assert np.array_equal(got.columns["flow_id"], np.arange(len(keep)))
