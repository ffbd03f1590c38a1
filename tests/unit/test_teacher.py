"""The reward model as a teacher, on a fake sampler and a fake reward model: pairs are
best vs worst, only past the margin, never for held-out prompts, capped and weighted
below the users' pairs, marked as the teacher's and never stored; off, it does nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from livealign.config import Settings
from streaming import store as s
from streaming.events import ChatMessage, PreferenceLabel, PreferencePair, WireInteraction
from streaming.processor import prompt_hash
from streaming.store import PreferenceStore
from trainer import teacher
from trainer.config import TeacherConfig
from trainer.round import RoundReport, _held_out
from trainer.teacher import Lesson, Sample, TeacherReport, choose_prompts, cut_ids, teach


def prompt(i: int) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=f"question {i}")]


def user_pair(i: int, weight: float = 1.0) -> PreferencePair:
    return PreferencePair(
        pair_id=f"user-{i}", prompt=prompt(1000 + i), chosen="good", rejected="bad",
        weight=weight, provenance="edit", rejected_response_id=f"r-{i}", adapter="base",
    )  # fmt: skip


def held_label(i: int) -> PreferenceLabel:
    return PreferenceLabel(
        response_id=f"held-{i}", prompt=prompt(i), completion="x", desirable=True, weight=1.0,
        score=0.5, confidence=0.9, scenario="open", adapter="base", n_signals=1,
    )  # fmt: skip


class FakeSampler:
    """Answers each prompt with ``answers`` (each finished with "stop" unless given)."""

    def __init__(self, answers: Sequence[str | Sample]) -> None:
        self.answers = [a if isinstance(a, Sample) else Sample(a, "stop") for a in answers]
        self.calls: list[dict[str, Any]] = []

    def sample(
        self,
        adapter: str,
        prompts: Sequence[list[ChatMessage]],
        k: int,
        max_tokens: int,
        temperature: float,
        timeout_s: float,
    ) -> list[list[Sample]]:
        self.calls.append({"adapter": adapter, "prompts": list(prompts), "k": k})
        return [list(self.answers[:k]) for _ in prompts]


class LengthReward:
    """A reward model that likes long answers; per-prompt bonus from ``bonus``."""

    def __init__(self, bonus: dict[str, float] | None = None) -> None:
        self.bonus = bonus or {}

    def score(self, prompts: list[list[ChatMessage]], completions: list[str]) -> list[float]:
        return [
            len(c) * (1 + self.bonus.get(p[-1].content, 0.0))
            for p, c in zip(prompts, completions, strict=True)
        ]


class FakeStore:
    def __init__(self, recent: list[tuple[str, list[ChatMessage]]]) -> None:
        self.recent = recent

    def recent_prompts(self, limit: int) -> list[tuple[str, list[dict[str, Any]]]]:
        return [(rid, [m.model_dump() for m in p]) for rid, p in self.recent[:limit]]


def traffic(n: int) -> FakeStore:
    return FakeStore([(f"resp-{i}", prompt(i)) for i in range(n)])


def lesson(
    n_user: int = 8, held: Sequence[PreferencePair | PreferenceLabel] = (), **kw: Any
) -> Lesson:
    return Lesson(
        adapter=kw.get("adapter", "livealign@3"),
        user_pairs=[user_pair(i, kw.get("weight", 1.0)) for i in range(n_user)],
        held=list(held),
        held_out=kw.get("held_out", lambda _: False),
        accuracy=kw.get("accuracy", 0.8),
        min_accuracy=0.55,
    )


CONFIG = TeacherConfig(k=3, prompts_per_round=4, min_margin=1.0, weight=0.5, ratio=1.0)


def test_pairs_are_best_vs_worst_and_marked_as_the_teachers() -> None:
    sampler = FakeSampler(["mid answer", "a", "the longest answer"])
    pairs, report = teach(CONFIG, sampler, LengthReward(), traffic(4), lesson())
    assert len(pairs) == 4 and report.used and report.reason is None
    assert sampler.calls[0]["adapter"] == "livealign@3" and sampler.calls[0]["k"] == 3
    for p in pairs:
        assert (p.chosen, p.rejected) == ("the longest answer", "a")
        assert p.provenance == "teacher" and p.pair_id.startswith("teacher-")
        assert p.adapter == "livealign@3"
    assert {p.prompt[0].content for p in pairs} == {f"question {i}" for i in range(4)}
    assert (report.prompts, report.samples, report.pairs) == (4, 12, 4)
    assert report.mean_margin == len("the longest answer") - 1
    json.dumps(asdict(RoundReport(outcome="x", started_ms=0, teacher=report)))  # rounds.jsonl


def test_a_loop_the_reward_model_scores_best_is_never_chosen() -> None:
    # LengthReward scores the loop highest; it may only be the rejected answer.
    loop = "in short " * 12
    sampler = FakeSampler(["a", loop, "the longest answer"])
    pairs, report = teach(CONFIG, sampler, LengthReward(), traffic(2), lesson())
    assert [(p.chosen, p.rejected) for p in pairs] == [("the longest answer", "a")] * 2
    assert report.looping_best == 2
    # nothing fluent above the worst answer: no pair
    only_loops = FakeSampler(["a", loop, loop + "in short"])
    pairs, report = teach(CONFIG, only_loops, LengthReward(), traffic(1), lesson())
    assert pairs == [] and report.looping_best == 0
    # the worst may loop: the pair teaches against it
    low_loop = FakeSampler(["x x x x x x", "a fine answer"])
    config = CONFIG.model_copy(update={"k": 2})
    pairs, _ = teach(config, low_loop, LengthReward(), traffic(1), lesson())
    assert [(p.chosen, p.rejected) for p in pairs] == [("a fine answer", "x x x x x x")]


def test_the_margin_threshold_is_honoured() -> None:
    # Answers 3 and 4 characters long: a margin of 1 passes a threshold of 1, not of 1.5.
    sampler = FakeSampler(["abc", "abcd"])
    pairs, _ = teach(CONFIG, sampler, LengthReward(), traffic(2), lesson())
    assert len(pairs) == 2
    strict = CONFIG.model_copy(update={"min_margin": 1.5})
    pairs, report = teach(strict, sampler, LengthReward(), traffic(2), lesson())
    assert pairs == [] and report.below_margin == 2 and not report.used
    assert "margin" in (report.reason or "")


def test_cut_off_empty_and_repeated_answers_never_pair() -> None:
    cut = Sample("a very long answer that was cut off", "length")
    sampler = FakeSampler([cut, Sample("  ", "stop"), "same", "same"])
    config = CONFIG.model_copy(update={"k": 4, "min_margin": 0.0})
    pairs, report = teach(config, sampler, LengthReward(), traffic(1), lesson())
    assert pairs == [] and report.samples == 4  # one distinct finished answer: nothing to rank


def test_cut_off_answers_pair_when_training_reopens_them() -> None:
    """With cut-aware training a cut-off sample may make a pair, marked so that it is
    trained without an end of turn; a finished one is not marked."""
    cut = Sample("a very long answer that was cut off", "length")
    sampler = FakeSampler([cut, Sample("  ", "stop"), "same", "same"])
    config = CONFIG.model_copy(update={"k": 4, "min_margin": 0.0})
    keeping = lesson().__class__(**{**lesson().__dict__, "keep_cut": True})
    pairs, _ = teach(config, sampler, LengthReward(), traffic(1), keeping)
    assert [(p.chosen, p.rejected) for p in pairs] == [(cut.text, "same")]
    assert cut_ids(pairs) == {pairs[0].chosen_response_id}
    assert pairs[0].rejected_response_id not in cut_ids(pairs)


def test_held_out_prompts_are_never_sampled() -> None:
    held = [held_label(0), held_label(1)]  # the gate judges on questions 0 and 1
    # Interactions on the held-out side of the split (by response id) are left out too.
    rids = [f"resp-{i}" for i in range(40)]
    split = [r for r in rids if _held_out(r, 0.25)]
    assert split  # the fraction leaves some out among 40
    config = CONFIG.model_copy(update={"prompts_per_round": 40})
    sampler = FakeSampler(["a", "abcd"])
    _, report = teach(
        config, sampler, LengthReward(), traffic(40),
        lesson(n_user=40, held=held, held_out=lambda r: _held_out(r, 0.25)),
    )  # fmt: skip
    asked = {p[0].content for call in sampler.calls for p in call["prompts"]}
    assert not asked & {"question 0", "question 1"}
    assert not asked & {f"question {r.removeprefix('resp-')}" for r in split}
    assert report.prompts == len(asked) == 40 - len({"resp-0", "resp-1", *split})


def test_choose_prompts_skips_repeats_and_takes_the_newest_first() -> None:
    recent = [("r1", prompt(1)), ("r2", prompt(1)), ("r3", prompt(2)), ("r4", prompt(3))]
    chosen = choose_prompts(recent, set(), lambda _: False, 2)
    assert chosen == [prompt(1), prompt(2)]


def test_the_cap_keeps_the_clearest_wins_and_weights_stay_below_users() -> None:
    # 6 prompts, 4 user pairs of median weight 0.8, ratio 0.5: 2 teacher pairs, the ones
    # whose answers the reward model separates most (questions 4 and 5 get a bonus).
    sampler = FakeSampler(["a", "abcd"])
    reward = LengthReward({"question 4": 2.0, "question 5": 1.0})
    config = CONFIG.model_copy(update={"ratio": 0.5, "prompts_per_round": 6})
    pairs, report = teach(config, sampler, reward, traffic(6), lesson(n_user=4, weight=0.8))
    assert [p.prompt[0].content for p in pairs] == ["question 4", "question 5"]
    assert all(p.weight == pytest.approx(0.4) for p in pairs)  # 0.5 x median 0.8
    assert report.pairs == 2 and report.weight == pytest.approx(0.4)
    assert len(sampler.calls[0]["prompts"]) == 6 and report.capped == 4


@pytest.mark.parametrize(
    ("config", "sampler", "reward", "kw", "why"),
    [
        (CONFIG.model_copy(update={"enabled": False}), True, True, {}, "disabled"),
        (CONFIG, False, True, {}, "no sampler"),
        (CONFIG, True, False, {}, "no reward model"),
        (CONFIG, True, True, {"accuracy": None}, "not measured"),
        (CONFIG, True, True, {"accuracy": 0.5}, "accuracy 0.500"),
        (CONFIG, True, True, {"n_user": 0}, "no room"),
        (CONFIG.model_copy(update={"ratio": 0.0}), True, True, {}, "no room"),
    ],
)
def test_off_or_untrusted_does_nothing(
    config: TeacherConfig, sampler: bool, reward: bool, kw: dict[str, Any], why: str
) -> None:
    fake = FakeSampler(["a", "abcd"])
    pairs, report = teach(
        config, fake if sampler else None, LengthReward() if reward else None, traffic(4),
        lesson(**kw),
    )  # fmt: skip
    assert pairs == [] and fake.calls == []
    assert not report.used and why in (report.reason or ""), report.reason


def test_a_failing_sampler_is_a_reason_not_a_failed_round() -> None:
    class Down(FakeSampler):
        def sample(self, *args: Any, **kwargs: Any) -> list[list[Sample]]:
            raise TimeoutError("serving did not answer")

    pairs, report = teach(CONFIG, Down([]), LengthReward(), traffic(4), lesson())
    assert pairs == [] and "sampling failed: TimeoutError" in (report.reason or "")


def test_prompts_are_sampled_a_few_per_call_and_a_late_failure_keeps_the_rest() -> None:
    config = CONFIG.model_copy(update={"prompts_per_round": 10, "prompts_per_call": 4})
    sampler = FakeSampler(["a", "abcd"])
    pairs, report = teach(config, sampler, LengthReward(), traffic(10), lesson(n_user=10))
    assert [len(c["prompts"]) for c in sampler.calls] == [4, 4, 2]
    assert len(pairs) == 10 and report.sampled_prompts == 10

    class SlowLater(FakeSampler):
        def sample(self, *args: Any, **kwargs: Any) -> list[list[Sample]]:
            if len(self.calls) == 2:  # the third call runs out of time
                raise TimeoutError("sampling timed out")
            return super().sample(*args, **kwargs)

    slow = SlowLater(["a", "abcd"])
    pairs, report = teach(config, slow, LengthReward(), traffic(10), lesson(n_user=10))
    assert len(pairs) == 8 and report.used and report.reason is None
    assert (report.prompts, report.sampled_prompts, report.samples) == (10, 8, 16)
    assert {p.prompt[0].content for p in pairs} == {f"question {i}" for i in range(8)}


def test_sampling_stops_when_its_time_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 200.0])  # start, before the first call, before the second
    monkeypatch.setattr(teacher.time, "monotonic", lambda: next(clock))
    config = CONFIG.model_copy(update={"prompts_per_round": 8, "prompts_per_call": 4})
    sampler = FakeSampler(["a", "abcd"])
    pairs, report = teach(config, sampler, LengthReward(), traffic(8), lesson())
    assert len(sampler.calls) == 1 and report.sampled_prompts == 4 and len(pairs) == 4


def test_no_traffic_no_prompts() -> None:
    pairs, report = teach(CONFIG, FakeSampler(["a", "abcd"]), LengthReward(), traffic(0), lesson())
    assert pairs == [] and "no prompts" in (report.reason or "")


def test_the_store_gives_recent_prompts_and_refuses_teacher_pairs(tmp_path: Path) -> None:
    store = PreferenceStore(f"sqlite:///{tmp_path / 'p.sqlite'}")
    rows = []
    for i in range(3):
        event = WireInteraction(
            response_id=f"resp-{i}", conversation_id="c", model="m", adapter="base",
            arm="stable", messages=[], completion="x", prompt_tokens=1, completion_tokens=1,
            ttft_ms=1, latency_ms=1, created_ms=100 + i,
        )  # fmt: skip
        text = json.dumps({"messages": [m.model_dump() for m in prompt(i)]})
        rows.append(s.interaction_row(event, text, prompt_hash(prompt(i))))
    with store.transaction() as tx:
        store.add_interactions(tx, rows)
    recent = store.recent_prompts(2)
    assert [rid for rid, _ in recent] == ["resp-2", "resp-1"]  # newest first
    assert recent[0][1] == [{"role": "user", "content": "question 2"}]
    pairs, _ = teach(CONFIG, FakeSampler(["a", "abcd"]), LengthReward(), store, lesson())
    with pytest.raises(ValueError, match="never stored"):
        s.pair_row(pairs[0], 0)


def test_teacher_config_is_a_trainer_override(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, trainer_overrides={"teacher": {"k": 6, "ratio": 0.5}})
    teacher = settings.trainer_config(tmp_path, "").teacher
    assert (teacher.k, teacher.ratio, teacher.enabled) == (6, 0.5, True)
    with pytest.raises(ValueError, match="weight"):
        Settings(home=tmp_path, trainer_overrides={"teacher": {"weight": 1.0}}).trainer_config(
            tmp_path, ""
        )
    assert TeacherReport().used is False


def test_a_round_trains_on_teacher_pairs_and_reports_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring in Trainer.run_round, with the model work faked: the teacher's pairs
    reach DPO next to the users', the round report (rounds.jsonl) says what it did, and
    the store still holds only the users' pairs."""
    import trainer.round as r
    from trainer.config import TrainerConfig

    cfg = TrainerConfig(
        base_model=tmp_path, registry_dir=tmp_path / "registry", work_dir=tmp_path / "work",
        store_url=f"sqlite:///{tmp_path / 'p.sqlite'}", min_records=1, held_out_fraction=0.25,
        teacher=CONFIG.model_copy(update={"prompts_per_round": 8}),
    )  # fmt: skip
    store = PreferenceStore(cfg.store_url)
    users = [user_pair(i) for i in range(40)]
    rows = [
        {**p.model_dump(exclude={"schema_version", "event_type"}), "updated_ms": 1} for p in users
    ]
    with store.transaction() as tx:
        store.upsert(tx, s.pairs, rows)
    taught: list[PreferencePair] = []

    def fake_policy(_b: Any, _p: Any, pairs: list[PreferencePair], *a: Any, **k: Any) -> Any:
        taught.extend(pairs)
        return type(
            "P", (), {"adapter_dir": tmp_path, "dpo_loss": 0.1, "kto_loss": None, "steps": 1}
        )()

    fake_rm = type("RM", (), {"load": staticmethod(lambda *a: LengthReward())})
    result = type("R", (), {"held_out_accuracy": 0.9, "model_dir": tmp_path, "scale": 1.0})()
    gate = type("G", (), {"passed": False, "reasons": ["fake gate"], "metrics": {}, "checks": []})()
    monkeypatch.setattr(r, "train_reward_model", lambda *a, **k: result)
    monkeypatch.setattr(r, "RewardModel", fake_rm)
    monkeypatch.setattr(r, "train_policy", fake_policy)
    monkeypatch.setattr(r, "evaluate", lambda *a, **k: gate)
    monkeypatch.setattr(store, "recent_prompts", traffic(8).recent_prompts)
    trainer = r.Trainer(cfg, FakeSampler(["a", "abcd"]))
    trainer.store = store
    report = trainer.run_round()
    assert report.outcome == "rejected", report
    teacher = [p for p in taught if p.provenance == "teacher"]
    trained_users = [p for p in users if not r._held_out(p.pair_id, cfg.held_out_fraction)]
    assert teacher and len(taught) == len(teacher) + len(trained_users)
    logged = json.loads((cfg.registry_dir / "rounds.jsonl").read_text().splitlines()[-1])
    assert logged["teacher"]["pairs"] == len(teacher) and logged["teacher"]["adapter"] == "base"
    assert "teacher" in logged["seconds"]
    assert store.count(s.pairs) == 40  # nothing of the teacher's was stored
    # Offline (no sampler) the round says why it had no teacher.
    offline = r.Trainer(cfg).run_round()
    assert offline.teacher is not None and "no sampler" in (offline.teacher.reason or "")
