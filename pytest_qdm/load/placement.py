"""Where a model loads: the :class:`Placement` every loader takes (device, dtype, backend, a
split over devices), resolved device and dtype, and a split decided before any weight loads.

A placement strategy ("auto", "balanced", "balanced_low_0", "sequential") is resolved to
an explicit device map by accelerate's planner on an empty (meta-device) copy of the
model, the way transformers' ``from_pretrained`` resolves it, and that map is what the
weights then load with. A map that offloads part of the model (to "disk", or to "cpu"
beside accelerators) is refused in one line: the TransformerBridge runs resident weights
only, and the audit swaps compressed weights into the resident tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from pytest_qdm.load.presets import Preset

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
GiB = 1024**3


@dataclass(frozen=True)
class Placement:
    """Where and how a model loads. ``device`` None: cuda if available, else cpu; ``dtype``
    None: the preset's for the device, else float32; ``backend`` "hooked", "bridge" or None
    (by architecture); ``device_map`` / ``max_memory``: a dense checkpoint split across
    devices by transformers' ``from_pretrained`` (they imply the bridge)."""

    device: str | None = None
    dtype: Any = None
    backend: str | None = None
    device_map: Any = None
    max_memory: dict | None = None

    @classmethod
    def given(cls, placement: Placement | None, where: dict[str, Any]) -> Placement:
        """``placement`` (default: none given) with the fields named in ``where`` replaced, as
        the loaders take them (``load_model(name, device="cpu")``)."""
        return replace(placement or cls(), **where)

    @property
    def split(self) -> bool:
        """Whether the model is split across devices (a ``device_map`` or ``max_memory``)."""
        return self.device_map is not None or self.max_memory is not None


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


def plan_device_map(
    folder: Path, dtype: torch.dtype, device_map: Any, max_memory: dict | None
) -> dict[str, str | int]:
    """An explicit ``{module: device}`` map for the checkpoint in ``folder``: ``device_map``
    itself where it is a dict, else the strategy (default "auto") planned under
    ``max_memory``. ValueError (one line) where it would offload any module."""
    mapped = list(device_map.values()) if isinstance(device_map, dict) else []
    _check_devices_exist([*(max_memory or {}), *mapped])
    if isinstance(device_map, dict):
        planned = dict(device_map)
    else:
        planned = _planned(folder, dtype, device_map or "auto", max_memory)
    _check_resident(planned, folder, max_memory)
    return planned


def _planned(folder: Path, dtype, strategy: str, max_memory: dict | None) -> dict:
    if strategy not in STRATEGIES:
        raise ValueError(f"device_map must be a dict or one of {STRATEGIES}, got {strategy!r}")
    from accelerate import infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory, get_max_memory
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    no_split = sorted(model._no_split_modules or [])
    max_memory = dict(max_memory) if max_memory else None  # accelerate converts it in place
    if strategy == "sequential":
        memory = get_max_memory(max_memory)
    else:
        memory = get_balanced_memory(
            model,
            max_memory=max_memory,
            no_split_module_classes=no_split,
            dtype=dtype,
            low_zero=strategy == "balanced_low_0",
        )
    return dict(
        infer_auto_device_map(
            model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype
        )
    )


def _check_devices_exist(devices: list) -> None:
    """Every GPU that ``devices`` (max_memory's keys, a map's values) names exists here."""
    import torch

    count = torch.cuda.device_count()
    missing = sorted({i for i in map(_gpu_index, devices) if i is not None and i >= count})
    if missing:
        raise ValueError(
            f"device_map / max_memory name GPU(s) {missing}, but this machine has {count} "
            "CUDA device(s); name only those it has, or 'cpu'"
        )


def _gpu_index(device) -> int | None:
    import torch

    if isinstance(device, int):
        return device
    return torch.device(str(device)).index or 0 if str(device).startswith("cuda") else None


def _check_resident(planned: dict, folder: Path, max_memory: dict | None) -> None:
    devices = {str(d) for d in planned.values()}
    offloaded = devices & {"disk", "meta"}
    if "cpu" in devices and devices - {"cpu", "disk", "meta"}:
        offloaded.add("cpu")  # accelerate offloads CPU entries of a map with accelerators
    if not offloaded:
        return
    modules = [m for m, d in planned.items() if str(d) in offloaded]
    what = f"{len(modules)} module(s) ({', '.join(modules[:3])}{', ...' * (len(modules) > 3)})"
    limit = f" under max_memory {max_memory}" if max_memory else ""
    raise ValueError(
        f"{str(folder)!r} does not fit its devices{limit}: "
        f"{'the whole model' if modules == [''] else what} would be offloaded to "
        f"{' / '.join(sorted(offloaded))}, which the TransformerBridge cannot run; give more "
        "devices or memory (--qdm-max-memory), or a smaller dtype (--qdm-dtype)"
    )
