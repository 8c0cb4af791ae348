"""A real PostgreSQL server for the ``postgres`` tests: initdb in a temp dir, on 127.0.0.1.

Debian's ``postgresql`` package (``.ci/run`` installs it) puts the binaries in
``/usr/lib/postgresql/<version>/bin``. Root cannot run ``postgres``: as root
the server runs as the ``postgres`` user (``runuser``). Password authentication
(scram-sha-256) is on, so the tests see what a password does in messages.
Without the binaries the tests skip, except with ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

USER = "airgap"
# Characters that need percent-encoding in a URL, so masking is tested on the encoded form too.
PASSWORD = "pg-Pa55word/with@odd:chars"
PASSWORD_IN_URL = "pg-Pa55word%2Fwith%40odd%3Achars"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def require_binaries() -> Path:
    found = bin_dir()
    if found is None:
        problem = "PostgreSQL is not installed (apt-get install postgresql)"
        if in_ci():
            pytest.fail(f"CI=true and {problem}", pytrace=False)
        pytest.skip(problem)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One cluster in a temp dir; :meth:`stop` and :meth:`start` keep its data and port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="airgap-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"
        )
        pwfile.unlink()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120, cwd=self.root)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, database: str, sql: str) -> str:
        """``psql`` itself, as an operator would read the table."""
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        where = ["-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database]
        done = subprocess.run(
            [str(self.bindir / "psql"), *where, "-At", "-c", sql],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        return done.stdout

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
