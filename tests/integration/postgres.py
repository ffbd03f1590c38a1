"""A throwaway PostgreSQL server for the store's tests: Debian's ``postgresql`` binaries,
a cluster made with ``initdb`` in a temporary folder, listening on a free port of
127.0.0.1 (and a unix socket in that folder), stopped and removed at the end.

PostgreSQL refuses to run as root: as root (CI), the cluster belongs to the ``postgres``
user the Debian package creates, and its programs run as that user (``runuser``)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from streaming.broker import free_port

BIN_GLOB = "/usr/lib/postgresql/*/bin"
NOT_INSTALLED = (
    "PostgreSQL is not installed (no initdb/pg_ctl in /usr/lib/postgresql/<version>/bin): "
    "`make system` installs it (Debian's postgresql, listed in debian-packages.txt)"
)
USER = "postgres"  # the superuser the cluster is made with, and its system user as root
STEP_TIMEOUT_S = 60.0  # initdb, a start, a stop: each well under it
# A throwaway cluster: what it writes need not survive a crash of the machine.
FAST = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresNotInstalled(RuntimeError):
    pass


def bin_dir() -> Path:
    """The newest installed PostgreSQL's bin folder (Debian keeps one per major version)."""
    found = [Path(p) for p in Path("/").glob(BIN_GLOB.lstrip("/"))]
    found = [p for p in found if (p / "initdb").is_file() and (p / "pg_ctl").is_file()]
    if not found:
        raise PostgresNotInstalled(NOT_INSTALLED)
    return max(found, key=lambda p: _version(p.parent.name))


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


class PostgresServer:
    """``with PostgresServer() as pg: pg.create_database("x")`` gives a SQLAlchemy URL."""

    def __init__(self, timeout_s: float = STEP_TIMEOUT_S) -> None:
        self.bin = bin_dir()
        self.timeout_s = timeout_s
        self.as_root = os.geteuid() == 0
        # Not pytest's tmp_path: its folders are root's alone (0700), closed to postgres.
        self.root = Path(tempfile.mkdtemp(prefix="livealign-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self.password = secrets.token_hex(16)
        self.port = 0
        self._databases = 0

    # --- the cluster ----------------------------------------------------------------------
    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.socket_dir.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            shutil.chown(self.root, USER)
            for path in (self.socket_dir, pwfile):
                shutil.chown(path, USER)
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        self.port = free_port()
        options = [
            "-c listen_addresses=127.0.0.1", f"-c port={self.port}",
            f"-c unix_socket_directories={self.socket_dir}", *(f"-c {o}" for o in FAST),
        ]  # fmt: skip
        # -w: wait until it accepts connections, at most -t seconds.
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", str(int(self.timeout_s)), "-o", " ".join(options),
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server if one runs (even one whose start timed out), then remove it."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w",
                      "-t", str(int(self.timeout_s)))  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(self.bin / program), *args]
        if self.as_root:
            cmd = ["runuser", "-u", USER, "--", *cmd]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True,
                           timeout=self.timeout_s + 10, cwd=self.root)  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"{program} failed ({exc.returncode}): {exc.stderr.strip()}\n{self._log_tail()}"
            ) from None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- databases ------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        """The store's SQLAlchemy URL for ``database`` (psycopg 3, over TCP)."""
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "store") -> str:
        """A new, empty database (one per test: nothing leaks between them); its URL."""
        self._databases += 1
        name = f"{prefix}_{self._databases}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password,
            dbname="postgres", autocommit=True, connect_timeout=int(self.timeout_s),
        ) as conn:  # fmt: skip
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)
