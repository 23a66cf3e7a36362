#!/usr/bin/env bash
# The GPU checks of run.device (docs/gpu.md), for a session lent a GPU machine: about 6
# minutes on an H100, each step capped by `timeout` (at most 9.5 minutes in all).
#
# Here, once (pip reaches PyPI here, not there):
#   benchmarks/gpu_check.sh prepare
#     .whl/: wheels (CPython 3.12, x86-64) of what the GPU image's python3 lacks;
#     .gpu-data/: a copy of ../shared/data/omniglot (../shared does not travel);
#     both added to .git/info/exclude.
# There (the device tool's `run`, carry [".whl", ".gpu-data"], timeout_s 600):
#   bash benchmarks/gpu_check.sh    # environment tests omniglot meta-sinusoid meta-conv4 fed
#   bash benchmarks/gpu_check.sh omniglot-cpu meta-sinusoid-cpu meta-conv4-cpu fed-cpu
#                                   # that machine's CPU baselines (about 7 minutes)
# Each step logs to $OUT/<step>.log (default OUT: ./gpu-check); $OUT/summary.txt has one line
# per step: its status and seconds. PYTHON (default python3) is the interpreter that holds
# a CUDA build of torch.
set -uo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
DATA=$([ -d .gpu-data/omniglot ] && echo .gpu-data || echo ../shared/data)
ITERATIONS=${ITERATIONS:-100}  # of configs/omniglot-maml-5w1s.toml's 200, so the step fits
# the GPU image lacks these (torch, numpy, scipy, scikit-learn, matplotlib, typer, rich are there)
PINNED=(pydantic pydantic-core annotated-types typing-inspection typing-extensions tomli-w dp-accounting dm-tree
        cryptography cffi pycparser tenseal)
BENCH=(higher==0.2.1 torchopt optree graphviz)  # benchmarks/meta_speed.py's peers

prepare() {  # here: the wheels and the data the GPU machine needs, kept out of git
  local venv=${VENV_PYTHON:-.venv/bin/python} specs=() name version platforms=()
  for name in "${PINNED[@]}"; do  # the versions this project's tests run with here
    version=$("$venv" -c "import importlib.metadata as m; print(m.version('$name'))") || return
    specs+=("$name==$version")
  done
  for name in manylinux2014 manylinux_2_17 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 \
              manylinux_2_35 manylinux_2_39; do
    platforms+=(--platform "${name}_x86_64")
  done
  "$venv" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "${WHEELS:-.whl}" "${specs[@]}" "${BENCH[@]}" || return
  mkdir -p .gpu-data && cp -r ../shared/data/omniglot .gpu-data/ || return
  for name in /.whl/ /.gpu-data/; do
    grep -qxF "$name" .git/info/exclude 2>/dev/null || echo "$name" >>.git/info/exclude
  done
  du -sh .whl .gpu-data
}

environment() {  # the GPU, torch, and every import the steps need
  nvidia-smi || echo "no nvidia-smi"
  "$PY" - <<'EOF'
import sys
import torch
print(sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
import dp_accounting, higher, pydantic, tenseal, tomli_w, torchopt
from fedmeta.device import available, resolve
print("devices", available(), "auto ->", resolve(None))
EOF
}

tests() {
  "$PY" -m pytest tests/test_device.py -q -rs -p no:cacheprovider
}

omniglot() {  # omniglot DEVICE: MAML Omniglot 5-way 1-shot (Conv4) for $ITERATIONS iterations
  local tmp dir
  tmp=$(mktemp -d)
  trap "rm -rf '$tmp'" EXIT
  dir=$tmp/omniglot-$1
  "$PY" -m fedmeta run configs/omniglot-maml-5w1s.toml --data-dir "$DATA" --set "run.device='$1'" \
    --set train.iterations=$ITERATIONS --set train.eval_every=50 --out "$dir" --no-progress || return
  cat "$dir/metrics.jsonl" "$dir/summary.json"
  "$PY" - "$dir" <<'EOF'
import sys
from pathlib import Path

import torch

def tensors(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (list, tuple)) else []
    return [t for v in items for t in tensors(v)]

for name in ("model.pt", "checkpoint.pt"):
    devices = {str(t.device) for t in tensors(torch.load(Path(sys.argv[1]) / name, weights_only=True))}
    print(f"\n{name}: tensors on {sorted(devices)}")
    assert devices == {"cpu"}, devices
EOF
}

meta() {  # meta CASE DEVICE [ARGS]: benchmarks/meta_speed.py's sinusoid MLP or Conv4 Omniglot case
  "$PY" benchmarks/meta_speed.py --case "$1" --device "$2" --data-dir "$DATA" "${@:3}"
}

fed() {  # fed DEVICE [ARGS]: benchmarks/fed_speed.py without Flower (Ray is not on the image)
  "$PY" benchmarks/fed_speed.py --device "$1" --skip-flower --rounds 3 "${@:2}"
}

case "${1:-}" in
  prepare) prepare; exit ;;
  _*) "${1#_}" "${@:2}"; exit ;;  # one step's body, run under `timeout` below
esac

declare -A STEP=(  # name -> its time limit in seconds, its body and the body's arguments
  [environment]="30 environment" [tests]="130 tests" [omniglot]="75 omniglot cuda"
  [meta-sinusoid]="110 meta sinusoid cuda" [meta-conv4]="100 meta conv4 cuda" [fed]="110 fed cuda"
  [omniglot-cpu]="150 omniglot cpu" [meta-sinusoid-cpu]="120 meta sinusoid cpu --threads $(nproc)"
  [meta-conv4-cpu]="150 meta conv4 cpu --threads $(nproc)" [fed-cpu]="150 fed cpu")
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(environment tests omniglot meta-sinusoid meta-conv4 fed)
for name in "${STEPS[@]}"; do
  [ -n "${STEP[$name]:-}" ] || { echo "unknown step: $name (steps: ${!STEP[*]})" >&2; exit 2; }
done

if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit
  SITE=/tmp/site
fi
export PYTHONPATH="$PWD/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"

step() {  # step NAME SECONDS BODY [ARGS]: BODY's output in $OUT/NAME.log, a line in summary.txt
  local name=$1 limit=$2 start=$SECONDS status rc
  echo "== $name: ${*:3} (data: $DATA)" >"$OUT/$name.log"
  timeout --kill-after=10 "$limit" bash "$SELF" "_$3" "${@:4}" >>"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124) status="timed out after ${limit}s" ;; *) status="failed ($rc)" ;; esac
  printf '%-18s %-24s %4d s\n' "$name" "$status" $((SECONDS - start)) | tee -a "$OUT/summary.txt"
}

for name in "${STEPS[@]}"; do
  step "$name" ${STEP[$name]}  # unquoted: the limit, the body and its arguments as words
done
