"""The perplexity phases: the reference and every condition on the fixed perplexity tokens
(chunked and sliding-window perplexity, with SAE transfer and behaviour riding on the same
forwards), then magnitude pruning matched to the perplexity of RTN at ``match_bits``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pytest_qdm.analyse.behaviour import (
    BehaviourSums,
    ReferenceLogits,
    joined,
)
from pytest_qdm.analyse.matched_pruning import match_sparsity
from pytest_qdm.analyse.perplexity import (
    chunked_perplexity,
    relative_change,
    sliding_window_perplexity,
)
from pytest_qdm.analyse.transfer import TransferSums
from pytest_qdm.compress.conditions import RTN, MagnitudePrune, Reference
from pytest_qdm.compress.swap import applied
from pytest_qdm.run.inputs import Inputs
from pytest_qdm.schema.analyses import (
    PerplexityResult,
    PruningMatch,
    TransferQuality,
)
from pytest_qdm.schema.behaviour import BehaviourResult
from pytest_qdm.settings import ProtocolConfig
from pytest_qdm.stream.domains import RowDomains


@dataclass
class Perplexities:
    """Perplexity (chunked, sliding) and SAE transfer per condition, on ``ppl_tokens``."""

    perplexity: dict[str, dict[str, PerplexityResult]] = field(default_factory=dict)
    transfer: dict[str, TransferQuality] = field(default_factory=dict)
    behaviour: dict[str, BehaviourResult] = field(default_factory=dict)
    # the reference's logits while conditions are measured (never saved: see release)
    logits: ReferenceLogits | None = None

    def release(self) -> None:
        """Drop the reference's logits (before saving, and when measuring is done)."""
        if self.logits is not None:
            self.logits.close()
            self.logits = None

    @property
    def reference(self) -> dict[str, PerplexityResult]:
        return self.perplexity[Reference().name]


def measure(inputs: Inputs, into: Perplexities, name: str, model=None) -> None:
    """Perplexities (and SAE transfer quality) of ``model`` (default: the reference) as it
    currently is."""
    cfg, model = inputs.protocol_config, inputs.model if model is None else model
    served = getattr(model, "served", False)  # llama.cpp: its activations cannot be replaced
    sums = TransferSums(model, inputs.sae, inputs.hook) if cfg.sae_transfer and not served else None
    behaviour = None
    if into.logits is not None:  # the reference records its logits, conditions compare
        behaviour = BehaviourSums(into.logits, record=name == Reference().name)
    into.perplexity[name] = _perplexities(
        model,
        inputs.ppl_tokens,
        inputs.bos,
        cfg,
        inputs.audit_config.batch_size,
        joined(sums, behaviour),
        inputs.ppl_domains,
    )
    if sums is not None:
        into.transfer[name] = sums.result()
    if behaviour is not None and not behaviour.record:
        into.behaviour[name] = behaviour.result(cfg.confidence, seed=cfg.seed)


def perplexity_phase(inputs: Inputs, tick) -> Perplexities:
    """The reference and every RTN / extra condition on the perplexity tokens."""
    measured = Perplexities(logits=ReferenceLogits())
    measure(inputs, measured, Reference().name)
    tick()
    for condition in [*inputs.rtn, *inputs.extra]:
        weights = condition.compressed_weights(inputs.model)
        with condition.running(inputs.model, weights) as model:
            measure(inputs, measured, condition.name, model)
        tick()
    return measured


def pruning_phase(inputs: Inputs, measured: Perplexities, tick) -> PruningMatch | None:
    """Magnitude pruning at the perplexity of RTN at ``match_bits`` (bisection), measured."""
    if inputs.match_bits is None:
        return None
    model, cfg, ppl_tokens = inputs.model, inputs.protocol_config, inputs.ppl_tokens

    def ppl_at(sparsity: float) -> float:
        with applied(model, MagnitudePrune(sparsity).compressed_weights(model)):
            result = chunked_perplexity(
                model,
                ppl_tokens,
                bos_in_tokens=inputs.bos,
                batch_size=inputs.audit_config.batch_size,
            )
        tick()
        return result.perplexity

    target = measured.perplexity[RTN(inputs.match_bits).name]["chunked"].perplexity
    # A match must be closer than the change it matches, or sparsity 0 would "match" any
    # RTN width whose perplexity moved by less than the tolerance.
    change = abs(relative_change(target, measured.reference["chunked"].perplexity))
    pruning = match_sparsity(
        ppl_at,
        target,
        high=cfg.prune_high,
        max_steps=cfg.prune_search_steps,
        rel_tolerance=min(cfg.prune_rel_tolerance, change / 10),
        tokens_used=int(ppl_tokens.numel()),
    )
    prune = MagnitudePrune(pruning.sparsity)
    with applied(model, prune.compressed_weights(model)):
        measure(inputs, measured, prune.name)
    tick()
    return pruning


def _perplexities(
    model,
    ppl_tokens: torch.Tensor,
    bos: bool,
    cfg: ProtocolConfig,
    batch: int,
    observer=None,
    domains: RowDomains | None = None,
):
    """Chunked and sliding-window perplexity of the model as it currently is
    (``observer`` rides on the chunked forwards; ``domains``: chunked per domain too)."""
    ctx = ppl_tokens.shape[1]
    stream = (ppl_tokens[:, 1:] if bos else ppl_tokens).reshape(-1)
    bos_id = int(ppl_tokens[0, 0]) if bos else None
    stride = max(1, int(ctx * cfg.sliding_stride_fraction))
    return {
        "chunked": chunked_perplexity(
            *(model, ppl_tokens),
            bos_in_tokens=bos,
            batch_size=batch,
            observer=observer,
            domains=domains,
        ),
        "sliding": sliding_window_perplexity(
            model, stream, window=ctx, stride=stride, bos_token_id=bos_id, batch_size=batch
        ),
    }
