"""A team's shared fixtures for compression tests (the qdm_* fixtures come from the plugin)."""

import copy

import pytest
import torch


@pytest.fixture(scope="session")
def absmax_int8_checkpoint(qdm_model):
    """Stand-in for a checkpoint the team compressed with its own tool (e.g. dequantized
    after GPTQ/AWQ): per-tensor absmax INT8 of every block weight matrix, on a copy."""
    compressed = copy.deepcopy(qdm_model)
    with torch.no_grad():
        for name, weight in compressed.named_parameters():
            if name.startswith("blocks.") and weight.ndim >= 2 and weight.abs().max() > 0:
                scale = weight.abs().max() / 127
                weight.copy_(torch.round(weight / scale).clamp(-127, 127) * scale)
    return compressed
