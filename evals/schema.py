"""The one record schema every suite (shipped or loaded) maps into.

A record is one problem:
  id        unique within its suite and split, stable across runs
  prompt    the exact text given to the model (the suite's documented prompt format)
  answer    the gold final answer as a string (integer for math, short span for QA)
  metadata  free-form dict; shipped suites put the worked solution used by SFT under
            metadata["solution"] (the exact completion text, ending in \\boxed{answer})
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Record:
    id: str
    prompt: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        missing = {"id", "prompt", "answer"} - d.keys()
        if missing:
            raise ValueError(f"record is missing field(s) {sorted(missing)}; a record needs id, prompt, answer, metadata")
        return cls(id=str(d["id"]), prompt=str(d["prompt"]), answer=str(d["answer"]), metadata=dict(d.get("metadata") or {}))
