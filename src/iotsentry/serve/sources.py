"""Sources of the monitor: the :class:`Source` protocol, an in-memory fake and the adapters.

A source is polled, never iterated: ``poll(timeout)`` returns the next batch or ``None`` when
nothing is ready within ``timeout`` seconds. ``state()`` describes how far it has read (JSON-ready,
persisted by the monitor once the batch's alerts are stored) and ``restore(state)`` resumes from
such a description, so a restart neither re-reads nor skips.

:func:`make_source` builds a source from its ``[[source]]`` configuration. The readers of
``capture/follow.py`` (rotating pcap directory, Zeek conn.log follower), ``capture/live.py``
(AF_PACKET) and ``capture/netflow.py`` (:class:`NetFlowCollector`) are imported lazily inside
it, so this package imports without them.

``pcap-dir`` and ``zeek-log`` use the followers of ``capture/follow.py``
(:class:`FollowerSource`: their state is the follower's JSON position), ``interface`` and
``netflow`` the polled readers (:class:`PolledSource`: a socket has no position to resume).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from typing import Any, Protocol, cast, runtime_checkable

from iotsentry.capture.appfields import keep_raw_for_app_fields
from iotsentry.errors import IotSentryError
from iotsentry.schema import FlowBatch, PacketBatch
from iotsentry.serve.config import SourceConfig

__all__ = ["FakeSource", "FollowerSource", "PolledSource", "Source", "SourceUnavailable", "make_source"]

Batch = PacketBatch | FlowBatch


@runtime_checkable
class Source(Protocol):
    """What the monitor polls."""

    def poll(self, timeout: float) -> Batch | None:
        """The next batch, or ``None`` when none is ready within ``timeout`` seconds."""
        ...

    def state(self) -> dict[str, Any]:
        """How far the source has read (JSON-ready), as of the last batch returned."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Resume after the position ``state`` describes (before the first poll)."""
        ...

    def close(self) -> None:
        """Release files / sockets."""
        ...


class SourceUnavailable(IotSentryError):
    """A configured source kind whose reader is not available."""


class FakeSource:
    """In-memory source for tests: returns the given batches one per poll, then ``None``.

    Parameters
    ----------
    batches
        What to deliver, in order (more can be appended with :meth:`push`).
    """

    def __init__(self, batches: Sequence[Batch] = ()) -> None:
        self.batches: list[Batch] = list(batches)
        self.pos = 0
        self.polls = 0
        self.closed = False

    def push(self, batch: Batch) -> None:
        """Add a batch at the end."""
        self.batches.append(batch)

    def poll(self, timeout: float) -> Batch | None:
        """The next batch, or ``None`` after waiting ``timeout`` when none is left."""
        self.polls += 1
        if self.pos >= len(self.batches):
            time.sleep(timeout)
            return None
        self.pos += 1
        return self.batches[self.pos - 1]

    def state(self) -> dict[str, Any]:
        """``{"pos": batches delivered}``."""
        return {"pos": self.pos}

    def restore(self, state: dict[str, Any]) -> None:
        """Skip the batches delivered before."""
        self.pos = int(state.get("pos", 0))

    def close(self) -> None:
        """Mark closed."""
        self.closed = True


class FollowerSource:
    """Adapts a ``capture.follow`` follower (non-blocking ``poll()``, a ``state`` object with
    ``to_json``/``from_json``) to :class:`Source`.

    Parameters
    ----------
    follower
        A :class:`~iotsentry.capture.follow.PcapDirFollower` or
        :class:`~iotsentry.capture.follow.ZeekLogFollower`.
    idle_sleep
        Sleep between polls that found nothing, while waiting up to the poll timeout.
    """

    def __init__(self, follower: Any, idle_sleep: float = 0.05) -> None:
        self.follower = follower
        self.idle_sleep = idle_sleep

    def poll(self, timeout: float) -> Batch | None:
        """The follower's next non-empty batch within ``timeout`` seconds, else ``None``."""
        deadline = time.monotonic() + timeout
        while True:
            b = self.follower.poll()
            if len(b):
                return cast(Batch, b)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(left, self.idle_sleep))

    def state(self) -> dict[str, Any]:
        """The follower's position (JSON-ready)."""
        return dict(self.follower.state.to_json())

    def restore(self, state: dict[str, Any]) -> None:
        """Resume the follower from a position :meth:`state` returned."""
        if state:
            self.follower.state = type(self.follower.state).from_json(state)

    def close(self) -> None:
        """Close the follower when it holds a file."""
        fn = getattr(self.follower, "close", None)
        if callable(fn):
            fn()


class PolledSource:
    """Adapts a reader object to :class:`Source` (``poll`` and optional ``state``/``restore``).

    Parameters
    ----------
    reader
        Anything with ``poll(timeout)``; ``state()``/``restore()``/``close()`` are used when it
        has them.
    max_items
        Passed as ``poll``'s second argument (the largest batch, e.g. ``LiveCapture``'s
        ``max_packets``); ``None``: the reader's default.
    """

    def __init__(self, reader: Any, max_items: int | None = None) -> None:
        self.reader = reader
        self.max_items = max_items

    def poll(self, timeout: float) -> Batch | None:
        """The reader's next batch (an empty batch counts as ``None``)."""
        b = self.reader.poll(timeout) if self.max_items is None else self.reader.poll(timeout, self.max_items)
        return b if b is not None and len(b) else None

    def state(self) -> dict[str, Any]:
        """The reader's state, or ``{}`` for a stateless reader (a socket, an interface)."""
        fn = getattr(self.reader, "state", None)
        return dict(fn()) if callable(fn) else {}

    def restore(self, state: dict[str, Any]) -> None:
        """Hand the state back to the reader when it can resume."""
        fn = getattr(self.reader, "restore", None)
        if callable(fn) and state:
            fn(state)

    def close(self) -> None:
        """Close the reader."""
        fn = getattr(self.reader, "close", None)
        if callable(fn):
            fn()


def _capture_module(name: str) -> Any | None:
    try:
        return importlib.import_module(f"iotsentry.capture.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"iotsentry.capture.{name}":
            return None
        raise


def make_source(cfg: SourceConfig) -> Source:
    """Build the source a ``[[source]]`` entry describes (readers imported lazily).

    Raises
    ------
    SourceUnavailable
        The reader module of the kind is not installed.
    iotsentry.errors.InputError
        The reader cannot open its input (interface, socket).
    """
    if cfg.kind in ("pcap-dir", "zeek-log"):
        follow = _capture_module("follow")
        if follow is None:
            raise SourceUnavailable(f"source {cfg.name}: {cfg.kind} needs iotsentry.capture.follow")
        assert cfg.path is not None
        if cfg.kind == "pcap-dir":
            return FollowerSource(
                follow.PcapDirFollower(
                    cfg.path,
                    cfg.pattern,
                    grace=cfg.settle_s,
                    batch_size=cfg.batch_size,
                    with_raw=keep_raw_for_app_fields,
                )
            )
        return FollowerSource(follow.ZeekLogFollower(cfg.path), idle_sleep=min(cfg.poll_s, 0.5))
    if cfg.kind == "netflow":
        netflow = _capture_module("netflow")
        if netflow is None:
            raise SourceUnavailable(f"source {cfg.name}: netflow needs iotsentry.capture.netflow")
        return PolledSource(netflow.NetFlowCollector(cfg.host, cfg.port))
    if cfg.kind == "interface":
        live = _capture_module("live")
        if live is None:
            raise SourceUnavailable(f"source {cfg.name}: interface needs iotsentry.capture.live")
        return PolledSource(
            live.LiveCapture(cfg.interface, with_raw=keep_raw_for_app_fields), max_items=cfg.batch_size
        )
    raise SourceUnavailable(f"source {cfg.name}: unknown kind {cfg.kind!r}")
