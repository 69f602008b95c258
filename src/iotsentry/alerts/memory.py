"""In-memory alert sink: the fake used by unit tests (and handy in notebooks)."""

from __future__ import annotations

from typing import Any

from iotsentry.schema import Alert


class MemorySink:
    """Keeps every emitted alert in :attr:`alerts`, in emission order."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.closed = False

    def emit(self, alert: Alert) -> None:
        """Keep ``alert``.

        Raises
        ------
        ValueError
            After :meth:`close`, like the real sinks.
        """
        if self.closed:
            raise ValueError("emit on a closed MemorySink")
        self.alerts.append(alert)

    def records(self) -> list[dict[str, Any]]:
        """The EVE JSON records of the kept alerts."""
        return [a.to_eve() for a in self.alerts]

    def close(self) -> None:
        """Mark the sink closed; the kept alerts stay readable."""
        self.closed = True
