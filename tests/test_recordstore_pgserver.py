"""The PostgreSQL test-server helpers (``nexusfs.testing.postgres``): per-test databases,
the skip / require policy, and clean-up of the private cluster even after ``kill -9``.

Policy tests run in child processes, so the process-wide server of this test run is
never disturbed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from nexusfs.testing.postgres import (
    BIN_ENV,
    REQUIRE_ENV,
    URL_ENV,
    PostgresCluster,
    PostgresUnavailable,
    create_database,
    drop_database,
    find_postgres_bin,
    postgres_url,
    require_postgres,
    temporary_database,
)

KERNEL = Path(__file__).resolve().parent.parent / "kernel"


def _scalar(url: str, sql: str) -> object:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def _child(code: str, env: dict[str, str | None], timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter with ``env`` changes (None: unset); its
    stdout."""
    child_env = dict(os.environ)
    for key, value in env.items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(KERNEL), child_env.get("PYTHONPATH")) if p
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=child_env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    return done.stdout


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return True
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _wait(predicate: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


# --------------------------------------------------------------- databases


def test_create_use_and_drop_a_database() -> None:
    base = require_postgres()
    url = create_database(base)
    assert make_url(url).database != make_url(base).database
    assert make_url(url).drivername == "postgresql+psycopg"
    assert _scalar(url, "SELECT current_database()") == make_url(url).database
    engine = create_engine(url)  # a connection left open must not block the drop
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE t (x int)"))
        conn.commit()
        drop_database(url)
    engine.dispose()
    with pytest.raises(OperationalError):
        _scalar(url, "SELECT 1")
    drop_database(url)  # already gone: nothing to do


def test_databases_are_isolated() -> None:
    base = require_postgres()
    with temporary_database(base) as one, temporary_database(base) as two:
        assert one != two
        engine = create_engine(one, poolclass=NullPool)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE only_here (x int)"))
        engine.dispose()
        assert _scalar(two, "SELECT to_regclass('only_here') IS NULL") is True


def test_private_server_listens_on_loopback_only() -> None:
    url = require_postgres()
    assert postgres_url() == url  # cached: the same server for every test module
    if os.environ.get(URL_ENV):
        pytest.skip("an external server is configured")
    assert _scalar(url, "SHOW listen_addresses") == "127.0.0.1"
    assert _scalar(url, "SHOW fsync") == "off"
    assert make_url(url).host == "127.0.0.1"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="prefix"):
        create_database("postgresql+psycopg://postgres@127.0.0.1/postgres", prefix="Bad-Name")
    with pytest.raises(ValueError, match="no database"):
        drop_database("postgresql+psycopg://postgres@127.0.0.1")


def test_unreachable_server_is_postgres_unavailable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql+psycopg://nexus:hunter2@127.0.0.1:{port}/postgres"
    with pytest.raises(PostgresUnavailable) as info:
        create_database(url)
    assert "hunter2" not in str(info.value)
    with pytest.raises(PostgresUnavailable):
        drop_database(url.replace("/postgres", "/x"))


# ------------------------------------------------------------------ policy

_POLICY = """
    import json
    from nexusfs.testing import postgres as pg
    out = {}
    try:
        out["url"] = pg.postgres_url()
    except pg.PostgresUnavailable as exc:
        out["error"] = str(exc)
    out["reason"] = pg.postgres_unavailable_reason()
    try:
        pg.require_postgres()
        out["require"] = "ok"
    except BaseException as exc:  # pytest's Skipped / Failed outcomes
        out["require"] = type(exc).__name__
    print(json.dumps(out))
"""


def test_no_binaries_skips(tmp_path: Path) -> None:
    out = json.loads(_child(_POLICY, {URL_ENV: None, REQUIRE_ENV: None, BIN_ENV: str(tmp_path)}))
    assert out["url"] is None
    assert "binaries not found" in out["reason"]
    assert out["require"] == "Skipped"


def test_no_binaries_is_an_error_when_servers_are_required(tmp_path: Path) -> None:
    out = json.loads(_child(_POLICY, {URL_ENV: None, REQUIRE_ENV: "1", BIN_ENV: str(tmp_path)}))
    assert "NEXUS_TEST_REQUIRE_SERVERS=1" in out["error"]
    assert out["require"] == "Failed"


def test_configured_url_is_used_as_given(tmp_path: Path) -> None:
    url = "postgresql+psycopg://someone@db.example:5432/nexus"
    out = json.loads(_child(_POLICY, {URL_ENV: url, BIN_ENV: str(tmp_path)}))
    assert out["url"] == url and out["reason"] == ""


# ------------------------------------------------- clean-up of the private cluster

_KILLED = """
    import json, os, signal, time
    from nexusfs.testing import postgres as pg
    url = pg.postgres_url()
    cluster = pg._Singleton.cluster
    print(json.dumps({"url": url, "root": str(cluster.root), "pid": cluster._server.pid,
                      "reaper": cluster._reaper.pid}), flush=True)
    if os.environ.get("KILL_REAPER"):
        os.kill(cluster._reaper.pid, signal.SIGKILL)
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def binaries() -> None:
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries not installed")


@pytest.mark.usefixtures("binaries")
def test_kill_9_of_the_owner_stops_the_cluster() -> None:
    info = json.loads(_child(_KILLED, {URL_ENV: None}))
    assert _wait(lambda: _gone(info["pid"])), "the server outlived its owner"
    assert _wait(lambda: not Path(info["root"]).exists()), "its directory was left behind"


@pytest.mark.usefixtures("binaries")
def test_leftover_of_a_killed_run_is_removed_by_the_next_start() -> None:
    info = json.loads(_child(_KILLED, {URL_ENV: None, "KILL_REAPER": "1"}))
    assert not _gone(info["pid"]) and Path(info["root"]).exists()  # truly left over
    with PostgresCluster() as cluster:
        assert cluster.root is not None and cluster.root.exists()
        assert _scalar(cluster.url, "SELECT 1") == 1
        assert _wait(lambda: _gone(info["pid"]), 15)
        assert not Path(info["root"]).exists()
    assert cluster.root is None
