#!/bin/bash
# Trains the default sparse_e2e config on the synthetic tree for each variant (one after the other, same seed,
# same steps) and prints one JSON line per run: validation metrics and the median training tokens/s.
# Usage: bash experiments/sparse_e2e/run_trade_off.sh OUTDIR [STEPS]
set -euo pipefail
out=${1:?output directory}; steps=${2:-200}
run() {  # name, then config overrides
  local name=$1; shift
  python -m affjax.main --config=configs/sparse_e2e.py --workdir="$out/$name" --config.train.num_steps="$steps" \
    --config.train.eval_every="$steps" --config.train.checkpoint_every="$steps" \
    --config.optim.learning_rate=5e-4 "$@" > "$out/$name.log" 2>&1  # the rate of the recorded table
  python - "$out/$name" "$name" <<'PY'
import json, pathlib, statistics, sys
run, name = pathlib.Path(sys.argv[1]), sys.argv[2]
metrics = json.loads((run / 'eval' / 'validation' / 'metrics.json').read_text())
logs = [json.loads(l) for l in (run / 'scalars.jsonl').read_text().splitlines()]
rates = [l['perf/frames_per_s'] for l in logs if 'perf/frames_per_s' in l][1:]  # the first window compiles
print(json.dumps(dict(run=name, **metrics, train_loss_last=[l for l in logs if 'train/loss' in l][-1]['train/loss'],
                      median_tokens_per_s=statistics.median(rates))), flush=True)
PY
}
mkdir -p "$out"
run dense --config.model.sparse=False
run masked_dense_p0.8 --config.model.top_p=0.8
run masked_dense_p0.5 --config.model.top_p=0.5
run gather_p0.8_k0.6 --config.model.sparse_impl=gather --config.model.top_p=0.8 --config.model.capacity=0.6
run gather_p0.8_k0.4 --config.model.sparse_impl=gather --config.model.top_p=0.8 --config.model.capacity=0.4
run gather_p0.5_k0.2 --config.model.sparse_impl=gather --config.model.top_p=0.5 --config.model.capacity=0.2
run masked_dense_p0.8_no_warmup --config.model.top_p=0.8 --config.model.top_p_warmup_steps=0
