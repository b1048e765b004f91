"""Verifiable rewards: score a model completion against a gold answer.

Every reward here takes (completion, answer) and returns a float in [0, 1]. They never raise on
model output and do bounded work on any string (empty, megabytes long, odd unicode, unbalanced
braces), because the RL loop calls them on whatever a policy happens to generate.

- math_reward: 1.0 if the last \\boxed{...} of the completion equals the gold answer (integers
  compared exactly, anything else through math-verify), else 0.0. An unboxed answer scores 0.
- qa_em / qa_f1: SQuAD/HotpotQA exact match and token F1 of the predicted span (see
  `extract_qa_answer` for which part of the completion is the prediction); qa_f1 is HotpotQA's
  official F1 (its yes/no rule), what QA evaluation reports.
- search_f1 / search_f1_think: the seed's search reward, SQuAD F1 of the model's final
  <answer> (no yes/no rule, as layer6ai-labs/wapo) + 0.3 × a format score.
"""

from __future__ import annotations

import re
import string
import threading
from collections import Counter
from collections.abc import Callable, Sequence

# Only the tail of a completion is scanned for \boxed: the final answer sits at the end, and this
# bounds the work whatever the completion length.
MAX_SCAN_CHARS = 100_000
# A boxed answer longer than this is not an answer; math-verify (sympy) is never fed more.
MAX_VERIFY_CHARS = 1_000
# QA predictions are cut to this many characters before normalisation.
MAX_QA_PRED_CHARS = 2_000
# math-verify's own timeouts (seconds); only usable in the main thread (they use signal.alarm).
MATH_VERIFY_TIMEOUT_S = 3

_BOX_TOKENS = re.compile(r"\\boxed\s*\{|\\[{}]|[{}]")
_INT = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)")  # "1000", "-7", "1,000" (thousands commas)


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level \\boxed{...} in `text`, or None.

    Braces are matched (escaped \\{ and \\} do not count), so nested groups such as
    \\boxed{\\frac{1}{2}} come out whole. A box that only wraps another box is unwrapped
    (\\boxed{\\boxed{5}} -> "5"). If the last box is never closed (a truncated answer) the result
    is None rather than an earlier answer. Only the last MAX_SCAN_CHARS characters are scanned.
    """
    if not isinstance(text, str):
        return None
    text = text[-MAX_SCAN_CHARS:]
    span = _last_box(text)
    if span is None:
        return None
    content = text[span[1] : span[2]].strip()
    for _ in range(4):  # bounded: each unwrap is a full pass
        inner = _last_box(content)
        if not inner or inner[0] != 0 or inner[2] != len(content) - 1:
            break
        content = content[inner[1] : inner[2]].strip()
    return content


def _last_box(text: str) -> tuple[int, int, int] | None:
    """(box start, content start, content end) of the last closed top-level box; None if there
    is none or the last one is still open. One regex pass, so linear in len(text)."""
    stack: list[bool] = []  # one entry per open brace: True if it opened a \\boxed
    open_boxes = 0  # how many True entries `stack` holds
    current: tuple[int, int] | None = None  # the open top-level box: (box start, content start)
    last: tuple[int, int, int] | None = None
    for m in _BOX_TOKENS.finditer(text):
        tok = m.group()
        if tok in ("\\{", "\\}"):
            continue  # escaped literal brace
        if tok != "}":
            is_box = tok != "{"
            if is_box and current is None:
                current = (m.start(), m.end())
            stack.append(is_box)
            open_boxes += is_box
        elif stack and stack.pop():
            open_boxes -= 1
            if open_boxes == 0 and current is not None:
                last, current = (*current, m.start()), None
    return None if current is not None else last


def _as_int(s: str) -> int | None:
    if len(s) > 200 or not _INT.fullmatch(s):
        return None
    return int(s.replace(",", ""))


def math_reward(completion: str, answer: str) -> float:
    """1.0 if the completion's last boxed answer equals `answer`, else 0.0 (never raises).

    Plain integers on both sides (optionally with thousands commas, "1,000") are compared as
    ints without math-verify. Everything else goes through math-verify,
    verify(parse(gold), parse(pred)) with gold first, both wrapped in \\boxed{}.
    """
    try:
        pred = extract_boxed(completion)
        if not pred or len(pred) > MAX_VERIFY_CHARS:
            return 0.0
        gold = str(answer).strip()
        gold_int, pred_int = _as_int(gold), _as_int(pred)
        if gold_int is not None and pred_int is not None:
            return float(gold_int == pred_int)
        return float(_math_verify(gold, pred))
    except Exception:
        return 0.0


def _math_verify(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    # signal.alarm only works in the main thread; elsewhere math-verify must run without it.
    timeout = (
        MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    )
    gold_p = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout)
    pred_p = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout)
    return bool(verify(gold_p, pred_p, timeout_seconds=timeout))


# --- QA (SQuAD / HotpotQA official evaluation) -------------------------------------------------

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop articles a/an/the, collapse whitespace (HotpotQA)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def extract_qa_answer(completion: str) -> str:
    """The predicted span: the last <answer>...</answer> (a search episode's final answer), else
    the last \\boxed{} content; otherwise the first non-empty line after the last "A:"; otherwise
    the first non-empty line of the completion."""
    if not isinstance(completion, str):
        return ""
    tagged = tagged_answer(completion)
    if tagged is not None:
        return tagged
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed[:MAX_QA_PRED_CHARS]
    cut = completion.rfind("A:")
    text = (completion[cut + 2 :] if cut >= 0 else completion).lstrip()
    return text.split("\n", 1)[0][:MAX_QA_PRED_CHARS].strip()


def _f1(pred: str, gold: str) -> float:
    """Token F1 exactly as in the HotpotQA evaluation script (incl. its yes/no/noanswer rule:
    a prediction or gold among them scores 0 unless the two are equal)."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if (p in ("yes", "no", "noanswer") or g in ("yes", "no", "noanswer")) and p != g:
        return 0.0
    return _token_f1(p.split(), g.split())


def squad_f1(pred: str, gold: str) -> float:
    """Token F1 as SQuAD v2's `compute_f1`, which the seed's search reward uses (layer6ai-labs/wapo
    environments/vf_rag_agent: no yes/no rule; an empty side scores 1 only if both are empty)."""
    p_toks, g_toks = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p_toks or not g_toks:
        return float(p_toks == g_toks)
    return _token_f1(p_toks, g_toks)


def _token_f1(p_toks: list[str], g_toks: list[str]) -> float:
    same = sum((Counter(p_toks) & Counter(g_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p_toks), same / len(g_toks)
    return 2 * precision * recall / (precision + recall)


def _golds(answer: str | Sequence[str]) -> list[str]:
    return [answer] if isinstance(answer, str) else [str(a) for a in answer]


def qa_em(completion: str, answer: str | Sequence[str]) -> float:
    """Exact match after normalisation; `answer` may be a list of aliases (max over them)."""
    try:
        pred = normalize_answer(extract_qa_answer(completion))
        return float(any(pred == normalize_answer(g) for g in _golds(answer)))
    except Exception:
        return 0.0


def qa_f1(completion: str, answer: str | Sequence[str]) -> float:
    """HotpotQA token F1; `answer` may be a list of aliases (max over them)."""
    try:
        pred = extract_qa_answer(completion)
        return max((_f1(pred, g) for g in _golds(answer)), default=0.0)
    except Exception:
        return 0.0


# --- search episodes (rlvr/rollout/episode.py) -----------------------------------------------------

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# what an episode injects between the model's turns (the <information> block and Search-R1's
# invalid-action notice; rlvr.rollout.episode writes both exactly so)
_INJECTED = re.compile(
    r"\n\n<information>.*?</information>\n\n|\nMy previous action is invalid\. .*? Let me try again\.\n",
    re.DOTALL,
)
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*>")
FORMAT_WEIGHT = 0.3  # the seed's search reward: F1 + 0.3 × format (layer6ai-labs/wapo)


def tagged_answer(completion: str) -> str | None:
    """The content of the last complete <answer>...</answer> the model wrote, or None. Injected
    blocks are never read (the invalid-action notice itself spells "<answer> and </answer>"),
    and a tag is complete within one model turn: an unclosed <answer> cut by a notice is none."""
    for turn in reversed(model_turns(completion)):
        found = _ANSWER_TAG.findall(turn)
        if found:
            return found[-1].strip()[:MAX_QA_PRED_CHARS]
    return None


def model_turns(completion: str) -> list[str]:
    """A search episode's completion split back into the model's turns (the injected blocks
    removed)."""
    turns = _INJECTED.split(completion[-MAX_SCAN_CHARS:])
    return turns[:-1] if len(turns) > 1 and not turns[-1].strip() else turns


_SEARCH_TAG = re.compile(r"<search>(.*?)</search>", re.DOTALL)


def search_count(completion: str) -> int:
    """How many of the model's turns searched: a complete, non-empty <search>..</search> (what
    the episode counts as a search; a turn holds one action, cut after its first closing tag)."""
    return sum(bool((m := _SEARCH_TAG.search(turn)) and m.group(1).strip()) for turn in model_turns(completion))


def search_format(completion: str, think: bool = False) -> float:
    """The seed's format score: the share of model turns that are exactly `[<think>..</think>]
    <search>..</search>` (the last may be `<answer>..</answer>` instead), with non-empty contents
    holding no tags; `think` makes the reasoning block required (as the seed's prompt asks).
    An episode of one turn scores 0 (it never searched)."""
    turns = model_turns(completion)
    if len(turns) < 2:
        return 0.0
    reasoning = r"<think>(.+?)</think>\s*" + ("" if think else "|")
    good = 0
    for i, turn in enumerate(turns):
        actions = "search|answer" if i == len(turns) - 1 else "search"
        m = re.fullmatch(rf"\s*(?:{reasoning})<({actions})>(.+?)</\2>\s*", turn, re.DOTALL)
        parts = [] if m is None else [g for g in (m.group(1), m.group(3)) if g is not None]
        good += bool(m) and all(p.strip() and not _TAG.search(p) for p in parts)
    return good / len(turns)


def _search_reward(completion: str, answer: str | Sequence[str], think: bool) -> float:
    try:
        pred = tagged_answer(completion)
        f1 = 0.0 if not pred else max((squad_f1(pred, g) for g in _golds(answer)), default=0.0)
        return f1 + FORMAT_WEIGHT * search_format(completion, think)
    except Exception:
        return 0.0


def search_f1(completion: str, answer: str | Sequence[str]) -> float:
    """SQuAD F1 of the final <answer> (0 without one, or an empty one) + 0.3 × the format score,
    <think> optional: the seed's reward for models not prompted to think."""
    return _search_reward(completion, answer, think=False)


def search_f1_think(completion: str, answer: str | Sequence[str]) -> float:
    """The seed's reward exactly (layer6ai-labs/wapo vf_rag_agent: 1.0 × compute_f1 + 0.3 ×
    format_reward_func): as search_f1, with a <think> block required in every turn. One
    deviation, in the episode rather than the reward: an invalid turn ends wapo's episode, here
    it is answered with Search-R1's notice."""
    return _search_reward(completion, answer, think=True)


Reward = Callable[[str, str], float]
REWARDS: dict[str, Reward] = {
    "math": math_reward, "qa_em": qa_em, "qa_f1": qa_f1,
    "search_f1": search_f1, "search_f1_think": search_f1_think,
}  # fmt: skip


def get_reward(name: str) -> Reward:
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; valid: {sorted(REWARDS)}") from None
