"""The run's inputs digested from their files alone, so a cache hit loads nothing heavy.

:func:`sources_key` hashes what the gate would read (model, SAE and candidate files and the
path each candidate takes, the corpus, the options that shape the protocol, library versions) without importing torch,
loading a model or tokenizing text. The result cache maps this key to the full
:class:`~pytest_qdm.schema.gate.Fingerprint` of the run that computed it; a later run with
the same key reads the report without loading anything. Sources that are not local files
(Hub models or SAEs, ``hf:`` datasets) give ``None``: such runs take the full fingerprint.
The builtin corpus is identified by the interpreter's standard library (paths, sizes and
modification times of the files it is read from), not by parsing it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from pytest_qdm.options import QdmOptions

# Options that only judge or present a result, never change it.
_PRESENTATION = {
    "min_survived",
    "max_damaged",
    "max_ppl_change",
    "max_kl",
    "min_top1",
    "gate_on",
    "baseline",
    "claims",  # measured after the protocol, cached on their own (claims/session.py)
    "baseline_checks",
    "update_baseline",
    "report_dir",
    "cache",
    "cache_dir",
    "plots",
    "progress",
    "verbose",
    "candidate_path",  # in each candidate's part, as the path it resolves to
    "two_phase",  # same numbers either way (stream/two_phase.py)
    "two_phase_dir",
}
_WEIGHT_FILES = ("*.json", "*.safetensors", "*.bin", "*.gguf", "*.pt", "tokenizer.model")


def sources_key(options: QdmOptions) -> str | None:
    """sha256 of the run's inputs from files and options, or None when one is not local."""
    parts = [
        _model_files(options.model),
        _folder_files(options.sae) if options.sae else "preset-sae",
        _corpus(options),
        *(_candidate(c, options.candidate_path) for c in options.candidates),
    ]
    if any(p is None for p in parts):
        return None
    from pytest_qdm.gate.baseline import library_versions

    settings = options.model_dump(mode="json", exclude=_PRESENTATION)
    if options.sensitivity:  # the plan's survival target is a gate bound's
        settings["sensitivity_target"] = options.sensitivity_target
    payload = json.dumps([parts, settings, library_versions()], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _model_files(spec: str | None) -> str | None:
    if spec == "tiny":
        from pytest_qdm.zoo.tiny import weights_dir

        return _digest_files(sorted(weights_dir().rglob("*")))
    return _folder_files(spec)


def _folder_files(spec: str | None) -> str | None:
    """Digest of a local checkpoint folder's (or file's) weight and config files."""
    from pytest_qdm.load.hub import local_dir

    path = Path(str(spec)).expanduser()
    if path.is_file():
        return _digest_files([path])
    folder = local_dir(spec)
    if folder is None:
        return None  # a Hub name: its files are known only after resolving it
    return _digest_files(sorted(f for pattern in _WEIGHT_FILES for f in folder.rglob(pattern)))


def _candidate(spec: str, forced: str | None) -> str | None:
    """A candidate's files and the path it is audited by (a forced path, else its scheme's:
    a cached result of the other path is not reused)."""
    files = _folder_files(spec)
    if files is None:
        return None
    from pytest_qdm.load.checkpoints import choose_path, inspect_checkpoint

    return f"{files}:{choose_path(inspect_checkpoint(spec), forced)}"


def _corpus(options: QdmOptions) -> str | None:
    source = options.token_source or "builtin"
    if isinstance(source, dict):
        parts = [(label, _source(each)) for label, each in source.items()]
        return None if any(d is None for _, d in parts) else repr(parts)
    return _source(source)


def _source(source: str) -> str | None:
    from pytest_qdm.load.corpus import BUILTIN_SOURCES, builtin_source_files

    if source in BUILTIN_SOURCES:
        domain = BUILTIN_SOURCES[source]
        return f"builtin:{domain}:{sys.version}:" + _digest_stats(builtin_source_files(domain))
    path = Path(source).expanduser()
    return _digest_files([path]) if path.is_file() else None


def _digest_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(f"{path.name}:{path.stat().st_size}:".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _digest_stats(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
