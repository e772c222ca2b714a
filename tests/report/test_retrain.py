"""The retrained-SAE sections of the reports and their JUnit properties, from a RetrainResult
written by hand (no model runs)."""

from __future__ import annotations

from types import SimpleNamespace

from pytest_qdm.report.retrain import (
    feature_verdicts,
    lost_caption,
    lost_moved_table,
    retrain_caption,
    retrain_properties,
    three_way_table,
)
from pytest_qdm.schema.retrain import BandSplit, FeatureMatch, RetrainResult, ThreeWayRow


def row(name, ev, dead):
    return ThreeWayRow(
        sae=name, n_features=2048 if name != "pruned" else 1500, explained_variance=ev,
        mean_l0=32.0, clean_loss=4.6, spliced_loss=4.65, spliced_loss_change=0.05,
        loss_recovered=0.99, dead_latents=dead,
    )  # fmt: skip


def match(feature, band, moved):
    return FeatureMatch(
        feature=feature, band=band, frozen_correlation=0.3, match=feature,
        decoder_cosine=0.95, activation_correlation=0.95 if moved else 0.2, moved=moved,
    )  # fmt: skip


RESULT = RetrainResult(
    condition="rtn-int4", hook_name="blocks.4.hook_resid_post", init="reference", seed=0,
    budget_tokens=4096, trained_tokens=4096, train_rows=24, epochs=1.33, eval_tokens=1024,
    batch_size=1024, lr=3e-4, matching="hungarian", min_cosine=0.9, min_correlation=0.9,
    table=[row("transfer", 0.97, 10), row("retrained", 0.98, 5), row("pruned", 0.96, 2)],
    bands=[
        BandSplit(band="survived", count=5, moved=5, lost=0),
        BandSplit(band="degraded", count=2, moved=1, lost=1),
        BandSplit(band="damaged", count=1, moved=0, lost=1),
    ],
    features=[match(3, "degraded", True), match(7, "degraded", False), match(9, "damaged", False)],
    lost=[9, 7], elapsed_seconds=12.0,
)  # fmt: skip
REPORT = SimpleNamespace(retrain=RESULT)


def test_sections_show_the_three_columns_and_the_split():
    title, headers, rows = three_way_table(REPORT)
    assert title == "Retrained SAE baseline on rtn-int4" and len(headers) == len(rows[0])
    assert [r[0].split()[0] for r in rows] == ["frozen", "retrained", "reference"]
    assert rows[1][2] == "0.980" and rows[2][1] == "1,500"
    title, _, rows = lost_moved_table(REPORT)
    assert "hungarian" in title and rows[1] == ["degraded", "2", "1", "1"]
    assert "Lost features that did not survive: 9, 7." in lost_caption(REPORT)
    assert "4,096 of a 4,096-token budget" in retrain_caption(REPORT)
    assert feature_verdicts(REPORT, "rtn-int4") == {3: "moved", 7: "lost", 9: "lost"}
    assert feature_verdicts(REPORT, "rtn-int6") == {}


def test_no_retraining_no_section():
    empty = SimpleNamespace(retrain=None)
    assert three_way_table(empty) is None and lost_moved_table(empty) is None
    assert retrain_properties(empty) == []


def test_properties_are_flat_and_unique():
    properties = dict(retrain_properties(REPORT))
    assert len(properties) == len(retrain_properties(REPORT))
    assert properties["qdm.retrain.retrained.sae_ev"] == 0.98
    assert properties["qdm.retrain.pruned.n_features"] == 1500
    assert properties["qdm.retrain.degraded.moved"] == 1
    assert properties["qdm.retrain.damaged.lost"] == 1


def test_result_round_trips_through_json():
    again = RetrainResult.model_validate_json(RESULT.model_dump_json())
    assert again == RESULT and again.moved_count == 1 and again.lost_count == 2
