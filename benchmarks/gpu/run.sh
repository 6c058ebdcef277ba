#!/usr/bin/env bash
# ONE command for one H100/H200 without network:
#
#     bash benchmarks/gpu/run.sh OUTDIR            # real sizes, about 8 minutes
#     bash benchmarks/gpu/run.sh OUTDIR --arch tiny  # the same stages on CPU with tiny models
#
# Builds the real-size architectures with random weights from benchmarks/gpu/configs (no download)
# and records into OUTDIR (default benchmarks/results/gpu): generation ours vs plain
# (generate-*.json), both training figures with peak memory (train-*.json), a smoke of each
# trainer (smoke-*.json), summary.json (machine, versions, date, every stage's status) and log.txt.
# Needs: python3 with torch, accelerate, peft, transformers; the other wheels in .whl/ at the
# repository root (benchmarks/gpu/wheels.sh fetches them; device tool: carry [".whl"]).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUTDIR="${1:-benchmarks/results/gpu}"
shift || true
PY="${PYTHON:-python3}"
# the carried wheels, where this Python lacks them
if ! "$PY" -c "import diffusers, datasets, pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mammosynth-site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/mammosynth-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# mammosynth from this checkout, without building it: its folders are its sub-packages
if ! "$PY" -c "import mammosynth.generators" 2>/dev/null; then
  mkdir -p /tmp/mammosynth-src/mammosynth
  for d in builders generators training dataset_cards validation examples; do ln -sfn "$PWD/$d" "/tmp/mammosynth-src/mammosynth/$d"; done
  export PYTHONPATH="/tmp/mammosynth-src${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import mammosynth.generators" || { echo "mammosynth does not import (missing wheels? see benchmarks/gpu/wheels.txt)" >&2; exit 2; }
fi
exec "$PY" benchmarks/gpu/run.py "$OUTDIR" "$@"
