"""Everything the gate can check before any model loads, each failure one line.

Run at ``pytest_configure`` when ``--qdm-model`` is set: the model and SAE names
(:mod:`pytest_qdm.gate.specs`), the token source and budget, gate thresholds that name
conditions the run does not audit, the device, and the report, cache and baseline paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import ValidationError

from pytest_qdm.analyse.retrain_checks import check_audited
from pytest_qdm.compress.names import SCHEME_NAME
from pytest_qdm.gate.input_checks import check_input_files
from pytest_qdm.gate.specs import check_specs
from pytest_qdm.load.corpus import source_problem
from pytest_qdm.options import QdmOptions


def preflight(options: QdmOptions) -> None:
    """Raise ValueError with one line for the first problem found."""
    check_specs(options)
    check_input_files(options)
    _check_candidates(options)
    _check_dataset(options)
    _check_gated_conditions(options)
    _check_retrain(options)
    _check_device(options.device)
    _check_placement(options)
    check_writable_dir(options.report_dir, "--qdm-report-dir")
    if options.cache:
        check_writable_dir(options.cache_dir, "--qdm-cache-dir")
    if options.baseline:
        _check_baseline(Path(options.baseline), options.update_baseline)
    if options.claims:
        from pytest_qdm.claims.files import claims_of_options

        claims_of_options(options)


def _check_placement(options: QdmOptions) -> None:
    """A split reference (--qdm-device-map / --qdm-max-memory) has its node's GPUs to itself
    and, where it is on disk, fits them without offload (planned from its config alone; a
    Hub model not yet downloaded is checked when it loads)."""
    if not options.split:
        return
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun
    if ranks_here > 1:
        raise ValueError(
            f"--qdm-device-map / --qdm-max-memory with {ranks_here} ranks on this node: each "
            "rank would place its model over the same GPUs; to split a model, run one rank "
            "per node (torchrun --nproc-per-node 1), or drop the split"
        )
    from pytest_qdm.load.hub import local_dir
    from pytest_qdm.load.placement import plan_device_map, resolve_device, resolve_dtype
    from pytest_qdm.load.presets import get_preset, preset_for_model, preset_names
    from pytest_qdm.zoo.tiny import weights_dir

    preset = get_preset(options.model) if options.model in preset_names() else None
    name = preset.model if preset else options.model
    folder = weights_dir() if name == "tiny" else local_dir(name)
    if folder is not None:
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device, preset or preset_for_model(name))
        plan_device_map(folder, dtype, options.device_map, options.max_memory)


def _check_dataset(options: QdmOptions) -> None:
    from pytest_qdm.load.presets import get_preset, preset_names

    source = options.token_source
    for label, each in source.items() if isinstance(source, dict) else [(None, source)]:
        if each and (problem := source_problem(each)):
            raise ValueError(f"--qdm-dataset {label + '=' if label else ''}{problem}")
    preset = get_preset(options.model) if options.model in preset_names() else None
    context = options.context_length or (preset.context_length if preset else None)
    if options.tokens is not None and context and options.tokens < context:
        raise ValueError(
            f"--qdm-tokens {options.tokens} is less than one sequence of {context} tokens; "
            f"ask for at least {context} (or a shorter --qdm-context)"
        )


def audited_names(options: QdmOptions) -> set[str]:
    from pytest_qdm.load.checkpoints import candidate_name

    candidates = {candidate_name(path) for path in options.candidates}
    return {f"rtn-int{b}" for b in options.bits} | set(options.audited_schemes) | candidates


def _check_candidates(options: QdmOptions) -> None:
    """Each --qdm-candidate exists, is in a supported format, its library is installed and
    it can take --qdm-candidate-path; names must not collide. Only metadata is read; Hub
    ids are checked when they load."""
    from pytest_qdm.load.checkpoints import candidate_name, choose_path, inspect_checkpoint
    from pytest_qdm.load.hub import local_dir

    names: dict[str, str] = {}
    for path in options.candidates:
        name = candidate_name(path)
        if name in names:
            raise ValueError(
                f"--qdm-candidate {path!r} and {names[name]!r} would both be {name}; "
                "rename one folder"
            )
        names[name] = path
        file, info = Path(path).expanduser(), None
        try:
            if file.is_file() or local_dir(path) is not None:
                info = inspect_checkpoint(file)
                choose_path(info, options.candidate_path)
        except (OSError, ImportError, ValueError) as error:
            raise ValueError(f"--qdm-candidate: {error}") from None
        if options.split and info is not None and info.quant_method != "none":
            raise ValueError(
                f"--qdm-device-map/--qdm-max-memory split dense checkpoints only; "
                f"--qdm-candidate {path!r} is {info.quant_method} ({info.scheme}): "
                "drop the split or gate a dense copy"
            )


def _check_gated_conditions(options: QdmOptions) -> None:
    """A bound on an RTN width or scheme that the run does not audit would only fail late."""
    audited = audited_names(options)
    for gate in options.gates:
        if gate.domain is not None and gate.domain not in options.domains:
            known = ", ".join(options.domains) or "none: label them as --qdm-dataset LABEL=SOURCE"
            raise ValueError(
                f"--qdm-{gate.option.replace('_', '-')} bounds domain {gate.domain!r}, which "
                f"--qdm-dataset does not label (domains: {known})"
            )
    checks = [*options.gates, *(c for c in options.baseline_checks if c.condition)]
    for check in checks:
        name = check.condition
        if name in ("*", "candidate") or name in audited:
            continue
        if name.startswith("candidate:"):
            known = ", ".join(sorted(n for n in audited if n.startswith("candidate:"))) or "none"
            option = getattr(check, "option", "baseline_fail").replace("_", "-")
            raise ValueError(
                f"--qdm-{option} names {name}, which is not a --qdm-candidate (candidates: {known})"
            )
        bits = re.fullmatch(r"rtn-int(\d+)", name)
        if bits or SCHEME_NAME.match(name):
            fix = f"add {bits[1]} to --qdm-bits" if bits else f"add {name} to --qdm-schemes"
            option = getattr(check, "option", "baseline_fail").replace("_", "-")
            raise ValueError(f"--qdm-{option} names {name}, which this run does not audit: {fix}")


def _check_retrain(options: QdmOptions) -> None:
    """--qdm-retrain-sae trains on a condition this run audits."""
    if not options.retrain_sae:
        return
    name = options.retrained_condition
    if name is None:
        raise ValueError(
            "--qdm-retrain-sae needs --qdm-retrain-condition NAME when --qdm-match-bits is 0"
        )
    try:
        check_audited(name, audited_names(options))
    except ValueError as error:
        raise ValueError(f"--qdm-retrain-condition: {error}") from None


def _check_device(device: str | None) -> None:
    if not device or device == "cpu":
        return
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
        raise ValueError(
            f"--qdm-device {device}: torch {torch.__version__} has {build}; "
            "use --qdm-device cpu or install a CUDA build of torch"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--qdm-device {device}: MPS is not available here; use cpu")


def check_writable_dir(path: str | os.PathLike, option: str) -> None:
    """A folder that exists and is writable, or can be created; never a file."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file, not a folder; name a folder")
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(path)!r}: {str(existing)!r} is not writable")


def _check_baseline(path: Path, update: bool) -> None:
    from pytest_qdm.gate.baseline import check_schema
    from pytest_qdm.schema.gate import Baseline

    if path.is_dir():
        raise ValueError(f"--qdm-baseline {str(path)!r} is a folder; name a JSON file")
    check_writable_dir(path.parent if str(path.parent) else ".", "--qdm-baseline folder")
    if not path.exists() or update:
        return  # written (or rewritten) after the run
    try:
        baseline = Baseline.model_validate_json(path.read_text())
    except (OSError, ValueError, ValidationError) as error:
        reason = "empty" if path.exists() and not path.stat().st_size else type(error).__name__
        raise ValueError(
            f"--qdm-baseline {str(path)!r} is not a pytest-qdm baseline ({reason}); "
            "delete it or rerun with --qdm-update-baseline to rewrite it"
        ) from None
    try:
        check_schema(baseline, path)
    except ValueError as error:
        raise ValueError(f"--qdm-baseline: {error}") from None
