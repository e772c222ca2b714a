"""Two-phase passes (stream/two_phase.py): the reference read-out cached on disk, then one
condition at a time; the numbers must be those of the one-phase pass, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytest_qdm as qdm
import pytest_qdm.stream.engine as engine
from pytest_qdm.analyse.stability import merge_all
from pytest_qdm.compress.conditions import RTN
from pytest_qdm.options_parse import build_options
from pytest_qdm.run.audit import finalize, prepare_conditions, token_summary
from pytest_qdm.stream import passes, two_phase
from pytest_qdm.stream.drilldown import Labels
from pytest_qdm.stream.inputs import PassSpec
from pytest_qdm.stream.stats import Entries
from pytest_qdm.stream.two_phase import CODES, RESIDUAL, representation

pytest_plugins = ["pytester"]

HOOK = "blocks.4.hook_resid_post"
CONDITIONS = [qdm.Reference(), qdm.RTN(8), qdm.RTN(4), qdm.MagnitudePrune(0.3)]


def config(**settings) -> qdm.AuditConfig:
    return qdm.AuditConfig(progress=False, batch_size=4, **settings)


def same(one, two) -> None:
    """Every number of two audit results (all but the config) is the same."""
    for name in one.conditions:
        np.testing.assert_array_equal(
            one.conditions[name].correlation, two.conditions[name].correlation
        )
    assert one.model_dump_json(exclude={"config"}) == two.model_dump_json(exclude={"config"})


def cached_files(folder):
    """{file name: {tensor name: (dtype, shape)}} of the one cache folder under ``folder``."""
    from safetensors import safe_open

    (cache,) = folder.glob("qdm-reference-*")
    files = {}
    for path in sorted(cache.iterdir()):
        with safe_open(path, "pt") as file:
            files[path.name] = {k: file.get_tensor(k) for k in file.keys()}  # noqa: SIM118
    return files


@pytest.mark.parametrize(
    ("settings", "kind"),
    [
        ({}, RESIDUAL),  # token lenses and drill-down on: the residual is cached
        ({"token_lenses": False, "compute_loss": True}, CODES),  # codes are smaller here
    ],
)
def test_two_phase_gives_the_one_phase_numbers_bit_for_bit(
    reference, sae, tokens, tmp_path, monkeypatch, settings, kind
):
    if kind == CODES:  # several encode blocks per batch: the codes are cut back into them
        monkeypatch.setitem(engine.ENCODE_BLOCK_ELEMENTS, "cpu", 64 * sae.cfg.d_sae)
    one = qdm.audit(reference, sae, tokens, CONDITIONS, config(**settings))
    two_config = config(
        **settings, two_phase=True, two_phase_dir=str(tmp_path), two_phase_keep=True
    )
    two = qdm.audit(reference, sae, tokens, CONDITIONS, two_config)
    same(one, two)
    assert np.isfinite(one.conditions["rtn-int4"].correlation).sum() > 500
    if settings.get("compute_loss"):
        assert two.conditions["rtn-int4"].mean_nll == one.conditions["rtn-int4"].mean_nll
    else:
        assert two.conditions["rtn-int4"].drilldown == one.conditions["rtn-int4"].drilldown
    files = cached_files(tmp_path)
    assert sorted(files) == [f"batch{i:06d}.safetensors" for i in range(4)]  # 16 rows / 4
    for tensors in files.values():
        if kind == RESIDUAL:
            assert tensors[RESIDUAL].dtype == torch.float32
            assert tensors[RESIDUAL].shape == (4 * 128, reference.cfg.d_model)
        else:  # TopK SAE, k = 32: 4 + 8 * 32 bytes per token against 4 * 128 for the residual
            assert set(tensors) == {"row_counts", "cols", "values"}
            assert int(tensors["row_counts"].sum()) == tensors["values"].numel() <= 32 * 512
            assert tensors["values"].dtype == torch.float32


def test_shards_resume_and_the_shared_drilldown_are_the_same_in_two_phases(reference, sae, tokens):
    """run_shards as the protocol's feature pass calls it (one drill-down across shards),
    with the first shard finished by an earlier one-phase run: the same states."""
    shards = list(tokens.tensor_split(3))
    one_phase, two_phase = config(), config(two_phase=True)
    eager = prepare_conditions(reference, CONDITIONS, HOOK, compute_loss=False)
    lazy = prepare_conditions(reference, CONDITIONS, HOOK, compute_loss=False, lazy=True)
    assert dict(lazy).keys() == eager.keys()
    run = passes.run_shards
    eager_one = PassSpec(reference, sae, CONDITIONS, eager, HOOK, one_phase)
    one, first = run(eager_one, shards), run(eager_one, shards[:1])
    two = run(PassSpec(reference, sae, CONDITIONS, lazy, HOOK, two_phase), shards, finished=first)
    summary = token_summary(tokens)
    results = [finalize(merge_all(s), CONDITIONS, HOOK, summary, one_phase) for s in (one, two)]
    same(*results)
    assert two[0].drilldown is not None and two[1].drilldown is None


def test_parked_reference_weights_come_back_bit_for_bit(
    reference, sae, tokens, tmp_path, monkeypatch
):
    """The accelerator path on CPU: each replaced reference tensor is copied to the park
    device while its condition runs; same numbers, and the model is restored exactly."""
    before = {name: p.detach().clone() for name, p in reference.named_parameters()}
    rows, conditions = tokens[:4], [RTN(4), qdm.MagnitudePrune(0.3)]
    settings = config(token_lenses=False, two_phase=True, two_phase_dir=str(tmp_path))
    in_place = qdm.audit(reference, sae, rows, conditions, settings)
    parked = []

    def park(device):
        parked.append(device)
        return torch.device("cpu")

    monkeypatch.setattr(two_phase, "park_device", park)
    moved = qdm.audit(reference, sae, rows, conditions, settings)
    assert len(parked) == len(conditions)
    same(in_place, moved)
    for name, param in reference.named_parameters():
        assert torch.equal(param, before[name]), name


def test_the_cache_is_removed_after_the_pass_and_after_a_failure(reference, sae, tokens, tmp_path):
    rows = tokens[:4]
    qdm.audit(reference, sae, rows, [RTN(8)], config(two_phase=True, two_phase_dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []

    class Failing(RTN):
        def compressed_weights(self, model, layers=None):  # asked for in phase 2
            assert list(tmp_path.glob("qdm-reference-*/batch*.safetensors"))
            raise RuntimeError("out of memory while compressing")

    with pytest.raises(RuntimeError, match="out of memory"):
        qdm.audit(
            reference, sae, rows, [Failing(4)], config(two_phase=True, two_phase_dir=str(tmp_path))
        )
    assert list(tmp_path.iterdir()) == []


def test_the_smaller_representation_is_cached():
    n, width = 10, 8
    act = torch.zeros(n, width)  # 320 bytes as float32, 160 as bfloat16
    few = Entries(
        torch.arange(n), torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.float64)
    )
    many = Entries(
        *(torch.zeros(40, dtype=dtype) for dtype in (torch.long, torch.long, torch.float64))
    )
    assert representation(act, few, token_lenses=False) == CODES  # 40 + 80 bytes
    assert representation(act, many, token_lenses=False) == RESIDUAL  # 40 + 320 > 320
    assert representation(act.bfloat16(), few, token_lenses=False) == CODES  # 120 < 160
    assert representation(act.bfloat16(), many, token_lenses=False) == RESIDUAL
    assert representation(act, few, token_lenses=True) == RESIDUAL  # Procrustes needs it


def test_bfloat16_model_keeps_its_weights_and_accumulates_in_float64(
    sae, tokens, reference, tmp_path
):
    """The GPU path's dtypes, checked on CPU: bf16 weights (compressed ones too), the SAE
    encodes in its own dtype, every statistic is float64; survival close to float32's."""
    from pytest_qdm.zoo import load_tiny_model

    model = load_tiny_model().to(torch.bfloat16)
    conditions = CONDITIONS[1:]
    prepared = prepare_conditions(model, conditions, HOOK, compute_loss=False)
    assert {w.dtype for weights in prepared.values() for w in weights.values()} == {torch.bfloat16}
    settings = config(token_lenses=False)
    state = passes.run_pass(PassSpec(model, sae, conditions, prepared, HOOK, settings), tokens)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert sae.dtype == torch.float32
    paired = state.paired["rtn-int4"]
    assert {t.dtype for t in (paired.mean_x, paired.m2_y, paired.c_xy)} == {torch.float64}
    assert state.reference.total.dtype == torch.float64
    labels = Labels.of(model, sae)
    bf16 = finalize(state, conditions, HOOK, token_summary(tokens), settings, labels)
    f32 = qdm.audit(reference, sae, tokens, conditions, settings)
    for name in bf16.conditions:
        r16, r32 = bf16.conditions[name].correlation, f32.conditions[name].correlation
        both = np.isfinite(r16) & np.isfinite(r32)
        assert both.sum() > 800
        # bf16 keeps 8 bits of mantissa: a rare feature's r can move a lot, the bulk does not
        assert np.median(np.abs(r16 - r32)[both]) < 0.01, name
        assert abs(np.mean(r16[both]) - np.mean(r32[both])) < 0.02, name
    two_config = settings.model_copy(
        update={"two_phase": True, "two_phase_dir": str(tmp_path), "two_phase_keep": True}
    )
    two = qdm.audit(model, sae, tokens, conditions, two_config)
    same(bf16, two)
    for tensors in cached_files(tmp_path).values():  # 256 bytes per token < 4 + 8 * 32
        assert tensors[RESIDUAL].dtype == torch.bfloat16


def test_bad_two_phase_settings_are_refused(reference, sae, tokens, tmp_path):
    with pytest.raises(ValueError, match="two_phase_dir and two_phase_keep need two_phase=True"):
        qdm.AuditConfig(two_phase_dir=str(tmp_path))
    with pytest.raises(ValueError, match="need two_phase=True"):
        qdm.AuditConfig(two_phase_keep=True)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="two_phase_dir .* is a file; name a folder"):
        qdm.audit(
            reference, sae, tokens[:4], [RTN(8)], config(two_phase=True, two_phase_dir=str(a_file))
        )
    with pytest.raises(ValueError, match="^--qdm-two-phase-dir needs --qdm-two-phase$"):
        build_options({"model": "tiny", "two-phase-dir": "x"})
    options = build_options({"model": "tiny", "two-phase": True, "cache-dir": "c"})
    assert options.audit_config().two_phase_dir == "c/two-phase"
    assert build_options({"model": "tiny"}).audit_config().two_phase_dir is None


def test_two_phase_is_in_neither_fingerprint():
    """Same numbers either way, so caches and baselines (also those saved before the option
    existed) serve both modes."""
    from pytest_qdm.gate.session import NOT_FINGERPRINTED
    from pytest_qdm.gate.sources import sources_key

    plain = build_options({"model": "tiny"})
    two = build_options({"model": "tiny", "two-phase": True, "two-phase-dir": "x"})
    settings = [o.audit_config().model_dump_json(exclude=NOT_FINGERPRINTED) for o in (plain, two)]
    assert settings[0] == settings[1] and "two_phase" not in settings[0]
    assert sources_key(plain) == sources_key(two) is not None
