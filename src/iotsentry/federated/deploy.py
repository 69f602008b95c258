"""Run the federated flow classifier as a real Flower 1.42 deployment: SuperLink, SuperNodes, run.

Everything here drives Flower's own executables (from the directory of ``sys.executable``):

* ``flower-superlink --ssl-ca-certfile CA --ssl-certfile CERT --ssl-keyfile KEY
  --enable-supernode-auth --host H --port P --disable-runtime-dependency-installation``: one
  HTTPS port serves the Fleet, Control and Runtime APIs; the SuperLink starts
  ``flower-superexec``, which runs the ServerApp in a ``flwr-serverapp`` subprocess.
* ``flwr supernode register KEY.pub CONNECTION``: with SuperNode authentication on (1.42), the
  SuperLink only accepts SuperNodes whose public key (OpenSSH ``ecdsa-sha2-nistp384``) was
  registered through the Control API; self-registration over the Fleet API is refused.
* ``flower-supernode --superlink H:P --root-certificates CA --auth-supernode-private-key KEY
  --node-config "data-dir='...'" --port RUNTIME_PORT``: signs every Fleet request with its key;
  runs each ClientApp in a ``flwr-clientapp`` subprocess (via its own ``flower-superexec``).
* ``flwr run APP_DIR CONNECTION --format json`` submits the run; ``flwr ls --run-id N
  --format json`` polls its status. The ``flwr`` CLI reads the connection (address,
  ``root-certificates``) from ``$FLWR_HOME/config.toml``, which this module writes into the
  state directory, so the user's ``~/.flwr`` is never touched.

TLS and SuperNode authentication are on by default; ``insecure=True`` (plain HTTP, no
authentication) exists for debugging only. Every child gets ``FLWR_TELEMETRY_ENABLED=0``,
``FLWR_DISABLE_UPDATE_CHECK=1``, ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (no ``uv
sync``, no network) and a marker variable naming the state directory, so that
:func:`stop_all` and :func:`leftover_processes` find every process started for a state
directory, including the grandchildren Flower spawns in new sessions.

Note (Flower 1.42): without an OIDC account plugin the Control API (register SuperNodes, start
runs) is not authenticated and shares the SuperLink's port; bind the SuperLink to an address only
the sites can reach.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotsentry.errors import IotSentryError

__all__ = [
    "APP_COMPONENTS",
    "CONNECTION",
    "MARKER_ENV",
    "FlowerProcess",
    "NodeKeys",
    "SuperLink",
    "TlsFiles",
    "child_env",
    "flower_executable",
    "free_port",
    "leftover_processes",
    "list_supernodes",
    "make_node_keys",
    "make_tls",
    "register_supernode",
    "run_app",
    "start_superlink",
    "start_supernode",
    "stop_all",
    "wait_for_port",
    "write_app_project",
]

#: Name of the SuperLink connection in the generated ``$FLWR_HOME/config.toml``.
CONNECTION = "iotsentry"
#: Environment variable set in every child: the state directory it belongs to.
MARKER_ENV = "IOTSENTRY_FL_STATE"
APP_COMPONENTS = {
    "serverapp": "iotsentry.federated.deploy_app:server_app",
    "clientapp": "iotsentry.federated.deploy_app:client_app",
}

# -- TLS and SuperNode keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate (give it to the sites) and the SuperLink's certificate + key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeys:
    """A SuperNode key pair: OpenSSH private key (mode 0600) and OpenSSH public key."""

    private_key: Path
    public_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the start (replacing atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _san(hosts: Iterable[str]) -> list[Any]:
    from cryptography import x509

    names: list[Any] = []
    for h in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return names


def make_tls(
    directory: str | Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 365
) -> TlsFiles:
    """Create a self-signed CA and a SuperLink server certificate for ``hosts`` in ``directory``.

    Writes ``ca.pem``, ``server.pem`` and ``server.key`` (mode 0600). The CA's private key is
    discarded once the server certificate is signed (no further certificates can be issued;
    call again to start over). ``localhost`` and ``127.0.0.1`` are always included, since the
    SuperLink's own ServerApp process connects over loopback.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iotsentry federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    all_hosts = ["localhost", "127.0.0.1", *hosts]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, all_hosts[-1])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san(all_hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key")
    _write_private(
        files.server_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return files


def make_node_keys(directory: str | Path, name: str) -> NodeKeys:
    """Create ``<name>.key`` (OpenSSH EC P-384 private key, 0600) and ``<name>.pub`` in ``directory``.

    This is the key type Flower 1.42 expects: ``flower-supernode --auth-supernode-private-key``
    loads the private key; ``flwr supernode register`` takes the public key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = Path(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    keys = NodeKeys(d / f"{name}.key", d / f"{name}.pub")
    _write_private(
        keys.private_key,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    keys.public_key.write_bytes(pub + f" iotsentry-{name}\n".encode())
    return keys


# -- processes ------------------------------------------------------------------------------------


def flower_executable(name: str) -> str:
    """Absolute path of a Flower executable (next to ``sys.executable``, else on ``PATH``)."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if found is None:
        raise IotSentryError(f"{name}: Flower executable not found (is flwr 1.42 installed?)")
    return found


def child_env(state_dir: str | Path, flwr_home: str | Path) -> dict[str, str]:
    """Environment for a Flower child process of ``state_dir`` (telemetry and installs off)."""
    env = dict(os.environ)
    env.pop("FLWR_OIDC_ENABLED", None)
    bindir = str(Path(sys.executable).parent)
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_HOME": str(Path(flwr_home).resolve()),
            "PATH": bindir + os.pathsep + env.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            MARKER_ENV: str(Path(state_dir).resolve()),
        }
    )
    return env


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (chosen by the kernel, never twice per process)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(host: str, port: int, timeout: float = 30.0, proc: FlowerProcess | None = None) -> None:
    """Wait until ``host:port`` accepts TCP connections (fail early if ``proc`` exits)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.popen.poll() is not None:
            raise IotSentryError(f"{proc.name}: exited with code {proc.popen.returncode}; {proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return
        time.sleep(0.2)
    raise IotSentryError(f"{host}:{port}: nothing listening after {timeout:.0f} s")


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, start time)`` of a live process, from ``/proc``; None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _descendants(pid: int) -> list[tuple[int, int]]:
    """``(pid, start time)`` of every live descendant of ``pid``."""
    children: dict[int, list[tuple[int, int]]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (st := _proc_stat(int(p.name))) is not None:
            children.setdefault(st[0], []).append((int(p.name), st[1]))
    out: list[tuple[int, int]] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def leftover_processes(state_dir: str | Path, below: bool = True) -> list[int]:
    """Live processes started for ``state_dir`` (and, with ``below``, for folders under it).

    Found by the marker variable that every child of this module (and its descendants) carries.
    """
    root = Path(state_dir).resolve()
    prefix = f"{MARKER_ENV}=".encode()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            env = (p / "environ").read_bytes()
        except OSError:
            continue
        marks = [
            Path(e[len(prefix) :].decode(errors="replace")) for e in env.split(b"\0") if e.startswith(prefix)
        ]
        if (
            any(m == root or (below and root in m.parents) for m in marks)
            and _proc_stat(int(p.name)) is not None
        ):
            found.append(int(p.name))
    return sorted(found)


def _is_running(pid: int, start: int) -> bool:
    """True when ``pid`` is alive and is the process that started at ``start`` (not a reused pid)."""
    st = _proc_stat(pid)
    return st is not None and st[1] == start


def _signal(pid: int, start: int, sig: int) -> None:
    if _is_running(pid, start):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@dataclass
class FlowerProcess:
    """A Flower process started by this module, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    state_dir: Path

    def log_tail(self, n: int = 25) -> str:
        """The last ``n`` lines of the process log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        return f"log {self.log_path}:\n" + "\n".join(lines[-n:])

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process and every descendant, wait ``grace`` seconds, then SIGKILL.

        A process that already exited is left alone (its pid may be reused by now); its orphans
        carry the state directory's marker and are ended by :func:`stop_all`'s sweep.
        """
        root = _proc_stat(self.popen.pid)
        if self.popen.poll() is not None or root is None:
            return
        family = [(self.popen.pid, root[1]), *_descendants(self.popen.pid)]
        for pid, start in family:
            _signal(pid, start, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.popen.poll()  # reap our child so that it does not linger as a zombie
            if not any(_is_running(pid, start) for pid, start in family):
                break
            time.sleep(0.1)
        for pid, start in family:
            _signal(pid, start, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def _spawn(name: str, cmd: list[str], state_dir: Path, flwr_home: Path) -> FlowerProcess:
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(state_dir, flwr_home),
            cwd=state_dir,
            start_new_session=True,
        )
    return FlowerProcess(name, popen, log_path, state_dir)


def stop_all(procs: Iterable[FlowerProcess | None], state_dir: str | Path | None = None) -> list[int]:
    """Stop the processes in the order given, then sweep what is left of their state directories.

    The sweep (SIGTERM, then SIGKILL) ends the processes that carry the marker of a stopped
    process's state directory, or of ``state_dir`` -- e.g. a ``flwr-clientapp`` orphaned when its
    parent died. Returns the pids still alive afterwards (empty when everything stopped).
    """
    dirs = [] if state_dir is None else [Path(state_dir)]
    for p in procs:
        if p is not None:
            p.stop()
            dirs.append(p.state_dir)

    def _left() -> list[tuple[int, int]]:
        pids = {pid for d in dict.fromkeys(dirs) for pid in leftover_processes(d, below=False)}
        return [(pid, st[1]) for pid in sorted(pids) if (st := _proc_stat(pid)) is not None]

    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        left = _left()
        if not left:
            return []
        for pid, start in left:
            _signal(pid, start, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_is_running(pid, start) for pid, start in left):
            time.sleep(0.1)
    return [pid for pid, _ in _left()]


# -- SuperLink ------------------------------------------------------------------------------------


@dataclass
class SuperLink:
    """A running SuperLink and how the ``flwr`` CLI reaches it."""

    process: FlowerProcess
    host: str
    port: int
    state_dir: Path
    flwr_home: Path
    ca_cert: Path | None
    insecure: bool
    registered: dict[str, int] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """``host:port`` for SuperNodes and the CLI (loopback when bound to all interfaces)."""
        host = self.connect_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def connect_host(self) -> str:
        """The host to connect to (loopback when bound to all interfaces)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    def flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run ``flwr ARGS --format json`` against this SuperLink; the parsed JSON reply."""
        cmd = [flower_executable("flwr"), *args, "--format", "json"]
        res = subprocess.run(
            cmd,
            capture_output=True,
            env=child_env(self.state_dir, self.flwr_home),
            cwd=self.state_dir,
            timeout=timeout,
            check=False,
        )
        out = res.stdout.decode(errors="replace")
        reply = _last_json(out)
        if res.returncode != 0 or reply is None or not reply.get("success", False):
            detail = (
                (reply or {}).get("error-message") or out[-800:] or res.stderr.decode(errors="replace")[-800:]
            )
            raise IotSentryError(f"flwr {' '.join(args[:2])}: failed: {detail.strip()}")
        return reply


def _last_json(text: str) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError):
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                return obj if isinstance(obj, dict) else None
    return None


def _write_cli_config(flwr_home: Path, address: str, ca_cert: Path | None) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{address}"',
    ]
    if ca_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(ca_cert.resolve()))}")
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def _check_file(path: Path | None, what: str) -> Path:
    if path is None or not Path(path).is_file():
        raise IotSentryError(f"{path}: {what} not found")
    return Path(path)


def _wait_healthy(link: SuperLink, timeout: float) -> None:
    """Wait for ``GET /health`` over HTTPS (certificate checked against the CA)."""
    wait_for_port(link.connect_host, link.port, timeout, link.process)
    scheme = "http" if link.insecure else "https"
    ctx = None if link.insecure else ssl.create_default_context(cafile=str(link.ca_cert))
    url = f"{scheme}://{link.address}/health"
    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout:
        if not link.process.alive():
            raise IotSentryError(f"flower-superlink: exited early; {link.process.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2.0, context=ctx) as r:
                if r.status == 200:
                    return
        except OSError as e:
            last = e
        time.sleep(0.3)
    raise IotSentryError(f"{url}: SuperLink not healthy after {timeout:.0f} s ({last})")


def start_superlink(
    state_dir: str | Path,
    *,
    tls: TlsFiles | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    insecure: bool = False,
    supernode_auth: bool = True,
    timeout: float = 60.0,
) -> SuperLink:
    """Start ``flower-superlink`` (TLS + SuperNode authentication unless ``insecure``) and wait for it.

    ``tls`` defaults to the files of :func:`make_tls` in ``<state_dir>/tls`` (created when
    absent). ``port`` defaults to a free port. Raises :class:`IotSentryError` when the port is
    taken or the SuperLink does not come up.
    """
    sd = Path(state_dir).resolve()
    sd.mkdir(parents=True, exist_ok=True)
    flwr_home = sd / "flwr-home"
    port = free_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1") if port is None else port
    if _port_in_use(host, port):
        raise IotSentryError(f"{host}:{port}: port in use")
    cmd = [
        flower_executable("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if insecure:
        cmd.append("--insecure")
        ca = None
    else:
        if tls is None:
            t = sd / "tls"
            tls = TlsFiles(t / "ca.pem", t / "server.pem", t / "server.key")
            if not all(p.is_file() for p in (tls.ca_cert, tls.server_cert, tls.server_key)):
                tls = make_tls(t)
        ca = _check_file(tls.ca_cert, "CA certificate").resolve()
        cmd += [
            "--ssl-ca-certfile",
            str(ca),
            "--ssl-certfile",
            str(_check_file(tls.server_cert, "server certificate").resolve()),
            "--ssl-keyfile",
            str(_check_file(tls.server_key, "server key").resolve()),
        ]
        if supernode_auth:
            cmd.append("--enable-supernode-auth")
    proc = _spawn("superlink", cmd, sd, flwr_home)
    link = SuperLink(proc, host, port, sd, flwr_home, ca, insecure)
    _write_cli_config(flwr_home, link.address, ca)
    try:
        _wait_healthy(link, timeout)
    except BaseException:
        stop_all([proc], sd)
        raise
    return link


def register_supernode(link: SuperLink, public_key: str | Path, name: str | None = None) -> int:
    """``flwr supernode register PUBLIC_KEY``: allow a SuperNode's key; returns its node id."""
    pub = _check_file(Path(public_key), "SuperNode public key").resolve()
    args = ["supernode", "register", str(pub), CONNECTION]
    if name:
        args += ["--name", name]
    reply = link.flwr(*args)
    node_id = int(reply["node-id"])
    link.registered[str(pub)] = node_id
    return node_id


def list_supernodes(link: SuperLink) -> list[dict[str, Any]]:
    """``flwr supernode ls``: the registered SuperNodes with their status (online, ...)."""
    return list(link.flwr("supernode", "ls", CONNECTION).get("nodes", []))


# -- SuperNode ------------------------------------------------------------------------------------


def _toml_literal(value: str, what: str) -> str:
    if "'" in value or "\n" in value:
        raise IotSentryError(f"{value}: {what} must not contain quotes or newlines")
    return f"'{value}'"


def start_supernode(
    superlink: str,
    data_dir: str | Path,
    state_dir: str | Path,
    *,
    root_cert: str | Path | None = None,
    auth_key: str | Path | None = None,
    insecure: bool = False,
    name: str | None = None,
    train_frac: float | None = None,
    runtime_port: int | None = None,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
) -> FlowerProcess:
    """Start ``flower-supernode`` for one site (TLS + key authentication unless ``insecure``).

    The node config holds ``data-dir`` (absolute) and optional ``site-name`` / ``train-frac``.
    The SuperNode's local Runtime API (for its ClientApp processes) listens on loopback at
    ``runtime_port`` (default: a free port).
    """
    data = Path(data_dir).expanduser().resolve()
    if not data.is_dir():
        raise IotSentryError(f"{data}: site data folder does not exist")
    sd = Path(state_dir).resolve()
    sd.mkdir(parents=True, exist_ok=True)
    name = name or data.name
    cfg = [f"data-dir={_toml_literal(str(data), 'the data folder path')}"]
    cfg.append(f"site-name={_toml_literal(name, 'the site name')}")
    if train_frac is not None:
        cfg.append(f"train-frac={float(train_frac)!r}")
    cmd = [
        flower_executable("flower-supernode"),
        "--superlink",
        superlink,
        "--node-config",
        " ".join(cfg),
        "--host",
        "127.0.0.1",
        "--port",
        str(runtime_port or free_port()),
    ]
    if insecure:
        cmd.append("--insecure")
    else:
        ca = _check_file(Path(root_cert).expanduser() if root_cert else None, "CA certificate")
        key = _check_file(Path(auth_key).expanduser() if auth_key else None, "SuperNode private key")
        cmd += ["--root-certificates", str(ca.resolve()), "--auth-supernode-private-key", str(key.resolve())]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return _spawn(f"supernode-{name}", cmd, sd, sd / f"flwr-home-{name}")


# -- the run --------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def write_app_project(state_dir: str | Path, run_config: dict[str, Any]) -> Path:
    """Write the Flower app project (``<state_dir>/app/pyproject.toml``) and return its folder.

    Its components are ``iotsentry.federated.deploy_app:server_app`` / ``:client_app`` and its
    ``[tool.flwr.app.config]`` holds :data:`~iotsentry.federated.deploy_app.RUN_CONFIG_DEFAULTS`
    updated with ``run_config``.
    """
    from iotsentry.federated.deploy_app import RUN_CONFIG_DEFAULTS

    unknown = set(run_config) - set(RUN_CONFIG_DEFAULTS)
    if unknown:
        raise IotSentryError(f"run config: unknown keys {sorted(unknown)}")
    cfg = {**RUN_CONFIG_DEFAULTS, **run_config}
    app = Path(state_dir).resolve() / "app"
    app.mkdir(parents=True, exist_ok=True)
    lines = [
        "[project]",
        'name = "iotsentry-fl"',
        'version = "0.1.0"',
        'description = "iotsentry federated flow classifier (FlowMLP on labeled flow logs)"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "iotsentry"',
        "",
        "[tool.flwr.app.components]",
        *(f'{k} = "{v}"' for k, v in APP_COMPONENTS.items()),
        "",
        "[tool.flwr.app.config]",
        *(f'"{k}" = {_toml_value(v)}' for k, v in cfg.items()),
    ]
    (app / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return app


def _run_status(link: SuperLink, run_id: int) -> str:
    runs = link.flwr("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
    return str(runs[0].get("status", "")) if runs else ""


def run_app(
    link: SuperLink,
    run_config: dict[str, Any],
    *,
    timeout: float = 3600.0,
    poll: float = 2.0,
) -> dict[str, Any]:
    """Submit the deployment app with ``flwr run`` and wait until the run finishes.

    ``run_config`` must hold ``out-dir`` (made absolute here: the ServerApp runs in another
    process). Returns ``{"run_id", "status", "summary"}`` where ``summary`` is the parsed
    ``fl-summary.json``. Raises :class:`IotSentryError` when the run fails or times out.
    """
    cfg = dict(run_config)
    out_dir = Path(str(cfg.get("out-dir", link.state_dir / "out"))).expanduser().resolve()
    cfg["out-dir"] = str(out_dir)
    if cfg.get("signing-key"):
        cfg["signing-key"] = str(
            _check_file(Path(str(cfg["signing-key"])).expanduser(), "signing key").resolve()
        )
    app = write_app_project(link.state_dir, cfg)
    reply = link.flwr("run", str(app), CONNECTION)
    run_id = int(reply["run-id"])
    t0 = time.monotonic()
    status = ""
    while time.monotonic() - t0 < timeout:
        if not link.process.alive():
            raise IotSentryError(f"flower-superlink: exited during run {run_id}; {link.process.log_tail()}")
        status = _run_status(link, run_id)
        if status.startswith("finished"):
            break
        time.sleep(poll)
    else:
        with contextlib.suppress(IotSentryError):
            link.flwr("stop", str(run_id), CONNECTION)
        raise IotSentryError(f"run {run_id}: not finished after {timeout:.0f} s (status {status!r})")
    summary_path = out_dir / "fl-summary.json"
    if status != "finished:completed" or not summary_path.is_file():
        raise IotSentryError(f"run {run_id}: {status}; ServerApp log: {_run_log(link, run_id)}")
    return {"run_id": run_id, "status": status, "summary": json.loads(summary_path.read_text())}


def _run_log(link: SuperLink, run_id: int) -> str:
    """The tail of the run's log (``flwr log RUN_ID --show``)."""
    res = subprocess.run(
        [flower_executable("flwr"), "log", str(run_id), CONNECTION, "--show"],
        capture_output=True,
        env=child_env(link.state_dir, link.flwr_home),
        cwd=link.state_dir,
        timeout=60,
        check=False,
    )
    return "\n".join(res.stdout.decode(errors="replace").splitlines()[-30:])
