"""The protocol's inputs, checked once before any long work (:func:`check_inputs`: conditions,
hooks, the SAE's fit), and what every phase reads from them (:class:`Inputs`), with the
progress plan they imply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pytest_qdm.analyse.matched_pruning import check_match_bits
from pytest_qdm.analyse.sae_fit import ADVICE, check_sae_fit
from pytest_qdm.analyse.sae_pruning import check_prune_fractions
from pytest_qdm.analyse.sensitivity import check_focus
from pytest_qdm.compress.conditions import RTN, Candidate, Condition, Reference
from pytest_qdm.run.audit import as_token_tensor
from pytest_qdm.schema.analyses import (
    SaeFit,
)
from pytest_qdm.settings import AuditConfig, ProtocolConfig
from pytest_qdm.stream.domains import RowDomains
from pytest_qdm.stream.hooks import resolve_hook
from pytest_qdm.stream.inputs import validate_conditions, validate_inputs


@dataclass(frozen=True)
class Inputs:
    """What every phase reads: checked once by :func:`check_inputs`."""

    model: object
    sae: object
    tokens: torch.Tensor  # [n, ctx]
    bos: bool  # column 0 is BOS
    hook: str
    rtn: list[RTN]
    extra: list[Condition]
    match_bits: int | None
    focus: str  # the RTN condition the predictor, overlap and SAE pruning are about
    audit_config: AuditConfig
    protocol_config: ProtocolConfig
    domains: RowDomains | None = None  # the rows' labelled domains

    @property
    def _ppl_rows(self) -> torch.Tensor:
        """The perplexity rows: the first ones, or the first of each domain in equal parts."""
        n = max(1, -(-self.protocol_config.ppl_tokens // self.tokens.shape[1]))
        if self.domains is None:
            return torch.arange(min(n, self.tokens.shape[0]))
        per = max(1, -(-n // len(self.domains.names)))
        return torch.cat([self.domains.rows(d)[:per] for d in self.domains.names])

    @property
    def ppl_tokens(self) -> torch.Tensor:
        return self.tokens[self._ppl_rows]

    @property
    def ppl_domains(self) -> RowDomains | None:
        return None if self.domains is None else self.domains.take(self._ppl_rows)


def focus_condition(rtn: Sequence[RTN], match_bits: int | None) -> str:
    """The RTN condition the predictor and overlap study: the matched width, else the middle."""
    names = [c.name for c in rtn]
    return RTN(match_bits).name if match_bits is not None else names[len(names) // 2]


def check_inputs(
    model, sae, tokens, bits, match_bits, config, cfg, second_sae, extra
) -> tuple[Inputs, SaeFit]:
    """Every check that needs no long work, then the SAE fit (refused below its bound)."""
    bos = bool(getattr(getattr(tokens, "info", None), "prepend_bos", False))
    domains = RowDomains.of_tokens(tokens)
    tokens = as_token_tensor(tokens)
    rtn = [RTN(b) for b in bits]
    check_match_bits(match_bits, bits)
    check_focus(match_bits, cfg.sensitivity)
    validate_conditions([Reference(), *rtn, *extra])
    hook = resolve_hook(model, sae, config)
    validate_inputs(model, sae, tokens, hook, config.lens_k)
    for condition in extra:
        if isinstance(condition, Candidate):  # before the perplexity phase runs it
            condition.check_compatible(model, hook)
    if second_sae is not None:
        validate_inputs(
            model, second_sae, tokens[:1], resolve_hook(model, second_sae, AuditConfig())
        )
    check_prune_fractions(sae, cfg.sae_prune_fractions)
    fit = check_sae_fit(
        model, sae, tokens, hook_name=hook, min_explained_variance=cfg.min_explained_variance
    )
    if not fit.ok:
        raise ValueError(
            f"{fit.reason}. {ADVICE} (--qdm-min-explained-variance none, or "
            "ProtocolConfig(min_explained_variance=None), audits anyway)"
        )
    focus = focus_condition(rtn, match_bits)
    inputs = Inputs(
        *(model, sae, tokens, bos, hook, rtn, list(extra), match_bits, focus, config, cfg), domains
    )
    return inputs, fit


def progress_plan(inputs: Inputs, second_sae, perplexity: bool = True) -> dict[str, float]:
    """Each progress phase's expected cost: tokens forwarded times its cost per token
    (``progress.PHASE_COST``); the pruning search is counted at half its longest bisection."""
    from pytest_qdm.progress import PHASE_COST

    audit_tokens, n_rtn = inputs.tokens.numel(), len(inputs.rtn)
    pruned = inputs.match_bits is not None
    n_ppl = 1 + n_rtn + len(inputs.extra) + (search_steps(inputs) // 2 if pruned else 0)
    forwarded = {
        "QDM perplexity": n_ppl * inputs.ppl_tokens.numel() if perplexity else 0,
        "QDM protocol": (1 + n_rtn + len(inputs.extra) + pruned) * audit_tokens,
        "QDM audit": (1 + n_rtn) * audit_tokens if second_sae is not None else 0,
    }
    return {phase: n * PHASE_COST[phase] for phase, n in forwarded.items()}


def search_steps(inputs: Inputs) -> int:
    """Progress steps of the pruning match: both bracket ends, the midpoints, the final run."""
    return 0 if inputs.match_bits is None else inputs.protocol_config.prune_search_steps + 3
