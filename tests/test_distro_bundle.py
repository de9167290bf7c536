"""Offline bundles (``nexus distro build``), end to end.

One session-scoped build of the ``nexus-server`` bundle from this source tree (the
kernel wheel really is compiled by maturin in release mode; set
``NEXUS_TEST_WHEEL_CACHE=DIR`` to keep the Rust build and the wheels between runs). It
is then installed with its own ``install.sh`` into a fresh virtual environment with
no index (``PIP_INDEX_URL`` points at a dead address to prove nothing is fetched),
started with ``bin/nexus-up``, used (write + cat, the hooks service running) and
stopped. Building needs the package index (dependencies are downloaded) and cargo.
Marked ``slow``: about two minutes with a warm cache, three with a cold Rust build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from nexusfs.cli.app import cli
from nexusfs.distro import load_distro
from nexusfs.distro.bundle import (
    BundleError,
    BundleResult,
    build_bundle,
)

REPO = Path(__file__).resolve().parents[1]
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
DEAD_INDEX = "http://127.0.0.1:9/simple"

if "distro" not in cli.commands:  # until nexusfs/cli/app.py registers the group
    from nexusfs.cli.distro import COMMANDS

    for _command in COMMANDS:
        cli.add_command(_command)

pytestmark = [
    pytest.mark.skipif(
        shutil.which("cargo") is None and not (Path.home() / ".cargo/bin/cargo").exists(),
        reason="building the kernel wheel needs cargo",
    ),
    # ~2 min with a warm wheel cache, ~3 with a cold Rust build: several real venvs
    pytest.mark.slow,
]


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("NEXUS_TEST_WHEEL_CACHE")
    return Path(given) if given else tmp_path_factory.mktemp("wheel-cache")


#: Package -> digest of the sources its wheel was built from (or found cached for) in
#: the session's bundle, as build_bundle logged it. The checkout may be edited by
#: others while the tests run; the digest says whether the sources were the same.
_BUILT_FROM: dict[str, str] = {}
_SOURCES = re.compile(r"^(?:\[[ \d.]+s\] )?(nexusfs(?:-hooks)?): (.*)sources ([0-9a-f]{12})", re.M)


def _sources(log: str) -> dict[str, str]:
    return {m[1]: m[3] for m in _SOURCES.finditer(log)}


@pytest.fixture(scope="session")
def server_bundle(tmp_path_factory: pytest.TempPathFactory, wheel_cache: Path) -> BundleResult:
    out = tmp_path_factory.mktemp("bundles") / "nexus-server"
    lines: list[str] = []
    result = build_bundle("nexus-server", out, wheel_cache=wheel_cache, log=lines.append)
    _BUILT_FROM.update(_sources("\n".join(lines)))
    assert set(_BUILT_FROM) == {"nexusfs", "nexusfs-hooks"}, lines
    return result


def _offline_env(home: Path) -> dict[str, str]:
    """A clean environment for the target machine: no venv, no NEXUS_*, a dead index."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NEXUS_", "PIP_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(HOME=str(home), PIP_INDEX_URL=DEAD_INDEX, PIP_EXTRA_INDEX_URL=DEAD_INDEX)
    return env


def _sh(
    cmd: list[str], env: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env, input=input, capture_output=True, text=True, timeout=300, check=False
    )


# --------------------------------------------------------------------- the bundle


@pytest.fixture
def kernel_wheel(server_bundle: BundleResult) -> Path:
    """The kernel wheel of the session's bundle (to build other bundles quickly)."""
    (wheel,) = (server_bundle.path / "wheels").glob("nexusfs-0*.whl")
    return wheel


def test_bundle_layout_and_lock(server_bundle: BundleResult) -> None:
    out = server_bundle.path
    for name in ("install.sh", "bin/nexus", "bin/nexus-up", "requirements.lock",
                 "distro.toml", "bundle.json", "README.txt"):  # fmt: skip
        assert (out / name).is_file(), name
    assert os.access(out / "install.sh", os.X_OK)
    assert load_distro(out / "distro.toml").name == "nexus-server"

    lock = (out / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9-]+)==\S+ \\\n\s+--hash=sha256:([0-9a-f]{64})$", lock, re.M))
    wheels = sorted((out / "wheels").glob("*.whl"))
    assert len(pins) == len(wheels) == len(server_bundle.wheels)
    for wheel in wheels:
        name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        assert pins[name] == hashlib.sha256(wheel.read_bytes()).hexdigest(), wheel.name
    for needed in ("nexusfs", "nexusfs-hooks", "click", "sqlalchemy", "msgpack", "pluggy"):
        assert needed in pins, needed
    assert "psycopg" not in pins  # nexus-server takes no extras

    info = json.loads((out / "bundle.json").read_text())
    assert info["distro"] == "nexus-server"
    assert info["services"] == ["hooks"]
    assert info["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_bundle_installs_and_runs_without_an_index(
    server_bundle: BundleResult, tmp_path: Path
) -> None:
    bundle = tmp_path / "moved-bundle"  # a bundle may be moved before installing
    shutil.copytree(server_bundle.path, bundle, symlinks=True)
    env = _offline_env(tmp_path)
    install = _sh([str(bundle / "install.sh"), "--python", BASE_PYTHON], env)
    assert install.returncode == 0, install.stdout + install.stderr
    assert "Initialized NexusFS" in install.stdout
    venv_python = bundle / "venv" / "bin" / "python"
    assert venv_python.exists()
    config = (bundle / "data" / "nexus.toml").read_text()
    assert 'distro = "nexus-server"' in config

    nexus = str(bundle / "bin" / "nexus")
    up = _sh([str(bundle / "bin" / "nexus-up")], env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        write = _sh([nexus, "write", "/hello.txt", "-"], env, input="hello offline\n")
        assert write.returncode == 0, write.stderr
        cat = _sh([nexus, "cat", "/hello.txt"], env)
        assert cat.returncode == 0 and cat.stdout == "hello offline\n", cat.stderr
        status = _sh([nexus, "status", "--json"], env)
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["running"] is True
        assert info["data_dir"] == str(bundle / "data")
        services = {s["name"]: s["state"] for s in info["services"]}
        assert services == {"hooks": "running"}
        # the installed kernel is the bundle's, not this checkout's
        where = _sh([str(venv_python), "-c", "import nexusfs; print(nexusfs.__file__)"], env)
        assert str(bundle / "venv") in where.stdout
    finally:
        down = _sh([nexus, "down"], env)
    assert down.returncode == 0, down.stderr
    assert _sh([nexus, "status"], env).returncode == 3  # no kernel process any more


def test_tampered_wheel_is_refused(server_bundle: BundleResult, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(server_bundle.path, bundle)
    (wheel,) = (bundle / "wheels").glob("click-*.whl")
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    result = _sh([str(bundle / "install.sh"), "--python", BASE_PYTHON], _offline_env(tmp_path))
    assert result.returncode != 0
    assert "do not match the hashes" in (result.stdout + result.stderr).lower()


def test_install_refuses_another_python(server_bundle: BundleResult, tmp_path: Path) -> None:
    fake = tmp_path / "python-old"
    fake.write_text("#!/bin/sh\necho 3.8\n")
    fake.chmod(0o755)
    result = _sh([str(server_bundle.path / "install.sh"), "--python", str(fake)],
                 _offline_env(tmp_path))  # fmt: skip
    assert result.returncode == 1
    assert "wheels of this bundle are for Python" in result.stderr
    assert not (server_bundle.path / "venv").exists()


def test_rebuild_reuses_the_wheel_cache_and_force_replaces(
    server_bundle: BundleResult, wheel_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    args = ["distro", "build", "nexus-server", "-o", str(out), "--wheel-cache", str(wheel_cache)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    now = _sources(first.output)
    assert set(now) == {"nexusfs", "nexusfs-hooks"}, first.output
    for name, digest in now.items():
        line = next(ln for ln in first.output.splitlines() if f"] {name}: " in ln)
        if digest == _BUILT_FROM[name]:  # same sources as the session's build: cached
            assert "(cached; sources" in line, line
        # else: someone edited the checkout meanwhile; built or cached, both are right
    if now == _BUILT_FROM:
        lock = (out / "requirements.lock").read_text()
        assert lock == server_bundle.lock_file.read_text()

    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1
    assert "is not empty (--force replaces a bundle)" in refused.output
    (out / "marker").write_text("old bundle")
    forced = CliRunner().invoke(cli, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert not (out / "marker").exists()
    assert (out / "bundle.json").is_file()


def test_bundle_of_a_manifest_file(tmp_path: Path, kernel_wheel: Path, wheel_cache: Path) -> None:
    """A distro given as a file (not shipped in nexusfs) travels inside the bundle."""
    source = tmp_path / "src" / "acme.toml"
    source.parent.mkdir()
    source.write_text(
        '[distro]\nname = "acme"\nsummary = "Acme files"\nmode = "daemon"\n'
        '[config]\ndurability = "immediate"\n[services]\nenable = ["hooks"]\n'
    )
    out = tmp_path / "acme-bundle"
    result = build_bundle(source, out, kernel_wheel=kernel_wheel, wheel_cache=wheel_cache)
    assert result.distro == "acme"
    source.unlink()  # the target machine does not have it
    env = _offline_env(tmp_path)
    install = _sh([str(out / "install.sh"), "--python", BASE_PYTHON], env)
    assert install.returncode == 0, install.stdout + install.stderr
    installed = out / "venv" / "share" / "nexusfs" / "distros" / "acme.toml"
    assert installed.read_text() == (out / "distro.toml").read_text()
    assert f'distro = "{installed}"' in (out / "data" / "nexus.toml").read_text()
    shown = _sh([str(out / "bin" / "nexus"), "config", "show", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    settings = json.loads(shown.stdout)["settings"]
    assert settings["durability"]["value"] == "immediate"
    assert settings["services"]["value"] == "hooks"


# --------------------------------------------------------------------- bad arguments


def test_service_package_without_the_service_fails(tmp_path: Path, kernel_wheel: Path) -> None:
    """A plugin source that does not declare the service the distro takes from it."""
    fake = tmp_path / "tree" / "plugins" / "hooks"
    (fake / "nexusfs_hooks").mkdir(parents=True)
    (fake / "nexusfs_hooks" / "__init__.py").write_text("")
    (fake / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "nexusfs-hooks"\nversion = "0.0.1"\n'
        '[tool.setuptools]\npackages = ["nexusfs_hooks"]\n'
    )
    out = tmp_path / "out"
    with pytest.raises(BundleError, match=r"does not provide service\(s\) hooks"):
        build_bundle("nexus-server", out, kernel_wheel=kernel_wheel, source_root=tmp_path / "tree")
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))  # the staging directory is gone
    assert not (fake / "build").exists()  # built from a copy


@pytest.fixture(autouse=True)
def _no_stray_kernels(tmp_path: Path) -> Iterator[None]:
    yield
    for state in tmp_path.glob("**/run/kernel.json"):  # a failed test left a daemon
        pid = json.loads(state.read_text()).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
