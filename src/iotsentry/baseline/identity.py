"""Who a remote is, beyond its address: its network, the domain behind its name, its kind of service.

Cloud services rotate addresses, content networks answer from many, and a phone app's
peer-to-peer relay changes ports every few minutes. Judged by the exact address and port, a
healthy device meets "new" peers all day. A remote is therefore described at three grains:

* its **network**: the /24 of an IPv4 address, the /48 of an IPv6 address (:func:`network_of`);
* the **registrable domain** of its DNS name (``n-tss.tplinkcloud.com.cn`` ->
  ``tplinkcloud.com.cn``; ICANN section of the Public Suffix List, bundled with the
  ``publicsuffixlist`` package, no network access; :func:`registered_domain`);
* its **service**: protocol and responder port, where a UDP conversation between two
  unprivileged ports (both >= 1024, the mark of peer-to-peer hole punching) counts as one
  service per peer network ("high UDP"), whatever the ports (:func:`is_high_udp`).

Knowledge is kept as 64-bit keys: :func:`key` mixes a kind tag, an owner (a device number or a
group) and the values, so every set of the baseline is a flat ``uint64`` array.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from iotsentry.features import _window_kernels as K

__all__ = [
    "HIGH_PORT",
    "KIND",
    "device_groups",
    "domain_hash",
    "group_owner",
    "is_high_udp",
    "key",
    "network_of",
    "registered_domain",
]

KIND = {
    "net": 1,
    "dom": 2,
    "bare": 3,
    "high": 4,
    "peer": 5,
    "svc": 6,
    "token": 7,
}
"""Kind tags of identity keys (an owner's networks, domains, bare-IP services, high-UDP networks,
exact peers, services, application tokens)."""

HIGH_PORT = 1024
"""Ports from here up are unprivileged: a conversation between two of them has no fixed service."""

_V4_NET = np.uint64(0xFFFF_FFFF_FFFF_FF00)
_V6_NET = np.uint64(0xFFFF_FFFF_FFFF_0000)
_GROUP_BIT = np.uint64(1 << 62)
_MAX_U64 = (1 << 64) - 1


def network_of(
    hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """The /24 (IPv4-mapped) or /48 (IPv6) network of each address, as (hi, lo) halves."""
    hi = np.asarray(hi, dtype=np.uint64)
    lo = np.asarray(lo, dtype=np.uint64)
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    nhi = np.where(v4, hi, hi & _V6_NET)
    nlo = np.where(v4, lo & _V4_NET, np.uint64(0))
    return nhi, nlo


def is_high_udp(
    proto: npt.NDArray[np.uint8], sport: npt.NDArray[np.uint16], dport: npt.NDArray[np.uint16]
) -> npt.NDArray[np.bool_]:
    """UDP between two unprivileged ports (peer-to-peer style, no fixed service)."""
    return (proto == 17) & (sport >= HIGH_PORT) & (dport >= HIGH_PORT)


@lru_cache(maxsize=1)
def _psl() -> object:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(only_icann=True)


@lru_cache(maxsize=65536)
def registered_domain(name: str) -> str:
    """The registrable domain of a DNS name (ICANN public suffix + one label), lower case.

    A name that is itself a public suffix, a single label, or an address is returned as it is.
    """
    n = name.strip().rstrip(".").lower()
    if not n or "." not in n:
        return n
    got = _psl().privatesuffix(n)  # type: ignore[attr-defined]
    return str(got) if got else n


@lru_cache(maxsize=65536)
def domain_hash(name: str) -> int:
    """A stable 63-bit hash of the registrable domain of ``name`` (0 for an empty name)."""
    from iotsentry.features.app_tokens import token_hash

    dom = registered_domain(name)
    return token_hash("dom:" + dom) if dom else 0


def group_owner(group: str) -> int:
    """The owner number of a device group (type or vendor): never equal to a device number."""
    from iotsentry.features.app_tokens import token_hash

    return int(np.uint64(token_hash("group:" + group)) | _GROUP_BIT)


def key(
    kind: str, owner: npt.NDArray[np.generic] | int, *values: npt.NDArray[np.generic] | int
) -> npt.NDArray[np.uint64]:
    """Identity keys: the hash of (kind tag, owner, values...) per row (scalars broadcast)."""
    if isinstance(owner, int | np.integer) and all(isinstance(v, int | np.integer) for v in values):
        # one row (the most common single lookups): no broadcasting needed
        ints = [int(owner), *(int(v) for v in values)]
        if all(0 <= x <= _MAX_U64 for x in ints):
            one: npt.NDArray[np.uint64] = K.mix(np.array([[KIND[kind]], *([x] for x in ints)], np.uint64))
            return one
    cols = [np.atleast_1d(np.asarray(owner)).astype(np.uint64)]
    cols += [np.atleast_1d(np.asarray(v)).astype(np.uint64) for v in values]
    n = max(len(c) for c in cols)
    rows = [np.full(n, KIND[kind], np.uint64)] + [np.broadcast_to(c, (n,)) for c in cols]
    out: npt.NDArray[np.uint64] = K.mix(np.ascontiguousarray(np.stack(rows)))
    return out


_NO_GROUP_TYPES = frozenset({"", "?", "unknown", "gateway", "computer", "network"})


def device_groups(device_type: str | None, vendor: str | None, is_gateway: bool = False) -> list[str]:
    """The groups whose knowledge a device shares: its type and its vendor, when known.

    Types that say nothing about behaviour (unknown, gateway, general computers, network gear)
    and unknown or locally administered vendors form no group.
    """
    if is_gateway:
        return []
    out = []
    t = (device_type or "").strip().lower()
    if t not in _NO_GROUP_TYPES:
        out.append(f"type:{t}")
    v = (vendor or "").strip()
    if v and v != "?" and "locally administered" not in v.lower():
        out.append(f"vendor:{v.lower()}")
    return out
