"""What an attacker can realise on the features of one flow (feature-space evasion constraints).

A feature-space adversarial example is a row of :func:`~iotsentry.features.flow_features.
flow_matrix`; it only counts when some real traffic would produce it and the traffic still does
its malicious job. :class:`FlowConstraints` states the conditions, in network terms:

**Controlled features.** The attacker runs the infected device, so it controls its own direction
of the flow: the originator's packets (``log_src_pkts``), IP bytes (``log_src_bytes``), payload
bytes (``log_src_payload``) and the timing (``log_duration``). The responder direction
(``log_dst_*``) is controlled only when the attacker also runs the responder, e.g. its own C&C
server (``controls_responder=True``). With ``chaff=True`` it may also open extra flows from the
device (chaff), which moves the originator-context counts (``ctx_*``).

**Monotone.** Traffic can be added, never removed: padding and extra packets (keep-alives, pure
ACKs, retransmissions, split segments) raise packets, bytes and payload; delaying packets raises
the duration. Nothing that the malware must send can be taken away, so every controlled volume
can only grow. Chaff flows likewise only raise the context counts.

**Integral.** Packets, bytes and payload bytes are whole numbers; their features are ``log1p``
of an integer. The context counts are numbers of flows, responders and ports (integers) and the
failed share is ``failed / flows``.

**Dependencies** (written on what the attacker *adds*, so real rows with capture artefacts --
Zeek's payload estimate can exceed the IP bytes when packets were missed -- are feasible):

* every extra packet carries at least a minimal header: IP bytes grow by at least
  ``header * extra_packets + extra_payload``, with ``header`` 40 bytes for TCP (IP + TCP),
  28 for UDP and ICMP (IP + 8), 20 otherwise;
* payload grows only inside added IP bytes (``extra_payload <= extra_bytes - header *
  extra_packets``);
* no packet exceeds the MTU: IP bytes stay below ``max(packets * mtu, bytes + extra * mtu)``;
* a direction that sent no packet stays silent (answering an unanswered ``S0`` connection would
  change ``conn_state`` and ``history``, which are fixed), and a direction that carried no
  payload keeps none (new data would add Zeek's ``D``/``d`` history letter);
* a flow with fewer than two packets has no duration to stretch;
* chaff: at most ``max_chaff`` extra flows fall in one context window (default 600, ten new
  connections a second for the 60 s window); distinct responders, distinct ports and flows to
  the same responder grow by at most the number of chaff flows and never exceed the flow count;
  a window that gains flows has at least one responder and port; the failed share is
  ``(failed + j) / flows`` with ``0 <= j <=`` chaff flows. (Necessary conditions; they allow
  slightly more than real traffic could.)

**Derived features** are functions of the raw values, never free: bytes per packet, the
responder/originator log ratios, the payload share and ``no_response`` are recomputed exactly as
:func:`~iotsentry.features.flow_features.flow_matrix` computes them.

**Fixed features.** One-hots of ``conn_state``, history letters and length, protocol, service,
responder-port group, originator-port class and responder scope describe *what* the flow does;
changing them changes its function (another port, another protocol, a completed handshake) and
is out of scope for a feature-space attack.

:meth:`FlowConstraints.project` maps any candidate row to a realisable one near it (freeze,
clamp, round, enforce dependencies, recompute derived features); :meth:`FlowConstraints.
violations` lists the broken constraints of each row. This module imports neither PyTorch nor
ART.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from iotsentry.features.flow_features import FEATURE_NAMES

__all__ = [
    "CONTEXT_COUNTS",
    "DERIVED",
    "HEADER_BYTES",
    "FlowConstraints",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

DIRECTIONS = ("src", "dst")
VOLUMES = ("pkts", "bytes", "payload")
DURATION = "log_duration"
DERIVED = (
    "log_src_bytes_per_pkt",
    "log_dst_bytes_per_pkt",
    "log_ratio_bytes_dst_src",
    "log_ratio_pkts_dst_src",
    "payload_share",
    "no_response",
)
"""Features recomputed from the raw volumes (never set by the attacker directly)."""
CONTEXT_COUNTS = ("ctx_flows_log", "ctx_responders_log", "ctx_resp_ports_log", "ctx_same_responder_log")
"""``log1p`` of the originator-context counts (moved only by chaff flows)."""
CONTEXT_FAILED = "ctx_failed_frac"
HEADER_BYTES = {"proto_tcp": 40, "proto_udp": 28, "proto_icmp": 28}
"""Minimal IP + transport header per packet; other protocols: :data:`MIN_HEADER`."""
MIN_HEADER = 20
_DERIVED_INPUTS = {
    "log_src_bytes_per_pkt": ("src_bytes", "src_pkts"),
    "log_dst_bytes_per_pkt": ("dst_bytes", "dst_pkts"),
    "log_ratio_bytes_dst_src": ("dst_bytes", "src_bytes"),
    "log_ratio_pkts_dst_src": ("dst_pkts", "src_pkts"),
    "payload_share": ("src_payload", "dst_payload", "src_bytes", "dst_bytes"),
    "no_response": ("dst_pkts",),
}
_CTX_KEYS = ("ctx_flows", "ctx_responders", "ctx_resp_ports", "ctx_same_responder")


def _raw_feature(key: str) -> str:
    """Feature name of a raw key (``src_pkts`` -> ``log_src_pkts``, ``ctx_flows`` -> ``ctx_flows_log``)."""
    if key == "duration":
        return DURATION
    if key == "ctx_failed":
        return CONTEXT_FAILED
    if key.startswith("ctx_"):
        return f"{key}_log"
    return f"log_{key}"


def _slack(v: F64) -> F64:
    """Tolerance of a raw value decoded from a float32 ``log1p`` feature (relative for large values)."""
    return 1e-3 + 4e-6 * np.abs(v)


class FlowConstraints:
    """Feasibility of feature-space changes to flow rows (see the module docstring).

    Parameters
    ----------
    names
        Column names of the rows (default :data:`~iotsentry.features.flow_features.FEATURE_NAMES`);
        every volume, derived, protocol and context column must be present.
    controls_responder
        The attacker also runs the responder (its own C&C server): the responder direction's
        volumes are controlled too.
    chaff
        The attacker may open extra flows from the device, raising the originator-context counts.
    max_chaff
        Most chaff flows the attacker adds to one originator-context window.
    mtu
        Largest IP packet in bytes.
    atol
        Tolerance when comparing features (they are float32).
    """

    def __init__(
        self,
        names: Sequence[str] = FEATURE_NAMES,
        *,
        controls_responder: bool = False,
        chaff: bool = False,
        max_chaff: int = 600,
        mtu: int = 1500,
        atol: float = 1e-5,
    ) -> None:
        self.names = list(names)
        self.controls_responder = controls_responder
        self.chaff = chaff
        self.max_chaff = max_chaff
        self.mtu = mtu
        self.atol = atol
        self._col = {n: i for i, n in enumerate(self.names)}
        keys = [*self._volume_keys(DIRECTIONS), "duration", *_CTX_KEYS, "ctx_failed"]
        needed = [_raw_feature(k) for k in keys] + list(DERIVED) + [*HEADER_BYTES]
        missing = [n for n in needed if n not in self._col]
        if missing:
            raise ValueError(f"the feature names lack {missing}: not flow_matrix columns")

    def __repr__(self) -> str:
        return (
            f"FlowConstraints(controls_responder={self.controls_responder}, chaff={self.chaff}, "
            f"mtu={self.mtu})"
        )

    # -- roles of the features ----------------------------------------------------------------

    @property
    def directions(self) -> tuple[str, ...]:
        """Directions whose volumes the attacker controls."""
        return DIRECTIONS if self.controls_responder else DIRECTIONS[:1]

    @staticmethod
    def _volume_keys(directions: Sequence[str]) -> list[str]:
        return [f"{d}_{v}" for d in directions for v in VOLUMES]

    @property
    def controlled_keys(self) -> list[str]:
        """Raw quantities the attacker sets (``src_pkts``, ..., ``duration``, ``ctx_*``)."""
        keys = [*self._volume_keys(self.directions), "duration"]
        if self.chaff:
            keys += [*_CTX_KEYS, "ctx_failed"]
        return keys

    @property
    def controlled(self) -> list[str]:
        """Features the attacker sets directly."""
        return [_raw_feature(k) for k in self.controlled_keys]

    @property
    def derived(self) -> list[str]:
        """Features recomputed from the raw values."""
        return list(DERIVED)

    @property
    def increasable(self) -> list[str]:
        """Controlled features that can only grow (every controlled one except the failed share)."""
        return [n for n in self.controlled if n != CONTEXT_FAILED]

    @property
    def fixed(self) -> list[str]:
        """Features no realisable change may alter (everything neither controlled nor derived)."""
        movable = set(self.controlled) | set(DERIVED)
        return [n for n in self.names if n not in movable]

    def column(self, name: str) -> int:
        """Index of a feature."""
        return self._col[name]

    def mask(self, X_orig: npt.ArrayLike) -> F32:
        """Per row, 1 where the attacker may move the feature directly (for ART's ``mask``).

        Silent directions and payload of directions that carried none are excluded, and so are
        derived features (they follow from the raw ones).
        """
        X0 = self._rows(X_orig)
        raw = self.decode(X0)
        out = np.zeros(X0.shape, dtype=np.float32)
        for key in self.controlled_keys:
            j = self._col[_raw_feature(key)]
            if key.endswith(VOLUMES):
                d = key.split("_")[0]
                alive = raw[f"{d}_pkts"] > 0
                if key.endswith("payload"):
                    alive &= raw[key] > 0
                out[:, j] = alive
            else:
                out[:, j] = 1.0
        return out

    # -- raw values ---------------------------------------------------------------------------

    def _rows(self, X: npt.ArrayLike) -> F64:
        A = np.asarray(X, dtype=np.float64)
        if A.ndim != 2 or A.shape[1] != len(self.names):
            raise ValueError(f"expected rows of {len(self.names)} features, got shape {A.shape}")
        return A

    def decode(self, X: npt.ArrayLike, rounded: bool = True) -> dict[str, F64]:
        """Raw values of the rows: packets, IP bytes, payload per direction, seconds, context counts.

        ``rounded`` rounds the counts to integers (the float32 ``log1p`` loses the last digits of
        large byte counts; the rounding recovers the exact value below about 10**5).
        """
        A = self._rows(X)
        out: dict[str, F64] = {}
        for key in [*self._volume_keys(DIRECTIONS), *_CTX_KEYS]:
            v = np.expm1(np.clip(A[:, self._col[_raw_feature(key)]], -1.0, 60.0))
            out[key] = np.maximum(np.round(v), 0.0) if rounded else v
        out["duration"] = np.expm1(np.clip(A[:, self._col[DURATION]], -1.0, 60.0))
        share = A[:, self._col[CONTEXT_FAILED]]
        failed = share * out["ctx_flows"]
        out["ctx_failed_share"] = share
        out["ctx_failed"] = np.round(failed) if rounded else failed
        return out

    def header(self, X: npt.ArrayLike) -> F64:
        """Minimal header bytes per packet of each row, from its protocol one-hot."""
        A = self._rows(X)
        h = np.full(len(A), float(MIN_HEADER))
        for name, size in HEADER_BYTES.items():
            h = np.where(A[:, self._col[name]] > 0.5, float(size), h)
        return h

    @staticmethod
    def derived_values(raw: dict[str, F64]) -> dict[str, F64]:
        """Derived features from raw values, computed exactly as ``flow_matrix`` does."""
        sp, dp, sb, db = raw["src_pkts"], raw["dst_pkts"], raw["src_bytes"], raw["dst_bytes"]
        spay, dpay = raw["src_payload"], raw["dst_payload"]
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = {
                "log_src_bytes_per_pkt": np.log1p(sb / np.maximum(sp, 1.0)),
                "log_dst_bytes_per_pkt": np.log1p(db / np.maximum(dp, 1.0)),
                "log_ratio_bytes_dst_src": np.log1p(db) - np.log1p(sb),
                "log_ratio_pkts_dst_src": np.log1p(dp) - np.log1p(sp),
                "payload_share": np.clip((spay + dpay) / np.maximum(sb + db, 1.0), 0.0, 1.0),
                "no_response": (dp == 0).astype(np.float64),
            }
        return {k: np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for k, v in vals.items()}

    # -- projection ---------------------------------------------------------------------------

    def project(self, X_orig: npt.ArrayLike, X_adv: npt.ArrayLike, *, integral: bool = True) -> F32:
        """Nearest realisable rows (per coordinate, in the order below) to ``X_adv``.

        1. every fixed feature (and every uncontrolled raw one) is reset to ``X_orig``;
        2. controlled volumes are clamped from below at the original (monotone), rounded to
           integers (unless ``integral`` is false: the relaxed set used between attack steps),
           kept at the original in silent directions / for payload that was zero;
        3. payload is capped by the room the added packets leave under the MTU, IP bytes are
           clipped to ``[original + header * extra packets + extra payload, MTU bound]``;
        4. duration is clamped at the original, and kept for flows of fewer than two packets;
        5. with chaff, the context counts are clamped and bounded as in the module docstring;
        6. derived features are recomputed from the resulting raw values.

        Values that end up unchanged keep their exact original feature (so the projection of a
        real row is that row, bit for bit), and the result is idempotent.
        """
        X0 = self._rows(X_orig)
        A = self._rows(X_adv)
        if X0.shape != A.shape:
            raise ValueError(f"X_orig {X0.shape} and X_adv {A.shape} differ in shape")
        ro = self.decode(X0)
        ra = self.decode(A, rounded=False)
        new = dict(ro)

        def rnd(v: F64) -> F64:
            return np.round(v) if integral else v

        hdr = self.header(X0)
        for d in self.directions:
            kp, kb, ky = f"{d}_pkts", f"{d}_bytes", f"{d}_payload"
            alive = ro[kp] > 0
            pk = np.where(alive, np.maximum(rnd(ra[kp]), ro[kp]), ro[kp])
            extra = pk - ro[kp]
            upper = np.maximum(pk * self.mtu, ro[kb] + extra * self.mtu)
            room = upper - ro[kb] - hdr * extra
            pa = np.where(alive & (ro[ky] > 0), np.maximum(rnd(ra[ky]), ro[ky]), ro[ky])
            pa = np.minimum(pa, ro[ky] + room)
            lower = ro[kb] + hdr * extra + (pa - ro[ky])
            new[kp], new[ky] = pk, pa
            new[kb] = np.where(alive, np.clip(rnd(ra[kb]), lower, upper), ro[kb])
        packets = new["src_pkts"] + new["dst_pkts"]
        new["duration"] = np.where(packets >= 2, np.maximum(ra["duration"], ro["duration"]), ro["duration"])
        if self.chaff:
            self._project_context(ro, ra, new, rnd, self.max_chaff)
        out = X0.copy()
        for key in self.controlled_keys:
            j = self._col[_raw_feature(key)]
            if key == "ctx_failed":
                flows = new["ctx_flows"]
                frac = np.where(flows > 0, new[key] / np.maximum(flows, 1.0), 0.0)
                changed = (new[key] != ro[key]) | (flows != ro["ctx_flows"])
                out[:, j] = np.where(changed, frac, X0[:, j])
            elif key == "duration":  # continuous: clamp in feature space (log1p is monotone)
                out[:, j] = np.where(new[key] != ro[key], np.maximum(A[:, j], X0[:, j]), X0[:, j])
            else:
                # a count already realised by X_adv keeps its exact feature (idempotence: float32
                # cannot hold log1p of every large byte count)
                kept = np.abs(ra[key] - new[key]) <= _slack(new[key])
                enc = np.where(kept, A[:, j], np.log1p(new[key]))
                out[:, j] = np.where(new[key] != ro[key], enc, X0[:, j])
        changed_raw = {k: new[k] != ro[k] for k in new}
        values = self.derived_values(new)
        for name, inputs in _DERIVED_INPUTS.items():
            moved = np.zeros(len(X0), dtype=bool)
            for k in inputs:
                moved |= changed_raw[k]
            j = self._col[name]
            v = values[name]
            v = np.where(np.abs(A[:, j] - v) <= 2e-6 * np.maximum(np.abs(v), 1.0), A[:, j], v)
            out[:, j] = np.where(moved, v, X0[:, j])
        return out.astype(np.float32)

    @staticmethod
    def _project_context(
        ro: dict[str, F64],
        ra: dict[str, F64],
        new: dict[str, F64],
        rnd: Callable[[F64], F64],
        max_chaff: int,
    ) -> None:
        """Chaff: counts grow by at most the added flows, never beyond the flow count."""
        flows = np.clip(rnd(ra["ctx_flows"]), ro["ctx_flows"], ro["ctx_flows"] + max_chaff)
        k = flows - ro["ctx_flows"]
        new["ctx_flows"] = flows
        for key in ("ctx_responders", "ctx_resp_ports"):
            low = np.maximum(ro[key], (flows > 0).astype(np.float64))
            high = np.maximum(low, np.minimum(ro[key] + k, flows))
            new[key] = np.clip(rnd(ra[key]), low, high)
        key = "ctx_same_responder"
        new[key] = np.clip(rnd(ra[key]), ro[key], np.minimum(ro[key] + k, flows))
        failed = rnd(ra["ctx_failed_share"] * flows)
        new["ctx_failed"] = np.clip(failed, ro["ctx_failed"], ro["ctx_failed"] + k)

    # -- checks -------------------------------------------------------------------------------

    def violations(self, X_orig: npt.ArrayLike, X_adv: npt.ArrayLike) -> list[list[str]]:
        """Names of the constraints each row of ``X_adv`` breaks (an empty list: realisable)."""
        X0 = self._rows(X_orig)
        A = self._rows(X_adv)
        if X0.shape != A.shape:
            raise ValueError(f"X_orig {X0.shape} and X_adv {A.shape} differ in shape")
        rows: list[list[str]] = [[] for _ in range(len(X0))]

        def flag(bad: B, name: str) -> None:
            for i in np.flatnonzero(bad):
                rows[i].append(name)

        moved = np.abs(A - X0) > self.atol
        for name in self.fixed:
            flag(moved[:, self._col[name]], f"fixed:{name}")
        ro = self.decode(X0)
        ra = self.decode(A, rounded=False)
        ri = {k: np.round(v) for k, v in ra.items()}
        hdr = self.header(X0)
        for key in self.controlled_keys:
            if key in ("duration", "ctx_failed"):
                continue
            name = _raw_feature(key)
            tol = _slack(ro[key])
            flag(ra[key] < ro[key] - tol, f"monotone:{name}")
            flag(np.abs(ra[key] - ri[key]) > _slack(ra[key]), f"integer:{name}")
        for d in self.directions:
            kp, kb, ky = f"{d}_pkts", f"{d}_bytes", f"{d}_payload"
            cols = [self._col[_raw_feature(f"{d}_{v}")] for v in VOLUMES]
            flag((ro[kp] == 0) & moved[:, cols].any(axis=1), f"silent_direction:{d}")
            flag((ro[ky] == 0) & (ri[ky] > 0), f"new_payload:{d}")
            extra = ri[kp] - ro[kp]
            added = ri[kb] - ro[kb]
            tol = _slack(ri[kb]) + hdr * _slack(ri[kp]) + _slack(ri[ky])
            flag(added < hdr * extra + (ri[ky] - ro[ky]) - tol, f"header_bytes:{d}")
            bound = np.maximum(ri[kp] * self.mtu, ro[kb] + extra * self.mtu)
            flag(ri[kb] > bound + _slack(ri[kb]) + self.mtu * _slack(ri[kp]), f"mtu:{d}")
        dur_tol = _slack(ro["duration"])
        flag(ra["duration"] < ro["duration"] - dur_tol, f"monotone:{DURATION}")
        packets = ri["src_pkts"] + ri["dst_pkts"]
        flag((packets < 2) & (ra["duration"] > ro["duration"] + dur_tol), "duration_single_packet")
        if self.chaff:
            self._context_violations(ro, ra, ri, flag, self.max_chaff)
        # derived features must equal their recomputation from the (rounded) raw values
        raw = {k: ri[k] for k in self._volume_keys(DIRECTIONS)}
        values = self.derived_values(raw)
        for name, inputs in _DERIVED_INPUTS.items():
            j = self._col[name]
            inputs_moved = np.zeros(len(X0), dtype=bool)
            for k in inputs:
                inputs_moved |= moved[:, self._col[_raw_feature(k)]]
            expected = np.where(inputs_moved, values[name], X0[:, j])
            flag(np.abs(A[:, j] - expected) > 1e-3, f"derived:{name}")
        return rows

    @staticmethod
    def _context_violations(
        ro: dict[str, F64],
        ra: dict[str, F64],
        ri: dict[str, F64],
        flag: Callable[[B, str], None],
        max_chaff: int,
    ) -> None:
        flows = ri["ctx_flows"]
        k = flows - ro["ctx_flows"]
        flag(k > max_chaff, "max_chaff")
        for key in _CTX_KEYS:
            name = _raw_feature(key)
            flag(ra[key] < ro[key] - _slack(ro[key]), f"monotone:{name}")
            flag(np.abs(ra[key] - ri[key]) > _slack(ra[key]), f"integer:{name}")
        for key in _CTX_KEYS[1:]:
            name = _raw_feature(key)
            flag((ri[key] > flows) | (ri[key] - ro[key] > np.maximum(k, 0)), f"context_bound:{name}")
        for key in ("ctx_responders", "ctx_resp_ports"):
            flag((flows > 0) & (ri[key] < 1), f"context_bound:{_raw_feature(key)}")
        failed = ra["ctx_failed_share"] * flows
        bad = (np.abs(failed - np.round(failed)) > 1e-3 * np.maximum(flows, 1.0)) | (
            np.round(failed) < ro["ctx_failed"]
        )
        bad |= np.round(failed) > ro["ctx_failed"] + np.maximum(k, 0)
        flag(bad, f"context_bound:{CONTEXT_FAILED}")

    def violation_counts(self, X_orig: npt.ArrayLike, X_adv: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Number of broken constraints per row."""
        return np.array([len(v) for v in self.violations(X_orig, X_adv)], dtype=np.int64)

    def is_realisable(self, X_orig: npt.ArrayLike, X_adv: npt.ArrayLike) -> B:
        """Rows that break no constraint."""
        return self.violation_counts(X_orig, X_adv) == 0
