"""What a gate run audits, assembled from its options: the model, SAE(s), tokens and
candidates (:func:`load_subject`), and the noise-floor conditions (:func:`floors_for`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pytest_qdm.load.models import load_model
from pytest_qdm.load.placement import Placement, resolve_device, resolve_dtype
from pytest_qdm.load.presets import get_preset, preset_names
from pytest_qdm.load.saes import load_sae
from pytest_qdm.load.subject import load_preset
from pytest_qdm.load.tokens import load_tokens, prepend_bos_from_sae
from pytest_qdm.options import QdmOptions

if TYPE_CHECKING:
    from pytest_qdm.compress.noise_floor import NoiseFloor


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
    spec = options.model
    preset = get_preset(spec) if spec in preset_names() else None
    second = None
    placement, cache_dir = options.placement, options.cache_dir
    if preset is not None and not options.sae:
        loaded = load_preset(preset, placement, cache_dir=cache_dir)
        model, sae, sae_name = loaded.model, loaded.sae, f"{preset.sae_release}/{preset.sae_id}"
        second = next((s for h, s in loaded.saes.items() if h != preset.hook_name), None)
    else:  # a preset's model with the user's SAE: the preset's SAEs are not loaded
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device, preset) if preset else options.dtype
        where = replace(placement, device=device, dtype=dtype)
        model = load_model(preset.model if preset else spec, where, cache_dir=cache_dir)
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
    from pytest_qdm.compress.conditions import Candidate, is_bridge  # torch: lazily

    candidates = [
        Candidate.from_pretrained(
            path,
            path=options.candidate_path,
            tokenizer=model.tokenizer,  # the forward path's, where the folder has none
            cache_dir=cache_dir,
            placement=replace(
                placement,
                dtype=model.cfg.dtype,
                backend="bridge" if is_bridge(model) else None,
            ),
        )
        for path in options.candidates
    ]
    hook = options.hook or sae.cfg.metadata.hook_name
    for candidate in candidates:
        candidate.check_compatible(model, hook)  # before any forward pass
    return Subject(spec, sae_name, model, sae, second, tokens, candidates)


def floors_for(options: QdmOptions, model) -> list[NoiseFloor]:
    """The ``--qdm-noise-floor`` conditions of a gate run: :func:`noise_floor`, with the
    other backend loaded from the same checkpoint (not for a model split across devices,
    which only the bridge runs)."""
    if not options.noise_floor:
        return []
    from pytest_qdm.compress.noise_floor import noise_floor
    from pytest_qdm.compress.targets import is_bridge

    other = None
    if not options.split:
        backend = "hooked" if is_bridge(model) else "bridge"
        where = Placement(device=options.device, dtype=model.cfg.dtype, backend=backend)
        other = load_model(options.model, where)
    return noise_floor(model, other)
