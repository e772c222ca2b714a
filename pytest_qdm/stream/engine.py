"""The one-pass engine: reference once per batch, every condition on the same batch.

For each batch of token sequences the reference forward (stopped after the read-out
layer) and the SAE encode run once; then each condition's prepared weights are swapped in
(a candidate on the forward path runs its own deployed model instead, read at the same
hook: ``Condition.running``), the same batch goes through, and the paired statistics are
updated. Memory is bounded by the batch size: no [tokens x d_sae] matrix is ever kept.

Performance, and what is exact: docs/engine.md.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from pytest_qdm.compress.conditions import Condition, Reference
from pytest_qdm.settings import AuditConfig
from pytest_qdm.stream.domains import RowDomains, count_batches, domain_batches
from pytest_qdm.stream.drilldown import BatchDrilldown, DrilldownState
from pytest_qdm.stream.hooks import run_to_hook
from pytest_qdm.stream.inputs import PassSpec
from pytest_qdm.stream.lenses import AgreementSums, TokenReference
from pytest_qdm.stream.stats import Entries, PairedStats, PairedSums, ReferenceStats

ENCODE_BLOCK_ELEMENTS = {"cpu": 1 << 24}  # other devices: the whole batch in one block
MIN_BLOCK_ROWS = 64  # MKL uses another kernel for very few rows (not bit-identical)
TUNE_CPU_ALLOCATOR = True


@dataclass
class LossSums:
    """Summed next-token negative log-likelihood (float64) and the count of scored tokens.

    ``nll`` is a float64 tensor on the pass's device while the pass runs (no host
    synchronisation per forward) and a float wherever it is read (:attr:`mean`)."""

    nll: float | torch.Tensor = 0.0
    count: int = 0

    def merge(self, other: LossSums) -> LossSums:
        return LossSums(self.nll + other.nll, self.count + other.count)

    @property
    def mean(self) -> float | None:
        return float(self.nll) / self.count if self.count else None


@dataclass
class DomainSums:
    """The reference's and each condition's statistics over one domain's rows."""

    reference: ReferenceStats
    paired: dict[str, PairedStats]

    @classmethod
    def empty(cls, d_sae: int, names: Sequence[str], device) -> DomainSums:
        paired = {n: PairedStats.empty(d_sae, device) for n in names}
        return cls(ReferenceStats.empty(d_sae, device), paired)

    def merge(self, other: DomainSums) -> DomainSums:
        return DomainSums(
            self.reference.merge(other.reference),
            {n: self.paired[n].merge(other.paired[n]) for n in self.paired},
        )


def _merge_domains(
    ours: dict[str, DomainSums], theirs: dict[str, DomainSums]
) -> dict[str, DomainSums]:
    merged = dict(ours)
    for name, sums in theirs.items():
        merged[name] = merged[name].merge(sums) if name in merged else sums
    return merged


@dataclass
class EngineState:
    """Mergeable state of a (partial) pass: shards merged equal one pass."""

    reference: ReferenceStats
    paired: dict[str, PairedStats]
    loss: dict[str, LossSums] = field(default_factory=dict)  # "reference" + condition names
    agreement: dict[str, AgreementSums] = field(default_factory=dict)  # token lenses
    drilldown: DrilldownState | None = None  # top contexts per feature (config.drilldown)
    domains: dict[str, DomainSums] = field(default_factory=dict)  # labelled domains' sums

    def merge(self, other: EngineState) -> EngineState:
        if set(self.paired) != set(other.paired):
            raise ValueError(f"cannot merge shards of {set(self.paired)} and {set(other.paired)}")
        drilldown = self.drilldown
        drilldown = other.drilldown if drilldown is None else drilldown.merge(other.drilldown)
        return EngineState(
            self.reference.merge(other.reference),
            {n: self.paired[n].merge(other.paired[n]) for n in self.paired},
            {n: s.merge(other.loss.get(n, LossSums())) for n, s in self.loss.items()},
            {
                n: s.merge(other.agreement.get(n, AgreementSums()))
                for n, s in self.agreement.items()
            },
            drilldown,
            _merge_domains(self.domains, other.domains),
        )


class Readout:
    """Runs a batch to the read-out hook, returning activations [tokens, width] (and loss)."""

    def __init__(self, hook: str, compute_loss: bool):
        self.hook, self.compute_loss = hook, compute_loss

    def __call__(self, model, batch: torch.Tensor, label: str, index: int):
        act, out = run_to_hook(model, batch, self.hook, loss=self.compute_loss)
        if not torch.isfinite(act).all():  # one host synchronisation per forward
            raise ValueError(
                f"non-finite activations (NaN/inf) at {self.hook!r} for condition {label!r} "
                f"in batch {index}; the compressed weights or the model overflow in its dtype"
            )
        loss = None
        if self.compute_loss:
            loss = LossSums(out.double().sum(), out.numel())
        return act, loss


def pass_steps(
    tokens: torch.Tensor,
    conditions: Sequence[Condition],
    config: AuditConfig,
    domains: RowDomains | None = None,
) -> int:
    """Forward passes :func:`run_pass` makes (for progress bars)."""
    return count_batches(tokens.shape[0], config.batch_size, domains) * (1 + len(conditions))


def encode(sae, activations: torch.Tensor) -> torch.Tensor:
    """SAE feature activations [tokens, d_sae] in float32."""
    return sae.encode(activations.to(sae.device, sae.dtype)).float()


def block_heights(n_rows: int, d_sae: int, device: torch.device) -> list[int]:
    """Rows of each encode block of a batch of ``n_rows`` tokens (``tensor_split``'s sizes)."""
    budget = ENCODE_BLOCK_ELEMENTS.get(device.type)
    rows = n_rows
    if budget is not None:
        rows = max(budget // d_sae, MIN_BLOCK_ROWS)
    count = max(1, n_rows // rows)
    base, extra = divmod(n_rows, count)
    return [base + (i < extra) for i in range(count)]


def encode_blocks(sae, activations: torch.Tensor) -> Iterator[torch.Tensor]:
    """:func:`encode` of ``activations`` [tokens, d_in] block by block of rows, in order."""
    heights = block_heights(activations.shape[0], sae.cfg.d_sae, activations.device)
    for block in activations.split(heights):
        yield encode(sae, block)


@contextmanager
def heap_allocations(device: torch.device) -> Iterator[None]:
    """On CPU with glibc, keep freed memory in malloc's heap for reuse while the block runs."""
    libc = _glibc() if device.type == "cpu" and TUNE_CPU_ALLOCATOR else None
    if libc is None or any(k.startswith(("MALLOC_", "GLIBC_TUNABLES")) for k in os.environ):
        yield
        return
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    try:
        yield
    finally:  # glibc's defaults, and give the heap back
        libc.mallopt(m_mmap_max, 65536)
        libc.mallopt(m_trim_threshold, 128 * 1024)
        libc.malloc_trim(0)


def _glibc():
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (AttributeError, ValueError, OSError):  # not glibc, or no confstr (Windows)
        return None


class BatchReference:
    """The reference side of one batch: x's nonzero entries per encode block (and, with
    the token lenses, its per-token sums, top-k and read-out activations)."""

    def __init__(self, sae, activations: torch.Tensor, top_k: int | None):
        self.n, self.d_sae, self.top_k = activations.shape[0], sae.cfg.d_sae, top_k
        self.activations = activations if top_k else None
        self.blocks, self.token_refs, self.heights = [], [], []
        for x in encode_blocks(sae, activations):
            entries = Entries.of(x)
            self.blocks.append(entries)
            if top_k:
                self.token_refs.append(TokenReference.of(x, entries, top_k))
            self.heights.append(x.shape[0])
        self._finish()

    @classmethod
    def of_entries(cls, entries: Entries, n: int, d_sae: int, device) -> BatchReference:
        """From the batch's nonzero entries (row-major, as :meth:`Entries.cat` of the
        blocks gives them), cut back into the encode blocks (no token lenses)."""
        self = cls.__new__(cls)
        self.n, self.d_sae, self.top_k, self.activations = n, d_sae, None, None
        self.heights, self.token_refs = block_heights(n, d_sae, torch.device(device)), []
        self.blocks = entries.split_rows(self.heights)
        self._finish()
        return self

    def _finish(self) -> None:
        self.entries = Entries.cat(self.blocks, self.heights)
        self.stats = ReferenceStats.of_entries(self.n, self.d_sae, self.entries)

    def paired(
        self, sae, activations: torch.Tensor, keep_entries: bool = False
    ) -> tuple[PairedStats, AgreementSums | None, Entries | None]:
        """Paired statistics (and token agreement) of this reference and a condition; with
        ``keep_entries``, also the condition's nonzero entries over the batch."""
        # the reference's per-feature sum x and sum x^2 are shared by every condition
        sums = PairedSums(self.n, self.stats.total, self.stats.total_sq)
        agreement = AgreementSums() if self.top_k else None
        kept = []
        for i, y in enumerate(encode_blocks(sae, activations)):
            pair = sums.add(self.blocks[i], y)
            if agreement is not None:
                agreement.add_block(self.token_refs[i], self.blocks[i], y, pair, self.top_k)
            if keep_entries:
                kept.append(pair.y)
        if agreement is not None:
            agreement.add_readout(self.activations, activations)
        return sums.stats(), agreement, Entries.cat(kept, self.heights) if kept else None


def new_state(
    sae,
    conditions: Sequence[Condition],
    config: AuditConfig,
    device: torch.device,
    drilldown: DrilldownState | None = None,
) -> EngineState:
    """An empty state for a pass over ``conditions`` (``drilldown``: one to go on filling)."""
    state = EngineState(
        ReferenceStats.empty(sae.cfg.d_sae, device),
        {c.name: PairedStats.empty(sae.cfg.d_sae, device) for c in conditions},
    )
    if config.compute_loss:
        state.loss = {name: LossSums() for name in ["reference", *state.paired]}
    if config.lens_k:
        state.agreement = {name: AgreementSums() for name in state.paired}
    if config.drilldown:
        drilled = [c.name for c in conditions if not isinstance(c, Reference)]
        k = config.drilldown_contexts
        if drilldown is None:
            drilldown = DrilldownState.empty(sae.cfg.d_sae, k, drilled, device)
        state.drilldown = drilldown
    return state


def add_reference(
    state: EngineState,
    reference: BatchReference,
    loss: LossSums | None,
    domain: str | None = None,
) -> None:
    """Fold one batch's reference side into ``state`` (and into ``domain``'s sums)."""
    state.reference = state.reference.merge(reference.stats)
    if domain is not None:
        if domain not in state.domains:
            device = state.reference.total.device
            state.domains[domain] = DomainSums.empty(reference.d_sae, state.paired, device)
        sums = state.domains[domain]
        sums.reference = sums.reference.merge(reference.stats)
    if loss:
        state.loss["reference"] = state.loss["reference"].merge(loss)


def add_condition(
    state: EngineState,
    sae,
    reference: BatchReference,
    name: str,
    act: torch.Tensor,
    loss: LossSums | None,
    drilldown: BatchDrilldown | None,
    domain: str | None = None,
) -> None:
    """Fold condition ``name``'s read-out ``act`` of one batch into ``state`` (and into
    ``domain``'s sums; and, when ``drilldown`` drills into it, into the batch's drill-down)."""
    keep = drilldown is not None and name in drilldown.state.compressed
    pair, agreement, entries = reference.paired(sae, act, keep)
    if keep:
        drilldown.add_condition(name, entries)
    state.paired[name] = state.paired[name].merge(pair)
    if domain is not None:
        sums = state.domains[domain]
        sums.paired[name] = sums.paired[name].merge(pair)
    if agreement is not None:
        state.agreement[name] = state.agreement[name].merge(agreement)
    if loss:
        state.loss[name] = state.loss[name].merge(loss)


def one_pass(
    spec: PassSpec,
    tokens: torch.Tensor,
    advance: Callable[[int], None] = lambda n: None,
    drilldown: DrilldownState | None = None,
    domains: RowDomains | None = None,
) -> EngineState:
    """One pass over ``tokens`` in batches, every condition of ``spec`` on each batch right
    after the reference.

    ``advance(n)`` is called as work completes (one unit per forward pass). ``drilldown``
    (with ``config.drilldown``): a drill-down to go on filling, in place, instead of a new one.
    ``domains``: the rows' domains; their sums are kept apart too (``state.domains``).
    """
    model, sae, config, conditions = spec.model, spec.sae, spec.config, spec.conditions
    device = torch.device(config.device or model.cfg.device)
    readout = Readout(spec.hook, config.compute_loss)
    state = new_state(sae, conditions, config, device, drilldown)
    with torch.inference_mode(), heap_allocations(device):
        batches = domain_batches(tokens, config.batch_size, domains)
        for index, (domain, batch) in enumerate(batches):
            batch = batch.to(device)
            act, loss = readout(model, batch, "reference", index)
            reference = BatchReference(sae, act, config.lens_k)
            drilled = None
            if state.drilldown is not None:
                drilled = state.drilldown.batch(batch, reference.entries)
            add_reference(state, reference, loss, domain)
            advance(1)
            for condition in conditions:
                with condition.running(model, spec.prepared[condition.name]) as running:
                    act, loss = readout(running, batch, condition.name, index)
                add_condition(state, sae, reference, condition.name, act, loss, drilled, domain)
                advance(1)
            if drilled is not None:
                drilled.finish()
    return state
