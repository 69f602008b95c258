"""Webhook alert sink: POST each alert's EVE JSON to an HTTP(S) endpoint.

Failures never reach the pipeline: 5xx answers, 429, timeouts and connection errors are retried
with exponential backoff; after the last attempt (or at once on another 4xx) the alert is
counted in :attr:`WebhookSink.failed` and a warning is logged. Log lines name only the scheme and
host of the URL, since webhook URLs often carry a secret token in the path or query.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from iotsentry import __version__
from iotsentry.alerts.jsonl import eve_line
from iotsentry.schema import Alert

log = logging.getLogger(__name__)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would turn the POST into a body-less GET (and carry our headers,
    which may hold a token, to wherever the redirect points)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class WebhookSink:
    """POST alerts as JSON.

    Parameters
    ----------
    url
        An ``http://`` or ``https://`` URL.
    retries
        Retries after the first attempt (so at most ``retries + 1`` requests per alert).
    backoff_s
        Sleep before retry ``k`` (1-based) is ``backoff_s * 2 ** (k - 1)``, capped at ``max_backoff_s``.
    timeout_s
        Per-request timeout.
    headers
        Extra request headers (e.g. an ``Authorization`` token); never logged.
    sleep
        The sleep function (tests may replace it).

    Notes
    -----
    Redirects are not followed (a 3xx answer counts as a failure). ``emit`` is synchronous:
    against an endpoint that is down it blocks for up to
    ``(retries + 1) * timeout_s`` plus the backoff sleeps.
    """

    RETRY_STATUS = frozenset({408, 425, 429})

    def __init__(
        self,
        url: str,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 5,
        headers: Mapping[str, str] | None = None,
        *,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook URL must be http:// or https:// with a host")
        if retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("retries and backoff_s must be >= 0 and timeout_s > 0")
        self.url = url
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.timeout_s = float(timeout_s)
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": f"iotsentry/{__version__}",
            **dict(headers or {}),
        }
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        self._lock = threading.Lock()
        self._closed = False
        self.delivered = 0
        self.failed = 0
        self.attempts = 0
        """Requests made in total (including retries)."""

    def _post(self, body: bytes) -> tuple[bool, bool, str]:
        """One request: (delivered, worth retrying, problem)."""
        req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        self.attempts += 1
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                resp.read()
                return True, False, ""
        except urllib.error.HTTPError as err:
            err.close()
            retry = err.code >= 500 or err.code in self.RETRY_STATUS
            return False, retry, f"HTTP {err.code}"
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            return False, True, f"{type(err).__name__}: {reason}"

    def emit(self, alert: Alert) -> None:
        """Deliver one alert, retrying as configured; never raises on delivery problems.

        Raises
        ------
        ValueError
            After :meth:`close` (a programming error, not a delivery one).
        """
        if self._closed:
            raise ValueError("emit on a closed WebhookSink")
        body = eve_line(alert).encode()
        with self._lock:
            problem = ""
            for attempt in range(self.retries + 1):
                if attempt:
                    self._sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
                ok, retry, problem = self._post(body)
                if ok:
                    self.delivered += 1
                    return
                if not retry:
                    break
            self.failed += 1
            log.warning("webhook %s: alert not delivered (%s), giving up", self._where, problem)

    def close(self) -> None:
        """Refuse further alerts (no connection is kept open)."""
        self._closed = True
