"""The full QDM protocol as a pipeline of named phases (:mod:`pytest_qdm.run.phases`).

1. check inputs and the SAE's fit at its hook (refused below the bound);
2. perplexity of the reference and every condition on a fixed token set (SAE transfer
   rides on the same forwards), then the matched-perplexity pruning search on it;
3. ONE sharded feature pass over the audit tokens for the reference null, every condition
   and the matched pruning;
4. stability from the shard states, and the second-layer audit;
5. the fragility predictor, overlap with pruning, the SAE-pruning sweep at the focus
   condition, block sensitivity and the retrained-SAE baseline when configured;
6. findings (perplexity masking feature damage) from the sweep rows.

Phase 2 and each shard of phase 3 are kept on disk when ``checkpoints`` names a folder, so
a killed run resumes (:mod:`pytest_qdm.run.resume`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from pytest_qdm.compress.conditions import Condition, MagnitudePrune, Reference
from pytest_qdm.progress import progress_bar, run_progress
from pytest_qdm.run import phases
from pytest_qdm.run import rows as rows_module
from pytest_qdm.run.inputs import check_inputs, progress_plan, search_steps
from pytest_qdm.run.perplexity_phase import perplexity_phase, pruning_phase
from pytest_qdm.run.resume import Checkpoints
from pytest_qdm.run.retrain_phase import retrain_phase, retrain_target
from pytest_qdm.schema.protocol import ProtocolReport
from pytest_qdm.settings import DEFAULT_BITS, DEFAULT_MATCH_BITS, AuditConfig, ProtocolConfig


def run_protocol(
    model,
    sae,
    tokens,
    bits: Sequence[int] = DEFAULT_BITS,
    match_bits: int | None = DEFAULT_MATCH_BITS,
    *,
    config: AuditConfig | None = None,
    protocol: ProtocolConfig | None = None,
    second_sae=None,
    extra_conditions: Sequence[Condition] = (),
    checkpoints: str | os.PathLike | None = None,
) -> ProtocolReport:
    """Run the full protocol. ``match_bits=None`` skips the pruning comparison.

    ``checkpoints``: a folder for finished work (the perplexity phase, each feature-pass
    shard); a run killed part-way and started again with the same inputs and folder
    continues from it and gives the same numbers (run/resume.py). Removed when done.

    ``tokens`` is a LongTensor [n, ctx] or a TokenSet (whose BOS policy is then known;
    for a bare tensor column 0 is taken as a corpus token, not BOS).
    """
    started = time.perf_counter()
    config, cfg = config or AuditConfig(), protocol or ProtocolConfig()
    inputs, fit = check_inputs(
        model, sae, tokens, bits, match_bits, config, cfg, second_sae, extra_conditions
    )
    retrain_target(inputs)  # refused now, not after the long phases
    store = Checkpoints(checkpoints)
    done = store.load("perplexity")
    plan = progress_plan(inputs, second_sae, perplexity=done is None)
    with run_progress("QDM gate", plan, config.progress):
        return _run_phases(inputs, fit, second_sae, store, done, started)


def _run_phases(inputs, fit, second_sae, store, done, started) -> ProtocolReport:
    """The phases after the input checks (inside the run's one progress display)."""
    config, cfg, match_bits = inputs.audit_config, inputs.protocol_config, inputs.match_bits
    if done is None:
        n_measured = 1 + len(inputs.rtn) + len(inputs.extra) + search_steps(inputs)
        with progress_bar("QDM perplexity", n_measured, config.progress) as tick:
            measured = perplexity_phase(inputs, tick)
            pruning = pruning_phase(inputs, measured, tick)
        measured.release()
        store.save("perplexity", (measured, pruning))
    else:
        measured, pruning = done
    conditions: list[Condition] = [Reference(), *inputs.rtn, *inputs.extra]
    if pruning is not None:
        conditions.append(MagnitudePrune(pruning.sparsity))
    features = phases.feature_phase(inputs, conditions, store)
    result = features.result
    second = phases.second_layer_phase(inputs, second_sae)
    stability = phases.stability_phase(inputs, features, conditions, second)
    predictor = phases.predictor_phase(inputs, result)
    sae_pruning = phases.sae_pruning_phase(inputs, result)
    pruned = conditions[-1].name if pruning is not None else None
    overlap = phases.overlap_phase(inputs, result, pruned)
    sensitivity = phases.sensitivity_phase(inputs, result, measured)
    retrained = retrain_phase(inputs, result)
    rows = rows_module.sweep_rows(conditions, result, measured, stability.bootstrap)
    store.clear()
    return ProtocolReport(
        config=cfg,
        match_bits=match_bits,
        audit=result,
        reference_perplexity=measured.reference,
        perplexity=measured.perplexity,
        transfer=measured.transfer,
        sweep=rows,
        predictor=predictor,
        predictor_condition=inputs.focus,
        pruning=pruning,
        overlap=overlap,
        stability=stability,
        findings=rows_module.findings_phase(rows, cfg),
        sae_fit=fit,
        elapsed_seconds=time.perf_counter() - started,
        sae_pruning=sae_pruning,
        sensitivity=sensitivity,
        retrain=retrained,
    )
