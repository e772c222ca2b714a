"""A preset's model and SAEs, loaded (:func:`load_preset`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pytest_qdm.load.models import load_model
from pytest_qdm.load.placement import Placement, resolve_device, resolve_dtype
from pytest_qdm.load.presets import Preset, bundled_sae_dir, get_preset
from pytest_qdm.load.saes import load_sae

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


@dataclass
class LoadedPreset:
    """A preset's model and SAEs, loaded. ``saes`` is keyed by hook name and holds the
    read-out SAE (also ``sae``) and, when loaded, the second-layer one."""

    preset: Preset
    model: HookedTransformer
    sae: SAE
    saes: dict[str, SAE] = field(default_factory=dict)

    def tokens(self, n_tokens: int | None = None, *, seed: int | None = None, split="train"):
        """The preset's token set (``n_tokens`` defaults to the preset's budget), as a
        :class:`pytest_qdm.load.tokens.TokenSet`."""
        from pytest_qdm.load.tokens import load_tokens

        return load_tokens(
            self.preset.dataset,
            self.model.tokenizer,
            context_length=self.preset.context_length,
            max_tokens=n_tokens or self.preset.token_budget,
            prepend_bos=self.preset.prepend_bos,
            seed=seed,
            split=split,
        )


def load_preset(
    name: str | Preset,
    placement: Placement | None = None,
    *,
    offline: bool | None = None,
    second_sae: bool = True,
    cache_dir: str | None = None,
    **where: Any,
) -> LoadedPreset:
    """Load a preset's model and SAE(s). The model comes first, so an offline miss names it.

    ``dtype`` is the model's (default: the preset's for the device); SAEs load in float32.
    ``second_sae=False`` skips the second-layer SAE. ``placement`` (or its fields as
    keywords: ``device``, ``dtype``, ``backend``, ``device_map``, ``max_memory``) and
    ``cache_dir``: as :func:`load_model` takes them.
    """
    preset = name if isinstance(name, Preset) else get_preset(name)
    placement = Placement.given(placement, where)
    device = resolve_device(placement.device)
    if preset.model == "tiny":
        from pytest_qdm.zoo.tiny import load_tiny_saes

        model = load_model("tiny", replace(placement, device=device), cache_dir=cache_dir)
        saes = dict(load_tiny_saes(device=device))
    else:
        dtype = resolve_dtype(placement.dtype, device, preset)
        model = load_model(
            preset.model,
            replace(placement, device=device, dtype=dtype),
            offline=offline,
            cache_dir=cache_dir,
        )
        specs = {preset.hook_name: preset.sae_id}
        if second_sae and preset.second_sae_id is not None:
            specs[preset.second_hook_name] = preset.second_sae_id
        saes = {
            hook: load_sae(bundled_sae_dir(preset, sae_id), device=device)
            if preset.sae_release == "builtin"
            else load_sae((preset.sae_release, sae_id), device=device, offline=offline)
            for hook, sae_id in specs.items()
        }
    if not second_sae:
        saes = {preset.hook_name: saes[preset.hook_name]}
    return LoadedPreset(preset=preset, model=model, sae=saes[preset.hook_name], saes=saes)
