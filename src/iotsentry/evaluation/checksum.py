"""Internet checksums (RFC 1071) and their incremental update (RFC 1624).

Two kinds of helpers:

* scalar ones for building single frames (:func:`ones_sum`, :func:`internet_checksum`),
  which give exactly what a full recomputation (dpkt, the kernel) gives;
* a vectorised :func:`incremental_update` for rewriting addresses in many frames at once:
  ``HC' = ~(~HC + ~m + m')`` (RFC 1624, eqn. 3) summed over every changed 16-bit word.
  Applied to a correct checksum it yields the same value a full recomputation would; applied
  to a checksum that was already wrong in the source, it keeps the same error (the frame is
  re-addressed, not repaired).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "checksum_residual",
    "incremental_update",
    "internet_checksum",
    "ones_sum",
]


def ones_sum(data: bytes) -> int:
    """Ones' complement sum of ``data`` as 16-bit big-endian words (odd length: zero padded).

    Uses ``2**16 ≡ 1 (mod 0xFFFF)``: the folded word sum is the big integer modulo ``0xFFFF``,
    except that a non-zero sum that is a multiple of ``0xFFFF`` folds to ``0xFFFF`` (as the
    end-around-carry addition of RFC 1071 does), and all-zero data sums to ``0``.

    Parameters
    ----------
    data
        Bytes to sum.

    Returns
    -------
    int
        The folded sum in ``[0, 0xFFFF]``.
    """
    if len(data) % 2:
        data = data + b"\x00"
    x = int.from_bytes(data, "big")
    s = x % 0xFFFF
    if s == 0 and x != 0:
        return 0xFFFF
    return s


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum of ``data`` (the value to store in the header field)."""
    return ~ones_sum(data) & 0xFFFF


def checksum_residual(data: bytes) -> int:
    """Folded sum of a region *including* its checksum field: ``0xFFFF`` when it verifies.

    For a region whose stored checksum is wrong, the residual measures the error; an
    incremental update keeps it unchanged.
    """
    return ones_sum(data)


def _fold(acc: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """End-around-carry fold of non-negative sums into 16 bits."""
    acc = (acc & 0xFFFF) + (acc >> 16)
    acc = (acc & 0xFFFF) + (acc >> 16)
    return (acc & 0xFFFF) + (acc >> 16)


def incremental_update(
    checksum: npt.ArrayLike, old_words: npt.ArrayLike, new_words: npt.ArrayLike
) -> npt.NDArray[np.uint16]:
    """Update checksums for changed 16-bit words (RFC 1624, eqn. 3), vectorised.

    Parameters
    ----------
    checksum
        Current checksum field values, shape ``(n,)``.
    old_words, new_words
        The covered 16-bit words before and after the change, shape ``(n, k)`` (words that
        did not change may be included: they contribute ``~m + m = -0``).

    Returns
    -------
    numpy.ndarray
        The new checksum field values, ``uint16``, shape ``(n,)``.
    """
    hc = np.asarray(checksum, dtype=np.int64) & 0xFFFF
    old = np.asarray(old_words, dtype=np.int64) & 0xFFFF
    new = np.asarray(new_words, dtype=np.int64) & 0xFFFF
    if old.ndim == 1:
        old = old[:, None]
        new = new[:, None]
    acc = (~hc & 0xFFFF) + (~old & 0xFFFF).sum(axis=1) + new.sum(axis=1)
    acc = _fold(acc)
    return (~acc & 0xFFFF).astype(np.uint16)
