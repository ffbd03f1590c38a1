"""The reward model as a teacher: iterative (online) DPO on the policy's own samples.

Sparse human feedback trains the round's reward model; the reward model then labels
answers the policy itself gives. For prompts seen in traffic (on the training side of the
split: the gate's held-out prompts are never sampled), k answers of the stable adapter
come from the serving engine (a ``Sampler``), the reward model scores them, and each
prompt's best and worst answer become a DPO pair next to the users' own pairs, as in
TRL's online DPO or the "iterative DPO" recipes. On-policy pairs are what DPO learns
most from: they are answers the reference (the stable adapter) actually gives.

A wrong reward model must not run away with the policy, so its pairs are held back:
only a reward model that passed its held-out accuracy check teaches; only clear wins
(``min_margin``) make pairs; a teacher pair weighs less than a user pair (``weight``);
there are at most ``ratio`` teacher pairs per user pair (the clearest kept); they are
marked ``provenance="teacher"`` and never stored or sent anywhere; and the gate still
judges the candidate on held-out *user* pairs, fluency and win rate.

Everything here but ``teach`` is a pure decision; ``teach`` does the round's I/O through
the ``Sampler``, ``Scorer`` and ``PromptSource`` protocols, so tests use fakes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from streaming.events import ChatMessage, PreferenceLabel, PreferencePair
from trainer.config import TeacherConfig
from trainer.gate_checks import repetition

log = logging.getLogger(__name__)

# Interactions read per prompt wanted: traffic repeats prompts, and some are held out.
SCAN_FACTOR = 8
PAIR_PREFIX = "teacher-"
CUT_SUFFIX = ":cut"


@dataclass(frozen=True)
class Sample:
    """One sampled answer, and why it ended (vLLM's "stop", "length", ...)."""

    text: str
    finish_reason: str | None


class Sampler(Protocol):
    """Samples answers of a named adapter, outside user traffic (see serving.sampling)."""

    def sample(
        self,
        adapter: str,
        prompts: Sequence[list[ChatMessage]],
        k: int,
        max_tokens: int,
        temperature: float,
        timeout_s: float,
    ) -> list[list[Sample]]:
        """``k`` samples per prompt, in the prompts' order (fewer where a prompt does not fit)."""
        ...


class Scorer(Protocol):
    """What the teacher needs of ``trainer.train.RewardModel``."""

    def score(self, prompts: list[list[ChatMessage]], completions: list[str]) -> list[float]: ...


class PromptSource(Protocol):
    """What the teacher needs of ``streaming.store.PreferenceStore``."""

    def recent_prompts(self, limit: int) -> list[tuple[str, list[dict[str, Any]]]]: ...


@dataclass
class TeacherReport:
    """What the teacher did in a round (in the round report, so in rounds.jsonl)."""

    used: bool = False
    reason: str | None = None  # why it did not teach, when it did not
    adapter: str | None = None
    prompts: int = 0  # asked for
    sampled_prompts: int = 0  # answered within the time budget
    samples: int = 0  # sampled answers, cut-off and empty ones included
    pairs: int = 0
    below_margin: int = 0  # prompts whose best-worst reward gap was too small
    capped: int = 0  # pairs left out by the cap on teacher pairs per user pair
    # prompts whose top-scored answer repeated itself (> max_repetition), so another won:
    # how often the reward model favours a loop
    looping_best: int = 0
    mean_margin: float | None = None
    weight: float | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Candidate:
    """A prompt's best and worst sampled answer, and their reward gap."""

    prompt: list[ChatMessage]
    chosen: str
    rejected: str
    margin: float
    chosen_cut: bool = False  # stopped by max_tokens, not by the model
    rejected_cut: bool = False
    looping_best: bool = False  # the top-scored answer looped: the next one is chosen


# --- pure decisions ----------------------------------------------------------------------


def prompt_key(prompt: Sequence[ChatMessage]) -> str:
    return json.dumps([m.model_dump() for m in prompt], sort_keys=True)


def budget(n_user_pairs: int, ratio: float) -> int:
    """Most teacher pairs a round may add: never more than ``ratio`` per user pair."""
    return int(n_user_pairs * ratio)


def choose_prompts(
    recent: Sequence[tuple[str, list[ChatMessage]]],
    held_prompts: set[str],
    held_out: Callable[[str], bool],
    n: int,
) -> list[list[ChatMessage]]:
    """The first ``n`` distinct prompts of ``recent`` (response id, prompt) that are on the
    training side: not a held-out record's prompt (the gate judges those), and not asked
    by an interaction on the held-out side (its label would be held out)."""
    chosen: dict[str, list[ChatMessage]] = {}
    for response_id, prompt in recent:
        key = prompt_key(prompt)
        if key in held_prompts or held_out(response_id) or key in chosen:
            continue
        if not any(m.role == "user" for m in prompt):
            continue  # nothing was asked
        chosen[key] = prompt
        if len(chosen) == n:
            break
    return list(chosen.values())


def usable(samples: Sequence[Sample], keep_cut: bool) -> list[Sample]:
    """Distinct, non-empty answers; those cut off by `max_tokens` only with `keep_cut`
    (training that reopens cut answers): closed where it stops, a cut-off answer would
    teach the policy to stop mid-sentence. Most samples of a small model are cut off,
    so without them the teacher has nearly nothing to compare."""
    seen: dict[str, Sample] = {}
    for s in samples:
        if s.text.strip() and (
            s.finish_reason == "stop" or (keep_cut and s.finish_reason == "length")
        ):
            seen.setdefault(s.text, s)
    return list(seen.values())


def cut_ids(pairs: Sequence[PreferencePair]) -> frozenset[str]:
    """The response ids of teacher answers that were cut off (see ``as_pair``): the
    trainer reopens them as it does the users' cut-off answers."""
    ids = (rid for p in pairs for rid in (p.chosen_response_id, p.rejected_response_id))
    return frozenset(rid for rid in ids if rid is not None and rid.endswith(CUT_SUFFIX))


def best_vs_worst(
    prompt: list[ChatMessage],
    answers: Sequence[Sample],
    scores: Sequence[float],
    max_repetition: float = 1.0,
) -> Candidate | None:
    """The best-scored answer that does not loop (word 3-gram repetition at most
    `max_repetition`) and the worst-scored answer of a prompt; None with fewer than two
    answers or no such best. A loop may be the rejected answer (that teaches against it),
    never the chosen one: a reward model trained on sparse feedback can score a loop of
    what users like above the answer itself."""
    if len(answers) < 2:
        return None
    ranked = sorted(zip(scores, answers, strict=True), key=lambda x: x[0])
    low, worst = ranked[0]
    fluent = [(score, a) for score, a in ranked[1:] if repetition(a.text) <= max_repetition]
    if not fluent:
        return None
    high, best = fluent[-1]
    return Candidate(
        prompt, best.text, worst.text, high - low,
        chosen_cut=best.finish_reason == "length", rejected_cut=worst.finish_reason == "length",
        looping_best=best is not ranked[-1][1],
    )  # fmt: skip


def cap(candidates: Sequence[Candidate], most: int) -> list[Candidate]:
    """The ``most`` clearest wins (largest margins): the reward model's surest calls."""
    return sorted(candidates, key=lambda c: c.margin, reverse=True)[: max(most, 0)]


def pair_weight(user_pairs: Sequence[PreferencePair], relative: float) -> float:
    """A teacher pair's weight: ``relative`` (< 1) times the users' median pair weight."""
    return relative * statistics.median(p.weight for p in user_pairs)


def as_pair(c: Candidate, weight: float, adapter: str) -> PreferencePair:
    """A DPO pair marked as the teacher's (provenance and id prefix), never the users'."""
    digest = hashlib.sha256(
        "\x1f".join((adapter, prompt_key(c.prompt), c.chosen, c.rejected)).encode()
    ).hexdigest()[:32]
    pair_id = PAIR_PREFIX + digest
    # The answers have no interaction; their ids are the pair's, marked when cut off.
    chosen_id = f"{pair_id}:chosen" + (CUT_SUFFIX if c.chosen_cut else "")
    rejected_id = f"{pair_id}:rejected" + (CUT_SUFFIX if c.rejected_cut else "")
    return PreferencePair(
        pair_id=pair_id, prompt=c.prompt, chosen=c.chosen, rejected=c.rejected, weight=weight,
        provenance="teacher", chosen_response_id=chosen_id, rejected_response_id=rejected_id,
        adapter=adapter,
    )  # fmt: skip


def refusal(
    config: TeacherConfig, sampler: Sampler | None, reward: Scorer | None, lesson: Lesson
) -> str | None:
    """Why the teacher does not teach this round, or None if it does."""
    accuracy = lesson.accuracy
    if not config.enabled:
        return "disabled (teacher.enabled = false)"
    if sampler is None:
        return "no sampler: serving is not reachable from this trainer"
    if reward is None:
        return "no reward model this round"
    if accuracy is None:
        return "reward model accuracy not measured (no held-out pairs): it does not teach"
    if accuracy < lesson.min_accuracy:
        return f"reward model held-out accuracy {accuracy:.3f} < {lesson.min_accuracy}"
    if budget(len(lesson.user_pairs), config.ratio) < 1:
        return f"no room for teacher pairs ({len(lesson.user_pairs)} user pairs x {config.ratio})"
    return None


# --- the round's teacher step ------------------------------------------------------------


@dataclass(frozen=True)
class Lesson:
    """What the round tells the teacher."""

    adapter: str  # the stable one: the policy trains from it, so its answers are on-policy
    user_pairs: Sequence[PreferencePair]  # this round's training pairs
    held: Sequence[PreferencePair | PreferenceLabel]  # the gate's: prompts never sampled
    held_out: Callable[[str], bool]  # the split, by response id
    accuracy: float | None  # the reward model's held-out accuracy
    min_accuracy: float  # what it must reach to teach
    keep_cut: bool = False  # training reopens cut-off answers: they may make pairs


def teach(
    config: TeacherConfig,
    sampler: Sampler | None,
    reward: Scorer | None,
    store: PromptSource,
    lesson: Lesson,
) -> tuple[list[PreferencePair], TeacherReport]:
    """Teacher pairs for this round's DPO, and what was done. Never raises: a failed
    sampling call is a reason in the report, and the round goes on without teacher pairs."""
    started = time.perf_counter()
    report = TeacherReport(adapter=lesson.adapter)
    report.reason = refusal(config, sampler, reward, lesson)
    if report.reason is not None or sampler is None or reward is None:
        return [], report
    try:
        pairs = _teach(config, sampler, reward, store, lesson, report)
    except Exception as exc:  # serving down, timed out, refused: the round trains without
        log.warning("teacher: no pairs this round: %s", exc)
        report.reason, pairs = f"sampling failed: {type(exc).__name__}: {exc}", []
    report.seconds = time.perf_counter() - started
    report.used = bool(pairs)
    if pairs:
        log.info("teacher: %d pairs from %d prompts", len(pairs), report.prompts)
    return pairs, report


def _teach(
    config: TeacherConfig,
    sampler: Sampler,
    reward: Scorer,
    store: PromptSource,
    lesson: Lesson,
    report: TeacherReport,
) -> list[PreferencePair]:
    most = budget(len(lesson.user_pairs), config.ratio)
    # More prompts than pairs allowed, so that the cap keeps the reward model's surest calls.
    prompts = _prompts(store, lesson, config.prompts_per_round)
    report.prompts = len(prompts)
    if not prompts:
        report.reason = "no prompts on the training side of the split in the traffic"
        return []
    samples = _sample(config, sampler, lesson.adapter, prompts)
    prompts = prompts[: len(samples)]
    report.sampled_prompts = len(samples)
    report.samples = sum(len(s) for s in samples)
    candidates = _score(reward, prompts, samples, lesson.keep_cut, config.max_repetition)
    report.looping_best = sum(c.looping_best for c in candidates)
    clear = [c for c in candidates if c.margin >= config.min_margin]
    kept = cap(clear, most)
    report.below_margin, report.capped = len(candidates) - len(clear), len(clear) - len(kept)
    if not kept:
        report.reason = f"no prompt's answers differed by a reward margin >= {config.min_margin}"
        return []
    weight = pair_weight(lesson.user_pairs, config.weight)
    report.pairs, report.weight = len(kept), weight
    report.mean_margin = statistics.fmean(c.margin for c in kept)
    return [as_pair(c, weight, lesson.adapter) for c in kept]


def _sample(
    config: TeacherConfig, sampler: Sampler, adapter: str, prompts: list[list[ChatMessage]]
) -> list[list[Sample]]:
    """Samples of the first prompts that fit in ``timeout_s``, asked ``prompts_per_call``
    at a time: on a slow engine (a CPU serving a LoRA answered 2.4x slower than the bare
    base) part of the prompts still teach, where one call for all of them timed out and
    taught nothing. A failing first call raises; a later one ends the sampling."""
    deadline = time.monotonic() + config.timeout_s
    out: list[list[Sample]] = []
    for start in range(0, len(prompts), config.prompts_per_call):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        chunk = prompts[start : start + config.prompts_per_call]
        try:
            got = sampler.sample(
                adapter, chunk, config.k, config.max_tokens, config.temperature, left
            )
        except Exception as exc:
            if not out:
                raise
            log.info("teacher: sampling stopped after %d prompts: %s", len(out), exc)
            break
        out.extend(got[: len(chunk)])
    return out


def _prompts(store: PromptSource, lesson: Lesson, n: int) -> list[list[ChatMessage]]:
    """``n`` recent prompts on the training side of the split."""
    recent = [
        (rid, [ChatMessage.model_validate(m) for m in messages])
        for rid, messages in store.recent_prompts(n * SCAN_FACTOR)
    ]
    held_prompts = {prompt_key(r.prompt) for r in lesson.held}
    return choose_prompts(recent, held_prompts, lesson.held_out, n)


def _score(
    reward: Scorer,
    prompts: Sequence[list[ChatMessage]],
    samples: Sequence[Sequence[Sample]],
    keep_cut: bool,
    max_repetition: float,
) -> list[Candidate]:
    """Each prompt's best-vs-worst candidate, all answers scored in one call (batched)."""
    answers = [usable(s, keep_cut) for s in samples]
    flat_prompts = [p for p, a in zip(prompts, answers, strict=True) for _ in a]
    flat = [x.text for a in answers for x in a]
    scores = iter(reward.score(flat_prompts, flat) if flat else [])
    out = []
    for prompt, these in zip(prompts, answers, strict=True):
        candidate = best_vs_worst(prompt, these, [next(scores) for _ in these], max_repetition)
        if candidate is not None:
            out.append(candidate)
    return out
