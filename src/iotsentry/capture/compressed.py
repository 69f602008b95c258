"""Compressed inputs: gzip, xz, bzip2 and zstd, told by their magic numbers, not by names.

:func:`open_input` opens a file and, when its first bytes are a compression format's magic
number, returns a buffered reader of the decompressed stream (``readinto`` works on it, so the
capture readers stream it in chunks like a plain file, in bounded memory). A stream that is cut
short or corrupt raises one of :data:`DECOMPRESSION_ERRORS` while it is read: the readers turn
that into a :class:`~iotsentry.errors.CaptureDamaged` warning and keep every packet before it.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import warnings
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from iotsentry.errors import LogDamaged

MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
"""Leading bytes of each supported compression format."""

COMPRESSED_READ = 1 << 16
"""Most bytes asked of a decompressing stream per read (``readinto1``: one decompression step;
a damaged stream loses what its last step had decompressed)."""

MIN_COMPRESSED_BATCH = 65_536
"""Rows a reader's batch can hold at least for a compressed capture (whose packet count its file
size does not bound, as it bounds a plain capture's)."""


def _zstd_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a declared dependency
        return ()
    return (zstandard.ZstdError,)


class StreamDamaged(EOFError):
    """A decompressing stream failed on its data (bzip2 reports a bad block as a bare ``OSError``,
    which :func:`fill` and :func:`text_lines` turn into this)."""


DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
    *_zstd_errors(),
)
"""What reading a damaged compressed stream raises (:class:`StreamDamaged` is an ``EOFError``)."""


def compression_of(head: bytes) -> str | None:
    """The compression format whose magic number ``head`` starts with, else ``None``."""
    for magic, name in MAGICS:
        if head.startswith(magic):
            return name
    return None


def compression_of_file(path: str | Path) -> str | None:
    """The compression format of a file (from its first bytes), else ``None``."""
    with open(path, "rb") as f:
        return compression_of(f.read(8))


def fill(f: io.BufferedIOBase, buf: Any, compression: str | None) -> int:
    """Read into the numpy byte buffer ``buf``; returns the bytes read (0 at the end). A plain
    file fills it; a decompressing stream gives one decompression step (at most
    :data:`COMPRESSED_READ` bytes), so a damaged stream loses only its last step. Raises one of
    :data:`DECOMPRESSION_ERRORS` on damage."""
    if compression is None:
        return f.readinto(buf.data)
    try:
        return f.readinto1(buf[:COMPRESSED_READ].data)
    except DECOMPRESSION_ERRORS:
        raise
    except OSError as err:  # bzip2's bad block
        raise StreamDamaged(str(err)) from None


def open_text(path: str | Path) -> io.TextIOWrapper:
    """A text log (UTF-8, a BOM skipped, undecodable bytes replaced), decompressed when it is
    compressed; iterate it with :func:`text_lines` so that a damaged stream ends the lines with
    a warning instead of an exception."""
    stream, _ = open_input(path)
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")  # type: ignore[arg-type]


def text_lines(f: Iterable[str], path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of an opened text log; a decompression error ends them with one
    :class:`~iotsentry.errors.LogDamaged` warning (the lines before it are kept)."""
    lineno = 0
    it = iter(f)
    while True:
        try:
            line = next(it)
        except StopIteration:
            return
        except DECOMPRESSION_ERRORS as err:
            warnings.warn(LogDamaged(path, lineno, f"compressed stream damaged ({err})"), stacklevel=3)
            return
        except OSError as err:  # a bad bzip2 block, or the disk: the lines read so far are kept
            warnings.warn(LogDamaged(path, lineno, f"read failed ({err})"), stacklevel=3)
            return
        lineno += 1
        yield lineno, line


def open_input(path: str | Path) -> tuple[io.BufferedIOBase, str | None]:
    """The file's bytes, decompressed when it is compressed; and the compression (or ``None``).

    The caller closes the returned stream (which closes the file). Reads may return fewer bytes
    than asked for (the capture readers loop)."""
    kind = compression_of_file(path)
    if kind is None:
        return open(path, "rb"), None
    if kind == "gzip":
        return gzip.open(path, "rb"), kind
    if kind == "xz":
        return lzma.open(path, "rb"), kind
    if kind == "bzip2":
        return bz2.open(path, "rb"), kind
    return io.BufferedReader(_ZstdStream(path), buffer_size=1 << 20), kind


class _ZstdStream(io.RawIOBase):
    """Zstandard frames, one after the other, as a raw stream; a stream that ends inside a frame
    raises ``EOFError`` (zstandard's own reader ends quietly there, which would hide the cut)."""

    CHUNK = 1 << 17

    def __init__(self, path: str | Path) -> None:
        import zstandard

        super().__init__()
        self._zstd = zstandard
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._out = b""
        self._started = False  # the current frame has input

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        while not self._out:
            data = self._file.read(self.CHUNK)
            if not data:
                if self._started and not self._dobj.eof:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                return 0
            while data:
                if self._dobj.eof:  # the next frame
                    self._dobj = self._zstd.ZstdDecompressor().decompressobj()
                self._started = True
                self._out += self._dobj.decompress(data)
                data = self._dobj.unused_data if self._dobj.eof else b""
        n = min(len(view), len(self._out))
        view[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            super().close()
