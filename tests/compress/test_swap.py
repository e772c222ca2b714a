"""Weights swapped in by name come back bit for bit, also when the body raises or a part is
refused; parked originals return to the model's device."""

from __future__ import annotations

import pytest
import torch

from pytest_qdm.compress.swap import applied


def test_swap_and_restore_bit_for_bit_even_on_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    new = {"0.weight": torch.zeros(3, 4)}
    with applied(model, new):
        assert torch.equal(model[0].weight, torch.zeros(3, 4))
    with pytest.raises(RuntimeError), applied(model, [new, {"1.weight": torch.ones(2, 3)}]):
        assert torch.equal(model[1].weight, torch.ones(2, 3))
        raise RuntimeError("body failed")
    with (
        pytest.raises(ValueError, match="no parameters named"),
        applied(model, {"x": new["0.weight"]}),
    ):
        pass
    with pytest.raises(ValueError, match="has shape"), applied(model, {"0.weight": torch.zeros(1)}):
        pass
    with applied(model, new, park=torch.device("cpu")):
        pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
