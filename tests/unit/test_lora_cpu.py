"""serving.lora_cpu: vLLM's CPU LoRA ops' results for real adapters, none for the base."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops as vllm_ops

from serving import lora_cpu

SLOTS, RANK, IN, OUT = 3, 8, 24, 40


@pytest.fixture
def weights() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, 1, RANK, IN, generator=gen)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=gen)
    return a, b


def _linear(ops, x, a, b, indices):  # type: ignore[no-untyped-def]
    """What vLLM's CPU wrapper does for one LoRA linear at decode: shrink, then expand."""
    buffer = torch.zeros(x.shape[0], RANK)
    y = torch.ones(x.shape[0], OUT)
    ops.bgmv_shrink(x, a, buffer, indices, 0.5)
    ops.bgmv_expand_slice(buffer, b, y, indices, 0, OUT, True)
    return buffer, y


def test_real_adapters_get_vllms_results(weights: tuple[torch.Tensor, torch.Tensor]) -> None:
    a, b = weights
    x = torch.randn(7, IN)
    indices = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    for got, want in zip(
        _linear(lora_cpu, x, a, b, indices), _linear(vllm_ops, x, a, b, indices), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # expand on its own too (add and overwrite), and the 3-dim stacking
    for add in (True, False):
        mine, theirs = torch.ones(7, OUT + 5), torch.ones(7, OUT + 5)
        r = torch.randn(7, RANK)
        lora_cpu.bgmv_expand(r, b.squeeze(1), mine, indices, add)
        vllm_ops.bgmv_expand(r, b.squeeze(1), theirs, indices, add)
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_prefill_ops_expand_per_sequence_indices(
    weights: tuple[torch.Tensor, torch.Tensor],
) -> None:
    a, b = weights
    x = torch.randn(9, IN)
    starts, lengths, per_seq = (
        torch.tensor([0, 4, 6]),
        torch.tensor([4, 2, 3]),
        torch.tensor([2, 0, 1]),
    )
    meta = (starts, lengths, per_seq, 3, 4, 9)
    results = []
    for ops in (lora_cpu, vllm_ops):
        buffer, y, z = torch.zeros(9, RANK), torch.zeros(9, OUT), torch.zeros(9, OUT + 3)
        ops.sgmv_shrink(x, a, buffer, *meta, 2.0)
        ops.sgmv_expand(buffer, b, y, *meta, False)
        ops.sgmv_expand_slice(buffer, b, z, *meta, 3, OUT, True)
        results.append((buffer, y, z))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_token_without_adapter_gets_no_delta(weights: tuple[torch.Tensor, torch.Tensor]) -> None:
    a, b = weights
    x = torch.randn(4, IN)
    indices = torch.tensor([0, -1, 2, -1])  # -1: a base-model request in the same batch
    buffer, y = _linear(lora_cpu, x, a, b, indices)
    assert buffer[[1, 3]].abs().sum() == 0
    torch.testing.assert_close(y[[1, 3]], torch.ones(2, OUT))  # untouched: the base output
    # the others are as if the batch held only them
    _, alone = _linear(lora_cpu, x[[0, 2]], a, b, indices[[0, 2]])
    torch.testing.assert_close(y[[0, 2]], alone)
    # vLLM's own ops give that token the last slot's delta (the bug this module fixes)
    vllm_buffer, _ = _linear(vllm_ops, x, a, b, indices)
    assert vllm_buffer[1].abs().sum() > 0


def test_wide_modules_take_the_gather_path_with_the_same_fix() -> None:
    wide = lora_cpu.MAX_DENSE_WIDTH + 1
    w = torch.randn(2, wide, 6)
    x = torch.randn(3, 6)
    indices = torch.tensor([1, -1, 0])
    mine, theirs = torch.zeros(3, wide), torch.zeros(3, wide)
    lora_cpu.bgmv_shrink(x, w, mine, indices)
    vllm_ops.bgmv_shrink(x, w, theirs, indices)
    torch.testing.assert_close(mine[[0, 2]], theirs[[0, 2]], rtol=1e-4, atol=1e-4)
    assert mine[1].abs().sum() == 0


def test_registered_as_a_vllm_plugin_that_replaces_the_cpu_wrappers_ops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("livealign_lora_cpu") == "serving.lora_cpu:register"
    for op in lora_cpu.OPS:  # undone after the test
        monkeypatch.setattr(punica_cpu, op.__name__, getattr(punica_cpu, op.__name__))
    lora_cpu.register()  # this machine's vLLM is the CPU build
    assert all(getattr(punica_cpu, op.__name__) is op for op in lora_cpu.OPS)
