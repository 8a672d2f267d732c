#!/usr/bin/env bash
# #11's wall-time conditions after `train.validate_last: 3` and the pandas-free history, one after the
# other, alone on the machine: bench_train (plain epoch); the README's first command in a fresh clone;
# mapex train (the default) and the plain loop's 12 epochs of #11's reference recipe (params.yaml at
# e61af16), alternating A B A B, two threads each; bench_train again; then CI in a fresh clone.
set -uo pipefail
W=/work/wt7
cd /work/main
.venv/bin/python benchmarks/bench_train.py --data work/data/tiny-imagenet-20 --threads 2 > $W/bench_before.txt 2>&1
rm -rf /work/runclone && git clone -q /work/main /work/runclone && cd /work/runclone && git log --oneline | head -1 > $W/commit.txt
start=$(date +%s)
( python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && . .venv/bin/activate && echo "INSTALLED $(date +%s)" && snakemake --cores all ) > $W/run.log 2>&1
echo "rc $? total $(( $(date +%s) - start )) s" >> $W/run.log
cd /work/main
for i in 1 2; do
  .venv/bin/mapex train --params params.yaml --data work/data/tiny-imagenet-20 --out $W/A$i/model.pt \
      --history $W/A$i/history.csv --metrics $W/A$i/metrics.json --threads 2 > $W/A$i.log 2>&1
  .venv/bin/python benchmarks/bench_baseline.py --data work/data/tiny-imagenet-20 --threads 2 \
      --params $W/ref_params.yaml --baseline $W/A$i > $W/B$i.txt 2>&1
done
.venv/bin/python benchmarks/bench_train.py --data work/data/tiny-imagenet-20 --threads 2 > $W/bench_after.txt 2>&1
echo done > $W/DONE
rm -rf /work/ciclone && git clone -q /work/main /work/ciclone && cd /work/ciclone && git log --oneline | head -1 > $W/ci_commit.txt
start=$(date +%s)
CI=true bash .ci/run > $W/ci.log 2>&1
echo "rc $? total $(( $(date +%s) - start )) s" >> $W/ci.log
echo done > $W/CI_DONE
