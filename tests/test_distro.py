"""Tests of distro manifests (``nexusfs.distro``) and ``nexus distro list | show``.

The shipped manifests must load and validate against what is really installed here
(the ``nexusfs.services`` and ``nexusfs.drivers`` entry points); every kind of bad
manifest must fail with a :class:`DistroError` naming the file, the key and what is
allowed. The CLI is driven in-process with click's ``CliRunner``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import pytest
from click.testing import CliRunner, Result

from nexusfs.cli.app import cli
from nexusfs.distro import (
    BUILTIN_DIR,
    DistroError,
    explain,
    explain_text,
    list_distros,
    load_distro,
    read_manifest,
)
from nexusfs.distro.bundle import BundleError, build_bundle, kernel_source_root
from nexusfs.errors import ConfigError, NexusError

REPO = Path(__file__).resolve().parents[1]
BUILTINS = ("nexus-cloud", "nexus-embedded", "nexus-server")

if "distro" not in cli.commands:  # until nexusfs/cli/app.py registers the group
    from nexusfs.cli.distro import COMMANDS

    for _command in COMMANDS:
        cli.add_command(_command)

GOOD = """
[distro]
name = "custom"
summary = "A test distro"
mode = "daemon"

[config]
durability = "immediate"
record_store = "sqlite"
cache_store = "none"

[services]
enable = ["hooks"]

[services.packages]
hooks = "nexusfs-hooks"
"""


class Write(Protocol):
    def __call__(self, text: str, name: str = "custom") -> Path: ...


@pytest.fixture
def manifest(tmp_path: Path) -> Write:
    """``manifest(text)``: write ``text`` as ``custom.toml`` in a fresh directory."""
    count = 0

    def write(text: str, name: str = "custom") -> Path:
        nonlocal count
        count += 1
        folder = tmp_path / f"m{count}"
        folder.mkdir()
        path = folder / f"{name}.toml"
        path.write_text(text)
        return path

    return write


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update(extra)
    return env


def _error(path: Path, env: dict[str, str] | None = None) -> DistroError:
    with pytest.raises(DistroError) as info:
        read_manifest(path, env=_env() if env is None else env)
    err = info.value
    assert str(path) in str(err), str(err)
    return err


# --------------------------------------------------------------------- shipped distros


def test_builtin_distros_load_and_validate() -> None:
    entries = {e.name: e for e in list_distros(_env())}
    assert set(BUILTINS) <= set(entries)
    for name in BUILTINS:
        assert entries[name].error is None, entries[name].error
        distro = load_distro(name, env=_env())
        assert distro.name == name
        assert distro.source == BUILTIN_DIR / f"{name}.toml"

    embedded = load_distro("nexus-embedded", env=_env())
    assert embedded.mode == "embedded"
    assert embedded.config["services"] == []
    assert "record_store" not in embedded.config

    server = load_distro("nexus-server", env=_env())
    assert server.mode == "daemon"
    assert server.config == {
        "durability": "deferred",
        "record_store": "sqlite",
        "cache_store": "none",
        "object_store": "local:objects",
        "services": ["hooks"],
    }
    assert [(s.name, s.package) for s in server.services] == [("hooks", "nexusfs-hooks")]
    assert server.services[0].installed is not None  # nexusfs-hooks is installed here

    cloud = load_distro("nexus-cloud", env=_env())
    assert cloud.mode == "daemon"
    assert set(cloud.extras) == {"postgres", "redis", "s3"}
    assert cloud.service_names == ("hooks", "rebac")
    assert cloud.settings["record_store"].startswith("${NEXUS_PG_URL:-postgresql")


def test_top_level_distros_are_the_packaged_manifests() -> None:
    """distros/*.toml must not drift from the canonical copies inside the package."""
    packaged = sorted(p.name for p in BUILTIN_DIR.glob("*.toml"))
    top = sorted(p.name for p in (REPO / "distros").glob("*.toml"))
    assert packaged == top == [f"{n}.toml" for n in BUILTINS]
    for name in packaged:
        link = REPO / "distros" / name
        assert link.read_bytes() == (BUILTIN_DIR / name).read_bytes()
        assert link.resolve() == (BUILTIN_DIR / name).resolve()


def test_cloud_placeholders_read_the_environment() -> None:
    cloud = load_distro("nexus-cloud", env=_env())
    defaults = cloud.resolved_settings(_env())
    assert defaults["record_store"] == "postgresql+psycopg://nexus@localhost:5432/nexus"
    assert defaults["cache_store"] == "redis://localhost:6379/0"
    assert defaults["object_store"] == "local:objects"
    env = _env(NEXUS_PG_URL="postgresql+psycopg://app@db.internal/nx", NEXUS_S3_URL="")
    resolved = cloud.resolved_settings(env)
    assert resolved["record_store"] == "postgresql+psycopg://app@db.internal/nx"
    assert resolved["object_store"] == "local:objects"  # empty counts as unset


def test_settings_layer_feeds_load_settings(tmp_path: Path) -> None:
    """The contract with nexusfs.config: a distro's config becomes the settings."""
    from nexusfs.config import load_settings

    data = tmp_path / "data"
    got = load_settings(data, overrides={"distro": "nexus-server"}, env=_env())
    assert got.services == ("hooks",)
    assert got.record_store == f"sqlite:///{data.absolute() / 'records.db'}"
    assert got.cache_store is None
    embedded = load_settings(data, overrides={"distro": "nexus-embedded"}, env=_env())
    assert embedded.services == ()


def test_lookup_by_path_and_distro_path(manifest: Write, tmp_path: Path) -> None:
    path = manifest(GOOD)
    assert load_distro(path, env=_env()).name == "custom"
    assert load_distro(str(path), env=_env()).source == path

    env = _env(NEXUS_DISTRO_PATH=str(path.parent))
    assert load_distro("custom", env=env).source == path
    names = [e.name for e in list_distros(env)]
    assert "custom" in names and "nexus-server" in names

    # a user directory shadows a built-in name
    shadow = manifest(GOOD.replace('"custom"', '"nexus-server"'), name="nexus-server")
    env = _env(NEXUS_DISTRO_PATH=str(shadow.parent))
    assert load_distro("nexus-server", env=env).source == shadow


def test_unknown_distro_name_lists_the_available_ones() -> None:
    with pytest.raises(DistroError) as info:
        load_distro("nexus-sevrer", env=_env())
    text = str(info.value)
    assert "unknown distro 'nexus-sevrer'" in text
    for name in BUILTINS:
        assert name in text


def test_empty_distro_name() -> None:
    with pytest.raises(DistroError, match="empty distro name"):
        load_distro("", env=_env())


def test_file_name_must_match_the_declared_name(manifest: Write) -> None:
    path = manifest(GOOD, name="other")
    with pytest.raises(DistroError) as info:
        load_distro("other", env=_env(NEXUS_DISTRO_PATH=str(path.parent)))
    assert info.value.key == "distro.name"
    assert "declares name 'custom'" in str(info.value)


def test_distro_error_is_a_config_error(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('mode = "daemon"', 'mode = "cluster"')))
    assert isinstance(err, ConfigError)
    assert isinstance(err, ValueError)
    assert isinstance(err, NexusError)
    assert err.key == "distro.mode"
    assert err.file is not None


# --------------------------------------------------------------------- bad manifests


def test_missing_file(tmp_path: Path) -> None:
    err = _error(tmp_path / "absent.toml")
    assert "no such distro manifest" in str(err)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    assert "is a directory" in str(_error(folder))


def test_invalid_toml(manifest: Write) -> None:
    assert "not valid TOML" in str(_error(manifest("[distro\nname = 1")))


def test_unknown_table(manifest: Write) -> None:
    err = _error(manifest(GOOD + "\n[servics]\nx = 1\n"))
    assert err.key == "servics"
    assert "unknown table [servics]" in str(err)
    assert "did you mean 'services'" in str(err)
    assert "[distro], [config], [services], [bundle]" in str(err)


def test_unknown_key_with_suggestion(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace("summary =", "summery =")))
    assert err.key == "distro.summery"
    assert "did you mean 'summary'" in str(err)
    assert "allowed in [distro]: format, name, summary, mode, description" in str(err)


def test_unknown_config_key(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace("[config]", "[config]\ncompression = 'zstd'")))
    assert err.key == "config.compression"
    assert "durability, flush_interval, metastore" in str(err)


def test_services_inside_config(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace("[config]", "[config]\nservices = ['hooks']")))
    assert err.key == "config.services"
    assert "[services] enable" in str(err)


def test_table_that_is_not_a_table(manifest: Write) -> None:
    err = _error(manifest('config = "fast"\n' + GOOD.replace("[config]", "[other]")))
    assert err.key == "config"
    assert "must be a table" in str(err)


def test_missing_distro_table(manifest: Write) -> None:
    assert "missing table [distro]" in str(_error(manifest("[bundle]\nextras = []\n")))


@pytest.mark.parametrize("key", ["name", "summary", "mode"])
def test_missing_required_key(manifest: Write, key: str) -> None:
    text = "\n".join(ln for ln in GOOD.splitlines() if not ln.startswith(f"{key} ="))
    err = _error(manifest(text))
    assert err.key == f"distro.{key}"
    assert "missing" in str(err)


def test_wrong_type_name(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('name = "custom"', "name = 3")))
    assert err.key == "distro.name"
    assert "expected a non-empty string" in str(err)


def test_bad_distro_name(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('name = "custom"', 'name = "My Distro"')))
    assert err.key == "distro.name"
    assert "not a distro name" in str(err)


def test_unknown_mode(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('mode = "daemon"', 'mode = "cluster"')))
    assert "unknown mode 'cluster'" in str(err)
    assert "embedded" in str(err) and "daemon" in str(err)


def test_unsupported_format(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace("[distro]", "[distro]\nformat = 2")))
    assert err.key == "distro.format"
    assert "format 1" in str(err)


def test_config_value_of_wrong_type(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('durability = "immediate"', "durability = true")))
    assert err.key == "config.durability"
    assert "expected a string or a number" in str(err)


def test_config_bad_durability(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('"immediate"', '"sometimes"')))
    assert err.key == "config.durability"
    assert "immediate or deferred" in str(err)


def test_config_bad_flush_interval(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace("[config]", "[config]\nflush_interval = -1")))
    assert err.key == "config.flush_interval"
    assert "out of range" in str(err)


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("cache_store", "memcached://127.0.0.1:11211", "cachestore"),
        ("record_store", "oracle://scott@db/orcl", "recordstore"),
        ("object_store", "ftp://files.example/blobs", "objectstore"),
        ("metastore", "rocksdb:///srv/meta", "metastore"),
    ],
)
def test_unknown_driver(manifest: Write, key: str, value: str, kind: str) -> None:
    text = GOOD.replace("[config]", f'[config]\n{key} = "{value}"')
    text = "\n".join(
        ln for ln in text.splitlines() if not (ln.startswith(f"{key} =") and value not in ln)
    )
    err = _error(manifest(text))
    assert err.key == f"config.{key}"
    assert f"no {kind} driver for scheme" in str(err)
    assert "available:" in str(err)


def test_unset_placeholder_is_deferred_to_start_up(manifest: Write) -> None:
    path = manifest(GOOD.replace('"sqlite"', '"${NEXUS_TEST_UNSET_DB}"'))
    distro = read_manifest(path, env=_env())
    assert distro.needs_env == ("NEXUS_TEST_UNSET_DB",)
    with pytest.raises(DistroError) as info:
        distro.resolved_settings(_env())
    assert info.value.key == "config.record_store"
    assert "${NEXUS_TEST_UNSET_DB}, which is not set" in str(info.value)
    # once set, it is validated like any value
    err = _error(path, _env(NEXUS_TEST_UNSET_DB="oracle://x/y"))
    assert err.key == "config.record_store"


def test_embedded_with_services(manifest: Write) -> None:
    text = GOOD.replace('mode = "daemon"', 'mode = "embedded"').replace(
        'record_store = "sqlite"\ncache_store = "none"\n', ""
    )
    err = _error(manifest(text))
    assert err.key == "services.enable"
    assert "an embedded distro runs no services (found hooks)" in str(err)


def test_embedded_with_a_service_store(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('mode = "daemon"', 'mode = "embedded"')))
    assert err.key == "config.record_store"
    assert "only services use it" in str(err)


def test_unknown_service(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('enable = ["hooks"]', 'enable = ["hooks", "hoks2"]')))
    assert err.key == "services.enable"
    assert "unknown service 'hoks2'" in str(err)
    assert "installed services:" in str(err) and "hooks" in str(err)


def test_service_from_another_package(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('hooks = "nexusfs-hooks"', 'hooks = "acme-hooks"')))
    assert err.key == "services.packages.hooks"
    assert "provided by the installed nexusfs-hooks" in str(err)


def test_installed_package_that_does_not_provide_the_service(manifest: Write) -> None:
    text = GOOD.replace('enable = ["hooks"]', 'enable = ["hooks", "audit"]')
    err = _error(manifest(text + 'audit = "click"\n'))  # click is installed, no services
    assert err.key == "services.packages.audit"
    assert "the installed click provides no such service" in str(err)


def test_service_from_a_package_not_installed_here(manifest: Write) -> None:
    text = GOOD.replace('enable = ["hooks"]', 'enable = ["hooks", "rebac2"]')
    distro = read_manifest(manifest(text + 'rebac2 = "nexusfs-rebac2"\n'), env=_env())
    spec = distro.services[1]
    assert (spec.name, spec.package, spec.installed) == ("rebac2", "nexusfs-rebac2", None)


def test_package_for_a_service_not_enabled(manifest: Write) -> None:
    err = _error(manifest(GOOD + 'agents = "nexusfs-agents"\n'))
    assert err.key == "services.packages.agents"
    assert "not in services.enable" in str(err)


def test_bad_package_name(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('"nexusfs-hooks"', '"nexusfs hooks!"')))
    assert err.key == "services.packages.hooks"
    assert "expected a distribution name" in str(err)


def test_packages_not_a_table(manifest: Write) -> None:
    text = GOOD.replace('[services.packages]\nhooks = "nexusfs-hooks"', "")
    err = _error(manifest(text.replace('enable = ["hooks"]', 'enable = ["hooks"]\npackages = 1')))
    assert err.key == "services.packages"


def test_services_all_is_refused(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('enable = ["hooks"]', 'enable = "all"')))
    assert err.key == "services.enable"
    assert "'all' belongs in nexus.toml" in str(err)


def test_service_list_of_wrong_type(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('enable = ["hooks"]', "enable = [1, 2]")))
    assert err.key == "services.enable"
    assert "expected a list of strings" in str(err)


def test_bad_and_duplicate_service_names(manifest: Write) -> None:
    err = _error(manifest(GOOD.replace('["hooks"]', '["Hooks!"]')))
    assert "not a service name" in str(err)
    err = _error(manifest(GOOD.replace('["hooks"]', '["hooks", "hooks"]')))
    assert "hooks listed twice" in str(err)


def test_unknown_extra(manifest: Write) -> None:
    err = _error(manifest(GOOD + '\n[bundle]\nextras = ["mysql"]\n'))
    assert err.key == "bundle.extras"
    assert "unknown extra 'mysql'" in str(err)
    assert "postgres" in str(err) and "redis" in str(err)


def test_driver_needs_its_extra(manifest: Write) -> None:
    text = GOOD.replace('"sqlite"', '"postgresql+psycopg://nexus@localhost/nexus"')
    err = _error(manifest(text))
    assert err.key == "bundle.extras"
    assert "recordstore.postgresql driver, which needs the 'postgres' extra" in str(err)
    ok = read_manifest(manifest(text + '\n[bundle]\nextras = ["postgres"]\n'), env=_env())
    assert ok.extras == ("postgres",)


# --------------------------------------------------------------------- explain and CLI


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_cli_list() -> None:
    result = _run("distro", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, mode in (("nexus-embedded", "embedded"), ("nexus-server", "daemon")):
        (row,) = [ln for ln in lines if ln.startswith(name + " ")]
        assert mode in row.split()


def test_cli_list_json_shows_an_invalid_manifest(manifest: Write) -> None:
    bad = manifest(GOOD.replace('mode = "daemon"', 'mode = "cluster"'), name="custom")
    result = _run("distro", "list", "--json", env={"NEXUS_DISTRO_PATH": str(bad.parent)})
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["nexus-server"]["mode"] == "daemon"
    assert rows["nexus-server"]["services"] == ["hooks"]
    assert rows["custom"]["mode"] is None
    assert "unknown mode 'cluster'" in rows["custom"]["error"]


def test_cli_show_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = _run("--data-dir", str(data), "distro", "show", "nexus-server")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "mode      daemon" in out
    assert f"sqlite:///{data.absolute() / 'records.db'}" in out
    assert "driver recordstore.sqlite" in out
    assert "hooks" in out and "nexusfs-hooks" in out


def test_cli_show_json_resolves_placeholders(tmp_path: Path) -> None:
    url = "postgresql+psycopg://app@db.internal:5432/files"
    result = _run(
        "--data-dir", str(tmp_path), "distro", "show", "nexus-cloud", "--json",
        env={"NEXUS_PG_URL": url, "NEXUS_RECORD_STORE": "sqlite"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    rows = {r["setting"]: r for r in info["settings"]}
    assert rows["record_store"]["effective"] == url  # NEXUS_RECORD_STORE is not the distro
    assert rows["record_store"]["driver"]["name"] == "recordstore.postgresql"
    assert rows["cache_store"]["driver"]["extra"] == "redis"
    assert info["bundle"]["requirements"] == [
        "nexusfs[postgres,redis,s3]",
        "nexusfs-hooks",
        "nexusfs-rebac",
    ]


def test_cli_show_manifest_path_that_needs_environment(manifest: Write, tmp_path: Path) -> None:
    path = manifest(GOOD.replace('"sqlite"', '"${NEXUS_TEST_UNSET_DB}"'))
    result = _run("--data-dir", str(tmp_path), "distro", "show", str(path))
    assert result.exit_code == 0, result.output
    assert "needs environment: $NEXUS_TEST_UNSET_DB" in result.output


def test_cli_show_unknown_is_one_line() -> None:
    result = CliRunner().invoke(cli, ["distro", "show", "nope"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("nexus: config error: unknown distro 'nope'")
    assert len(result.output.strip().splitlines()) == 1


def test_explain_embedded_has_no_services(tmp_path: Path) -> None:
    info = explain(load_distro("nexus-embedded", env=_env()), tmp_path, _env())
    assert info["services"] == []
    assert info["bundle"]["requirements"] == ["nexusfs"]
    used = {r["setting"]: r["used"] for r in info["settings"]}
    assert used["record_store"] is False and used["object_store"] is True
    text = explain_text(info)
    assert "mode      embedded" in text and "(none)" in text
    assert "not used: no services run" in text


def test_check_installed_false_skips_only_the_installed_checks(manifest: Write) -> None:
    ghost = manifest(GOOD.replace('enable = ["hooks"]', 'enable = ["hooks", "ghost"]'))
    _error(ghost)  # unknown service when checked
    quick = read_manifest(ghost, env=_env(), check_installed=False)
    assert quick.checked_installed is False
    assert quick.service_names == ("hooks", "ghost")
    assert all(s.installed is None for s in quick.services)
    assert quick.config["services"] == ["hooks", "ghost"]
    bad = manifest(GOOD.replace('mode = "daemon"', 'mode = "cluster"'))
    with pytest.raises(DistroError, match="unknown mode"):
        read_manifest(bad, env=_env(), check_installed=False)


# --------------------------------------------------------------------- bundle arguments
# (bundles are built and installed for real in test_distro_bundle.py, marked slow)


def test_output_that_is_not_a_bundle_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="holds no bundle"):
        build_bundle("nexus-embedded", out, kernel_wheel=tmp_path / "unused.whl", force=True)
    assert (out / "notes.txt").read_text() == "keep me"


def test_output_that_is_a_file(tmp_path: Path) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(BundleError, match="is a file"):
        build_bundle("nexus-embedded", out, kernel_wheel=tmp_path / "unused.whl")


def test_kernel_wheel_for_another_python(tmp_path: Path) -> None:
    wheel = tmp_path / "nexusfs-0.1.0-cp38-cp38-linux_x86_64.whl"
    wheel.write_bytes(b"PK")
    with pytest.raises(BundleError, match="built for cp38, not this Python"):
        build_bundle("nexus-embedded", tmp_path / "out", kernel_wheel=wheel)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))  # the staging directory is gone


def test_kernel_wheel_that_is_not_nexusfs(tmp_path: Path) -> None:
    wheel = tmp_path / "click-8.0.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    with pytest.raises(BundleError, match="not a nexusfs wheel"):
        build_bundle("nexus-embedded", tmp_path / "out", kernel_wheel=wheel)


def test_source_root_that_is_not_nexusfs(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="is not a nexusfs source tree"):
        build_bundle("nexus-embedded", tmp_path / "out", source_root=tmp_path)
    assert kernel_source_root() == REPO  # this checkout is found by default


def test_cli_build_error_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "data.txt").write_text("x")
    result = CliRunner().invoke(cli, ["distro", "build", "nexus-embedded", "-o", str(target)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"nexus: bundle error: output directory {target} is not empty (--force replaces a bundle)"
    )
