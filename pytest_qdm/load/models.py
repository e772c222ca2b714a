"""Language models as HookedTransformers or TransformerBridges: the bundled one, a local
checkpoint folder or ``.gguf`` file, a Hub name (:func:`load_model`), and a compressed
checkpoint as a candidate (:func:`load_candidate`). SAEs load in :mod:`~pytest_qdm.load.saes`,
presets in :mod:`~pytest_qdm.load.subject`; the network and the local-or-Hub rule are
:mod:`~pytest_qdm.load.hub`'s (offline: one line at once, the local cache still works).

Weights are never processed: no layer-norm folding, no centring, no value-bias folding
(docs/definitions.md, "Weight processing"), so compression rounds the checkpoint's own numbers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_qdm.load.backends import bridge_from_hf, check_backend, choose_backend, hooked_from_hf
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
from pytest_qdm.load.placement import Placement, plan_device_map, resolve_device, resolve_dtype
from pytest_qdm.load.presets import packaged_model, preset_for_model
from pytest_qdm.zoo import tiny

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def load_model(
    name_or_path: str | Path,
    placement: Placement | None = None,
    *,
    offline: bool | None = None,
    cache_dir: str | Path | None = None,
    **where: Any,
) -> HookedTransformer:
    """A HookedTransformer with unprocessed weights: ``"tiny"`` (bundled), a local Hugging
    Face checkpoint folder, a ``.gguf`` file (dequantized by transformers once, then read from
    its safetensors copy under ``cache_dir``: :mod:`pytest_qdm.load.gguf`), or a Hub model
    name (see the module doc for the rule; "tiny" always means the bundled model, "./tiny" a
    folder). ``placement``, or its fields as keywords (``device``, ``dtype``, ``backend``,
    ``device_map``, ``max_memory``): see :class:`~pytest_qdm.load.placement.Placement`.

    ``backend="bridge"`` (or an architecture outside ``SUPPORTED_ARCHITECTURES`` that
    TransformerLens' TransformerBridge supports): the transformers model itself, wrapped in a
    ``TransformerBridge`` (same hook names, no weight processing); ``device_map`` /
    ``max_memory`` go to transformers' ``from_pretrained`` (a model bigger than one device)
    and imply the bridge. See :func:`load_model_from_disk`."""
    placement = Placement.given(placement, where)
    check_backend(placement.backend)
    if name_or_path == "tiny" and placement.backend is None and not placement.split:
        model = _load_tiny(resolve_device(placement.device))
        if placement.dtype is None:
            return model
        return model.to(resolve_dtype(placement.dtype, str(model.cfg.device)))
    file = packaged_model(name_or_path)
    if file.suffix == ".gguf" and file.is_file():
        return load_checkpoint(file, placement, path="dequantize", cache_dir=cache_dir)[0]
    local = local_dir(name_or_path)
    if name_or_path == "tiny":  # the bundled model's folder, through the bridge
        local = tiny.weights_dir()
    if local is not None:
        return load_model_from_disk(local, placement)
    return load_model_from_hub(str(name_or_path), placement, offline=offline)


def _load_tiny(device: str) -> HookedTransformer:
    """The bundled qdm-tiny (:mod:`pytest_qdm.zoo.tiny`), named as such."""
    tiny.require(tiny.weights_dir() / tiny.MODEL_CONFIG_FILE)
    tiny.require(tiny.weights_dir() / tiny.MODEL_WEIGHTS_FILE)
    model = load_model_from_disk(tiny.weights_dir(), device=device)
    model.cfg.model_name = tiny.TINY_MODEL_NAME
    return model


def load_model_from_hub(
    name: str, placement: Placement | None = None, *, offline: bool | None = None, **where: Any
) -> HookedTransformer:
    """Download (or take from the cache) ``name`` and load it without weight processing.

    Names (or aliases) in TransformerLens' official list go through
    ``from_pretrained_no_processing``; any other Hub repo (e.g. a user's compressed
    checkpoint), and every name with ``backend="bridge"`` or a ``device_map``, is downloaded
    (json, safetensors, tokenizer files) and read by :func:`load_model_from_disk`.
    """
    placement = Placement.given(placement, where)
    check_backend(placement.backend)
    bridged = placement.backend == "bridge" or placement.split
    device = resolve_device(placement.device)
    torch_dtype = resolve_dtype(placement.dtype, device, preset_for_model(name))
    with from_hub(f"model {name!r}", model_advice(name), offline), quiet_deprecations():
        from transformer_lens import HookedTransformer
        from transformer_lens.loading_from_pretrained import make_model_alias_map

        if bridged or name.lower() not in make_model_alias_map():
            from huggingface_hub import snapshot_download

            patterns = ["*.json", "*.safetensors", "tokenizer.model"]
            folder = snapshot_download(name, allow_patterns=patterns)
            resolved = replace(placement, device=device, dtype=torch_dtype)
            return load_model_from_disk(folder, resolved)
        model = HookedTransformer.from_pretrained_no_processing(
            name, device=device, dtype=torch_dtype
        )
    return model.eval()


def load_candidate(
    name_or_path: str | Path,
    placement: Placement | None = None,
    *,
    offline: bool | None = None,
    path: str | None = None,
    tokenizer: Any = None,
    cache_dir: str | Path | None = None,
    **where: Any,
) -> tuple[Any, CheckpointInfo, str]:
    """A compressed checkpoint (local folder, ``.gguf`` file or Hub repo), what was read
    about its format, and its path (``path``: force ``dequantize`` or ``forward``; None:
    the scheme's own): on the dequantize path a HookedTransformer of the dequantized
    weights (a TransformerBridge with ``backend="bridge"`` or for an architecture only the
    bridge supports: the reference's backend), on the forward path a TransformerBridge
    around the deployed model. ``tokenizer`` (e.g. the reference's): the forward path's, or
    the bridge's, where the folder has none. ``placement`` (or its fields as keywords), with
    ``device_map`` / ``max_memory`` for a dense checkpoint split across devices
    (:func:`load_model_from_disk`)."""
    placement = Placement.given(placement, where)
    file = Path(str(name_or_path)).expanduser()
    local = file if file.is_file() else local_dir(name_or_path)  # local_dir refuses a file
    options = dict(path=path, tokenizer=tokenizer, cache_dir=cache_dir)
    if local is not None:
        return load_checkpoint(local, placement, **options)
    name = str(name_or_path)
    instead = (
        f"`hf download {name} --local-dir DIR` where the Hub is reachable, "
        "then --qdm-candidate DIR (any Hugging Face checkpoint folder or .gguf file works)"
    )
    with from_hub(f"candidate {name!r}", instead, offline):
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.gguf", "qmodel.pt"]
        folder = snapshot_download(name, allow_patterns=patterns)
    return load_checkpoint(folder, placement, **options)


def load_model_from_disk(
    path: str | Path, placement: Placement | None = None, **where: Any
) -> HookedTransformer:
    """A local Hugging Face checkpoint folder (``save_pretrained``: config.json, weights,
    optionally tokenizer files) as a HookedTransformer. No network, no weight processing.
    Architectures: see ``SUPPORTED_ARCHITECTURES``; the dimensions are read from the
    folder's config, so the model need not be in TransformerLens' list. A quantized
    checkpoint (bitsandbytes, torchao, compressed-tensors, GGUF, HQQ) is dequantized by its
    format's own library (:mod:`pytest_qdm.load.checkpoints`).

    Backends (:mod:`pytest_qdm.load.backends`): ``"hooked"`` (the default for
    ``SUPPORTED_ARCHITECTURES``) converts the weights into a HookedTransformer; ``"bridge"``
    (the default for every other decoder architecture TransformerLens' TransformerBridge
    supports) keeps the transformers model and wraps it in a ``TransformerBridge``: the same
    hook names, the Hugging Face parameter names and [out, in] weights that compression
    rounds. ``device_map`` / ``max_memory`` (a dense checkpoint, bridge backend) are passed
    to transformers' ``from_pretrained``, which places the model over several devices."""
    return load_checkpoint(path, Placement.given(placement, where), path="dequantize")[0]


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
    placement: Placement | None = None,
    *,
    path: str | None = None,
    tokenizer: Any = None,
    cache_dir: str | Path | None = None,
    **where: Any,
) -> tuple[Any, CheckpointInfo, str]:
    """:func:`load_candidate` of a local folder or ``.gguf`` file (``placement``: see
    :func:`load_model_from_disk`; ``cache_dir``: where a GGUF's dequantized copy is kept)."""
    placement = Placement.given(placement, where)
    backend, placed = placement.backend, placement.split
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
    if info.architecture and info.quant_method != "gguf":
        backend = choose_backend(text_architecture(info.architecture), folder, backend, placed)
    _refuse_unsupported(folder, info, chosen, placed)
    dense = info.quant_method == "none"
    if chosen == "served":
        from pytest_qdm.load.served import ServedModel

        return ServedModel(info.location), info, chosen
    device = resolve_device(placement.device)
    torch_dtype = resolve_dtype(placement.dtype, device)
    if chosen == "forward":
        hf_model = deployed_model(info, torch_dtype, device)
    elif backend == "bridge" and dense:
        hf_model = _dense_hf_model(info.folder, torch_dtype, placement)
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


def _dense_hf_model(folder: Path, dtype, placement: Placement):
    """A dense checkpoint as a transformers model, placed by ``device_map`` / ``max_memory``
    (planned before loading: :func:`pytest_qdm.load.placement.plan_device_map`), else on the
    CPU; eager attention, as the bridge runs it."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    kwargs["attn_implementation"] = "eager"
    if placement.split:
        kwargs["device_map"] = plan_device_map(
            folder, dtype, placement.device_map, placement.max_memory
        )
    with quiet_deprecations():
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    return model.eval()
