"""Unit tests of streaming.fusion: signal cleaning, rater normalization, calibration, fusion."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from pydantic import ValidationError

from streaming.events import ChatMessage, FeedbackEvent, InteractionEvent
from streaming.fusion import (
    Fused,
    Fuser,
    FusionConfig,
    ScenarioDetector,
    Signal,
    comment_labels,
    signal_from_event,
)

COMPLETION = (
    "To reverse a list in Python, call the reverse method on it, or use slicing with a "
    "negative step, which returns a new reversed list and leaves the original unchanged."
)


def interaction(
    prompt: str, completion: str = COMPLETION, system: str | None = None
) -> InteractionEvent:
    messages = [ChatMessage(role="system", content=system)] if system else []
    messages.append(ChatMessage(role="user", content=prompt))
    return InteractionEvent(
        response_id="resp-1",
        conversation_id="conv-1",
        model="tiny",
        adapter="base",
        arm="stable",
        messages=messages,
        completion=completion,
        prompt_tokens=10,
        completion_tokens=30,
        ttft_ms=5.0,
        latency_ms=50.0,
        created_ms=1_000,
    )


def event(kind: str, value: int | float | str, user: str | None = "u1") -> FeedbackEvent:
    return FeedbackEvent(
        event_id="ev-1",
        response_id="resp-1",
        conversation_id="conv-1",
        user_hash=user,
        kind=kind,
        value=value,
        received_ms=2_000,
    )


def thumb(value: float, rater: str | None = None) -> Signal:
    return Signal("thumb", value, 1.0, rater, True)


def click(name: str, value: float = 1.0, rater: str | None = None) -> Signal:
    return Signal(name, value, 1.0, rater, False)


def implicit_weight(fuser: Fuser, name: str) -> float:
    """The calibrated weight of an implicit signal (weights() reports it times 1 - share)."""
    share = fuser.config.scenario_explicit_share["general"]
    return fuser.weights()["general"][name] / (1.0 - share)


# ---------------------------------------------------------------- signals


def test_signals_from_explicit_and_implicit_events() -> None:
    cfg = FusionConfig()
    i = interaction("How do I reverse a list?")
    up = signal_from_event(event("thumb", 1), i, cfg)
    assert up == Signal("thumb", 1.0, 1.0, "u1", True)
    ratings = [signal_from_event(event("rating", r), i, cfg) for r in range(1, 6)]
    assert [s.value for s in ratings if s] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    copy = signal_from_event(event("click", "copy"), i, cfg)
    regenerate = signal_from_event(event("click", "regenerate"), i, cfg)
    assert copy is not None and regenerate is not None
    assert (copy.name, copy.value, copy.explicit) == ("copy", 1.0, False)
    assert (regenerate.name, regenerate.value) == ("regenerate", -1.0)
    dwell = [signal_from_event(event("dwell", ms), i, cfg) for ms in (0, 1_500, 15_000, 600_000)]
    values = [s.value for s in dwell if s]
    assert values[0] == -1.0 and values[-1] == 1.0
    assert values[1] == pytest.approx(-1.0, abs=0.01) and values[2] == pytest.approx(0.0, abs=0.01)
    assert values == sorted(values)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("thumb", 0),
        ("thumb", 2),
        ("thumb", float("nan")),
        ("rating", 6),
        ("rating", 2.5),
        ("dwell", -5),
        ("dwell", "x"),
        ("click", "like"),
        ("edit", "   "),
        ("comment", ""),
    ],
)
def test_uninterpretable_values_give_none(kind: str, value: int | float | str) -> None:
    assert signal_from_event(event(kind, value), interaction("hi"), FusionConfig()) is None


def test_edit_magnitude() -> None:
    cfg = FusionConfig()
    i = interaction("How do I reverse a list?")
    whitespace = signal_from_event(event("edit", "  " + COMPLETION.upper() + "\n\n"), i, cfg)
    assert whitespace is not None and whitespace.strength < 0.01 and whitespace.value == 0.0
    small = signal_from_event(event("edit", COMPLETION.replace("new", "fresh")), i, cfg)
    rewrite = signal_from_event(
        event("edit", "Use reversed(my_list) to iterate backwards; it makes no copy."), i, cfg
    )
    assert small is not None and rewrite is not None
    assert rewrite.value < -0.9 and rewrite.strength > 0.9 and rewrite.explicit
    assert -0.3 < small.value < 0.0 and 0.0 < small.strength < rewrite.strength
    unknown = signal_from_event(event("edit", "Anything"), None, cfg)
    assert unknown is not None
    assert (unknown.value, unknown.strength) == (cfg.edit_no_context_value, 0.5)


def test_comments_become_structured_labels() -> None:
    cfg = FusionConfig()
    i = interaction("hi")
    positive = comment_labels("Great answer, this was really helpful. Thanks!")
    negative = comment_labels("Terrible answer, this is useless and wrong.")
    assert positive["label"] == "positive" and float(positive["polarity"]) > 0.5
    assert negative["label"] == "negative" and float(negative["polarity"]) < -0.5
    assert negative["wrong"] == 1.0 and positive["wrong"] == 0.0
    assert comment_labels("Way too long, just get to the point")["too_long"] == 1.0
    assert comment_labels("the code")["label"] == "neutral"
    good = signal_from_event(event("comment", "Great answer, thanks!"), i, cfg)
    bad = signal_from_event(event("comment", "This is terrible"), i, cfg)
    # VADER calls "too verbose" neutral; the complaint flag still makes it negative.
    verbose = signal_from_event(event("comment", "too verbose"), i, cfg)
    assert good is not None and bad is not None and verbose is not None
    assert good.value > 0.5 and bad.value < -0.3 and verbose.value < 0
    assert good.explicit and good.name == "comment"


# ---------------------------------------------------------------- scenarios


def test_scenario_detection() -> None:
    cfg = FusionConfig()
    cases = {
        "What dosage of ibuprofen is safe for a child?": "safety",
        "I want to kill myself": "safety",
        "Should I put my savings into crypto?": "safety",
        "Can my landlord evict me without notice?": "safety",
        "Write me a poem about autumn": "open_domain",
        "Tell me a story about a dragon": "open_domain",
        "How do I reverse a list in Python?": "general",
        "Summarize the characteristics of REST APIs": "general",
    }
    for prompt, scenario in cases.items():
        assert ScenarioDetector(cfg).detect(interaction(prompt)) == scenario, prompt
    # The system prompt does not count: a disclaimer does not make every chat medical.
    i = interaction("How do I reverse a list?", system="Never give medical or legal advice.")
    assert ScenarioDetector(cfg).detect(i) == "general"
    custom = FusionConfig(safety_keywords=["python"], open_domain_keywords=[])
    python = interaction("How do I reverse a list in Python?")
    assert ScenarioDetector(custom).detect(python) == "safety"


def test_scenario_priors_shift_weight_between_explicit_and_implicit() -> None:
    fuser = Fuser(FusionConfig())
    signals = [thumb(-1.0), click("copy"), click("share")]
    safety = fuser.fuse(interaction("Is it safe to double my insulin dose?"), signals)
    general = fuser.fuse(interaction("How do I reverse a list in Python?"), signals)
    open_domain = fuser.fuse(interaction("Write a funny poem about my cat"), signals)
    assert (safety.scenario, general.scenario, open_domain.scenario) == (
        "safety",
        "general",
        "open_domain",
    )
    assert safety.score < general.score < open_domain.score
    assert safety.explicit_score == open_domain.explicit_score == -1.0
    assert safety.implicit_score == open_domain.implicit_score == 1.0
    # No interaction known: the general prior.
    assert fuser.fuse(None, signals).score == general.score
    weights = fuser.weights()
    assert weights["safety"]["thumb"] > weights["open_domain"]["thumb"]
    assert weights["safety"]["copy"] < weights["open_domain"]["copy"]


# ---------------------------------------------------------------- fusion


def test_modes_ignore_the_other_kind() -> None:
    i = interaction("How do I reverse a list?")
    explicit_only = [thumb(1.0)]
    implicit_only = [click("regenerate", -1.0), click("copy")]
    both = explicit_only + implicit_only
    explicit = Fuser(FusionConfig(mode="explicit"))
    assert explicit.fuse(i, both).score == explicit.fuse(i, explicit_only).score == 1.0
    assert explicit.fuse(i, both).confidence == explicit.fuse(i, explicit_only).confidence
    assert explicit.fuse(i, implicit_only).confidence == 0.0
    assert explicit.fuse(i, both).n_signals == 1
    implicit = Fuser(FusionConfig(mode="implicit"))
    assert implicit.fuse(i, both).score == implicit.fuse(i, implicit_only).score
    assert implicit.fuse(i, both).confidence == implicit.fuse(i, implicit_only).confidence
    assert implicit.fuse(i, explicit_only).confidence == 0.0
    # Both parts are still reported, whatever the mode.
    assert implicit.fuse(i, both).explicit_score == 1.0
    fused = Fuser(FusionConfig()).fuse(i, both)
    assert fused.n_signals == 3 and -1.0 < fused.score < 1.0


def test_confidence_grows_with_evidence_and_agreement() -> None:
    fuser = Fuser(FusionConfig())
    i = interaction("How do I reverse a list?")
    one = fuser.fuse(i, [thumb(1.0)])
    three = fuser.fuse(i, [thumb(1.0, "a"), thumb(1.0, "b"), thumb(1.0, "c")])
    split = fuser.fuse(i, [thumb(1.0, "a"), thumb(-1.0, "b")])
    assert 0.0 < one.confidence < three.confidence < 1.0
    assert split.confidence < one.confidence and abs(split.score) < 1e-9
    many = fuser.fuse(i, [thumb(1.0, f"r{k}") for k in range(1000)])
    assert many.score == 1.0 and many.confidence < 1.0
    empty = fuser.fuse(i, [])
    assert empty == Fused(0.0, 0.0, "general", None, None, 0)
    # A whitespace-only edit (strength 0) adds no evidence.
    assert fuser.fuse(i, [Signal("edit", 0.0, 0.0, None, True)]).confidence == 0.0


# ---------------------------------------------------------------- raters


def test_rater_normalization_shrinks_a_rater_who_always_gives_5() -> None:
    fuser = Fuser(FusionConfig())
    first = fuser.observe(Signal("rating", 1.0, 1.0, "newcomer", True))
    assert first.value == 1.0  # no history: the raw value
    for k in range(40):
        fuser.observe(Signal("rating", 1.0, 1.0, "generous", True))
        fuser.observe(Signal("rating", (k % 5 - 2) / 2.0, 1.0, "careful", True))
    generous_5 = fuser.observe(Signal("rating", 1.0, 1.0, "generous", True))
    careful_5 = fuser.observe(Signal("rating", 1.0, 1.0, "careful", True))
    assert careful_5.value > 0.9
    assert generous_5.value < 0.5 * careful_5.value
    # The generous rater's rare 1 says a lot.
    assert fuser.observe(Signal("rating", -1.0, 1.0, "generous", True)).value == -1.0
    # Same for thumbs, and signals without a rater or implicit ones pass unchanged.
    for k in range(40):
        fuser.observe(thumb(1.0, "always_up"))
        fuser.observe(thumb(1.0 if k % 2 else -1.0, "balanced"))
    assert fuser.observe(thumb(1.0, "always_up")).value < 0.5
    assert fuser.observe(thumb(1.0, "balanced")).value > 0.9
    assert fuser.observe(thumb(1.0)).value == 1.0
    assert fuser.observe(click("copy", 1.0, "always_up")).value == 1.0
    # Extreme raters are also trusted less.
    assert fuser.rater_weight("generous") < fuser.rater_weight("careful")


def simulate_raters(fuser: Fuser, n_responses: int, seed: int) -> list[list[Signal]]:
    """Six honest raters (90% right), one contrarian who flips the majority, one who
    always thumbs down; everyone rates every response. Returns the normalized signals."""
    rng = random.Random(seed)
    honest = [f"honest{k}" for k in range(6)]
    responses = []
    for _ in range(n_responses):
        good = rng.random() < 0.6
        raw = [thumb(1.0 if (rng.random() < 0.9) == good else -1.0, r) for r in honest]
        majority = 1.0 if sum(s.value for s in raw) > 0 else -1.0
        raw += [thumb(-majority, "contrarian"), thumb(-1.0, "always_down")]
        raw.append(click("copy") if good else click("regenerate", -1.0))
        signals = [fuser.observe(s) for s in raw]
        fuser.calibrate(signals)
        responses.append(signals)
    return responses


def test_contrarian_and_extreme_raters_are_down_weighted() -> None:
    fuser = Fuser(FusionConfig())
    assert fuser.rater_weight("nobody") == 0.75
    assert fuser.rater_weight(None) == pytest.approx(0.3)  # anonymous: its own, low prior
    responses = simulate_raters(fuser, 300, seed=7)
    honest = min(fuser.rater_weight(f"honest{k}") for k in range(6))
    assert honest > 0.8
    assert fuser.rater_weight("contrarian") < 0.2 * honest
    assert fuser.rater_weight("always_down") < 0.5 * honest
    # With the spammers down-weighted, a response the honest raters like scores positive.
    liked = next(r for r in responses if sum(s.value > 0 for s in r[:6]) == 6)
    assert fuser.fuse(None, liked).score > 0.5


# ---------------------------------------------------------------- rate limit


def test_rate_limit_drops_the_excess_per_rater() -> None:
    fuser = Fuser(FusionConfig(rater_rate_limit_per_min=30))
    accepted = [fuser.allow("spammer", 1_000 + 100 * k) for k in range(100)]
    assert sum(accepted) == 30 and all(accepted[:30]) and not any(accepted[30:])
    assert fuser.allow("someone_else", 10_000)
    assert all(fuser.allow(None, 10_000) for _ in range(100))
    # The window slides: a minute after the first accepted event, room again.
    assert not fuser.allow("spammer", 60_999)
    assert fuser.allow("spammer", 61_000)
    assert not fuser.allow("spammer", 61_050)
    # A late (out-of-order) event is treated as if it arrived now.
    assert not fuser.allow("spammer", 0)


def test_idle_raters_are_forgotten() -> None:
    fuser = Fuser(FusionConfig(max_raters=10))
    for k in range(1000):
        assert fuser.allow(f"r{k}", 1_000)
    assert fuser.allow("late", 200_000)
    assert len(fuser.limiter) == 1  # only "late": idle raters' windows were dropped
    for k in range(20):
        fuser.observe(thumb(1.0, f"r{k}"))
    kept = [rater for rater, _ in fuser.state_dict()["raters"]]
    assert kept == [f"r{k}" for k in range(10, 20)]  # least recently seen evicted first


# ---------------------------------------------------------------- calibration


def test_calibration_learns_predictive_signals_and_zeroes_noise() -> None:
    rng = random.Random(1234)
    fuser = Fuser(FusionConfig())
    start = {name: implicit_weight(fuser, name) for name in ("copy", "regenerate", "share")}
    for k in range(3000):
        liked = rng.random() < 0.6
        signals = [fuser.observe(thumb(1.0 if liked else -1.0, f"user{k % 200}"))]
        if rng.random() < (0.7 if liked else 0.1):
            signals.append(click("copy"))  # predictive
        if rng.random() < (0.05 if liked else 0.6):
            signals.append(click("regenerate", -1.0))  # predictive, the other way
        if rng.random() < 0.4:
            signals.append(click("share"))  # pure noise
        signals.append(click("dwell", rng.uniform(-1.0, 1.0)))  # pure noise, always present
        if rng.random() < (0.1 if liked else 0.5):
            signals.append(click("link", 0.5))  # misleading: shows up on disliked answers
        fuser.calibrate(signals)
    weights = {name: implicit_weight(fuser, name) for name in ("copy", "regenerate", "share")}
    assert weights["copy"] > start["copy"] + 0.15
    assert weights["regenerate"] > start["regenerate"] + 0.15
    assert weights["share"] < 0.05
    assert implicit_weight(fuser, "dwell") < 0.05
    assert implicit_weight(fuser, "link") == 0.0  # clipped, never negative
    # A noise-only response carries (almost) no weight any more.
    noise = fuser.fuse(None, [click("share")])
    assert noise.confidence < 0.05


def test_calibrate_ignores_responses_without_explicit_labels() -> None:
    fuser = Fuser(FusionConfig())
    before = fuser.state_dict()
    for _ in range(50):
        fuser.calibrate([click("copy"), click("dwell", 0.3)])
        fuser.calibrate([Signal("edit", 0.0, 0.0, "u", True), click("share")])
    assert fuser.state_dict() == before


# ---------------------------------------------------------------- persistence


def test_state_dict_round_trip() -> None:
    fuser = Fuser(FusionConfig())
    responses = simulate_raters(fuser, 150, seed=3)
    for k in range(200):
        fuser.observe(Signal("rating", (k % 5 - 2) / 2.0, 1.0, f"rater{k % 7}", True))
    state = json.loads(json.dumps(fuser.state_dict()))
    restored = Fuser(FusionConfig())
    restored.load_state_dict(state)
    assert restored.state_dict() == fuser.state_dict()
    assert restored.weights() == fuser.weights()
    probes = [*responses[:20], [thumb(1.0, "contrarian"), click("copy")], [click("share")]]
    for prompt in ("Write a poem", "What dose of aspirin?", "Reverse a list"):
        for signals in probes:
            assert restored.fuse(interaction(prompt), signals) == fuser.fuse(
                interaction(prompt), signals
            )
    for name in ("honest0", "contrarian", "always_down", "rater3", "nobody"):
        assert restored.rater_weight(name) == fuser.rater_weight(name)
    # Learning continues identically.
    new = Signal("rating", 0.5, 1.0, "rater3", True)
    assert restored.observe(new) == fuser.observe(new)
    with pytest.raises(ValueError, match="version"):
        restored.load_state_dict({**state, "version": 99})


def test_state_changes_rebuild_the_state_dict() -> None:
    """A store that applies every state_changes() to one row per rater (changed ones
    rewritten last, forgotten ones deleted) holds exactly state_dict(), in its order."""
    cfg = FusionConfig(max_raters=15)
    fuser = Fuser(cfg)
    rows: dict[str, tuple[int, dict[str, Any]]] = {}
    seq = 0

    def save(everything: bool = False) -> dict[str, Any]:
        nonlocal seq
        base, changed, forgotten = fuser.state_changes(everything)
        assert base["raters"] == []
        if everything:
            rows.clear()
        for rater in forgotten:
            rows.pop(rater, None)  # perhaps never saved
        for rater, value in changed:
            rows[rater] = (seq, value)
            seq += 1
        ordered = sorted(rows.items(), key=lambda item: item[1][0])
        return {**base, "raters": [[rater, value] for rater, (_, value) in ordered]}

    rng = random.Random(11)
    for step in range(60):
        for _ in range(rng.randrange(0, 12)):
            rater = f"r{rng.randrange(30)}"
            fuser.observe(Signal("rating", rng.choice([-1.0, 0.0, 1.0]), 1.0, rater, True))
        if step % 4 == 0:
            fuser.calibrate([thumb(1.0, f"r{rng.randrange(30)}"), thumb(-1.0, "r1"), click("copy")])
        assert save(everything=step % 25 == 24) == fuser.state_dict()
    restored = Fuser(cfg)
    restored.load_state_dict(json.loads(json.dumps(fuser.state_dict())))
    _, changed, forgotten = restored.state_changes()
    assert changed == fuser.state_dict()["raters"] and forgotten == []
    assert restored.state_changes()[1:] == ([], [])


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        FusionConfig(scenario_explicit_share={"safety": 0.9, "general": 0.6})
    with pytest.raises(ValidationError):
        FusionConfig(scenario_explicit_share={"safety": 1.5, "general": 0.6, "open_domain": 0.4})
    with pytest.raises(ValidationError):
        FusionConfig(mode="both")
    with pytest.raises(ValidationError):
        FusionConfig(calibration_rate=0.1)  # type: ignore[call-arg]
