"""A throwaway local PostgreSQL for tests, demos and benchmarks.

The exporter promises never to lose a span when the database blinks; only a real server that can
be stopped and restarted at will tests that promise. This module makes one from the server
binaries already on the machine (or the optional ``pgserver`` wheel), as root or not.

Command line, for demos:
``python -m otel_pg_exporter.testing.devdb start|status|stop|destroy --dir DIR``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from otel_pg_exporter._dsn import redact_dsn

__all__ = [
    "PASSWORD_ROLE",
    "SUPERUSER",
    "DevCluster",
    "DevClusterError",
    "ExternalServer",
    "PgServer",
    "find_bin_dir",
    "main",
]

logger = logging.getLogger("otel_pg_exporter")

SUPERUSER = "postgres"
# The one role that must give a password over TCP, so tests can check a wrong-password failure.
PASSWORD_ROLE = "otel_pg_pw_user"  # noqa: S105 - a role name, not a password
# The account the server runs as when we are root: PostgreSQL refuses to run as root.
SERVER_ACCOUNT = "postgres"
SETTINGS_FILE = "otelpg.conf"
LOG_FILE = "server.log"
STOP_MODES = ("smart", "fast", "immediate")
# sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 107
_PG_CTL_WAIT_S = 60
_INSTALL_HINT = (
    "no PostgreSQL server binaries found (pg_ctl, initdb, postgres): install the PostgreSQL "
    "server package (e.g. apt-get install postgresql) or pip install 'otel_pg_exporter[pgserver]'"
)


class DevClusterError(RuntimeError):
    """The throwaway server could not be created, started or stopped."""


class PgServer(Protocol):
    """What tests need from a server: an admin DSN and scratch databases."""

    @property
    def dsn(self) -> str:
        """Admin connection string to the ``postgres`` database."""
        ...

    def dsn_for(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        """Connection string for another database or role on the same server."""
        ...

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN."""
        ...

    def drop_database(self, name: str) -> None:
        """Drop a database even while sessions are still connected to it."""
        ...


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("pg_ctl", "initdb", "postgres"))


def _version_key(directory: Path) -> tuple[int, ...]:
    parts = re.findall(r"\d+", directory.parent.name)
    return tuple(int(part) for part in parts)


def find_bin_dir() -> Path:
    """The directory holding ``pg_ctl``, ``initdb`` and ``postgres``.

    System binaries come first: ``pgserver`` run as root adds users and changes the modes of
    parent directories, which a shared machine should not get as a surprise.
    """
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        directory = Path(on_path).resolve().parent
        if _has_server_binaries(directory):
            return directory
    installed = [
        candidate
        for candidate in Path("/usr/lib/postgresql").glob("*/bin")
        if _has_server_binaries(candidate)
    ]
    if installed:
        return max(installed, key=_version_key)
    # find_spec, not import: importing pgserver is not needed to use its binaries.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        directory = Path(spec.origin).parent / "pginstall" / "bin"
        if _has_server_binaries(directory):
            return directory
    raise DevClusterError(_INSTALL_HINT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        with contextlib.suppress(OSError):
            subprocess.run(
                ["useradd", "--system", "--no-create-home", SERVER_ACCOUNT],
                check=False,
                capture_output=True,
            )
        try:
            entry = pwd.getpwnam(SERVER_ACCOUNT)
        except KeyError:
            raise DevClusterError(
                f"running as root, PostgreSQL needs an unprivileged user {SERVER_ACCOUNT!r}, "
                f"and 'useradd --system --no-create-home {SERVER_ACCOUNT}' did not create it"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _execute_admin(admin_dsn: str, statement: sql.Composed) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(statement)


def _create_database(admin_dsn: str, name: str) -> None:
    _execute_admin(admin_dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop_database(admin_dsn: str, name: str) -> None:
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    _execute_admin(admin_dsn, statement)


class DevCluster:
    """A private PostgreSQL cluster on 127.0.0.1, trust auth, superuser ``postgres``.

    Leaving the ``with`` block, ``destroy()``, or interpreter exit stops the server, so a crashed
    test run leaves no postmaster behind; a data dir this object made itself is removed then too.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        fsync: bool = True,
        bin_dir: Path | None = None,
        stop_at_exit: bool = True,
    ) -> None:
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"port must be an int in 1..65535, got {port!r}")
        self.bin_dir = bin_dir if bin_dir is not None else find_bin_dir()
        self._owns_data_dir = data_dir is None
        if data_dir is None:
            # Short on purpose: the unix socket lives in the data dir and its path must fit.
            data_dir = Path(tempfile.mkdtemp(prefix="otelpg-", dir="/tmp"))
        self.data_dir = Path(data_dir).absolute()
        self.fsync = fsync
        self._stop_at_exit = stop_at_exit
        self._at_exit_registered = False
        self._account = _server_account()
        saved_port = self._saved_port()
        # Only a port we picked may be swapped for another if something grabs it first.
        self._may_change_port = port is None and saved_port is None
        self.port: int = port if port is not None else saved_port or _free_port()

    def __repr__(self) -> str:
        return (
            f"DevCluster(data_dir={str(self.data_dir)!r}, port={self.port}, "
            f"bin_dir={str(self.bin_dir)!r}, fsync={self.fsync})"
        )

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._owns_data_dir:
            self.destroy()
        else:
            self.stop()

    @property
    def log_file(self) -> Path:
        """The server log, whose tail goes into every start failure."""
        return self.data_dir / LOG_FILE

    @property
    def dsn(self) -> str:
        """Superuser URL to the ``postgres`` database over TCP."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        """URL for a database and role of this cluster; the password is percent-encoded."""
        userinfo = quote(user if user is not None else SUPERUSER, safe="")
        if password is not None:
            userinfo += ":" + quote(password, safe="")
        return f"postgresql://{userinfo}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN."""
        _create_database(self.dsn, name)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database even while a forgotten pool still holds connections to it."""
        _drop_database(self.dsn, name)

    def is_initialized(self) -> bool:
        """Whether the data dir already holds a cluster (``initdb`` has run)."""
        return (self.data_dir / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        """Whether a postmaster is serving this data dir."""
        if not self.is_initialized():
            return False
        return self._pg_ctl("status").returncode == 0

    def start(self) -> None:
        """Create the cluster if needed and start it; a no-op when it already runs."""
        self._initialize()
        if self.is_running():
            self._register_at_exit()
            return
        attempts = 3 if self._may_change_port else 1
        for attempt in range(1, attempts + 1):
            self._write_settings()
            log_offset = self._log_size()
            result = self._pg_ctl(
                "start", "-w", "-t", str(_PG_CTL_WAIT_S), "-l", str(self.log_file)
            )
            if result.returncode == 0:
                break
            log_text = self._read_log(log_offset)
            if attempt < attempts and "could not bind" in log_text:
                # Another process took the free port between our probe and the server's bind.
                logger.info(
                    "Port %s was taken before PostgreSQL bound it; trying another", self.port
                )
                self.port = _free_port()
                continue
            raise DevClusterError(
                f"pg_ctl start failed for {self.data_dir} on port {self.port} "
                f"(exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}\n"
                f"--- tail of {self.log_file} ---\n{self._tail(log_text)}"
            )
        self._may_change_port = False
        self._register_at_exit()
        logger.debug("Started PostgreSQL in %s on port %s", self.data_dir, self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m mode``); a no-op when it is not running."""
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be one of {', '.join(STOP_MODES)}, got {mode!r}")
        self._unregister_at_exit()
        if not self.is_running():
            return
        result = self._pg_ctl("stop", "-w", "-t", str(_PG_CTL_WAIT_S), "-m", mode)
        if result.returncode != 0:
            raise DevClusterError(
                f"pg_ctl stop -m {mode} failed for {self.data_dir} (exit {result.returncode}): "
                f"{result.stderr.strip()}\n--- tail of {self.log_file} ---\n"
                f"{self._tail(self._read_log(0))}"
            )
        logger.debug("Stopped PostgreSQL in %s (%s)", self.data_dir, mode)

    def restart(self) -> None:
        """Start again on the same port and data dir, e.g. after a fault test stopped it."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server at once and delete the data dir: nothing in it is worth a checkpoint."""
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.data_dir.exists():
            raise DevClusterError(f"could not remove {self.data_dir}")

    # -- internals ---------------------------------------------------------------------------

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run a server binary, as the unprivileged account when we are root."""
        uid, gid = self._account if self._account is not None else (None, None)
        # libpq variables of the caller must not steer the server or pg_ctl's readiness check.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            cwd="/",
            user=uid,
            group=gid,
            extra_groups=[] if self._account is not None else None,
            timeout=_PG_CTL_WAIT_S * 2,
        )

    def _pg_ctl(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(["pg_ctl", command, "-D", str(self.data_dir), *args])

    def _give_to_server(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, *self._account)

    def _initialize(self) -> None:
        if self.is_initialized():
            return
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self._give_to_server(self.data_dir)
        args = [
            "initdb",
            "-D",
            str(self.data_dir),
            "--auth=trust",
            f"--username={SUPERUSER}",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if not self.fsync:
            args.append("--no-sync")
        result = self._run(args)
        if result.returncode != 0:
            hint = ""
            if self._account is not None:
                hint = (
                    f"\nrunning as root, the server runs as {SERVER_ACCOUNT!r}, which needs "
                    f"search permission on every parent of {self.data_dir} (a dir under /tmp works)"
                )
            raise DevClusterError(
                f"initdb failed for {self.data_dir} (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}{hint}"
            )
        hba = "\n".join(
            [
                "# Written by otel_pg_exporter.testing.devdb: a throwaway local cluster.",
                "local all all trust",
                f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256",
                f"host all {PASSWORD_ROLE} ::1/128 scram-sha-256",
                "host all all 127.0.0.1/32 trust",
                "host all all ::1/128 trust",
                "",
            ]
        )
        self._write_file(self.data_dir / "pg_hba.conf", hba)
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\ninclude_if_exists {_conf_quote(SETTINGS_FILE)}\n")

    def _write_settings(self) -> None:
        """Rewritten at every start, so a new port or fsync choice applies to an old cluster."""
        socket_path = f"{self.data_dir}/.s.PGSQL.{self.port}"
        socket_dir = str(self.data_dir) if len(os.fsencode(socket_path)) <= _MAX_SOCKET_PATH else ""
        settings = {
            "listen_addresses": _conf_quote("127.0.0.1"),
            "port": str(self.port),
            # An empty value turns unix sockets off when the path would be too long; TCP stays.
            "unix_socket_directories": _conf_quote(socket_dir),
            "max_connections": "200",
            "shared_buffers": "128MB",
            "fsync": _on_off(self.fsync),
            # Stays on even without fsync: off, a commit may still sit in shared memory when a
            # fault test stops the server with -m immediate, and a committed row would vanish.
            # On costs only a write() to the page cache per commit once fsync is off.
            "synchronous_commit": "on",
            "full_page_writes": _on_off(self.fsync),
        }
        lines = [f"{name} = {value}" for name, value in settings.items()]
        header = (
            "# Written by otel_pg_exporter.testing.devdb at every start; edits are overwritten.\n"
        )
        self._write_file(self.data_dir / SETTINGS_FILE, header + "\n".join(lines) + "\n")

    def _write_file(self, path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)
        self._give_to_server(path)

    def _saved_port(self) -> int | None:
        """The port an existing cluster last ran on, so the CLI finds it again."""
        try:
            text = (self.data_dir / SETTINGS_FILE).read_text(encoding="utf-8")
        except OSError:
            return None
        match = re.search(r"^port = (\d+)$", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @staticmethod
    def _tail(text: str, lines: int = 30) -> str:
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"

    def _register_at_exit(self) -> None:
        if self._stop_at_exit and not self._at_exit_registered:
            atexit.register(self._clean_up_at_exit)
            self._at_exit_registered = True

    def _unregister_at_exit(self) -> None:
        if self._at_exit_registered:
            atexit.unregister(self._clean_up_at_exit)
            self._at_exit_registered = False

    def _clean_up_at_exit(self) -> None:
        try:
            if self._owns_data_dir:
                self.destroy()
            else:
                self.stop()
        except Exception as exc:
            logger.warning("Could not stop PostgreSQL in %s at exit: %r", self.data_dir, exc)


class ExternalServer:
    """An existing server given by an admin DSN (e.g. ``TEST_DATABASE_URL``), same interface."""

    def __init__(self, admin_dsn: str) -> None:
        self._admin_dsn = admin_dsn

    def __repr__(self) -> str:
        return f"ExternalServer({redact_dsn(self._admin_dsn)!r})"

    @property
    def dsn(self) -> str:
        """The admin DSN as given."""
        return self._admin_dsn

    def dsn_for(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        """The admin DSN pointed at another database or role (the admin password not reused)."""
        params = conninfo_to_dict(self._admin_dsn)
        params["dbname"] = dbname
        if user is not None:
            params["user"] = user
            params.pop("password", None)
        if password is not None:
            params["password"] = password
        return make_conninfo("", **params)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN."""
        _create_database(self._admin_dsn, name)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database even while sessions are still connected to it."""
        _drop_database(self._admin_dsn, name)


def main(argv: Sequence[str] | None = None) -> int:
    """``start`` prints only the DSN, for ``DSN=$(python -m ... start --dir DIR)``."""
    parser = argparse.ArgumentParser(
        prog="python -m otel_pg_exporter.testing.devdb",
        description="A local PostgreSQL for demos; it keeps running until 'stop'.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="create the cluster in DIR if absent, start it")
    status = commands.add_parser("status", help="print the DSN and exit 0 if running, else 3")
    stop = commands.add_parser("stop", help="stop the server (fast)")
    destroy = commands.add_parser("destroy", help="stop the server and delete DIR")
    for command in (start, status, stop, destroy):
        command.add_argument("--dir", required=True, type=Path, help="the cluster's data dir")
    start.add_argument("--port", type=int, help="TCP port (default: the last one, else a free one)")
    start.add_argument("--no-fsync", action="store_true", help="faster, unsafe on power loss")
    args = parser.parse_args(argv)

    try:
        cluster = DevCluster(
            data_dir=args.dir,
            port=getattr(args, "port", None),
            fsync=not getattr(args, "no_fsync", False),
            stop_at_exit=False,
        )
        if args.command == "start":
            cluster.start()
            print(cluster.dsn)
        elif args.command == "status":
            if not cluster.is_running():
                print(f"no PostgreSQL running in {cluster.data_dir}", file=sys.stderr)
                return 3
            print(cluster.dsn)
        elif args.command == "stop":
            cluster.stop()
        else:
            cluster.destroy()
    except (DevClusterError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
