"""Offline bundles: a distro as a directory that installs and starts with no index.

:func:`build_bundle` writes::

    OUT/wheels/*.whl        the kernel (nexusfs, built from its source tree with its
                            Rust core), the distro's service packages, and every
                            dependency, all as wheels for this Python and platform
    OUT/requirements.lock   pip's --require-hashes format: name==version + sha256 of
                            every wheel in wheels/ (and nothing else)
    OUT/distro.toml         the distro manifest
    OUT/bundle.json         what was built: distro, Python, platform, wheels
    OUT/install.sh          creates a venv and installs the lock offline, then runs
                            'nexus init --distro' (see nexusfs.distro.launcher)
    OUT/bin/nexus           the installed CLI; bin/nexus-up ('nexus up --distro') too
                            for a daemon distro
    OUT/README.txt

Wheels come from: the kernel source tree (``pip wheel --no-deps``, which runs maturin
in release mode; never ``maturin develop``, so the in-place extension of a development
checkout is left alone) or ``kernel_wheel``; each service package from its source
directory (``<source>/plugins/*``, or the directory an installed package was installed
from), built from a copy so the source tree stays untouched, else from the package
index; dependencies via ``pip wheel``, which downloads wheels and builds any sdist into
a wheel. With ``wheel_cache``, built kernel and service wheels are kept under a digest
of their sources (and cargo's target directory is kept there), so a repeated build with
unchanged sources does not recompile Rust.

Invariants: the bundle is assembled in a sibling staging directory and moved into
place only when complete and verified (an offline ``pip install --dry-run`` of the
lock), so ``OUT`` is never left half-written; ``force`` replaces only a directory that
holds a previous bundle (its ``bundle.json``). Failure semantics: :class:`BundleError`
for bad arguments and for a failed build, download or verification (with the tail of
the tool's output); :class:`~nexusfs.distro.manifest.DistroError` for a bad distro.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from nexusfs.distro import launcher
from nexusfs.distro.catalog import BUILTIN_DIR, load_distro
from nexusfs.distro.manifest import Distro
from nexusfs.errors import NexusError

__all__ = [
    "BundleError",
    "BundleResult",
    "LockedWheel",
    "build_bundle",
    "kernel_digest",
    "kernel_source_root",
]

BUNDLE_FORMAT = 1
_IGNORED_DIRS = frozenset(
    {
        "__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis",
        ".venv", "build", "dist", "target", "nexus-data",
    }
)  # fmt: skip
_IGNORED_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".egg-info")
_WHEEL_NAME = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-[^-]+-[^-]+\.whl$"
)

Log = Callable[[str], None]


class BundleError(NexusError, RuntimeError):
    """A bundle could not be built: a bad argument (output directory, kernel wheel), a
    missing source, or a build, download or verification that failed. Nothing is left
    in the output directory."""

    code = "bundle_error"


@dataclass(frozen=True, slots=True)
class LockedWheel:
    """One wheel of a bundle, as pinned in its lock file."""

    name: str
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True, slots=True)
class BundleResult:
    """What :func:`build_bundle` wrote."""

    path: Path
    distro: str
    wheels: tuple[LockedWheel, ...]
    seconds: float

    @property
    def lock_file(self) -> Path:
        return self.path / "requirements.lock"

    @property
    def install_script(self) -> Path:
        return self.path / "install.sh"


def build_bundle(
    distro: Distro | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    wheel_cache: str | os.PathLike[str] | None = None,
    kernel_wheel: str | os.PathLike[str] | None = None,
    source_root: str | os.PathLike[str] | None = None,
    force: bool = False,
    log: Log | None = None,
) -> BundleResult:
    """Build the offline bundle of ``distro`` (a :class:`Distro`, name or manifest
    path) in ``out_dir`` (see the module doc).

    ``kernel_wheel``: use this nexusfs wheel instead of building one. ``source_root``:
    the nexusfs source tree (default: the one this nexusfs runs from, if it is a
    checkout); its ``plugins/`` directories are where service sources are looked up.
    ``wheel_cache``: keep built wheels there for the next build. ``log`` receives one
    line per step. Raises :class:`BundleError` (nothing is written to ``out_dir``).
    """
    started = time.monotonic()
    say = log or (lambda _line: None)
    chosen = distro if isinstance(distro, Distro) else load_distro(distro)
    out = Path(out_dir).expanduser().absolute()
    _check_out_dir(out, force)
    root = Path(source_root).expanduser().absolute() if source_root else kernel_source_root()
    cache = Path(wheel_cache).expanduser().absolute() if wheel_cache else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        wheels = stage / "wheels"
        wheels.mkdir()
        kernel = _kernel_wheel(kernel_wheel, root, cache, wheels, say)
        services = [
            _service_wheel(pkg, chosen, root, cache, wheels, say) for pkg in chosen.packages
        ]
        say("collecting dependencies (pip wheel)")
        extras = f"[{','.join(chosen.extras)}]" if chosen.extras else ""
        _pip(
            ["wheel", "--wheel-dir", str(wheels), "--find-links", str(wheels),
             f"{kernel}{extras}", *map(str, services)],
            "collecting the dependencies",
        )  # fmt: skip
        locked = _lock(wheels)
        _write_bundle_files(stage, chosen, locked)
        say("verifying the lock offline (pip install --dry-run --no-index)")
        _pip(
            ["install", "--dry-run", "--ignore-installed", "--no-index", "--only-binary=:all:",
             "--find-links", str(wheels), "--require-hashes", "-r",
             str(stage / "requirements.lock")],
            "verifying the bundle's lock file",
        )  # fmt: skip
        _move_into_place(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    say(f"bundle of {chosen.name} written to {out} ({len(locked)} wheels)")
    return BundleResult(out, chosen.name, tuple(locked), time.monotonic() - started)


def kernel_source_root() -> Path | None:
    """The nexusfs source tree this nexusfs runs from (an editable install or a
    checkout on ``sys.path``), or ``None`` for an installed wheel."""
    import nexusfs

    candidate = Path(nexusfs.__file__).resolve().parent.parent.parent
    if (candidate / "native" / "Cargo.toml").is_file() and _project_name(candidate) == "nexusfs":
        return candidate
    return None


def kernel_digest(root: Path) -> str:
    """The cache key of the kernel wheel built from source tree ``root``: a sha256 over
    every file that goes into it (build outputs and caches excluded) and this Python."""
    return _tree_digest(root, ["pyproject.toml", "README.md", "LICENSE", "native", "kernel"])


# ---------------------------------------------------------------------- wheels


def _kernel_wheel(
    given: str | os.PathLike[str] | None, root: Path | None, cache: Path | None, dest: Path,
    say: Log,
) -> Path:  # fmt: skip
    if given is not None:
        path = Path(given).expanduser().absolute()
        match = _WHEEL_NAME.match(path.name)
        if not path.is_file() or match is None or _canon(match["name"]) != "nexusfs":
            raise BundleError(f"--kernel-wheel {path}: not a nexusfs wheel file")
        tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
        if tag not in match["py"].split(".") and "abi3" not in path.name:
            raise BundleError(
                f"--kernel-wheel {path.name} is built for {match['py']}, not this Python ({tag})"
            )
        say(f"kernel: {path.name} (given)")
        return _copy(path, dest)
    if root is None:
        raise BundleError(
            "this nexusfs is not running from its source tree, so the kernel wheel cannot be "
            "built; pass --kernel-wheel PATH (or --source DIR)"
        )
    if not (root / "native" / "Cargo.toml").is_file() or _project_name(root) != "nexusfs":
        raise BundleError(f"{root} is not a nexusfs source tree (pyproject.toml + native/)")
    digest = kernel_digest(root)
    env = {}
    if cache is not None:
        env["CARGO_TARGET_DIR"] = str(cache / "cargo-target")
    return _cached_build("nexusfs", root, digest, cache, dest, say, env, copy_source=False)


def _service_wheel(
    package: str, distro: Distro, root: Path | None, cache: Path | None, dest: Path, say: Log
) -> Path:
    source = _service_source(package, root)
    if source is not None:
        digest = _tree_digest(source, ["."])
        wheel = _cached_build(package, source, digest, cache, dest, say, {}, copy_source=True)
    else:
        pin = _installed_version(package)
        spec = f"{package}=={pin}" if pin else package
        say(f"service package {spec}: from the package index")
        tmp = dest.parent / "download"
        _pip(["wheel", "--no-deps", "--wheel-dir", str(tmp), spec], f"fetching {spec}")
        found = sorted(tmp.glob("*.whl"))
        if len(found) != 1:
            raise BundleError(f"fetching {spec} produced {len(found)} wheels, expected 1")
        wheel = _copy(found[0], dest)
        shutil.rmtree(tmp)
    wanted = [s.name for s in distro.services if s.package and _canon(s.package) == _canon(package)]
    provided = _wheel_services(wheel)
    missing = [name for name in wanted if name not in provided]
    if missing:
        raise BundleError(
            f"{wheel.name} does not provide service(s) {', '.join(missing)} that distro "
            f"{distro.name} takes from it (it provides: {', '.join(provided) or 'none'})"
        )
    return wheel


def _service_source(package: str, root: Path | None) -> Path | None:
    """The source directory of ``package``: ``<root>/plugins/<dir>`` whose pyproject
    names it, else the local directory it was installed from (editable or not)."""
    if root is not None and (root / "plugins").is_dir():
        for candidate in sorted((root / "plugins").iterdir()):
            if _project_name(candidate) == _canon(package):
                return candidate
    try:
        text = distribution(package).read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    if not text:
        return None
    info = json.loads(text)
    url = str(info.get("url", ""))
    if "dir_info" in info and url.startswith("file://"):
        path = Path(url[len("file://") :])
        return path if _project_name(path) == _canon(package) else None
    return None


def _cached_build(
    name: str, source: Path, digest: str, cache: Path | None, dest: Path, say: Log,
    env: dict[str, str], *, copy_source: bool,
) -> Path:  # fmt: skip
    slot = cache / f"{_canon(name)}-{digest[:20]}" if cache is not None else None
    if slot is not None:
        found = sorted(slot.glob("*.whl"))
        if len(found) == 1:
            say(f"{name}: {found[0].name} (cached; sources {digest[:12]} unchanged)")
            return _copy(found[0], dest)
    rust = " (Rust, release)" if name == "nexusfs" else ""
    say(f"{name}: building a wheel from {source}{rust} (sources {digest[:12]})")
    with tempfile.TemporaryDirectory(prefix="nexus-bundle-") as tmp:
        build_dir = source
        if copy_source:  # setuptools writes build/ and *.egg-info into the tree it builds
            build_dir = Path(tmp) / "src"
            shutil.copytree(source, build_dir, ignore=_ignore)
        out = Path(tmp) / "out"
        _pip(
            ["wheel", "--no-deps", "--wheel-dir", str(out), str(build_dir)],
            f"building the {name} wheel",
            env=env,
        )
        built = sorted(out.glob("*.whl"))
        if len(built) != 1:
            raise BundleError(f"building {name} produced {len(built)} wheels, expected 1")
        if slot is not None:
            slot.mkdir(parents=True, exist_ok=True)
            _copy(built[0], slot)
        return _copy(built[0], dest)


def _lock(wheels: Path) -> list[LockedWheel]:
    locked: dict[str, LockedWheel] = {}
    for path in sorted(wheels.glob("*.whl")):
        match = _WHEEL_NAME.match(path.name)
        if match is None:
            raise BundleError(f"{path.name}: not a wheel file name")
        name = _canon(match["name"])
        if name in locked:
            raise BundleError(
                f"two wheels of {name}: {locked[name].filename} and {path.name}; a bundle "
                "pins one version of each package"
            )
        locked[name] = LockedWheel(name, match["version"], path.name, _sha256(path))
    leftovers = [p.name for p in wheels.iterdir() if p.suffix != ".whl"]
    if leftovers:
        raise BundleError(f"pip left files that are not wheels: {', '.join(leftovers)}")
    return sorted(locked.values(), key=lambda w: w.name)


# ---------------------------------------------------------------------- bundle files


def _write_bundle_files(stage: Path, distro: Distro, locked: Sequence[LockedWheel]) -> None:
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [
        f"# Lock file of the NexusFS distro bundle {distro.name}: every wheel in wheels/,",
        "# pinned to its version and sha256. Install (install.sh does this):",
        "#   pip install --no-index --find-links wheels --require-hashes -r requirements.lock",
    ]
    for wheel in locked:
        lines.append(f"{wheel.name}=={wheel.version} \\\n    --hash=sha256:{wheel.sha256}")
    (stage / "requirements.lock").write_text("\n".join(lines) + "\n")
    shutil.copyfile(distro.source, stage / "distro.toml")
    info: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "distro": distro.name,
        "mode": distro.mode,
        "summary": distro.summary,
        "services": list(distro.service_names),
        "extras": list(distro.extras),
        "python": pyver,
        "platform": sysconfig.get_platform(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wheels": [
            {"name": w.name, "version": w.version, "file": w.filename, "sha256": w.sha256}
            for w in locked
        ],
    }
    (stage / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
    daemon = distro.mode == "daemon"
    builtin = distro.source.resolve().parent == BUILTIN_DIR
    _script(stage / "install.sh", launcher.install_script(
        name=distro.name, python_version=pyver, builtin=builtin, daemon=daemon))  # fmt: skip
    (stage / "bin").mkdir()
    _script(stage / "bin" / "nexus", launcher.nexus_script())
    if daemon:
        _script(stage / "bin" / "nexus-up", launcher.nexus_up_script())
    start = "bin/nexus-up && bin/nexus ls /" if daemon else "bin/nexus ls /"
    (stage / "README.txt").write_text(
        f"NexusFS distro {distro.name}: {distro.summary}\n\n"
        f"Install (no network needed; Python {pyver} on {sysconfig.get_platform()}):\n\n"
        f"    ./install.sh [--python python{pyver}] [--venv DIR] [--data-dir DIR]\n"
        f"    {start}\n\n"
        "wheels/ holds every package; requirements.lock pins each one's sha256;\n"
        "distro.toml is the distro manifest ('nexus distro show' explains it).\n"
    )


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


# ---------------------------------------------------------------------- helpers


def _check_out_dir(out: Path, force: bool) -> None:
    if out.is_file():
        raise BundleError(f"output {out} is a file")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise BundleError(f"output directory {out} is not empty (--force replaces a bundle)")
    if not (out / "bundle.json").is_file():
        raise BundleError(
            f"output directory {out} is not empty and holds no bundle (no bundle.json); "
            "--force only replaces a previous bundle"
        )


def _move_into_place(stage: Path, out: Path) -> None:
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        else:
            out.rmdir()
    os.rename(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pip(args: list[str], what: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BundleError(f"{what} failed (pip exit {proc.returncode}):\n{tail}")


def _tree_digest(root: Path, entries: Iterable[str]) -> str:
    """sha256 over the relative paths and contents of the files under ``entries`` of
    ``root`` (build outputs and caches excluded), plus this Python's version."""
    h = hashlib.sha256(f"{sys.version_info[:2]} {sysconfig.get_platform()}".encode())
    for entry in entries:
        base = root / entry
        files = [base] if base.is_file() else sorted(_walk(base)) if base.is_dir() else []
        for path in files:
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(_sha256(path).encode())
    return h.hexdigest()


def _walk(base: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not _skip(d))
        for name in filenames:
            if not _skip(name):
                yield Path(dirpath) / name


def _skip(name: str) -> bool:
    return name in _IGNORED_DIRS or name.endswith(_IGNORED_SUFFIXES)


def _ignore(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if _skip(n)]


def _project_name(path: Path) -> str | None:
    try:
        with open(path / "pyproject.toml", "rb") as f:
            name = tomllib.load(f).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return _canon(name) if isinstance(name, str) else None


def _installed_version(package: str) -> str | None:
    try:
        return distribution(package).version
    except PackageNotFoundError:
        return None


def _wheel_services(wheel: Path) -> list[str]:
    """The ``nexusfs.services`` entry points a wheel declares (read from the zip)."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        if not names:
            return []
        text = zf.read(names[0]).decode()
    services, section = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "nexusfs.services" and "=" in line:
            services.append(line.split("=", 1)[0].strip())
    return services


def _copy(path: Path, dest: Path) -> Path:
    target = dest / path.name
    shutil.copyfile(path, target)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
