"""A small LAN built frame by frame for tests: devices behind one gateway, real DNS, TCP and UDP.

Frames are dpkt-built Ethernet/IPv4 with valid lengths; :func:`write` writes them as a pcap,
optionally cut to a snap length (original lengths kept, as ``editcap -s`` does).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

GW_MAC = bytes.fromhex("020000000001")
GW_IP = "192.168.7.1"
T0 = 1_700_000_000.0

SYN, ACK, PSH, FIN = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


@dataclass
class Lan:
    """Frames of a LAN; devices are (MAC, IP) pairs, everything remote goes through the gateway."""

    rows: list[tuple[float, bytes]] = field(default_factory=list)
    macs: dict[str, bytes] = field(default_factory=dict)

    def device(self, ip: str, mac: str) -> str:
        """Register a device; returns its IP."""
        self.macs[ip] = bytes.fromhex(mac.replace(":", ""))
        return ip

    def _mac(self, ip: str) -> bytes:
        return self.macs.get(ip, GW_MAC)

    def frame(self, t: float, src: str, dst: str, l4: dpkt.Packet, proto: int) -> None:
        ip = dpkt.ip.IP(src=_ip(src), dst=_ip(dst), p=proto, ttl=64, data=l4)
        ip.len = 20 + len(bytes(l4))
        eth = dpkt.ethernet.Ethernet(src=self._mac(src), dst=self._mac(dst), type=0x0800, data=ip)
        self.rows.append((t, bytes(eth)))

    def tcp(
        self, t: float, src: str, dst: str, sport: int, dport: int, flags: int, data: bytes = b""
    ) -> None:
        self.frame(t, src, dst, dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1, data=data), 6)

    def udp(self, t: float, src: str, dst: str, sport: int, dport: int, data: bytes = b"x" * 20) -> None:
        u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
        u.ulen = 8 + len(data)
        self.frame(t, src, dst, u, 17)

    def dns(self, t: float, dev: str, name: str, answer: str, sport: int = 40000, others: int = 2) -> None:
        """A query of ``name`` by ``dev`` and the gateway's answer: ``answer`` first, then
        ``others`` more addresses of the same /24 (real answers rarely fit in 96 bytes)."""
        q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
        self.udp(t, dev, GW_IP, sport, 53, bytes(q))
        r = dpkt.dns.DNS(
            id=7,
            op=dpkt.dns.DNS_RA,
            rcode=dpkt.dns.DNS_RCODE_NOERR,
            qr=dpkt.dns.DNS_R,
            qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)],
            an=[
                dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, ttl=60, ip=_ip(answer)[:3] + bytes([last]))
                for last in [_ip(answer)[3]] + [(_ip(answer)[3] + k + 1) % 250 + 1 for k in range(others)]
            ],
        )
        self.udp(t + 0.01, GW_IP, dev, 53, sport, bytes(r))

    def session(
        self, t: float, dev: str, peer: str, port: int, sport: int, turns: int = 1, span: float = 0.1
    ) -> None:
        """The device opens a TCP connection to ``peer:port`` and exchanges ``turns`` request /
        answer pairs over ``span`` seconds."""
        self.tcp(t, dev, peer, sport, port, SYN)
        self.tcp(t + 0.01, peer, dev, port, sport, SYN | ACK)
        self.tcp(t + 0.02, dev, peer, sport, port, ACK)
        for k in range(turns):
            at = t + 0.03 + span * k / max(turns, 1)
            self.tcp(at, dev, peer, sport, port, PSH, b"q" * 60)
            self.tcp(at + 0.005, peer, dev, port, sport, PSH, b"a" * 200)
        end = t + 0.04 + span
        self.tcp(end, dev, peer, sport, port, FIN | ACK)
        self.tcp(end + 0.01, peer, dev, port, sport, FIN | ACK)


def write(path: Path, rows: list[tuple[float, bytes]], snaplen: int | None = None) -> Path:
    """The frames as a time-ordered pcap; with ``snaplen`` every frame is cut to it."""
    rows = sorted(rows, key=lambda r: r[0])
    with path.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen or 65535, 1))
        for t, frame in rows:
            us = round(t * 1e6)
            cut = frame[:snaplen] if snaplen else frame
            fh.write(struct.pack("<IIII", us // 1_000_000, us % 1_000_000, len(cut), len(frame)))
            fh.write(cut)
    return path
