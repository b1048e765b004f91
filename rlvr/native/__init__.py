"""rlvr's own Llama / Qwen2 layers (layers.py), the update forward built on them (forward.py),
what they support (support.py) and their fused fp32 CPU kernels (kernels/). The rollout decoder
that samples with the same layers is rlvr/rollout/native.py."""
