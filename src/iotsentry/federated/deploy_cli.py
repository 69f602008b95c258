"""``iotsentry fl server`` / ``iotsentry fl site``: a real Flower deployment from the command line.

Wired by the main CLI with :func:`register` (``register(fl_subparsers)``)::

    iotsentry fl server --state-dir D [--rounds R] [--aggregator A] [--min-sites N] [--out-dir O]
                        [--host H] [--port P] [--tls-name NAME ...] [--signing-key KEY] [--insecure]
    iotsentry fl site --data DIR --superlink HOST:PORT --root-cert CA.pem --auth-key KEY
                      [--name NAME] [--train-frac F] [--state-dir D] [--insecure]

``server`` creates, when absent, the TLS material (``D/tls/ca.pem`` for the sites,
``server.pem``, ``server.key``) and the SuperNode keys to allow: every ``D/auth/*.pub``
(OpenSSH EC public key) is registered with the SuperLink; when ``D/auth`` holds none,
``--min-sites`` key pairs ``site-1 ... site-N`` are generated there (give ``site-i.key`` to the
i-th site over a trusted channel, or let each site make its own pair and drop its ``.pub``
into ``D/auth``). It then starts the SuperLink, submits the run, waits for it and prints the
run summary (``fl-summary.json``) as JSON; the model directory is ``<out-dir>/model``.

``site`` runs one SuperNode in the foreground (Ctrl-C stops it) on the labeled flow logs in
``--data``; its flows never leave the machine, only model weights and the moments used for the
shared standardisation.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from iotsentry.errors import IotSentryError
from iotsentry.federated import deploy

#: The built-in Flower strategies the deployed ServerApp offers (see deploy_app).
AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum")

__all__ = ["cmd_fl_server", "cmd_fl_site", "register"]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so that the Flower processes are stopped on the way out."""

    def _handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, _handler)
    except ValueError:  # not the main thread: leave the handler alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cert_names(cert: Path) -> set[str]:
    from cryptography import x509

    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound) as e:
        raise IotSentryError(f"{cert}: unreadable server certificate ({e})") from None
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    }


def _tls(state_dir: Path, names: list[str]) -> deploy.TlsFiles:
    t = state_dir / "tls"
    files = deploy.TlsFiles(t / "ca.pem", t / "server.pem", t / "server.key")
    present = [p.is_file() for p in (files.ca_cert, files.server_cert, files.server_key)]
    if not any(present):
        _eprint(f"iotsentry: created TLS material in {t} (give {files.ca_cert} to every site)")
        return deploy.make_tls(t, names)
    if not all(present):
        raise IotSentryError(f"{t}: incomplete TLS material (need ca.pem, server.pem, server.key)")
    missing = set(names) - _cert_names(files.server_cert)
    if missing:
        raise IotSentryError(
            f"{files.server_cert}: does not cover {sorted(missing)}; remove {t} to create new TLS material"
        )
    return files


def _auth_keys(state_dir: Path, n_sites: int) -> list[Path]:
    auth = state_dir / "auth"
    auth.mkdir(mode=0o700, parents=True, exist_ok=True)
    pubs = sorted(auth.glob("*.pub"))
    if not pubs:
        pubs = [deploy.make_node_keys(auth, f"site-{i}").public_key for i in range(1, n_sites + 1)]
        _eprint(f"iotsentry: created {n_sites} SuperNode key pairs in {auth} (give site-i.key to site i)")
    return pubs


def _listen_names(host: str, extra: list[str]) -> list[str]:
    names = list(extra)
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            names.append(host)
    except ValueError:
        names.append(host)  # a host name
    return names


def cmd_fl_server(args: argparse.Namespace) -> int:
    """Start a SuperLink, register the sites' keys, run the federation, print its summary."""
    if args.aggregator not in AGGREGATORS:
        raise IotSentryError(f"{args.aggregator}: unknown aggregator (choose from {', '.join(AGGREGATORS)})")
    for flag, value in (
        ("--rounds", args.rounds),
        ("--min-sites", args.min_sites),
        ("--local-epochs", args.local_epochs),
    ):
        if value < 1:
            raise IotSentryError(f"{flag} {value}: must be at least 1")
    if args.signing_key and not Path(args.signing_key).expanduser().is_file():
        raise IotSentryError(f"{args.signing_key}: signing key not found")
    sd = Path(args.state_dir).expanduser().resolve()
    sd.mkdir(mode=0o700, parents=True, exist_ok=True)
    tls = None if args.insecure else _tls(sd, _listen_names(args.host, args.tls_name or []))
    pubs = [] if args.insecure else _auth_keys(sd, args.min_sites)
    run_config: dict[str, object] = {
        "num-rounds": args.rounds,
        "aggregator": args.aggregator,
        "local-epochs": args.local_epochs,
        "min-nodes": args.min_sites,
        "out-dir": str(Path(args.out_dir).expanduser().resolve()),
        "signing-key": args.signing_key or "",
    }
    with _sigterm_as_interrupt():
        return _serve(args, sd, tls, pubs, run_config)


def _serve(
    args: argparse.Namespace,
    sd: Path,
    tls: deploy.TlsFiles | None,
    pubs: list[Path],
    run_config: dict[str, object],
) -> int:
    link = deploy.start_superlink(sd, tls=tls, host=args.host, port=args.port, insecure=args.insecure)
    try:
        for pub in pubs:
            deploy.register_supernode(link, pub, pub.stem)
        _eprint(
            f"iotsentry: SuperLink on {args.host}:{link.port}; waiting for {args.min_sites} sites:\n"
            f"  iotsentry fl site --superlink HOST:{link.port} --data DIR"
            + (
                "  --insecure"
                if args.insecure
                else f" --root-cert {tls.ca_cert if tls else ''} --auth-key KEY"
            )
        )
        res = deploy.run_app(link, run_config, timeout=args.timeout)
    finally:
        deploy.stop_all([link.process], sd)
    print(json.dumps(res["summary"], indent=2))
    return 0


def _superlink_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise IotSentryError(f"{value}: not a HOST:PORT SuperLink address")
    return value


def cmd_fl_site(args: argparse.Namespace) -> int:
    """Run one SuperNode on the labeled flow logs in ``--data`` until stopped (Ctrl-C)."""
    data = Path(args.data).expanduser()
    from iotsentry.federated.deploy_app import site_files

    site_files(data)  # the folder exists and holds labeled flow logs
    address = _superlink_address(args.superlink)
    if not args.insecure:
        for path, what in ((args.root_cert, "--root-cert CA certificate"), (args.auth_key, "--auth-key key")):
            if not path:
                raise IotSentryError(f"{what}: required unless --insecure")
            if not Path(path).expanduser().is_file():
                raise IotSentryError(f"{path}: {what} not found")
    if args.train_frac is not None and not 0.0 < args.train_frac < 1.0:
        raise IotSentryError(f"{args.train_frac}: --train-frac must be between 0 and 1")
    sd = Path(args.state_dir or tempfile.mkdtemp(prefix="iotsentry-site-")).expanduser().resolve()
    with _sigterm_as_interrupt():
        return _run_site(args, data, address, sd)


def _run_site(args: argparse.Namespace, data: Path, address: str, sd: Path) -> int:
    proc = deploy.start_supernode(
        address,
        data,
        sd,
        root_cert=None if args.insecure else Path(args.root_cert).expanduser(),
        auth_key=None if args.insecure else Path(args.auth_key).expanduser(),
        insecure=args.insecure,
        name=args.name,
        train_frac=args.train_frac,
    )
    _eprint(
        f"iotsentry: SuperNode for {data} connecting to {address} (log: {proc.log_path}); Ctrl-C stops it"
    )
    try:
        while proc.alive():
            time.sleep(0.5)
    finally:
        deploy.stop_all([proc], sd)
    code = proc.popen.returncode
    if code not in (0, None, -2, -15):
        raise IotSentryError(f"{address}: the SuperNode stopped with exit code {code}; {proc.log_tail(12)}")
    return 0


def register(fl_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``server`` and ``site`` subcommands to the ``iotsentry fl`` subparsers."""
    s = fl_subparsers.add_parser("server", help="run a federation: SuperLink + run (TLS, SuperNode auth)")
    s.add_argument("--state-dir", required=True, help="TLS material, site keys, logs, Flower home")
    s.add_argument("--rounds", type=int, default=10)
    s.add_argument("--aggregator", default="fedavg", choices=list(AGGREGATORS))
    s.add_argument("--local-epochs", type=int, default=1)
    s.add_argument("--min-sites", type=int, default=2, help="sites that must connect before round 1")
    s.add_argument("--out-dir", default="fl-out", help="model directory and fl-summary.json go here")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    s.add_argument("--port", type=int, default=9092)
    s.add_argument("--tls-name", action="append", help="extra host name / IP for the server certificate")
    s.add_argument("--signing-key", help="sign the model directory with this private key")
    s.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds to wait for the run")
    s.add_argument("--insecure", action="store_true", help="debugging only: no TLS, no SuperNode auth")
    s.set_defaults(func=cmd_fl_server)

    t = fl_subparsers.add_parser("site", help="run one site (SuperNode) on local labeled flow logs")
    t.add_argument("--data", required=True, help="folder with conn.log.labeled / *-labeled.csv files")
    t.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    t.add_argument("--root-cert", help="the federation's CA certificate (ca.pem)")
    t.add_argument("--auth-key", help="this site's SuperNode private key (OpenSSH EC)")
    t.add_argument("--name", help="site name reported to the server (default: the data folder name)")
    t.add_argument("--train-frac", type=float, default=None, help="per-class time split (default 0.8)")
    t.add_argument("--state-dir", help="logs and Flower home (default: a new temporary folder)")
    t.add_argument("--insecure", action="store_true", help="debugging only: no TLS, no SuperNode auth")
    t.set_defaults(func=cmd_fl_site)
