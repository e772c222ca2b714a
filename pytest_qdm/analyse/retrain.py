"""The retrained-SAE baseline: an SAE trained on a condition's activations at the frozen
SAE's hook, with sae_lens' own trainer, and what it says about the frozen audit
(docs/retrained-sae.md).

:func:`pytest_qdm.run.retrain_phase.retrain_sae` trains, with :func:`train`, a fresh SAE of the reference SAE's architecture, width and
sparsity (its sae_lens training class, same config) on activations streamed from the
condition's forward passes (a few rows at a time through sae_lens' mixing buffer; no
[all tokens, d_in] tensor), initialised from the reference SAE (a fine-tune) or at random,
under a fixed seed. It then measures, on held-out evaluation rows of the condition's model,
the three-way table of arXiv 2507.15977 (frozen SAE, retrained SAE, the frozen SAE pruned
without retraining to the retrained SAE's live width) and matches every reference feature
to the retrained SAE (:mod:`pytest_qdm.analyse.feature_matching`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch

from pytest_qdm.analyse.retrain_checks import (
    DEFAULT_BATCH_TOKENS,
    RETRAIN_INITS,
    check_budget,
)
from pytest_qdm.compress.conditions import Condition
from pytest_qdm.progress import progress_bar
from pytest_qdm.stream.hooks import run_to_hook

#: Rows per forward pass of the data provider; the mixing buffer holds 8 training batches.
ROWS_PER_FORWARD = 8
BUFFER_BATCHES = 8
#: Batches sae_lens' activation scaler estimates the mean norm from (at most the budget's).
NORM_BATCHES = 8


def training_classes(sae):
    """(training SAE class, its config class) for ``sae``'s architecture; ValueError in one
    line when sae_lens cannot train it."""
    import sae_lens  # noqa: F401 (fills the registries)
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    architecture = getattr(getattr(sae, "cfg", None), "architecture", None)
    name = architecture() if callable(architecture) else None
    if name not in SAE_TRAINING_CLASS_REGISTRY:
        raise ValueError(
            f"sae_lens cannot train a {type(sae).__name__} (architecture {name!r}); "
            f"--qdm-retrain-sae needs an SAE of one of {sorted(SAE_TRAINING_CLASS_REGISTRY)}"
        )
    return SAE_TRAINING_CLASS_REGISTRY[name]


def check_retrain(sae, budget, init: str, batch_tokens: int = DEFAULT_BATCH_TOKENS) -> None:
    """Every check of a retraining that needs no forward pass (one line each)."""
    if init not in RETRAIN_INITS:
        raise ValueError(f"init must be one of {RETRAIN_INITS}, got {init!r}")
    check_budget(budget, batch_tokens)
    training_classes(sae)


def training_sae(sae, init: str):
    """A sae_lens training SAE with ``sae``'s config (architecture, width, sparsity,
    hook), its weights copied (``init="reference"``) or drawn by sae_lens' own
    initialisation (``"random"``, under the caller's RNG state). An SAE that takes raw
    activations trains on inputs scaled to E||x|| = sqrt(d_in) (sae_lens'
    ``expected_average_only_in``; the trainer folds the scale back in at the end)."""
    training_cls, config_cls = training_classes(sae)
    settings = {**sae.cfg.to_dict(), "device": str(sae.W_dec.device)}
    if settings["normalize_activations"] == "none":
        settings["normalize_activations"] = "expected_average_only_in"
    fresh = training_cls(config_cls.from_dict(settings))
    if init == "reference":
        fresh.load_state_dict(sae.state_dict())
    return fresh


def _unfold_scale(fresh, scaling_factor: float) -> None:
    """Turn raw-activation weights into weights for inputs scaled by ``scaling_factor``
    (the inverse of sae_lens' ``fold_activation_norm_scaling_factor``)."""
    fresh.fold_activation_norm_scaling_factor(1 / scaling_factor)
    fresh.cfg.normalize_activations = "expected_average_only_in"


def inference_sae(trained, like):
    """``trained`` as an inference SAE of ``like``'s class, in eval mode."""
    state = trained.state_dict()
    trained.process_state_dict_for_saving_inference(state)
    sae = type(like).from_dict(trained.cfg.get_inference_sae_cfg_dict())
    sae.load_state_dict(state)
    return sae.to(like.W_dec.device).eval()


def activation_stream(
    model, condition: Condition, tokens: torch.Tensor, hook: str, dtype
) -> Iterator[torch.Tensor]:
    """Activations at ``hook`` of the condition's model, ROWS_PER_FORWARD rows per forward,
    the rows in a fresh random order every epoch (global torch RNG), forever. The model
    holds the condition's weights only during each forward."""
    weights = condition.compressed_weights(model)
    while True:
        order = torch.randperm(tokens.shape[0])
        for start in range(0, len(order), ROWS_PER_FORWARD):
            rows = tokens[order[start : start + ROWS_PER_FORWARD]].to(model.cfg.device)
            with torch.no_grad(), condition.running(model, weights) as run:
                acts, _ = run_to_hook(run, rows, hook)
            yield acts.to(dtype)


class _NoBar:
    """Stands in for the trainer's tqdm bar: progress comes from :func:`progress_bar`."""

    def __init__(self, iterable=(), *args, **kwargs):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def train(model, sae, tokens, condition, hook, *, budget, init, seed, batch_tokens, lr, progress):
    """The retrained inference SAE and the number of tokens the trainer consumed."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training import activation_scaler, sae_trainer
    from sae_lens.training.mixing_buffer import mixing_buffer

    steps = budget // batch_tokens
    n_norm = min(steps, NORM_BATCHES)
    devices = [model.cfg.device] if torch.device(model.cfg.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), contextlib.ExitStack() as stack:
        torch.manual_seed(seed)
        fresh = training_sae(sae, init)
        total = (steps + n_norm) * batch_tokens
        advance = stack.enter_context(
            progress_bar(f"Retraining SAE on {condition.name}", total, progress)
        )
        stream = activation_stream(model, condition, tokens, hook, fresh.W_dec.dtype)
        batches = mixing_buffer(BUFFER_BATCHES * batch_tokens, batch_tokens, stream)

        def provider():
            for batch in batches:
                advance(batch.shape[0])
                yield batch

        config = SAETrainerConfig(
            total_training_samples=steps * batch_tokens,
            train_batch_size_samples=batch_tokens,
            lr=lr,
            lr_end=lr,  # the constant schedule (the runner config sets this in its post-init)
            device=str(fresh.W_dec.device),
        )
        trainer = sae_trainer.SAETrainer(cfg=config, sae=fresh, data_provider=provider())
        for module in (sae_trainer, activation_scaler):  # progress_bar above instead
            stack.enter_context(mock.patch.object(module, "tqdm", _NoBar))
        if fresh.cfg.normalize_activations == "expected_average_only_in":
            scaler = trainer.activation_scaler
            scaler.estimate_scaling_factor(fresh.cfg.d_in, trainer.data_provider, n_norm)
            if init == "reference":
                _unfold_scale(fresh, scaler.scaling_factor)
        trained = trainer.fit()
    return inference_sae(trained, sae), trainer.n_training_samples


def split_rows(tokens: torch.Tensor, eval_tokens, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, evaluation rows): ``eval_tokens`` when given, else a random quarter
    of the rows (``seed``), in row order, is held out for evaluation."""
    if eval_tokens is not None:
        return tokens, getattr(eval_tokens, "tokens", eval_tokens)
    if tokens.shape[0] < 2:
        raise ValueError("retraining needs at least 2 token rows (train and evaluation)")
    order = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(seed))
    n_eval = max(1, tokens.shape[0] // 4)
    return tokens[order[n_eval:].sort().values], tokens[order[:n_eval].sort().values]
