"""Errors that reach the user as one clear line (the CLI prints ``str(err)``, never a traceback)."""

from __future__ import annotations

from pathlib import Path


class IotSentryError(Exception):
    """Base class of every error iotsentry reports to the user."""


class InputError(IotSentryError):
    """An input file cannot be used: the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CaptureDamaged(Warning):
    """A capture ended in damage; everything before ``offset`` was read."""

    def __init__(self, path: str | Path, offset: int, problem: str, packets_read: int) -> None:
        self.path = str(path)
        self.offset = offset
        self.problem = problem
        self.packets_read = packets_read
        super().__init__(
            f"{self.path}: {problem} at byte offset {offset}; kept the {packets_read} packets before it"
        )


class LogDamaged(Warning):
    """A flow log's compressed stream ended in damage; every line before it was read."""

    def __init__(self, path: str | Path, line: int, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.path}: {problem} after line {line}; kept the lines before it")


class LinesSkipped(Warning):
    """Malformed lines of a flow log were skipped (counted; the first one named)."""

    def __init__(self, path: str | Path, count: int, first_line: int, first_problem: str) -> None:
        self.path = str(path)
        self.count = count
        self.first_line = first_line
        self.first_problem = first_problem
        super().__init__(
            f"{self.path}: skipped {count} malformed line(s); the first, line {first_line}: {first_problem}"
        )
