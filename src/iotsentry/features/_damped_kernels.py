"""Numba kernels of the damped incremental statistics (see :mod:`iotsentry.features.damped`).

Four open-addressing hash tables (linear probing, load <= 1/2, no in-place deletion: expired
entries are dropped by rebuilding the table) hold the state, one row of float64 per entry:

``mac_ip`` / ``host`` (1-D streams), row ``[last_ts, (w, s1, s2) * n_lambda]``.

``channel`` (unordered host pair), row ``[last_ts, jit_last0, jit_last1, block * n_lambda]``
with a 16-column block ``w0 s1_0 s2_0 w1 s1_1 s2_1 | jw0 js1_0 js2_0 jw1 js1_1 js2_1 |
s3 w3 r0 r1`` (frame sizes per direction, inter-arrival times per direction, covariance sum,
its weight and the last residual of each direction).

``socket`` (unordered socket pair), row ``[last_ts, block * n_lambda]`` with a 10-column
block (sizes per direction and covariance, as above, without jitter).

Every column of an entry decays by the same factor ``2**(-lambda * dt)`` when the entry is
touched (decay is multiplicative, so decaying all components together at each packet of the
pair equals decaying each of them lazily, as AfterImage does). An entry whose decayed weight at
the slowest rate has fallen below ``eps`` is reset to empty when it is touched; the rebuild
drops exactly such entries, so expiry never changes a feature value.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

MARK = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
"""``hi`` half of a pseudo address that holds a MAC (non-IP, non-ARP frames)."""

VAR_FLOOR = 1e-9
"""Variances below this fraction of the mean square are rounding noise: reported as 0."""


@njit(cache=True)
def _fmix(k: np.uint64) -> np.uint64:
    k ^= k >> np.uint64(33)
    k *= np.uint64(0xFF51AFD7ED558CCD)
    k ^= k >> np.uint64(33)
    k *= np.uint64(0xC4CEB9FE1A85EC53)
    k ^= k >> np.uint64(33)
    return k


@njit(cache=True)
def _hash(kb: np.ndarray, nk: int) -> np.uint64:
    h = np.uint64(0x9E3779B97F4A7C15)
    for j in range(nk):
        h = _fmix(h ^ (kb[j] + np.uint64(0x632BE59BD9B4E019) * np.uint64(j + 1)))
    return h


@njit(cache=True)
def _find(keys: np.ndarray, occ: np.ndarray, kb: np.ndarray) -> tuple[int, bool]:
    """Slot of key ``kb`` (inserted when absent) and whether it was inserted."""
    nk = keys.shape[1]
    mask = occ.shape[0] - 1
    s = np.int64(_hash(kb, nk) & np.uint64(mask))
    while True:
        if occ[s] == 0:
            occ[s] = 1
            for j in range(nk):
                keys[s, j] = kb[j]
            return int(s), True
        same = True
        for j in range(nk):
            if keys[s, j] != kb[j]:
                same = False
                break
        if same:
            return int(s), False
        s = (s + 1) & mask


@njit(cache=True)
def _var(m2: float, mean: float) -> float:
    v = m2 - mean * mean
    if v <= VAR_FLOOR * m2:
        return 0.0
    return v


@njit(cache=True)
def _touch(
    st: np.ndarray, s: int, fresh: bool, t: float, now: float, lam_min: float, wcol: int, eps: float
) -> float:
    """Reset a new or expired entry (returns -1) or return the time step its columns must decay by.

    Expiry is judged at ``now`` (the latest timestamp seen), as :func:`alive` judges it, so an
    out-of-order packet does not revive an entry that a sweep may already have dropped."""
    dt = 0.0
    if not fresh:
        dt = t - st[s, 0]
        age = now - st[s, 0]
        if age > 0.0 and st[s, wcol] * 2.0 ** (-lam_min * age) < eps:
            fresh = True
    if fresh:
        st[s, :] = 0.0
        st[s, 0] = t
        return -1.0
    if dt > 0.0:
        st[s, 0] = t
        return dt
    return 0.0


@njit(cache=True)
def _one(
    st: np.ndarray,
    s: int,
    fresh: bool,
    t: float,
    now: float,
    v: float,
    lams: np.ndarray,
    kmin: int,
    eps: float,
    out: np.ndarray,
    i: int,
    c0: int,
) -> None:
    dt = max(_touch(st, s, fresh, t, now, lams[kmin], 1 + 3 * kmin, eps), 0.0)
    for k in range(lams.shape[0]):
        f = 2.0 ** (-lams[k] * dt) if dt > 0.0 else 1.0
        b = 1 + 3 * k
        w = st[s, b] * f + 1.0
        s1 = st[s, b + 1] * f + v
        s2 = st[s, b + 2] * f + v * v
        st[s, b] = w
        st[s, b + 1] = s1
        st[s, b + 2] = s2
        mean = s1 / w
        out[i, c0 + 3 * k] = w
        out[i, c0 + 3 * k + 1] = mean
        out[i, c0 + 3 * k + 2] = math.sqrt(_var(s2 / w, mean))


@njit(cache=True)
def _pair(
    st: np.ndarray,
    s: int,
    fresh: bool,
    d: int,
    t: float,
    now: float,
    v: float,
    lams: np.ndarray,
    kmin: int,
    eps: float,
    out: np.ndarray,
    i: int,
    c2d: int,
    cjit: int,
) -> None:
    """Update a pair entry with a packet in direction ``d``; ``cjit < 0``: no jitter columns."""
    jit = cjit >= 0
    base = 3 if jit else 1
    blk = 16 if jit else 10
    co = 12 if jit else 6
    dt = _touch(st, s, fresh, t, now, lams[kmin], base + blk * kmin + co + 1, eps)
    if dt < 0.0:
        dt = 0.0
        if jit:  # both directions unseen
            st[s, 1] = np.nan
            st[s, 2] = np.nan
    jv = 0.0
    if jit:
        last = st[s, 1 + d]
        if last != last:
            st[s, 1 + d] = t
        elif t > last:
            jv = t - last
            st[s, 1 + d] = t
    o = 1 - d
    for k in range(lams.shape[0]):
        f = 2.0 ** (-lams[k] * dt) if dt > 0.0 else 1.0
        b = base + blk * k
        if f != 1.0:
            for c in range(b, b + blk):
                st[s, c] *= f
        od = b + 3 * d
        ob = b + 3 * o
        w = st[s, od] + 1.0
        s1 = st[s, od + 1] + v
        s2 = st[s, od + 2] + v * v
        st[s, od] = w
        st[s, od + 1] = s1
        st[s, od + 2] = s2
        mean = s1 / w
        var = _var(s2 / w, mean)
        wo = st[s, ob]
        mo = 0.0
        varo = 0.0
        if wo > 0.0:
            mo = st[s, ob + 1] / wo
            varo = _var(st[s, ob + 2] / wo, mo)
        res = v - mean
        cc = b + co
        s3 = st[s, cc] + res * st[s, cc + 2 + o]
        w3 = st[s, cc + 1] + 1.0
        st[s, cc] = s3
        st[s, cc + 1] = w3
        st[s, cc + 2 + d] = res
        cov = s3 / w3
        sd = math.sqrt(var) * math.sqrt(varo)
        c = c2d + 7 * k
        out[i, c] = w
        out[i, c + 1] = mean
        out[i, c + 2] = math.sqrt(var)
        out[i, c + 3] = math.sqrt(mean * mean + mo * mo)
        out[i, c + 4] = math.sqrt(var * var + varo * varo)
        out[i, c + 5] = cov
        out[i, c + 6] = cov / sd if sd > 0.0 else 0.0
        if jit:
            jd = b + 6 + 3 * d
            jw = st[s, jd] + 1.0
            j1 = st[s, jd + 1] + jv
            j2 = st[s, jd + 2] + jv * jv
            st[s, jd] = jw
            st[s, jd + 1] = j1
            st[s, jd + 2] = j2
            jm = j1 / jw
            out[i, cjit + 3 * k] = jw
            out[i, cjit + 3 * k + 1] = jm
            out[i, cjit + 3 * k + 2] = math.sqrt(_var(j2 / jw, jm))


@njit(cache=True)
def process(
    start: int,
    ts: np.ndarray,
    size: np.ndarray,
    smac: np.ndarray,
    dmac: np.ndarray,
    sh: np.ndarray,
    sl: np.ndarray,
    dh: np.ndarray,
    dl: np.ndarray,
    sp: np.ndarray,
    dp: np.ndarray,
    proto: np.ndarray,
    lams: np.ndarray,
    kmin: int,
    eps: float,
    k_mi: np.ndarray,
    o_mi: np.ndarray,
    s_mi: np.ndarray,
    k_h: np.ndarray,
    o_h: np.ndarray,
    s_h: np.ndarray,
    k_hh: np.ndarray,
    o_hh: np.ndarray,
    s_hh: np.ndarray,
    k_hp: np.ndarray,
    o_hp: np.ndarray,
    s_hp: np.ndarray,
    counts: np.ndarray,
    clock: np.ndarray,
    out: np.ndarray,
) -> int:
    """Features of packets ``start..`` into ``out``; returns where it stopped (``n`` = done,
    less when a table reached its load limit and must be swept or grown first)."""
    n = ts.shape[0]
    nl = lams.shape[0]
    c_mi = 0
    c_h = 3 * nl
    c_hh = 6 * nl
    c_jit = 13 * nl
    c_hp = 16 * nl
    kb = np.zeros(5, np.uint64)
    for i in range(start, n):
        if (
            2 * (counts[0] + 1) > o_mi.shape[0]
            or 2 * (counts[1] + 1) > o_h.shape[0]
            or 2 * (counts[2] + 1) > o_hh.shape[0]
            or 2 * (counts[3] + 1) > o_hp.shape[0]
        ):
            return i
        t = ts[i]
        if t > clock[0]:
            clock[0] = t
        v = float(size[i])
        ah, al, bh, bl = sh[i], sl[i], dh[i], dl[i]
        if ah == 0 and al == 0 and bh == 0 and bl == 0:
            ah, al, bh, bl = MARK, smac[i], MARK, dmac[i]
        # source MAC-IP
        kb[0] = smac[i]
        kb[1] = ah
        kb[2] = al
        s, fresh = _find(k_mi, o_mi, kb[:3])
        counts[0] += fresh
        _one(s_mi, s, fresh, t, clock[0], v, lams, kmin, eps, out, i, c_mi)
        # source host
        s, fresh = _find(k_h, o_h, kb[1:3])
        counts[1] += fresh
        _one(s_h, s, fresh, t, clock[0], v, lams, kmin, eps, out, i, c_h)
        # host-to-host channel (unordered pair, direction d)
        d = 0
        if ah > bh or (ah == bh and al > bl):
            d = 1
        if d == 0:
            kb[0], kb[1], kb[2], kb[3] = ah, al, bh, bl
        else:
            kb[0], kb[1], kb[2], kb[3] = bh, bl, ah, al
        s, fresh = _find(k_hh, o_hh, kb[:4])
        counts[2] += fresh
        _pair(s_hh, s, fresh, d, t, clock[0], v, lams, kmin, eps, out, i, c_hh, c_jit)
        # socket pair
        pa, pb = np.uint64(sp[i]), np.uint64(dp[i])
        d = 0
        if ah > bh or (ah == bh and (al > bl or (al == bl and pa > pb))):
            d = 1
        if d == 0:
            kb[0], kb[1], kb[2], kb[3] = ah, al, bh, bl
            kb[4] = (np.uint64(proto[i]) << np.uint64(32)) | (pa << np.uint64(16)) | pb
        else:
            kb[0], kb[1], kb[2], kb[3] = bh, bl, ah, al
            kb[4] = (np.uint64(proto[i]) << np.uint64(32)) | (pb << np.uint64(16)) | pa
        s, fresh = _find(k_hp, o_hp, kb)
        counts[3] += fresh
        _pair(s_hp, s, fresh, d, t, clock[0], v, lams, kmin, eps, out, i, c_hp, -1)
    return n


@njit(cache=True)
def alive(occ: np.ndarray, st: np.ndarray, clock: float, lam_min: float, wcol: int, eps: float) -> np.ndarray:
    """Occupied entries whose weight at ``clock`` (slowest rate) is still at least ``eps``
    (the same test :func:`_touch` applies, so dropping the others changes no feature)."""
    keep = np.zeros(occ.shape[0], np.bool_)
    for s in range(occ.shape[0]):
        if occ[s] == 0:
            continue
        dt = clock - st[s, 0]
        if dt > 0.0 and st[s, wcol] * 2.0 ** (-lam_min * dt) < eps:
            continue
        keep[s] = True
    return keep


@njit(cache=True)
def rebuild(
    keys: np.ndarray, st: np.ndarray, keep: np.ndarray, cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A new table of ``cap`` slots holding the entries where ``keep`` is set."""
    k2 = np.zeros((cap, keys.shape[1]), np.uint64)
    o2 = np.zeros(cap, np.uint8)
    s2 = np.zeros((cap, st.shape[1]), np.float64)
    n = 0
    for s in range(keep.shape[0]):
        if keep[s]:
            slot, _ = _find(k2, o2, keys[s])
            s2[slot, :] = st[s, :]
            n += 1
    return k2, o2, s2, n
