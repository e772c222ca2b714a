"""Language models as HookedTransformers or TransformerBridges: the bundled one, a local
checkpoint folder or ``.gguf`` file, a Hub name (:func:`load_model`), and a compressed
checkpoint as a candidate (:func:`load_candidate`). SAEs load in :mod:`~pytest_qdm.load.saes`,
presets in :mod:`~pytest_qdm.load.subject`; the network and the local-or-Hub rule are
:mod:`~pytest_qdm.load.hub`'s (offline: one line at once, the local cache still works).

Weights are never processed: no layer-norm folding, no centring, no value-bias folding
(docs/definitions.md, "Weight processing"), so compression rounds the checkpoint's own numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_qdm.load.architectures import SUPPORTED_ARCHITECTURES, _converters
from pytest_qdm.load.checkpoints import (
    CheckpointInfo,
    choose_path,
    deployed_model,
    dequantized_model,
    inspect_checkpoint,
)
from pytest_qdm.load.hub import from_hub, local_dir, model_advice, quiet_deprecations
from pytest_qdm.load.multimodal import (
    TEXT_DECODERS,
    explained_load_failure,
    text_architecture,
    text_decoder,
)
from pytest_qdm.load.placement import plan_device_map
from pytest_qdm.load.presets import Preset, packaged_model, preset_for_model
from pytest_qdm.zoo import tiny

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer


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


# ----------------------------------------------------------------------------- models


def load_model(
    name_or_path: str | Path,
    *,
    device: str | None = None,
    dtype: Any = None,
    offline: bool | None = None,
    backend: str | None = None,
    device_map: Any = None,
    max_memory: dict | None = None,
    cache_dir: str | Path | None = None,
) -> HookedTransformer:
    """A HookedTransformer with unprocessed weights: ``"tiny"`` (bundled), a local Hugging
    Face checkpoint folder, a ``.gguf`` file (dequantized by transformers once, then read from
    its safetensors copy under ``cache_dir``: :mod:`pytest_qdm.load.gguf`), or a Hub model name (see the module doc for the rule; "tiny"
    always means the bundled model, "./tiny" a folder). Device None: cuda if available,
    else cpu; dtype None: the dtype of a preset using this model, else float32.

    ``backend="bridge"`` (or an architecture outside ``SUPPORTED_ARCHITECTURES`` that
    TransformerLens' TransformerBridge supports): the transformers model itself, wrapped in a
    ``TransformerBridge`` (same hook names, no weight processing); ``device_map`` /
    ``max_memory`` go to transformers' ``from_pretrained`` (a model bigger than one device)
    and imply the bridge. See :func:`load_model_from_disk`."""
    check_backend(backend)
    placed = device_map is not None or max_memory is not None
    if name_or_path == "tiny" and backend is None and not placed:
        model = _load_tiny(resolve_device(device))
        return model if dtype is None else model.to(resolve_dtype(dtype, str(model.cfg.device)))
    file = packaged_model(name_or_path)
    if file.suffix == ".gguf" and file.is_file():
        options = dict(device=device, dtype=dtype, backend=backend, cache_dir=cache_dir)
        return load_checkpoint(file, path="dequantize", **options)[0]
    local = local_dir(name_or_path)
    if name_or_path == "tiny":  # the bundled model's folder, through the bridge
        local = tiny.weights_dir()
    placement = dict(backend=backend, device_map=device_map, max_memory=max_memory)
    if local is not None:
        return load_model_from_disk(local, device=device, dtype=dtype, **placement)
    return load_model_from_hub(
        str(name_or_path), device=device, dtype=dtype, offline=offline, **placement
    )


def _load_tiny(device: str) -> HookedTransformer:
    """The bundled qdm-tiny (:mod:`pytest_qdm.zoo.tiny`), named as such."""
    tiny.require(tiny.weights_dir() / tiny.MODEL_CONFIG_FILE)
    tiny.require(tiny.weights_dir() / tiny.MODEL_WEIGHTS_FILE)
    model = load_model_from_disk(tiny.weights_dir(), device=device)
    model.cfg.model_name = tiny.TINY_MODEL_NAME
    return model


def load_model_from_hub(
    name: str,
    *,
    device: str | None = None,
    dtype: Any = None,
    offline: bool | None = None,
    backend: str | None = None,
    device_map: Any = None,
    max_memory: dict | None = None,
) -> HookedTransformer:
    """Download (or take from the cache) ``name`` and load it without weight processing.

    Names (or aliases) in TransformerLens' official list go through
    ``from_pretrained_no_processing``; any other Hub repo (e.g. a user's compressed
    checkpoint), and every name with ``backend="bridge"`` or a ``device_map``, is downloaded
    (json, safetensors, tokenizer files) and read by :func:`load_model_from_disk`.
    """
    check_backend(backend)
    placement = dict(backend=backend, device_map=device_map, max_memory=max_memory)
    bridged = backend == "bridge" or device_map is not None or max_memory is not None
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device, preset_for_model(name))
    with from_hub(f"model {name!r}", model_advice(name), offline), quiet_deprecations():
        from transformer_lens import HookedTransformer
        from transformer_lens.loading_from_pretrained import make_model_alias_map

        if bridged or name.lower() not in make_model_alias_map():
            from huggingface_hub import snapshot_download

            patterns = ["*.json", "*.safetensors", "tokenizer.model"]
            folder = snapshot_download(name, allow_patterns=patterns)
            return load_model_from_disk(folder, device=device, dtype=torch_dtype, **placement)
        model = HookedTransformer.from_pretrained_no_processing(
            name, device=device, dtype=torch_dtype
        )
    return model.eval()


def load_candidate(
    name_or_path: str | Path,
    *,
    device: str | None = None,
    dtype: Any = None,
    offline: bool | None = None,
    path: str | None = None,
    tokenizer: Any = None,
    backend: str | None = None,
    device_map: Any = None,
    max_memory: dict | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Any, CheckpointInfo, str]:
    """A compressed checkpoint (local folder, ``.gguf`` file or Hub repo), what was read
    about its format, and its path (``path``: force ``dequantize`` or ``forward``; None:
    the scheme's own): on the dequantize path a HookedTransformer of the dequantized
    weights (a TransformerBridge with ``backend="bridge"`` or for an architecture only the
    bridge supports: the reference's backend), on the forward path a TransformerBridge
    around the deployed model. ``tokenizer`` (e.g. the reference's): the forward path's, or
    the bridge's, where the folder has none. ``device_map`` / ``max_memory``: a dense
    checkpoint split across devices (:func:`load_model_from_disk`)."""
    file = Path(str(name_or_path)).expanduser()
    local = file if file.is_file() else local_dir(name_or_path)  # local_dir refuses a file
    options = dict(device=device, dtype=dtype, path=path, tokenizer=tokenizer, backend=backend)
    options.update(device_map=device_map, max_memory=max_memory, cache_dir=cache_dir)
    if local is not None:
        return load_checkpoint(local, **options)
    name = str(name_or_path)
    instead = (
        f"`hf download {name} --local-dir DIR` where the Hub is reachable, "
        "then --qdm-candidate DIR (any Hugging Face checkpoint folder or .gguf file works)"
    )
    with from_hub(f"candidate {name!r}", instead, offline):
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.gguf", "qmodel.pt"]
        folder = snapshot_download(name, allow_patterns=patterns)
    return load_checkpoint(folder, **options)


def load_model_from_disk(
    path: str | Path,
    *,
    device: str | None = None,
    dtype: Any = None,
    backend: str | None = None,
    device_map: Any = None,
    max_memory: dict | None = None,
) -> HookedTransformer:
    """A local Hugging Face checkpoint folder (``save_pretrained``: config.json, weights,
    optionally tokenizer files) as a HookedTransformer. No network, no weight processing.
    Architectures: see ``SUPPORTED_ARCHITECTURES``; the dimensions are read from the
    folder's config, so the model need not be in TransformerLens' list. A quantized
    checkpoint (bitsandbytes, torchao, compressed-tensors, GGUF, HQQ) is dequantized by its
    format's own library (:mod:`pytest_qdm.load.checkpoints`).

    Backends: ``"hooked"`` (the default for ``SUPPORTED_ARCHITECTURES``) converts the
    weights into a HookedTransformer; ``"bridge"`` (the default for every other decoder
    architecture TransformerLens' TransformerBridge supports: :func:`bridge_architectures`)
    keeps the transformers model and wraps it in a ``TransformerBridge``: the same hook
    names, the Hugging Face parameter names and [out, in] weights that compression rounds.
    ``device_map`` / ``max_memory`` (a dense checkpoint, bridge backend) are passed to
    transformers' ``from_pretrained``, which places the model over several devices."""
    return load_checkpoint(
        path,
        device=device,
        dtype=dtype,
        path="dequantize",
        backend=backend,
        device_map=device_map,
        max_memory=max_memory,
    )[0]


def _refuse_unsupported(folder: Path, info: CheckpointInfo, chosen: str, placed: bool) -> None:
    """ValueError (one line) for a path or placement this checkpoint cannot take."""
    if info.architecture in TEXT_DECODERS and (chosen == "forward" or placed):
        raise ValueError(
            f"{str(folder)!r}: a multimodal {info.architecture} is audited through its text "
            "decoder, dequantized on one device; the forward path and device_map / "
            "max_memory are not supported for it (use the dequantize path, one device)"
        )
    if placed and (info.quant_method != "none" or chosen == "forward"):
        raise ValueError(
            f"{str(folder)!r}: device_map / max_memory are for a dense checkpoint loaded as "
            f"the reference (backend='bridge'); this one is {info.quant_method or chosen!r}"
        )


def load_checkpoint(
    location: str | Path,
    *,
    device: str | None = None,
    dtype: Any = None,
    path: str | None = None,
    tokenizer: Any = None,
    backend: str | None = None,
    device_map: Any = None,
    max_memory: dict | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Any, CheckpointInfo, str]:
    """:func:`load_candidate` of a local folder or ``.gguf`` file (``backend``,
    ``device_map``, ``max_memory``: see :func:`load_model_from_disk`; ``cache_dir``: where a
    GGUF's dequantized copy is kept)."""
    check_backend(backend)
    folder = Path(location).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"local model folder {str(folder)!r} does not exist")
    if (
        folder.is_dir()
        and not (folder / "config.json").is_file()
        and not any(folder.glob("*.gguf"))
    ):
        raise FileNotFoundError(
            f"{str(folder)!r} has no config.json; expected a Hugging Face checkpoint folder "
            "(written by model.save_pretrained)"
        )
    info = inspect_checkpoint(folder)
    chosen = choose_path(info, path)
    placed = device_map is not None or max_memory is not None
    if info.architecture and info.quant_method != "gguf":
        backend = choose_backend(text_architecture(info.architecture), folder, backend, placed)
    _refuse_unsupported(folder, info, chosen, placed)
    dense = info.quant_method == "none"
    if chosen == "served":
        from pytest_qdm.load.served import ServedModel

        return ServedModel(info.location), info, chosen
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if chosen == "forward":
        hf_model = deployed_model(info, torch_dtype, device)
    elif backend == "bridge" and dense:
        hf_model = _dense_hf_model(info.folder, torch_dtype, device_map, max_memory)
    else:
        with explained_load_failure(info):
            hf_model = dequantized_model(info, torch_dtype, cache_dir)
    hf_model = text_decoder(hf_model)
    backend = choose_backend(type(hf_model).__name__, folder, backend, placed)
    files = info.folder  # config and tokenizer; a GGUF's are in its dequantized copy
    if info.quant_method == "gguf":
        from pytest_qdm.load.gguf import dequantized_folder

        files = dequantized_folder(info.location, cache_dir)
    has_tokenizer = any((files / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
    fallback, tokenizer = tokenizer, None
    if has_tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(files, local_files_only=True, add_bos_token=True)
    if chosen == "forward" or backend == "bridge":
        if tokenizer is None and fallback is None:
            which = "the forward path's" if chosen == "forward" else "the backend's"
            raise ValueError(
                f"{str(folder)!r} has no tokenizer (tokenizer.json or tokenizer.model), which "
                f"{which} TransformerBridge needs; save the tokenizer beside the weights, or "
                "pass one (the reference's: tokenizer=model.tokenizer)"
            )
        if chosen != "forward" and not placed:  # else on its device, or where the map put it
            hf_model = hf_model.to(device)
        return bridge_from_hf(hf_model, files, tokenizer or fallback), info, chosen
    name = info.location.stem if info.gguf_file else folder.name
    return hooked_from_hf(hf_model, name, tokenizer, device, torch_dtype), info, chosen


BACKENDS = ("hooked", "bridge")


def check_backend(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")


def bridge_architectures() -> tuple[str, ...]:
    """The decoder (causal LM) architectures the installed TransformerLens'
    TransformerBridge has an adapter for."""
    from transformer_lens.factories.architecture_adapter_factory import (
        SUPPORTED_ARCHITECTURES as BRIDGED,
    )

    decoders = (n for n in BRIDGED if n.endswith(("ForCausalLM", "LMHeadModel")))
    return tuple(sorted(n for n in decoders if not n.startswith("Bert")))


def choose_backend(
    architecture: str | None, path: str | Path, backend: str | None, placed: bool = False
) -> str:
    """The backend ``architecture`` loads with: ``backend`` where given and possible, else
    "hooked" for ``SUPPORTED_ARCHITECTURES`` (unless ``placed``: a device_map or max_memory
    was given), "bridge" for the bridge's other decoders; ValueError (one line, listing
    both) for anything else."""
    if backend == "hooked" and placed:
        raise ValueError("device_map / max_memory need backend='bridge' (or None)")
    if architecture in SUPPORTED_ARCHITECTURES and backend != "bridge" and not placed:
        return "hooked"
    if backend != "hooked" and architecture in bridge_architectures():
        return "bridge"
    hooked = ", ".join(SUPPORTED_ARCHITECTURES)
    bridged = ", ".join(a for a in bridge_architectures() if a not in SUPPORTED_ARCHITECTURES)
    raise ValueError(
        f"{str(path)!r}: architecture {architecture!r} is not supported by "
        f"load_model_from_disk{'' if backend is None else f' with backend={backend!r}'}; "
        f"supported: {hooked} (HookedTransformer or TransformerBridge), and through "
        f"TransformerLens' TransformerBridge: {bridged}"
    )


def _dense_hf_model(folder: Path, dtype, device_map: Any, max_memory: dict | None):
    """A dense checkpoint as a transformers model, placed by ``device_map`` / ``max_memory``
    (planned before loading: :func:`pytest_qdm.load.placement.plan_device_map`), else on the
    CPU; eager attention, as the bridge runs it."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    kwargs["attn_implementation"] = "eager"
    if device_map is not None or max_memory is not None:
        kwargs["device_map"] = plan_device_map(folder, dtype, device_map, max_memory)
    with quiet_deprecations():
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    return model.eval()


def hooked_from_hf(hf_model, name: str, tokenizer, device: str, dtype) -> HookedTransformer:
    """A transformers causal LM as a HookedTransformer, weights converted by TransformerLens'
    own converter for its architecture and never processed."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    architecture = type(hf_model).__name__
    to_config, convert = _converters(architecture)
    cfg = HookedTransformerConfig(
        **to_config(hf_model.config),
        original_architecture=architecture,
        model_name=name,
        tokenizer_name=None,  # never fetched: the tokenizer comes from the folder
        init_weights=False,
        device=device,
        dtype=dtype,
    )
    with quiet_deprecations():
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    # load_and_process_state_dict with every processing step off, in one load_state_dict
    # (TransformerLens loads key by key, walking the whole module tree for each: a minute
    # for a 30-layer model on a loaded CPU)
    model.load_state_dict(model.fill_missing_keys(convert(hf_model, cfg)), strict=False)
    model.move_model_modules_to_device()
    return model.eval()


def bridge_from_hf(hf_model, folder: Path, tokenizer):
    """A transformers causal LM, run as it is (quantized modules and their kernels), with
    TransformerLens hook names: a ``TransformerBridge`` (no weight processing, so its hooks
    read what an unprocessed HookedTransformer reads)."""
    with quiet_deprecations():
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(
            str(folder), hf_model=hf_model, tokenizer=tokenizer, dtype=hf_model.dtype
        )
    return bridge.eval()


# ------------------------------------------------------------------------------- SAEs


# ---------------------------------------------------------------------------- presets
