"""Per-block RTN: some transformer blocks at one bit width, others at another or untouched.

The conditions of the sensitivity analysis (docs/definitions.md, "Block sensitivity"):
:class:`BlockRTN` quantizes only the chosen blocks (the rest keep the reference weights),
:class:`MixedRTN` gives each block its own width over a default. Each targeted tensor is
rounded exactly as :class:`~pytest_qdm.compress.conditions.RTN` rounds it (per output
channel, ``rtn_rows``), so block i of ``BlockRTN(4, blocks=(i,))`` equals block i of
``RTN(4)`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pytest_qdm.compress.conditions import Condition
from pytest_qdm.compress.operators import check_bits, rtn_rows
from pytest_qdm.compress.targets import target_weights


def _blocks_text(blocks: Iterable[int]) -> str:
    blocks = sorted(blocks)
    return f"block{blocks[0]}" if len(blocks) == 1 else "blocks" + ",".join(map(str, blocks))


@dataclass(frozen=True, init=False)
class MixedRTN(Condition):
    """RTN with a bit width per block: block i at ``bits_by_block[i]``, every other block at
    ``default_bits`` (None: the reference weights).

    Named ``rtn-int4@block3`` (one block quantized, the rest reference),
    ``rtn-int4+int8@blocks0,3`` (INT4 everywhere but blocks 0 and 3 at INT8).
    """

    bits_by_block: tuple[tuple[int, int], ...]
    default_bits: int | None

    def __init__(self, bits_by_block: Mapping[int, int], default_bits: int | None = None):
        pairs = tuple(sorted(dict(bits_by_block).items()))
        for block, bits in pairs:
            if isinstance(block, bool) or not isinstance(block, int) or block < 0:
                raise ValueError(f"block indices must be integers >= 0, got {block!r}")
            check_bits(bits)
        if default_bits is not None:
            check_bits(default_bits)
        if not pairs and default_bits is None:
            raise ValueError("MixedRTN quantizes nothing: give bits_by_block or default_bits")
        object.__setattr__(self, "bits_by_block", pairs)
        object.__setattr__(self, "default_bits", default_bits)

    def bits_of(self, block: int) -> int | None:
        """The width block ``block`` is rounded to (None: left as the reference)."""
        return dict(self.bits_by_block).get(block, self.default_bits)

    @property
    def name(self) -> str:
        by_bits: dict[int, list[int]] = {}
        for block, bits in self.bits_by_block:
            if bits != self.default_bits:
                by_bits.setdefault(bits, []).append(block)
        parts = [f"int{b}@{_blocks_text(blocks)}" for b, blocks in sorted(by_bits.items())]
        if self.default_bits is None:
            return "+".join(f"rtn-{p}" if i == 0 else p for i, p in enumerate(parts))
        return "+".join([f"rtn-int{self.default_bits}", *parts])

    def compressed_weights(self, model, layers=None):
        n_layers = model.cfg.n_layers
        outside = [b for b, _ in self.bits_by_block if b >= n_layers]
        if outside:
            raise ValueError(f"{self.name}: the model has blocks 0..{n_layers - 1}, not {outside}")
        weights = {}
        for name, target in target_weights(model, layers).items():
            bits = self.bits_of(target.block)
            if bits is not None:
                weights[name] = target.from_rows(rtn_rows(target.to_rows(), bits))
        return weights

    def describe(self):
        widths = {b for _, b in self.bits_by_block}
        bits = self.default_bits if self.default_bits is not None else min(widths)
        return super().describe().model_copy(update={"bits": bits})


class BlockRTN(MixedRTN):
    """RTN at ``bits`` on ``blocks`` only; every other block keeps the reference weights
    (``rtn-int4@block3``)."""

    def __init__(self, bits: int, blocks: Iterable[int]):
        blocks = tuple(blocks)
        if not blocks:
            raise ValueError("BlockRTN needs at least one block")
        super().__init__(dict.fromkeys(blocks, bits))
