"""The QDM audit: per-feature Pearson survival of a frozen SAE under compression."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from pytest_qdm.compress.conditions import RTN, Candidate, Condition
from pytest_qdm.progress import progress_bar
from pytest_qdm.schema.audit import (
    AuditResult,
    ConditionResult,
    ReferenceResult,
    Summary,
    TokenSummary,
    lowest_correlations,
    summarize,
)
from pytest_qdm.settings import DEFAULT_BITS, AuditConfig
from pytest_qdm.stream.distributed import local_rows, merged_state
from pytest_qdm.stream.domains import RowDomains
from pytest_qdm.stream.drilldown import NO_LABELS, Labels
from pytest_qdm.stream.engine import EngineState, pass_steps
from pytest_qdm.stream.hooks import resolve_hook, stop_layer
from pytest_qdm.stream.inputs import PassSpec, validate_conditions, validate_inputs
from pytest_qdm.stream.passes import run_pass


def as_token_tensor(tokens) -> torch.Tensor:
    """Accept a LongTensor [n, ctx] or anything with a ``.tokens`` tensor (a TokenSet)."""
    return getattr(tokens, "tokens", tokens)


def token_summary(tokens: torch.Tensor, domains: RowDomains | None = None) -> TokenSummary:
    digest = hashlib.sha256(tokens.detach().cpu().to(torch.int64).numpy().tobytes()).hexdigest()
    n, ctx = tokens.shape
    per_domain = {}
    if domains is not None:
        per_domain = {name: (stop - start) * ctx for name, start, stop in domains.runs()}
    return TokenSummary(
        n_sequences=n, context_length=ctx, n_tokens=n * ctx, sha256=digest, domains=per_domain
    )


class OnDemand(Mapping):
    """Each condition's compressed weights, computed when asked for and not kept (the
    two-phase pass asks once per condition, so one compressed copy is in memory)."""

    def __init__(self, model, conditions: Sequence[Condition], layers):
        self.model, self.layers = model, layers
        self.conditions = {c.name: c for c in conditions}

    def __getitem__(self, name: str) -> dict[str, torch.Tensor]:
        return self.conditions[name].compressed_weights(self.model, self.layers)

    def by_block(self, name: str) -> Iterator[dict[str, torch.Tensor]]:
        """``self[name]`` one block at a time (a tensor outside the blocks, such as a
        candidate's embedding, may come with every block: take it once)."""
        layers = self.layers if self.layers is not None else range(self.model.cfg.n_layers)
        for layer in layers:
            yield self.conditions[name].compressed_weights(self.model, [layer])

    def __iter__(self) -> Iterator[str]:
        return iter(self.conditions)

    def __len__(self) -> int:
        return len(self.conditions)


def prepare_conditions(
    model, conditions: Sequence[Condition], hook: str, compute_loss: bool, lazy: bool = False
) -> Mapping[str, dict[str, torch.Tensor]]:
    """Compressed weights of every condition, computed once, before any forward pass
    (``lazy``: each when the pass asks for it, see :class:`OnDemand`).

    Feature statistics only need the blocks up to the read-out layer; loss needs all.
    """
    for condition in conditions:
        if isinstance(condition, Candidate):  # a forward path's model must have the hook
            condition.check_compatible(model, hook)
    stop = None if compute_loss else stop_layer(hook)
    layers = None if stop is None else range(stop)
    if lazy:
        return OnDemand(model, conditions, layers)
    return {c.name: c.compressed_weights(model, layers) for c in conditions}


def finalize(
    state: EngineState,
    conditions: Sequence[Condition],
    hook: str,
    tokens: TokenSummary,
    config: AuditConfig,
    labels: Labels = NO_LABELS,
) -> AuditResult:
    """Turn accumulated statistics into bands and a typed result (``labels``: how the
    drill-down names tokens and features)."""
    ref = state.reference
    firing = ref.firing_rate()
    active = firing > config.active_threshold
    results = {}
    for condition in conditions:
        paired = _Paired.of(state.reference, state.paired[condition.name], config)
        loss = state.loss.get(condition.name)
        agreement = state.agreement.get(condition.name)
        drilldown = None
        if state.drilldown is not None and condition.name in state.drilldown.compressed:
            worst = lowest_correlations(paired.correlation, config.drilldown_features)
            drilldown = state.drilldown.result(condition.name, worst, labels)
        results[condition.name] = ConditionResult(
            name=condition.name,
            spec=condition.describe(),
            correlation=paired.correlation,
            silenced=paired.silenced & active,
            emergent=paired.emergent,
            firing_rate=paired.firing_rate,
            summary=paired.summary,
            mean_nll=loss.mean if loss else None,
            n_loss_tokens=loss.count if loss else None,
            agreement=agreement.result(config.top_k) if agreement is not None else None,
            drilldown=drilldown,
            domains={  # each domain's bands among the features active on its tokens
                domain: _Paired.of(sums.reference, sums.paired[condition.name], config).summary
                for domain, sums in state.domains.items()
            },
        )
    ref_loss = state.loss.get("reference")
    return AuditResult(
        hook_name=hook,
        d_sae=int(firing.size),
        config=config,
        tokens=tokens,
        reference=ReferenceResult(
            n_tokens=ref.n_tokens,
            firing_rate=firing,
            mean_activation=ref.mean_activation(),
            max_activation=ref.max_activation(),
            active=active,
            rms_activation=ref.rms_activation(),
        ),
        reference_mean_nll=ref_loss.mean if ref_loss else None,
        conditions=results,
    )


class _Paired(NamedTuple):
    """One condition's per-feature results against the reference, over the same tokens."""

    active: np.ndarray  # reference firing rate above the active threshold
    correlation: np.ndarray  # r, NaN where not active
    silenced: np.ndarray
    emergent: np.ndarray
    firing_rate: np.ndarray  # the condition's
    summary: Summary  # the bands

    @classmethod
    def of(cls, reference, paired, config: AuditConfig) -> _Paired:
        active = reference.firing_rate() > config.active_threshold
        r, silenced = paired.correlation()
        firing = (paired.fire_count_y / max(paired.n, 1)).cpu().numpy()
        emergent = ~active & (firing > config.active_threshold)
        correlation = np.where(active, r, np.nan)
        summary = summarize(correlation, active, silenced, emergent, config)
        return cls(active, correlation, silenced, emergent, firing, summary)


def audit(
    model,
    sae,
    tokens,
    conditions: Sequence[Condition] | None = None,
    config: AuditConfig | None = None,
) -> AuditResult:
    """Run the QDM audit of ``conditions`` (default RTN INT8..INT4) against the reference.

    ``model`` is a TransformerLens HookedTransformer, ``sae`` a sae_lens SAE (frozen: it
    encodes reference and compressed activations alike), ``tokens`` a LongTensor
    [n, ctx] or a TokenSet. Neither the model nor the SAE is modified. Under an
    initialised torch.distributed process group it is collective: call it on every rank;
    each runs a share of the rows and all return the merged result (docs/distributed.md).
    """
    config = config or AuditConfig()
    conditions = list(conditions) if conditions is not None else [RTN(b) for b in DEFAULT_BITS]
    domains = RowDomains.of_tokens(tokens)
    tokens = as_token_tensor(tokens)
    validate_conditions(conditions)
    hook = resolve_hook(model, sae, config)
    validate_inputs(model, sae, tokens, hook, config.lens_k)
    prepared = prepare_conditions(model, conditions, hook, config.compute_loss, config.two_phase)
    share = local_rows(tokens.shape[0], config.batch_size)  # all rows outside torch.distributed
    rows, labels = tokens[share], domains and domains.take(share)
    steps = pass_steps(rows, conditions, config, labels)
    device = torch.device(config.device or model.cfg.device)
    with progress_bar("QDM audit", steps, config.progress) as advance:
        state = merged_state(
            lambda: run_pass(
                PassSpec(model, sae, conditions, prepared, hook, config),
                rows,
                advance,
                domains=labels,
            ),
            device,
        )
    summary = token_summary(tokens, domains)
    return finalize(state, conditions, hook, summary, config, Labels.of(model, sae))
