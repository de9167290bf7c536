#!/usr/bin/env bash
# Set up a development environment in .venv: builds the Rust extension (nexusfs._native)
# with maturin and installs nexusfs editable with its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: cargo (Rust >= 1.80) is needed to build nexusfs._native; install it with rustup" >&2
    exit 1
  fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# The first-party services (each its own pip package, like third-party ones).
for plugin in plugins/*/; do
  .venv/bin/python -m pip install --quiet -e "$plugin"
done
.venv/bin/python -c "import nexusfs._native" && echo "setup: ok ($(.venv/bin/python --version), nexusfs._native built)"
