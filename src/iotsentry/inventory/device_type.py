"""A first, rule-based guess of a device's type from its vendor and the names it uses.

The learned device-type classifier (IoT SENTINEL benchmark) replaces this guess when a model
is available; the rules stay as the explainable fallback.
"""

from __future__ import annotations

from iotsentry.schema import Device

# (type, keywords looked for in names/SSDP/User-Agent, keywords looked for in the vendor)
_RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "camera",
        ("cam", "ipc", "dcs-", "nvr", "doorbell", "hikvision", "dahua"),
        ("hikvision", "axis", "dahua"),
    ),
    ("thermostat", ("thermostat", "nest", "ecobee", "tado"), ("nest labs", "ecobee")),
    ("speaker", ("echo", "alexa", "sonos", "googlehome", "google-home", "homepod"), ("sonos",)),
    ("tv", ("tv", "roku", "chromecast", "firetv", "bravia"), ("roku",)),
    ("plug", ("plug", "hs100", "hs110", "sp-1101", "sp-2101", "wemo", "switch", "dsp-w215"), ("belkin",)),
    ("hub", ("hue", "bridge", "hub", "gateway", "lightify", "smartthings", "homematic", "max!"), ()),
    ("scale", ("aria", "withings", "scale"), ("withings",)),
    ("kettle", ("kettle", "coffee", "smarter"), ()),
    ("sensor", ("sensor", "motion", "siren", "water"), ()),
    ("computer", ("android", "iphone", "ipad", "macbook", "windows", "laptop", "desktop"), ("apple",)),
    ("network", ("router", "openwrt", "fritz", "ubnt", "mikrotik"), ("cisco", "netgear", "ubiquiti")),
    ("single-board computer", ("raspberry", "raspberrypi"), ("raspberry pi",)),
)


def guess_type(device: Device) -> tuple[str | None, float, str]:
    """Return (type, confidence, evidence) from names, SSDP, User-Agents, DHCP and vendor."""
    if device.is_gateway:
        return "gateway", 0.9, "forwards traffic to and from the internet"
    texts = [*device.names, *device.ssdp, *device.user_agents]
    vc = device.dhcp.get("vendor_class")
    if vc:
        texts.append(str(vc))
    blob = " ".join(texts).lower()
    vendor = (device.vendor or "").lower()
    for kind, words, _vendors in _RULES:
        for w in words:
            if w in blob:
                return kind, 0.7, f"name/announcement contains '{w}'"
    for kind, _words, vendors in _RULES:
        for v in vendors:
            if v in vendor:
                return kind, 0.5, f"vendor is {device.vendor}"
    return None, 0.0, "no rule matched"
