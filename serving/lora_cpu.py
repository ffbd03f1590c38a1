"""LoRA kernels for vLLM's CPU backend: one GEMM over every adapter slot, no LoRA for base.

vLLM's CPU platform applies LoRA with the pure-PyTorch ops of ``vllm.lora.ops.torch_ops``,
which have two faults on the path every served answer takes:

- **Wrong answers for the base model.** A token of a request without an adapter has the
  slot index -1, meant as "no LoRA" (the GPU kernels skip it), but ``weights[-1]`` is the
  *last* adapter slot: once all ``max_loras`` slots hold adapters, a base-model request
  batched next to adapter requests gets the last slot's delta (vLLM PR #48421, open).
  LiveAlign loads up to three (the stable version, the canary, a stable swapping in),
  so once a swap has used the last slot, a base-model request (the stable arm before any
  promotion, or after a rollback to the base) can get a version's delta.
- **Slow.** They gather one whole adapter matrix per token (``weights[indices]``:
  tokens x out x rank) and multiply token by token; on two cores serving an adapter took
  about 2.4x the time of the base model.

Here each op multiplies the tokens by every slot's matrix at once (one GEMM: there are
only ``max_loras`` slots, 3 by default, and rank <= 64), then keeps each token's own
slot with a one-hot mask that is all zeros for index -1. Nothing depends on the indices'
values (vLLM runs a LoRA model on CPU without ``torch.compile`` today; these would
trace). Valid indices give vLLM's results up to float rounding
(``tests/unit/test_lora_cpu.py`` checks both).

Installed as a vLLM general plugin (the ``vllm.general_plugins`` entry point in
``pyproject.toml``), which vLLM loads in every process of its engine, before the model;
on any platform other than CPU it does nothing.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# Above this width (the rank, for LoRA) the product with every slot multiplies a large
# product by the slot count; only vLLM's "full linear" adapter modules are that wide, and
# they keep vLLM's per-token gather (with the -1 fix).
MAX_DENSE_WIDTH = 512


def _stacked(weights: torch.Tensor) -> torch.Tensor:
    """vLLM stacks a layer's adapters as (slots, 1, out, in) or (slots, out, in)."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _one_hot(indices: torch.Tensor, slots: int, dtype: torch.dtype) -> torch.Tensor:
    """(tokens, slots): 1 at each token's slot; a row of zeros for -1 (no adapter)."""
    return (indices.unsqueeze(1) == torch.arange(slots, device=indices.device)).to(dtype)


def _shrink(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
            dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """(tokens, in) x slots (rank, in) -> (tokens, rank), each token by its own slot."""
    w = _stacked(weights).to(dtype)  # (slots, rank, in)
    slots, rank, width = w.shape
    x = inputs.to(dtype)
    if rank > MAX_DENSE_WIDTH:  # vLLM's per-token gather, with the -1 fix
        out = torch.einsum("bi,boi->bo", x, w[indices.clamp(min=0)])
        return out * (indices >= 0).unsqueeze(1).to(dtype)
    every = (x @ w.reshape(slots * rank, width).t()).view(-1, slots, rank)
    return torch.einsum("bs,bsr->br", _one_hot(indices, slots, dtype), every)


def _expand(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
            dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """(tokens, rank) x slots (out, rank) -> (tokens, out), each token by its own slot."""
    w = _stacked(weights).to(dtype)  # (slots, out, rank)
    slots, width, rank = w.shape
    x = inputs.to(dtype)
    # Each token's input placed in its slot's block of a (tokens, slots * rank) row, zeros
    # elsewhere: one GEMM with every slot's matrix then adds only the token's own.
    spread = (_one_hot(indices, slots, dtype).unsqueeze(2) * x.unsqueeze(1)).reshape(
        -1, slots * rank
    )
    return spread @ w.transpose(1, 2).reshape(slots * rank, width)


# ---- vLLM's op signatures (vllm/lora/ops/torch_ops/lora_ops.py), same semantics ---------


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    outputs = _shrink(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    outputs = _expand(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1  # as vLLM's: one row broadcast over the output
    # An adapter and the model may pad their outputs differently.
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    outputs = _expand(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def _per_token(lora_indices_tensor: torch.Tensor, seq_len_tensor: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, indices, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, indices, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(
        inputs, lora_b_weights, output_tensor, indices, slice_offset, slice_size, add_inputs
    )


OPS = (
    bgmv_shrink, bgmv_expand, bgmv_expand_slice, sgmv_shrink, sgmv_expand, sgmv_expand_slice
)  # fmt: skip


def register() -> None:
    """vLLM's plugin hook: on the CPU platform, its CPU LoRA wrapper uses these ops."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.punica_wrapper import punica_cpu

    for op in OPS:
        # The wrapper imported vLLM's ops by name: its module's names are what it calls.
        if not hasattr(punica_cpu, op.__name__):
            log.warning("vLLM's CPU LoRA wrapper has no %s: its own ops stay", op.__name__)
            return
    for op in OPS:
        setattr(punica_cpu, op.__name__, op)
