"""The alert-sink contract and :func:`sink_from_uri`, which builds a sink from a URI.

========================== ==========================================
URI                         sink
========================== ==========================================
``jsonl:/var/log/a.jsonl``  :class:`~iotsentry.alerts.jsonl.JsonlSink` (``jsonl:rel/path`` too)
``syslog+udp://host:514``   :class:`~iotsentry.alerts.syslog.SyslogSink` over UDP (port 514 by default)
``syslog+tcp://host:601``   :class:`~iotsentry.alerts.syslog.SyslogSink` over TCP (port 514 by default)
``http(s)://...``           :class:`~iotsentry.alerts.webhook.WebhookSink`
``memory:``                 :class:`~iotsentry.alerts.memory.MemorySink`
========================== ==========================================
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from iotsentry.alerts.jsonl import JsonlSink
from iotsentry.alerts.memory import MemorySink
from iotsentry.alerts.syslog import SyslogSink
from iotsentry.alerts.webhook import WebhookSink
from iotsentry.errors import IotSentryError
from iotsentry.schema import Alert

__all__ = [
    "AlertSink",
    "JsonlSink",
    "MemorySink",
    "SinkURIError",
    "SyslogSink",
    "WebhookSink",
    "sink_from_uri",
]


@runtime_checkable
class AlertSink(Protocol):
    """Anything alerts can be sent to."""

    def emit(self, alert: Alert) -> None:
        """Send or store one alert."""
        ...

    def close(self) -> None:
        """Release files/sockets; further ``emit`` calls raise ``ValueError``."""
        ...


class SinkURIError(IotSentryError, ValueError):
    """An alert-sink URI that cannot be used."""


def sink_from_uri(uri: str) -> AlertSink:
    """Build the sink a URI names (see the module docstring for the forms).

    Raises
    ------
    SinkURIError
        For an unknown scheme or a URI missing its path/host.
    """
    scheme, sep, rest = uri.partition(":")
    scheme = scheme.lower()
    if not sep:
        raise SinkURIError(f"alert sink {uri!r}: expected scheme:..., e.g. jsonl:/path/alerts.jsonl")
    if scheme == "jsonl":
        path = unquote(rest[2:] if rest.startswith("//") else rest)
        if not path:
            raise SinkURIError(f"alert sink {uri!r}: jsonl needs a file path")
        return JsonlSink(path)
    if scheme == "memory":
        return MemorySink()
    if scheme in ("syslog+udp", "syslog+tcp", "syslog"):
        parts = urlsplit(uri)
        try:
            port = parts.port or 514
        except ValueError as err:
            raise SinkURIError(f"alert sink {uri!r}: bad port") from err
        if not parts.hostname:
            raise SinkURIError(f"alert sink {uri!r}: syslog needs a host")
        transport = "tcp" if scheme == "syslog+tcp" else "udp"
        return SyslogSink(parts.hostname, port, transport)
    if scheme in ("http", "https"):
        try:
            return WebhookSink(uri)
        except ValueError as err:
            raise SinkURIError(f"alert sink: {err}") from err
    raise SinkURIError(
        f"alert sink {uri!r}: unknown scheme {scheme!r} (jsonl, syslog+udp, syslog+tcp, http(s), memory)"
    )
