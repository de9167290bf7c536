"""A real PostgreSQL server for tests and benchmarks, with a database per test.

:func:`postgres_url` answers "which PostgreSQL server do the tests use?":

1. ``NEXUS_TEST_POSTGRES_URL`` if it is set (e.g. a server started by ``.ci/run``);
2. otherwise, if the PostgreSQL server binaries are installed (Debian:
   ``/usr/lib/postgresql/<major>/bin``; ``NEXUS_TEST_POSTGRES_BIN`` names another
   directory), a private cluster started lazily, once per process: ``initdb`` into a
   fresh temporary directory, listening only on ``127.0.0.1`` on a free port, ``trust``
   authentication, ``fsync=off`` (test data is thrown away). PostgreSQL refuses to run
   as root, so under root the cluster runs as the ``postgres`` OS user;
3. otherwise ``None`` (tests skip), unless ``NEXUS_TEST_REQUIRE_SERVERS=1``, in which
   case a missing or unstartable server raises :class:`PostgresUnavailable` (CI must
   not pass by skipping).

Invariants: at most one private cluster per process (a thread-safe lazy singleton, so
any number of test modules share it; the outcome, URL or failure, is cached). The
cluster is stopped and its directory removed at interpreter exit (``atexit``), and also
when the process dies without running ``atexit`` (``kill -9``): a small reaper process
started with the cluster waits for its parent's pipe to close, then stops the server
and deletes the directory. Leftovers whose owner process is gone (the reaper was killed
too) are removed the next time a cluster starts.

Isolation: :func:`create_database` makes a fresh, uniquely named database on a server and
returns its URL; :func:`drop_database` drops it (terminating connections still open).
:func:`require_postgres` is the pytest-facing helper (skip, or fail when servers are
required). :class:`PostgresCluster` is also usable directly, e.g. by a benchmark that
wants a durable (``fsync=on``) server. URLs use the psycopg 3 driver
(``postgresql+psycopg://``).
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from nexusfs.testing._servers import REQUIRE_SERVERS_ENV, free_port, servers_required

__all__ = [
    "BIN_ENV",
    "REQUIRE_ENV",
    "URL_ENV",
    "PostgresCluster",
    "PostgresUnavailable",
    "create_database",
    "drop_database",
    "find_postgres_bin",
    "postgres_unavailable_reason",
    "postgres_url",
    "require_postgres",
    "servers_required",
    "temporary_database",
]

#: A PostgreSQL URL to use instead of starting a private cluster.
URL_ENV = "NEXUS_TEST_POSTGRES_URL"
#: ``1``: a missing or unstartable server is an error, never a skip (CI sets it).
REQUIRE_ENV = REQUIRE_SERVERS_ENV
#: A directory holding ``initdb`` and ``postgres`` (overrides the search).
BIN_ENV = "NEXUS_TEST_POSTGRES_BIN"

_DIR_PREFIX = "nexus-pg-"
_OWNER_FILE = "owner.pid"
_START_TIMEOUT = 60.0
_database_counter = itertools.count(1)

# The reaper: blocks until its stdin (a pipe whose write end only the owning process
# holds) reaches EOF, i.e. the owner exited however it exited; then stops the server
# (SIGQUIT: immediate shutdown, the data is thrown away) and deletes the directory.
_REAPER = r"""
import os, shutil, signal, sys, time
pid, root = int(sys.argv[1]), sys.argv[2]
def alive():
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[:1] != ["Z"]
    except ProcessLookupError:
        return False
    except OSError:
        return True
sys.stdin.buffer.read()
if os.path.exists(os.path.join(root, "data", "postmaster.pid")):
    try:
        os.kill(pid, signal.SIGQUIT)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
shutil.rmtree(root, ignore_errors=True)
"""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be used: none configured, binaries missing, or the
    private cluster failed to start (the message says which, with the server log's
    tail). Raised by :func:`postgres_url` only when servers are required."""


def _version_key(path: Path) -> tuple[int, ...]:
    parts = re.findall(r"\d+", path.parent.name)
    return tuple(int(p) for p in parts)


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: ``NEXUS_TEST_POSTGRES_BIN`` if
    set (only that directory), else the newest ``/usr/lib/postgresql/<major>/bin``, else
    the directory of an ``initdb`` on ``PATH``; ``None`` if none has both programs."""
    configured = os.environ.get(BIN_ENV, "").strip()
    if configured:
        candidates = [Path(configured)]
    else:
        candidates = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True
        )
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    return None


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie awaiting its reaper is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _reap_leftovers(tmp_root: Path) -> None:
    """Stop and delete private clusters whose owner process no longer exists."""
    for root in tmp_root.glob(f"{_DIR_PREFIX}*"):
        try:
            owner = int((root / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        if _pid_alive(owner):
            continue
        try:
            postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = 0
        if postmaster > 0 and _pid_alive(postmaster):
            with suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while _pid_alive(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)


class PostgresCluster:
    """A private PostgreSQL cluster in a temporary directory (see the module docstring).

    ``start()`` runs ``initdb`` and the server and returns once it accepts connections;
    it raises :class:`PostgresUnavailable` (with the log's tail) if the binaries are
    missing, ``initdb`` fails or the server does not come up within 60 s, leaving
    nothing behind. ``fsync=False`` (tests) also turns off ``synchronous_commit`` and
    ``full_page_writes``; ``fsync=True`` keeps PostgreSQL's durable defaults (for
    benchmarks). ``stop()`` is idempotent and also registered with ``atexit``.
    """

    def __init__(
        self,
        *,
        fsync: bool = False,
        bin_dir: Path | None = None,
        settings: Sequence[str] = (),
    ) -> None:
        self.fsync = fsync
        self.bin_dir = bin_dir
        self.settings = tuple(settings)
        self.root: Path | None = None
        self.port = 0
        self._server: subprocess.Popen[bytes] | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:<port>/postgres`` (after start)."""
        if self._server is None:
            raise PostgresUnavailable("the cluster is not running")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> tuple[int | None, int | None]:
        """(uid, gid) to run the server as: ``postgres`` under root, else ourselves."""
        if os.geteuid() != 0:
            return None, None
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresUnavailable(
                "running as root and there is no 'postgres' OS user to run the server as"
            ) from exc
        return entry.pw_uid, entry.pw_gid

    def start(self) -> str:
        """Start the cluster (once) and return its URL."""
        with self._lock:
            if self._server is not None:
                return self.url
            bin_dir = self.bin_dir or find_postgres_bin()
            if bin_dir is None:
                raise PostgresUnavailable(
                    "PostgreSQL server binaries not found (install the Debian package "
                    f"'postgresql', or set {URL_ENV} or {BIN_ENV})"
                )
            uid, gid = self._run_as()
            tmp_root = Path(tempfile.gettempdir())
            _reap_leftovers(tmp_root)
            root = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=tmp_root))
            try:
                (root / _OWNER_FILE).write_text(str(os.getpid()))
                if uid is not None and gid is not None:
                    os.chown(root, uid, gid)
                self._initdb(bin_dir, root, uid, gid)
                self._start_server(bin_dir, root, uid, gid)
            except BaseException:
                self._kill_server()
                shutil.rmtree(root, ignore_errors=True)
                raise
            self.root = root
            assert self._server is not None
            self._reaper = subprocess.Popen(
                [sys.executable, "-c", _REAPER, str(self._server.pid), str(root)],
                stdin=subprocess.PIPE,
                start_new_session=True,  # survives a signal to our process group
            )
            atexit.register(self.stop)
            return self.url

    def _initdb(self, bin_dir: Path, root: Path, uid: int | None, gid: int | None) -> None:
        cmd = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A",
               "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]  # fmt: skip
        try:
            done = subprocess.run(
                cmd, cwd=root, user=uid, group=gid, capture_output=True, timeout=120,
                check=False,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresUnavailable(f"initdb could not run: {exc}") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise PostgresUnavailable(f"initdb failed (exit {done.returncode}):\n{output}")

    def _server_args(self, bin_dir: Path, root: Path, port: int) -> list[str]:
        settings = [
            "listen_addresses=127.0.0.1",
            f"port={port}",
            f"unix_socket_directories={root}",
            "max_connections=200",
            "log_min_messages=warning",
        ]
        if not self.fsync:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        settings += list(self.settings)
        args = [str(bin_dir / "postgres"), "-D", str(root / "data")]
        for setting in settings:
            args += ["-c", setting]
        return args

    def _start_server(self, bin_dir: Path, root: Path, uid: int | None, gid: int | None) -> None:
        log_path = root / "server.log"
        last_error = ""
        for _attempt in range(3):  # another process may take the free port first
            port = free_port()
            with open(log_path, "ab") as log:
                self._server = subprocess.Popen(
                    self._server_args(bin_dir, root, port), cwd=root, user=uid, group=gid,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C in a terminal must not stop it
                )  # fmt: skip
            self.port = port
            if self._wait_ready(port):
                return
            last_error = log_path.read_text(errors="replace")[-2000:]
            self._kill_server()
        raise PostgresUnavailable(f"the PostgreSQL server did not start:\n{last_error}")

    def _wait_ready(self, port: int) -> bool:
        """Poll until the server accepts a connection; ``False`` if it exited or did not
        come up within the timeout."""
        assert self._server is not None
        engine = create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
            poolclass=NullPool, connect_args={"connect_timeout": 2},
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if self._server.poll() is not None:
                    return False
                try:
                    with engine.connect() as conn:
                        conn.execute(text("SELECT 1"))
                    return True
                except SQLAlchemyError:
                    time.sleep(0.05)
            return False
        finally:
            engine.dispose()

    def _kill_server(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if server.poll() is None:
            server.send_signal(signal.SIGQUIT)  # immediate shutdown: the data is disposable
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    def stop(self) -> None:
        """Stop the server and delete its directory. Idempotent; never raises."""
        with self._lock:
            self._kill_server()
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
            reaper, self._reaper = self._reaper, None
            if reaper is not None:
                if reaper.stdin is not None:
                    reaper.stdin.close()  # EOF: the reaper finds nothing left and exits
                try:
                    reaper.wait(10)
                except subprocess.TimeoutExpired:
                    reaper.kill()
                    reaper.wait()

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Singleton:
    """The process-wide outcome of :func:`postgres_url` (URL or failure reason)."""

    lock = threading.Lock()
    resolved = False
    url: str | None = None
    reason = ""
    cluster: PostgresCluster | None = None


def _resolve() -> None:
    with _Singleton.lock:
        if _Singleton.resolved:
            return
        configured = os.environ.get(URL_ENV, "").strip()
        if configured:
            _Singleton.url = configured
        else:
            cluster = PostgresCluster(fsync=False)
            try:
                _Singleton.url = cluster.start()
                _Singleton.cluster = cluster
            except PostgresUnavailable as exc:
                _Singleton.reason = str(exc)
        _Singleton.resolved = True


def postgres_url() -> str | None:
    """The base URL of the test PostgreSQL server, or ``None`` when there is none.

    Starts the private cluster on first use (a few seconds), then answers from the cache.
    Raises :class:`PostgresUnavailable` instead of returning ``None`` when
    ``NEXUS_TEST_REQUIRE_SERVERS=1``.
    """
    _resolve()
    if _Singleton.url is None and servers_required():
        raise PostgresUnavailable(
            f"{REQUIRE_ENV}=1 but no PostgreSQL server is available: {_Singleton.reason}"
        )
    return _Singleton.url


def postgres_unavailable_reason() -> str:
    """Why :func:`postgres_url` returned ``None`` (empty if it did not)."""
    _resolve()
    return _Singleton.reason


def require_postgres() -> str:
    """For tests: the server's base URL, else ``pytest.skip`` (``pytest.fail`` when
    servers are required)."""
    import pytest

    try:
        url = postgres_url()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    if url is None:
        pytest.skip(f"no PostgreSQL server: {postgres_unavailable_reason()}")
    return url


def create_database(base_url: str, *, prefix: str = "nexus_test") -> str:
    """Create a fresh database on the server of ``base_url`` and return its URL (the
    same URL with the database name replaced). The role needs ``CREATEDB``.

    Raises :class:`PostgresUnavailable` if the server cannot be reached or refuses
    (the message never shows a password).
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,30}", prefix):
        raise ValueError(f"database prefix must be a short lowercase identifier: {prefix!r}")
    base = make_url(base_url)
    name = f"{prefix}_{os.getpid()}_{next(_database_counter)}_{uuid.uuid4().hex[:8]}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except SQLAlchemyError as exc:
        shown = base.render_as_string(hide_password=True)
        raise PostgresUnavailable(f"cannot create a database on {shown}: {exc}") from exc
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database named by ``url`` (``WITH (FORCE)``: connections still open to it
    are terminated). Missing databases are ignored. Raises :class:`PostgresUnavailable`
    if the server cannot be reached."""
    target = make_url(url)
    name = target.database
    if not name:
        raise ValueError("the URL names no database")
    maintenance = target.set(database="postgres")
    engine = create_engine(maintenance, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            quoted = name.replace('"', '""')
            conn.execute(text(f'DROP DATABASE IF EXISTS "{quoted}" WITH (FORCE)'))
    except SQLAlchemyError as exc:
        shown = maintenance.render_as_string(hide_password=True)
        raise PostgresUnavailable(f"cannot drop database {name!r} on {shown}: {exc}") from exc
    finally:
        engine.dispose()


@contextmanager
def temporary_database(base_url: str | None = None) -> Iterator[str]:
    """A fresh database for the block (on ``base_url``, default :func:`require_postgres`),
    dropped afterwards."""
    url = create_database(base_url if base_url is not None else require_postgres())
    try:
        yield url
    finally:
        drop_database(url)
