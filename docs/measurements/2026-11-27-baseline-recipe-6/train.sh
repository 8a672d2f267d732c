#!/usr/bin/env bash
# One training of this round: train.sh NAME WEIGHT_DECAY SEED DATA
# (from the repository root; writes NAME-sSEED/ beside this script)
set -euo pipefail
here=$(dirname "$0"); out="$here/$1-s$3"; mkdir -p "$out"
python3 - "$2" "$3" "$out/params.yaml" <<'PY'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
params["train"]["weight_decay"] = float(sys.argv[1])
params["train"]["seed"] = int(sys.argv[2])
yaml.safe_dump(params, open(sys.argv[3], "w"), sort_keys=False)
PY
mapex train --params "$out/params.yaml" --data "$4" --out "$out/model.pt" --threads 1 \
    --history "$out/history.csv" --metrics "$out/metrics.json" > "$out/train.log" 2>&1
rm -f "$out/model.pt"
# (train.log was then cut to its epoch lines: tr '\r' '\n' | grep -v "it/s\|s/it\|validate:")
