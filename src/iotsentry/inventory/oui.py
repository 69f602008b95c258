"""Vendor names from the IEEE OUI registry bundled with netaddr (works offline)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4096)
def _lookup_oui(oui: int) -> str | None:
    import netaddr  # imported lazily: loading the registry index takes a moment

    try:
        return str(netaddr.OUI(oui).registration().org).strip() or None
    except (netaddr.NotRegisteredError, IndexError, ValueError):
        return None


def vendor_of(mac: int) -> str | None:
    """Vendor registered for the MAC's OUI; ``"(locally administered)"`` for random MACs."""
    m = int(mac)
    if m == 0:
        return None
    first = (m >> 40) & 0xFF
    if first & 0x02:
        return "(locally administered)"
    return _lookup_oui(m >> 24)
