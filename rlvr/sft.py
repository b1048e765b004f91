"""SFT warm start: supervised training of a base on the suite's worked solutions until it solves
roughly `sft.target_accuracy` of training prompts (sampled at the rollout temperature), so RL
groups start with mixed rewards. Plain torch AdamW: this is data preparation for the benchmark,
not the policy update under comparison.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from evals.suites import get_suite
from evals.verifiers import get_reward
from rlvr.config import RunConfig
from rlvr.data import load_records
from rlvr.device import provenance, resolve_precision, set_threads
from rlvr.engines import ROLLOUT_FIELD, check_names, choice_outside_training
from rlvr.extensions import import_modules
from rlvr.io import atomic_write_json
from rlvr.models import (
    TinySpec,
    build_tiny_model,
    load_model_and_tokenizer,
    save_checkpoint,
    use_bf16_friendly_attention,
)
from rlvr.plan import BASE_DIR_KEEPS
from rlvr.retrieval import check_retriever, make_retriever
from rlvr.rollout import make_rollout_engine
from rlvr.rollout.episode import scripted_segments
from rlvr.run_state import seed_everything


def build_base(cfg: RunConfig):
    if cfg.model.family:
        return build_tiny_model(
            cfg.model.family, TinySpec(**cfg.model.tiny.model_dump()), seed=cfg.seed
        )
    if cfg.model.name_or_path:
        return load_model_and_tokenizer(cfg.model.name_or_path)
    raise ValueError("rlvr sft needs model.family (a tiny model) or model.name_or_path")


def encode_examples(tok, records, cfg: RunConfig | None = None) -> list[tuple[list[int], list[bool]]]:
    """(ids, which of them are trained on) per record: the prompt, then the worked solution and
    EOS (metadata["solution"]), or for a search suite (metadata["actions"]) the worked episode:
    the model's turns trained on, the passages the configured retriever returns for its
    searches (rollout.episode) in between and not trained on, tokenized turn by turn as an
    episode is."""
    retriever = None
    out = []
    for r in records:
        p = tok(r.prompt, add_special_tokens=False)["input_ids"]
        if "actions" in r.metadata:
            if cfg is None or cfg.rollout.episode.mode != "search":
                raise ValueError(f"record {r.id!r} is a search episode (metadata.actions): SFT needs "
                                 "rollout.episode.mode=search and its retriever")
            retriever = retriever or make_retriever(cfg.rollout.episode.retriever)
            segments = scripted_segments([tuple(a) for a in r.metadata["actions"]], retriever, cfg.rollout.episode)
        elif "solution" in r.metadata:
            segments = [(r.metadata["solution"], True)]
        else:
            raise ValueError(
                f"record {r.id!r} has no metadata.solution or metadata.actions; SFT needs worked solutions"
            )
        ids, trained = list(p), [False] * len(p)
        for text, by_model in segments:
            seg = tok(text, add_special_tokens=False)["input_ids"]
            ids += seg
            trained += [by_model] * len(seg)
        if "solution" in r.metadata:
            ids, trained = ids + [tok.eos_token_id], trained + [True]
        out.append((ids, trained))
    return out


def collate(examples: list[tuple[list[int], list[bool]]], pad_id: int):
    """Right-padded ids, attention mask and labels that score the trained tokens only."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, trained) in enumerate(examples):
        row = torch.tensor(x)
        ids[i, : len(x)] = row
        attn[i, : len(x)] = 1
        labels[i, : len(x)] = torch.where(torch.tensor(trained), row, torch.full_like(row, -100))
    return ids, attn, labels


@torch.no_grad()
def sampled_accuracy(model, tok, cfg: RunConfig, records, reward_fn, seed: int) -> float:
    # the model in hand, not the trainer's policy: an engine that samples the policy only (vllm)
    # gives way to auto (native where it applies)
    choice = choice_outside_training(ROLLOUT_FIELD, cfg.rollout.engine)
    engine = make_rollout_engine(cfg.rollout.model_copy(update={"engine": choice}), model, tok)
    rewards = []
    for i in range(0, len(records), 64):
        chunk = records[i : i + 64]
        roll = engine.generate([r.prompt for r in chunk], 1, seeds=[seed + i + j for j in range(len(chunk))])
        rewards += [reward_fn(t, r.answer) for t, r in zip(roll.texts, chunk, strict=True)]
    return sum(rewards) / max(len(rewards), 1)


def sft(cfg: RunConfig) -> dict:
    out_dir = Path(cfg.output_dir)
    import_modules(cfg.algorithm.modules)  # engines of your own register before one is chosen
    check_names(cfg)
    seed_everything(cfg.seed)
    set_threads(cfg)
    records = load_records(cfg.data.train)
    check_retriever(cfg.rollout.episode)
    # "accuracy": the suite's correctness (EM for a search suite, whose reward adds a format score)
    reward_fn = get_reward(get_suite(cfg.data.suite).correctness if not cfg.data.reward else cfg.data.reward)
    model, tok = build_base(cfg)
    examples = encode_examples(tok, records, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    eval_records = [
        records[i]
        for i in torch.randperm(len(records), generator=gen)[: cfg.sft.eval_prompts].tolist()
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft.lr, betas=(0.9, 0.99))
    precision = resolve_precision("sft.precision", cfg.sft.precision)
    print(f"sft: {precision.used} ({precision.why})", flush=True)
    bf16 = precision.used == "bf16"
    if bf16:
        use_bf16_friendly_attention(model)
    history, t0, acc, step = [], time.perf_counter(), 0.0, 0
    model.train()
    for step in range(1, cfg.sft.max_steps + 1):
        idx = torch.randint(len(examples), (cfg.sft.batch_size,), generator=gen).tolist()
        ids, attn, labels = collate([examples[i] for i in idx], tok.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg.sft.eval_every == 0 or step == cfg.sft.max_steps:
            acc = sampled_accuracy(model, tok, cfg, eval_records, reward_fn, seed=cfg.seed + step)
            model.train()
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "sampled_accuracy": acc,
                    "seconds": time.perf_counter() - t0,
                }
            )
            if cfg.logging.progress:
                print(
                    f"sft step {step} loss {loss.item():.4f} sampled accuracy {acc:.3f}", flush=True
                )
            if acc >= cfg.sft.target_accuracy:
                break
    summary = {
        "target_accuracy": cfg.sft.target_accuracy,
        "reached_accuracy": acc,
        "reached_target": acc >= cfg.sft.target_accuracy,
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "eval_prompts": len(eval_records),
        "temperature": cfg.rollout.temperature,
        **provenance(precision),
        "history": history,
    }
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tok, tmp)
    atomic_write_json(tmp / "sft.json", summary)
    for planned in BASE_DIR_KEEPS:  # the run plan's files stay, with their mtimes (Snakemake reads them)
        if (out_dir / planned).exists() and not (tmp / planned).exists():
            (out_dir / planned).rename(tmp / planned)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return summary
