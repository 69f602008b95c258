"""iotsentry: network-side security for fleets of IoT devices."""

from __future__ import annotations

from iotsentry.schema import SCHEMA_VERSION, Alert, AppEvent, Device, FlowBatch, PacketBatch

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "Alert",
    "AppEvent",
    "Device",
    "FlowBatch",
    "PacketBatch",
    "__version__",
]
