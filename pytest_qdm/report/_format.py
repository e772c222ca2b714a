"""Plain-text formatting shared by the terminal and markdown reports.

Every helper returns a string; ``None`` (a value that could not be computed) prints as
:data:`MISSING`. Percentages in the results are already 0-100 (``*_pct``); relative
perplexity changes are fractions (``PPL_C / PPL_FP - 1``) and print as signed percents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_qdm.analyse.precision import precision_line

if TYPE_CHECKING:
    from pytest_qdm.schema.protocol import ProtocolReport, SweepRow

MISSING = "—"
NULL_LABEL = "null check"

# Header line breaks keep the columns narrow in a terminal; markdown joins them with spaces.
WIDE_HEADERS = (
    "condition",
    "setting",
    "PPL chunked\n(Δ)",
    "PPL sliding\nΔ",
    "mean r",
    "survived %\n[95% CI]",
    "degraded\n%",
    "damaged\n%",
    "silenced",
    "emergent",
)
COMPACT_HEADERS = (
    "condition",
    "ΔPPL\nchunk",
    "ΔPPL\nslide",
    "mean r",
    "surv %",
    "95% CI",
    "degr %",
    "dmg %",
    "sil",
    "emg",
)
COMPACT_LEGEND = (
    "ΔPPL: perplexity change vs reference; surv/degr/dmg: survived/degraded/damaged "
    "% of active features; sil: silenced; emg: emergent"
)


LENS_HEADERS = (
    "condition",
    "sample\nr",
    "top-k\nagree",
    "Procr.\nerror",
    "unal.\nerror",
    "SAE\nEV",
    "SAE\nL0",
    "splice\nΔ nats",
    "loss\nrec.",
)
LENS_LEGEND = (
    "sample r: per-token Pearson of the feature vectors; top-k agree: shared top-k "
    "features; Procr./unal. error: ||A R - B|| / ||B|| of the read-out with the best "
    "rotation R, and without; SAE EV, L0, splice Δ (spliced minus clean loss) and loss rec. "
    "(of the zero-ablation gap): the frozen SAE on each model's activations (perplexity "
    "tokens). Token averages are dominated by strong features: read survival % for the "
    "weak ones."
)


def num(value: float | int | None, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``, or :data:`MISSING`."""
    return MISSING if value is None else format(value, spec)


def change(value: float | None) -> str:
    """A relative change (fraction) as a signed percent: 0.0123 -> '+1.23%'."""
    return num(value, "+.2%")


def setting(row: SweepRow) -> str:
    """What the condition did: 'INT6', 'sp 0.175', 'FP' (reference)."""
    if row.bits is not None:
        return f"INT{row.bits}"
    if row.sparsity is not None:
        return f"sp {row.sparsity:.4g}"
    return "FP" if row.kind == "Reference" else MISSING


def _ci(row: SweepRow, sep: str) -> str | None:
    low, high = row.survived_ci or (None, None)
    if low is None or high is None:
        return None
    return f"{low:.1f}{sep}{high:.1f}"


def sweep_cells(row: SweepRow, compact: bool = False) -> list[str]:
    """One sweep row as strings, in :data:`WIDE_HEADERS` (or :data:`COMPACT_HEADERS`) order.

    The compact form (for narrow terminals) leaves out the setting, which the condition
    name already states, and the absolute chunked perplexity, and puts the CI in its own
    column.
    """
    survived, ci = num(row.survived_pct, ".1f"), _ci(row, "–")
    bands = [
        num(row.degraded_pct, ".1f"),
        num(row.damaged_pct, ".1f"),
        str(row.silenced_count),
        str(row.emergent_count),
    ]
    sliding, mean_r = change(row.ppl_sliding_change), num(row.mean_correlation, ".4f")
    if compact:
        chunked_change = change(row.ppl_chunked_change)
        return [row.condition, chunked_change, sliding, mean_r, survived, ci or MISSING, *bands]
    chunked = num(row.ppl_chunked, ",.2f")
    if row.ppl_chunked_change is not None:
        chunked += f" ({change(row.ppl_chunked_change)})"
    if ci is not None:
        survived += f" [{ci}]"
    return [row.condition, setting(row), chunked, sliding, mean_r, survived, *bands]


def has_lenses(report: ProtocolReport) -> bool:
    """Whether the report holds token-level agreement or SAE transfer quality."""
    return bool(report.transfer) or any(r.sample_correlation is not None for r in report.sweep)


TitledTable = tuple[str, tuple[str, ...], list[list[str]]]  # title, headers, rows


def lens_table(report: ProtocolReport) -> TitledTable | None:
    """Token-level agreement and SAE transfer, one row per condition; None when the report
    has neither."""
    if not has_lenses(report):
        return None
    rows = [_lens_cells(report, row) for row in report.sweep]
    return "Token-level agreement and SAE transfer", LENS_HEADERS, rows


def _lens_cells(report: ProtocolReport, row: SweepRow) -> list[str]:
    """Token-level agreement and SAE transfer of one sweep row, in :data:`LENS_HEADERS` order."""
    quality = report.transfer.get(row.condition)
    spliced = None if quality is None else quality.spliced_loss - quality.clean_loss
    return [
        row.condition,
        num(row.sample_correlation, ".4f"),
        num(row.topk_agreement, ".3f"),
        num(row.procrustes_error, ".4f"),
        num(row.unaligned_error, ".4f"),
        num(quality.explained_variance if quality else None, ".3f"),
        num(quality.mean_l0 if quality else None, ".1f"),
        num(spliced, "+.3f"),
        num(quality.loss_recovered if quality else None, ".3f"),
    ]


def sae_pruning_table(report: ProtocolReport) -> TitledTable | None:
    """The SAE pruning sweep: per fraction, EV and loss recovered of the pruned SAE on each
    model; None when the report has no sweep."""
    sweep = report.sae_pruning
    if sweep is None:
        return None
    conditions = list(dict.fromkeys(r.condition for r in sweep.rows))
    fractions = list(dict.fromkeys(r.fraction for r in sweep.rows))
    headers = ("removed", "kept", *(f"{m}\n{n}" for n in conditions for m in ("EV", "loss rec.")))
    rows = []
    for fraction in fractions:
        cells = [f"{fraction:.0%}", f"{sweep.row(fraction, conditions[0]).n_features_kept:,}"]
        for name in conditions:
            row = sweep.row(fraction, name)
            cells += [num(row.explained_variance, ".3f"), num(row.loss_recovered, ".3f")]
        rows.append(cells)
    return f"SAE pruning without retraining ({sweep.method})", headers, rows


# a run without a gate bound or baseline: said in the terminal summary and the HTML page
NOTHING_GATED = (
    "nothing was gated: this run measured but set no bound. Add e.g. "
    "--qdm-min-survived int6:0.6, --qdm-max-damaged int4:0.4, "
    "--qdm-max-ppl-change int6:0.05 or --qdm-baseline FILE to fail on feature damage."
)


def headline(report: ProtocolReport) -> list[str]:
    """Read-out site, active features and tokens; thresholds and reference perplexity; the
    format and path of each shipped candidate."""
    audit, cfg = report.audit, report.audit.config
    return [
        f"{audit.hook_name}: {audit.reference.n_active:,} of {audit.d_sae:,} SAE features "
        f"active on {audit.tokens.n_tokens:,} tokens",
        f"survived r > {cfg.survival_threshold:g}, damaged r < {cfg.damage_threshold:g}; "
        f"reference perplexity {_reference_ppl(report)}",
        *(
            candidate_line(name, cond.spec.checkpoint)
            for name, cond in audit.conditions.items()
            if cond.spec.checkpoint is not None
        ),
        *poor_fit_line(report),
    ]


POOR_FIT = 0.5  # the default --qdm-min-explained-variance


def poor_fit_line(report: ProtocolReport) -> list[str]:
    """A headline warning when the SAE explains less than the default bound (possible only
    with --qdm-min-explained-variance lowered or none)."""
    ev = report.sae_fit.explained_variance
    if ev >= POOR_FIT:  # False for NaN
        return []
    return [
        f"POOR SAE FIT: the SAE explains {ev:.3f} of the variance at the read-out (below "
        f"{POOR_FIT}); survival of its features says little about the model's own features"
    ]


def candidate_line(name: str, checkpoint) -> str:
    """'candidate:x: bitsandbytes llm-int8 threshold 6, forward path (...)'."""
    how = {
        "forward": "its deployed quantized forward",
        "served": "llama.cpp's own CPU forward",
        "dequantize": "dequantized weights in the reference",
    }.get(checkpoint.path, checkpoint.path)
    line = f"{name}: {checkpoint.quant_method} {checkpoint.scheme}, {checkpoint.path} path ({how})"
    if checkpoint.activations_quantized and checkpoint.path not in ("forward", "served"):
        line += "; its deployed kernel also quantizes activations, not measured here"
    return line


def _reference_ppl(report: ProtocolReport) -> str:
    ppl = report.reference_perplexity
    parts = [
        f"{k} {num(v.perplexity, ',.2f')} ({v.n_scored_tokens:,} tokens scored)"
        for k, v in ppl.items()
    ]
    return ", ".join(parts) or MISSING


def pruning_line(report: ProtocolReport) -> str | None:
    """Target vs achieved perplexity of the matched pruning, or None when not run."""
    p = report.pruning
    if p is None:
        return None
    against = f"RTN INT{report.match_bits}" if report.match_bits is not None else "the target"
    return (
        f"sparsity {p.sparsity:.4g} matched to {against}: target PPL {p.target:,.2f}, "
        f"achieved {p.achieved:,.2f} ({p.rel_error:+.2%}); {len(p.steps)} steps"
        f"{f' on {p.tokens_used:,} tokens' if p.tokens_used else ''}, "
        f"{'converged' if p.converged else f'NOT converged ({p.status})'}, "
        f"{'monotone' if p.monotone else 'NOT monotone'}"
    )


def overlap_line(report: ProtocolReport) -> str | None:
    """How alike RTN and the matched pruning damage the features, or None."""
    o = report.overlap
    if o is None:
        return None
    return (
        f"{o.label_a} vs {o.label_b} over {o.n_active:,} active features: Jaccard "
        f"not-survived {num(o.jaccard_not_survived)} ({o.n_not_survived_both}/"
        f"{o.n_not_survived_either}), damaged {num(o.jaccard_damaged)} "
        f"({o.n_damaged_both}/{o.n_damaged_either}); damage Pearson {num(o.pearson_damage)}, "
        f"Spearman {num(o.spearman_damage)}"
    )


def max_vif(report: ProtocolReport) -> str:
    """The largest variance inflation factor ('inf' when an input is perfectly collinear)."""
    values = list(report.predictor.vif.values())
    if not values:
        return MISSING
    if any(v is None for v in values):
        return "inf"
    return f"{max(values):.3g}"


def predictor_line(report: ProtocolReport) -> str:
    """Status and cross-validated AUC of the fragility predictor."""
    p = report.predictor
    auc = MISSING
    if p.auc_mean is not None:
        auc = f"{p.auc_mean:.3f} ± {num(p.auc_std)} ({p.n_splits} folds)"
    return f"{p.status}: AUC {auc}; {p.n_survived:,} of {p.n_features:,} features survived"


def predictor_caveat(report: ProtocolReport) -> str:
    return (
        f"inputs are collinear by construction (max VIF {max_vif(report)}): "
        "read the AUC, not the coefficients one by one"
    )


def _widest(spread: dict[str, float | None]) -> str:
    known = {k: v for k, v in spread.items() if v is not None}
    if not known:
        return MISSING
    name = max(known, key=known.__getitem__)
    return f"{known[name]:.1f} pp ({name})"


def verdict_word(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def null_line(report: ProtocolReport) -> str:
    null = report.stability.null
    if null is None:
        return "not run (no reference condition)"
    return (
        f"{verdict_word(null.passed)}: max |r - 1| {num(null.max_abs_deviation, '.2g')} "
        f"(tolerance {null.tolerance:g}), {null.n_damaged} damaged"
    )


def sae_fit_line(report: ProtocolReport) -> str | None:
    fit = getattr(report, "sae_fit", None)
    if fit is None:
        return None
    return (
        f"{'ok' if fit.ok else 'POOR'}: explained variance {fit.explained_variance:.3f}, "
        f"mean L0 {fit.mean_l0:.1f}, norm ratio {fit.norm_ratio:.2f} ({fit.n_tokens:,} tokens)"
    )


def stability_lines(report: ProtocolReport) -> list[tuple[str, str]]:
    """(label, text) pairs: SAE fit, null check, spreads of survival, second layer."""
    s = report.stability
    tokens = "/".join(f"{n:,}" for n in s.budget.tokens)
    lines = [
        ("SAE fit", sae_fit_line(report)),
        (NULL_LABEL, null_line(report)),
        ("token budget", f"max spread {_widest(s.budget.spread)} over {tokens} tokens"),
        (s.subsets.label, f"max spread {_widest(s.subsets.spread)}"),
        ("precision", precision_line(report)),
    ]
    if s.second_layer is not None:
        survival = ", ".join(
            f"{name} {num(c.summary.survived_pct, '.1f')}%"
            for name, c in s.second_layer.conditions.items()
        )
        lines.append((f"second layer {s.second_layer.hook_name}", f"survived {survival}"))
    return [(label, text) for label, text in lines if text is not None]
