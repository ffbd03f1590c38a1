"""Base-model compatibility: does a LoRA adapter fit the base model it is to be served on?

check_adapter_dir() judges peft_type, rank, target modules and tensor shapes against the
base model's HF config.json, so that serving refuses an adapter before loading it. This
module also names the files of a PEFT adapter directory, which publishing checks for.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from safetensors import safe_open

from trainer.registry.errors import CorruptAdapter, IncompatibleAdapter

ADAPTER_CONFIG = "adapter_config.json"
SAFETENSORS_WEIGHTS = "adapter_model.safetensors"
WEIGHT_FILES = (SAFETENSORS_WEIGHTS, "adapter_model.bin")
DEFAULT_MAX_RANK = 64

# Module names of the Llama family (Mistral and Qwen2 use the same ones).
_LLAMA_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    | {"lm_head", "embed_tokens"}
)
MODULES_BY_MODEL_TYPE: dict[str, frozenset[str]] = {
    "llama": _LLAMA_MODULES,
    "mistral": _LLAMA_MODULES,
    "qwen2": _LLAMA_MODULES,
}
# A full module path per known module, to test a regex `target_modules` the way PEFT does.
_SAMPLE_PATHS = {
    **{m: f"model.layers.0.self_attn.{m}" for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
    **{m: f"model.layers.0.mlp.{m}" for m in ("gate_proj", "up_proj", "down_proj")},
    "lm_head": "lm_head",
    "embed_tokens": "model.embed_tokens",
}
# Base-config sizes that fix a projection's input (lora_A) and output (lora_B) width. Only the
# ones that hold for every Llama-family config: q/k/v outputs depend on head_dim and GQA.
_IN_FEATURES = {
    "q_proj": "hidden_size",
    "k_proj": "hidden_size",
    "v_proj": "hidden_size",
    "gate_proj": "hidden_size",
    "up_proj": "hidden_size",
    "down_proj": "intermediate_size",
}
_OUT_FEATURES = {
    "o_proj": "hidden_size",
    "down_proj": "hidden_size",
    "gate_proj": "intermediate_size",
    "up_proj": "intermediate_size",
}
# "...layers.3.self_attn.q_proj.lora_A.weight" (PEFT may keep an adapter name before .weight).
_LORA_KEY = re.compile(r"([A-Za-z0-9_]+)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def read_adapter_config(d: Path) -> dict[str, Any]:
    """adapter_config.json of the adapter in `d`; IncompatibleAdapter if it is not a JSON object."""
    try:
        cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise IncompatibleAdapter(f"{d.name}: {ADAPTER_CONFIG} missing or unreadable: {e}") from e
    if not isinstance(cfg, dict):
        raise IncompatibleAdapter(f"{d.name}: {ADAPTER_CONFIG} is not a JSON object")
    return cfg


def _text_config(base_config: dict[str, Any]) -> dict[str, Any]:
    # Multimodal configs nest the language model's sizes under text_config.
    inner = base_config.get("text_config")
    if "hidden_size" not in base_config and isinstance(inner, dict):
        return {**base_config, **inner}
    return base_config


def _rank_problems(cfg: dict[str, Any], max_rank: int) -> list[str]:
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        return [f"r must be a positive integer, got {r!r}"]
    pattern = cfg.get("rank_pattern") or {}
    ranks = [r, *(x for x in pattern.values() if isinstance(x, int))]
    if max(ranks) > max_rank:
        return [f"rank {max(ranks)} is above max_rank {max_rank}"]
    return []


def _target_problems(cfg: dict[str, Any], base: dict[str, Any]) -> list[str]:
    model_type = base.get("model_type")
    known = MODULES_BY_MODEL_TYPE.get(str(model_type))
    targets = cfg.get("target_modules")
    if known is None:
        return []  # a model family we have no module table for: cannot judge, do not guess
    if isinstance(targets, str):
        if targets == "all-linear":
            return []
        # PEFT treats a string as a regex that must fullmatch a module path.
        try:
            hits = [m for m in known if re.fullmatch(targets, _SAMPLE_PATHS[m])]
        except re.error as e:
            return [f"target_modules regex {targets!r} is invalid: {e}"]
        return [] if hits else [f"target_modules regex {targets!r} matches no {model_type} module"]
    if not isinstance(targets, list) or not targets:
        return [f"target_modules must be a non-empty list or a regex, got {targets!r}"]
    # PEFT matches list entries as suffixes ("self_attn.q_proj" works): judge the last part.
    unknown = sorted({str(t) for t in targets if str(t).rsplit(".", 1)[-1] not in known})
    if unknown:
        return [f"target_modules {unknown} do not exist in a {model_type} model"]
    return []


def _tensor_shapes(weights: Path) -> dict[str, list[int]]:
    # framework="numpy" reads the header only and does not pull in torch.
    try:
        with safe_open(weights, framework="numpy") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # SafetensorError, OSError: the header cannot be parsed
        raise CorruptAdapter(f"{weights.parent.name}: {weights.name} unreadable: {e}") from e


def _shape_problems(weights: Path, base: dict[str, Any]) -> list[str]:
    shapes = _tensor_shapes(weights)
    problems: list[str] = []
    n_lora = 0
    layers = base.get("num_hidden_layers")
    for key, shape in sorted(shapes.items()):
        m = _LORA_KEY.search(key)
        if m is None:
            continue
        n_lora += 1
        module, ab = m.groups()
        if len(shape) != 2:
            problems.append(f"{key}: expected a 2-d tensor, got shape {shape}")
            continue
        # lora_A is (r, in_features); lora_B is (out_features, r).
        table, dim, side = (
            (_IN_FEATURES, shape[1], "in") if ab == "A" else (_OUT_FEATURES, shape[0], "out")
        )
        size_key = table.get(module)
        want = base.get(size_key) if size_key else None
        if isinstance(want, int) and dim != want:
            problems.append(f"{key}: {side}-features {dim} != base {size_key} {want}")
        li = _LAYER.search(key)
        if li and isinstance(layers, int) and int(li[1]) >= layers:
            problems.append(f"{key}: layer {li[1]} but the base model has {layers} layers")
    if n_lora == 0:
        problems.append(f"{weights.name} holds no lora_A/lora_B tensors")
    return problems


def check_adapter_dir(
    d: Path, base_config: dict[str, Any], *, max_rank: int = DEFAULT_MAX_RANK
) -> None:
    """Raise IncompatibleAdapter unless the PEFT adapter in `d` fits the base model.

    `base_config` is the base model's HF config.json as a dict. Works on any adapter
    directory, so serving can also check one that is not (yet) in a registry.
    """
    cfg = read_adapter_config(d)
    base = _text_config(base_config)
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise IncompatibleAdapter(f"{d.name}: peft_type is {cfg.get('peft_type')!r}, not LORA")
    problems = _rank_problems(cfg, max_rank) + _target_problems(cfg, base)
    if (d / SAFETENSORS_WEIGHTS).is_file():
        problems += _shape_problems(d / SAFETENSORS_WEIGHTS, base)
    if problems:
        shown = problems[:5] + ([f"and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise IncompatibleAdapter(
            f"{d.name} does not fit base model ({base.get('model_type')}): " + "; ".join(shown)
        )
