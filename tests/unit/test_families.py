"""The preference families the learning benchmark runs on (summary, bold, list), on real
answers: SmolLM2-135M-Instruct's greedy 80-token answers to held-out prompts, as the
benchmark's judge sees them. A user's edit must move such an answer toward the taste,
keep its content, and never make it less of an answer (`quality`); and the model must
rarely do what the family wants by itself, or there would be nothing to learn."""

from __future__ import annotations

import random
import re
import statistics

import pytest

from livealign.users import (
    REALISTIC,
    PopulationConfig,
    SimUser,
    _taste,
    judge,
    quality,
    realistic,
    rewrite,
)
from streaming.fusion.signals import comment_labels

# (prompt, SmolLM2-135M-Instruct's greedy answer at max_tokens 80, cut off where it was)
SMOLLM2 = [
    ("Define photosynthesis in plain words.",
     "Photosynthesis is a vital process that plants use to convert light energy from the sun "
     "into chemical energy stored in glucose and oxygen."),
    ("I get nervous before presentations at work. Any advice?",
     "The dreaded nervous before a presentation. It's a common phenomenon that can be avoided "
     "with a little preparation and a bit of self-care. Here's some advice to help you manage "
     "your nerves:\n\n1. **Preparation**: Know your audience. Know who you're speaking to. "
     "Know your topic and the audience's expectations.\n\n2. **Positive Self-Talk**: Believe "
     "in yourself. Believe that"),
    ("How do I make a simple monthly budget?",
     "To create a simple monthly budget, you'll need to consider both your income and "
     "expenses. Here's a general outline:\n\nStart by listing all your income sources, "
     "including your salary, any additional expenses you may have, and your debts. Then, "
     "subtract your expenses from your income. This will give you a total income of your "
     "expenses.\n\nNext, calculate your expenses by subtracting all your"),
    ("How do I read a text file line by line in Python?",
     "You can read a text file line by line in Python using the `with` statement. This allows "
     "you to read a file line by line without opening it in read mode.\n\nHere's an example:"
     "\n\n```python\nwith open('example.txt', 'r') as file:\n    for line in file:\n        "
     "print(line.strip())\n```\n\nThis will print"),
    ("List five easy houseplants for beginners.",
     "1. Snake Plant: This plant is easy to care for and can thrive in a variety of light "
     "conditions. It's also a good choice for beginners.\n\n2. Spider Plant: This plant is a "
     "favorite among many, and it's easy to care for. It's also a good choice for beginners."
     "\n\n3. Pothusella: This plant is a good choice for beginners, as"),
    ("If you could have any superpower, which would you choose?",
     "I'm afraid I'm not equipped to choose. I'm designed to assist users in creating their "
     "own abilities, but I'm designed to assist with the creation of new ideas and concepts. "
     "I'm designed to help users explore new possibilities and create innovative solutions. "
     "I'm not capable of granting any abilities beyond my limitations."),
    ("Which ocean is the largest on Earth?",
     "The largest ocean on Earth is the Pacific Ocean, which is approximately 149.7 million "
     "square kilometers."),
    ("Cats or dogs: which pet suits a small apartment better?",
     "While both cats and dogs can be suitable for small apartments, there are some "
     "differences in their personalities and requirements. Cats are generally more "
     "independent and require less space, while dogs are often more social and require more "
     "space to be comfortable.\n\nCats can be more adaptable to small spaces, as they can "
     "thrive in small environments. They are also more likely to be happy and content in "
     "small apartments, whereas"),
    ("Walk me through repotting a houseplant that has outgrown its pot.",
     "Step 1: Choose a Repot\n1. Find a suitable repot that can accommodate your plant's "
     "size.\n2. Ensure the pot is sturdy and has drainage holes.\n3. Choose a repot that fits "
     "your plant's size.\n4. Place the plant in the new pot.\n5. Check the pot's drainage "
     "holes.\n6. If necessary, add more"),
]  # fmt: skip
BENCH_FAMILIES = ("summary", "bold", "list")
CONFIG = PopulationConfig()


def words(text: str) -> list[str]:
    """The answer's words, without markdown and list markers: what an edit must keep."""
    tokens = [w.strip(".,!?;:\"'()*-•#`").lower() for w in text.split()]
    return [w for w in tokens if w and not re.fullmatch(r"\d+", w)]


@pytest.mark.parametrize("family", BENCH_FAMILIES)
def test_edits_move_real_answers_toward_the_taste_and_keep_them_answers(family: str) -> None:
    for prompt, answer in SMOLLM2:
        edited = rewrite(family, answer, CONFIG, prompt)  # type: ignore[arg-type]
        before = _taste(family, answer, CONFIG, prompt)  # type: ignore[arg-type]
        after = _taste(family, edited, CONFIG, prompt)  # type: ignore[arg-type]
        assert after > before or before == after == 1.0, (family, answer, edited)
        assert quality(edited, prompt) >= quality(answer, prompt), (family, edited)
        # The user's own better version of the model's answer: the same words, in order
        # ("In short:" added in front for a summary).
        added = ["in", "short"] if family == "summary" else []
        assert words(edited) == added + words(answer), (family, edited)


def test_smollm2_rarely_does_the_new_families_by_itself() -> None:
    for family in ("summary", "bold"):
        rates = [_taste(family, a, CONFIG, p) for p, a in SMOLLM2]
        assert statistics.fmean(rates) <= 0.2, family


def test_summary_wants_the_gist_first() -> None:
    prompt = "Define photosynthesis in plain words."
    answer = SMOLLM2[0][1]
    edited = rewrite("summary", answer, CONFIG, prompt)
    assert edited == f"In short: {answer}"
    assert _taste("summary", "TL;DR: plants eat light. More below.", CONFIG) == 1.0
    assert _taste("summary", "**In short:** plants eat light.", CONFIG) == 1.0
    assert _taste("summary", "Plants eat light. In summary, they are solar.", CONFIG) == 0.3
    assert _taste("summary", "A summary of the book is hard.", CONFIG) == 0.0
    assert rewrite("summary", edited, CONFIG) == edited  # already what the user wants
    # The first sentence becomes the summary line; the rest follows, paragraphs kept.
    budget = rewrite("summary", SMOLLM2[2][1], CONFIG, SMOLLM2[2][0])
    assert budget.startswith(
        "In short: To create a simple monthly budget, you'll need to consider both your "
        "income and expenses.\n\nHere's a general outline:\n\nStart by listing"
    )


def test_bold_wants_the_key_term_in_bold() -> None:
    prompt, answer = SMOLLM2[2]  # the monthly budget
    edited = rewrite("bold", answer, CONFIG, prompt)
    assert edited.startswith("To create a simple **monthly budget**, you'll need")
    assert _taste("bold", edited, CONFIG, prompt) == 1.0
    # Bolding something else is half of it: SmolLM2's own list headings.
    assert _taste("bold", SMOLLM2[1][1], CONFIG, SMOLLM2[1][0]) == 0.5
    # A bolded whole sentence is no key term; without a prompt any bold term is.
    assert _taste("bold", "**Budgets are plans for the money you earn.**", CONFIG, prompt) == 0.5
    assert _taste("bold", "Use a **budget**.", CONFIG) == 1.0
    # Code is not bolded: the first mention outside it is.
    code = "Use `python file.py` to run it. Python then reads the file."
    assert rewrite("bold", code, CONFIG, "How do I run a python file?") == (
        "Use `python file.py` to run it. **Python** then reads the file."
    )
    # The judge reads through markdown: a bolded mention is still on topic.
    assert quality("**Basil** keeps in water.", "How do I keep basil fresh?") == 1.0
    assert judge("**Basil** keeps in water.", PopulationConfig(families={"bold": 1.0}),
                 "How do I keep basil fresh?") == 1.0  # fmt: skip


def test_list_edits_make_one_item_a_sentence_and_keep_code_and_lead_ins() -> None:
    prompt, answer = SMOLLM2[1]  # the nervous presenter: two sentences, a lead-in, a list
    edited = rewrite("list", answer, CONFIG, prompt)
    assert edited.splitlines()[:4] == [
        "- The dreaded nervous before a presentation.",
        "- It's a common phenomenon that can be avoided with a little preparation and a bit of "
        "self-care.",
        "Here's some advice to help you manage your nerves:",
        "1. **Preparation**: Know your audience. Know who you're speaking to. Know your topic "
        "and the audience's expectations.",
    ]
    code = rewrite("list", SMOLLM2[3][1], CONFIG, SMOLLM2[3][0])
    assert "```python\nwith open('example.txt', 'r') as file:\n    for line in file:" in code


def test_every_family_has_comments_that_read_as_meant() -> None:
    from livealign.users import _COMMENTS, FAMILIES

    for family in FAMILIES:
        good, bad = _COMMENTS[family]
        good_polarity = float(comment_labels(good)["polarity"])
        assert good_polarity > 0.05 > -0.05 > float(comment_labels(bad)["polarity"]), family


def test_realistic_mix_rates() -> None:
    """Dwell on every answer, votes on ~12%, edits on ~20% of the disliked answers only,
    copies when pleased, regenerations when not, comments rare."""
    config = realistic({"summary": 1.0}, noise=0.0)
    assert config.families == {"summary": 1.0} and config.adversarial_share == 0.1
    assert all(getattr(config, k) == v for k, v in REALISTIC.items())
    prompt, answer = SMOLLM2[0]
    liked = rewrite("summary", answer, config, prompt)
    user, n, rng = SimUser("u", "summary"), 4000, random.Random(5)
    seen: dict[str, dict[str, int]] = {}
    for name, text in (("liked", liked), ("disliked", answer)):
        counts: dict[str, int] = {}
        for _ in range(n):
            for a in user.react(text, config, rng, prompt=prompt):
                kind = a.kind.value if a.kind != "click" else f"click:{a.value}"
                counts[kind] = counts.get(kind, 0) + 1
        seen[name] = counts
    liked_seen, disliked_seen = seen["liked"], seen["disliked"]
    assert liked_seen["dwell"] == disliked_seen["dwell"] == n
    explicit = (disliked_seen.get("thumb", 0) + disliked_seen.get("rating", 0)) / n
    assert 0.10 < explicit < 0.14
    assert 0.18 < disliked_seen["edit"] / n < 0.22 and "edit" not in liked_seen
    assert 0.27 < liked_seen["click:copy"] / n < 0.33 and "click:copy" not in disliked_seen
    assert 0.17 < disliked_seen["click:regenerate"] / n < 0.23
    assert disliked_seen.get("comment", 0) / n < 0.02
    # The edit is the family's rewrite of the answer, for the prompt it answered.
    edits = [
        a.value
        for _ in range(50)
        for a in SimUser("b", "bold").react(answer, config, rng, prompt=prompt)
        if a.kind == "edit"
    ]
    assert edits and set(edits) == {rewrite("bold", answer, config, prompt)}
