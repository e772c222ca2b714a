"""The claims file a team pins in its repository (TOML, docs/claims.md): a list of
``[[claim]]`` tables. A text set (``positive``, ``negative``, ``prompts``, ``texts``, each
class of a probe) is a list of strings or the path of a UTF-8 file, relative to the claims
file, with one text per non-empty line."""

from __future__ import annotations

import sys
from pathlib import Path

from pytest_qdm.claims.base import Claim
from pytest_qdm.claims.check import check_static
from pytest_qdm.claims.registry import claim_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (3.10)
    import tomli as tomllib

TEXT_FIELDS = ("positive", "negative", "prompts", "texts")


def load_claims(path: str | Path, d_sae: int | None = None) -> list[Claim]:
    """The claims of a TOML file, checked (ValueError, one line; ``d_sae``: also refuse
    feature ids outside an SAE of that width)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"claims file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"claims file {str(path)!r} is not valid TOML: {error}") from None
    extra = sorted(set(data) - {"claim"})
    if extra or not isinstance(data.get("claim"), list) or not data["claim"]:
        raise ValueError(
            f"claims file {str(path)!r}: expected [[claim]] tables only"
            + (f", found {extra[0]!r}" if extra else ", found none")
        )
    claims = [
        claim_from_dict(_with_texts(table, path.parent), f"{path.name}: claim")
        for table in data["claim"]
    ]
    check_static(claims, d_sae)
    return claims


def _with_texts(table: dict, folder: Path) -> dict:
    """``table`` with every text set given as a file path replaced by the file's texts."""
    table = dict(table)
    name = table.get("id", "?")
    for field in TEXT_FIELDS:
        if isinstance(table.get(field), str):
            table[field] = read_texts(folder / table[field], f"claim {name!r}: {field}")
    if isinstance(table.get("classes"), dict):
        table["classes"] = {
            label: read_texts(folder / texts, f"claim {name!r}: classes.{label}")
            if isinstance(texts, str)
            else texts
            for label, texts in table["classes"].items()
        }
    return table


def read_texts(path: Path, what: str) -> list[str]:
    """One text per non-empty line of a UTF-8 file."""
    if not path.is_file():
        raise ValueError(f"{what}: text file {str(path)!r} does not exist")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def claims_of_options(options) -> list[Claim]:
    """The claims of ``--qdm-claims``, checked at configure time (feature ids against the
    SAE's width where its cfg.json is on disk: the bundled model's, a local --qdm-sae)."""
    try:
        return load_claims(options.claims, sae_width(options))
    except ValueError as error:
        raise ValueError(f"--qdm-claims: {error}") from None


def sae_width(options) -> int | None:
    """d_sae from the read-out SAE's cfg.json, without loading it (None: not on disk)."""
    import json

    from pytest_qdm.load.hub import local_dir

    folder = local_dir(options.sae, slashes_mean_path=False) if options.sae else None
    if folder is None and options.model == "tiny":
        from pytest_qdm.zoo.tiny import TINY_HOOK, sae_dir

        folder = sae_dir(TINY_HOOK)
    config = None if folder is None else Path(folder) / "cfg.json"
    if config is None or not config.is_file():
        return None
    return int(json.loads(config.read_text())["d_sae"])
