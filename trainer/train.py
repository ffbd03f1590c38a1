"""One training round's model work: DPO (+ SFT term) and KTO on a LoRA adapter, and a reward model.

No scheduling and no registry here: the caller decides when to train, what data goes in and
whether the result is published. Everything runs through TRL 1.16 + PEFT on whatever device
torch sees (the CPU here), and only adapters are written, never full models.

Chat formatting always goes through the tokenizer's chat template, exactly as serving renders
``apply_chat_template(messages, add_generation_prompt=True)`` and lets the answer follow, so the
model is trained on the same token sequences it later continues.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PrinterCallback,
    TrainerCallback,
)

from streaming.events import ChatMessage, PreferenceLabel, PreferencePair
from trainer.config import TrainConfig
from trainer.loops import loop_pairs
from trainer.reward_scale import fit_scale
from trainer.schedule import plan

__all__ = [
    "PolicyResult",
    "Progress",
    "RewardModel",
    "RewardResult",
    "TrainConfig",
    "completion_ids",
    "load_tokenizer",
    "messages_as_dicts",
    "native_bf16",
    "prompt_ids",
    "train_policy",
    "train_reward_model",
]

log = logging.getLogger(__name__)

# Gets {"step", "total_steps", "loss", "eta_s"} (numbers) and "stage" ("dpo", "kto" or "reward").
Progress = Callable[[dict[str, Any]], None]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class PolicyResult:
    """What train_policy produced: the adapter folder and how training went."""

    adapter_dir: Path
    steps: int
    seconds: float
    dpo_loss: float | None
    kto_loss: float | None
    n_pairs: int
    n_labels: int


@dataclass
class RewardResult:
    """What train_reward_model produced: the adapter (LoRA + score head) and its accuracy."""

    model_dir: Path
    held_out_accuracy: float | None
    steps: int
    seconds: float
    n_train: int
    n_eval: int
    # Calibrated on the held-out pairs (trainer.reward_scale); 1.0 without enough of them.
    scale: float = 1.0


# ---- chat formatting shared with the gate ------------------------------------------------


def messages_as_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def load_tokenizer(base_model: Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _template_ids(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def prompt_ids(tokenizer: Any, prompt: Sequence[ChatMessage]) -> list[int]:
    """Token ids serving feeds the model before it answers."""
    return _template_ids(tokenizer, messages_as_dicts(prompt), add_generation_prompt=True)


def completion_ids(
    tokenizer: Any, prompt: Sequence[ChatMessage], answer: str
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) the way TRL splits them: the answer starts where the rendered
    prompt and the rendered prompt + answer first differ (includes the end-of-turn tokens)."""
    head = prompt_ids(tokenizer, prompt)
    full = _template_ids(
        tokenizer, [*messages_as_dicts(prompt), {"role": "assistant", "content": answer}]
    )
    n = 0
    while n < min(len(head), len(full)) and head[n] == full[n]:
        n += 1
    return full[:n], full[n:]


# ---- shared plumbing -----------------------------------------------------------------------


def cpu_threads(n: int | None = None) -> int:
    """`n`, or every core this process may run on. Not torch's own default: inside a Ray
    actor that is the actor's reserved CPUs (Ray sets OMP_NUM_THREADS to them, 1 for the
    trainer), which left a round on one core of two while serving sat idle."""
    if n is not None:
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """torch's thread count is process-global: set it (`cpu_threads(n)`) for the run, then
    put it back."""
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def weighted_resample(weights: Sequence[float], n: int, rng: random.Random) -> list[int]:
    """n indices drawn in proportion to weights, by systematic resampling, then shuffled.

    Why resampling rather than a per-sample loss weight: TRL 1.16's DPO and KTO losses take no
    per-example weight (DPO's `use_weighting` is WPO's probability weighting, KTO's
    desirable/undesirable weights are per class), and subclassing their loss would tie us to
    TRL internals. Systematic (not i.i.d.) sampling gives each record floor or ceil of its
    expected count n * w / sum(w), so a weight-2 record is seen about twice as often as a
    weight-1 one even in a small round, and weight 0 means never. The records are visited in
    a random order: systematic sampling over the given order would alias with any periodic
    pattern in it (every third record undesirable, say) and could skip a whole class.
    """
    total = sum(max(float(w), 0.0) for w in weights)
    if n <= 0 or total <= 0:
        return []
    order = list(range(len(weights)))
    rng.shuffle(order)
    cumulative, acc = [], 0.0
    for i in order:
        acc += max(float(weights[i]), 0.0)
        cumulative.append(acc / total)
    cumulative[-1] = 1.0  # rounding must not leave the last point past the end
    offset = rng.random() / n
    picks = [
        order[min(bisect.bisect_right(cumulative, offset + k / n), len(order) - 1)]
        for k in range(n)
    ]
    rng.shuffle(picks)
    return picks


def end_of_turn(tokenizer: Any) -> list[int]:
    """The tokens the chat template closes an assistant message with (``<|im_end|>`` and a
    newline for SmolLM2): what an answer cut off by ``max_tokens`` never said. Empty for a
    template that renders the open and the closed message differently."""
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    closed = _template_ids(tokenizer, convo)
    still_open = _template_ids(tokenizer, convo, continue_final_message=True)
    if closed[: len(still_open)] != still_open:
        log.warning("chat template: cannot tell its end-of-turn tokens; cut answers keep them")
        return []
    return closed[len(still_open) :]


def _reopen(example: dict[str, Any], tail: list[int], ends: dict[str, str]) -> dict[str, Any]:
    """Drop the end-of-turn tokens of the answers that were cut off (`ends` maps a token
    column to the flag column saying whether its answer was complete)."""
    n = len(tail)
    for ids, complete in ends.items():
        if n and not example[complete] and list(example[ids][-n:]) == tail:
            example[ids] = example[ids][:-n]
    return example


def _keep_prompt_end(example: dict[str, Any], limit: int) -> dict[str, Any]:
    """A prompt over `limit` tokens keeps its last ones: the newest turns are what the
    answer replies to (TRL would otherwise cut the answer's end to make room)."""
    if len(example["prompt_ids"]) > limit:
        example["prompt_ids"] = example["prompt_ids"][-limit:]
    return example


def _prepared(trainer_cls: Any, ends: dict[str, str], config: TrainConfig) -> Any:
    """`trainer_cls` (a TRL trainer) with LiveAlign's data preparation on top of TRL's own
    tokenization: long prompts cut from the left, and cut-off answers reopened.

    TRL renders every answer as a closed assistant message, so an answer cut off by
    ``max_tokens`` mid-sentence would be trained as if the model chose to stop there. Almost
    every answer of a small budget is cut: trained closed, they teach stopping mid-sentence
    (when liked) and blur what a short, finished answer is worth. Reopened (`ends` maps a
    token column to the flag column saying whether its answer was complete), the only stops
    the model learns are the ones it made itself.

    The resampled dataset repeats records (weights, several passes); with precomputed
    reference log-probabilities each distinct record is scored once, not once a row."""

    class Prepared(trainer_cls):
        def _prepare_dataset(
            self, dataset: Any, processing_class: Any, args: Any, *rest: Any
        ) -> Any:
            # TRL drops a record whose prompt alone fills max_length while tokenizing; the
            # prompt is cut here instead, so TRL is told no limit for that step (its
            # collator took the limit when it was built and still enforces it). What still
            # does not fit after the cut, `_fits` left out before.
            limit, args.max_length = args.max_length, None
            try:
                prepared = super()._prepare_dataset(dataset, processing_class, args, *rest)
            finally:
                args.max_length = limit
            prepared = prepared.map(_keep_prompt_end, fn_kwargs={"limit": config.max_prompt_length})
            if not config.cut_aware:
                return prepared
            tail = end_of_turn(processing_class)
            return prepared.map(_reopen, fn_kwargs={"tail": tail, "ends": ends})

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            if "record" not in dataset.column_names:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            first: dict[int, int] = {}
            for row, record in enumerate(dataset["record"]):
                first.setdefault(record, row)
            distinct = super()._precompute_ref_logps(
                dataset.select(list(first.values())), name, batch_size
            )
            ref = {
                r: (c, j)
                for r, c, j in zip(
                    distinct["record"],
                    distinct["ref_chosen_logps"],
                    distinct["ref_rejected_logps"],
                    strict=True,
                )
            }
            log.info("reference log-probs: %d distinct records for %d rows", len(ref), len(dataset))
            return dataset.map(
                lambda ex: {
                    "ref_chosen_logps": ref[ex["record"]][0],
                    "ref_rejected_logps": ref[ex["record"]][1],
                }
            )

    return Prepared


def _fits(tokenizer: Any, prompt: Sequence[ChatMessage], config: TrainConfig) -> bool:
    # TRL drops (not truncates) a record whose prompt alone fills max_length; dropping it
    # here first keeps the counts honest and never hands TRL an empty dataset. Prompts are
    # cut to max_prompt_length first (see _keep_prompt_end).
    n = min(len(prompt_ids(tokenizer, prompt)), config.max_prompt_length)
    return n < config.max_length


class _ProgressCallback(TrainerCallback):
    """Turns Trainer log events into `progress` calls and one INFO line each."""

    def __init__(self, stage: str, offset: int, total: int, progress: Progress | None) -> None:
        self.stage, self.offset, self.total, self.progress = stage, offset, total, progress
        self.started = time.monotonic()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if not logs or "loss" not in logs:
            return  # the end-of-training summary and eval logs carry no step loss
        loss = float(logs["loss"])
        done = self.offset + int(state.global_step)
        per_step = (time.monotonic() - self.started) / max(int(state.global_step), 1)
        eta = per_step * (self.total - done)
        info = {"step": done, "total_steps": self.total, "loss": loss, "eta_s": eta}
        log.info(
            "%s step %d/%d loss %.4f (%.1f s/step, eta %.0f s)",
            self.stage,
            done,
            self.total,
            loss,
            per_step,
            eta,
        )
        if self.progress is not None:
            self.progress({**info, "stage": self.stage})


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No per-map progress bars from `datasets` in a background trainer's log."""
    from datasets.utils import logging as ds_logging

    was_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            ds_logging.enable_progress_bar()


def _train(trainer: Any) -> float:
    """Run a TRL trainer without its stdout printer (we log through `logging` instead)."""
    trainer.remove_callback(PrinterCallback)
    return float(trainer.train().training_loss)


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively (else bf16 autocast is a slow emulation)."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:  # oneDNN's own check for AVX512-BF16 / AMX; private, hence the fallback
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _common_args(config: TrainConfig, workdir: str, lr: float, batch: int) -> dict[str, Any]:
    return {
        "output_dir": workdir,
        "learning_rate": lr,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": config.grad_accum,
        "num_train_epochs": 1,  # the dataset is already resampled to the wanted length
        "max_length": config.max_length,
        "bf16": native_bf16() if config.bf16 is None else config.bf16,
        "seed": config.seed,
        "data_seed": config.seed,
        "logging_steps": config.log_every,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        # Checkpointing trades ~30% more compute for memory a 135M model does not need.
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        # transformers refuses bf16 without a GPU unless told the CPU is meant.
        "use_cpu": not torch.cuda.is_available(),
        "remove_unused_columns": True,
    }


def _lora(config: TrainConfig, task_type: str, model: Any, **extra: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=lora_layers(model.config.num_hidden_layers, config.lora_top_layers),
        task_type=task_type,
        **extra,
    )


def lora_layers(n: int, share: float) -> list[int] | None:
    """The top `share` of a model's `n` blocks (None: all). The backward pass stops at the
    lowest block with a LoRA, so LoRA on the top half costs about half the backward."""
    if share >= 1:
        return None
    first = n - max(1, round(n * share))
    return list(range(first, n))


def _save_adapter(model: Any, out_dir: Path, base_model: Path) -> None:
    """Only the trained adapter ("default"), never TRL's frozen "ref" copy or a full model."""
    model.peft_config["default"].base_model_name_or_path = str(base_model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), selected_adapters=["default"], safe_serialization=True)
    for extra in ("README.md",):  # PEFT writes a model card we do not ship
        (out_dir / extra).unlink(missing_ok=True)


# ---- policy: DPO then KTO ------------------------------------------------------------------


def _load_policy(base_model: Path, adapter: Path | None) -> Any:
    """fp32 base (bf16 is applied by autocast) with `adapter` loaded trainable, or None."""
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32)
    if adapter is None:
        return model
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)


def _dpo_rows(
    pairs: list[PreferencePair], picks: list[int], cut: frozenset[str]
) -> list[dict[str, Any]]:
    return [
        {
            "prompt": messages_as_dicts(pairs[i].prompt),
            "chosen": [{"role": "assistant", "content": pairs[i].chosen}],
            "rejected": [{"role": "assistant", "content": pairs[i].rejected}],
            "record": i,
            "chosen_complete": pairs[i].chosen_response_id not in cut,
            "rejected_complete": pairs[i].rejected_response_id not in cut,
        }
        for i in picks
    ]


def _kto_rows(
    labels: list[PreferenceLabel], picks: list[int], cut: frozenset[str]
) -> list[dict[str, Any]]:
    return [
        {
            "prompt": messages_as_dicts(labels[i].prompt),
            "completion": [{"role": "assistant", "content": labels[i].completion}],
            "label": bool(labels[i].desirable),
            "complete": labels[i].response_id not in cut,
        }
        for i in picks
    ]


def _kto_class_weights(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) balancing the classes as the KTO paper advises:
    weight the rarer class up so that w_D * n_D / (w_U * n_U) is 1 (the paper's range is
    [1, 4/3]); never weight a class down, which would shrink the effective learning rate."""
    n_d = sum(1 for r in rows if r["label"])
    n_u = len(rows) - n_d
    if n_d == 0 or n_u == 0:
        return 1.0, 1.0
    if n_d >= n_u:
        return 1.0, n_d / n_u
    return n_u / n_d, 1.0


@dataclass
class _Stage:
    name: str
    rows: list[dict[str, Any]]
    batch: int

    @property
    def steps(self) -> int:
        return len(self.rows) // self.batch  # callers make len(rows) a multiple of batch


def _plan_dpo(
    pairs: list[PreferencePair], config: TrainConfig, rng: random.Random, cut: frozenset[str]
) -> _Stage:
    if not pairs:
        return _Stage("dpo", [], 1)
    # The schedule is the users' pairs': loop pairs share their steps, they add none.
    sched = plan(len(pairs), config)
    loops = loop_pairs(pairs, config.loop_weight, config.seed)
    log.info("dpo plan: %d pairs + %d loop pairs, %s", len(pairs), len(loops), sched.as_dict())
    pairs = pairs + loops
    cut = cut | {p.rejected_response_id for p in loops}
    picks = weighted_resample([p.weight for p in pairs], sched.samples, rng)
    return _Stage("dpo", _dpo_rows(pairs, picks, cut), sched.batch * config.grad_accum)


def _plan_kto(
    labels: list[PreferenceLabel], config: TrainConfig, rng: random.Random, cut: frozenset[str]
) -> _Stage:
    if not labels:
        return _Stage("kto", [], 1)
    # KTO estimates its KL term from the other answers of the same batch: it needs >= 2.
    sched = plan(len(labels), config, min_batch=2)
    picks = weighted_resample([lab.weight for lab in labels], sched.samples, rng)
    log.info("kto plan: %d labels, %s", len(labels), sched.as_dict())
    return _Stage("kto", _kto_rows(labels, picks, cut), sched.batch * config.grad_accum)


def _run_dpo(
    model: Any, tokenizer: Any, stage: _Stage, config: TrainConfig, workdir: str, cb: Any
) -> tuple[Any, float]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    micro = stage.batch // config.grad_accum
    args = DPOConfig(
        **_common_args(config, workdir, config.dpo_lr, micro),
        beta=config.dpo_beta,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, config.sft_weight],
        precompute_ref_log_probs=config.precompute_ref,
        # Inference only: bigger batches than training's cost no gradient memory.
        precompute_ref_batch_size=4 * micro,
    )
    ends = {"chosen_ids": "chosen_complete", "rejected_ids": "rejected_complete"}
    trainer = _prepared(DPOTrainer, ends, config)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(stage.rows),
        processing_class=tokenizer,
        # A fresh adapter: TRL wraps the model; its reference is the base (adapter disabled).
        # A loaded parent: TRL copies it into a frozen "ref" adapter, so DPO's reference is
        # the adapter being served now, not the base.
        peft_config=None if _is_peft(model) else _lora(config, "CAUSAL_LM", model),
        callbacks=[cb],
    )
    loss = _train(trainer)
    return trainer.accelerator.unwrap_model(trainer.model), loss


def _run_kto(
    model: Any, tokenizer: Any, stage: _Stage, config: TrainConfig, workdir: str, cb: Any
) -> tuple[Any, float]:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    desirable, undesirable = _kto_class_weights(stage.rows)
    micro = stage.batch // config.grad_accum
    args = KTOConfig(
        **_common_args(config, workdir, config.kto_lr, micro),
        beta=config.kto_beta,
        desirable_weight=desirable,
        undesirable_weight=undesirable,
        # The KL estimate pairs each answer with a neighbour's prompt inside a fixed batch;
        # the rows are already shuffled by the resampler.
        train_sampling_strategy="sequential",
        precompute_ref_log_probs=config.precompute_ref,
        precompute_ref_batch_size=4 * micro,
    )
    trainer = _prepared(KTOTrainer, {"completion_ids": "complete"}, config)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(stage.rows),
        processing_class=tokenizer,
        peft_config=None if _is_peft(model) else _lora(config, "CAUSAL_LM", model),
        callbacks=[cb],
    )
    loss = _train(trainer)
    return trainer.accelerator.unwrap_model(trainer.model), loss


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def train_policy(
    base_model: Path,
    parent_adapter: Path | None,
    pairs: list[PreferencePair],
    labels: list[PreferenceLabel],
    out_dir: Path,
    config: TrainConfig,
    progress: Progress | None = None,
    cut: frozenset[str] = frozenset(),
) -> PolicyResult:
    """Train a LoRA on `base_model`: DPO (sigmoid + SFT term) on `pairs`, then KTO on `labels`.

    Starts from `parent_adapter`'s weights when given (its LoRA shape then wins over the
    config's, and it is DPO's reference), else from a fresh LoRA (reference: the base).
    A stage without data is skipped; no data at all is a ValueError.
    Record weights are honoured by weighted resampling (see weighted_resample). Answers whose
    response id is in `cut` were cut off by max_tokens and are trained without their end of
    turn (see _prepared). Writes only adapter_config.json + adapter_model.safetensors into
    `out_dir`.
    """
    started = time.monotonic()
    tokenizer = load_tokenizer(base_model)
    pairs = [p for p in pairs if p.weight > 0 and _fits(tokenizer, p.prompt, config)]
    labels = [lab for lab in labels if lab.weight > 0 and _fits(tokenizer, lab.prompt, config)]
    if not pairs and not labels:
        raise ValueError("nothing to train on: no usable pairs or labels (weight > 0, prompt fits)")
    rng = random.Random(config.seed)
    planned = (_plan_dpo(pairs, config, rng, cut), _plan_kto(labels, config, rng, cut))
    stages = [s for s in planned if s.rows]
    total = sum(s.steps for s in stages)
    losses: dict[str, float] = {}
    adapter = parent_adapter
    with (
        threads(config.num_threads),
        _quiet_datasets(),
        tempfile.TemporaryDirectory(prefix="livealign-") as tmp,
    ):
        for i, stage in enumerate(stages):
            offset = sum(s.steps for s in stages[:i])
            # Each stage starts from a fresh base + the previous stage's saved adapter: TRL
            # patches the model it trains (fused LM head, a "ref" adapter), so an object is
            # never handed to a second trainer. KTO's reference is therefore the DPO result.
            model = _load_policy(base_model, adapter)
            cb = _ProgressCallback(stage.name, offset, total, progress)
            run = _run_dpo if stage.name == "dpo" else _run_kto
            log.info("%s: %d samples, %d steps", stage.name, len(stage.rows), stage.steps)
            trained, losses[stage.name] = run(
                model, tokenizer, stage, config, f"{tmp}/{stage.name}", cb
            )
            last = i == len(stages) - 1
            adapter = out_dir if last else Path(tmp) / f"{stage.name}-adapter"
            if last and out_dir.exists():
                _clear_adapter_files(out_dir)
            _save_adapter(trained, adapter, base_model)
    seconds = time.monotonic() - started
    log.info("policy trained: %d steps in %.0f s -> %s", total, seconds, out_dir)
    return PolicyResult(
        adapter_dir=out_dir,
        steps=total,
        seconds=seconds,
        dpo_loss=losses.get("dpo"),
        kto_loss=losses.get("kto"),
        n_pairs=len(pairs),
        n_labels=len(labels),
    )


def _clear_adapter_files(out_dir: Path) -> None:
    # A stale weights file from an earlier run in the same folder must not survive next to
    # a new config.
    for name in (*ADAPTER_FILES, "adapter_model.bin"):
        (out_dir / name).unlink(missing_ok=True)


# ---- reward model ------------------------------------------------------------------------


def _load_reward_base(base_model: Path, tokenizer: Any) -> Any:
    from transformers.utils import logging as hf_logging

    # The base checkpoint has no score head, so transformers warns it is "MISSING" and freshly
    # initialized: expected here (training creates it, loading an adapter restores it).
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(base_model), num_labels=1, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    # The classifier reads the score at the last non-pad token, so it must know the pad id.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


# Next to a reward model's adapter: the factor its raw scores are multiplied by.
REWARD_SCALE_FILE = "reward_scale.json"


class RewardModel:
    """A scalar reward r(prompt, answer): the base model + LoRA + trained score head.

    Scores are multiplied by `scale` (calibrated on held-out pairs when trained), so that
    sigmoid of a difference is the probability the model means: margins and ties
    measured in them are probabilities (trainer.reward_scale)."""

    def __init__(
        self, model: Any, tokenizer: Any, max_length: int = 512, scale: float = 1.0
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.scale = scale

    @classmethod
    def load(cls, base_model: Path, adapter_dir: Path, max_length: int = 512) -> RewardModel:
        from peft import PeftModel

        tokenizer = load_tokenizer(base_model)
        model = PeftModel.from_pretrained(
            _load_reward_base(base_model, tokenizer), str(adapter_dir)
        )
        scale_file = adapter_dir / REWARD_SCALE_FILE
        scale = json.loads(scale_file.read_text())["scale"] if scale_file.is_file() else 1.0
        return cls(model, tokenizer, max_length, float(scale))

    def _ids(self, prompt: Sequence[ChatMessage], answer: str) -> list[int]:
        ids = _template_ids(
            self.tokenizer,
            [*messages_as_dicts(prompt), {"role": "assistant", "content": answer}],
        )
        # The score is read at the end of the answer: keep the end when cutting.
        return ids[-self.max_length :]

    @torch.inference_mode()
    def score(
        self, prompts: list[list[ChatMessage]], completions: list[str], batch_size: int = 8
    ) -> list[float]:
        """Reward of each (prompt, completion), rendered with the chat template as in training."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        seqs = [self._ids(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        for start in range(0, len(seqs), batch_size):
            scores.extend(self._score_batch(seqs[start : start + batch_size]))
        return [self.scale * x for x in scores]

    def _score_batch(self, seqs: list[list[int]]) -> list[float]:
        pad = self.tokenizer.pad_token_id
        width = max(len(s) for s in seqs)
        # Right padding: the classifier picks the last non-pad token of each row.
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        return [float(x) for x in logits[:, 0].float()]

    def differences(self, pairs: list[PreferencePair]) -> list[float]:
        """r(chosen) - r(rejected) of each pair."""
        prompts = [p.prompt for p in pairs]
        chosen = self.score(prompts, [p.chosen for p in pairs])
        rejected = self.score(prompts, [p.rejected for p in pairs])
        return [c - r for c, r in zip(chosen, rejected, strict=True)]

    def accuracy(self, pairs: list[PreferencePair]) -> float:
        """Fraction of pairs where r(chosen) > r(rejected)."""
        return sum(1 for d in self.differences(pairs) if d > 0) / len(pairs)


def _reward_rows(pairs: list[PreferencePair], picks: list[int]) -> list[dict[str, Any]]:
    # Explicit-prompt conversational format: RewardTrainer renders prompt + answer in full
    # (it scores an answer as a whole, cut off or not: no end-of-turn flags).
    return [
        {key: row[key] for key in ("prompt", "chosen", "rejected")}
        for row in _dpo_rows(pairs, picks, frozenset())
    ]


def _pair_fits(tokenizer: Any, pair: PreferencePair, max_length: int) -> bool:
    # RewardTrainer drops (does not truncate) a pair with a side longer than max_length.
    return all(
        sum(len(part) for part in completion_ids(tokenizer, pair.prompt, answer)) <= max_length
        for answer in (pair.chosen, pair.rejected)
    )


def train_reward_model(
    base_model: Path,
    pairs: list[PreferencePair],
    out_dir: Path,
    config: TrainConfig,
    held_out: list[PreferencePair] | None = None,
    progress: Progress | None = None,
) -> RewardResult:
    """Train a reward model (base + scalar head + LoRA, TRL RewardTrainer) on `pairs`.

    Saves the adapter, which carries the score head (modules_to_save), into `out_dir`, and
    reports pairwise accuracy on `held_out` when given; the scores' scale is calibrated on
    those pairs too, and saved next to the adapter (REWARD_SCALE_FILE).
    """
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    started = time.monotonic()
    tokenizer = load_tokenizer(base_model)
    pairs = [p for p in pairs if p.weight > 0 and _pair_fits(tokenizer, p, config.max_length)]
    if not pairs:
        raise ValueError("nothing to train the reward model on: no pair with weight > 0 fits")
    sched = plan(len(pairs), config.model_copy(update={"epochs": config.reward_epochs}))
    batch, n, steps = sched.batch, sched.samples, sched.steps
    picks = weighted_resample([p.weight for p in pairs], n, random.Random(config.seed))
    cb = _ProgressCallback("reward", 0, steps, progress)
    with (
        threads(config.num_threads),
        _quiet_datasets(),
        tempfile.TemporaryDirectory(prefix="livealign-rm-") as tmp,
    ):
        args = RewardConfig(**_common_args(config, tmp, config.reward_lr, batch))
        model = _load_reward_base(base_model, tokenizer)
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(_reward_rows(pairs, picks)),
            processing_class=tokenizer,
            # The score head is new and random: it must train and be saved with the adapter.
            peft_config=_lora(config, "SEQ_CLS", model, modules_to_save=["score"]),
            callbacks=[cb],
        )
        log.info("reward: %d samples, %d steps", n, steps)
        _train(trainer)
        model = trainer.accelerator.unwrap_model(trainer.model)
        if out_dir.exists():
            _clear_adapter_files(out_dir)
        _save_adapter(model, out_dir, base_model)
        diffs = RewardModel(model, tokenizer).differences(held_out) if held_out else []
    accuracy = sum(1 for d in diffs if d > 0) / len(diffs) if diffs else None
    scale = fit_scale(diffs)
    (out_dir / REWARD_SCALE_FILE).write_text(json.dumps({"scale": scale}) + "\n")
    seconds = time.monotonic() - started
    log.info(
        "reward model trained: %d steps in %.0f s, held-out accuracy %s, scale x%.2f",
        steps, seconds, accuracy, scale,
    )  # fmt: skip
    return RewardResult(
        model_dir=out_dir,
        held_out_accuracy=accuracy,
        steps=steps,
        seconds=seconds,
        n_train=len(pairs),
        n_eval=len(held_out or []),
        scale=scale,
    )
