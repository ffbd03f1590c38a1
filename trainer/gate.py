"""The offline evaluation gate: should a freshly trained adapter replace the current one?

Four checks, each skipped (and said so) when its inputs are missing or too few to judge on:

- preference accuracy: on held-out pairs (at least `min_pref_pairs`), does the candidate's
  DPO implicit reward [log p_cand(chosen) - log p_cur(chosen)] - [same for rejected] favour
  the chosen answer?
- win rate: on held-out prompts, does the reward model prefer the candidate's greedy answers
  to the current adapter's?
- fluency: DPO can over-optimize into gibberish that still "wins" the checks above, so the
  candidate's answers must not become much less likely under the BASE model than the base
  model's own answers are (mean per-token NLL, nats): anchored to the base, so small drifts
  cannot add up round after round.
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
from trainer.train import RewardModel, completion_ids, load_tokenizer, prompt_ids

__all__ = ["GateConfig", "GateReport", "evaluate", "preference_accuracy"]

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CURRENT = "current"


@dataclass
class GateReport:
    """Verdict with every number behind it. `reasons` names each failed check."""

    passed: bool
    reasons: list[str]
    metrics: dict[str, float]
    skipped: list[str] = field(default_factory=list)


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


def _win_rate(
    reward_model: RewardModel,
    prompts: list[list[ChatMessage]],
    candidate: _Answers,
    current: _Answers,
) -> float:
    cand = reward_model.score(prompts, candidate.texts)
    cur = reward_model.score(prompts, current.texts)
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(cand, cur, strict=True)]
    return _mean(wins)


def _length_ratio(candidate: _Answers, current: _Answers, eos: int) -> tuple[float, float, float]:
    cand = _mean([_text_length(t, eos) for t in candidate.tokens])
    cur = _mean([_text_length(t, eos) for t in current.tokens])
    if cur == 0:
        return cand, cur, 1.0 if cand == 0 else float("inf")
    return cand, cur, cand / cur


# ---- the gate ------------------------------------------------------------------------------


@dataclass
class _Verdict:
    reasons: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def _check_preferences(
    policies: _Policies,
    ref: str | None,
    pairs: list[PreferencePair],
    config: GateConfig,
    v: _Verdict,
) -> None:
    if not pairs:
        v.skipped.append("preference accuracy: no held-out pairs")
        return
    acc = _pref_accuracy(policies, CANDIDATE, ref, pairs, config)
    v.metrics["pref_accuracy"] = acc
    v.metrics["n_pairs"] = float(len(pairs))
    if len(pairs) < config.min_pref_pairs:
        v.skipped.append(
            f"preference accuracy: {len(pairs)} held-out pairs < {config.min_pref_pairs}, "
            "not judged"
        )
    elif acc < config.min_pref_accuracy:
        v.reasons.append(
            f"preference accuracy {acc:.3f} < {config.min_pref_accuracy:.3f} "
            f"on {len(pairs)} held-out pairs"
        )


def _check_answers(
    policies: _Policies,
    ref: str | None,
    prompts: list[list[ChatMessage]],
    reward_model: RewardModel | None,
    config: GateConfig,
    v: _Verdict,
) -> None:
    if not prompts:
        v.skipped.extend(f"{c}: no held-out prompts" for c in ("win rate", "fluency", "length"))
        return
    tok = policies.tokenizer
    with policies.use(CANDIDATE) as model:
        cand = _generate(model, tok, prompts, config)
    with policies.use(ref) as model:
        cur = _generate(model, tok, prompts, config)
    base = cur
    if ref is not None:  # the fluency anchor is the base model's own answers
        with policies.use(None) as model:
            base = _generate(model, tok, prompts, config)
    v.metrics["n_prompts"] = float(len(prompts))
    if reward_model is None:
        v.skipped.append("win rate: no reward model")
    else:
        win = v.metrics["win_rate"] = _win_rate(reward_model, prompts, cand, cur)
        if win < config.min_win_rate:
            v.reasons.append(
                f"reward-model win rate {win:.3f} < {config.min_win_rate:.3f} "
                f"on {len(prompts)} prompts"
            )
    _check_fluency(policies, prompts, cand, cur, base, config, v)
    _check_length(cand, cur, tok.eos_token_id, config, v)


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
    nll_cand = v.metrics["nll_candidate"] = _base_nll(policies, prompts, cand, config)
    v.metrics["nll_current"] = _base_nll(policies, prompts, cur, config)
    nll_base = v.metrics["nll_base"] = (
        v.metrics["nll_current"] if base is cur else _base_nll(policies, prompts, base, config)
    )
    increase = v.metrics["nll_increase"] = nll_cand - nll_base
    if increase > config.max_nll_increase:
        v.reasons.append(
            f"fluency: base-model NLL of the candidate's answers {nll_cand:.3f} exceeds the "
            f"base model's own {nll_base:.3f} by {increase:.3f} > {config.max_nll_increase:.3f} "
            "nats/token"
        )


def _check_length(cand: _Answers, cur: _Answers, eos: int, config: GateConfig, v: _Verdict) -> None:
    len_cand, len_cur, ratio = _length_ratio(cand, cur, eos)
    v.metrics.update(length_candidate=len_cand, length_current=len_cur, length_ratio=ratio)
    if not config.min_length_ratio <= ratio <= config.max_length_ratio:
        v.reasons.append(
            f"length: candidate answers average {len_cand:.1f} tokens vs current {len_cur:.1f} "
            f"(ratio {ratio:.2f} outside [{config.min_length_ratio:.2f}, "
            f"{config.max_length_ratio:.2f}])"
        )


def evaluate(
    base_model: Path,
    candidate: Path,
    current: Path | None,
    held_out_pairs: list[PreferencePair],
    prompts: list[list[ChatMessage]],
    reward_model: RewardModel | None,
    config: GateConfig,
) -> GateReport:
    """Judge `candidate` against `current` (None = the base model). See the module docstring.

    Passes only if every applicable check passes; a check without inputs is listed in
    `skipped`, and if every check was skipped the candidate does not pass.
    """
    adapters = {CANDIDATE: candidate} | ({CURRENT: current} if current is not None else {})
    policies = _Policies(base_model, adapters)
    ref = CURRENT if current is not None else None
    v = _Verdict()
    _check_preferences(policies, ref, held_out_pairs, config, v)
    _check_answers(policies, ref, prompts[: config.n_prompts], reward_model, config, v)
    if len(v.skipped) == 4:
        v.reasons.append("no check could run: no held-out pairs and no prompts")
    report = GateReport(not v.reasons, v.reasons, v.metrics, v.skipped)
    log.info(
        "gate %s: %s metrics=%s skipped=%s",
        "passed" if report.passed else "rejected",
        "; ".join(report.reasons) or "all checks passed",
        {k: round(x, 4) for k, x in report.metrics.items()},
        report.skipped,
    )
    return report
