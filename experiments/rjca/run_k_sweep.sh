#!/usr/bin/env bash
# The RJCA K study on the synthetic tree (experiments/rjca/README.md): "synthetic TSAV" backbones from one
# end-to-end run, their feature cache, the K x seed sweep from it, and the inline-vs-cache throughput.
# Usage (from the repository root): experiments/rjca/run_k_sweep.sh [WORKDIR]   (default /tmp/affjax/rjca_k)
set -euo pipefail
W=${1:-/tmp/affjax/rjca_k}
export PYTHONPATH=$PWD JAX_COMPILATION_CACHE_DIR=$W/jax_cache  # seeds of one K share their compiled steps

# 1. The default run: end to end (backbones trainable), 150 steps of batch 4 at lr 1e-3, validated at the end.
python -m affjax.main --config=configs/rjca.py --workdir="$W/pretrain"
# 2. Its backbones as model.pretrained files.
python tools/export_backbones.py --config=configs/rjca.py --workdir="$W/pretrain" --out="$W/tsav"
PRETRAINED="--config.model.pretrained.visual=$W/tsav/visual.msgpack --config.model.pretrained.audio=$W/tsav/audio.msgpack"
# 3. The feature cache of those frozen backbones (every frame: the clip ending there).
python tools/cache_features.py --config=configs/rjca.py:frozen $PRETRAINED --out="$W/features"
FEATURES=$(ls -d "$W"/features/affwild2_features/*)
# 4. Training throughput, inline frozen backbones vs the cache: train step and input pipeline (weights do not
#    change the speed, so the benchmark's random ones stand in for the pretrained files).
for mode in train input; do
  python tools/benchmark.py --system=rjca:frozen --mode=$mode --rounds=10
  python tools/benchmark.py --system=rjca:frozen --mode=$mode --rounds=10 --set=data.features_dir="$FEATURES"
done | tee "$W/throughput.txt"
# 5. K in {1, 2, 3} x seeds {0, 1, 2} from the cache.
python tools/rjca_k_sweep.py --features_dir="$FEATURES" --batch_size=16 --num_steps=200 --eval_every=100 \
  --workdir="$W/sweep" --out=experiments/rjca/k_sweep_cpu.md
