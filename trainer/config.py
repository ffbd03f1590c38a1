"""The trainer's configuration, TRL-style: typed, documented fields with working defaults.

``TrainerConfig`` (when a round runs and on which data) holds ``TrainConfig`` (the
hyper-parameters of the reward model, DPO and KTO) and ``GateConfig`` (the offline
gate's thresholds). Kept apart from the training code so that settings can be read and
checked without importing torch.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# Every round's report, one JSON line each, in the registry folder (the status page reads
# its tail).
ROUNDS_LOG = "rounds.jsonl"


class TrainConfig(BaseModel):
    """Hyper-parameters of one training round. Defaults suit SmolLM2-135M on a few CPU cores."""

    model_config = ConfigDict(extra="forbid")  # a misspelled knob is an error

    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_top_layers: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the transformer blocks, counted from the top, that get a LoRA "
        "(1: all). Backpropagation stops at the lowest block with a LoRA: in "
        "bench/train_speed.py the top half took 0.87x the time of every block; a style "
        "preference (how an answer opens, is laid out, ends) lives in the upper blocks.",
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        description="Linear layers that get a LoRA (every projection of a Llama block).",
    )
    dpo_lr: float = Field(
        3e-4,
        ge=0,
        description="DPO learning rate (with the SFT term and the loop pairs: plain DPO at "
        "this rate over-optimizes SmolLM2-135M into gibberish within an epoch). Offline "
        "(bench/dpo_offline.py: 90 edit pairs of 80-token answers, 24 steps, greedy 80-token "
        "answers to 70 held-out prompts), with loop pairs at weight 1: `list` 0.80 of the "
        "prompts beat the base at 3e-4 against 0.55 at 2e-4, `summary` 0.69 against 0.59, "
        "repetition within 0.03 of the base's. Without loop pairs 3e-4 learned `list` too "
        "(0.74) but a third of its answers looped; 5e-4 looped on every family tried.",
    )
    dpo_beta: float = Field(
        0.1, gt=0, description="DPO beta: strength of the pull to the reference."
    )
    sft_weight: float = Field(
        3.0,
        ge=0,
        description="Weight of the SFT (NLL on the chosen answer) term added to the DPO sigmoid "
        "loss; it keeps answers fluent. 0 gives plain DPO. Measured on 90 `list` edit pairs "
        "of 80-token answers (bench/dpo_offline.py, 70 held-out prompts, greedy): at 3 the "
        "answers repeated 0.14 of their word 3-grams against 0.19-0.21 at 1 (base: 0.09-0.11), "
        "in two runs, at the same or a higher mean utility (0.19 vs 0.15; 0.18 vs 0.18); on 90 "
        "`summary` pairs 0.09 against 0.12, utility 0.10 against 0.12 (inside the interval).",
    )
    loop_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the loop pairs (trainer.loops) added to the DPO stage, relative "
        "to the pair each is made from: its chosen answer against a copy of it that loops on "
        "its last line or sentence, so that DPO learns a loop is worse. 0: none. Offline on "
        "90 `list` edit pairs: at DPO 2e-4, 0.5 cut the 3-gram repetition from 0.138 to 0.090 "
        "(base 0.107) at the same utility; at 3e-4, 1.0 left 0.14 of the answers looping "
        "(base 0.10, none: 0.31) while 0.80 of them beat the base. On `summary`, 2.0 learned "
        "less than 1.0 (0.60 against 0.69 beat the base). Costs ~1.3-1.8x a DPO stage's "
        "time (twice the records to score for the reference).",
    )
    kto_lr: float = Field(
        1e-4,
        ge=0,
        description="KTO learning rate; lower than DPO's because KTO has no SFT term to anchor "
        "it. At 5e-4, on 212 undesirable and 20 desirable labels of 80-token answers, the "
        "candidate's greedy answers repeated 82% of their word 3-grams (the base: 4%).",
    )
    kto_beta: float = Field(
        0.1, gt=0, description="KTO beta: strength of the pull to the reference."
    )
    epochs: float | None = Field(
        None,
        gt=0,
        description="Passes over the (weight-resampled) data, per stage. None: chosen from the "
        "round's size (trainer.schedule): `target_steps` optimizer steps, at most "
        "`max_epochs` passes; a large round is subsampled by weight rather than trained "
        "longer, so that a round's time stays bounded.",
    )
    target_steps: int = Field(
        24,
        ge=1,
        description="With `epochs` None, optimizer steps a stage takes: a round of 64 pairs "
        "gets 3 passes at batch 8, one of 400 pairs half a pass (its heavier records "
        "first). On SmolLM2-135M with 80-token answers a DPO step at batch 8 takes ~9 s "
        "on two CPU cores (~12 s on one), a KTO step ~4 s.",
    )
    max_epochs: float = Field(
        3.0,
        ge=1,
        description="With `epochs` None, most passes over a small round (more memorises it).",
    )
    batch_size: int = Field(
        8,
        ge=1,
        description="Most records per optimizer micro-batch; a small round uses smaller "
        "batches so that a pass is at least 4 steps.",
    )
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(
        320,
        ge=8,
        description="Token limit of prompt + answer. Batches are padded to their own longest "
        "row, so this only cuts: an answer longer than the room its prompt leaves loses its "
        "end.",
    )
    max_prompt_length: int = Field(
        192,
        ge=1,
        description="Prompts longer than this many tokens keep their last ones (the newest "
        "turns): a long conversation costs no more to train on than this.",
    )
    precompute_ref: bool = Field(
        True,
        description="DPO's reference log-probabilities are computed once per record before "
        "training (not once per step and pass), without gradients, in larger batches.",
    )
    cut_aware: bool = Field(
        True,
        description="Answers cut off by the chat's max_tokens are trained without an end of "
        "turn, so the model never learns to stop where a length limit stopped it.",
    )
    max_steps: int | None = Field(
        None, ge=1, description="If set, optimizer steps per stage, overriding the passes."
    )
    bf16: bool | None = Field(
        None,
        description="bf16 autocast (weights stay fp32). None = where the hardware computes bf16 "
        "natively: a bf16 GPU, or a CPU with AVX512-BF16/AMX. On an AVX2-only CPU autocast is "
        "emulated and measured ~20x slower in the backward pass than fp32.",
    )
    seed: int = Field(0, description="Seeds LoRA init, resampling and data order.")
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads for a round (training, scoring, the gate's answers). "
        "None: every core the trainer may run on. Ray limits an actor's OpenMP threads to its "
        "reserved CPUs (1), which ran a whole round on one core of the two-core machine while "
        "serving idled; serving and the trainer now share the cores as the OS schedules them "
        "(Ray starts both at the same niceness). Set it to keep cores free for serving.",
    )
    reward_lr: float = Field(2e-4, ge=0, description="Reward-model learning rate (LoRA + head).")
    reward_epochs: float = Field(
        2.0,
        gt=0,
        description="Passes over the reward-model pairs: its scalar head starts random and needs "
        "more than one pass over a few hundred pairs.",
    )
    log_every: int = Field(1, ge=1, description="Log a line and report progress every N steps.")


class GateConfig(BaseModel):
    """Thresholds of the offline gate. A candidate passes only if every applicable check does."""

    model_config = ConfigDict(extra="forbid")  # a misspelled knob is an error

    min_pref_accuracy: float = Field(
        0.55,
        ge=0,
        le=1,
        description="Least held-out preference accuracy of the candidate, its implicit DPO "
        "reward measured against the current adapter as reference.",
    )
    min_pref_pairs: int = Field(
        8,
        ge=1,
        description="Held-out pairs the preference-accuracy check needs to judge; with fewer it "
        "is measured and recorded but skipped (on 2 pairs an accuracy of 0.5 is one coin flip "
        "either way, not evidence against a candidate).",
    )
    min_win_rate_lower: float = Field(
        0.4,
        ge=0,
        le=1,
        description="Least lower bound of the Wilson interval (at `win_rate_confidence`) on the "
        "candidate's win rate over the current adapter, counted over order-consistent "
        "verdicts only. Below 0.5 on purpose: the gate asks 'not shown worse', and the "
        "canary asks 'better' on live traffic. At confidence 0.8 an even 8/16 gives 0.35 and "
        "fails (12/24: 0.37; an even split fails below 40 verdicts), 9/16 gives 0.41 and "
        "11/16 0.53 and pass. Over 24 verdicts a candidate whose true win rate is 0.4 passes "
        "11% of the time (the point estimate >= 0.5 this replaces: 21%), one at 0.5 42% "
        "(58%), one at 0.65 91%. One lucky verdict is not enough: 1/1 gives 0.38.",
    )
    win_rate_confidence: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Two-sided confidence level of the win-rate interval (0.8: a true win rate "
        "falls below the lower bound about one time in ten).",
    )
    reward_tie_margin: float = Field(
        0.1,
        ge=0,
        description="The reward-model judge calls two answers a tie when their scores differ "
        "by less than this: by the Bradley-Terry loss it is trained with, and with its scale "
        "calibrated on held-out pairs, P(better) = sigmoid(difference), and 0.1 is 0.525, a "
        "coin flip. It also absorbs the float noise "
        "between scoring batches of two identical answers. Ties are not counted as verdicts.",
    )
    max_nll_increase: float = Field(
        0.6,
        ge=0,
        description="Fluency guard: the candidate's answers' mean per-token NLL under the base "
        "model (nats) may exceed that of the base model's own answers by at most this. Fluent "
        "fine-tuned answers move it by a fraction of a nat; SmolLM2 adapters that had begun "
        "to repeat themselves were at +0.5, gibberish is at +3.",
    )
    max_repetition_increase: float = Field(
        0.1,
        ge=0,
        description="Degeneration guard: the share of repeated word 3-grams in the candidate's "
        "answers (per answer, averaged) may exceed that of the base model's own answers by at "
        "most this. Anchored to the base because SmolLM2-135M repeats itself too: its greedy "
        "48-token answers to 24 held-out prompts averaged 0.03 (0 to 0.17 per answer), while "
        "an answer caught in a loop is at 0.5-0.9. +0.1 is about three of 24 answers turning "
        "into loops, or every answer repeating a tenth of itself.",
    )
    max_length_ratio: float = Field(
        2.0, gt=0, description="Most mean answer length (tokens) of candidate / current."
    )
    min_length_ratio: float = Field(
        0.3, ge=0, description="Least mean answer length (tokens) of candidate / current."
    )
    max_new_tokens: int = Field(48, ge=1, description="Greedy answer length limit per prompt.")
    n_prompts: int = Field(
        24,
        ge=1,
        description="Held-out prompts answered (the first N given). Each costs three greedy "
        "answers (candidate, current, base): on the 2-core machine SmolLM2-135M answered a "
        "batch of 8 at 48 tokens in ~18 s (after a slower first one), so 24 (three full "
        "batches) is ~55 s more than 16 per round. It narrows the win-rate interval at an "
        "even split from +-0.15 to +-0.13; 32 would give +-0.11 for another ~55 s.",
    )
    max_length: int = Field(
        512, ge=16, description="Token limit of prompt + answer when scoring log-probabilities."
    )
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass.")


class TeacherConfig(BaseModel):
    """The reward model as a teacher (iterative / online DPO): each round, k answers of the
    stable adapter to prompts seen in traffic, sampled through serving, scored by the
    round's reward model, the best and worst of each prompt made a DPO pair next to the
    users' own pairs. A reward model is a model of sparse feedback and can be wrong, so
    its pairs count less than a user's, only clear wins count, their number is capped
    relative to the users' pairs, and the gate (held-out user pairs, which the teacher
    never samples for) still judges the result."""

    model_config = ConfigDict(extra="forbid")  # a misspelled knob is an error

    enabled: bool = Field(
        True,
        description="Use the teacher when a sampler (the serving deployment) is reachable and "
        "the reward model passed its held-out accuracy check.",
    )
    k: int = Field(
        4, ge=2, description="Answers sampled per prompt (vLLM's n); the best and worst pair up."
    )
    prompts_per_round: int = Field(
        32,
        ge=1,
        description="Prompts sampled per round: the newest distinct ones of the traffic on "
        "the training side of the split. More than the cap on pairs lets it keep the reward "
        "model's surest calls.",
    )
    max_tokens: int = Field(
        128,
        ge=1,
        description="Answer length limit per sample. Answers cut off by it are dropped: as "
        "a DPO pair their turn would be closed where they stop, teaching the policy to stop "
        "mid-sentence.",
    )
    temperature: float = Field(
        0.9,
        gt=0,
        le=2,
        description="Sampling temperature: the k answers must differ for best and worst to "
        "mean anything (the model's own default, 0.2 for SmolLM2, gives near-copies).",
    )
    min_margin: float = Field(
        1.0,
        ge=0,
        description="Least reward difference (best - worst) that makes a pair. Rewards are "
        "Bradley-Terry log-odds calibrated on the held-out user pairs (trainer.reward_scale), "
        "so 1.0 means the reward model prefers the best answer with probability sigmoid(1) = "
        "0.73; closer calls are its noise, not a preference.",
    )
    max_repetition: float = Field(
        0.3,
        ge=0,
        le=1,
        description="A sample whose word 3-grams repeat more than this (trainer.gate_checks."
        "repetition: 0 for none, ~0.5 and up for a loop; the base model's answers average "
        "0.05-0.1) is never a pair's chosen answer, only its rejected one. In a `summary` "
        "bench round the reward model gave a looping candidate (0.67 of its 3-grams "
        "repeated) a win rate of 0.91: it can favour a loop of what users like.",
    )
    weight: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Weight of a teacher pair as a fraction of the users' median pair weight: "
        "always below a user pair's, as it is a model's guess at the users' preference.",
    )
    ratio: float = Field(
        1.0,
        ge=0,
        description="Most teacher pairs per user pair in a round (the clearest wins kept), so "
        "that the users' own pairs always weigh at least 1 / (1 + ratio * weight) of the DPO "
        "data; no user pairs, no teacher pairs.",
    )
    prompts_per_call: int = Field(
        8,
        ge=1,
        description="Prompts asked of serving in one sampling call: the round keeps the "
        "calls that returned within `timeout_s`, so a slow engine costs prompts, not all of "
        "them.",
    )
    timeout_s: float = Field(
        180.0,
        gt=0,
        description="Longest time spent sampling in one round. On the two-core machine, "
        "32 prompts x 4 answers of 128 tokens took 162 s from the bare base and over 180 s "
        "from a LoRA adapter.",
    )


class TrainerConfig(BaseModel):
    """When and how the trainer runs a round. Every field can be set from the stack's
    settings (``trainer_overrides``)."""

    model_config = ConfigDict(extra="forbid")  # a misspelled knob is an error

    base_model: Path = Field(description="HF-format folder of the served base model.")
    registry_dir: Path
    store_url: str = Field(description="SQLAlchemy URL of the preference store.")
    work_dir: Path = Field(description="Scratch space for candidates and reward models.")
    interval_s: float = Field(600.0, description="A round at least this often, if data.")
    min_new_records: int = Field(64, description="Or as soon as this many records are new.")
    min_records: int = Field(8, description="Fewer new records than this: no round.")
    held_out_fraction: float = Field(0.2, description="Share of records kept for the gate.")
    min_reward_pairs: int = Field(
        16,
        ge=2,
        description="Fewer training pairs than this: no reward model this round (one trained "
        "on a handful ranks answers at random), so the gate's win-rate check is skipped.",
    )
    min_reward_accuracy: float = Field(
        0.55,
        ge=0,
        le=1,
        description="A reward model below this held-out pair accuracy does not judge the "
        "candidate (the win-rate check is skipped and the reason recorded).",
    )
    max_records: int = Field(2000, description="Most recent records used in one round.")
    train: TrainConfig = Field(default_factory=TrainConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
