#!/usr/bin/env bash
# The GPU device check (benchmarks/device_check.py): kernel GPU tests, tile sweep, fp32 attention benchmark,
# policy update and `deepscaler doctor`, in one run with an overall time budget. Needs only torch,
# transformers, triton, numpy, pytest (pytest-xdist and rich if present) on the machine: the code runs from
# this checkout with PYTHONPATH=. (no install).
#
#   scripts/device_check.sh [OUT_DIR] [BUDGET_SECONDS] [extra device_check.py args...]
#
# Writes OUT_DIR/device_check.json, device_check.md and device_check.log (default OUT_DIR: device_check).
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-device_check}
budget=${2:-360}
shift 2 2>/dev/null || shift $#
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export DEVICE_CHECK_COMMIT=${DEVICE_CHECK_COMMIT:-$( (git rev-parse --short HEAD 2>/dev/null || cat COMMIT 2>/dev/null) | head -1)}
python3 benchmarks/device_check.py --out-dir "$out" --work-dir "${WORK_DIR:-/tmp/device_check_parts}" \
  --budget "$budget" "$@" 2>&1 | tee "$out/run.log"
