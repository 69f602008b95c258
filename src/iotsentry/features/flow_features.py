"""Per-flow feature matrix from Zeek conn fields, for the flow-log detectors (BENCHMARKS Q2).

:func:`flow_matrix` turns a :class:`~iotsentry.schema.FlowBatch` (from a Zeek conn log, an
IoT-23 CSV or the flow meter) into ``float32[n, F]`` plus the feature names. Groups:

* **volume** -- ``log1p`` of packets, IP bytes and payload bytes per direction, of the
  duration, of bytes per packet per direction; ``log`` ratios responder/originator (bytes,
  packets) and the payload share of the IP bytes;
* **state** -- one-hot of Zeek's ``conn_state`` (``S0``, ``SF``, ``REJ``, ... and ``other``);
* **history** -- presence of each Zeek history letter, originator (upper case) and responder
  (lower case) separately, plus ``log1p`` of the history length;
* **protocol** -- one-hot of ``proto`` (tcp/udp/icmp/other) and of ``service`` (Zeek's
  protocol detection: dns, http, ssl, dhcp, ntp, ssh, irc, other, none);
* **ports** -- the responder port as a one-hot of well-known groups (dns, web, ssh/telnet,
  mail, ...; then "other < 1024", "registered", "ephemeral"), never the raw number; whether
  the originator port is below 1024;
* **responder scope** -- whether the responder address is private/link-local, multicast or
  broadcast, or public (a coarse category: no address bits are features);
* **originator context** -- over the flows started by the same originator in the previous
  ``window`` seconds (default 60; the flow itself excluded): their number, the number of
  distinct responders and of distinct responder ports, flows to this flow's responder, and the
  fraction of failed connection attempts (``S0``/``REJ``). Computed with one sort and a numba
  two-pointer sweep (no Python loop per flow).

Addresses, MACs, uids and absolute timestamps are never features (scenario-specific labels
in IoT-23 follow IP rules, so address features would not generalise).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from iotsentry.schema import FlowBatch, is_ipv4

__all__ = ["CONN_STATES", "FEATURE_NAMES", "PORT_GROUPS", "SERVICES", "flow_matrix", "originator_context"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

CONN_STATES = ("S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH")
"""Zeek ``conn_state`` values (anything else falls into ``state_other``)."""

FAILED_STATES = ("S0", "REJ")
"""States that count as a failed connection attempt in the originator context."""

HISTORY_LETTERS = "shadfrcgtwiq^"
"""Zeek ``history`` letters; each is a feature for the originator and for the responder."""

SERVICES = ("dns", "http", "ssl", "dhcp", "ntp", "ssh", "irc")
"""Zeek services with their own column (other non-empty -> ``service_other``, empty -> ``service_none``)."""

PORT_GROUPS: dict[str, tuple[int, ...]] = {
    "dns": (53, 5353, 5355),
    "web": (80, 443, 8000, 8008, 8080, 8081, 8443, 8888),
    "remote": (22, 23, 2222, 2323, 3389, 5900),
    "mail": (25, 110, 143, 465, 587, 993, 995),
    "ntp": (123,),
    "dhcp": (67, 68, 546, 547),
    "discovery": (137, 138, 139, 445, 1900, 5350, 5351),
    "irc": (194, 6660, 6661, 6662, 6663, 6664, 6665, 6666, 6667, 6668, 6669, 6697),
    "iot": (1883, 8883, 5683, 5684, 7547, 37215, 52869),
}
"""Well-known responder-port groups; other ports: ``low`` (< 1024), ``registered``, ``ephemeral``."""

_VOLUME = [
    "log_src_pkts",
    "log_dst_pkts",
    "log_src_bytes",
    "log_dst_bytes",
    "log_src_payload",
    "log_dst_payload",
    "log_duration",
    "log_src_bytes_per_pkt",
    "log_dst_bytes_per_pkt",
    "log_ratio_bytes_dst_src",
    "log_ratio_pkts_dst_src",
    "payload_share",
    "no_response",
]
_CONTEXT = [
    "ctx_flows",
    "ctx_responders",
    "ctx_resp_ports",
    "ctx_same_responder",
    "ctx_failed_frac",
]

FEATURE_NAMES: list[str] = [
    *_VOLUME,
    *(f"state_{s}" for s in CONN_STATES),
    "state_other",
    *(f"hist_orig_{c}" for c in HISTORY_LETTERS),
    *(f"hist_resp_{c}" for c in HISTORY_LETTERS),
    "log_history_len",
    "proto_tcp",
    "proto_udp",
    "proto_icmp",
    "proto_other",
    *(f"service_{s}" for s in SERVICES),
    "service_other",
    "service_none",
    *(f"dport_{g}" for g in PORT_GROUPS),
    "dport_low",
    "dport_registered",
    "dport_ephemeral",
    "sport_low",
    "resp_private",
    "resp_multicast",
    "resp_public",
    *(f"{c}_log" if c != "ctx_failed_frac" else c for c in _CONTEXT),
]
"""Column names of :func:`flow_matrix`, in order."""


def _str_col(flows: FlowBatch, name: str) -> npt.NDArray[np.str_]:
    if flows.has(name):
        return np.asarray(flows.columns[name], dtype=object).astype(str)
    return np.full(len(flows), "", dtype=str)


def _one_hot(values: npt.NDArray[np.str_], vocab: tuple[str, ...]) -> F64:
    """One column per vocabulary entry plus a final "other" column."""
    uniq, inv = np.unique(values, return_inverse=True)
    code = np.array([vocab.index(u) if u in vocab else len(vocab) for u in uniq], dtype=np.int64)
    out = np.zeros((len(values), len(vocab) + 1))
    out[np.arange(len(values)), code[inv.reshape(-1)]] = 1.0
    return out


def _history_flags(history: npt.NDArray[np.str_]) -> F64:
    """Per distinct history string: originator letters, responder letters, log length."""
    uniq, inv = np.unique(history, return_inverse=True)
    k = len(HISTORY_LETTERS)
    table = np.zeros((len(uniq), 2 * k + 1))
    for r, h in enumerate(uniq):  # one pass per *distinct* history (a few hundred at most)
        letters = set(h)
        for j, c in enumerate(HISTORY_LETTERS):
            table[r, j] = float(c.upper() in letters or (c == "^" and c in letters))
            table[r, k + j] = float(c in letters and c != "^")
        table[r, 2 * k] = np.log1p(len(h))
    return table[inv.reshape(-1)]


def _port_groups(port: npt.NDArray[np.int64]) -> F64:
    groups = list(PORT_GROUPS.values())
    out = np.zeros((len(port), len(groups) + 3))
    assigned = np.zeros(len(port), dtype=bool)
    for j, ports in enumerate(groups):
        m = np.isin(port, ports)
        out[m, j] = 1.0
        assigned |= m
    rest = ~assigned
    out[rest & (port < 1024), len(groups)] = 1.0
    out[rest & (port >= 1024) & (port < 49152), len(groups) + 1] = 1.0
    out[rest & (port >= 49152), len(groups) + 2] = 1.0
    return out


def _responder_scope(hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> F64:
    """Columns private/link-local, multicast/broadcast, public (coarse scope only)."""
    v4 = is_ipv4(hi, lo)
    a = (lo & np.uint64(0xFFFFFFFF)).astype(np.int64)
    b1, b2 = a >> 24, (a >> 16) & 0xFF
    private4 = (b1 == 10) | ((b1 == 172) & (b2 >= 16) & (b2 < 32)) | ((b1 == 192) & (b2 == 168))
    private4 |= (b1 == 169) & (b2 == 254)
    private4 |= (b1 == 127) | (a == 0)
    multi4 = (b1 >= 224) | ((a & 0xFF) == 0xFF)
    top = (hi >> np.uint64(48)).astype(np.int64)
    private6 = ((top & 0xFFC0) == 0xFE80) | ((top & 0xFE00) == 0xFC00) | ((hi == 0) & (lo <= 1))
    multi6 = (top & 0xFF00) == 0xFF00
    private = np.where(v4, private4 & ~multi4, private6)
    multi = np.where(v4, multi4, multi6)
    public = ~private & ~multi
    return np.column_stack([private, multi, public]).astype(np.float64)


@numba.njit(cache=True)
def _context_sweep(
    group: npt.NDArray[np.int64],
    t: npt.NDArray[np.float64],
    resp: npt.NDArray[np.int64],
    port: npt.NDArray[np.int64],
    failed: npt.NDArray[np.bool_],
    window: float,
    n_resp: int,
    n_port: int,
) -> npt.NDArray[np.float64]:  # pragma: no cover - compiled
    """Two-pointer sweep over rows sorted by (group, t); window = earlier rows within ``window`` s."""
    n = len(t)
    out = np.zeros((n, 5))
    resp_count = np.zeros(n_resp, np.int64)
    port_count = np.zeros(n_port, np.int64)
    n_distinct_resp = 0
    n_distinct_port = 0
    n_failed = 0
    left = 0
    for i in range(n):
        if i > 0 and group[i] != group[i - 1]:
            # new originator: empty the window
            while left < i:
                resp_count[resp[left]] -= 1
                port_count[port[left]] -= 1
                left += 1
            n_distinct_resp = 0
            n_distinct_port = 0
            n_failed = 0
        while left < i and t[left] < t[i] - window:
            r = resp[left]
            resp_count[r] -= 1
            if resp_count[r] == 0:
                n_distinct_resp -= 1
            p = port[left]
            port_count[p] -= 1
            if port_count[p] == 0:
                n_distinct_port -= 1
            if failed[left]:
                n_failed -= 1
            left += 1
        cnt = i - left
        out[i, 0] = cnt
        out[i, 1] = n_distinct_resp
        out[i, 2] = n_distinct_port
        out[i, 3] = resp_count[resp[i]]
        out[i, 4] = n_failed / cnt if cnt > 0 else 0.0
        # add row i to the window for the rows after it
        r = resp[i]
        if resp_count[r] == 0:
            n_distinct_resp += 1
        resp_count[r] += 1
        p = port[i]
        if port_count[p] == 0:
            n_distinct_port += 1
        port_count[p] += 1
        if failed[i]:
            n_failed += 1
    return out


def _codes(*cols: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], int]:
    """Dense integer code of each row's tuple of values, and the number of codes."""
    stacked = np.column_stack([np.asarray(c).astype(np.uint64) for c in cols])
    _, inv = np.unique(stacked, axis=0, return_inverse=True)
    inv = inv.reshape(-1).astype(np.int64)
    return inv, int(inv.max()) + 1 if len(inv) else 0


def originator_context(flows: FlowBatch, window: float = 60.0) -> F64:
    """Context of each flow among the earlier flows of the same originator.

    Parameters
    ----------
    flows
        The flows (any order; the result is in the batch's row order).
    window
        Length in seconds of the look-back window ``[ts - window, ts]``. Flows with the same
        ``ts`` count as earlier when they come earlier in the batch.

    Returns
    -------
    numpy.ndarray
        ``float64[n, 5]``: number of earlier flows in the window, distinct responders among
        them, distinct responder ports, of them flows to this flow's responder, and the fraction
        of them that failed (``S0``/``REJ``; 0 when the window is empty).
    """
    n = len(flows)
    if n == 0:
        return np.zeros((0, 5))
    group, _ = _codes(flows.src_ip_hi, flows.src_ip_lo)
    resp, n_resp = _codes(flows.dst_ip_hi, flows.dst_ip_lo)
    port, n_port = _codes(flows.dst_port, flows.proto)
    failed = np.isin(_str_col(flows, "conn_state"), FAILED_STATES)
    order = np.lexsort((np.arange(n), flows.ts, group))  # by originator, then time, then file order
    swept = _context_sweep(
        group[order],
        np.ascontiguousarray(flows.ts[order], dtype=np.float64),
        resp[order],
        port[order],
        failed[order],
        float(window),
        n_resp,
        n_port,
    )
    out = np.empty_like(swept)
    out[order] = swept
    return out


def flow_matrix(flows: FlowBatch, window: float = 60.0) -> tuple[F32, list[str]]:
    """Feature matrix of a batch of flows (see the module docstring for the columns).

    Parameters
    ----------
    flows
        Flows with Zeek conn fields; missing string columns (``conn_state``, ``history``,
        ``service``) give all-zero one-hots (flow-meter output has none).
    window
        Look-back window in seconds of the originator context.

    Returns
    -------
    X : numpy.ndarray
        ``float32[n, len(FEATURE_NAMES)]``, finite.
    names : list of str
        :data:`FEATURE_NAMES`.
    """
    f = lambda name: np.asarray(flows.columns[name], dtype=np.float64)  # noqa: E731
    sp, dp, sb, db = f("src_pkts"), f("dst_pkts"), f("src_bytes"), f("dst_bytes")
    spay, dpay, dur = f("src_payload"), f("dst_payload"), np.clip(f("duration"), 0.0, None)
    volume = np.column_stack(
        [
            np.log1p(sp),
            np.log1p(dp),
            np.log1p(sb),
            np.log1p(db),
            np.log1p(spay),
            np.log1p(dpay),
            np.log1p(dur),
            np.log1p(sb / np.maximum(sp, 1.0)),
            np.log1p(db / np.maximum(dp, 1.0)),
            np.log1p(db) - np.log1p(sb),
            np.log1p(dp) - np.log1p(sp),
            np.clip((spay + dpay) / np.maximum(sb + db, 1.0), 0.0, 1.0),
            (dp == 0).astype(np.float64),
        ]
    )
    state = _one_hot(_str_col(flows, "conn_state"), CONN_STATES)
    if not flows.has("conn_state"):
        state[:] = 0.0
    hist = _history_flags(_str_col(flows, "history"))
    proto = np.asarray(flows.proto, dtype=np.int64)
    protos = np.column_stack([proto == 6, proto == 17, (proto == 1) | (proto == 58)]).astype(np.float64)
    protos = np.column_stack([protos, protos.sum(axis=1) == 0])
    service_txt = _str_col(flows, "service")
    # Zeek may log several services ("dns,http"): the first one decides
    uniq_srv, inv_srv = np.unique(service_txt, return_inverse=True)
    first_srv = np.array([str(u).split(",")[0] for u in uniq_srv] or [""], dtype=str)
    service_txt = first_srv[inv_srv.reshape(-1)]
    service = _one_hot(service_txt, SERVICES)
    service = np.column_stack([service, service_txt == ""])
    service[service_txt == "", len(SERVICES)] = 0.0
    dport = np.asarray(flows.dst_port, dtype=np.int64)
    icmp = (proto == 1) | (proto == 58)
    ports = _port_groups(np.where(icmp, -1, dport))
    ports[icmp] = 0.0  # ICMP "ports" are type/code
    sport_low = ((np.asarray(flows.src_port, dtype=np.int64) < 1024) & ~icmp).astype(np.float64)
    scope = _responder_scope(flows.dst_ip_hi, flows.dst_ip_lo)
    ctx = originator_context(flows, window)
    ctx[:, :4] = np.log1p(ctx[:, :4])
    X = np.column_stack([volume, state, hist, protos, service, ports, sport_low, scope, ctx])
    X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    if X.shape[1] != len(FEATURE_NAMES):  # pragma: no cover - guards edits of the lists
        raise AssertionError(f"{X.shape[1]} columns but {len(FEATURE_NAMES)} names")
    return X, list(FEATURE_NAMES)
