"""Tests of the settings model (``nexusfs.config``) and the driver registry.

Layers and precedence, provenance, every kind of bad input (each a ``ConfigError``
naming the setting and its source), ``${VAR}`` expansion, a third-party driver found
through the ``nexusfs.drivers`` entry-point group, and the kernel opening what the
settings say (``connect()``, ``nexus config show``, ``nexus up`` refusing bad config).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import nexusfs
from kernel_testkit import native_available
from nexusfs.abc import Durability
from nexusfs.cli.app import cli
from nexusfs.config import ConfigError, load_settings, validate_values, write_config
from nexusfs.drivers import registry
from nexusfs.errors import MountError

needs_native = pytest.mark.skipif(not native_available(), reason="nexusfs._native not built")
CLEAN_ENV: dict[str, str] = {}


def write_toml(data_dir: Path, text: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "nexus.toml"
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------ layers, sources


def test_defaults_name_the_data_directory(tmp_path: Path) -> None:
    s = load_settings(tmp_path, env=CLEAN_ENV)
    assert s.data_dir == tmp_path.absolute()
    assert s.durability is Durability.DEFERRED
    assert s.metastore == str(tmp_path / "metastore.redb")
    assert s.record_store == f"sqlite:///{tmp_path}/records.db"
    assert s.cache_store is None
    assert s.object_store == "local:objects"
    assert s.services is None  # every installed service
    assert s.config_file is None
    assert s.sources == {"data_dir": "argument"}
    assert dict((k, src) for k, _v, src in s.rows())["record_store"] == "default"


def test_env_wins_over_file_and_arguments_win_over_env(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        durability = "immediate"
        flush_interval = 2.5
        cache_store = "redis://127.0.0.1:6379/1"
        services = ["hooks"]
        """,
    )
    env = {"NEXUS_DURABILITY": "deferred", "NEXUS_FLUSH_INTERVAL": "0.25"}
    s = load_settings(tmp_path, env=env, overrides={"flush_interval": 0})
    assert s.durability is Durability.DEFERRED
    assert s.sources["durability"] == "env NEXUS_DURABILITY"
    assert s.flush_interval == 0
    assert s.sources["flush_interval"] == "argument"
    assert s.cache_store == "redis://127.0.0.1:6379/1"
    assert s.sources["cache_store"] == f"file {path}"
    assert s.services == ("hooks",)
    assert s.config_file == path


def test_data_dir_from_env_and_explicit_config_file(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.toml"
    other.write_text('durability = "immediate"\n')
    env = {"NEXUS_DATA_DIR": str(tmp_path / "d"), "NEXUS_CONFIG": str(other)}
    s = load_settings(env=env)
    assert s.data_dir == tmp_path / "d"
    assert s.sources["data_dir"] == "env NEXUS_DATA_DIR"
    assert s.durability is Durability.IMMEDIATE
    assert s.config_file == other


def test_relative_paths_are_relative_to_the_data_directory(tmp_path: Path) -> None:
    write_toml(tmp_path, 'metastore = "meta/root.redb"\nrecord_store = "sqlite"\n')
    s = load_settings(tmp_path, env=CLEAN_ENV)
    assert s.metastore == str(tmp_path / "meta" / "root.redb")
    assert s.record_store.endswith(f"{tmp_path}/records.db")


def test_services_forms(tmp_path: Path) -> None:
    assert load_settings(tmp_path, env={"NEXUS_SERVICES": ""}).services == ()
    assert load_settings(tmp_path, env={"NEXUS_SERVICES": "all"}).services is None
    assert load_settings(tmp_path, env={"NEXUS_SERVICES": "b, a,b"}).services == ("b", "a")


def test_env_placeholders_in_files(tmp_path: Path) -> None:
    write_toml(
        tmp_path,
        """
        record_store = "postgresql+psycopg://nexus@${PGHOST:-127.0.0.1}/${PGDB}"
        """,
    )
    s = load_settings(tmp_path, env={"PGDB": "meta"})
    assert s.record_store == "postgresql+psycopg://nexus@127.0.0.1/meta"
    with pytest.raises(ConfigError, match=r"record_store .*\$\{PGDB\}, which is not set"):
        load_settings(tmp_path, env=CLEAN_ENV)


def test_passwords_are_redacted_for_display(tmp_path: Path) -> None:
    env = {"NEXUS_RECORD_STORE": "postgresql+psycopg://nexus:s3cret@db.local/nexus"}
    s = load_settings(tmp_path, env=env)
    assert s.record_store == env["NEXUS_RECORD_STORE"]  # the real value is kept
    shown = dict((k, v) for k, v, _src in s.rows())
    assert "s3cret" not in json.dumps(s.as_dict())
    assert shown["record_store"] == "postgresql+psycopg://nexus:***@db.local/nexus"


def test_write_config_round_trips(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, {"durability": "immediate", "services": ["hooks"], "flush_interval": 0.5}
    )
    s = load_settings(tmp_path, env=CLEAN_ENV)
    assert (s.durability, s.services, s.flush_interval) == (
        Durability.IMMEDIATE,
        ("hooks",),
        0.5,
    )
    assert s.sources["durability"] == f"file {path}"
    with pytest.raises(ConfigError, match="unknown setting"):
        write_config(tmp_path, {"colour": "blue"})


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('colour = "blue"\n', r"unknown setting\(s\) colour; known: distro, durability"),
        ("durability = [\n", "is not valid TOML"),
        ('[kernel]\ndurability = "deferred"\n', r"top-level keys, not tables \(found \[kernel\]"),
        ('durability = "sometimes"\n', "is not a durability; use immediate or deferred"),
        ("durability = 1\n", "expected a string"),
        ('flush_interval = "soon"\n', "is not a number of seconds"),
        ("flush_interval = -1\n", "out of range"),
        ('record_store = "records.db"\n', "is not a SQLAlchemy URL"),
        ('record_store = "mysql://db/nexus"\n', r"no recordstore driver for scheme 'mysql'"),
        ('cache_store = "memcached://127.0.0.1"\n', r"no cachestore driver .*available: null"),
        ('cache_store = "localhost:6379"\n', "is not a URL"),
        ('object_store = "ftp://host/x"\n', r"no objectstore driver for scheme 'ftp'"),
        ('object_store = "local:"\n', "local: needs a directory"),
        ('metastore = "lmdb:///x"\n', r"no metastore driver for scheme 'lmdb'"),
        ('services = ["Bad Name"]\n', "is not a valid service name"),
        ("services = 3\n", "expected a list of service names"),
    ],
)
def test_bad_config_files_fail_with_one_clear_message(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(tmp_path, env=CLEAN_ENV)
    assert str(path) in str(info.value)  # says which file
    assert "\n" not in str(info.value)


def test_bad_env_values_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cache_store \(env NEXUS_CACHE_STORE\)"):
        load_settings(tmp_path, env={"NEXUS_CACHE_STORE": "nope://x"})
    with pytest.raises(ConfigError, match=r"durability \(env NEXUS_DURABILITY\)"):
        load_settings(tmp_path, env={"NEXUS_DURABILITY": "eventually"})


def test_missing_explicit_config_file_and_unknown_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path, config_file=tmp_path / "missing.toml", env=CLEAN_ENV)
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(tmp_path, overrides={"speed": "fast"}, env=CLEAN_ENV)


def test_validate_values_checks_a_partial_table() -> None:
    validate_values({"cache_store": "redis://h/0", "services": ["hooks"]}, "distro x")
    with pytest.raises(ConfigError, match=r"^distro x: unknown setting\(s\) shards"):
        validate_values({"shards": 3}, "distro x")


# ------------------------------------------------------------- the driver registry


def test_scheme_of_each_kind() -> None:
    assert registry.scheme_of("recordstore", "postgresql+psycopg://u@h/db") == "postgresql"
    assert registry.scheme_of("metastore", "/srv/nexus/m.redb") == "redb"
    assert registry.scheme_of("metastore", "memory:") == "memory"
    assert registry.scheme_of("cachestore", "REDIS://h") == "redis"
    with pytest.raises(ConfigError, match="has no scheme"):
        registry.scheme_of("cachestore", "h:6379")
    with pytest.raises(ConfigError, match="unknown driver kind"):
        registry.available("blobstore")


@pytest.fixture
def fake_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed third-party distribution declaring ``objectstore.fakestore`` in the
    ``nexusfs.drivers`` group (a real dist-info on ``sys.path``)."""
    site = tmp_path / "site"
    dist = site / "nexus_fake_driver-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nexus-fake-driver\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[nexusfs.drivers]\nobjectstore.fakestore = nexus_fake_driver:open_store\n"
    )
    (site / "nexus_fake_driver.py").write_text(
        textwrap.dedent(
            """
            from nexusfs.drivers.objectstore.memory import MemoryObjectStore

            OPENED = []

            def open_store(uri, *, durability):
                OPENED.append(uri)
                return MemoryObjectStore(uri, durability)
            """
        )
    )
    monkeypatch.syspath_prepend(str(site))
    yield "fakestore"
    sys.modules.pop("nexus_fake_driver", None)
    registry._loaded.pop("objectstore.fakestore", None)


def test_third_party_driver_through_entry_points(tmp_path: Path, fake_driver: str) -> None:
    assert registry.available("objectstore")[fake_driver] == "nexus_fake_driver:open_store"
    validate_values({"object_store": "fakestore://bucket"}, "test")
    from nexusfs.drivers.objectstore import open_object_store

    store = open_object_store("fakestore://bucket/x")
    import nexus_fake_driver  # type: ignore[import-not-found]

    assert nexus_fake_driver.OPENED == ["fakestore://bucket/x"]
    assert store.exists("0" * 64) is False
    with pytest.raises(MountError, match=r"unknown object store URI scheme 'nope'.*fakestore://"):
        open_object_store("nope://x")


def test_a_driver_that_fails_to_import_is_a_config_error(
    tmp_path: Path, fake_driver: str
) -> None:
    (tmp_path / "site" / "nexus_fake_driver.py").write_text("raise ImportError('no boto')\n")
    with pytest.raises(ConfigError, match=r"objectstore.fakestore driver .* cannot be loaded"):
        registry.resolve("objectstore", "fakestore://b")


# ---------------------------------------------------------------- the kernel obeys


@needs_native
def test_connect_uses_the_configured_drivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_driver: str
) -> None:
    data = tmp_path / "data"
    write_toml(data, 'metastore = "memory:"\nobject_store = "fakestore://root"\n')
    for key in ("NEXUS_METASTORE", "NEXUS_OBJECT_STORE", "NEXUS_CONFIG", "NEXUS_DURABILITY"):
        monkeypatch.delenv(key, raising=False)
    with nexusfs.connect(data_dir=data) as fs:
        fs.write("/big", b"x" * 100_000)  # beyond the inline limit: goes to the store
        assert [m.uri for m in fs.mounts()] == ["fakestore://root"]
    assert not (data / "metastore.redb").exists()  # memory metastore: nothing on disk
    with nexusfs.connect(data_dir=data) as fs:
        assert fs.readdir("/") == [] or list(fs.readdir("/")) == []


@needs_native
def test_config_show_prints_values_and_sources(tmp_path: Path) -> None:
    data = tmp_path / "d"
    write_toml(data, 'durability = "immediate"\n')
    env = {"NEXUS_CACHE_STORE": "redis://u:pw@127.0.0.1:6390/0"}
    result = CliRunner().invoke(cli, ["--data-dir", str(data), "config", "show", "--json"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)["settings"]
    assert shown["durability"] == {"value": "immediate", "source": f"file {data / 'nexus.toml'}"}
    assert shown["cache_store"] == {
        "value": "redis://u:***@127.0.0.1:6390/0",
        "source": "env NEXUS_CACHE_STORE",
    }
    table = CliRunner().invoke(cli, ["--data-dir", str(data), "config", "show"], env=env)
    assert table.exit_code == 0
    assert "env NEXUS_CACHE_STORE" in table.output and "pw@" not in table.output


@needs_native
def test_cli_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d"
    write_toml(data, 'cache_store = "memcached://x"\n')
    env = {**os.environ, "NEXUS_DATA_DIR": str(data)}
    env.pop("NEXUS_CACHE_STORE", None)
    for argv in (["ls", "/"], ["up"], ["config", "show"]):
        proc = subprocess.run(
            [sys.executable, "-m", "nexusfs.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 1, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nexus: config error:"), proc.stderr
        assert "memcached" in lines[0]
    assert not (data / "run" / "kernel.json").exists()  # `up` started nothing


def test_builtin_drivers_are_declared_as_entry_points() -> None:
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["entry-points"]["nexusfs.drivers"]
    assert declared == registry.BUILTIN


def test_admins_setting(tmp_path: Path) -> None:
    s = load_settings(tmp_path, env={"NEXUS_ADMINS": "user:alice, service:backup,user:alice"})
    assert s.admins == ("user:alice", "service:backup")
    assert load_settings(tmp_path, env=CLEAN_ENV).admins == ()
    with pytest.raises(ConfigError, match="is not a subject"):
        load_settings(tmp_path, env={"NEXUS_ADMINS": "alice"})


@needs_native
def test_init_and_up_with_a_distro(tmp_path: Path) -> None:
    """`nexus init --distro` writes nexus.toml naming the distro, whose [config] then
    shows as the source of its values; `nexus up --distro` boots it (an embedded distro
    has no kernel process to start); a second init for another distro is refused."""
    data = tmp_path / "d"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["NEXUS_DATA_DIR"] = str(data)

    def nexus(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nexusfs.cli", *argv],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip

    init = nexus("init", "--distro", "nexus-server")
    assert init.returncode == 0, init.stderr
    assert 'distro = "nexus-server"' in (data / "nexus.toml").read_text()
    shown = json.loads(nexus("config", "show", "--json").stdout)["settings"]
    assert shown["distro"]["value"] == "nexus-server"
    assert shown["services"] == {"value": "hooks", "source": "distro nexus-server"}
    assert shown["cache_store"]["source"] == "distro nexus-server"

    again = nexus("init", "--distro", "nexus-cloud")
    assert again.returncode == 1 and "already names distro 'nexus-server'" in again.stderr

    embedded = nexus("up", "--distro", "nexus-embedded")
    assert embedded.returncode == 1 and "runs the kernel in-process" in embedded.stderr

    env["NEXUS_SERVICES"] = ""  # boot fast: the composition, minus its workers
    up = nexus("up", "--distro", "nexus-server")
    try:
        assert up.returncode == 0, up.stderr
        status = json.loads(nexus("status", "--json").stdout)
        assert status["running"] and status["distro"] == "nexus-server"
    finally:
        nexus("down")
