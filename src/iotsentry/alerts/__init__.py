"""alerts stage of iotsentry: the alert policy (scores -> Alert), incidents and the alert sinks."""

from __future__ import annotations

from iotsentry.alerts.incidents import (
    CAUSES,
    NOTICE_CATEGORIES,
    Incident,
    IncidentBook,
    cause_of,
    fold,
    fold_all,
    sink_alert,
)
from iotsentry.alerts.jsonl import JsonlSink
from iotsentry.alerts.memory import MemorySink
from iotsentry.alerts.policy import AlertPolicy, alert_dedup_key, flow_id_for, severity_for
from iotsentry.alerts.sinks import AlertSink, SinkURIError, sink_from_uri
from iotsentry.alerts.syslog import SyslogSink
from iotsentry.alerts.webhook import WebhookSink

__all__ = [
    "CAUSES",
    "NOTICE_CATEGORIES",
    "AlertPolicy",
    "AlertSink",
    "Incident",
    "IncidentBook",
    "JsonlSink",
    "MemorySink",
    "SinkURIError",
    "SyslogSink",
    "WebhookSink",
    "alert_dedup_key",
    "cause_of",
    "flow_id_for",
    "fold",
    "fold_all",
    "severity_for",
    "sink_alert",
    "sink_from_uri",
]
