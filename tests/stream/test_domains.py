"""Survival per text domain: the built-in code domain, labelled token sets, per-domain sums
from the same pass (equal to auditing each domain alone), per-domain perplexity, the
``COND@DOMAIN:BOUND`` gate syntax and the reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def domain_files(tmp_path_factory):
    """Two small domain files: prose (built-in documentation) and code (stdlib source)."""
    from pytest_qdm.load.corpus import builtin_corpus, code_documents

    folder = tmp_path_factory.mktemp("domains")
    prose, code = folder / "prose.txt", folder / "code.txt"
    prose.write_text(builtin_corpus().text[:120_000])
    code.write_text("\n\n".join(text for _, text in code_documents()[:40])[:120_000])
    return {"prose": str(prose), "code": str(code)}


@pytest.fixture(scope="module")
def domain_tokens(reference, domain_files):
    from pytest_qdm.load.tokens import load_tokens

    return load_tokens(
        domain_files, reference.tokenizer, context_length=128, max_tokens=4096, prepend_bos=True
    )


def test_the_builtin_code_domain_is_stdlib_source_split_like_the_prose():
    from pytest_qdm.load.corpus import code_documents, read_corpus, source_problem

    train, heldout = code_documents("train"), code_documents("heldout")
    assert train and heldout and not {k for k, _ in train} & {k for k, _ in heldout}
    assert all(key.startswith("src:") and key.endswith(".py") for key, _ in train)
    assert not any("/test/" in key or "/tests/" in key for key, _ in train)
    joined = "\n\n".join(text for _, text in train)
    assert read_corpus("builtin:code").text == joined
    assert "def " in joined and "import " in joined and "\t" not in joined
    assert read_corpus("builtin:prose").text == read_corpus("builtin").text
    assert source_problem("builtin:code") is None


def test_the_training_corpus_reads_the_same_domains():
    """training/corpus.py (how the bundled model was trained) delegates to the package."""
    import importlib.util
    from pathlib import Path

    from pytest_qdm.load.corpus import read_corpus

    path = Path(__file__).parents[2] / "training" / "corpus.py"
    spec = importlib.util.spec_from_file_location("training_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.domain_text("code", "heldout")[0] == read_corpus("builtin:code", "heldout").text


def test_labelled_sources_become_domains_with_an_equal_share_of_the_budget(
    reference, domain_tokens, domain_files
):
    info = domain_tokens.info
    assert domain_tokens.domain_rows == {"prose": 16, "code": 16}  # 4096 tokens / 2 / 128
    assert [d.label for d in info.domains] == ["prose", "code"]
    assert info.n_sequences == 32 and tuple(domain_tokens.tokens.shape) == (32, 128)
    assert info.source == f"prose={domain_files['prose']}, code={domain_files['code']}"
    # the rows of each domain are that source's own rows
    from pytest_qdm.load.tokens import load_tokens

    alone = load_tokens(
        domain_files["code"],
        reference.tokenizer,
        context_length=128,
        max_tokens=2048,
        prepend_bos=True,
    )
    assert torch.equal(domain_tokens.tokens[16:], alone.tokens)


@pytest.mark.parametrize("label", ["", "1code", "co de", "a.b"])
def test_a_bad_domain_label_is_refused(label, reference):
    from pytest_qdm.load.tokens import load_tokens

    with pytest.raises(ValueError, match="domain label"):
        load_tokens({label: "builtin"}, reference.tokenizer, context_length=16, prepend_bos=True)


def test_batches_never_mix_domains():
    from pytest_qdm.stream.domains import RowDomains, count_batches, domain_batches

    domains = RowDomains.of_counts({"a": 5, "b": 3, "c": 4})
    tokens = torch.arange(12).unsqueeze(1)
    batches = list(domain_batches(tokens, 4, domains))
    assert [(name, b.flatten().tolist()) for name, b in batches] == [
        ("a", [0, 1, 2, 3]),
        ("a", [4]),
        ("b", [5, 6, 7]),
        ("c", [8, 9, 10, 11]),
    ]
    assert count_batches(12, 4, domains) == len(batches) == 4
    shard = domains.take(torch.tensor([1, 6, 7, 9]))
    assert [n for n, _, _ in shard.runs()] == ["a", "b", "c"]


def test_each_domain_equals_an_audit_of_that_domain_alone(reference, sae, domain_tokens):
    """The per-domain sums of the joint pass are the same batches, added in the same order,
    as an audit of the domain's rows alone: identical bands and mean r."""
    import pytest_qdm as qdm

    config = qdm.AuditConfig(progress=False, token_lenses=False)
    conditions = [qdm.RTN(6), qdm.RTN(4)]
    joint = qdm.audit(reference, sae, domain_tokens, conditions, config)
    assert joint.tokens.domains == {"prose": 2048, "code": 2048}
    rows = domain_tokens.domain_rows
    for name, (start, stop) in {"prose": (0, rows["prose"]), "code": (rows["prose"], 32)}.items():
        alone = qdm.audit(reference, sae, domain_tokens.tokens[start:stop], conditions, config)
        for condition in ("rtn-int6", "rtn-int4"):
            assert joint.conditions[condition].domains[name] == alone.conditions[condition].summary
    # the totals are one pass over every row
    total = qdm.audit(reference, sae, domain_tokens.tokens, conditions, config)
    for condition in ("rtn-int6", "rtn-int4"):
        np.testing.assert_allclose(
            joint.conditions[condition].correlation,
            total.conditions[condition].correlation,
            rtol=0,
            atol=1e-12,
        )


def test_domain_perplexity_comes_from_the_same_forwards(reference, domain_tokens):
    from pytest_qdm.analyse.perplexity import chunked_perplexity
    from pytest_qdm.stream.domains import RowDomains

    tokens, domains = domain_tokens.tokens, RowDomains.of_tokens(domain_tokens)
    joint = chunked_perplexity(reference, tokens, bos_in_tokens=True, domains=domains)
    for name in ("prose", "code"):
        alone = chunked_perplexity(reference, tokens[domains.rows(name)], bos_in_tokens=True)
        assert joint.by_domain[name].n_scored_tokens == alone.n_scored_tokens
        assert joint.by_domain[name].mean_nll == pytest.approx(alone.mean_nll, rel=1e-12)
    assert joint.mean_nll == pytest.approx(
        sum(d.mean_nll * d.n_scored_tokens for d in joint.by_domain.values())
        / joint.n_scored_tokens,
        rel=1e-12,
    )


def test_the_gate_syntax_names_a_domain():
    from pytest_qdm.gate.thresholds import parse_gate

    check = parse_gate("min_survived", "int6@code:60%")
    assert (check.condition, check.domain, check.bound) == ("rtn-int6", "code", 60.0)
    candidate = parse_gate("max_ppl_change", "candidate:w4@prose:0.05")
    assert (candidate.condition, candidate.domain) == ("candidate:w4", "prose")
    assert parse_gate("min_survived", "int6:0.6").domain is None
    with pytest.raises(ValueError, match=r"CONDITION\[@DOMAIN\]:BOUND"):
        parse_gate("min_survived", "int6@:0.6")


def test_dataset_options_refuse_what_cannot_be_audited(tmp_path):
    from pytest_qdm.gate.preflight import preflight
    from pytest_qdm.options import QdmOptions
    from pytest_qdm.options_parse import build_options

    options = build_options({"dataset": ["prose=builtin", "code=builtin:code"]}, model="tiny")
    assert options.token_source == {"prose": "builtin", "code": "builtin:code"}
    assert options.domains == ("prose", "code")
    odd = tmp_path / "a=b.txt"  # an existing file whose name has '=' is a source, not a label
    odd.write_text("text")
    assert QdmOptions(dataset=str(odd)).token_source == str(odd)
    with pytest.raises(ValueError, match="need a domain label each"):
        build_options({"dataset": ["builtin", "code=builtin:code"]})
    with pytest.raises(ValueError, match="must be unique"):
        build_options({"dataset": ["code=builtin", "code=builtin:code"]})
    with pytest.raises(ValueError, match="--qdm-dataset code=.*not builtin"):
        preflight(build_options({"dataset": ["code=nowhere.txt"]}, model="tiny"))
    gated = {"dataset": ["prose=builtin"], "min-survived": ["int6@code:0.6"]}
    with pytest.raises(ValueError, match="bounds domain 'code', which --qdm-dataset does not"):
        preflight(build_options(gated, model="tiny"))


def test_a_preset_can_name_domains(monkeypatch):
    from dataclasses import replace

    from pytest_qdm.load import presets
    from pytest_qdm.options import QdmOptions

    domains = {"prose": "builtin", "code": "builtin:code"}
    preset = replace(presets.get_preset("tiny"), name="tiny-domains", dataset=domains)
    monkeypatch.setitem(presets._registry, "tiny-domains", preset)
    options = QdmOptions(model="tiny-domains", min_survived=("int6@code:0.6",))
    assert options.token_source == domains and options.domains == ("prose", "code")
    assert QdmOptions(model="tiny-domains", dataset="builtin").domains == ()
    with pytest.raises(ValueError, match="Preset.dataset must be"):
        replace(preset, dataset={"code": ""})


def test_the_two_phase_pass_keeps_the_domains(reference, sae, domain_tokens):
    import pytest_qdm as qdm

    config = qdm.AuditConfig(progress=False, token_lenses=False)
    conditions = [qdm.RTN(4)]
    one = qdm.audit(reference, sae, domain_tokens, conditions, config)
    two_phase = config.model_copy(update={"two_phase": True})
    two = qdm.audit(reference, sae, domain_tokens, conditions, two_phase)
    assert two.conditions["rtn-int4"].domains == one.conditions["rtn-int4"].domains
    np.testing.assert_array_equal(
        two.conditions["rtn-int4"].correlation, one.conditions["rtn-int4"].correlation
    )
