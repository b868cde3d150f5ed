#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md, on a lent GPU machine (the device tool), whose image has JAX, flax,
# optax, orbax, transformers and torch but not datasets or tensorboardX, and no network. Run from the repo
# root with, carried next to the checkout:
#   .whl/  wheels for Python 3.12 of datasets, dill, multiprocess, fsspec, tensorboardX (pip download --no-deps)
#   .gpu/  glue/MRPC (the GLUE TSVs) and mpnet/ (all-mpnet-base-v2's config.json and tokenizer, no weights:
#          438 MB cannot travel, so the MRPC rows train an MPNet-base of random weights: speed, not accuracy)
# Usage: bench/gpu_session.sh families|mrpc   (results in $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
  exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLAXFT_MALLOC=system
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/machine.txt"
python3 -c "import jax, flax, optax, orbax.checkpoint as o, torch, transformers, datasets, sys
print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices(), 'flax', flax.__version__,
      'optax', optax.__version__, 'orbax', o.__version__, 'torch', torch.__version__,
      'transformers', transformers.__version__, 'datasets', datasets.__version__)" | tee -a "$OUT/machine.txt"

case "${1:-}" in
families)  # train-step time per family at base size, B=32, L=128, bfloat16: flaxft vs PyTorch eager
  # shellcheck disable=SC2086  # FAMILIES is a list
  python3 bench/family_step_time.py --dtype bfloat16 --steps 10 --torch-steps 10 ${FAMILIES:+--families $FAMILIES} \
    --json "$OUT/family_bf16${FAMILIES:+_${FAMILIES// /_}}.json" 2>&1 | grep -v Warning
  ;;
mrpc)  # MRPC, 1 epoch, batch 32, lr 3e-5, bf16, MPNet-base random weights: flaxft (seed 42 compiles, seed 43
  # loads the compiled steps from the persistent cache) and the HF Trainer (bf16=True), same data
  for seed in 42 43; do
    python3 bench/flaxft_run.py --task mrpc --model .gpu/mpnet --glue .gpu/glue --epochs 1 --batch-size 32 \
      --lr 3e-5 --seed $seed --dtype bfloat16 --allocator system --set model.random_init=true \
      --output-dir /tmp/flaxft-mrpc-$seed --out "$OUT/mrpc_flaxft_seed$seed.json" >> "$OUT/mrpc.log" 2>&1
    tail -1 "$OUT/mrpc.log"
    python3 bench/hf_trainer.py --task mrpc --model .gpu/mpnet --glue .gpu/glue --epochs 1 --batch-size 32 \
      --lr 3e-5 --seed $seed --bf16 --random-init --out "$OUT/mrpc_hf_seed$seed.json" >> "$OUT/mrpc.log" 2>&1
    tail -1 "$OUT/mrpc.log"
  done
  ;;
*) echo "usage: bench/gpu_session.sh families|mrpc" >&2; exit 2 ;;
esac
