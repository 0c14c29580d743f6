#!/bin/bash
# Trains the default sparse_e2e config on the synthetic tree for each variant (one after the other) and
# prints each run's validation metrics. Usage: bash experiments/sparse_e2e/run_trade_off.sh OUTDIR [STEPS]
set -euo pipefail
out=${1:?output directory}; steps=${2:-100}
run() {  # name, then config overrides
  local name=$1; shift
  python -m affjax.main --config=configs/sparse_e2e.py --workdir="$out/$name" --config.train.num_steps="$steps" \
    --config.train.eval_every="$steps" --config.train.checkpoint_every="$steps" "$@" > "$out/$name.log" 2>&1
  echo "$name $(tr -d '\n ' < "$out/$name/eval/validation/metrics.json")"
}
mkdir -p "$out"
run dense --config.model.sparse=False
run masked_dense_p0.8 --config.model.top_p=0.8
run gather_p0.8_k0.4 --config.model.sparse_impl=gather --config.model.top_p=0.8 --config.model.capacity=0.4
run gather_p0.5_k0.2 --config.model.sparse_impl=gather --config.model.top_p=0.5 --config.model.capacity=0.2
run masked_dense_p1.0 --config.model.top_p=1.0
