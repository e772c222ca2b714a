"""The drill-down: each damaged feature's top contexts, streamed in the one pass.

Pinned: the kept peaks are each feature's k largest activations, every window equals a
dense recomputation of both models' activations, shards merged equal one pass, and the
result names the lowest-r features (terminal section within 80 columns).
"""

from __future__ import annotations

import io
from functools import cache
from types import SimpleNamespace

import pytest

CONTEXTS = 3


@cache
def tiny_subject():
    """The bundled model and SAE, and 2,048 builtin tokens (16 rows of 128)."""
    from pytest_qdm.load.tokens import load_tokens
    from pytest_qdm.zoo import load_tiny_model, load_tiny_sae

    model = load_tiny_model(device="cpu")
    tokens = load_tokens(
        "builtin", model.tokenizer, context_length=128, max_tokens=2048, prepend_bos=True
    )
    return model, load_tiny_sae(), tokens


@cache
def tiny_report():
    """A small protocol report of the bundled model at INT4 (shared with test_html_report)."""
    from pytest_qdm import run_protocol
    from pytest_qdm.settings import AuditConfig, ProtocolConfig

    model, sae, tokens = tiny_subject()
    protocol = ProtocolConfig(
        ppl_tokens=256, n_bootstrap=0, n_shards=2, n_subsets=2, sae_transfer=False
    )
    config = AuditConfig(progress=False, drilldown_features=8, drilldown_contexts=CONTEXTS)
    return run_protocol(
        model, sae, tokens, bits=(4,), match_bits=None, config=config, protocol=protocol
    )


@cache
def passes():
    """The engine over all rows, over each half, and the dense activations of both sides."""
    import torch

    from pytest_qdm.compress.conditions import RTN, Reference
    from pytest_qdm.compress.swap import applied
    from pytest_qdm.run.audit import prepare_conditions
    from pytest_qdm.settings import AuditConfig
    from pytest_qdm.stream.engine import encode
    from pytest_qdm.stream.hooks import run_to_hook
    from pytest_qdm.stream.inputs import PassSpec
    from pytest_qdm.stream.passes import run_pass, run_shards

    model, sae, token_set = tiny_subject()
    tokens = token_set.tokens
    hook = sae.cfg.metadata.hook_name
    conditions = [Reference(), RTN(4)]
    config = AuditConfig(progress=False, token_lenses=False, drilldown_contexts=CONTEXTS)
    prepared = prepare_conditions(model, conditions, hook, compute_loss=False)

    def run(rows):
        return run_pass(PassSpec(model, sae, conditions, prepared, hook, config), rows)

    dense = {"reference": [], "rtn-int4": []}
    with torch.inference_mode():
        for batch in torch.split(tokens, config.batch_size):  # as the engine batches
            dense["reference"].append(encode(sae, run_to_hook(model, batch, hook)[0]))
            with applied(model, prepared["rtn-int4"]):
                dense["rtn-int4"].append(encode(sae, run_to_hook(model, batch, hook)[0]))
    dense = {name: torch.cat(blocks) for name, blocks in dense.items()}
    half = tokens.shape[0] // 2
    halves = [tokens[:half], tokens[half:]]
    return SimpleNamespace(
        tokens=tokens,
        whole=run(tokens),
        first=run(halves[0]),
        second=run(halves[1]),
        shards=run_shards(PassSpec(model, sae, conditions, prepared, hook, config), halves),
        x=dense["reference"],
        y=dense["rtn-int4"],
    )


def expected_window(tokens, x, y, row: int, feature: int):
    """(token ids, x, y) of the window around flat ``row``, PAD outside its sequence."""
    import torch

    from pytest_qdm.stream.drilldown import PAD, WINDOW_AFTER, WINDOW_BEFORE

    context = tokens.shape[1]
    rows = torch.arange(row - WINDOW_BEFORE, row + WINDOW_AFTER + 1)
    inside = (rows // context == row // context) & (rows >= 0) & (rows < tokens.numel())
    safe = rows.clamp(0, tokens.numel() - 1)
    ids = torch.where(inside, tokens.reshape(-1)[safe], PAD)
    zero = torch.zeros(())
    return (
        ids,
        torch.where(inside, x[safe, feature], zero),
        torch.where(inside, y[safe, feature], zero),
    )


def check_buffer(top, peak_side, tokens, x, y, other: str, features):
    """Peaks are the k largest of ``peak_side`` per feature; windows equal the dense ones."""
    import torch

    from pytest_qdm.stream.drilldown import REFERENCE, TOKENS

    k = top.values.shape[1]
    largest = peak_side.T.topk(k, dim=1).values
    expected = torch.where(largest > 0, largest, -torch.inf)
    assert torch.equal(top.values, expected)
    for feature in features:
        used = set()
        for slot in range(k):
            value = top.values[feature, slot]
            if not torch.isfinite(value):
                continue
            # the earliest row with this value that an earlier slot did not take
            rows = torch.nonzero(peak_side[:, feature] == value).flatten().tolist()
            row = next(r for r in rows if r not in used)
            used.add(row)
            ids, ref, cmp = expected_window(tokens, x, y, row, feature)
            assert torch.equal(top.windows[TOKENS][feature, slot], ids)
            assert torch.equal(top.windows[REFERENCE][feature, slot], ref)
            assert torch.equal(top.windows[other][feature, slot], cmp)


def sample_features(p, n=40):
    """The features with the lowest r and a spread of others, all with some context."""
    import numpy as np

    r, _ = p.whole.paired["rtn-int4"].correlation()
    fired = (p.x > 0).any(0).numpy()
    ids = np.flatnonzero(fired)
    lowest = ids[np.argsort(r[ids])][: n // 2]
    return sorted({*lowest.tolist(), *ids[:: max(1, len(ids) // (n // 2))].tolist()})


def test_windows_equal_a_dense_recomputation_on_both_sides():
    from pytest_qdm.stream.drilldown import COMPRESSED

    p = passes()
    state = p.whole.drilldown
    assert set(state.compressed) == {"rtn-int4"}  # the null condition is not drilled into
    features = sample_features(p)
    check_buffer(state.reference, p.x, p.tokens, p.x, p.y, "rtn-int4", features)
    check_buffer(state.compressed["rtn-int4"], p.y, p.tokens, p.x, p.y, COMPRESSED, features)


def assert_same(a, b):
    import torch

    for top_a, top_b in [
        (a.reference, b.reference),
        *zip(a.compressed.values(), b.compressed.values(), strict=True),
    ]:
        assert torch.equal(top_a.values, top_b.values)
        assert top_a.windows.keys() == top_b.windows.keys()
        for name in top_a.windows:
            assert torch.equal(top_a.windows[name], top_b.windows[name]), name


def test_two_shards_merged_equal_one_pass():
    from pytest_qdm.analyse.stability import merge_all

    p = passes()
    assert_same(p.first.drilldown.merge(p.second.drilldown), p.whole.drilldown)
    assert_same(p.first.merge(p.second).drilldown, p.whole.drilldown)  # via EngineState
    # the protocol fills one buffer across its shards: merge_all still gives the one pass
    assert p.shards[1].drilldown is None
    assert_same(merge_all(p.shards).drilldown, p.whole.drilldown)


def test_audit_drills_into_the_lowest_r_features():
    from pytest_qdm.compress.conditions import RTN, Reference
    from pytest_qdm.run.audit import audit
    from pytest_qdm.schema.audit import AuditResult
    from pytest_qdm.settings import AuditConfig

    model, sae, tokens = tiny_subject()
    rows = tokens.tokens[:8]
    config = AuditConfig(progress=False, drilldown_features=6, drilldown_contexts=2)
    result = audit(model, sae, rows, [Reference(), RTN(4)], config)
    assert result.conditions["reference"].drilldown is None
    condition = result.conditions["rtn-int4"]
    drilled = condition.drilldown
    assert [(f.feature, f.correlation) for f in drilled] == condition.worst_features(6)
    for feature in drilled:
        assert feature.url is None  # the bundled SAE has no Neuronpedia id
        assert 1 <= len(feature.reference_top) <= 2 and len(feature.compressed_top) <= 2
        peaks = [c.reference[c.peak] for c in feature.reference_top]
        assert peaks == sorted(peaks, reverse=True) and peaks[0] > 0
        for context in [*feature.reference_top, *feature.compressed_top]:
            n = len(context.token_ids)
            assert len(context.reference) == len(context.compressed) == len(context.tokens) == n
            assert context.tokens == [model.tokenizer.decode([i]) for i in context.token_ids]
    assert AuditResult.from_json(result.to_json()).to_json() == result.to_json()
    off = audit(model, sae, rows, [RTN(4)], config.model_copy(update={"drilldown_contexts": 0}))
    assert off.conditions["rtn-int4"].drilldown is None


def test_labels_link_neuronpedia_and_keep_ids_without_a_tokenizer():
    from pytest_qdm.report._drilldown import token_texts
    from pytest_qdm.stream.drilldown import Labels

    state = passes().whole.drilldown
    page = "gemma-2-2b/20-gemmascope-res-16k"
    sae = SimpleNamespace(cfg=SimpleNamespace(metadata=SimpleNamespace(neuronpedia_id=page)))
    labels = Labels.of(SimpleNamespace(tokenizer=None), sae)
    feature = int(state.reference.values[:, 0].argmax())
    (drilled,) = state.result("rtn-int4", [(feature, 0.1)], labels)
    assert drilled.url == f"https://neuronpedia.org/{page}/{feature}"
    context = drilled.reference_top[0]
    assert context.tokens is None
    assert token_texts(context) == [f" {i}" for i in context.token_ids]


def test_terminal_lists_the_most_damaged_features_within_80_columns():
    from rich.console import Console

    from pytest_qdm.report import render_report
    from pytest_qdm.report._drilldown import DRILLDOWN_SHOWN

    report = tiny_report()
    console = Console(file=io.StringIO(), width=80, color_system=None)
    render_report(report, console)
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    section = text.split("Most damaged features under rtn-int4")[1].splitlines()
    worst = report.audit.conditions["rtn-int4"].drilldown[:DRILLDOWN_SHOWN]
    for feature, line in zip(worst, section[2 : 2 + len(worst)], strict=True):
        assert line.startswith(f"#{feature.feature} ") and "[" in line and "]" in line


@pytest.mark.parametrize("width", [20, 40, 70])
def test_context_line_keeps_the_peak_marked_within_width(width):
    from pytest_qdm.report._drilldown import context_line
    from pytest_qdm.schema.drilldown import Context

    tokens = ["a" * 30, " before", "\n", " peak", " after", "z" * 30]
    context = Context(
        token_ids=list(range(6)),
        tokens=tokens,
        peak=3,
        reference=[0.0] * 6,
        compressed=[0.0] * 6,
    )
    line = context_line(context, width)
    assert len(line) <= width and "[ peak]" in line and "\n" not in line
    assert "↵" in line
