"""JSON-lines alert sink: one EVE JSON object per line, appended and flushed per alert."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import IO

from iotsentry.schema import Alert


def eve_line(alert: Alert) -> str:
    """The alert's EVE record as one line of ASCII JSON (no trailing newline)."""
    return json.dumps(alert.to_eve(), separators=(",", ":"), allow_nan=False)


class JsonlSink:
    """Append alerts to ``path`` as EVE JSON lines.

    The file is opened in append mode, so lines already stored are never rewritten; every line
    is flushed as it is written (pass ``fsync=True`` to also force it to disk). If the file ends
    in a partial line (a crash mid-write), a newline is added first so the next record stays
    parseable.

    Parameters
    ----------
    path
        The JSON-lines file; parent folders are created.
    fsync
        Call ``os.fsync`` after every line (durable against power loss, slower).
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh: IO[str] | None = open(self.path, "a", encoding="utf-8", newline="\n")  # noqa: SIM115
        if self._ends_mid_line():
            self._fh.write("\n")
            self._fh.flush()
        self.written = 0

    def _ends_mid_line(self) -> bool:
        size = self.path.stat().st_size
        if size == 0:
            return False
        with open(self.path, "rb") as fh:
            fh.seek(size - 1)
            return fh.read(1) != b"\n"

    def emit(self, alert: Alert) -> None:
        """Append one line and flush it.

        Raises
        ------
        ValueError
            After :meth:`close`.
        """
        line = eve_line(alert) + "\n"
        with self._lock:
            if self._fh is None:
                raise ValueError(f"emit on a closed JsonlSink ({self.path})")
            self._fh.write(line)
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
            self.written += 1

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
