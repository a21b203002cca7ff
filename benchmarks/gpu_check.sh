#!/usr/bin/env bash
# GPU figures (issue 14) in one run: benchmarks/gpu_check.py, its table on stdout and in
# $OUT/gpu_check.txt, its JSON in $OUT/gpu_check.json (OUT defaults to results/gpu_check).
# Every option goes to gpu_check.py (see its docstring); `--smoke` is the CPU test's mode.
#
#   benchmarks/gpu_check.sh [gpu_check.py options]
#   WHEELS=.whl benchmarks/gpu_check.sh ...        # first installs the wheels in .whl (offline)
#   benchmarks/gpu_check.sh --fetch-wheels .whl    # here, with PyPI: the wheels a bare GPU image lacks
#
# Python: $PYTHON, else the project's .venv, else python3 (a GPU image's own torch), with
# src/ on PYTHONPATH so that the DAG's jobs find the package without an install. A bare
# image (nothing fetchable there) has torch but not the project's other dependencies: fetch
# them here with --fetch-wheels (cp312 manylinux x86_64 wheels of the versions in
# requirements.lock; pure-Python sdists built into wheels), carry the folder, and set WHEELS.
set -euo pipefail
cd "$(dirname "$0")/.."

# What a bare CUDA image with torch, torchvision, numpy, pandas, matplotlib, timm, PyYAML,
# requests & co. lacks, plus the pins that matter here (numpy<2.4 for clip_benchmark,
# Pillow 12.0.0 for the replay, pandas 2.x, timm with MobileCLIP-B's trunk).
CARRY="annotated-types argparse-dataclass braceexpand clip-benchmark conda-inject configargparse connection-pool
docutils dpath fastjsonschema ftfy gitdb gitpython greenlet httpcore2 httpx2 humanfriendly immutables jsonschema
jsonschema-specifications jupyter-core nbformat open-clip-torch platformdirs pycocotools pydantic pydantic-core pytz
referencing rpds-py smart-open smmap snakemake snakemake-executor-plugin-slurm snakemake-executor-plugin-slurm-jobstep
snakemake-interface-common snakemake-interface-executor-plugins snakemake-interface-logger-plugins
snakemake-interface-report-plugins snakemake-interface-scheduler-plugins snakemake-interface-storage-plugins
sqlalchemy sqlmodel tenacity throttler traitlets truststore typing-inspection tzdata wcwidth webdataset yte
numpy pillow pandas timm"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    dir="${2:?--fetch-wheels DIR}"
    mkdir -p "$dir"
    for name in $CARRY; do
        pin=$(grep -i -E "^${name}==" requirements.lock) || { echo "$name: not in requirements.lock" >&2; exit 1; }
        "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$pin" 2>/dev/null \
            || "$python" -m pip wheel -q --no-deps -w "$dir" "$pin"
    done
    du -sh "$dir"
    exit 0
fi

if [[ -n "${WHEELS:-}" ]]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-results/gpu_check}"
mkdir -p "$out"
"$python" benchmarks/gpu_check.py --json "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.txt"
