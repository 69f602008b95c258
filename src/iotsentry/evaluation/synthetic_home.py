"""A deterministic synthetic smart-home capture with a known infection (used by ``make demo``).

:func:`generate_home` writes an Ethernet pcap (microsecond timestamps) of a home LAN
``192.168.1.0/24`` behind a NETGEAR router (``192.168.1.1``, DHCP and DNS server) with eight
devices of different kinds, each with a real vendor OUI:

======== ================================ ============================================
kind     vendor (OUI)                     usual traffic
======== ================================ ============================================
camera   Hikvision                        TLS upload bursts to its cloud every 30 s
plug     TP-Link                          MQTT over TLS (8883) keep-alive every 60 s
thermo   Nest Labs                        HTTPS poll (new connection) every 120 s
hub      Philips Lighting                 TLS to its cloud every 60 s; mDNS, SSDP
speaker  Amazon                           TLS to three cloud addresses every 45 s; polls the
                                          hub's local HTTP API every 90 s; mDNS, SSDP
tv       Samsung                          streaming bursts every ~10 min; SSDP, mDNS
sensor   Xiaomi                           small UDP report every 300 s
sonos    Sonos                            TLS every 90 s; mDNS
======== ================================ ============================================

Every device starts with DHCP (Discover/Offer/Request/ACK with options 12 host name,
60 vendor class, 55 parameter list), ARP for the gateway, DNS queries for its cloud names
(answered by the gateway with fixed public addresses) and NTP. TCP sessions have real
handshakes, consistent sequence/acknowledgement numbers and FINs; every IPv4, TCP and UDP
checksum is valid. At ``infect_at`` of the duration the camera is infected: it opens an
IRC-style C&C channel (TCP 6667) with beacons every ~15 s, runs a Telnet SYN scan (ports
23/2323) over ~200 public and local addresses within ~60 s, then UDP-floods one victim for
20 s. Those packets (both directions, including ARP of the scan) are labelled malicious; the
camera's ordinary traffic continues and stays benign.

Everything is drawn from one ``numpy.random.Generator`` seeded with ``seed``: the same seed
gives a byte-identical file. Frames are assembled from ``struct``-packed headers (dpkt is used
only for the few DHCP/DNS/mDNS payloads), which keeps an hour (~90k packets) to about a second.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import numpy.typing as npt

from iotsentry.evaluation.checksum import internet_checksum

__all__ = ["DeviceTruth", "HomeTruth", "generate_home", "main"]

START_TS = 1_705_305_600  # 2024-01-15 08:00:00 UTC
GATEWAY_MAC = "a0:40:a0:5e:12:01"  # NETGEAR OUI
GATEWAY_IP = "192.168.1.1"
ROUTER_VENDOR = "NETGEAR"
BROADCAST_MAC = b"\xff" * 6
MDNS_MAC, MDNS_IP = bytes.fromhex("01005e0000fb"), "224.0.0.251"
SSDP_MAC, SSDP_IP = bytes.fromhex("01005e7ffffa"), "239.255.255.250"
MSS = 1460
PARAM_LIST = bytes([1, 3, 6, 12, 15, 28, 42])


@dataclass
class DeviceTruth:
    """Ground truth of one device of the synthetic home."""

    mac: str
    ip: str
    hostname: str
    kind: str
    vendor: str
    vendor_class: str
    cloud_names: list[str] = field(default_factory=list)
    cloud_ips: list[str] = field(default_factory=list)


@dataclass
class HomeTruth:
    """Everything known about a generated capture.

    ``labels[i]`` is True when frame ``i`` belongs to the infection (C&C, scan, flood) and
    ``ts[i]`` is its timestamp (seconds).
    """

    path: str
    seed: int
    start_ts: float
    duration_s: float
    gateway: dict[str, str]
    devices: list[DeviceTruth]
    infected_mac: str
    infected_ip: str
    infection_ts: float | None
    cnc_ip: str
    cnc_port: int
    flood_victim_ip: str
    labels: npt.NDArray[np.bool_]
    ts: npt.NDArray[np.float64]

    @property
    def n_packets(self) -> int:
        """Number of frames in the capture."""
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (per-packet labels summarised by their count)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("labels", "ts")}
        d["n_packets"] = self.n_packets
        d["n_malicious"] = int(self.labels.sum())
        return d

    def write_labels_csv(self, path: str | Path) -> None:
        """Write ``index,ts,label`` rows (label 1 = malicious), one per frame."""
        with Path(path).open("w", encoding="ascii") as fh:
            fh.write("index,ts,label\n")
            us = np.round(self.ts * 1e6).astype(np.int64).tolist()
            fh.writelines(
                f"{i},{t // 1_000_000}.{t % 1_000_000:06d},{int(lab)}\n"
                for i, (t, lab) in enumerate(zip(us, self.labels.tolist(), strict=True))
            )


# ---------------------------------------------------------------------------------------------
# Device catalogue
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    kind: str
    oui: str
    vendor: str
    hostname: str
    vendor_class: str
    names: tuple[tuple[str, str], ...]  # (DNS name, fixed public address)
    mdns: str = ""
    ssdp: str = ""


SPECS: tuple[_Spec, ...] = (
    _Spec(
        "camera",
        "28:57:be",
        "Hangzhou Hikvision Digital Technology Co.,Ltd.",
        "HIKVISION-DS-2CD2143",
        "udhcp 1.20.2",
        (("dev.hik-connect.com", "47.91.72.118"), ("ntp.hikvision.com", "47.88.15.20")),
    ),
    _Spec(
        "plug",
        "50:c7:bf",
        "TP-LINK TECHNOLOGIES CO.,LTD.",
        "HS110",
        "udhcp 1.19.4",
        (("n-devs.tplinkcloud.com", "52.57.120.11"), ("pool.ntp.org", "162.159.200.1")),
    ),
    _Spec(
        "thermostat",
        "18:b4:30",
        "Nest Labs Inc.",
        "Nest-Thermostat-02AA01",
        "dhcpcd-6.8.2:Linux-3.14",
        (("frontdoor.nest.com", "34.236.21.5"), ("time.nest.com", "216.239.35.4")),
    ),
    _Spec(
        "hub",
        "00:17:88",
        "Philips Lighting BV",
        "Philips-hue",
        "udhcp 1.23.2",
        (("ws.meethue.com", "52.58.92.1"), ("time.meethue.com", "52.58.92.2")),
        mdns="_hue._tcp.local",
        ssdp="Linux/3.14.0 UPnP/1.0 IpBridge/1.45.0",
    ),
    _Spec(
        "speaker",
        "f0:f0:a4",
        "Amazon Technologies Inc.",
        "amazon-echo-dot",
        "dhcpcd-6.11.5:Linux-4.9",
        (
            ("avs-alexa-eu.amazon.com", "52.94.232.14"),
            ("device-metrics-us.amazon.com", "54.239.31.90"),
            ("api.amazonalexa.com", "52.119.196.80"),
            ("ntp-g7g.amazon.com", "52.94.236.248"),
        ),
        mdns="_amzn-wplay._tcp.local",
        ssdp="Linux/4.9 UPnP/1.0 Amazon-Echo/1.0",
    ),
    _Spec(
        "tv",
        "8c:79:f5",
        "Samsung Electronics Co.,Ltd",
        "Samsung-Smart-TV",
        "udhcp 1.22.1",
        (("samsungcloudsolution.com", "52.29.101.76"), ("time.samsungcloudsolution.com", "52.29.101.77")),
        mdns="_airplay._tcp.local",
        ssdp="SHP, UPnP/1.0, Samsung UPnP SDK/1.0",
    ),
    _Spec(
        "sensor",
        "78:11:dc",
        "XIAOMI Electronics,CO.,LTD",
        "lumi-gateway-v3_miio43",
        "udhcp 1.24.2",
        (("ot.io.mi.com", "120.92.65.244"), ("pool.ntp.org", "162.159.200.1")),
    ),
    _Spec(
        "sonos",
        "5c:aa:fd",
        "Sonos, Inc.",
        "SonosZP",
        "udhcp 1.15.3",
        (("msmetrics.ws.sonos.com", "3.120.58.26"), ("time.sonos.com", "3.120.58.27")),
        mdns="_sonos._tcp.local",
    ),
)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip(text: str) -> bytes:
    return socket.inet_aton(text)


# ---------------------------------------------------------------------------------------------
# Frame builder
# ---------------------------------------------------------------------------------------------


class _Builder:
    """Collects (time, frame, malicious) events; builds Ethernet/IPv4/TCP/UDP/ARP frames."""

    def __init__(self, rng: np.random.Generator, end_us: int) -> None:
        self.rng = rng
        self.end_us = end_us
        self.pool = rng.bytes(1 << 16)
        self.events: list[tuple[int, int, bytes, bool]] = []
        self.ipid: dict[bytes, int] = {}

    def add(self, t_us: int, frame: bytes, malicious: bool) -> None:
        if t_us > self.end_us:
            return
        if len(frame) < 60:
            frame = frame + bytes(60 - len(frame))
        self.events.append((t_us, len(self.events), frame, malicious))

    def payload(self, n: int, prefix: bytes = b"") -> bytes:
        n = max(n - len(prefix), 0)
        o = int(self.rng.integers(0, len(self.pool) - n))
        return prefix + self.pool[o : o + n]

    def tls(self, n: int) -> bytes:
        """``n`` bytes of TLS application-data records (at most 16 KiB of content each)."""
        parts = []
        while n > 0:
            body = min(max(n - 5, 0), 16384)
            parts.append(self.payload(body + 5, b"\x17\x03\x03" + body.to_bytes(2, "big")))
            n -= body + 5
        return b"".join(parts)

    def _ip_header(self, src: bytes, dst: bytes, proto: int, length: int, ttl: int) -> bytes:
        ipid = self.ipid.get(src, int.from_bytes(src[2:], "big") & 0x7FFF)
        self.ipid[src] = (ipid + 1) & 0xFFFF
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, ipid, 0x4000, ttl, proto, 0, src, dst)
        return hdr[:10] + internet_checksum(hdr).to_bytes(2, "big") + hdr[12:]

    def tcp(
        self,
        t_us: int,
        smac: bytes,
        dmac: bytes,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        data: bytes = b"",
        *,
        ttl: int = 64,
        mal: bool = False,
    ) -> None:
        opts = b"\x02\x04" + MSS.to_bytes(2, "big") + b"\x01\x01\x04\x02" if flags & 0x02 else b""
        thl = 20 + len(opts)
        win = 64240 if ttl == 64 else 65535
        hdr = (
            struct.pack(
                "!HHIIBBHHH",
                sport,
                dport,
                seq & 0xFFFFFFFF,
                ack & 0xFFFFFFFF,
                (thl // 4) << 4,
                flags,
                win,
                0,
                0,
            )
            + opts
        )
        pseudo = src + dst + struct.pack("!BBH", 0, 6, thl + len(data))
        csum = internet_checksum(pseudo + hdr + data)
        seg = hdr[:16] + csum.to_bytes(2, "big") + hdr[18:] + data
        self.add(t_us, dmac + smac + b"\x08\x00" + self._ip_header(src, dst, 6, len(seg), ttl) + seg, mal)

    def udp(
        self,
        t_us: int,
        smac: bytes,
        dmac: bytes,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        data: bytes,
        *,
        ttl: int = 64,
        mal: bool = False,
    ) -> None:
        length = 8 + len(data)
        pseudo = src + dst + struct.pack("!BBH", 0, 17, length)
        hdr = struct.pack("!HHHH", sport, dport, length, 0)
        csum = internet_checksum(pseudo + hdr + data) or 0xFFFF
        seg = hdr[:6] + csum.to_bytes(2, "big") + data
        self.add(t_us, dmac + smac + b"\x08\x00" + self._ip_header(src, dst, 17, length, ttl) + seg, mal)

    def arp(
        self,
        t_us: int,
        op: int,
        sha: bytes,
        spa: bytes,
        tha: bytes,
        tpa: bytes,
        dmac: bytes,
        mal: bool = False,
    ) -> None:
        body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, spa, tha, tpa)
        self.add(t_us, dmac + sha + b"\x08\x06" + body, mal)


@dataclass
class _Host:
    """A device on the LAN (or the gateway)."""

    spec: _Spec | None
    mac: bytes
    ip: bytes
    next_port: int


class _Tcp:
    """One TCP connection between a LAN host (client) and a server (remote or local)."""

    def __init__(
        self,
        b: _Builder,
        client: _Host,
        server_ip: bytes,
        dport: int,
        gw: _Host,
        *,
        server_mac: bytes | None = None,
        rtt_us: int = 30_000,
        mal: bool = False,
    ) -> None:
        self.b, self.c, self.sip, self.dport = b, client, server_ip, dport
        self.smac = server_mac if server_mac is not None else gw.mac
        self.remote = server_mac is None
        self.rtt = rtt_us
        self.mal = mal
        self.sport = client.next_port
        client.next_port = 49152 + (client.next_port - 49152 + 1 + int(b.rng.integers(0, 7))) % 16000
        self.cseq = int(b.rng.integers(0, 2**32))
        self.sseq = int(b.rng.integers(0, 2**32))

    def _c(self, t: int, flags: int, data: bytes = b"") -> None:
        self.b.tcp(
            t,
            self.c.mac,
            self.smac,
            self.c.ip,
            self.sip,
            self.sport,
            self.dport,
            self.cseq,
            self.sseq,
            flags,
            data,
            mal=self.mal,
        )
        self.cseq += len(data) + (1 if flags & 0x03 else 0)

    def _s(self, t: int, flags: int, data: bytes = b"") -> None:
        self.b.tcp(
            t,
            self.smac,
            self.c.mac,
            self.sip,
            self.c.ip,
            self.dport,
            self.sport,
            self.sseq,
            self.cseq,
            flags,
            data,
            ttl=52 if self.remote else 64,
            mal=self.mal,
        )
        self.sseq += len(data) + (1 if flags & 0x03 else 0)

    def open(self, t: int) -> int:
        """Three-way handshake from time ``t``; returns the time after it."""
        self.b.tcp(
            t,
            self.c.mac,
            self.smac,
            self.c.ip,
            self.sip,
            self.sport,
            self.dport,
            self.cseq,
            0,
            0x02,
            mal=self.mal,
        )
        self.cseq += 1
        t += self.rtt
        self._s(t, 0x12)
        t += 150
        self._c(t, 0x10)
        return t + 200

    def send(self, t: int, n: int, from_client: bool, *, tls: bool = True, data: bytes | None = None) -> int:
        """Send one message of ``n`` bytes (TLS record or ``data``) with ACKs; returns end time."""
        if data is None:
            data = self.b.tls(n) if tls else self.b.payload(n)
        tx, rx = (self._c, self._s) if from_client else (self._s, self._c)
        ack_delay = self.rtt if from_client else 120
        gap = 250 if from_client else 120
        segs = [data[i : i + MSS] for i in range(0, len(data), MSS)] or [b""]
        last_ack = t
        for k, seg in enumerate(segs):
            tx(t, 0x18 if k == len(segs) - 1 else 0x10, seg)
            if k % 2 == 1 or k == len(segs) - 1:
                last_ack = t + ack_delay
                rx(last_ack, 0x10)
            t += gap
        return max(t, last_ack) + 300

    def close(self, t: int) -> int:
        """FIN from the client, FIN from the server, last ACK."""
        self._c(t, 0x11)
        t += self.rtt
        self._s(t, 0x11)
        t += 150
        self._c(t, 0x10)
        return t


def _ticks(
    rng: np.random.Generator, start: float, period: float, jitter: float, end: float
) -> Iterator[float]:
    t = start
    while t < end:
        yield t
        t += period * (1.0 + float(rng.uniform(-jitter, jitter)))


# ---------------------------------------------------------------------------------------------
# Traffic of the home
# ---------------------------------------------------------------------------------------------


class _Home:
    def __init__(self, rng: np.random.Generator, duration_s: float) -> None:
        self.rng = rng
        self.t0 = START_TS * 1_000_000
        self.dur = duration_s
        self.b = _Builder(rng, self.t0 + round(duration_s * 1e6))
        self.gw = _Host(None, _mac(GATEWAY_MAC), _ip(GATEWAY_IP), 0)
        self.hosts: list[_Host] = []
        octets = rng.choice(np.arange(20, 200), size=len(SPECS), replace=False)
        for spec, octet in zip(SPECS, octets.tolist(), strict=True):
            nic = rng.integers(0, 256, size=3).tolist()
            mac = _mac(spec.oui) + bytes(nic)
            self.hosts.append(
                _Host(spec, mac, _ip(f"192.168.1.{octet}"), 49152 + int(rng.integers(0, 16000)))
            )
        self.persistent: dict[str, _Tcp] = {}

    def us(self, t_s: float) -> int:
        return self.t0 + round(t_s * 1e6)

    # --- boot-time protocols -----------------------------------------------------------------

    def dhcp(self, h: _Host, t: int) -> int:
        assert h.spec is not None
        xid = int(self.rng.integers(0, 2**32))
        common = [(12, h.spec.hostname.encode()), (60, h.spec.vendor_class.encode()), (55, PARAM_LIST)]
        client_id = (61, b"\x01" + h.mac)
        zero = _ip("0.0.0.0")
        bcast = _ip("255.255.255.255")
        for mtype, extra in ((1, []), (3, [(50, h.ip), (54, self.gw.ip)])):
            msg = dpkt.dhcp.DHCP(
                op=dpkt.dhcp.DHCP_OP_REQUEST,
                xid=xid,
                chaddr=h.mac,
                flags=0x8000,
                opts=[(53, bytes([mtype])), client_id, *extra, *common],
            )
            self.b.udp(t, h.mac, BROADCAST_MAC, zero, bcast, 68, 67, bytes(msg))
            t += 2_000
            reply = dpkt.dhcp.DHCP(
                op=dpkt.dhcp.DHCP_OP_REPLY,
                xid=xid,
                chaddr=h.mac,
                flags=0x8000,
                yiaddr=int.from_bytes(h.ip, "big"),
                siaddr=int.from_bytes(self.gw.ip, "big"),
                opts=[
                    (53, bytes([2 if mtype == 1 else 5])),
                    (54, self.gw.ip),
                    (51, (86400).to_bytes(4, "big")),
                    (1, _ip("255.255.255.0")),
                    (3, self.gw.ip),
                    (6, self.gw.ip),
                ],
            )
            self.b.udp(t, self.gw.mac, BROADCAST_MAC, self.gw.ip, bcast, 67, 68, bytes(reply))
            t += 3_000
        # gratuitous ARP, then ARP for the gateway
        self.b.arp(t, 1, h.mac, h.ip, bytes(6), h.ip, BROADCAST_MAC)
        t += 1_000
        self.b.arp(t, 1, h.mac, h.ip, bytes(6), self.gw.ip, BROADCAST_MAC)
        t += 800
        self.b.arp(t, 2, self.gw.mac, self.gw.ip, h.mac, h.ip, h.mac)
        return t + 1_000

    def dns(self, h: _Host, t: int, name: str, addr: str) -> int:
        qid = int(self.rng.integers(0, 65536))
        q = dpkt.dns.DNS(id=qid, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
        sport = 1024 + int(self.rng.integers(0, 60000))
        self.b.udp(t, h.mac, self.gw.mac, h.ip, self.gw.ip, sport, 53, bytes(q))
        t += 4_000 + int(self.rng.integers(0, 20_000))
        an = dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN, ttl=300, ip=_ip(addr))
        r = dpkt.dns.DNS(
            id=qid,
            op=dpkt.dns.DNS_QR | dpkt.dns.DNS_RD | dpkt.dns.DNS_RA,
            qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)],
            an=[an],
        )
        self.b.udp(t, self.gw.mac, h.mac, self.gw.ip, h.ip, 53, sport, bytes(r))
        return t + 2_000

    def ntp(self, h: _Host, t: int, server: str) -> int:
        req = b"\x23" + bytes(39) + struct.pack("!II", (t // 1_000_000 + 2_208_988_800) & 0xFFFFFFFF, 0)
        self.b.udp(t, h.mac, self.gw.mac, h.ip, _ip(server), 123, 123, req)
        t += 25_000 + int(self.rng.integers(0, 10_000))
        resp = b"\x24\x02\x00\xe9" + self.b.payload(44)
        self.b.udp(t, self.gw.mac, h.mac, _ip(server), h.ip, 123, 123, resp, ttl=52)
        return t + 1_000

    def mdns(self, h: _Host, t: int) -> None:
        assert h.spec is not None
        inst = f"{h.spec.hostname}.{h.spec.mdns}"
        host = f"{h.spec.hostname}.local"
        rrs = [
            dpkt.dns.DNS.RR(
                name=h.spec.mdns, type=dpkt.dns.DNS_PTR, cls=dpkt.dns.DNS_IN, ttl=4500, ptrname=inst
            ),
            dpkt.dns.DNS.RR(name=host, type=dpkt.dns.DNS_A, cls=0x8001, ttl=120, ip=h.ip),
        ]
        msg = dpkt.dns.DNS(id=0, op=dpkt.dns.DNS_QR | dpkt.dns.DNS_AA, an=rrs)
        self.b.udp(t, h.mac, MDNS_MAC, h.ip, _ip(MDNS_IP), 5353, 5353, bytes(msg), ttl=255)

    def ssdp(self, h: _Host, t: int) -> None:
        assert h.spec is not None
        ip = socket.inet_ntoa(h.ip)
        text = (
            "NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nCACHE-CONTROL: max-age=100\r\n"
            f"LOCATION: http://{ip}:80/description.xml\r\nSERVER: {h.spec.ssdp}\r\n"
            "NT: upnp:rootdevice\r\nNTS: ssdp:alive\r\n"
            f"USN: uuid:2f402f80-da50-11e1-9b23-{h.mac.hex()}::upnp:rootdevice\r\n\r\n"
        )
        self.b.udp(t, h.mac, SSDP_MAC, h.ip, _ip(SSDP_IP), 1900, 1900, text.encode(), ttl=4)

    # --- per-kind periodic behaviour ---------------------------------------------------------

    def boot(self, h: _Host, t_s: float) -> float:
        """DHCP, ARP, DNS for every cloud name, NTP; returns when the device is ready (s)."""
        assert h.spec is not None
        t = self.dhcp(h, self.us(t_s))
        for name, addr in h.spec.names:
            t = self.dns(h, t, name, addr)
        t = self.ntp(h, t, h.spec.names[-1][1])
        if h.spec.mdns:
            self.mdns(h, t)
        if h.spec.ssdp:
            self.ssdp(h, t + 500)
        return (t - self.t0) / 1e6 + 1.0

    def periodic(self, h: _Host, ready: float) -> None:
        assert h.spec is not None
        rng, end, kind = self.rng, self.dur, h.spec.kind
        cloud = [_ip(a) for _n, a in h.spec.names[:-1]] or [_ip(h.spec.names[0][1])]
        if kind == "camera":
            conn = _Tcp(self.b, h, cloud[0], 443, self.gw, rtt_us=180_000)
            conn.open(self.us(ready))
            for t in _ticks(rng, ready + 2, 30.0, 0.05, end):
                conn.send(self.us(t), int(rng.integers(60_000, 140_000)), True)
        elif kind == "plug":
            conn = _Tcp(self.b, h, cloud[0], 8883, self.gw, rtt_us=45_000)
            t_us = conn.open(self.us(ready))
            t_us = conn.send(t_us, 517, True)
            conn.send(t_us, 3_100, False)
            for t in _ticks(rng, ready + 60, 60.0, 0.02, end):
                t_us = conn.send(self.us(t), 31, True)  # MQTT PINGREQ in a TLS record
                conn.send(t_us + 45_000, 31, False)  # PINGRESP
        elif kind == "thermostat":
            for t in _ticks(rng, ready + 5, 120.0, 0.1, end):
                conn = _Tcp(self.b, h, cloud[0], 443, self.gw, rtt_us=95_000)
                t_us = conn.send(conn.open(self.us(t)), 517, True)
                t_us = conn.send(t_us, 4_200, False)
                t_us = conn.send(t_us, int(rng.integers(300, 900)), True)
                t_us = conn.send(t_us, int(rng.integers(200, 600)), False)
                conn.close(t_us + 50_000)
        elif kind == "hub":
            conn = _Tcp(self.b, h, cloud[0], 443, self.gw, rtt_us=35_000)
            conn.open(self.us(ready))
            for t in _ticks(rng, ready + 10, 60.0, 0.1, end):
                t_us = conn.send(self.us(t), int(rng.integers(150, 400)), True)
                conn.send(t_us, int(rng.integers(100, 300)), False)
            for t in _ticks(rng, ready + 30, 300.0, 0.05, end):
                self.mdns(h, self.us(t))
                self.ssdp(h, self.us(t) + 5_000)
        elif kind == "speaker":
            hub = next(x for x in self.hosts if x.spec is not None and x.spec.kind == "hub")
            for k, t in enumerate(_ticks(rng, ready + 3, 45.0, 0.15, end)):
                conn = _Tcp(self.b, h, cloud[k % len(cloud)], 443, self.gw, rtt_us=40_000)
                t_us = conn.send(conn.open(self.us(t)), int(rng.integers(300, 2_000)), True)
                t_us = conn.send(t_us, int(rng.integers(500, 6_000)), False)
                conn.close(t_us + 100_000)
            for t in _ticks(rng, ready + 20, 90.0, 0.1, end):
                conn = _Tcp(self.b, h, hub.ip, 80, self.gw, server_mac=hub.mac, rtt_us=2_000)
                req = b"GET /api/3fa2b1c0/lights HTTP/1.1\r\nHost: " + socket.inet_ntoa(hub.ip).encode()
                t_us = conn.send(conn.open(self.us(t)), 0, True, data=req + b"\r\n\r\n")
                body = b'{"1":{"state":{"on":true,"bri":254}},"2":{"state":{"on":false}}}'
                head = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                    % len(body)
                )
                conn.close(conn.send(t_us, 0, False, data=head + body) + 5_000)
            for t in _ticks(rng, ready + 40, 300.0, 0.05, end):
                self.mdns(h, self.us(t))
                self.ssdp(h, self.us(t) + 7_000)
        elif kind == "tv":
            for t in _ticks(rng, ready + 60, 600.0, 0.3, end):
                conn = _Tcp(self.b, h, cloud[0], 443, self.gw, rtt_us=25_000)
                t_us = conn.send(conn.open(self.us(t)), 517, True)
                for _ in range(int(rng.integers(15, 30))):
                    t_us = conn.send(t_us, 64_000, False) + 200_000
                conn.close(t_us)
                self.ssdp(h, self.us(t) + 30_000)
                self.mdns(h, self.us(t) + 40_000)
        elif kind == "sensor":
            for t in _ticks(rng, ready + 15, 300.0, 0.02, end):
                t_us = self.us(t)
                self.b.udp(
                    t_us, h.mac, self.gw.mac, h.ip, cloud[0], 54321, 8053, self.b.payload(80, b"\x21\x31")
                )
                self.b.udp(
                    t_us + 120_000,
                    self.gw.mac,
                    h.mac,
                    cloud[0],
                    h.ip,
                    8053,
                    54321,
                    self.b.payload(64, b"\x21\x31"),
                    ttl=45,
                )
        elif kind == "sonos":
            for t in _ticks(rng, ready + 8, 90.0, 0.1, end):
                conn = _Tcp(self.b, h, cloud[0], 443, self.gw, rtt_us=30_000)
                t_us = conn.send(conn.open(self.us(t)), int(rng.integers(800, 2_500)), True)
                conn.close(conn.send(t_us, int(rng.integers(200, 800)), False) + 20_000)
            for t in _ticks(rng, ready + 50, 300.0, 0.05, end):
                self.mdns(h, self.us(t))
        # name refresh and clock sync for every device
        for t in _ticks(rng, ready + 1800.0, 1800.0, 0.05, end):
            t_us = self.us(t)
            for name, addr in h.spec.names:
                t_us = self.dns(h, t_us, name, addr)
        for t in _ticks(rng, ready + 1024.0, 1024.0, 0.05, end):
            self.ntp(h, self.us(t), h.spec.names[-1][1])

    def gateway_arp(self) -> None:
        for t in _ticks(self.rng, 60.0, 120.0, 0.3, self.dur):
            h = self.hosts[int(self.rng.integers(0, len(self.hosts)))]
            t_us = self.us(t)
            self.b.arp(t_us, 1, self.gw.mac, self.gw.ip, bytes(6), h.ip, BROADCAST_MAC)
            self.b.arp(t_us + 1_500, 2, h.mac, h.ip, self.gw.mac, self.gw.ip, self.gw.mac)

    # --- infection -----------------------------------------------------------------------------

    def infection(self, h: _Host, t_inf: float, cnc: bytes, victim: bytes) -> None:
        rng, b = self.rng, self.b
        nick = f"x86_{int(rng.integers(0, 10**6)):06d}"
        conn = _Tcp(b, h, cnc, 6667, self.gw, rtt_us=60_000, mal=True)
        t_us = conn.open(self.us(t_inf))
        t_us = conn.send(t_us, 0, True, data=f"NICK {nick}\r\nUSER {nick} localhost * :{nick}\r\n".encode())
        conn.send(
            t_us,
            0,
            False,
            data=b":irc.local 001 "
            + nick.encode()
            + b" :Welcome\r\n:irc.local 376 "
            + nick.encode()
            + b" :End of MOTD\r\nJOIN #bots\r\n",
        )
        for t in _ticks(rng, t_inf + 15.0, 15.0, 0.1, self.dur):
            token = str(int(rng.integers(10**8, 10**9))).encode()
            t_us = conn.send(self.us(t), 0, False, data=b"PING :" + token + b"\r\n")
            conn.send(t_us + 20_000, 0, True, data=b"PONG :" + token + b"\r\n")
        # Telnet SYN scan: public and local addresses within ~60 s
        scan0 = t_inf + 20.0
        n_pub, n_loc = 180, 40
        pub: list[bytes] = []
        while len(pub) < n_pub:
            a = int(rng.integers(1 << 24, 224 << 24))
            first = a >> 24
            if first in (10, 100, 127, 169, 172, 192):
                continue
            pub.append(a.to_bytes(4, "big"))
        local = [
            _ip(f"192.168.1.{o}") for o in rng.choice(np.arange(2, 255), size=n_loc, replace=False).tolist()
        ]
        by_ip = {x.ip: x for x in self.hosts}
        targets = [(ip, False) for ip in pub] + [(ip, True) for ip in local]
        order = rng.permutation(len(targets))
        times = np.sort(rng.uniform(scan0, scan0 + 60.0, size=len(targets)))
        for k, t in zip(order.tolist(), times.tolist(), strict=True):
            ip, is_local = targets[k]
            if ip == h.ip or ip == self.gw.ip:
                continue
            t_us = self.us(t)
            dport = 23 if rng.random() < 0.8 else 2323
            sport = 1024 + int(rng.integers(0, 64000))
            seq = int(rng.integers(0, 2**32))
            if is_local:
                b.arp(t_us, 1, h.mac, h.ip, bytes(6), ip, BROADCAST_MAC, mal=True)
                dev = by_ip.get(ip)
                if dev is None:
                    continue
                b.arp(t_us + 900, 2, dev.mac, dev.ip, h.mac, h.ip, h.mac, mal=True)
                b.tcp(t_us + 1_500, h.mac, dev.mac, h.ip, ip, sport, dport, seq, 0, 0x02, mal=True)
                b.tcp(t_us + 1_900, dev.mac, h.mac, ip, h.ip, dport, sport, 0, seq + 1, 0x14, mal=True)
                continue
            b.tcp(t_us, h.mac, self.gw.mac, h.ip, ip, sport, dport, seq, 0, 0x02, mal=True)
            u = rng.random()
            rtt = int(rng.integers(20_000, 250_000))
            if u < 0.08:
                b.tcp(
                    t_us + rtt, self.gw.mac, h.mac, ip, h.ip, dport, sport, 0, seq + 1, 0x14, ttl=50, mal=True
                )
            elif u < 0.11:
                sseq = int(rng.integers(0, 2**32))
                b.tcp(
                    t_us + rtt,
                    self.gw.mac,
                    h.mac,
                    ip,
                    h.ip,
                    dport,
                    sport,
                    sseq,
                    seq + 1,
                    0x12,
                    ttl=50,
                    mal=True,
                )
                b.tcp(
                    t_us + rtt + 200, h.mac, self.gw.mac, h.ip, ip, sport, dport, seq + 1, 0, 0x04, mal=True
                )
        # UDP flood against one victim, ~1500 packets/s for 20 s
        f0 = self.us(scan0 + 80.0)
        n = 30_000
        gaps = rng.exponential(20_000_000 / n, size=n).astype(np.int64)
        dports = rng.integers(1, 65536, size=n).tolist()
        sports = rng.integers(1024, 65536, size=n).tolist()
        data = b.payload(512)
        t_us = f0
        for g, sp, dp in zip(gaps.tolist(), sports, dports, strict=True):
            t_us += g
            if t_us > b.end_us:
                break
            b.udp(t_us, h.mac, self.gw.mac, h.ip, victim, sp, dp, data, mal=True)


def generate_home(
    path: str | Path, *, seed: int = 7, duration_s: float = 3600.0, infect_at: float = 0.75
) -> HomeTruth:
    """Write the synthetic home capture to ``path`` and return its ground truth.

    Parameters
    ----------
    path
        Output pcap file.
    seed
        Seed of the ``numpy.random.Generator`` that drives everything.
    duration_s
        Length of the capture in seconds (at least 60).
    infect_at
        Fraction of the duration at which the camera gets infected (``1.0``: never).

    Returns
    -------
    HomeTruth
        Devices, gateway, infection facts and per-packet labels.
    """
    if duration_s < 60.0:
        raise ValueError(f"duration_s must be at least 60 s, got {duration_s}")
    if not 0.0 < infect_at <= 1.0:
        raise ValueError(f"infect_at must lie in (0, 1], got {infect_at}")
    rng = np.random.default_rng(seed)
    home = _Home(rng, duration_s)
    cnc = f"185.244.25.{int(rng.integers(2, 250))}"
    victim = f"{int(rng.integers(11, 99))}.{int(rng.integers(0, 256))}.{int(rng.integers(0, 256))}.10"
    readies = []
    for k, h in enumerate(home.hosts):
        readies.append(home.boot(h, 0.5 + 3.0 * k + float(rng.uniform(0, 2.0))))
    for h, ready in zip(home.hosts, readies, strict=True):
        home.periodic(h, ready)
    home.gateway_arp()
    camera = home.hosts[0]
    t_inf = infect_at * duration_s
    if infect_at < 1.0:
        home.infection(camera, t_inf, _ip(cnc), _ip(victim))
    events = sorted(home.b.events)
    ts_us = np.fromiter((e[0] for e in events), dtype=np.int64, count=len(events))
    labels = np.fromiter((e[3] for e in events), dtype=bool, count=len(events))
    with Path(path).open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        writer.writepkts(
            (t // 1_000_000 + (t % 1_000_000) / 1e6, frame)
            for t, (_, _, frame, _) in zip(ts_us.tolist(), events, strict=True)
        )
    devices = [
        DeviceTruth(
            mac=h.mac.hex(":"),
            ip=socket.inet_ntoa(h.ip),
            hostname=h.spec.hostname,
            kind=h.spec.kind,
            vendor=h.spec.vendor,
            vendor_class=h.spec.vendor_class,
            cloud_names=[n for n, _ in h.spec.names],
            cloud_ips=[a for _, a in h.spec.names],
        )
        for h in home.hosts
        if h.spec is not None
    ]
    return HomeTruth(
        path=str(path),
        seed=seed,
        start_ts=float(START_TS),
        duration_s=duration_s,
        gateway={"mac": GATEWAY_MAC, "ip": GATEWAY_IP, "vendor": ROUTER_VENDOR},
        devices=devices,
        infected_mac=camera.mac.hex(":"),
        infected_ip=socket.inet_ntoa(camera.ip),
        infection_ts=START_TS + t_inf if infect_at < 1.0 else None,
        cnc_ip=cnc,
        cnc_port=6667,
        flood_victim_ip=victim,
        labels=labels,
        ts=ts_us / 1e6,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m iotsentry.evaluation.synthetic_home out.pcap [--seed 7] [--labels L.csv]``."""
    ap = argparse.ArgumentParser(
        prog="python -m iotsentry.evaluation.synthetic_home",
        description="Write a synthetic smart-home capture with a known infection.",
    )
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600)")
    ap.add_argument("--infect-at", type=float, default=0.75, help="fraction of the duration (1 = never)")
    ap.add_argument("--labels", default=None, help="also write index,ts,label rows here")
    ap.add_argument("--truth", default=None, help="also write the ground truth as JSON here")
    args = ap.parse_args(argv)
    truth = generate_home(args.out, seed=args.seed, duration_s=args.duration, infect_at=args.infect_at)
    if args.labels:
        truth.write_labels_csv(args.labels)
    if args.truth:
        Path(args.truth).write_text(json.dumps(truth.to_dict(), indent=2))
    print(f"{args.out}: {truth.n_packets} packets, {int(truth.labels.sum())} malicious")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
