"""SAE transfer quality: how well the frozen SAE still explains a compressed model.

For the reference and each condition, on a fixed token set: the SAE's explained variance,
MSE and mean L0 on that model's activations at the hook, and the language-model loss with
the SAE's reconstruction spliced in at the hook, against the clean loss and against
zero-ablating the hook (fraction of loss recovered = (L_zero - L_spliced) / (L_zero - L_clean)).
"""

from __future__ import annotations

import re

import torch

from pytest_qdm.schema.analyses import TransferQuality
from pytest_qdm.stream.distributed import local_rows, rank_and_size, summed
from pytest_qdm.stream.domains import row_batches

F64 = torch.float64


_RESIDUAL_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


def resume_layer(hook: str) -> int | None:
    """The block a forward can resume from with ``hook``'s activation as its residual
    stream (``blocks.L.hook_resid_post`` -> L + 1), or None for other hooks."""
    match = _RESIDUAL_HOOK.match(hook)
    return None if match is None else int(match[1]) + (match[2] == "post")


class TransferSums:
    """Float64 sums behind :class:`TransferQuality`, filled batch by batch.

    It observes clean forwards (a :class:`pytest_qdm.perplexity.BatchObserver`): its hook
    keeps the activation at ``hook``, and :meth:`observe` adds the clean loss, the SAE's
    reconstruction error and L0, and the losses with the reconstruction spliced in and with
    the activation zeroed. At a residual-stream hook the spliced forward resumes after the
    hook from the clean run's residual (``start_at_layer``), so the layers below it run
    once per batch, and the zero-ablated logits come from one position; elsewhere both are
    full forwards with a replacing hook.
    """

    def __init__(self, model, sae, hook: str):
        # a TransformerBridge (a candidate's forward path) cannot resume mid-model
        resume = resume_layer(hook) if hasattr(model, "input_to_embed") else None
        self.model, self.sae, self.hook, self.resume = model, sae, hook, resume
        self.sums = torch.zeros(6, dtype=F64)  # clean, spliced, zero loss; SSE; sum ||a||^2; L0
        self.total: torch.Tensor | None = None  # sum of activations [d_in]
        self.n_tokens = self.n_scored = 0
        self._activation: torch.Tensor | None = None

    def fwd_hooks(self) -> list:
        def keep(activation, hook):
            self._activation = activation

        return [(self.hook, keep)]

    def observe(self, batch: torch.Tensor, nll: torch.Tensor) -> None:
        """Add a batch whose clean forward ran with :meth:`fwd_hooks`; ``nll`` [b, pos-1]."""
        activation, self._activation = self._activation, None
        self.add(batch, nll, activation)

    def add(self, batch: torch.Tensor, nll: torch.Tensor, activation: torch.Tensor) -> None:
        """Add a batch: its clean loss ``nll`` [b, pos-1] and activation at the hook."""
        sae, d_in = self.sae, self.sae.cfg.d_in
        features = sae.encode(activation.to(sae.device, sae.dtype))
        recon = sae.decode(features).to(activation.device, activation.dtype)
        flat = activation.to(F64).reshape(-1, d_in)
        parts = (
            nll.double().sum(),
            self._replaced(batch, recon).double().sum(),
            self._zero_ablated(batch, activation).double().sum(),
            (recon.to(F64).reshape(-1, d_in) - flat).square().sum(),
            flat.square().sum(),
            (features > 0).sum(),
        )
        # device tensors until read: no host synchronisation per batch
        self.sums = self.sums.to(flat.device) + torch.stack([p.to(flat.device, F64) for p in parts])
        self.total = flat.sum(0) if self.total is None else self.total + flat.sum(0)
        self.n_scored += nll.numel()
        self.n_tokens += batch.numel()

    def sum_over_ranks(self) -> None:
        """Under torch.distributed, where each rank observed a share of the batches: every
        rank's sums, added in rank order (docs/distributed.md); nothing happens outside."""
        if rank_and_size()[1] == 1:
            return
        total = 0.0 if self.total is None else self.total.cpu()  # None: no batch here
        parts = summed(lambda: (self.sums.cpu(), total, self.n_tokens, self.n_scored))
        self.sums, self.total, self.n_tokens, self.n_scored = parts

    def _replaced(self, batch: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        """Per-token loss of ``batch`` with the hook's activation replaced."""
        if self.resume is None:
            return self.model.run_with_hooks(
                batch,
                return_type="loss",
                loss_per_token=True,
                fwd_hooks=[(self.hook, lambda a, hook: activation.to(a.device))],
            )
        _, _, shortformer, mask = self.model.input_to_embed(batch)
        return self.model(
            activation,
            start_at_layer=self.resume,
            tokens=batch,
            attention_mask=mask,
            shortformer_pos_embed=shortformer,
            return_type="loss",
            loss_per_token=True,
        )

    def _zero_ablated(self, batch: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        """Per-token loss of ``batch`` with the hook's activation zeroed.

        A zero residual stream carries neither token nor position, and every later layer
        treats identical positions identically (attention averages identical values), so
        all positions share one set of logits: at a residual hook they come from one
        zero position, the same numbers up to float rounding.
        """
        if self.resume is None:
            return self._replaced(batch, torch.zeros_like(activation))
        zero = activation.new_zeros(1, 1, activation.shape[-1])
        logits = self.model(zero, start_at_layer=self.resume, return_type="logits")[0, 0]
        return -logits.log_softmax(-1)[batch[:, 1:].to(logits.device)]

    def result(self) -> TransferQuality:
        if not self.n_tokens:
            raise ValueError("no batch was observed; measure at least one batch of tokens")
        sums, n = self.sums, self.n_tokens
        variance = float(sums[4]) - float(self.total @ self.total) / n
        clean, spliced, zero = (float(v) / self.n_scored for v in sums[:3])
        gap = zero - clean
        return TransferQuality(
            explained_variance=1 - float(sums[3]) / variance if variance > 0 else None,
            mse=float(sums[3]) / (n * self.sae.cfg.d_in),
            mean_l0=float(sums[5]) / n,
            clean_loss=clean,
            spliced_loss=spliced,
            zero_ablation_loss=zero,
            loss_recovered=(zero - spliced) / gap if gap > 0 else None,
            n_tokens=n,
        )


def sae_transfers(
    model, saes, tokens: torch.Tensor, hook: str, batch_size: int = 8
) -> list[TransferQuality]:
    """Measure each of ``saes`` on ``model`` as it is (apply a condition around this call);
    one clean forward per batch serves them all."""
    sums = [TransferSums(model, sae, hook) for sae in saes]
    seen = {}

    def keep(activation, hook):
        seen["activation"] = activation

    with torch.inference_mode():
        for batch in row_batches(tokens[local_rows(len(tokens), batch_size)], batch_size):
            batch = batch.to(model.cfg.device)
            loss = model.run_with_hooks(
                batch, return_type="loss", loss_per_token=True, fwd_hooks=[(hook, keep)]
            )
            for each in sums:
                each.add(batch, loss, seen["activation"])
    for each in sums:
        each.sum_over_ranks()
    return [each.result() for each in sums]


def sae_transfer(
    model, sae, tokens: torch.Tensor, hook: str, batch_size: int = 8
) -> TransferQuality:
    """Measure the SAE on ``model`` as it is (apply a condition around this call)."""
    return sae_transfers(model, [sae], tokens, hook, batch_size)[0]
