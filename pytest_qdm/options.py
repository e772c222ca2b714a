"""The plugin's options: one pydantic model, from which the ``--qdm-*`` flags and ini keys
are generated (name, metavar, default and help come from the field), so they cannot drift.

Every field of :class:`QdmOptions` that carries ``cli`` metadata is one flag
``--qdm-<flag>`` and one ini key ``qdm_<flag with _>``; the command line wins over the ini
file. Values arrive as strings and are parsed by the field's ``kind``; everything is then
validated by pydantic, and the first error becomes one line that names its option.
Defaults shared with :class:`~pytest_qdm.settings.AuditConfig` are read from it. The fields
come in families (:mod:`pytest_qdm.options_families`); this model joins them, adds the run's
own options, the rules across fields and what the options mean together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from pytest_qdm.analyse.matched_pruning import check_match_bits
from pytest_qdm.analyse.retrain_checks import check_budget
from pytest_qdm.analyse.sensitivity import check_focus, plan_target
from pytest_qdm.compress.names import BIT_WIDTHS, condition_name, valid_bits
from pytest_qdm.gate.thresholds import GateCheck
from pytest_qdm.load.placement import Placement
from pytest_qdm.options_families import (
    PPL_TOKENS_CAP,
    QUICK_PPL_TOKENS,
    QUICK_TOKENS,
    AnalysisOptions,
    GateOptions,
    SubjectOptions,
)
from pytest_qdm.options_values import cli, domain_label
from pytest_qdm.settings import AuditConfig

_AUDIT = AuditConfig.model_fields


class QdmOptions(AnalysisOptions, GateOptions, SubjectOptions):
    """The plugin's options, built once in ``pytest_configure`` (command line over ini).

    ``model`` None means the plugin is idle: no gate item, and qdm fixtures skip.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cache: bool = Field(
        True,
        description="do not read or write the on-disk result cache",
        json_schema_extra=cli("no-cache", "not-flag"),
    )
    cache_dir: str = Field(
        ".qdm/cache",
        description="cache of protocol results keyed by fingerprint",
        json_schema_extra=cli("cache-dir", metavar="DIR"),
    )
    plots: bool = Field(
        True, description="skip the PNG plots", json_schema_extra=cli("no-plots", "not-flag")
    )
    two_phase: bool = Field(
        False,
        description="for a model whose reference and a compressed copy do not fit on the "
        "device together: cache the reference read-out on disk first, then run one condition "
        "at a time against it (same numbers; more time and disk)",
        json_schema_extra=cli("two-phase", "flag"),
    )
    two_phase_dir: str | None = Field(
        None,
        description="where --qdm-two-phase caches the reference read-out (removed after the pass)",
        json_schema_extra=cli("two-phase-dir", metavar="DIR", shown="<--qdm-cache-dir>/two-phase"),
    )
    verbose: bool = Field(
        False,
        description="show third-party libraries' warnings, log lines and progress bars "
        "(held back by default: pytest_qdm/quiet.py)",
        json_schema_extra=cli("verbose", "flag"),
    )
    progress: bool = True  # from pytest's verbosity (-q -q turns it off)

    @model_validator(mode="after")
    def _consistent(self) -> QdmOptions:
        if not all(valid_bits(b) for b in self.bits):
            raise ValueError(
                f"--qdm-bits must list bit widths in {BIT_WIDTHS}, got {list(self.bits)}"
            )
        check_match_bits(self.match_bits, self.bits)
        check_focus(self.match_bits, self.sensitivity)
        if self.retrain_sae:
            try:
                check_budget(self.retrain_sae)
            except ValueError as error:
                raise ValueError(f"--qdm-retrain-sae: {error}") from None
        if self.two_phase_dir is not None and not self.two_phase:
            raise ValueError("--qdm-two-phase-dir needs --qdm-two-phase")
        if self.damage_threshold > self.survival_threshold:
            raise ValueError(
                f"--qdm-damage-threshold {self.damage_threshold} must not exceed "
                f"--qdm-survival-threshold {self.survival_threshold}"
            )
        return self

    @property
    def audited_schemes(self) -> tuple[str, ...]:
        """``schemes``, plus ``rtn-intB-refcode`` per width with ``--qdm-rtn-axes reference``."""
        refcode = tuple(f"rtn-int{b}-refcode" for b in self.bits)
        extra = refcode if self.rtn_axes == "reference" else ()
        return tuple(dict.fromkeys(self.schemes + extra))

    @property
    def retrained_condition(self) -> str | None:
        """The condition name --qdm-retrain-sae trains on (None: no retraining)."""
        if not self.retrain_sae:
            return None
        if self.retrain_condition is not None:
            return condition_name(self.retrain_condition.strip().lower())
        return None if self.match_bits is None else f"rtn-int{self.match_bits}"

    @property
    def sensitivity_target(self) -> float:
        """The survival the --qdm-sensitivity plan aims for (a --qdm-min-survived bound)."""
        return plan_target(self.min_survived, self.match_bits)

    @property
    def token_source(self) -> str | dict[str, str] | None:
        """The tokens' source as ``load_tokens`` takes it (one source, or labelled domains):
        ``--qdm-dataset``, else the preset's, else None (a model folder: builtin)."""
        if not self.dataset:
            from pytest_qdm.load.presets import get_preset, preset_names

            return get_preset(self.model).dataset if self.model in preset_names() else None
        if domain_label(self.dataset[0]) is None:
            return self.dataset[0]
        return {domain_label(v): v.partition("=")[2] for v in self.dataset}

    @property
    def domains(self) -> tuple[str, ...]:
        """The labelled domains' names (none for one unlabelled source)."""
        source = self.token_source
        return tuple(source) if isinstance(source, dict) else ()

    @property
    def audit_tokens(self) -> int | None:
        """The audit's token budget: --qdm-tokens, --qdm-quick's, else None (the preset's)."""
        return self.tokens or (QUICK_TOKENS if self.quick else None)

    @property
    def perplexity_tokens(self) -> int:
        """The perplexity budget: --qdm-ppl-tokens, else --qdm-quick's, else the audit's
        budget up to :data:`PPL_TOKENS_CAP` (every preset's budget is above it)."""
        if self.ppl_tokens:
            return self.ppl_tokens
        if self.quick and not self.tokens:
            return QUICK_PPL_TOKENS
        return min(PPL_TOKENS_CAP, self.tokens or PPL_TOKENS_CAP)

    @property
    def split(self) -> bool:
        """Whether the model is split across devices (--qdm-device-map / --qdm-max-memory)."""
        return self.placement.split

    @property
    def placement(self) -> Placement:
        """Where the model loads (--qdm-device, --qdm-dtype, --qdm-backend,
        --qdm-device-map, --qdm-max-memory), as the model loaders take it."""
        return Placement(
            device=self.device,
            dtype=self.dtype,
            backend=self.backend,
            device_map=self.device_map,
            max_memory=self.max_memory,
        )

    @property
    def gates(self) -> tuple[GateCheck, ...]:
        return (
            self.min_survived + self.max_damaged + self.max_ppl_change + self.max_kl + self.min_top1
        )

    def audit_config(self, hook: str | None = None) -> AuditConfig:
        """The audit settings these options name (shared fields by name)."""
        shared = set(_AUDIT) & set(type(self).model_fields) - {"two_phase_dir"}
        two_phase_dir = None
        if self.two_phase:
            two_phase_dir = self.two_phase_dir or str(Path(self.cache_dir) / "two-phase")
        return AuditConfig(
            **self.model_dump(include=shared),
            hook_name=hook or self.hook,
            token_lenses="token" in self.lenses,
            two_phase_dir=two_phase_dir,
        )


def option_fields() -> list[tuple[str, dict[str, Any], Any]]:
    """(field name, cli metadata, field info) of every command-line option, in order."""
    return [
        (name, info.json_schema_extra["cli"], info)
        for name, info in QdmOptions.model_fields.items()
        if isinstance(info.json_schema_extra, dict) and "cli" in info.json_schema_extra
    ]


def dest(flag: str) -> str:
    return "qdm_" + flag.replace("-", "_")


def help_text(cli_meta: dict[str, Any], info: Any) -> str:
    default = cli_meta["shown"]
    if default is None:
        value = info.default
        if isinstance(value, bool):
            value = "off"
        elif isinstance(value, tuple):
            value = ",".join(map(str, value)) or "none"
        default = value
    return f"{info.description} (default: {default})"
