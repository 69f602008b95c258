"""Numba kernels of the per-packet scoring of :class:`iotsentry.detectors.profile.ProfileDetector`.

:meth:`ProfileDetector.evaluate` judges every packet of a batch from its remote identity and
its device's learned state; written as numpy expressions that is some sixty array operations per
batch, most of them on a few thousand packets. Here they are three passes: :func:`novelty_flags`
(what is new to the device), :func:`score_args` (the arguments of the transcendental functions)
and :func:`score_combine` (the score). ``log1p`` and ``exp`` stay numpy calls in between, so every
value is computed by the same code as before and the scores are bit for bit those of the numpy
expressions (the arithmetic here is the same IEEE operations in the same order; numba does not
contract or reorder them without ``fastmath``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from iotsentry.features._identity_kernels import (
    K_NET,
    K_SVC,
    K_TOKEN,
    is_local_one,
    is_multicast_one,
    key3,
    key4,
)
from iotsentry.features._window_kernels import intern


@njit(cache=True)
def _at(a: np.ndarray, d: int, default: float) -> float:
    return a[d] if a.shape[0] else default


@njit(cache=True)
def novelty_flags(
    device: np.ndarray,
    proto: np.ndarray,
    valid: np.ndarray,
    local: np.ndarray,
    known_peer: np.ndarray,
    churn: np.ndarray,
    known_service: np.ndarray,
    has_name: np.ndarray,
    name_known: np.ndarray,
    net_known: np.ndarray,
    group_known: np.ndarray,
    new_tok: np.ndarray,
    evidence: np.ndarray,
    remote_known: np.ndarray,
    names_known: np.ndarray,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]:
    """Per packet, from its identity and its device's state (``evidence``: a bare IP is evidence;
    ``remote_known`` / ``names_known``: the baseline holds remote peers / names; empty arrays
    read as "no device"): known peer and known service as the rules judge them (a device whose
    baseline holds no remote peer is not judged on remote novelty), a missing name is not
    evidence (``unnamed_ok``), a c2 candidate (valid, new peer, unnamed where names are
    evidence), the token judged for the new-name rule, raw new unnamed peer, churn of a valid
    packet, known target (peer and service known), and kin (the peer is known by its name,
    network or group, or is another server of a bare-IP service).

    Returns (known_peer, known_service, unnamed_ok, c2 candidate, judged token, raw unnamed,
    churn, known target, kin).
    """
    n = device.shape[0]
    kp = np.empty(n, np.bool_)
    ks = np.empty(n, np.bool_)
    unnamed_ok = np.empty(n, np.bool_)
    c2 = np.empty(n, np.bool_)
    tok = np.empty(n, np.uint64)
    raw_unnamed = np.empty(n, np.bool_)
    churn_valid = np.empty(n, np.bool_)
    target = np.empty(n, np.bool_)
    kin = np.empty(n, np.bool_)
    for i in range(n):
        d = device[i] if device[i] > 0 else 0
        named_ok = not evidence[d] if evidence.shape[0] else True
        thin = not remote_known[d] if remote_known.shape[0] else True
        idk = known_peer[i] or churn[i]
        k = idk or thin
        s = known_service[i] or (thin and not local[i])
        kp[i] = k
        ks[i] = s
        judged = names_known[d] if names_known.shape[0] else False
        tok[i] = new_tok[i] if judged else np.uint64(0)
        tcp_new = proto[i] == 6 and not k and not s and not local[i]
        ok = has_name[i] or (named_ok and not tcp_new)
        unnamed_ok[i] = ok
        c2[i] = valid[i] and not k and not ok
        raw_unnamed[i] = not idk and not has_name[i]
        churn_valid[i] = churn[i] and valid[i]
        target[i] = idk and s
        kin[i] = name_known[i] or net_known[i] or group_known[i] or churn[i]
    return kp, ks, unnamed_ok, c2, tok, raw_unnamed, churn_valid, target, kin


@njit(cache=True)
def _neg_pos(x: float) -> float:
    """``-np.maximum(x, 0.0)`` (NaN kept)."""
    if x != x:
        return -x
    return -(x if x >= 0.0 else 0.0)


@njit(cache=True)
def _nmax(a: float, b: float) -> float:
    """The larger of two numbers, NaN when either is (as a numpy ``max`` reduction)."""
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


@njit(cache=True)
def _max(a: float, b: float) -> float:
    """``np.maximum(a, b)`` of two numbers that are not NaN."""
    return a if a >= b else b


@njit(cache=True)
def score_args(
    device: np.ndarray,
    pw: np.ndarray,
    sw: np.ndarray,
    kin: np.ndarray,
    known_service: np.ndarray,
    group: np.ndarray,
    X: np.ndarray,
    shape: np.ndarray,
    use_table: bool,
    use_shape: bool,
    learn_windows: np.ndarray,
    max_new: np.ndarray,
    max_packets: np.ndarray,
    limits: np.ndarray,
    slow_count: np.ndarray,
    slow_limit: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arguments of the score's ``log1p`` (rows: peer count, service count, learned windows)
    and ``exp`` (rows: fan-out, rate, scan shape, slow scan; negated) per packet, and the slow
    ratio. ``kin``: the peer is known by its name, network or group, or is churn; ``X`` and
    ``group``: the window table's features (column 3 new peers, 0 packets) and row per packet;
    ``shape``: its per-packet shapes (columns 8, 9, 12 of ``limits``)."""
    n = device.shape[0]
    L = np.empty((3, n))
    E = np.empty((4, n))
    slow_ratio = np.empty(n)
    ns = slow_limit.shape[0]
    for i in range(n):
        d = device[i] if device[i] > 0 else 0
        W = _at(learn_windows, d, 0.0)
        half = W / 2.0
        L[0, i] = _max(pw[i], half) if kin[i] else pw[i]
        L[1, i] = half if known_service[i] and sw[i] == 0 else sw[i]
        L[2, i] = _max(W, 1.0)
        gi = group[i] if group[i] > 0 else 0
        new_in_win = X[gi, 3] if use_table else 0.0
        pk_in_win = X[gi, 0] if use_table else 0.0
        E[0, i] = _neg_pos(new_in_win / (3.0 * (_at(max_new, d, 0.0) + 1.0)))
        E[1, i] = _neg_pos(pk_in_win / (3.0 * (_at(max_packets, d, 0.0) + 10.0)))
        if use_shape:
            r0 = shape[i, 0] / limits[d, 8]
            r1 = shape[i, 1] / limits[d, 9]
            r2 = shape[i, 2] / limits[d, 12]
            E[2, i] = _neg_pos(_nmax(_nmax(r0, r1), r2))
        else:
            E[2, i] = 0.0
        ratio = slow_count[i] / slow_limit[d if d < ns - 1 else ns - 1]
        slow_ratio[i] = ratio
        E[3, i] = _neg_pos(ratio)
    return L, E, slow_ratio


@njit(cache=True)
def score_combine(
    device: np.ndarray,
    valid: np.ndarray,
    lg: np.ndarray,
    ex: np.ndarray,
    use_shape: bool,
    slow_ratio: np.ndarray,
    c2: np.ndarray,
    pw: np.ndarray,
    new_tok: np.ndarray,
    trust: np.ndarray,
    calm_peer: np.ndarray,
    calm_tok: np.ndarray,
    use_table: bool,
    wscores: np.ndarray,
    group: np.ndarray,
) -> np.ndarray:
    """The per-packet score from ``lg = log1p(L)`` and ``ex = exp(E)`` of :func:`score_args`."""
    n = device.shape[0]
    out = np.empty(n)
    for i in range(n):
        d = device[i] if device[i] > 0 else 0
        denom = lg[2, i]
        s_peer = 1.0 - lg[0, i] / denom
        s_peer = min(max(s_peer, 0.0), 1.0) if s_peer == s_peer else s_peer
        s_svc = 1.0 - lg[1, i] / denom
        s_svc = min(max(s_svc, 0.0), 1.0) if s_svc == s_svc else s_svc
        s_unnamed = 1.0 if c2[i] and pw[i] == 0 else 0.0
        s_fan = 1.0 - ex[0, i]
        s_rate = 1.0 - ex[1, i]
        s_shape = 1.0 - ex[2, i] if use_shape else 0.0
        s_slow = (1.0 - ex[3, i]) + (0.5 if slow_ratio[i] > 1.0 else 0.0)
        t = 0.25 + 0.75 * _at(trust, d, 0.0)
        s_tok = 1.0 if new_tok[i] != 0 else 0.0
        novelty = _at(calm_peer, d, 1.0) * (2.0 * s_peer + 0.5 * s_unnamed + 0.5 * s_fan) + s_svc
        novelty = novelty + _at(calm_tok, d, 1.0) * s_tok
        s = t * novelty + 0.5 * s_rate + s_shape + s_slow
        s = s if valid[i] else 0.0
        if use_table:
            gi = group[i] if group[i] > 0 else 0
            s = s + (1.0 if wscores[gi] > 1.0 else 0.0)
        out[i] = s if device[i] >= 0 else 0.0
    return out


@njit(cache=True)
def alert_queries(
    device: np.ndarray,
    valid: np.ndarray,
    local: np.ndarray,
    peer_hi: np.ndarray,
    peer_lo: np.ndarray,
    net_hi: np.ndarray,
    net_lo: np.ndarray,
    proto: np.ndarray,
    service: np.ndarray,
    new_tok: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The alerted-behaviour keys of valid packets: network (a local peer by its address),
    service, and new token (where there is one), deduplicated.

    Returns (per row and kind the number of its key, -1 for none; the distinct keys)."""
    n = device.shape[0]
    slots = np.full((n, 3), -1, np.int64)
    q = np.empty(3 * n, np.uint64)
    m = 0
    for i in range(n):
        if not valid[i]:
            continue
        d = np.uint64(np.int64(device[i]))
        if local[i]:
            q[m] = key4(K_NET, d, peer_hi[i], peer_lo[i])
        else:
            q[m] = key4(K_NET, d, net_hi[i], net_lo[i])
        q[m + 1] = key4(K_SVC, d, np.uint64(proto[i]), np.uint64(service[i]))
        slots[i, 0] = m
        slots[i, 1] = m + 1
        m += 2
        if new_tok[i] != 0:
            q[m] = key3(K_TOKEN, d, new_tok[i])
            slots[i, 2] = m
            m += 1
    inv, uq, _, _ = intern(q[:m], q[:m], False)
    for i in range(n):
        for s in range(3):
            if slots[i, s] >= 0:
                slots[i, s] = inv[slots[i, s]]
    return slots, uq


@njit(cache=True)
def alert_verdicts(slots: np.ndarray, hit: np.ndarray, known_peer: np.ndarray) -> np.ndarray:
    """Per packet: it continues alerted behaviour (its network, an unknown peer's service, or its
    new token) -- from the answers of :func:`alert_queries`."""
    n = slots.shape[0]
    out = np.zeros(n, np.bool_)
    for i in range(n):
        if slots[i, 0] < 0:
            continue
        h = hit[slots[i, 0]] or (hit[slots[i, 1]] and not known_peer[i])
        if slots[i, 2] >= 0 and hit[slots[i, 2]]:
            h = True
        out[i] = h
    return out


@njit(cache=True)
def attempts(
    device: np.ndarray,
    syn_only: np.ndarray,
    outbound: np.ndarray,
    peer_hi: np.ndarray,
    peer_lo: np.ndarray,
    src_port: np.ndarray,
    dst_port: np.ndarray,
    known_target: np.ndarray,
    use_target: bool,
    login_ports: np.ndarray,
) -> np.ndarray:
    """Per packet: a brute-force attempt (see ``features.windows.window_table``)."""
    n = device.shape[0]
    out = np.zeros(n, np.bool_)
    for i in range(n):
        if not syn_only[i] or device[i] < 0:
            continue
        remote = not is_local_one(peer_hi[i], peer_lo[i]) and not is_multicast_one(peer_hi[i], peer_lo[i])
        if use_target and known_target[i]:
            remote = False
        if remote:
            out[i] = True
            continue
        dport = np.uint64(dst_port[i]) if outbound[i] else np.uint64(src_port[i])
        for p in login_ports:
            if p == dport:
                out[i] = True
                break
    return out
