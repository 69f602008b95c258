"""Syslog alert sink: RFC 5424 messages over UDP (RFC 5426) or TCP (RFC 6587 octet counting).

A message looks like::

    <130>1 2024-05-01T10:00:00.000000Z host iotsentry 4242 alert [iotsentry@32473 ...] {"timestamp":...}

The header timestamp is when the message was sent; the alert's own time is in the EVE JSON,
which is the MSG part (ASCII JSON, so no BOM is needed). Network failures never reach the
pipeline: they are logged, counted in :attr:`SyslogSink.failed`, and a TCP connection is
re-opened on the next alert.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

from iotsentry.alerts.jsonl import eve_line
from iotsentry.schema import Alert, rfc3339

log = logging.getLogger(__name__)

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14,
    "solaris-cron": 15, "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
    "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

SYSLOG_SEVERITY: dict[int, int] = {1: 2, 2: 4, 3: 5}
"""Alert severity -> syslog severity: high -> critical (2), medium -> warning (4), low -> notice (5)."""

DOC_SD_ID = "iotsentry@32473"
"""Structured-data id; 32473 is the enterprise number RFC 5612 reserves for documentation."""


def _printable(text: str, limit: int) -> str:
    """RFC 5424 header field: printable US-ASCII without spaces, at most ``limit`` chars, or ``-``."""
    cleaned = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def _sd_param(value: str) -> str:
    """Escape a structured-data parameter value (``"``, ``\\`` and ``]``)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _sd_name(name: str) -> str:
    return "".join(c for c in name if 33 <= ord(c) <= 126 and c not in '= ]"')[:32] or "x"


def format_rfc5424(
    alert: Alert,
    *,
    facility: int = 16,
    app_name: str = "iotsentry",
    hostname: str | None = None,
    procid: str | None = None,
    sd_id: str | None = DOC_SD_ID,
    now: float | None = None,
) -> bytes:
    """One RFC 5424 syslog message for ``alert`` (without transport framing).

    Parameters
    ----------
    facility
        Syslog facility number (0..23; 16 is local0).
    sd_id
        The structured-data element id, or ``None`` for the NILVALUE ``-``.
    now
        Header timestamp (seconds since the epoch); the current time by default.
    """
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility must be 0..23, not {facility}")
    pri = facility * 8 + SYSLOG_SEVERITY.get(int(alert.severity), 5)
    ts = rfc3339(time.time() if now is None else now)
    host = _printable(hostname if hostname is not None else socket.gethostname(), 255)
    app = _printable(app_name, 48)
    proc = _printable(procid if procid is not None else str(os.getpid()), 128)
    msgid = _printable(alert.event_type, 32)
    if sd_id is None:
        sd = "-"
    else:
        params = {
            "device_id": alert.device_id,
            "detector": alert.detector,
            "category": alert.category,
            "severity": str(int(alert.severity)),
            "site_id": alert.site_id,
        }
        body = " ".join(f'{k}="{_sd_param(v)}"' for k, v in params.items())
        sd = f"[{_sd_name(sd_id)} {body}]"
    return f"<{pri}>1 {ts} {host} {app} {proc} {msgid} {sd} {eve_line(alert)}".encode()


class SyslogSink:
    """Send alerts to a syslog receiver.

    Parameters
    ----------
    host, port
        The receiver (IPv4, IPv6 or a name).
    transport
        ``"udp"`` (one datagram per message) or ``"tcp"`` (octet-counting framing, RFC 6587).
    app_name
        The APP-NAME header field.
    facility
        A facility name (``"local0"``...) or number.
    timeout_s
        Connect/send timeout for TCP.
    sd_id
        Structured-data element id (``None`` sends no structured data).
    """

    def __init__(
        self,
        host: str,
        port: int = 514,
        transport: str = "udp",
        app_name: str = "iotsentry",
        *,
        facility: str | int = "local0",
        timeout_s: float = 5.0,
        sd_id: str | None = DOC_SD_ID,
    ) -> None:
        if transport not in ("udp", "tcp"):
            raise ValueError(f"syslog transport must be 'udp' or 'tcp', not {transport!r}")
        if isinstance(facility, str):
            if facility.lower() not in FACILITIES:
                raise ValueError(f"unknown syslog facility {facility!r}")
            facility = FACILITIES[facility.lower()]
        if not 0 <= facility <= 23:
            raise ValueError(f"syslog facility must be 0..23, not {facility}")
        self.host = host
        self.port = int(port)
        self.transport = transport
        self.app_name = app_name
        self.facility = facility
        self.timeout_s = timeout_s
        self.sd_id = sd_id
        self.hostname = socket.gethostname()
        self.delivered = 0
        self.failed = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> socket.socket:
        if self.transport == "tcp":
            return socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        family, kind, proto, _, addr = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.settimeout(self.timeout_s)
        sock.connect(addr)
        return sock

    def _send(self, payload: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect()
        if self.transport == "tcp":
            self._sock.sendall(str(len(payload)).encode() + b" " + payload)
        else:
            self._sock.send(payload)

    def _drop_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def emit(self, alert: Alert) -> None:
        """Send one message; on failure reconnect once, then log and count it as failed.

        Raises
        ------
        ValueError
            After :meth:`close` (a programming error, not a network one).
        """
        payload = format_rfc5424(
            alert, facility=self.facility, app_name=self.app_name, hostname=self.hostname, sd_id=self.sd_id
        )
        with self._lock:
            if self._closed:
                raise ValueError("emit on a closed SyslogSink")
            for attempt in (1, 2):
                try:
                    self._send(payload)
                except OSError as err:
                    self._drop_socket()
                    if attempt == 2:
                        self.failed += 1
                        log.warning(
                            "syslog %s://%s:%d: alert not delivered: %s",
                            self.transport,
                            self.host,
                            self.port,
                            err,
                        )
                    continue
                self.delivered += 1
                return

    def close(self) -> None:
        """Close the socket (idempotent)."""
        with self._lock:
            self._closed = True
            self._drop_socket()
