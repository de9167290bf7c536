"""The scripts an offline bundle ships: ``install.sh``, ``bin/nexus`` and ``bin/nexus-up``.

They are POSIX ``sh`` (no bash needed on the target) and depend only on a Python of the
bundle's version with the ``venv`` module. ``install.sh`` creates a virtual environment,
installs ``requirements.lock`` from ``wheels/`` with pip in ``--no-index
--require-hashes --only-binary=:all:`` mode (so it never contacts a package index, and
a wheel whose hash differs from the lock is refused), runs ``nexus init --distro`` and
records where it installed in ``install.env``; the ``bin/`` wrappers read that file.

Invariants: everything is relative to the bundle directory, found at run time, so the
bundle can be moved before installing; ``install.sh`` is idempotent (re-running it
re-checks the hashes and keeps the data directory); user pip configuration files are
ignored (``PIP_CONFIG_FILE=/dev/null``) so the result does not depend on the host.
"""

from __future__ import annotations

import shlex

__all__ = ["install_script", "nexus_script", "nexus_up_script"]

_INSTALL = r"""#!/bin/sh
# Install the NexusFS distro "@NAME@" from this bundle, without any package index.
#
#   ./install.sh [--python PYTHON] [--venv DIR] [--data-dir DIR]
#
# --python    a Python @PYVER@ interpreter (default: python@PYVER@, else python3)
# --venv      where to create the virtual environment (default: BUNDLE/venv)
# --data-dir  the NexusFS data directory (default: $NEXUS_DATA_DIR, else BUNDLE/data)
#
# Then: bin/nexus-up starts the kernel daemon (daemon distros), bin/nexus runs the CLI.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
DISTRO=@DISTRO@
PY_VERSION=@PYVER@
PYTHON=
VENV="$HERE/venv"
DATA_DIR="${NEXUS_DATA_DIR:-$HERE/data}"

die() { echo "install.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || die "--python needs a value"; PYTHON=$2; shift 2 ;;
    --venv) [ $# -ge 2 ] || die "--venv needs a value"; VENV=$2; shift 2 ;;
    --data-dir) [ $# -ge 2 ] || die "--data-dir needs a value"; DATA_DIR=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
if [ -z "$PYTHON" ]; then
  for candidate in "python$PY_VERSION" python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
  [ -n "$PYTHON" ] || die "no python$PY_VERSION found; pass --python"
fi
HAVE=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
  || die "$PYTHON does not run"
[ "$HAVE" = "$PY_VERSION" ] \
  || die "the wheels of this bundle are for Python $PY_VERSION; $PYTHON is $HAVE (pass --python)"
case "$VENV" in /*) ;; *) VENV="$(pwd)/$VENV" ;; esac
case "$DATA_DIR" in /*) ;; *) DATA_DIR="$(pwd)/$DATA_DIR" ;; esac

echo "install.sh: creating $VENV"
"$PYTHON" -m venv "$VENV"
COUNT=$(grep -c '^[A-Za-z0-9]' "$HERE/requirements.lock")
echo "install.sh: installing $COUNT packages from $HERE/wheels (no index)"
PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install --quiet --no-index \
  --disable-pip-version-check --no-cache-dir --only-binary=:all: \
  --find-links "$HERE/wheels" --require-hashes -r "$HERE/requirements.lock"

DISTRO_REF=$DISTRO
if [ -f "$HERE/distro.toml" ] && [ "@BUILTIN@" = no ]; then
  mkdir -p "$VENV/share/nexusfs/distros"
  cp "$HERE/distro.toml" "$VENV/share/nexusfs/distros/$DISTRO.toml"
  DISTRO_REF="$VENV/share/nexusfs/distros/$DISTRO.toml"
fi
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{
  echo "# Written by install.sh; read by bin/nexus and bin/nexus-up."
  echo "NEXUS_BUNDLE_VENV=$(q "$VENV")"
  echo "NEXUS_BUNDLE_DISTRO=$(q "$DISTRO_REF")"
  echo "if [ -z \"\${NEXUS_DATA_DIR:-}\" ]; then NEXUS_DATA_DIR=$(q "$DATA_DIR"); fi"
  echo "export NEXUS_DATA_DIR"
} > "$HERE/install.env"
"$VENV/bin/nexus" --data-dir "$DATA_DIR" init --distro "$DISTRO_REF"
echo "install.sh: done; @NEXT@"
"""

_WRAPPER = r"""#!/bin/sh
# @WHAT@ (installed by install.sh; the data directory is $NEXUS_DATA_DIR, set there).
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$HERE/install.env" ] || { echo "@SELF@: run $HERE/install.sh first" >&2; exit 1; }
. "$HERE/install.env"
exec "$NEXUS_BUNDLE_VENV/bin/nexus" @ARGS@"$@"
"""


def install_script(*, name: str, python_version: str, builtin: bool, daemon: bool) -> str:
    """``install.sh`` for distro ``name`` (a manifest shipped in nexusfs when
    ``builtin``, else the bundle's ``distro.toml`` is installed with the venv)."""
    nxt = "start it with bin/nexus-up" if daemon else "use bin/nexus (the kernel runs in-process)"
    return (
        _INSTALL.replace("@NAME@", name)
        .replace("@DISTRO@", shlex.quote(name))
        .replace("@PYVER@", python_version)
        .replace("@BUILTIN@", "yes" if builtin else "no")
        .replace("@NEXT@", nxt)
    )


def nexus_script() -> str:
    """``bin/nexus``: the installed CLI on the installed data directory."""
    return (
        _WRAPPER.replace("@WHAT@", "The nexus CLI of this bundle")
        .replace("@SELF@", "nexus")
        .replace("@ARGS@", "")
    )


def nexus_up_script() -> str:
    """``bin/nexus-up``: ``nexus up --distro <the bundle's distro>``."""
    return (
        _WRAPPER.replace("@WHAT@", "Start the kernel daemon of this bundle's distro")
        .replace("@SELF@", "nexus-up")
        .replace("@ARGS@", 'up --distro "$NEXUS_BUNDLE_DISTRO" ')
    )
