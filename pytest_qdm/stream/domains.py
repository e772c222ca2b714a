"""Which text domain each token row belongs to, and batches that never mix domains.

Per-domain statistics come from the same pass as the totals: a batch holds rows of one
domain only, so each batch's sums are added to its domain's sums as well as to the totals
(exact; docs/definitions.md, "Survival per domain").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowDomains:
    """Row ``i`` belongs to domain ``names[codes[i]]``."""

    names: tuple[str, ...]
    codes: torch.Tensor  # [n_rows], int64

    @classmethod
    def of_counts(cls, rows: Mapping[str, int]) -> RowDomains:
        """Domains of rows laid out domain by domain (``{"prose": 10, "code": 10}``)."""
        counts = torch.tensor(list(rows.values()), dtype=torch.long)
        return cls(tuple(rows), torch.repeat_interleave(torch.arange(len(rows)), counts))

    @classmethod
    def of_tokens(cls, tokens) -> RowDomains | None:
        """The domains of a TokenSet with labelled domains, else None."""
        rows = getattr(tokens, "domain_rows", None)
        return cls.of_counts(rows) if rows else None

    def take(self, index: torch.Tensor | slice) -> RowDomains:
        return RowDomains(self.names, self.codes[index])

    def rows(self, name: str) -> torch.Tensor:
        """Indices of the rows of domain ``name``."""
        return torch.nonzero(self.codes == self.names.index(name)).flatten()

    def runs(self) -> list[tuple[str, int, int]]:
        """(domain, start, stop) of each run of consecutive rows of one domain."""
        codes = self.codes
        if codes.numel() == 0:
            return []
        cuts = (torch.nonzero(codes[1:] != codes[:-1]).flatten() + 1).tolist()
        starts, stops = [0, *cuts], [*cuts, codes.numel()]
        return [(self.names[int(codes[a])], a, b) for a, b in zip(starts, stops, strict=True)]


def domain_batches(
    tokens: torch.Tensor, batch_size: int, domains: RowDomains | None
) -> Iterator[tuple[str | None, torch.Tensor]]:
    """(domain or None, rows) batches of at most ``batch_size`` rows, in row order; a batch
    ends where the domain changes."""
    if domains is None:
        for batch in row_batches(tokens, batch_size):
            yield None, batch
        return
    if domains.codes.shape[0] != tokens.shape[0]:
        raise ValueError(f"{domains.codes.shape[0]} domain labels for {tokens.shape[0]} token rows")
    for name, start, stop in domains.runs():
        for batch in row_batches(tokens[start:stop], batch_size):
            yield name, batch


def row_batches(tokens: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of at most ``batch_size`` rows; none at all for no rows (a rank
    whose share is empty), where ``torch.split`` would yield one empty batch."""
    return (tokens[start : start + batch_size] for start in range(0, len(tokens), batch_size))


def count_batches(n_rows: int, batch_size: int, domains: RowDomains | None) -> int:
    """How many batches :func:`domain_batches` yields for ``n_rows`` rows."""
    if domains is None:
        return -(-n_rows // batch_size)
    return sum(-(-(stop - start) // batch_size) for _, start, stop in domains.runs())
