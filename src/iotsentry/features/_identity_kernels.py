"""Numba kernels of the remote identity lookups (:meth:`iotsentry.baseline.profile.Baseline.identity`).

A batch's identity questions -- is the peer local, which network is it in, which identity keys
(:func:`iotsentry.baseline.identity.key`) does each packet ask the baseline about -- are answered
in two passes over the packets instead of a few dozen numpy calls: :func:`remote_basics` (address
classes, networks, high-UDP, the distinct remote peers that may have a DNS name) and
:func:`remote_queries` (every key of every packet, deduplicated, so that each key set is asked
once per batch with the distinct keys only). :func:`remote_verdicts` folds the answers back
into per-packet verdicts.

The keys are bit for bit those of ``identity.key`` (same kind tags, same ``mix``), and the
address classes those of :mod:`iotsentry.features.addresses`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from iotsentry.features._window_kernels import _SEED, _mix_end, _mix_step, intern

K_NET = np.uint64(1)
K_DOM = np.uint64(2)
K_BARE = np.uint64(3)
K_HIGH = np.uint64(4)
K_SVC = np.uint64(6)
K_TOKEN = np.uint64(7)
"""Kind tags of ``identity.KIND`` (net, dom, bare, high, svc, token)."""

Q_NET, Q_BARE, Q_HIGH, Q_DOM = 0, 1, 2, 3
"""Query slots per owner (the device, then each of its two groups: 4 slots each)."""
N_SLOTS = 12

_V4_NET = np.uint64(0xFFFF_FFFF_FFFF_FF00)
_V6_NET = np.uint64(0xFFFF_FFFF_FFFF_0000)
_FFFF = np.uint64(0xFFFF)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(cache=True)
def key3(kind: np.uint64, owner: np.uint64, a: np.uint64) -> np.uint64:
    """``identity.key(kind, owner, a)`` of one row."""
    return _mix_end(_mix_step(_mix_step(_mix_step(_SEED, kind), owner), a))


@njit(cache=True)
def key4(kind: np.uint64, owner: np.uint64, a: np.uint64, b: np.uint64) -> np.uint64:
    """``identity.key(kind, owner, a, b)`` of one row."""
    return _mix_end(_mix_step(_mix_step(_mix_step(_mix_step(_SEED, kind), owner), a), b))


@njit(cache=True)
def key_mix3(x: np.uint64, y: np.uint64, z: np.uint64) -> np.uint64:
    """``mix_keys(x, y, z)`` of one row."""
    return _mix_end(_mix_step(_mix_step(_mix_step(_SEED, x), y), z))


@njit(cache=True)
def is_local_one(hi: np.uint64, lo: np.uint64) -> bool:
    """``addresses.is_local`` of one address."""
    if hi == 0 and (lo >> _S32) == _FFFF:
        a = lo & _LOW32
        return (
            (a >> np.uint64(24)) == 10
            or (a >> np.uint64(20)) == 0xAC1
            or (a >> np.uint64(16)) == 0xC0A8
            or (a >> np.uint64(16)) == 0xA9FE
        )
    return ((hi >> np.uint64(54)) == 0x3FA or (hi >> np.uint64(57)) == 0x7E) and hi != 0


@njit(cache=True)
def is_multicast_one(hi: np.uint64, lo: np.uint64) -> bool:
    """``addresses.is_multicast`` of one address."""
    if hi == 0 and (lo >> _S32) == _FFFF:
        a = lo & _LOW32
        return (a >> np.uint64(28)) == 0xE or a == _LOW32 or (a & np.uint64(0xFF)) == 0xFF
    return (hi >> np.uint64(56)) == 0xFF


@njit(cache=True)
def network_one(hi: np.uint64, lo: np.uint64) -> tuple[np.uint64, np.uint64]:
    """``identity.network_of`` of one address."""
    if hi == 0 and (lo >> _S32) == _FFFF:
        return hi, lo & _V4_NET
    return hi & _V6_NET, np.uint64(0)


@njit(cache=True)
def remote_basics(
    device: np.ndarray,
    ip_version: np.ndarray,
    peer_hi: np.ndarray,
    peer_lo: np.ndarray,
    proto: np.ndarray,
    src_port: np.ndarray,
    dst_port: np.ndarray,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]:
    """Per packet: local (local, multicast or not IP), valid (a device's IP packet), high UDP
    (valid, UDP between unprivileged ports) and the peer's network halves; and the remote
    candidates for a DNS name (``~local`` rows of a device): their rows, the number of their
    distinct peer per row, and the distinct peers' halves.

    Returns (local, valid, high, net_hi, net_lo, cand rows, peer number per cand row, peer hi,
    peer lo).
    """
    n = device.shape[0]
    local = np.empty(n, np.bool_)
    valid = np.empty(n, np.bool_)
    high = np.empty(n, np.bool_)
    nhi = np.empty(n, np.uint64)
    nlo = np.empty(n, np.uint64)
    ncand = 0
    for i in range(n):
        hi = peer_hi[i]
        lo = peer_lo[i]
        loc = is_local_one(hi, lo) or is_multicast_one(hi, lo) or ip_version[i] == 0
        local[i] = loc
        ok = device[i] >= 0 and ip_version[i] > 0
        valid[i] = ok
        high[i] = ok and proto[i] == 17 and src_port[i] >= 1024 and dst_port[i] >= 1024
        nh, nl = network_one(hi, lo)
        nhi[i] = nh
        nlo[i] = nl
        if not loc and device[i] >= 0:
            ncand += 1
    cand = np.empty(ncand, np.int64)
    ch = np.empty(ncand, np.uint64)
    cl = np.empty(ncand, np.uint64)
    k = 0
    for i in range(n):
        if not local[i] and device[i] >= 0:
            cand[k] = i
            ch[k] = peer_hi[i]
            cl[k] = peer_lo[i]
            k += 1
    inv, uhi, ulo, _ = intern(ch, cl, True)
    return local, valid, high, nhi, nlo, cand, inv, uhi, ulo


@njit(cache=True)
def remote_queries(
    device: np.ndarray,
    valid: np.ndarray,
    local: np.ndarray,
    high: np.ndarray,
    peer_hi: np.ndarray,
    peer_lo: np.ndarray,
    net_hi: np.ndarray,
    net_lo: np.ndarray,
    proto: np.ndarray,
    service: np.ndarray,
    named: np.ndarray,
    dom: np.ndarray,
    owners: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every identity key the packets ask about, deduplicated per key set.

    Slot ``4 * o + kind`` of row ``i`` (owner ``o``: 0 the device, 1 and 2 its groups from
    ``owners[device]``, 0 = none; kind: network, bare-IP service, high-UDP network, domain) holds
    the number of the row's key among the distinct keys of its set (the device's ``known`` for
    owner 0, ``group_known`` for the groups), -1 where the row asks nothing: networks and bare
    services are asked for valid remote rows, high-UDP networks for high-UDP rows (local peers
    by their address), domains for ``named`` rows (``dom``: the domain hash of the row's name).
    Also the (device, peer) and (device, service) keys of every row, deduplicated.

    Returns (slots (n, 12), distinct device keys, distinct group keys, peer key number per row,
    distinct peer keys, service key number per row, distinct service keys).
    """
    n = device.shape[0]
    slots = np.full((n, N_SLOTS), -1, np.int64)
    qd = np.empty(4 * n, np.uint64)
    qg = np.empty(8 * n, np.uint64)
    md = 0
    mg = 0
    nown = owners.shape[0]
    for i in range(n):
        if not valid[i]:
            continue
        d = device[i]
        ud = np.uint64(np.int64(d))
        loc = local[i]
        hhi = peer_hi[i] if loc else net_hi[i]
        hlo = peer_lo[i] if loc else net_lo[i]
        pr = np.uint64(proto[i])
        sv = np.uint64(service[i])
        g0 = owners[d, 0] if d < nown else np.uint64(0)
        g1 = owners[d, 1] if d < nown else np.uint64(0)
        if not loc:
            qd[md] = key4(K_NET, ud, net_hi[i], net_lo[i])
            slots[i, Q_NET] = md
            qd[md + 1] = key4(K_BARE, ud, pr, sv)
            slots[i, Q_BARE] = md + 1
            md += 2
        if high[i]:
            qd[md] = key4(K_HIGH, ud, hhi, hlo)
            slots[i, Q_HIGH] = md
            md += 1
        if named[i]:
            qd[md] = key3(K_DOM, ud, dom[i])
            slots[i, Q_DOM] = md
            md += 1
        for o in range(2):
            g = g0 if o == 0 else g1
            if g == 0:
                continue
            b = 4 * (o + 1)
            if not loc:
                qg[mg] = key4(K_NET, g, net_hi[i], net_lo[i])
                slots[i, b + Q_NET] = mg
                qg[mg + 1] = key4(K_BARE, g, pr, sv)
                slots[i, b + Q_BARE] = mg + 1
                mg += 2
            if high[i]:
                qg[mg] = key4(K_HIGH, g, hhi, hlo)
                slots[i, b + Q_HIGH] = mg
                mg += 1
            if named[i]:
                qg[mg] = key3(K_DOM, g, dom[i])
                slots[i, b + Q_DOM] = mg
                mg += 1
    dinv, ud_keys, _, _ = intern(qd[:md], qd[:md], False)
    ginv, ug_keys, _, _ = intern(qg[:mg], qg[:mg], False)
    for i in range(n):
        for s in range(N_SLOTS):
            j = slots[i, s]
            if j >= 0:
                slots[i, s] = dinv[j] if s < 4 else ginv[j]
    pk = np.empty(n, np.uint64)
    sk = np.empty(n, np.uint64)
    for i in range(n):
        ud = np.uint64(np.int64(device[i]))
        pk[i] = key_mix3(ud, peer_hi[i], peer_lo[i])
        sk[i] = key_mix3(ud, np.uint64(proto[i]), np.uint64(service[i]))
    pinv, upk, _, _ = intern(pk, pk, False)
    sinv, usk, _, _ = intern(sk, sk, False)
    return slots, ud_keys, ug_keys, pinv, upk, sinv, usk


@njit(cache=True)
def remote_verdicts(
    valid: np.ndarray,
    local: np.ndarray,
    high: np.ndarray,
    named: np.ndarray,
    slots: np.ndarray,
    hit_d: np.ndarray,
    hit_g: np.ndarray,
    pinv: np.ndarray,
    pcount: np.ndarray,
    sinv: np.ndarray,
    scount: np.ndarray,
    has_name: np.ndarray,
    name_known: np.ndarray,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]:
    """Per-packet verdicts from the answers of :func:`remote_queries` (see ``Identity``).

    ``name_known`` (the learned-name verdicts) is updated in place with the domain answers.
    Returns (peer windows, service windows, network known, group known, high known, known
    peer, churn, known service, has name or local).
    """
    n = valid.shape[0]
    pw = np.empty(n)
    sw = np.empty(n)
    net_known = np.zeros(n, np.bool_)
    group_known = np.zeros(n, np.bool_)
    high_known = np.zeros(n, np.bool_)
    known_peer = np.empty(n, np.bool_)
    churn = np.empty(n, np.bool_)
    known_service = np.empty(n, np.bool_)
    named_or_local = np.empty(n, np.bool_)
    for i in range(n):
        pw[i] = pcount[pinv[i]]
        sw[i] = scount[sinv[i]]
        bare = False
        if valid[i]:
            loc = local[i]
            if not loc:
                net_known[i] = hit_d[slots[i, Q_NET]]
                bare = hit_d[slots[i, Q_BARE]]
            hk = False
            if high[i]:
                hk = hit_d[slots[i, Q_HIGH]]
            dk = False
            if named[i]:
                dk = hit_d[slots[i, Q_DOM]]
            for o in range(1, 3):
                b = 4 * o
                s = slots[i, b + Q_NET]
                if s >= 0 and hit_g[s]:
                    group_known[i] = True
                s = slots[i, b + Q_BARE]
                if s >= 0 and hit_g[s]:
                    bare = True
                s = slots[i, b + Q_HIGH]
                if s >= 0 and hit_g[s]:
                    hk = True
                s = slots[i, b + Q_DOM]
                if s >= 0 and hit_g[s]:
                    dk = True
            high_known[i] = hk
            if dk:
                name_known[i] = True
        kp = pw[i] > 0 or name_known[i] or net_known[i] or group_known[i] or local[i] or not valid[i]
        known_peer[i] = kp
        churn[i] = not kp and bare and not has_name[i]
        known_service[i] = sw[i] > 0 or high_known[i] or not valid[i]
        named_or_local[i] = has_name[i] or local[i]
    return pw, sw, net_known, group_known, high_known, known_peer, churn, known_service, named_or_local


@njit(cache=True)
def novelty_sightings(
    device: np.ndarray,
    window: np.ndarray,
    valid: np.ndarray,
    local: np.ndarray,
    known_peer: np.ndarray,
    churn: np.ndarray,
    known_service: np.ndarray,
    high_udp: np.ndarray,
    high_known: np.ndarray,
    has_name: np.ndarray,
    peer_hi: np.ndarray,
    peer_lo: np.ndarray,
    net_hi: np.ndarray,
    net_lo: np.ndarray,
    proto: np.ndarray,
    service: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (kind, device, window, a, b) novelties of a scored batch, for the living
    baseline's candidates (see :meth:`iotsentry.baseline.living.Living.observe_batch`).

    Kinds: 0 a new peer's network, 1 a new service (not high UDP), 2 a new high-UDP remote
    network, 3 a new high-UDP local address, 4 the service of a new peer reached by bare IP
    (``a, b``: network halves, (protocol, port) or address halves). Each distinct sighting comes
    with its first row. Also the rows of new named peers, one per distinct (device, window,
    peer), in batch order (their names' domains are candidates too).

    Returns (kind, device, window, a, b, first row, named rows).
    """
    n = device.shape[0]
    m = 0
    for i in range(n):
        if valid[i] and device[i] >= 0:
            m += 1
    # at most 3 sightings per row: kind 0, one of kinds 1 / 2 / 3, kind 4
    sk = np.empty(3 * m, np.uint64)
    sdw0 = np.empty(3 * m, np.uint64)
    sdw1 = np.empty(3 * m, np.uint64)
    sa = np.empty(3 * m, np.uint64)
    sb = np.empty(3 * m, np.uint64)
    srow = np.empty(3 * m, np.int64)
    named = np.empty(m, np.int64)
    ns = 0
    nn = 0
    for i in range(n):
        if not (valid[i] and device[i] >= 0):
            continue
        hu = high_udp[i]
        if known_peer[i] and known_service[i] and not (hu and not high_known[i]) and has_name[i]:
            continue
        loc = local[i]
        new_peer = not known_peer[i] and not churn[i] and not loc
        new_svc = not known_service[i]
        new_high = hu and new_svc
        bare = not has_name[i] and not loc
        ud = np.uint64(np.int64(device[i]))
        uw = np.uint64(window[i])
        if new_peer:
            sk[ns], sdw0[ns], sdw1[ns], sa[ns], sb[ns], srow[ns] = 0, ud, uw, net_hi[i], net_lo[i], i
            ns += 1
        if new_svc and not hu:
            sk[ns], sdw0[ns], sdw1[ns], sa[ns], sb[ns], srow[ns] = (
                1,
                ud,
                uw,
                np.uint64(proto[i]),
                np.uint64(service[i]),
                i,
            )
            ns += 1
        elif new_high and not loc:
            sk[ns], sdw0[ns], sdw1[ns], sa[ns], sb[ns], srow[ns] = 2, ud, uw, net_hi[i], net_lo[i], i
            ns += 1
        elif new_high and loc:
            sk[ns], sdw0[ns], sdw1[ns], sa[ns], sb[ns], srow[ns] = 3, ud, uw, peer_hi[i], peer_lo[i], i
            ns += 1
        if bare and new_peer:
            sk[ns], sdw0[ns], sdw1[ns], sa[ns], sb[ns], srow[ns] = (
                4,
                ud,
                uw,
                np.uint64(proto[i]),
                np.uint64(service[i]),
                i,
            )
            ns += 1
        if new_peer and not bare:
            named[nn] = i
            nn += 1
    # exact distinct (kind, device, window, a, b), first occurrence (lowest row) of each
    idw, _, _, _ = intern(sdw0[:ns], sdw1[:ns], True)
    iab, _, _, _ = intern(sa[:ns], sb[:ns], True)
    kab = np.empty(ns, np.uint64)
    for t in range(ns):
        kab[t] = np.uint64(iab[t]) * np.uint64(8) + sk[t]
    _, _, _, first = intern(idw.view(np.uint64), kab, True)
    u = first.shape[0]
    kind_o = np.empty(u, np.int64)
    dev_o = np.empty(u, np.int64)
    win_o = np.empty(u, np.int64)
    a_o = np.empty(u, np.uint64)
    b_o = np.empty(u, np.uint64)
    row_o = np.empty(u, np.int64)
    for j in range(u):
        t = first[j]
        kind_o[j] = np.int64(sk[t])
        dev_o[j] = np.int64(sdw0[t])
        win_o[j] = np.int64(sdw1[t])
        a_o[j] = sa[t]
        b_o[j] = sb[t]
        row_o[j] = srow[t]
    # named rows: one per distinct (device, window, peer), in batch order
    nd0 = np.empty(nn, np.uint64)
    nd1 = np.empty(nn, np.uint64)
    np0 = np.empty(nn, np.uint64)
    np1 = np.empty(nn, np.uint64)
    for t in range(nn):
        i = named[t]
        nd0[t] = np.uint64(np.int64(device[i]))
        nd1[t] = np.uint64(window[i])
        np0[t] = peer_hi[i]
        np1[t] = peer_lo[i]
    jdw, _, _, _ = intern(nd0, nd1, True)
    jp, _, _, _ = intern(np0, np1, True)
    _, _, _, nfirst = intern(jdw.view(np.uint64), jp.view(np.uint64), True)
    named_rows = np.empty(nfirst.shape[0], np.int64)
    for j in range(nfirst.shape[0]):
        named_rows[j] = named[nfirst[j]]
    return kind_o, dev_o, win_o, a_o, b_o, row_o, named_rows


@njit(cache=True)
def group_max(inv: np.ndarray, v: np.ndarray, m: int) -> np.ndarray:
    """Per group (``inv``: group of each row, ``m`` groups): the largest value (-inf if none)."""
    out = np.full(m, -np.inf)
    for i in range(inv.shape[0]):
        if v[i] > out[inv[i]]:
            out[inv[i]] = v[i]
    return out
