"""The option families that :class:`~pytest_qdm.options.QdmOptions` joins, in the order the
help lists them: what is audited and how it loads (:class:`SubjectOptions`), what fails the
gate (:class:`GateOptions`), and what is measured beyond survival (:class:`AnalysisOptions`).
Each field is one ``--qdm-*`` flag and ini key (:func:`~pytest_qdm.options_values.cli`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field

from pytest_qdm.gate.confidence import GateOn
from pytest_qdm.gate.thresholds import BaselineCheck, GateCheck
from pytest_qdm.options_values import (
    cli,
    parse_baseline_checks,
    parse_bound_or_none,
    parse_datasets,
    parse_gate_checks,
    parse_lenses,
    parse_max_memory,
    parse_schemes,
)
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
_AUDIT = AuditConfig.model_fields


class SubjectOptions(BaseModel):
    """What is audited and how it loads: model, SAE, tokens, placement, the bands."""

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
    dataset: Annotated[tuple[str, ...], BeforeValidator(parse_datasets)] = Field(
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
    max_memory: Annotated[dict[str | int, str], BeforeValidator(parse_max_memory)] | None = Field(
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


class GateOptions(BaseModel):
    """What fails the gate: bounds per condition, the confidence rule, baselines, claims."""

    min_survived: Annotated[tuple[GateCheck, ...], parse_gate_checks("min_survived")] = Field(
        (),
        description="gate: fail when survival is below, e.g. int6:0.6 (repeatable; "
        "* = every bit width)",
        json_schema_extra=cli("min-survived", "list", "COND:FRAC", shown="none"),
    )
    max_damaged: Annotated[tuple[GateCheck, ...], parse_gate_checks("max_damaged")] = Field(
        (),
        description="gate: fail when the damaged share is above, e.g. int4:0.4 (repeatable)",
        json_schema_extra=cli("max-damaged", "list", "COND:FRAC", shown="none"),
    )
    max_ppl_change: Annotated[tuple[GateCheck, ...], parse_gate_checks("max_ppl_change")] = Field(
        (),
        description="gate: fail when the perplexity rises more, e.g. int6:0.05 (repeatable)",
        json_schema_extra=cli("max-ppl-change", "list", "COND:FRAC", shown="none"),
    )
    max_kl: Annotated[tuple[GateCheck, ...], parse_gate_checks("max_kl")] = Field(
        (),
        description="gate: fail when the mean KL(reference || condition) of the next-token "
        "distributions is above, in nats per token, e.g. int6:0.01 (repeatable)",
        json_schema_extra=cli("max-kl", "list", "COND:NATS", shown="none"),
    )
    min_top1: Annotated[tuple[GateCheck, ...], parse_gate_checks("min_top1")] = Field(
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
    baseline_checks: Annotated[
        tuple[BaselineCheck, ...], BeforeValidator(parse_baseline_checks)
    ] = Field(
        (),
        description="allowed movement vs the baseline, e.g. survived:-2%, auc:-0.02 (repeatable)",
        json_schema_extra=cli("baseline-fail", "list", "EXPR", shown="none"),
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


class AnalysisOptions(BaseModel):
    """What is measured beyond survival: schemes, candidates, lenses, pruning, retraining."""

    schemes: Annotated[tuple[str, ...], BeforeValidator(parse_schemes)] = Field(
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
    lenses: Annotated[tuple[str, ...], BeforeValidator(parse_lenses)] = Field(
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
    min_explained_variance: Annotated[float | None, BeforeValidator(parse_bound_or_none)] = Field(
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
