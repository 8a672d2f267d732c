#!/usr/bin/env bash
# The GPU checks in one call, for a machine with one CUDA GPU (e.g. the device tool's):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]
#
# 1. images per second, project against a plain loop, side by side (bench_train with and without
#    amp, 7,680 images: passes of 60 steps, about an epoch, as training restarts its loader once an epoch);
# 2. the baseline (`mapex train`, 12 epochs) with amp (bfloat16): the pipeline's GPU path, timed,
#    then the plain loop's 12 epochs on the same images and params (bench_baseline: test top-1 and
#    training time of both); then one Map-EX scoring pass (`mapex scores`) and one run (`mapex run`:
#    prune at 0.5, fine-tune, evaluate) from the baseline; bench_statistics with amp;
# 3. the tests that take a CUDA path (the rest skip or run on the CPU).
#
# Logs (7 files) go to OUT_DIR (default $OUT, else work/gpu-check). Wheels in .whl/ (packages the machine
# lacks: torch-pruning, jsonschema and its dependencies) are installed first, if present.
set -uo pipefail
out=${1:-${OUT:-work/gpu-check}}
mkdir -p "$out" work/gpu
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
data=work/data/tiny-imagenet-20
workers=${WORKERS:-8}

step() { echo "== $1 ($(date +%T))"; }
brief() { python3 -c 'import json, sys; print({k: v for k, v in json.load(open(sys.argv[1])).items() if not isinstance(v, (dict, list))})' "$1"; }
timed() { local start=$SECONDS; "$@"; local rc=$?; echo "   -> rc $rc, $((SECONDS - start)) s"; return $rc; }
mapex() { local limit=$1; shift; timed timeout "$limit" python3 -m mapex "$@" 2>>"$out/stderr.txt"; }

step versions
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, torchvision, torch_pruning as tp
print("torch", torch.__version__, "torchvision", torchvision.__version__, "torch-pruning", tp.__version__,
      "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-",
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())' || exit 1
python3 -m mapex fetch --params params.yaml --out $data >/dev/null || exit 1
python3 - "$workers" <<'EOF' || exit 1
import sys
import yaml
params = yaml.safe_load(open("params.yaml"))
params.update(device="cuda", amp=True, workers=int(sys.argv[1]))
yaml.safe_dump(params, open("work/gpu/params.yaml", "w"), sort_keys=False)
EOF

step "1. images per second, project vs plain"
for amp in --amp ""; do
    timed timeout 90 python3 benchmarks/bench_train.py --data $data --device cuda --images 7680 --steps 1200 --block 60 $amp \
        --workers "$workers" 2>&1 | tee -a "$out/bench.log" | tail -5
done

step "2. the pipeline's GPU path (amp, $workers workers where batches are made on the CPU)"
mapex 240 --log "$out/mapex.log" train --params work/gpu/params.yaml --data $data \
    --out work/gpu/baseline.pt --metrics "$out/baseline/metrics.json" --history "$out/baseline/history.csv"
brief "$out/baseline/metrics.json"
timed timeout 120 python3 benchmarks/bench_baseline.py --data $data --params work/gpu/params.yaml \
    --baseline "$out/baseline" 2>&1 | tee -a "$out/bench.log" | tail -2
mapex 60 --log "$out/mapex.log" scores --params work/gpu/params.yaml --data $data \
    --model work/gpu/baseline.pt --task balls-bugs --criterion map-ex --seed 0 --out work/gpu/scores.pt
mapex 90 --log "$out/mapex.log" run --params work/gpu/params.yaml --data $data \
    --model work/gpu/baseline.pt --task balls-bugs --criterion map-ex --ratio 0.5 --seed 0 \
    --scores work/gpu/scores.pt --out work/gpu/run.pt --history work/gpu/run.csv --metrics "$out/run.json"
brief "$out/run.json"
timed timeout 60 python3 benchmarks/bench_statistics.py --data $data --images 2560 --batch-size 256 \
    --device cuda --amp 2>&1 | tee -a "$out/bench.log" | tail -4

step "3. the tests with a CUDA path"
timed timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_statistics.py::test_variants_on_cuda_agree_with_cpu tests/test_io.py \
    tests/test_evaluate.py tests/test_data.py 2>&1 | tee "$out/pytest.log" | tail -4
step done
