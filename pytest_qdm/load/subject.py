"""What a run audits, assembled: a preset's model and SAEs (:func:`load_preset`), or the
model, SAE(s) and tokens the plugin's options name (:func:`load_subject`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_qdm.load.models import load_model, resolve_device, resolve_dtype
from pytest_qdm.load.presets import Preset, get_preset
from pytest_qdm.load.saes import load_sae
from pytest_qdm.options import QdmOptions

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


@dataclass
class Subject:
    """What is audited: model, read-out SAE, optional second-layer SAE, tokens."""

    name: str
    sae_name: str
    model: object
    sae: object
    second_sae: object | None
    tokens: object  # data.TokenSet
    candidates: list = field(default_factory=list)  # compress.conditions.Candidate


def load_subject(options: QdmOptions) -> Subject:
    """Load what the options name: a preset, or a model plus ``--qdm-sae``."""
    from pytest_qdm.load.models import load_model
    from pytest_qdm.load.presets import get_preset, preset_names
    from pytest_qdm.load.saes import load_sae
    from pytest_qdm.load.subject import load_preset
    from pytest_qdm.load.tokens import load_tokens, prepend_bos_from_sae

    spec = options.model
    preset = get_preset(spec) if spec in preset_names() else None
    second = None
    placement = {**options.placement, "cache_dir": options.cache_dir}
    if preset is not None and not options.sae:
        loaded = load_preset(preset, device=options.device, dtype=options.dtype, **placement)
        model, sae, sae_name = loaded.model, loaded.sae, f"{preset.sae_release}/{preset.sae_id}"
        second = next((s for h, s in loaded.saes.items() if h != preset.hook_name), None)
    else:  # a preset's model with the user's SAE: the preset's SAEs are not loaded
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device, preset) if preset else options.dtype
        model = load_model(
            preset.model if preset else spec, device=device, dtype=dtype, **placement
        )
    if options.sae:
        sae, sae_name, second = load_sae(options.sae, device=options.device), options.sae, None
    elif preset is None:
        raise ValueError(f"--qdm-model {spec!r} is not a preset: name its SAE with --qdm-sae")
    context = options.context_length or (
        preset.context_length if preset else min(model.cfg.n_ctx, 256)
    )
    tokens = load_tokens(
        options.token_source or "builtin",
        model.tokenizer,
        context_length=min(context, model.cfg.n_ctx),
        max_tokens=options.audit_tokens or (preset.token_budget if preset else 50_000),
        prepend_bos=prepend_bos_from_sae(sae, default=preset.prepend_bos if preset else False),
    )
    from pytest_qdm.compress.conditions import Candidate, is_bridge

    candidates = [
        Candidate.from_pretrained(
            path,
            device=options.device,
            dtype=model.cfg.dtype,
            path=options.candidate_path,
            tokenizer=model.tokenizer,  # the forward path's, where the folder has none
            **{**placement, "backend": "bridge" if is_bridge(model) else None},
        )
        for path in options.candidates
    ]
    hook = options.hook or sae.cfg.metadata.hook_name
    for candidate in candidates:
        candidate.check_compatible(model, hook)  # before any forward pass
    return Subject(spec, sae_name, model, sae, second, tokens, candidates)


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
    *,
    device: str | None = None,
    dtype: Any = None,
    offline: bool | None = None,
    second_sae: bool = True,
    **placement: Any,
) -> LoadedPreset:
    """Load a preset's model and SAE(s). The model comes first, so an offline miss names it.

    ``dtype`` is the model's (default: the preset's for the device); SAEs load in float32.
    ``second_sae=False`` skips the second-layer SAE. ``placement``: ``device_map`` /
    ``max_memory`` for a model split across devices (:func:`load_model`).
    """
    preset = name if isinstance(name, Preset) else get_preset(name)
    device = resolve_device(device)
    if preset.model == "tiny":
        from pytest_qdm.zoo import load_tiny_saes

        model = load_model("tiny", device=device, dtype=dtype, **placement)
        saes = dict(load_tiny_saes(device=device))
    else:
        model = load_model(
            preset.model,
            device=device,
            dtype=resolve_dtype(dtype, device, preset),
            offline=offline,
            **placement,
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


def bundled_sae_dir(preset: Preset, sae_id: str):
    """The folder of a bundled SAE (``sae_release="builtin"``, ``sae_id`` relative to
    pytest_qdm/zoo); FileNotFoundError (one line) when this install lacks it."""
    from pathlib import Path

    import pytest_qdm.zoo

    folder = Path(pytest_qdm.zoo.__file__).parent / sae_id
    if not (folder / "cfg.json").is_file():
        raise FileNotFoundError(
            f"preset {preset.name!r}: its bundled SAE {sae_id!r} is missing from this install "
            f"({folder}); pass an SAE folder with --qdm-sae DIR (load_sae('DIR'))"
        )
    return folder
