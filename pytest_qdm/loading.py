"""Loading models, SAEs and presets, from the Hugging Face Hub or a local folder.

The only module that touches the network, and only in ``*_from_hub`` functions (plus the
dispatchers ``load_model`` / ``load_sae`` / ``load_preset`` that call them). Weights are
never processed: no layer-norm folding, no centring, no value-bias folding (DESIGN.md,
"Weight processing"), so compression rounds the checkpoint's own numbers.

Local-or-Hub rule for a string ``spec``: an existing directory is local; a string that
looks like a path (absolute, starts with ``.`` or ``~``, or has more than one ``/``) but
does not exist raises FileNotFoundError; anything else is a Hub name. Hub ids have one
``/`` (``org/name``), so ``load_sae`` resolves ``"release/sae_id"`` by the longest known
sae_lens release that prefixes the string (Gemma Scope ids contain slashes); prefer the
tuple form ``(release, sae_id)``.

Offline: with ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``), ``offline=True``, or a
failed 2-second reachability check of the Hub, loading runs in huggingface_hub's offline
mode (the local cache still works) and a miss raises :class:`HubUnavailableError` at once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .presets import Preset, get_preset, preset_for_model

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


class HubUnavailableError(RuntimeError):
    """A model or SAE could not be fetched from the Hugging Face Hub (offline, unreachable,
    or not in the local cache). The message names what was being loaded."""


# ---------------------------------------------------------------- device, dtype, offline


def resolve_device(device: str | None = None) -> str:
    """``device``, or "cuda" when available, else "cpu"."""
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: Any, device: str, preset: Preset | None = None) -> torch.dtype:
    """``dtype`` (a torch dtype or its name), else the preset's dtype for ``device``, else
    float32."""
    import torch

    if dtype is None:
        dtype = preset.dtype_for(device) if preset is not None else "float32"
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise TypeError(f"unknown dtype {dtype!r}; expected e.g. 'float32' or torch.bfloat16")
    return resolved


_reachability: dict[str, tuple[float, bool]] = {}


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the Hub endpoint (``HF_ENDPOINT``) opens within
    ``timeout`` seconds (DNS included). Results are cached for 30 seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (80 if url.scheme == "http" else 443),
    )
    cached = _reachability.get(host)
    if cached and time.monotonic() - cached[0] < 30:
        return cached[1]
    result = [False]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout
    thread.start()
    thread.join(timeout)
    _reachability[host] = (time.monotonic(), result[0])
    return result[0]


def _offline_reason(offline: bool | None) -> str | None:
    """Why Hub loads run offline, or None when they may use the network."""
    if offline is not None:
        return "offline=True was given" if offline else None
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={os.environ[var]} is set"
    if not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return f"{endpoint} is not reachable (2 s connection check)"
    return None


@contextmanager
def _offline_mode():
    """huggingface_hub's offline mode for the body (read at call time), then restored."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved[0]
        if saved[1] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[1]


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx", "TransportError"), ("httpx2", "TransportError")):
        with suppress(ImportError, AttributeError):
            errors.append(getattr(__import__(module), name))
    return tuple(errors)


@contextmanager
def _from_hub(what: str, instead: str, offline: bool | None):
    """Run a Hub load; turn offline / network failures into one HubUnavailableError."""
    reason = _offline_reason(offline)
    try:
        with _offline_mode() if reason else nullcontext():
            yield
    except HubUnavailableError:
        raise
    except (OSError, *_network_errors()) as error:
        if reason is None and not isinstance(error, _network_errors()):
            raise  # online and not a network failure (gated repo, 404, ...): as is
        why = f"offline ({reason}) and not in the local cache" if reason else "network error"
        raise HubUnavailableError(
            f"could not load {what} from the Hugging Face Hub: {why} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"Use a local folder instead: {instead}"
        ) from error


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated")
        yield


def _local_dir(spec: Any, *, slashes_mean_path: bool = True) -> Path | None:
    """The local folder ``spec`` names, or None for a Hub name. A path-like string that is
    not a folder raises FileNotFoundError (see the module doc for the rule)."""
    if isinstance(spec, str) and Path(spec).expanduser().is_dir():
        return Path(spec).expanduser()
    path_like = isinstance(spec, Path) or (
        isinstance(spec, str)
        and (spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1)
        and (slashes_mean_path or spec.startswith(("/", ".", "~")))
    )
    if not path_like:
        return None
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"local folder {str(spec)!r} does not exist or is not a folder")
    return path


# ----------------------------------------------------------------------------- models


def load_model(
    name_or_path: str | Path,
    *,
    device: str | None = None,
    dtype: Any = None,
    offline: bool | None = None,
) -> HookedTransformer:
    """A HookedTransformer with unprocessed weights: ``"tiny"`` (bundled), a local Hugging
    Face checkpoint folder, or a Hub model name (see the module doc for the rule; "tiny"
    always means the bundled model, "./tiny" a folder). Device None: cuda if available,
    else cpu; dtype None: the dtype of a preset using this model, else float32."""
    if name_or_path == "tiny":
        from .zoo import load_tiny_model

        model = load_tiny_model(device=resolve_device(device))
        return model if dtype is None else model.to(resolve_dtype(dtype, str(model.cfg.device)))
    local = _local_dir(name_or_path)
    if local is not None:
        return load_model_from_disk(local, device=device, dtype=dtype)
    return load_model_from_hub(str(name_or_path), device=device, dtype=dtype, offline=offline)


def load_model_from_hub(
    name: str,
    *,
    device: str | None = None,
    dtype: Any = None,
    offline: bool | None = None,
) -> HookedTransformer:
    """Download (or take from the cache) ``name`` and load it without weight processing.

    Names (or aliases) in TransformerLens' official list go through
    ``from_pretrained_no_processing``; any other Hub repo (e.g. a user's compressed
    checkpoint) is downloaded (json, safetensors, tokenizer.model) and read by
    :func:`load_model_from_disk`.
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device, preset_for_model(name))
    instead = (
        f"`hf download {name} --local-dir DIR` where the Hub is reachable, "
        "then load_model('DIR') (any Hugging Face checkpoint folder works)"
    )
    with _from_hub(f"model {name!r}", instead, offline), _quiet():
        from transformer_lens import HookedTransformer
        from transformer_lens.loading_from_pretrained import make_model_alias_map

        if name.lower() not in make_model_alias_map():
            from huggingface_hub import snapshot_download

            patterns = ["*.json", "*.safetensors", "tokenizer.model"]
            folder = snapshot_download(name, allow_patterns=patterns)
            return load_model_from_disk(folder, device=device, dtype=torch_dtype)
        model = HookedTransformer.from_pretrained_no_processing(
            name, device=device, dtype=torch_dtype
        )
    return model.eval()


def load_model_from_disk(
    path: str | Path, *, device: str | None = None, dtype: Any = None
) -> HookedTransformer:
    """A local Hugging Face checkpoint folder (``save_pretrained``: config.json, weights,
    optionally tokenizer files) as a HookedTransformer. No network, no weight processing.
    Architectures: see ``SUPPORTED_ARCHITECTURES``; the dimensions are read from the
    folder's config, so the model need not be in TransformerLens' list."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"local model folder {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} has no config.json; expected a Hugging Face checkpoint folder "
            "(written by model.save_pretrained)"
        )
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    architecture = (getattr(hf_config, "architectures", None) or [None])[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{str(path)!r}: architecture {architecture!r} (model_type "
            f"{getattr(hf_config, 'model_type', None)!r}) is not supported by "
            f"load_model_from_disk; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    to_config, convert = _converters(architecture)
    cfg = HookedTransformerConfig(
        **to_config(hf_config),
        original_architecture=architecture,
        model_name=path.name,
        tokenizer_name=None,  # never fetched: the tokenizer comes from the folder
        init_weights=False,
        device=device,
        dtype=torch_dtype,
    )
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
    tokenizer = (
        AutoTokenizer.from_pretrained(path, local_files_only=True, add_bos_token=True)
        if has_tokenizer
        else None
    )
    hf_model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch_dtype)
    with _quiet():
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        convert(hf_model, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    return model.eval()


SUPPORTED_ARCHITECTURES = ("GPTNeoXForCausalLM", "Gemma2ForCausalLM")


def _rope_theta(hf_config: Any) -> float:
    theta = getattr(hf_config, "rope_theta", None)  # transformers < 5
    if theta is None:  # transformers >= 5
        theta = (getattr(hf_config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _neox_config(hf: Any) -> dict[str, Any]:
    from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config

    if not getattr(hf, "attention_bias", True):
        raise ValueError("GPT-NeoX checkpoints without attention biases are not supported")
    d_head = hf.hidden_size // hf.num_attention_heads
    return {
        "d_model": hf.hidden_size,
        "d_head": d_head,
        "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.layer_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_act,
        "normalization_type": "LN",
        "parallel_attn_mlp": getattr(hf, "use_parallel_residual", True),
        "positional_embedding_type": "rotary",
        "rotary_dim": round(get_rotary_pct_from_config(hf) * d_head),
        "rotary_base": _rope_theta(hf),
        "rotary_adjacent_pairs": False,
        "default_prepend_bos": False,
    }


def _gemma2_config(hf: Any) -> dict[str, Any]:
    def cap(value: float | None) -> float:
        return -1.0 if value is None else float(value)  # -1: soft-capping off

    layer_types = getattr(hf, "layer_types", None) or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(hf.num_hidden_layers)
    ]
    return {
        "d_model": hf.hidden_size,
        "d_head": hf.head_dim,
        "n_heads": hf.num_attention_heads,
        "n_key_value_heads": hf.num_key_value_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_activation,
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "use_normalization_before_and_after": True,
        "positional_embedding_type": "rotary",
        "rotary_dim": hf.head_dim,
        "rotary_base": _rope_theta(hf),
        "use_attn_scale": True,
        "attn_scale": float(hf.query_pre_attn_scalar) ** 0.5,
        "use_local_attn": True,
        "window_size": hf.sliding_window,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in layer_types],
        "attn_scores_soft_cap": cap(hf.attn_logit_softcapping),
        "output_logits_soft_cap": cap(hf.final_logit_softcapping),
        "default_prepend_bos": True,
    }


def _converters(architecture: str):
    """(HF config -> TransformerLens config dict, TransformerLens' weight converter)."""
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_neox_weights,
    )

    return {
        "GPTNeoXForCausalLM": (_neox_config, convert_neox_weights),
        "Gemma2ForCausalLM": (_gemma2_config, convert_gemma_weights),
    }[architecture]


# ------------------------------------------------------------------------------- SAEs


def load_sae(
    spec: str | Path | tuple[str, str],
    *,
    device: str | None = None,
    dtype: Any = None,
    offline: bool | None = None,
) -> SAE:
    """An SAE from a local sae_lens folder, a ``(release, sae_id)`` tuple, or a
    ``"release/sae_id"`` string (split after the longest known release; see module doc)."""
    if isinstance(spec, tuple):
        release, sae_id = spec
        return load_sae_from_hub(release, sae_id, device=device, dtype=dtype, offline=offline)
    local = _local_dir(spec, slashes_mean_path=False)
    if local is not None:
        return load_sae_from_disk(local, device=device, dtype=dtype)
    return load_sae_from_hub(
        *split_sae_spec(str(spec)), device=device, dtype=dtype, offline=offline
    )


def split_sae_spec(spec: str) -> tuple[str, str]:
    """``"release/sae_id"`` -> (release, sae_id), using the longest sae_lens release name
    that prefixes ``spec``; ValueError when none does."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    releases = [r for r in get_pretrained_saes_directory() if spec.startswith(r + "/")]
    if not releases:
        raise ValueError(
            f"cannot split SAE spec {spec!r} into release and sae_id: no known sae_lens "
            "release prefixes it; pass a tuple (release, sae_id) or a local folder"
        )
    release = max(releases, key=len)
    return release, spec[len(release) + 1 :]


def load_sae_from_hub(
    release: str,
    sae_id: str,
    *,
    device: str | None = None,
    dtype: Any = None,
    offline: bool | None = None,
) -> SAE:
    """``SAE.from_pretrained(release, sae_id)`` (float32 unless ``dtype``)."""
    device = resolve_device(device)
    dtype_name = str(resolve_dtype(dtype, device)).removeprefix("torch.")
    instead = (
        "load it where the Hub is reachable, save it with sae.save_model('DIR'), and pass "
        "load_sae('DIR') (a folder with cfg.json and sae_weights.safetensors)"
    )
    with _from_hub(f"SAE {release}/{sae_id}", instead, offline):
        from sae_lens import SAE

        return SAE.from_pretrained(release, sae_id, device=device, dtype=dtype_name).eval()


def load_sae_from_disk(path: str | Path, *, device: str | None = None, dtype: Any = None) -> SAE:
    """An SAE saved in sae_lens' disk format (``SAE.save_model``). No network."""
    path = Path(path).expanduser()
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not an sae_lens SAE folder (no cfg.json; write one with "
            "sae.save_model(path))"
        )
    from sae_lens import SAE

    device = resolve_device(device)
    dtype_name = None if dtype is None else str(resolve_dtype(dtype, device)).removeprefix("torch.")
    return SAE.load_from_disk(path, device=device, dtype=dtype_name).eval()


# ---------------------------------------------------------------------------- presets


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
        :class:`pytest_qdm.data.TokenSet`."""
        from .data import load_tokens

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
) -> LoadedPreset:
    """Load a preset's model and SAE(s). The model comes first, so an offline miss names it.

    ``dtype`` is the model's (default: the preset's for the device); SAEs load in float32.
    ``second_sae=False`` skips the second-layer SAE.
    """
    preset = name if isinstance(name, Preset) else get_preset(name)
    device = resolve_device(device)
    if preset.model == "tiny":
        from .zoo import load_tiny_saes

        model = load_model("tiny", device=device, dtype=dtype)
        saes = dict(load_tiny_saes(device=device))
    else:
        model = load_model(
            preset.model,
            device=device,
            dtype=resolve_dtype(dtype, device, preset),
            offline=offline,
        )
        specs = {preset.hook_name: preset.sae_id}
        if second_sae and preset.second_sae_id is not None:
            specs[preset.second_hook_name] = preset.second_sae_id
        saes = {
            hook: load_sae((preset.sae_release, sae_id), device=device, offline=offline)
            for hook, sae_id in specs.items()
        }
    if not second_sae:
        saes = {preset.hook_name: saes[preset.hook_name]}
    return LoadedPreset(preset=preset, model=model, sae=saes[preset.hook_name], saes=saes)
