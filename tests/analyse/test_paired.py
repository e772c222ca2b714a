"""Paired regression against a baseline on identical tokens: counts and p-values against an
independent computation and the parser (tests/integration/test_baselines.py runs the gate's
baseline verdict)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_qdm.analyse.paired import paired_changes
from pytest_qdm.gate.thresholds import parse_baseline

pytest_plugins = ["pytester"]


def test_counts_and_p_values_equal_an_independent_count(neox_model, neox_sae, neox_tokens):
    import copy

    from scipy.stats import binomtest, wilcoxon

    import pytest_qdm as qdm
    from pytest_qdm.settings import AuditConfig

    config = AuditConfig(progress=False, batch_size=8)

    def release(bits):  # a checkpoint released under one name, rounded to ``bits``
        model = copy.deepcopy(neox_model)
        with torch.no_grad():
            for name, weight in qdm.RTN(bits).compressed_weights(model).items():
                model.get_parameter(name).copy_(weight)
        return qdm.Candidate(model=model, name="rtn-int6")

    baseline = qdm.audit(neox_model, neox_sae, neox_tokens, [release(6)], config)
    now = qdm.audit(neox_model, neox_sae, neox_tokens, [release(5)], config)
    change = paired_changes(now, baseline)["rtn-int6"]

    active = now.reference.active & baseline.reference.active
    r_now = np.nan_to_num(now.conditions["rtn-int6"].correlation[active])
    r_then = np.nan_to_num(baseline.conditions["rtn-int6"].correlation[active])
    lost = int(((r_then > 0.9) & (r_now <= 0.9)).sum())
    gained = int(((r_now > 0.9) & (r_then <= 0.9)).sum())
    assert (change.lost, change.gained, change.n_features) == (lost, gained, int(active.sum()))
    assert lost + gained > 0  # the changed model moved features: the test can fail
    assert change.mcnemar_p == pytest.approx(binomtest(lost, lost + gained).pvalue)
    assert change.wilcoxon_p == pytest.approx(wilcoxon(r_now - r_then).pvalue)
    assert "lost survival" in change.describe()

    same = paired_changes(baseline, baseline)["rtn-int6"]
    assert (same.lost, same.gained, same.mcnemar_p, same.wilcoxon_p) == (0, 0, 1.0, None)
    with pytest.raises(ValueError, match="tokens differ"):
        other = qdm.audit(neox_model, neox_sae, neox_tokens[:8], [release(6)], config)
        paired_changes(other, baseline)


def test_significant_checks_parse():
    check = parse_baseline("int6.survived:-2:significant")
    assert (check.condition, check.metric, check.amount, check.significant) == (
        "rtn-int6", "survived", 2.0, True,
    )  # fmt: skip
    assert parse_baseline("int6.survived:significant").amount == 0
    assert not parse_baseline("survived:-2%").significant
    with pytest.raises(ValueError, match="other metrics have no paired test"):
        parse_baseline("int6.damaged:+2:significant")
