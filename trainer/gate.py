"""The offline evaluation gate: should a freshly trained adapter replace the current one?

Five checks, each skipped (and said so) when its inputs are missing or too few to judge on;
each one's decision, numbers and thresholds go into `GateReport.checks`. The rules
themselves are in `trainer.gate_checks`; this module runs the models that feed them.

- preference accuracy: on held-out pairs (at least `min_pref_pairs`), does the candidate's
  DPO implicit reward [log p_cand(chosen) - log p_cur(chosen)] - [same for rejected] favour
  the chosen answer?
- win rate: on held-out prompts, does a judge (the reward model, or any pairwise `Judge`)
  prefer the candidate's greedy answers to the current adapter's? Each prompt is judged
  in both orders and only order-consistent verdicts count; the candidate passes when the
  Wilson interval of its win rate is not below `min_win_rate_lower`, so 10-30 prompts are
  not taken for more evidence than they are.
- fluency: DPO can over-optimize into gibberish that still "wins" the checks above, so the
  candidate's answers must not become much less likely under the BASE model than the base
  model's own answers are (mean per-token NLL, nats): anchored to the base, so small drifts
  cannot add up round after round.
- repetition: nor may they repeat themselves much more than the base model's own answers
  do (word 3-grams); a loop is likely text, which the NLL check can miss.
- length: answers must not collapse or balloon relative to the current adapter's.

The base model is loaded once per evaluate; candidate and current adapters are switched on it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from streaming.events import ChatMessage, PreferencePair
from trainer.config import GateConfig
from trainer.gate_checks import (
    Check,
    Judge,
    ScoreJudge,
    Scorer,
    check_fluency,
    check_length,
    check_preferences,
    check_repetition,
    check_win_rate,
    judge_both_orders,
    skipped,
)
from trainer.train import completion_ids, load_tokenizer, prompt_ids

__all__ = ["Check", "GateConfig", "GateReport", "Judge", "evaluate", "preference_accuracy"]

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CURRENT = "current"


@dataclass
class GateReport:
    """Verdict with every number behind it: `checks` holds each check's decision, numbers,
    thresholds and reason; `reasons` names each failed check and `skipped` each skipped one
    (both derived from `checks`), `metrics` is every check's numbers in one flat dict."""

    passed: bool
    reasons: list[str]
    metrics: dict[str, float]
    skipped: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @classmethod
    def of(cls, checks: list[Check], metrics: dict[str, float]) -> GateReport:
        reasons = [c.reason for c in checks if c.decision == "failed"]
        if all(c.decision == "skipped" for c in checks):
            reasons.append("no check could run: no held-out pairs and no prompts")
        skips = [c.reason for c in checks if c.decision == "skipped"]
        return cls(not reasons, reasons, metrics, skips, checks)


# ---- models --------------------------------------------------------------------------------


class _Policies:
    """The base model with adapters loaded once under fixed names; `use` switches between them
    (None = base, adapters disabled)."""

    def __init__(self, base_model: Path, adapters: dict[str, Path]) -> None:
        from peft import PeftModel

        self.tokenizer = load_tokenizer(base_model)
        model: Any = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32)
        for name, path in adapters.items():
            if isinstance(model, PeftModel):
                model.load_adapter(str(path), adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        self.model = model.eval()
        self.names = set(adapters)

    @contextlib.contextmanager
    def use(self, name: str | None) -> Iterator[Any]:
        if name is None:
            with self.model.disable_adapter() if self.names else contextlib.nullcontext():
                yield self.model
            return
        if name not in self.names:
            raise KeyError(f"adapter {name!r} is not loaded")
        self.model.set_adapter(name)
        yield self.model


def _fit(prompt: list[int], answer: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut to max_length keeping the answer (up to half of it) and the end of the prompt."""
    answer = answer[: max(1, max_length // 2)]
    keep = max_length - len(answer)
    return prompt[-keep:] if keep > 0 else [], answer


@torch.inference_mode()
def _answer_logps(
    model: Any, items: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int
) -> list[list[float]]:
    """Per-token log-probabilities of each answer given its prompt (teacher forcing)."""
    out: list[list[float]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        seqs = [p + a for p, a in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        for row, (p, a) in enumerate(chunk):
            if not a:
                out.append([])
                continue
            # The token at position t is predicted by the logits at t - 1.
            positions = torch.arange(len(p) - 1, len(p) + len(a) - 1)
            logp = torch.log_softmax(logits[row, positions], dim=-1)
            out.append(logp.gather(1, torch.tensor(a).unsqueeze(1)).squeeze(1).tolist())
    return out


def _pair_items(
    tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """[chosen_0, ..., chosen_n, rejected_0, ..., rejected_n] as (prompt ids, answer ids)."""
    items = []
    for side in ("chosen", "rejected"):
        for pair in pairs:
            head, answer = completion_ids(tokenizer, pair.prompt, getattr(pair, side))
            items.append(_fit(head, answer, max_length))
    return items


def _pref_accuracy(
    policies: _Policies,
    candidate: str,
    reference: str | None,
    pairs: Sequence[PreferencePair],
    config: GateConfig,
) -> float:
    items = _pair_items(policies.tokenizer, pairs, config.max_length)
    pad = policies.tokenizer.pad_token_id
    sums: dict[str | None, list[float]] = {}
    for name in (candidate, reference):
        with policies.use(name) as model:
            sums[name] = [sum(x) for x in _answer_logps(model, items, pad, config.batch_size)]
    n = len(pairs)
    ratio = [c - r for c, r in zip(sums[candidate], sums[reference], strict=True)]
    margins = [ratio[i] - ratio[n + i] for i in range(n)]
    return sum(1 for m in margins if m > 0) / n


def preference_accuracy(
    base_model: Path,
    candidate: Path,
    reference: Path | None,
    pairs: list[PreferencePair],
    config: GateConfig | None = None,
) -> float:
    """Fraction of pairs where the candidate's implicit reward
    [logp_cand(chosen) - logp_ref(chosen)] - [same for rejected] is > 0.
    `reference` None = the base model (adapter disabled)."""
    if not pairs:
        raise ValueError("preference accuracy needs at least one pair")
    adapters = {CANDIDATE: candidate} | ({CURRENT: reference} if reference is not None else {})
    policies = _Policies(base_model, adapters)
    ref = CURRENT if reference is not None else None
    return _pref_accuracy(policies, CANDIDATE, ref, pairs, config or GateConfig())


# ---- generation-based checks ---------------------------------------------------------------


@dataclass
class _Answers:
    texts: list[str]
    tokens: list[list[int]]  # generated ids, up to and including the end-of-turn token if any


@torch.inference_mode()
def _generate(
    model: Any, tokenizer: Any, prompts: Sequence[list[ChatMessage]], config: GateConfig
) -> _Answers:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    texts: list[str] = []
    tokens: list[list[int]] = []
    for start in range(0, len(prompts), config.batch_size):
        heads = [prompt_ids(tokenizer, p) for p in prompts[start : start + config.batch_size]]
        heads = [h[-(config.max_length - config.max_new_tokens) :] for h in heads]
        width = max(len(h) for h in heads)
        # Left padding: every row's answer starts at the same column.
        ids = torch.tensor([[pad] * (width - len(h)) + h for h in heads])
        mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads])
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=config.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        for row in out[:, width:].tolist():
            cut = row.index(eos) + 1 if eos in row else len(row)
            tokens.append(row[:cut])
            texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return _Answers(texts, tokens)


def _text_length(tokens: list[int], eos: int) -> int:
    return len([t for t in tokens if t != eos])


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _base_nll(
    policies: _Policies,
    prompts: Sequence[list[ChatMessage]],
    answers: _Answers,
    config: GateConfig,
) -> float:
    """Mean over answers of each answer's mean per-token NLL under the base model."""
    tok = policies.tokenizer
    items = [
        _fit(prompt_ids(tok, p), a, config.max_length)
        for p, a in zip(prompts, answers.tokens, strict=True)
        if a
    ]
    if not items:
        return 0.0
    with policies.use(None) as model:
        logps = _answer_logps(model, items, tok.pad_token_id, config.batch_size)
    return _mean([-_mean(x) for x in logps])


# ---- the gate ------------------------------------------------------------------------------

# (Check.name, how its reasons start) of the checks on generated answers, in order.
ANSWER_CHECKS = (
    ("win_rate", "win rate"),
    ("fluency", "fluency"),
    ("repetition", "repetition"),
    ("length", "length"),
)


@dataclass
class _Verdict:
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def add(self, check: Check) -> None:
        self.checks.append(check)
        self.metrics.update(check.values)


def _check_preferences(
    policies: _Policies,
    ref: str | None,
    pairs: list[PreferencePair],
    config: GateConfig,
    v: _Verdict,
) -> None:
    if not pairs:
        v.add(skipped("pref_accuracy", "preference accuracy: no held-out pairs"))
        return
    acc = _pref_accuracy(policies, CANDIDATE, ref, pairs, config)
    v.add(check_preferences(acc, len(pairs), config.min_pref_pairs, config.min_pref_accuracy))


def _check_answers(
    policies: _Policies,
    ref: str | None,
    prompts: list[list[ChatMessage]],
    judge: Judge | None,
    config: GateConfig,
    v: _Verdict,
) -> None:
    if not prompts:
        for name, label in ANSWER_CHECKS:
            v.add(skipped(name, f"{label}: no held-out prompts"))
        return
    tok = policies.tokenizer
    with policies.use(CANDIDATE) as model:
        cand = _generate(model, tok, prompts, config)
    with policies.use(ref) as model:
        cur = _generate(model, tok, prompts, config)
    base = cur
    if ref is not None:  # the fluency and repetition anchor is the base model's own answers
        with policies.use(None) as model:
            base = _generate(model, tok, prompts, config)
    v.metrics["n_prompts"] = float(len(prompts))
    if judge is None:
        v.add(skipped("win_rate", "win rate: no reward model"))
    else:
        verdicts = judge_both_orders(judge, prompts, cand.texts, cur.texts)
        v.add(check_win_rate(verdicts, config.win_rate_confidence, config.min_win_rate_lower))
    _check_fluency(policies, prompts, cand, cur, base, config, v)
    v.add(check_repetition(cand.texts, cur.texts, base.texts, config.max_repetition_increase))
    eos = tok.eos_token_id
    v.add(
        check_length(
            _mean([_text_length(t, eos) for t in cand.tokens]),
            _mean([_text_length(t, eos) for t in cur.tokens]),
            config.min_length_ratio,
            config.max_length_ratio,
        )
    )


def _check_fluency(
    policies: _Policies,
    prompts: list[list[ChatMessage]],
    cand: _Answers,
    cur: _Answers,
    base: _Answers,
    config: GateConfig,
    v: _Verdict,
) -> None:
    """Anchored to the base model's own answers, not the current adapter's: measured
    against the current one, each round could drift a little further from fluent text
    (in the learning bench three rounds went 0.66 -> 1.19 -> 1.98 -> 3.65 nats)."""
    nll_cand = _base_nll(policies, prompts, cand, config)
    nll_cur = _base_nll(policies, prompts, cur, config)
    nll_base = nll_cur if base is cur else _base_nll(policies, prompts, base, config)
    v.add(check_fluency(nll_cand, nll_cur, nll_base, config.max_nll_increase))


def evaluate(
    base_model: Path,
    candidate: Path,
    current: Path | None,
    held_out_pairs: list[PreferencePair],
    prompts: list[list[ChatMessage]],
    reward_model: Scorer | None,
    config: GateConfig,
    judge: Judge | None = None,
) -> GateReport:
    """Judge `candidate` against `current` (None = the base model). See the module docstring.

    The win rate is judged by `judge` if given (a pairwise judge, e.g. an LLM), else by the
    reward model's scores; with neither it is skipped. Passes only if no check failed and
    at least one ran; a check without inputs is skipped and says why.
    """
    if judge is None and reward_model is not None:
        judge = ScoreJudge(reward_model, config.reward_tie_margin)
    adapters = {CANDIDATE: candidate} | ({CURRENT: current} if current is not None else {})
    policies = _Policies(base_model, adapters)
    ref = CURRENT if current is not None else None
    v = _Verdict()
    _check_preferences(policies, ref, held_out_pairs, config, v)
    _check_answers(policies, ref, prompts[: config.n_prompts], judge, config, v)
    report = GateReport.of(v.checks, v.metrics)
    log.info(
        "gate %s: %s metrics=%s skipped=%s",
        "passed" if report.passed else "rejected",
        "; ".join(report.reasons) or "all checks passed",
        {k: round(x, 4) for k, x in report.metrics.items()},
        report.skipped,
    )
    return report
