#!/usr/bin/env bash
# GPU check (one CUDA GPU, vllm installed: pip install -e '.[gpu]'): a few RL steps with the
# colocated vLLM engine + DeepSpeed on GPU on a tiny checkpoint made here, then the same run
# with HF generate, and lm-eval's vLLM backend on the result. Finishes in a few minutes.
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
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
time python -m rlvr train "${common[@]}" rollout.engine=vllm rollout.vllm.dtype=float32 output_dir="$OUT/vllm"
time python -m rlvr train "${common[@]}" rollout.engine=hf output_dir="$OUT/hf"
python - "$OUT" <<'PY'
import json, sys
for name in ("vllm", "hf"):
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{name}/metrics.jsonl")]
    print(name, json.load(open(f"{sys.argv[1]}/{name}/status.json"))["state"],
          [(r["rollout/reward_mean"], round(r["actor/approx_kl"], 5), round(r["perf/step_s"], 3)) for r in rows])
PY
time python -m rlvr eval "${common[@]}" output_dir="$OUT/vllm" eval.backend=vllm eval.suites='[math]' \
  eval.data="{math: $OUT/data/test.jsonl}" eval.limit=16
cat "$OUT/vllm/eval/math.json"
