"""Numba kernels of the bidirectional flow meter (see :mod:`iotsentry.features.flowmeter`).

The state is a structure of arrays, grouped by dtype into three 2-D arrays indexed
``[field, slot]`` (``U`` uint64, ``F`` float64, ``I`` int64), plus an open-addressing hash
table (linear probing, backward-shift deletion, load <= 1/2) mapping the canonical 5-tuple of a
flow to its slot. Slots come from a free stack; a dense list of active slots makes the
periodic expiry scan cost O(active flows). A flow that ends is removed from the table and its
slot is appended to ``ended``; Python reads the ended slots after each call and only then
returns them to the free stack.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# --- uint64 fields ----------------------------------------------------------------------------
KAH, KAL, KBH, KBL, SRC_HI, SRC_LO, DST_HI, DST_LO = 0, 1, 2, 3, 4, 5, 6, 7
SPK, DPK, SBY, DBY, SPL, DPL, SMAC, DMAC, HASH = 8, 9, 10, 11, 12, 13, 14, 15, 16
N_U = 17
# --- float64 fields ---------------------------------------------------------------------------
TS0, TSL, ISUM, ISQ, IMIN, IMAX, ZSUM, ZSQ, ZMIN, ZMAX, SAFE = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
N_F = 11
"""``SAFE``: a time up to which the flow is certainly not expired (see :func:`_safe_until`)."""
# --- int64 fields -----------------------------------------------------------------------------
FID, FIRST_IDX, KPA, KPB, PROTO, SPORT, DPORT, SFLAGS, DFLAGS, STATE, APOS = range(11)
N_I = 11
# --- int64 counters (ctr) ---------------------------------------------------------------------
C_NACTIVE, C_NFREE, C_NENDED, C_NEXTFID, C_SINCE, C_EVICTED, C_MAXFLOWS = range(7)
N_C = 7
# --- float64 clock and parameters (fp) -------------------------------------------------------
P_CLOCK, P_NEXTCHECK, P_IDLE_TCP, P_IDLE_OTHER, P_ACTIVE, P_CLOSE, P_SCAN, P_ATTEMPT = range(8)
N_P = 8
# --- flow state bits --------------------------------------------------------------------------
ST_ACTIVE = 1
ST_ORIG_A = 2
ST_FIN_SRC = 4
ST_FIN_DST = 8
ST_CLOSED = 16
ST_LASTFIN_SRC = 32
# --- TCP flags ------------------------------------------------------------------------------
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_ACK = 0x10
ECN_BITS = 0xC0

FRAG_CACHE = 4096  # direct-mapped cache (canonical ips, proto) -> flow of the last first fragment

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0x165667B19E3779F9)
_M4 = np.uint64(0xD6E8FEB86659FD93)
_M5 = np.uint64(0xFF51AFD7ED558CCD)
_S29 = np.uint64(29)
_S32 = np.uint64(32)
_S33 = np.uint64(33)
_S16 = np.uint64(16)


@njit(cache=True)
def hash_key(
    ahi: np.uint64, alo: np.uint64, bhi: np.uint64, blo: np.uint64, pa: int, pb: int, proto: int
) -> np.uint64:
    """64-bit hash of a canonical flow key."""
    ports = (np.uint64(pa) << _S32) | (np.uint64(pb) << _S16) | np.uint64(proto)
    h = ahi * _M1
    h ^= alo * _M2
    h ^= (bhi ^ (bhi >> _S29)) * _M3
    h ^= (blo ^ (blo >> _S29)) * _M4
    h ^= ports * _M1
    h ^= h >> _S33
    h *= _M5
    h ^= h >> _S33
    return h


@njit(cache=True)
def _table_insert(tbl: np.ndarray, h: np.uint64, slot: int) -> None:
    mask = len(tbl) - 1
    i = np.int64(h & np.uint64(mask))
    while tbl[i] >= 0:
        i = (i + 1) & mask
    tbl[i] = slot


@njit(cache=True)
def _table_delete(tbl: np.ndarray, U: np.ndarray, slot: int) -> None:
    mask = len(tbl) - 1
    i = np.int64(U[HASH, slot] & np.uint64(mask))
    while tbl[i] != slot:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        s = tbl[j]
        if s < 0:
            break
        k = np.int64(U[HASH, s] & np.uint64(mask))
        # leave s where it is when its ideal position k lies cyclically in (i, j]
        if i <= j:
            if i < k <= j:
                continue
        elif k > i or k <= j:
            continue
        tbl[i] = s
        i = j
    tbl[i] = -1


@njit(cache=True)
def _lookup(
    tbl: np.ndarray,
    U: np.ndarray,
    I: np.ndarray,  # noqa: E741
    h: np.uint64,
    ahi: np.uint64,
    alo: np.uint64,
    bhi: np.uint64,
    blo: np.uint64,
    pa: int,
    pb: int,
    proto: int,
) -> int:
    mask = len(tbl) - 1
    i = np.int64(h & np.uint64(mask))
    while True:
        s = tbl[i]
        if s < 0:
            return -1
        if (
            U[HASH, s] == h
            and U[KAL, s] == alo
            and U[KBL, s] == blo
            and U[KAH, s] == ahi
            and U[KBH, s] == bhi
            and I[KPA, s] == pa
            and I[KPB, s] == pb
            and I[PROTO, s] == proto
        ):
            return s
        i = (i + 1) & mask


@njit(cache=True)
def end_flow(
    slot: int,
    U: np.ndarray,
    I: np.ndarray,  # noqa: E741
    tbl: np.ndarray,
    active: np.ndarray,
    ended: np.ndarray,
    ctr: np.ndarray,
) -> None:
    """Remove an active flow from the table and the active list; queue it as ended."""
    _table_delete(tbl, U, slot)
    pos = I[APOS, slot]
    last = ctr[C_NACTIVE] - 1
    moved = active[last]
    active[pos] = moved
    I[APOS, moved] = pos
    ctr[C_NACTIVE] = last
    I[STATE, slot] &= ~ST_ACTIVE
    ended[ctr[C_NENDED]] = slot
    ctr[C_NENDED] += 1


@njit(cache=True)
def _expired(
    slot: int,
    now: float,
    F: np.ndarray,
    I: np.ndarray,  # noqa: E741
    fp: np.ndarray,
) -> bool:
    gap = now - F[TSL, slot]
    if I[STATE, slot] & ST_CLOSED and gap > fp[P_CLOSE]:
        return True
    age = now - F[TS0, slot]
    if I[PROTO, slot] == 6:
        idle = fp[P_IDLE_TCP]
        # unanswered connection attempt: only SYNs from the originator, nothing back
        if age > fp[P_ATTEMPT] and (I[SFLAGS, slot] & ~ECN_BITS) == TH_SYN and I[DFLAGS, slot] == 0:
            return True
    else:
        idle = fp[P_IDLE_OTHER]
    return gap > idle or age > fp[P_ACTIVE]


@njit(cache=True)
def _safe_until(slot: int, F: np.ndarray, I: np.ndarray, fp: np.ndarray) -> float:  # noqa: E741
    """A time up to which :func:`_expired` is certainly false for the flow in its current state:
    the earliest of its thresholds (idle, active, close, attempt timeouts), less a margin far
    above the rounding of ``now - t > timeout`` against ``now > t + timeout``."""
    tsl = F[TSL, slot]
    ts0 = F[TS0, slot]
    tcp = I[PROTO, slot] == 6
    d = tsl + (fp[P_IDLE_TCP] if tcp else fp[P_IDLE_OTHER])
    d = min(d, ts0 + fp[P_ACTIVE])
    if I[STATE, slot] & ST_CLOSED:
        d = min(d, tsl + fp[P_CLOSE])
    if tcp and (I[SFLAGS, slot] & ~ECN_BITS) == TH_SYN and I[DFLAGS, slot] == 0:
        d = min(d, ts0 + fp[P_ATTEMPT])
    return d - (abs(d) * 1e-12 + 1e-6)


@njit(cache=True)
def scan(
    now: float,
    U: np.ndarray,
    F: np.ndarray,
    I: np.ndarray,  # noqa: E741
    tbl: np.ndarray,
    active: np.ndarray,
    ended: np.ndarray,
    ctr: np.ndarray,
    fp: np.ndarray,
) -> None:
    """End every active flow that is idle, past its active timeout or closed, at time ``now``
    (only flows past their ``SAFE`` time are checked)."""
    j = ctr[C_NACTIVE] - 1
    while j >= 0:
        s = active[j]
        if now > F[SAFE, s] and _expired(s, now, F, I, fp):
            end_flow(s, U, I, tbl, active, ended, ctr)
        j -= 1


@njit(cache=True)
def end_all(
    U: np.ndarray,
    I: np.ndarray,  # noqa: E741
    tbl: np.ndarray,
    active: np.ndarray,
    ended: np.ndarray,
    ctr: np.ndarray,
) -> None:
    """End every active flow (flush)."""
    j = ctr[C_NACTIVE] - 1
    while j >= 0:
        end_flow(active[j], U, I, tbl, active, ended, ctr)
        j -= 1


@njit(cache=True)
def _evict(
    U: np.ndarray,
    F: np.ndarray,
    I: np.ndarray,  # noqa: E741
    tbl: np.ndarray,
    active: np.ndarray,
    ended: np.ndarray,
    ctr: np.ndarray,
) -> None:
    """End the 1/16 least recently seen active flows (table full)."""
    n = ctr[C_NACTIVE]
    k = max(1, n // 16)
    last = np.empty(n, dtype=np.float64)
    for j in range(n):
        last[j] = F[TSL, active[j]]
    thr = np.partition(last, k - 1)[k - 1]
    done = 0
    j = n - 1
    while j >= 0 and done < k:
        s = active[j]
        if F[TSL, s] <= thr:
            end_flow(s, U, I, tbl, active, ended, ctr)
            done += 1
        j -= 1
    ctr[C_EVICTED] += done


@njit(cache=True)
def rebuild_table(tbl: np.ndarray, U: np.ndarray, active: np.ndarray, n_active: int) -> None:
    """Insert every active slot into an empty (all -1) table."""
    for j in range(n_active):
        s = active[j]
        _table_insert(tbl, U[HASH, s], s)


@njit(cache=True)
def meter(
    start: int,
    ts: np.ndarray,
    wire: np.ndarray,
    ipb: np.ndarray,
    smac: np.ndarray,
    dmac: np.ndarray,
    ipv: np.ndarray,
    sh: np.ndarray,
    sl: np.ndarray,
    dh: np.ndarray,
    dl: np.ndarray,
    proto: np.ndarray,
    sp: np.ndarray,
    dp: np.ndarray,
    flags: np.ndarray,
    plen: np.ndarray,
    frag: np.ndarray,
    index: np.ndarray,
    U: np.ndarray,
    F: np.ndarray,
    I: np.ndarray,  # noqa: E741
    tbl: np.ndarray,
    active: np.ndarray,
    free: np.ndarray,
    ended: np.ndarray,
    fcu: np.ndarray,
    fci: np.ndarray,
    ctr: np.ndarray,
    fp: np.ndarray,
    pfid: np.ndarray,
) -> int:
    """Meter packets ``start..n-1``; return the index reached (``n`` when done).

    Stops early, before touching packet ``i``, when no free slot is left: the caller grows the
    state and calls again with ``start=i``.
    """
    n = len(ts)
    fmask = np.uint64(FRAG_CACHE - 1)
    for i in range(start, n):
        if ctr[C_NFREE] == 0:
            return i
        if ipv[i] == 0:
            pfid[i] = -1
            continue
        t = ts[i]
        if t > fp[P_CLOCK]:
            fp[P_CLOCK] = t
        clock = fp[P_CLOCK]
        if clock >= fp[P_NEXTCHECK] and 8 * ctr[C_SINCE] >= ctr[C_NACTIVE]:
            scan(clock, U, F, I, tbl, active, ended, ctr, fp)
            fp[P_NEXTCHECK] = clock + fp[P_SCAN]
            ctr[C_SINCE] = 0
        ctr[C_SINCE] += 1

        pr = int(proto[i])
        psp = int(sp[i])
        pdp = int(dp[i])
        fl = int(flags[i])
        fr = int(frag[i])
        x_sh = sh[i]
        x_sl = sl[i]
        x_dh = dh[i]
        x_dl = dl[i]
        src_lt = x_sh < x_dh or (x_sh == x_dh and x_sl < x_dl)
        src_eq = x_sh == x_dh and x_sl == x_dl
        is_icmp = pr == 1 or pr == 58
        nonfirst = (fr & 2) != 0
        if is_icmp:
            kpa = psp
            if pr == 1 and kpa == 0:
                kpa = 8
            elif pr == 58 and kpa == 129:
                kpa = 128
            kpb = pdp
            is_a = src_lt or src_eq
        elif nonfirst:
            kpa = 0
            kpb = 0
            is_a = src_lt or src_eq
        else:
            is_a = src_lt or (src_eq and psp <= pdp)
            if is_a:
                kpa = psp
                kpb = pdp
            else:
                kpa = pdp
                kpb = psp
        if is_a:
            ahi, alo, bhi, blo = x_sh, x_sl, x_dh, x_dl
        else:
            ahi, alo, bhi, blo = x_dh, x_dl, x_sh, x_sl

        slot = -1
        from_src = True
        # non-first fragment: the flow of the last first fragment between these hosts
        fc = np.int64(0)
        if nonfirst or (fr & 1) != 0:
            fc = np.int64(hash_key(ahi, alo, bhi, blo, 0, 0, pr) & fmask)
        if nonfirst and not is_icmp:
            s = fci[1, fc]
            if (
                s >= 0
                and fci[0, fc] == pr
                and fcu[0, fc] == ahi
                and fcu[1, fc] == alo
                and fcu[2, fc] == bhi
                and fcu[3, fc] == blo
                and I[FID, s] == fci[2, fc]
                and (I[STATE, s] & ST_ACTIVE) != 0
                and not _expired(s, t, F, I, fp)
            ):
                slot = s
                from_src = x_sh == U[SRC_HI, s] and x_sl == U[SRC_LO, s]

        if slot < 0:
            h = hash_key(ahi, alo, bhi, blo, kpa, kpb, pr)
            slot = _lookup(tbl, U, I, h, ahi, alo, bhi, blo, kpa, kpb, pr)
            if slot >= 0:
                st = I[STATE, slot]
                from_src = is_a == ((st & ST_ORIG_A) != 0)
                if _expired(slot, t, F, I, fp) or ((st & ST_CLOSED) != 0 and (fl & TH_SYN) != 0 and pr == 6):
                    end_flow(slot, U, I, tbl, active, ended, ctr)
                    slot = -1
            if slot < 0:
                if ctr[C_NACTIVE] >= ctr[C_MAXFLOWS]:
                    _evict(U, F, I, tbl, active, ended, ctr)
                nf = ctr[C_NFREE] - 1
                slot = free[nf]
                ctr[C_NFREE] = nf
                orig_a = is_a
                if pr == 6 and not nonfirst and (fl & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK):
                    orig_a = not is_a
                from_src = is_a == orig_a
                U[KAH, slot] = ahi
                U[KAL, slot] = alo
                U[KBH, slot] = bhi
                U[KBL, slot] = blo
                U[HASH, slot] = h
                I[KPA, slot] = kpa
                I[KPB, slot] = kpb
                I[PROTO, slot] = pr
                I[FID, slot] = ctr[C_NEXTFID]
                ctr[C_NEXTFID] += 1
                I[FIRST_IDX, slot] = index[i]
                I[STATE, slot] = ST_ACTIVE | (ST_ORIG_A if orig_a else 0)
                if from_src:
                    U[SRC_HI, slot] = x_sh
                    U[SRC_LO, slot] = x_sl
                    U[DST_HI, slot] = x_dh
                    U[DST_LO, slot] = x_dl
                    I[SPORT, slot] = psp
                    I[DPORT, slot] = pdp
                    U[SMAC, slot] = smac[i]
                    U[DMAC, slot] = dmac[i]
                else:
                    U[SRC_HI, slot] = x_dh
                    U[SRC_LO, slot] = x_dl
                    U[DST_HI, slot] = x_sh
                    U[DST_LO, slot] = x_sl
                    I[SPORT, slot] = pdp
                    I[DPORT, slot] = psp
                    U[SMAC, slot] = dmac[i]
                    U[DMAC, slot] = smac[i]
                U[SPK, slot] = 0
                U[DPK, slot] = 0
                U[SBY, slot] = 0
                U[DBY, slot] = 0
                U[SPL, slot] = 0
                U[DPL, slot] = 0
                I[SFLAGS, slot] = 0
                I[DFLAGS, slot] = 0
                F[TS0, slot] = t
                F[TSL, slot] = t
                F[ISUM, slot] = 0.0
                F[ISQ, slot] = 0.0
                F[IMIN, slot] = np.inf
                F[IMAX, slot] = 0.0
                F[ZSUM, slot] = 0.0
                F[ZSQ, slot] = 0.0
                F[ZMIN, slot] = np.inf
                F[ZMAX, slot] = 0.0
                _table_insert(tbl, h, slot)
                na = ctr[C_NACTIVE]
                active[na] = slot
                I[APOS, slot] = na
                ctr[C_NACTIVE] = na + 1

        # --- account the packet -----------------------------------------------------------
        if U[SPK, slot] + U[DPK, slot] > 0:
            iat = t - F[TSL, slot]
            if iat < 0.0:
                iat = 0.0
            else:
                F[TSL, slot] = t
            F[ISUM, slot] += iat
            F[ISQ, slot] += iat * iat
            if iat < F[IMIN, slot]:
                F[IMIN, slot] = iat
            if iat > F[IMAX, slot]:
                F[IMAX, slot] = iat
        z = float(wire[i])
        F[ZSUM, slot] += z
        F[ZSQ, slot] += z * z
        if z < F[ZMIN, slot]:
            F[ZMIN, slot] = z
        if z > F[ZMAX, slot]:
            F[ZMAX, slot] = z
        if from_src:
            if U[SPK, slot] == 0:
                U[SMAC, slot] = smac[i]
            U[SPK, slot] += np.uint64(1)
            U[SBY, slot] += np.uint64(ipb[i])
            U[SPL, slot] += np.uint64(plen[i])
            I[SFLAGS, slot] |= fl
        else:
            if U[DPK, slot] == 0:
                U[DMAC, slot] = smac[i]
            U[DPK, slot] += np.uint64(1)
            U[DBY, slot] += np.uint64(ipb[i])
            U[DPL, slot] += np.uint64(plen[i])
            I[DFLAGS, slot] |= fl
        pfid[i] = I[FID, slot]

        if (fr & 1) != 0 and not nonfirst and not is_icmp:
            fcu[0, fc] = ahi
            fcu[1, fc] = alo
            fcu[2, fc] = bhi
            fcu[3, fc] = blo
            fci[0, fc] = pr
            fci[1, fc] = slot
            fci[2, fc] = I[FID, slot]

        # --- TCP teardown: RST ends now; after FINs both ways the peer's ACK ends -----------
        if pr == 6 and not nonfirst:
            if fl & TH_RST:
                end_flow(slot, U, I, tbl, active, ended, ctr)
            else:
                st = I[STATE, slot]
                if (st & ST_CLOSED) != 0:
                    expect_src = (st & ST_LASTFIN_SRC) == 0
                    if from_src == expect_src and (fl & TH_ACK) != 0:
                        end_flow(slot, U, I, tbl, active, ended, ctr)
                elif fl & TH_FIN:
                    st |= ST_FIN_SRC if from_src else ST_FIN_DST
                    if (st & ST_FIN_SRC) != 0 and (st & ST_FIN_DST) != 0:
                        st |= ST_CLOSED | (ST_LASTFIN_SRC if from_src else 0)
                    I[STATE, slot] = st
        if I[STATE, slot] & ST_ACTIVE:
            F[SAFE, slot] = _safe_until(slot, F, I, fp)
    return n
