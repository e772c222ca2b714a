"""SAEs from a local sae_lens folder or the Hub (``release/sae_id``); never processed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_qdm.load.hub import from_hub, local_dir
from pytest_qdm.load.placement import resolve_device, resolve_dtype

if TYPE_CHECKING:
    from sae_lens import SAE


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
    local = local_dir(spec, slashes_mean_path=False)
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
        "--qdm-sae DIR, or load_sae('DIR') in Python (a folder with cfg.json and "
        "sae_weights.safetensors)"
    )
    with from_hub(f"SAE {release}/{sae_id}", instead, offline):
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
