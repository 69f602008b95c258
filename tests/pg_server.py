"""A real PostgreSQL server for the store tests (session scope), or ``IOTSENTRY_TEST_PG_DSN``.

The server is initialised in a temporary folder, listens on a free loopback port (its unix
socket stays in the folder) with ``trust`` authentication, and is stopped and deleted at the
end of the session. PostgreSQL refuses to run as root: as root the binaries run as the
``postgres`` user (created as a system user when missing). Tests that need the server are
skipped with the reason when no binaries (``initdb``, ``pg_ctl``, ``postgres``) are found on
PATH or in ``/usr/lib/postgresql/*/bin`` (``scripts/ci_system_deps.sh`` installs them).
Loaded as a plugin by ``tests/conftest.py`` (a second ``conftest.py`` would shadow that one).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_DSN_ENV = "IOTSENTRY_TEST_PG_DSN"
_BINARIES = ("initdb", "pg_ctl", "postgres")


def find_pg_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: PATH first, then Debian's layout."""
    on_path = [shutil.which(b) for b in _BINARIES]
    if all(on_path):  # often symlinks into the versioned folder: use where they point
        folders = {Path(str(p)).resolve().parent for p in on_path}
        if len(folders) == 1:
            return folders.pop()
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) for x in p.split("/")[4:5] if x.isdigit()],
    )
    for folder in reversed(versions):
        if all((Path(folder) / b).is_file() for b in _BINARIES):
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_user() -> pwd.struct_passwd:
    """The ``postgres`` account, created as a system user when missing (only called as root)."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam("postgres")
    useradd = shutil.which("useradd")
    if useradd is None:
        raise RuntimeError("running as root, no 'postgres' user and no useradd to create one")
    cmd = [useradd, "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    done = subprocess.run([*cmd, "postgres"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"running as root and cannot create the 'postgres' user: {done.stderr.strip()}")
    return pwd.getpwnam("postgres")


class PgServer:
    """A throw-away PostgreSQL cluster in a temporary folder."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="iotsentry-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.port = 0
        self.prefix: list[str] = []
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._started = False

    def _as_server_user(self) -> None:
        """As root, run everything as ``postgres`` (created when missing) owning the folder."""
        if os.geteuid() != 0:
            return
        user = _postgres_user()
        runuser = shutil.which("runuser")
        if runuser is None:
            raise RuntimeError("running as root and no runuser to drop to the 'postgres' user")
        self.prefix = [runuser, "-u", "postgres", "--"]
        os.chown(self.base, user.pw_uid, user.pw_gid)

    def _run(self, *args: str, out: Path | None = None) -> None:
        cmd = [*self.prefix, *args]
        with open(out or os.devnull, "ab") as sink:
            done = subprocess.run(cmd, cwd=self.base, env=self._env, stdout=sink, stderr=subprocess.STDOUT,
                                  timeout=120, check=False)  # fmt: skip
        if done.returncode != 0:
            log = (
                (self.base / "server.log").read_text(errors="replace")
                if (self.base / "server.log").exists()
                else ""
            )
            tail = (out.read_text(errors="replace") if out else "") + log
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {tail[-2000:]}")

    def start(self) -> str:
        """Initialise and start the cluster; return a DSN of a fresh database in it."""
        self._as_server_user()
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-locale", "--no-sync", out=self.base / "initdb.out",
        )  # fmt: skip
        for attempt in range(3):  # a free port can be taken between the probe and the start
            self.port = _free_port()
            opts = (
                f"-p {self.port} -k {shlex.quote(str(self.base))} -c listen_addresses=127.0.0.1 -F"
                " -c max_connections=80 -c shared_buffers=16MB"
            )
            try:
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "server.log"),
                    "-w", "-t", "60", "-o", opts, "start", out=self.base / "pg_ctl.out",
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        self._started = True
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE iotsentry_test")
        return f"postgresql://postgres@127.0.0.1:{self.port}/iotsentry_test"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        try:
            if self._started:
                with contextlib.suppress(Exception):
                    self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """The DSN of a database on a real PostgreSQL server (skips with the reason when none)."""
    pytest.importorskip("psycopg", reason='psycopg 3 is not installed (pip install "psycopg[binary]")')
    given = os.environ.get(PG_DSN_ENV)
    if given:
        yield given
        return
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in"
            f" /usr/lib/postgresql/*/bin; run scripts/ci_system_deps.sh or set {PG_DSN_ENV}"
        )
    server = PgServer(bindir)
    try:
        dsn = server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        server.stop()
        pytest.skip(f"cannot start a PostgreSQL server from {bindir}: {err}")
    try:
        yield dsn
    finally:
        server.stop()


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` whose sessions use ``schema`` (libpq ``options=-csearch_path=...``)."""
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_schema_dsn(pg_dsn: str) -> Iterator[str]:
    """A DSN whose tables live in a new, empty schema (dropped afterwards): an empty store."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(pg_dsn, schema)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {schema} CASCADE")
