"""Two-phase passes, for models whose reference and a compressed copy do not fit together.

Phase 1 runs only the reference to the read-out hook and writes each batch's read-out to a
safetensors file in a fresh ``qdm-reference-*`` folder (``AuditConfig.two_phase_dir``, else
the system's temporary folder; one per process). Phase 2 loops over the conditions and, for
each, swaps in that one condition's compressed weights (built block by block where it can,
the replaced reference tensors parked on the host) and runs every batch against its cached
reference. The folder is removed at the end unless ``two_phase_keep``.

What a batch's file holds, memory, and why the numbers are the same bit for bit:
docs/engine.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from pytest_qdm.compress.swap import applied
from pytest_qdm.settings import AuditConfig
from pytest_qdm.stream.domains import RowDomains, domain_batches
from pytest_qdm.stream.drilldown import REFERENCE, TOKENS, DrilldownState, TopContexts
from pytest_qdm.stream.engine import (
    BatchReference,
    EngineState,
    Readout,
    add_condition,
    add_reference,
    heap_allocations,
    new_state,
)
from pytest_qdm.stream.inputs import PassSpec
from pytest_qdm.stream.stats import Entries

CACHE_PREFIX = "qdm-reference-"
RESIDUAL, CODES = "residual", "codes"


def residual_bytes(activations: torch.Tensor) -> int:
    """Bytes of a batch's read-out residual in the model's dtype."""
    return activations.numel() * activations.element_size()


def codes_bytes(n_tokens: int, entries: Entries) -> int:
    """Bytes of a batch's sparse codes: an int32 count per token, int32 + float32 per entry."""
    return 4 * n_tokens + 8 * entries.values.numel()


def representation(activations: torch.Tensor, entries: Entries, token_lenses: bool) -> str:
    """What a batch's cache file holds: ``residual`` or ``codes``, whichever is smaller
    (the residual when the token lenses need it, or on a tie)."""
    if token_lenses:
        return RESIDUAL
    smaller = codes_bytes(activations.shape[0], entries) < residual_bytes(activations)
    return CODES if smaller else RESIDUAL


class ReferenceCache:
    """One safetensors file per batch of the reference read-out under ``folder``, each
    written atomically (temporary file, then ``os.replace``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.kinds: dict[str, int] = {RESIDUAL: 0, CODES: 0}

    def path(self, index: int) -> Path:
        return self.folder / f"batch{index:06d}.safetensors"

    def tensors(
        self, activations: torch.Tensor, reference: BatchReference, token_lenses: bool
    ) -> dict[str, torch.Tensor]:
        """The host copies a batch's file holds (one host synchronisation)."""
        entries = reference.entries
        kind = representation(activations, entries, token_lenses)
        self.kinds[kind] += 1
        if kind == RESIDUAL:
            return {RESIDUAL: activations.contiguous().cpu()}
        counts = torch.zeros(reference.n, dtype=torch.int32, device=entries.rows.device)
        counts.index_add_(0, entries.rows, torch.ones_like(entries.rows, dtype=torch.int32))
        return {
            "row_counts": counts.cpu(),
            "cols": entries.cols.to(torch.int32).cpu(),
            "values": entries.values.to(torch.float32).cpu(),
        }

    def write(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self.path(index)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.")
        os.close(handle)
        try:
            save_file(tensors, temporary)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def read(self, index: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.path(index))

    @staticmethod
    def reference(
        tensors: dict[str, torch.Tensor], sae, top_k: int | None, device: torch.device
    ) -> BatchReference:
        """The batch's reference side from its file's tensors: exactly phase 1's."""
        if RESIDUAL in tensors:
            # a fresh copy: aligned like the forward's own output, whatever the file's layout
            return BatchReference(sae, tensors[RESIDUAL].to(device, copy=True), top_k)
        counts = tensors["row_counts"]
        n = counts.shape[0]
        rows = torch.repeat_interleave(torch.arange(n), counts.to(torch.int64))
        values = tensors["values"].to(torch.float64)
        entries = Entries(rows, tensors["cols"].to(torch.int64), values)
        entries = Entries(*(t.to(device) for t in (entries.rows, entries.cols, entries.values)))
        return BatchReference.of_entries(entries, n, sae.cfg.d_sae, device)


def cache_folder(config: AuditConfig) -> Path:
    """A fresh cache folder for one pass (unique per process)."""
    parent = config.two_phase_dir
    if parent is not None:
        if Path(parent).exists() and not Path(parent).is_dir():
            raise ValueError(f"two_phase_dir {parent!r} is a file; name a folder")
        Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=CACHE_PREFIX, dir=parent))


def park_device(device: torch.device) -> torch.device | None:
    """Where phase 2 keeps the reference's replaced weights: the host when the pass runs
    on an accelerator (None on CPU: they stay where they are)."""
    return None if device.type == "cpu" else torch.device("cpu")


def _buffer(start: TopContexts, names: Sequence[str]) -> TopContexts:
    """A copy of the reference buffer ``start`` with the windows ``names`` only."""
    return TopContexts(start.values.clone(), {n: start.windows[n].clone() for n in names})


def run_two_phase(
    spec: PassSpec,
    tokens: torch.Tensor,
    advance: Callable[[int], None] = lambda n: None,
    drilldown: DrilldownState | None = None,
    domains: RowDomains | None = None,
) -> EngineState:
    """:func:`~pytest_qdm.stream.engine.one_pass` in two phases (module docstring):
    the same state, bit for bit. ``prepared`` is read once per condition, in phase 2,
    block by block where it has ``by_block`` (run/audit.py's ``OnDemand``, which computes
    the weights when asked), so one compressed copy exists at a time."""
    model, sae, config, conditions = spec.model, spec.sae, spec.config, spec.conditions
    device = torch.device(config.device or model.cfg.device)
    readout = Readout(spec.hook, config.compute_loss)
    state = new_state(sae, conditions, config, device, drilldown)
    batches = list(domain_batches(tokens, config.batch_size, domains))  # (domain, rows)
    folder = cache_folder(config)
    cache = ReferenceCache(folder)
    try:
        with (
            torch.inference_mode(),
            heap_allocations(device),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdm-cache") as io,
        ):
            windows = _reference_phase(
                *(state, sae, batches, readout, model, cache, config, device, io), advance
            )
            for condition in conditions:
                name = condition.name
                by_block = getattr(spec.prepared, "by_block", None)  # run/audit.py's OnDemand
                parts = by_block(name) if by_block else [spec.prepared[name]]
                # this condition's weights and no other's, swapped in for all its batches
                # (a candidate on the forward path swaps none and runs its own model)
                with (
                    applied(model, parts, park_device(device)),
                    condition.running(model, {}) as running,
                ):
                    own = _condition_phase(
                        *(state, sae, batches, readout, running, cache, config, device, io),
                        name,
                        advance,
                    )
                if own is not None:
                    windows[name] = own
            if state.drilldown is not None:
                state.drilldown.reference = TopContexts(windows.pop("values"), windows)
    finally:
        if not config.two_phase_keep:
            shutil.rmtree(folder, ignore_errors=True)
    return state


def _reference_phase(
    state, sae, batches, readout, model, cache, config, device, io, advance
) -> dict:
    """Phase 1: the reference statistics and loss, the cache files, and the drill-down's
    reference buffer (values and the reference's windows) at the end of the pass."""
    buffer = None
    if state.drilldown is not None:
        buffer = DrilldownState(_buffer(state.drilldown.reference, [TOKENS, REFERENCE]))
    writes: list[Future] = []
    for index, (domain, batch) in enumerate(batches):
        batch = batch.to(device)
        act, loss = readout(model, batch, "reference", index)
        reference = BatchReference(sae, act, config.lens_k)
        if buffer is not None:
            buffer.batch(batch, reference.entries).finish()
        add_reference(state, reference, loss, domain)
        advance(1)
        tensors = cache.tensors(act, reference, config.token_lenses)
        writes.append(io.submit(cache.write, index, tensors))
        if len(writes) > 2:  # at most two batches' host copies wait for the disk
            writes.pop(0).result()
    for write in writes:
        write.result()
    if buffer is None:
        return {}
    return {"values": buffer.reference.values, **buffer.reference.windows}


def _condition_phase(
    state, sae, batches, readout, model, cache, config, device, io, name, advance
) -> torch.Tensor | None:
    """Phase 2 for one condition: its statistics over every batch against the cache; with
    the drill-down, its windows of the reference buffer's contexts (else None)."""
    drilled = None
    if state.drilldown is not None and name in state.drilldown.compressed:
        start = state.drilldown.reference
        drilled = DrilldownState(
            _buffer(start, [TOKENS, REFERENCE, name]), {name: state.drilldown.compressed[name]}
        )
    pending = io.submit(cache.read, 0)
    for index, (domain, batch) in enumerate(batches):
        tensors = pending.result()
        if index + 1 < len(batches):
            pending = io.submit(cache.read, index + 1)
        batch = batch.to(device)
        reference = cache.reference(tensors, sae, config.lens_k, device)
        act, loss = readout(model, batch, name, index)  # the condition's weights are in
        batch_drilldown = drilled.batch(batch, reference.entries) if drilled else None
        add_condition(state, sae, reference, name, act, loss, batch_drilldown, domain)
        if batch_drilldown is not None:
            batch_drilldown.finish()
        advance(1)
    return drilled.reference.windows[name] if drilled else None
