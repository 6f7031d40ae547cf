#!/usr/bin/env bash
# Installs SecretFlow SPU (two-party secure-inference costs, `nas.mpc`) in a venv of its own, .venv-mpc beside
# the repo root: SPU needs numpy 1.26 and jax 0.4.34, which break ray, pandas and pyarrow in the main
# environment. Safe to run again: skipped when the venv already imports spu.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv-mpc/bin/python -c "import spu" 2>/dev/null; then
  echo "setup: installing spu 0.9.5 in .venv-mpc" >&2
  python3 -m venv .venv-mpc
  .venv-mpc/bin/python -m pip install -q spu==0.9.5 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
  .venv-mpc/bin/python -c "import spu" >&2
fi
