#!/bin/bash
# Wall-time condition of recipe round 4: mapex train (new default) and the plain loop's 12 epochs of
# the reference recipe, alternating A B A B, alone on the machine, 2 threads each.
cd /work/main
for i in 1 2; do
  .venv/bin/mapex train --params params.yaml --data work/data/tiny-imagenet-20 --out /work/scratch/wt/A$i/model.pt \
      --history /work/scratch/wt/A$i/history.csv --metrics /work/scratch/wt/A$i/metrics.json --threads 2 > /work/scratch/wt/A$i.log 2>&1
  .venv/bin/python benchmarks/bench_baseline.py --data work/data/tiny-imagenet-20 --threads 2 \
      --params /work/scratch/wt/ref_params.yaml --baseline /work/scratch/wt/A$i > /work/scratch/wt/B$i.txt 2>&1
done
.venv/bin/python benchmarks/bench_train.py --data work/data/tiny-imagenet-20 --threads 2 > /work/scratch/wt/bench_train.txt 2>&1
.venv/bin/python benchmarks/bench_baseline.py --data work/data/tiny-imagenet-20 --threads 2 --params params.yaml > /work/scratch/wt/plain_new.txt 2>&1
echo done > /work/scratch/wt/done
