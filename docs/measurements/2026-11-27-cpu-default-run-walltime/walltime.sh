#!/usr/bin/env bash
# bench_train (plain epoch), the README's first command in a fresh clone, bench_train again.
set -uo pipefail
cd /work/main
.venv/bin/python benchmarks/bench_train.py --data work/data/tiny-imagenet-20 --threads 2 > /work/wt/bench_before.txt 2>&1
rm -rf /work/runclone && git clone -q /work/main /work/runclone && cd /work/runclone && git log --oneline | head -1 > /work/wt/commit.txt
start=$(date +%s)
( python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && . .venv/bin/activate && echo "INSTALLED $(date +%s)" && snakemake --cores all ) > /work/wt/run.log 2>&1
echo "rc $? total $(( $(date +%s) - start )) s" >> /work/wt/run.log
cd /work/main
.venv/bin/python benchmarks/bench_train.py --data work/data/tiny-imagenet-20 --threads 2 > /work/wt/bench_after.txt 2>&1
echo done > /work/wt/DONE
