#!/usr/bin/env bash
# Installs everything nas needs on a fresh Debian machine: the Fashion-MNIST data set, the CPU build of
# torch, and the package with its extras. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "setup: installing the Debian package dataset-fashion-mnist" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
if ! python3 -c "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.0'))" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU)" >&2
  python3 -m pip install -q torch==2.13.0
fi

python3 -m pip install -q -e '.[dev,postgres]' 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi  # expose the new `nas` console script
bash scripts/setup_mpc.sh  # SPU for MPC costs (nas.mpc), in its own venv
python3 -c "import nas, cli, torch, ray, optuna, sqlalchemy" >&2
echo "setup: done (nas $(python3 -c 'import nas; print(nas.__version__)'), torch $(python3 -c 'import torch; print(torch.__version__)'))" >&2
