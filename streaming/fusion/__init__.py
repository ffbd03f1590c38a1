"""Clean, structure and fuse feedback: the brain of the stream processor.

Everything here is pure and deterministic: no I/O, no wall clock (time comes in as event
time), no randomness. The processor owns one ``Fuser`` and drives it:

1. ``signal_from_event`` (``signals``) turns a ``FeedbackEvent`` (joined to its
   ``InteractionEvent``) into a ``Signal``: a value in [-1, 1] (positive = the user liked
   the answer) and a strength in [0, 1] (how much this one observation says).
2. ``Fuser.allow`` rate-limits each rater; ``Fuser.observe`` updates the rater's online
   statistics with the new signal and returns it normalized for that rater (``raters``).
   Feedback without a user is one rater class, "anonymous", with its own rate limit,
   scale and (low, learned, bounded) trust.
3. ``Fuser.fuse`` combines one response's signals into a score with a confidence
   (``fuser``). The explicit part (thumb, rating, edit, comment) and the implicit part
   (copy, regenerate, link, share, dwell) are each a weighted mean, mixed by the
   scenario's prior share (``scenario``: explicit counts more in safety-sensitive
   conversations, less in open-domain ones).
4. ``Fuser.calibrate`` learns, from responses with settled signals, how well each implicit
   signal predicts the response's outcome as the rest of its evidence gives it (votes,
   edits, and regenerate clicks if configured; never the signal itself: ``outcomes``) as
   its weight (``calibration``), and how much each rater agrees with everybody else
   (their trust, ``raters``).

All learned state round-trips through ``state_dict`` / ``load_state_dict`` as plain JSON.
``config`` holds ``FusionConfig``; ``stats`` the running statistics the parts share.
"""

from streaming.fusion.config import SCENARIOS, FusionConfig, Scenario
from streaming.fusion.fuser import Fused, Fuser
from streaming.fusion.raters import RaterStats
from streaming.fusion.scenario import KeywordMatcher, ScenarioDetector
from streaming.fusion.signals import (
    Signal,
    comment_labels,
    dwell_value,
    edit_change,
    signal_from_event,
)

__all__ = [
    "SCENARIOS",
    "Fused",
    "Fuser",
    "FusionConfig",
    "KeywordMatcher",
    "RaterStats",
    "Scenario",
    "ScenarioDetector",
    "Signal",
    "comment_labels",
    "dwell_value",
    "edit_change",
    "signal_from_event",
]
