"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a throwaway cluster in a temp dir.

``initdb`` refuses to run as root (and CI runs as root), so the cluster belongs to an unprivileged user: the
``postgres`` user Debian's package creates, else one made here with ``useradd``; as a normal user, that user.
It listens on a free loopback port only (no Unix socket in a shared directory), with password authentication,
so the tests also see that a store URL's password never shows. ``fsync`` is off: the tests restart and kill
the server (a crash of PostgreSQL, not of the machine, which the OS page cache survives), never the power.
bench/queue_replicas.py starts one with ``durable=True`` (fsync on, as SQLite's WAL is fsynced there).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

TEST_USER = "lbproxy-pg"
SUPERUSER = "lbproxy"


def pg_bin() -> Path:
    """The newest installed server's binaries (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL's server binaries are missing: apt-get install -y postgresql "
                           "(./test.sh does it when it runs as root)")
    return Path(found[-1]).parent


def _owner() -> str | None:
    """The unprivileged user that runs the server when the tests run as root; None: the tests' own user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", TEST_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                   check=True)
    return TEST_USER


class PgServer:
    """One cluster: ``start()`` once, then ``stop()``/``start()`` to play a database restart."""

    def __init__(self, port: int, durable: bool = False) -> None:
        self.port = port
        self.durable = durable
        self.password = "pw-" + secrets.token_hex(12)
        self.bin = pg_bin()
        self.owner = _owner()
        self.dir = Path(tempfile.mkdtemp(prefix="lbproxy-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._counter = 0

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.owner, "--"] if self.owner else []
        return subprocess.run([*prefix, *argv], check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        if self.owner:
            shutil.chown(self.dir, self.owner)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.owner:
            shutil.chown(pwfile, self.owner)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(pwfile),
                  "-A", "scram-sha-256", "--no-sync", "-E", "UTF8", "--locale", "C")
        pwfile.unlink()
        sync = "" if self.durable else "fsync = off\nfull_page_writes = off\n"
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                       f"{sync}max_connections = 300\nlog_min_messages = warning\nshared_buffers = 32MB\n")

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown that ends every session; ``immediate``: a crash (recovery at the next start)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def close(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def pid(self) -> int:
        """The postmaster's process id (the first line of its pid file)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql (as a client over TCP, like lbproxy); its output."""
        env = {**os.environ, "PGPASSWORD": self.password}
        proc = subprocess.run([str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                               "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", statement],
                              env=env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr}")
        return proc.stdout.strip()

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        self._counter += 1
        name = f"t{os.getpid()}_{self._counter}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)
