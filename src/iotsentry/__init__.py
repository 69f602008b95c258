"""iotsentry: network-side security for fleets of IoT devices.

The records of :mod:`iotsentry.schema` are imported eagerly; the stage APIs below are imported
on first use (PEP 562), so ``import iotsentry`` and the CLI start without loading numba,
scikit-learn or PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

from iotsentry.schema import SCHEMA_VERSION, Alert, AppEvent, Device, FlowBatch, PacketBatch

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "read_packets": "iotsentry.capture.reader",
    "read_all": "iotsentry.capture.reader",
    "count_packets": "iotsentry.capture.reader",
    "read_flows": "iotsentry.capture.zeek",
    "read_conn_log": "iotsentry.capture.zeek",
    "extract_app_events": "iotsentry.capture.appfields",
    "FlowMeter": "iotsentry.features.flowmeter",
    "DampedStats": "iotsentry.features.damped",
    "DeviceTracker": "iotsentry.inventory.devices",
    "Baseline": "iotsentry.baseline.profile",
    "PeerGroups": "iotsentry.baseline.peer_groups",
    "REGISTRY": "iotsentry.detectors.base",
    "ProfileDetector": "iotsentry.detectors.profile",
    "FprThreshold": "iotsentry.detectors.thresholds",
    "Fusion": "iotsentry.detectors.fusion",
    "AlertPolicy": "iotsentry.alerts.policy",
    "sink_from_uri": "iotsentry.alerts.sinks",
    "Store": "iotsentry.store.sqlite",
    "Analyzer": "iotsentry.pipeline",
    "AnalysisConfig": "iotsentry.pipeline",
    "DetectionEngine": "iotsentry.engine",
    "Incident": "iotsentry.alerts.incidents",
    "IncidentBook": "iotsentry.alerts.incidents",
}

__all__ = [
    "SCHEMA_VERSION",
    "Alert",
    "AppEvent",
    "Device",
    "FlowBatch",
    "PacketBatch",
    "__version__",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'iotsentry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
