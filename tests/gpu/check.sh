#!/usr/bin/env bash
# GPU check (one CUDA GPU, upstream vllm installed: pip install -e '.[gpu,dev]'), a few minutes:
#  1. the vLLM tests that `make test-vllm` runs on CPU (tests/test_vllm.py, search episodes through
#     the engine's stop strings included, the lm-eval vLLM backend), now on CUDA, where the engine
#     sleeps during updates (sleep mode is CUDA/ROCm only; an episode sleeps after its last turn);
#  2. a few RL steps with the colocated vLLM engine in bf16 + DeepSpeed ZeRO-3 on GPU, with the
#     mismatch correction on, then the same run with HF generate, and lm-eval's vLLM backend on
#     the result, on a tiny checkpoint made here (no hub is reachable).
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
cd "$(dirname "$0")/../.."
time python -m pytest -q -m vllm -rP tests/test_vllm.py tests/test_evaluate.py
python - "$OUT" <<'PY'
import sys
from rlvr.models import build_tiny_model, save_checkpoint
from rlvr.data import write_suite
out = sys.argv[1]
write_suite("math", f"{out}/data", seed=0, n_train=512, n_test=32)
model, tok = build_tiny_model("qwen2")
save_checkpoint(model, tok, f"{out}/tiny")
PY
common=(model.name_or_path="$OUT/tiny" data.train="$OUT/data/train.jsonl" data.test="$OUT/data/test.jsonl"
        train.steps=3 rollout.prompts_per_step=8 logging.wandb=false logging.progress=false)
time python -m rlvr train "${common[@]}" rollout.engine=vllm rollout.vllm.dtype=bfloat16 \
  rollout.vllm.sleep_mode=true train.zero_stage=3 train.forward=hf correction.tis=true output_dir="$OUT/vllm"
time python -m rlvr train "${common[@]}" rollout.engine=hf output_dir="$OUT/hf"
python - "$OUT" <<'PY'
import json, sys
for name in ("vllm", "hf"):
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{name}/metrics.jsonl")]
    print(name, json.load(open(f"{sys.argv[1]}/{name}/status.json"))["state"],
          [(r["rollout/reward_mean"], r["rollout/logp_diff_max"], r.get("correction/tis_weight_mean")) for r in rows])
PY
time python -m rlvr eval "${common[@]}" output_dir="$OUT/vllm" eval.backend=vllm eval.suites='[math]' \
  eval.data="{math: $OUT/data/test.jsonl}" eval.limit=16
cat "$OUT/vllm/eval/math.json"
