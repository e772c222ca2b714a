"""The plugin's options: one pydantic model, from which the ``--qdm-*`` flags and ini keys
are generated (name, metavar, default and help come from the field), so they cannot drift.

Every field of :class:`QdmOptions` that carries ``cli`` metadata is one flag
``--qdm-<flag>`` and one ini key ``qdm_<flag with _>``; the command line wins over the ini
file. Values arrive as strings and are parsed by the field's ``kind``; everything is then
validated by pydantic, and the first error becomes one line that names its option.
Defaults shared with :class:`~pytest_qdm.settings.AuditConfig` are read from it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from pytest_qdm.analyse.retrain_checks import check_budget
from pytest_qdm.analyse.sensitivity import check_focus, plan_target
from pytest_qdm.compress.names import BIT_WIDTHS, condition_name, scheme_name, valid_bits
from pytest_qdm.gate.confidence import GateOn
from pytest_qdm.gate.thresholds import BaselineCheck, GateCheck, parse_baseline, parse_gate
from pytest_qdm.load.tokens import DOMAIN_LABEL
from pytest_qdm.settings import (
    DEFAULT_BITS,
    DEFAULT_MATCH_BITS,
    LENSES,
    SAE_PRUNE_METHODS,
    AuditConfig,
    ProtocolConfig,
)

# --qdm-quick's budget (measured in docs/index.md's "Fast demo" to still show the finding)
QUICK_TOKENS = 8_192
QUICK_PPL_TOKENS = 2_048
PPL_TOKENS_CAP = ProtocolConfig.model_fields["ppl_tokens"].default

Kind = Literal["str", "int", "float", "flag", "not-flag", "list", "ints", "floats", "names"]
_AUDIT = AuditConfig.model_fields


def cli(flag: str, kind: Kind = "str", metavar: str | None = None, shown: str | None = None):
    """Metadata that makes a field a ``--qdm-<flag>`` option (``shown``: the default as
    the help prints it, when the field's own default would not say it)."""
    return {"cli": {"flag": flag, "kind": kind, "metavar": metavar, "shown": shown}}


def _gates(option: str):
    def parse(values: Any) -> tuple[GateCheck, ...]:
        return tuple(v if isinstance(v, GateCheck) else parse_gate(option, v) for v in values)

    return BeforeValidator(parse)


def _baseline_checks(values: Any) -> tuple[BaselineCheck, ...]:
    return tuple(v if isinstance(v, BaselineCheck) else parse_baseline(v) for v in values)


def _schemes(values: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(scheme_name(v) for v in values))


def _datasets(values: Any) -> tuple[str, ...]:
    values = (values,) if isinstance(values, str) else tuple(values or ())
    labelled = [domain_label(v) is not None for v in values]
    if len(values) > 1 and not all(labelled):
        raise ValueError(
            f"several sources {list(values)} need a domain label each, "
            "e.g. --qdm-dataset prose=builtin --qdm-dataset code=builtin:code"
        )
    labels = [domain_label(v) for v in values]
    repeated = sorted({x for x in labels if x and labels.count(x) > 1})
    if repeated:
        raise ValueError(f"domain labels must be unique, got {repeated} more than once")
    return values


def domain_label(value: str) -> str | None:
    """The label of a ``LABEL=SOURCE`` dataset entry, or None (an unlabelled source)."""
    label, sep, _ = value.partition("=")
    if not sep or not DOMAIN_LABEL.match(label) or Path(value).expanduser().exists():
        return None
    return label


def _max_memory(value: Any) -> dict[str | int, str] | None:
    """``0=20GiB,cpu=64GiB`` as transformers' max_memory (GPU ids as ints)."""
    if value is None or isinstance(value, dict):
        return value
    memory: dict[str | int, str] = {}
    for part in str(value).split(","):
        device, sep, size = part.strip().partition("=")
        if not sep or not device or not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", size.strip()):
            raise ValueError(
                f"{part.strip()!r} is not DEVICE=SIZE; write e.g. 0=20GiB,1=20GiB,cpu=64GiB"
            )
        memory[int(device) if device.isdigit() else device] = size.strip()
    return memory


def _bound_or_none(value: Any) -> float | None:
    """``none`` (measure only) or a number, as --qdm-min-explained-variance takes it."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    return float(value)


def _lenses(values: Any) -> tuple[str, ...]:
    lenses = tuple(v for v in values if v != "none")
    unknown = sorted(set(lenses) - set(LENSES))
    if unknown:
        raise ValueError(f"unknown {unknown}; use {','.join(LENSES)} or none")
    return lenses


class QdmOptions(BaseModel):
    """The plugin's options, built once in ``pytest_configure`` (command line over ini).

    ``model`` None means the plugin is idle: no gate item, and qdm fixtures skip.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(
        None,
        description="model to gate: tiny (bundled), a preset (pythia-70m-deduped, gemma-2-2b, "
        "gemma-3-4b) or a local HF checkpoint folder",
        json_schema_extra=cli("model", metavar="NAME|PATH", shown="none: the plugin stays idle"),
    )
    sae: str | None = Field(
        None,
        description="SAE: sae_lens release/sae_id or a local sae_lens folder",
        json_schema_extra=cli("sae", metavar="RELEASE/ID|PATH", shown="the preset's"),
    )
    hook: str | None = Field(
        None,
        description="read-out hook, e.g. blocks.4.hook_resid_post",
        json_schema_extra=cli("hook", metavar="HOOK", shown="the SAE's hook_name"),
    )
    bits: tuple[int, ...] = Field(
        DEFAULT_BITS,
        min_length=1,
        description="RTN bit widths to audit (2..8)",
        json_schema_extra=cli("bits", "ints", "B,B,..."),
    )
    match_bits: int | None = Field(
        DEFAULT_MATCH_BITS,
        description="bit width whose perplexity the pruning comparison matches (0: skip)",
        json_schema_extra=cli("match-bits", "int", "B"),
    )
    dataset: Annotated[tuple[str, ...], BeforeValidator(_datasets)] = Field(
        (),
        description="token source: builtin (prose), builtin:code, a text file, or "
        "hf:NAME:CONFIG:SPLIT (Hugging Face datasets); LABEL=SOURCE, repeated, audits labelled "
        "domains in one pass (e.g. prose=builtin code=builtin:code)",
        json_schema_extra=cli(
            "dataset", "list", "[LABEL=]SOURCE", shown="the preset's (tiny: builtin)"
        ),
    )
    tokens: int | None = Field(
        None,
        ge=1,
        description="token budget of the audit",
        json_schema_extra=cli("tokens", "int", "N", shown="the preset's budget"),
    )
    ppl_tokens: int | None = Field(
        None,
        ge=2,
        description="token budget of the perplexity measurements and the pruning search",
        json_schema_extra=cli(
            "ppl-tokens", "int", "N", shown=f"the audit's budget, at most {PPL_TOKENS_CAP:,}"
        ),
    )
    quick: bool = Field(
        False,
        description=f"a fast demo: the full protocol on {QUICK_TOKENS:,} audit tokens and "
        f"{QUICK_PPL_TOKENS:,} perplexity tokens (--qdm-tokens and --qdm-ppl-tokens still win)",
        json_schema_extra=cli("quick", "flag"),
    )
    context_length: int | None = Field(
        None,
        ge=2,
        description="tokens per sequence",
        json_schema_extra=cli("context", "int", "N", shown="the preset's"),
    )
    batch_size: int = Field(
        _AUDIT["batch_size"].default,
        ge=1,
        description="sequences per forward pass (memory is bounded by it)",
        json_schema_extra=cli("batch-size", "int", "N"),
    )
    device: str | None = Field(
        None,
        description="device for the forward passes",
        json_schema_extra=cli("device", metavar="DEVICE", shown="cuda if available, else cpu"),
    )
    backend: Literal["hooked", "bridge"] | None = Field(
        None,
        description="how the model runs: hooked (TransformerLens' HookedTransformer, its own "
        "converters) or bridge (the Hugging Face model itself through TransformerLens' "
        "TransformerBridge, any architecture it supports)",
        json_schema_extra=cli(
            "backend",
            metavar="BACKEND",
            shown="hooked for Llama, Mistral, Mixtral, Qwen2/3, Gemma-2/3, GPT-NeoX; else bridge",
        ),
    )
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | None = Field(
        None,
        description="split the model (and dense candidates) across devices with transformers' "
        "device_map, run through TransformerLens' TransformerBridge: auto, balanced, "
        "balanced_low_0 or sequential",
        json_schema_extra=cli("device-map", metavar="MAP", shown="none: one device"),
    )
    max_memory: Annotated[dict[str | int, str], BeforeValidator(_max_memory)] | None = Field(
        None,
        description="memory per device for --qdm-device-map, e.g. 0=20GiB,1=20GiB,cpu=64GiB",
        json_schema_extra=cli("max-memory", metavar="DEV=SIZE,...", shown="none"),
    )
    dtype: str | None = Field(
        None,
        description="model dtype, e.g. float32 or bfloat16",
        json_schema_extra=cli("dtype", metavar="DTYPE", shown="the preset's for the device"),
    )
    survival_threshold: float = Field(
        _AUDIT["survival_threshold"].default,
        gt=-1,
        le=1,
        description="r above this counts as survived",
        json_schema_extra=cli("survival-threshold", "float", "R"),
    )
    damage_threshold: float = Field(
        _AUDIT["damage_threshold"].default,
        ge=-1,
        lt=1,
        description="r below this counts as damaged",
        json_schema_extra=cli("damage-threshold", "float", "R"),
    )
    active_threshold: float = Field(
        _AUDIT["active_threshold"].default,
        ge=0,
        lt=1,
        description="reference firing rate above which a feature is active",
        json_schema_extra=cli("active-threshold", "float", "P"),
    )
    report_dir: str = Field(
        "qdm-report",
        description="where the JSON report, markdown and plots go",
        json_schema_extra=cli("report-dir", metavar="DIR"),
    )
    min_survived: Annotated[tuple[GateCheck, ...], _gates("min_survived")] = Field(
        (),
        description="gate: fail when survival is below, e.g. int6:0.6 (repeatable; "
        "* = every bit width)",
        json_schema_extra=cli("min-survived", "list", "COND:FRAC", shown="none"),
    )
    max_damaged: Annotated[tuple[GateCheck, ...], _gates("max_damaged")] = Field(
        (),
        description="gate: fail when the damaged share is above, e.g. int4:0.4 (repeatable)",
        json_schema_extra=cli("max-damaged", "list", "COND:FRAC", shown="none"),
    )
    max_ppl_change: Annotated[tuple[GateCheck, ...], _gates("max_ppl_change")] = Field(
        (),
        description="gate: fail when the perplexity rises more, e.g. int6:0.05 (repeatable)",
        json_schema_extra=cli("max-ppl-change", "list", "COND:FRAC", shown="none"),
    )
    max_kl: Annotated[tuple[GateCheck, ...], _gates("max_kl")] = Field(
        (),
        description="gate: fail when the mean KL(reference || condition) of the next-token "
        "distributions is above, in nats per token, e.g. int6:0.01 (repeatable)",
        json_schema_extra=cli("max-kl", "list", "COND:NATS", shown="none"),
    )
    min_top1: Annotated[tuple[GateCheck, ...], _gates("min_top1")] = Field(
        (),
        description="gate: fail when the share of tokens whose top next token is the "
        "reference's is below, e.g. int6:0.95 (repeatable)",
        json_schema_extra=cli("min-top1", "list", "COND:FRAC", shown="none"),
    )
    gate_on: GateOn = Field(
        "estimate",
        description="what the gate bounds compare: estimate, lower (the interval's end that is "
        "worse for the check: pass only with evidence) or upper (the better end: fail only "
        "when even it misses, never on noise); 95% intervals",
        json_schema_extra=cli("gate-on", metavar="END"),
    )
    confidence: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="level of the intervals --qdm-gate-on reads (survival, KL, top-1)",
        json_schema_extra=cli("confidence", "float", "LEVEL"),
    )
    baseline: str | None = Field(
        None,
        description="compare with a saved baseline; a missing one is written and the gate fails",
        json_schema_extra=cli("baseline", metavar="PATH", shown="none"),
    )
    baseline_checks: Annotated[tuple[BaselineCheck, ...], BeforeValidator(_baseline_checks)] = (
        Field(
            (),
            description="allowed movement vs the baseline, e.g. survived:-2%, auc:-0.02 "
            "(repeatable)",
            json_schema_extra=cli("baseline-fail", "list", "EXPR", shown="none"),
        )
    )
    claims: str | None = Field(
        None,
        description="claims file (TOML) to check on every audited condition (docs/claims.md)",
        json_schema_extra=cli("claims", metavar="FILE", shown="none"),
    )
    update_baseline: bool = Field(
        False,
        description="rewrite a failing, foreign or unreadable baseline (the gate still fails)",
        json_schema_extra=cli("update-baseline", "flag"),
    )
    schemes: Annotated[tuple[str, ...], BeforeValidator(_schemes)] = Field(
        (),
        description="deployed schemes audited beside RTN: nf4, nf4-dq, nf4-bN, fp8-e4m3, fp8-e5m2, "
        "absmax-int8, intB-gG (group-wise RTN), intB-refcode",
        json_schema_extra=cli("schemes", "names", "S,S,...", shown="none"),
    )
    rtn_axes: Literal["channel", "reference"] = Field(
        "channel",
        description="reference: also audit each width as the reference study's code rounded it "
        "(one scale shared across heads for W_Q/W_K/W_V), as rtn-intB-refcode, to compare with "
        "its tables",
        json_schema_extra=cli("rtn-axes", metavar="AXES"),
    )
    candidates: tuple[str, ...] = Field(
        (),
        description="a compressed checkpoint to gate against --qdm-model: a local Hugging Face "
        "folder (bitsandbytes, torchao, compressed-tensors or dense), a .gguf file or a Hub id; "
        "audited as condition candidate:<folder name> (repeatable)",
        json_schema_extra=cli("candidate", "list", "PATH", shown="none"),
    )
    candidate_path: Literal["dequantize", "forward", "served"] | None = Field(
        None,
        description="how every --qdm-candidate is audited: dequantize (the format's library "
        "dequantizes its weights into the reference), forward (its deployed quantized "
        "forward, read through a TransformerLens TransformerBridge) or served (a .gguf run by "
        "llama.cpp on the CPU, read through its eval callback; extra [llamacpp])",
        json_schema_extra=cli(
            "candidate-path",
            metavar="PATH",
            shown="per scheme: forward where the deployed kernel quantizes activations",
        ),
    )
    lenses: Annotated[tuple[str, ...], BeforeValidator(_lenses)] = Field(
        LENSES,
        description="lenses beside per-feature survival: token (sample correlation, top-k "
        "agreement, Procrustes), transfer (SAE explained variance, spliced loss); none: neither",
        json_schema_extra=cli("lenses", "names", "L,L,..."),
    )
    top_k: int = Field(
        _AUDIT["top_k"].default,
        ge=1,
        description="k of the top-k feature agreement (token lens)",
        json_schema_extra=cli("top-k", "int", "K"),
    )
    drilldown_features: int = Field(
        _AUDIT["drilldown_features"].default,
        ge=0,
        description="most damaged features per condition shown with their contexts in the "
        "report (reference top contexts beside the compressed model's, and what the "
        "compressed feature fires on now); 0: none",
        json_schema_extra=cli("drilldown", "int", "K"),
    )
    sae_prune: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = Field(
        (),
        description="SAE pruning sweep: fractions of SAE features to remove without "
        "retraining, e.g. 0.1,0.25,0.5, measured on the reference and the --qdm-match-bits model",
        json_schema_extra=cli("sae-prune", "floats", "F,F,...", shown="none"),
    )
    sae_prune_method: Literal[SAE_PRUNE_METHODS] = Field(  # type: ignore[valid-type]
        SAE_PRUNE_METHODS[0],
        description="SAE feature importance for --qdm-sae-prune: " + " or ".join(SAE_PRUNE_METHODS),
        json_schema_extra=cli("sae-prune-method", metavar="METHOD"),
    )
    retrain_sae: int = Field(
        0,
        ge=0,
        description="retrained-SAE baseline: train an SAE of the reference SAE's architecture "
        "on the --qdm-retrain-condition model's activations for this many tokens (sae_lens' "
        "trainer), then report frozen vs retrained vs pruned SAE and which failing features "
        "are lost or only moved (docs/retrained-sae.md)",
        json_schema_extra=cli("retrain-sae", "int", "TOKENS", shown="off"),
    )
    retrain_init: Literal["reference", "random"] = Field(
        "reference",
        description="--qdm-retrain-sae starts from the reference SAE (a fine-tune) or from "
        "sae_lens' random initialisation",
        json_schema_extra=cli("retrain-init", metavar="INIT"),
    )
    retrain_condition: str | None = Field(
        None,
        description="the audited condition --qdm-retrain-sae trains on, e.g. int4 or a "
        "candidate:<name>",
        json_schema_extra=cli(
            "retrain-condition", metavar="NAME", shown="the --qdm-match-bits width"
        ),
    )
    sensitivity: bool = Field(
        False,
        description="which blocks to keep at higher precision: quantize one block at a time at "
        "--qdm-match-bits (blocks up to the read-out), then audit a greedy plan that raises the "
        "most damaging blocks to INT8 until survival reaches the --qdm-min-survived bound of "
        "that width (else 90%)",
        json_schema_extra=cli("sensitivity", "flag"),
    )
    min_explained_variance: Annotated[float | None, BeforeValidator(_bound_or_none)] = Field(
        0.5,
        le=1,
        description="refuse an SAE that explains less of the activations at the read-out "
        "(none: audit anyway; the report's headline then says how poorly it fits)",
        json_schema_extra=cli("min-explained-variance", metavar="EV|none"),
    )
    noise_floor: bool = Field(
        False,
        description="also audit changes that are not compression (the reference in bfloat16 "
        "and float16, another batch size, the other attention implementation and the other "
        "backend) as floor-* conditions; the report states the floor",
        json_schema_extra=cli("noise-floor", "flag"),
    )
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
        if self.match_bits is not None and self.match_bits not in self.bits:
            raise ValueError(
                f"--qdm-match-bits {self.match_bits} is not among --qdm-bits {list(self.bits)}"
            )
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
        return self.device_map is not None or self.max_memory is not None

    @property
    def placement(self) -> dict[str, Any]:
        """``backend``, ``device_map`` and ``max_memory`` as the model loaders take them
        (only those given)."""
        placed = {"device_map": self.device_map, "max_memory": self.max_memory}
        placed["backend"] = self.backend
        return {k: v for k, v in placed.items() if v is not None}

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
