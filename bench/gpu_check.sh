#!/usr/bin/env bash
# Issues 7 and 15 on a GPU: instructkit against TRL's SFTTrainer (random and length-grouped batches), gpt2-medium in bf16, 20 steps x 2, MFU
# against a bf16 matmul peak measured in the same run. PREPARED, NOT YET RUN: no GPU has been
# lent to this project's sessions so far; expect to fix small things on the first run.
#
# From the development machine (the device gets only the repository, and no internet):
#   mkdir -p bench/data && cp ../shared/data/instruction-data.json ../shared/data/gpt2.tiktoken bench/data/
#   trl and datasets are not in the device image: download their wheels (and any missing
#   dependency) as the device README says, into the ignored folder /.whl/ of the repo, then
#   run(command="bash bench/gpu_check.sh", carry=["bench/data", ".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
export INSTRUCTKIT_BOOK_DATA="${INSTRUCTKIT_BOOK_DATA:-$PWD/bench/data/instruction-data.json}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --find-links .whl trl datasets; fi
python3 -c "import torch; assert torch.cuda.is_available(), 'this torch sees no GPU'; print(torch.__version__, torch.cuda.get_device_name())"
python3 -c "import trl, datasets" || { echo "trl/datasets missing: carry their wheels (see the top of this script)"; exit 2; }
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv || true
timeout 480 python3 bench/finetune.py --device cuda --preset gpt2-medium --precision bf16 \
  --steps 20 --repeats 2 --only trl,trl-grouped,ours-ungrouped,ours --json "$OUT/finetune-gpu.json" 2>&1 | tee "$OUT/finetune-gpu.log"
