"""What the gate audits, from outside: --qdm-model (presets, Hub ids, your own folder),
--qdm-sae, --qdm-max-memory and the SAE-fit bound; refusals come at configure time."""

from __future__ import annotations

import pytest

from tests.helpers.factories import GEMMA3_TEXT, exact_sae, save_gemma3_multimodal
from tests.helpers.gate import written_report

pytest_plugins = ["pytester"]


def test_sae_for_another_model_is_refused_at_configure(pytester):
    from sae_lens import StandardSAE, StandardSAEConfig

    config = StandardSAEConfig(d_in=12, d_sae=24)
    config.metadata.hook_name = "blocks.1.hook_resid_post"
    StandardSAE(config).save_model(pytester.path / "other-sae")
    result = pytester.runpytest_subprocess("--qdm-model", "tiny", "--qdm-sae", "other-sae")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*reads width 12 but the model's residual stream has width*"])


def test_an_unreachable_hub_model_fails_in_one_line_naming_the_options(pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(pytester.path / "empty-hf-home"))  # nothing cached
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess("--qdm-model", "gemma-2-2b", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # at configure time, not as a failed item
    text = result.stderr.str()
    assert "--qdm-model 'gemma-2-2b' (google/gemma-2-2b) is on the Hugging Face Hub" in text
    assert "--qdm-model DIR --qdm-sae SAE_DIR --qdm-dataset FILE" in text
    assert "Traceback" not in text and len(text.splitlines()) < 5


def test_hub_preset_refused_at_configure_time_when_offline(pytester, monkeypatch):
    """A Hub preset not in the local cache, with the Hub unreachable, fails before
    collection in one line naming the local-folder way forward (not minutes later)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(pytester.path / "empty-hf-home"))  # nothing cached
    result = pytester.runpytest_subprocess("--qdm-model", "pythia-70m-deduped")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if "pytest-qdm:" in line]
    assert len(errors) == 1, result.stderr.lines
    assert errors[0].startswith(
        "ERROR: pytest-qdm: --qdm-model 'pythia-70m-deduped' (EleutherAI/pythia-70m-deduped) "
        "is on the Hugging Face Hub, which is offline here (HF_HUB_OFFLINE=1 is set), and not "
        "in the local cache. Use a local folder instead: `hf download EleutherAI/pythia-70m-"
    )
    assert "collected" not in result.stdout.str()  # before collection: nothing loaded


def test_the_gate_audits_a_multimodal_folder_with_your_own_sae(pytester, monkeypatch):
    """`pytest --qdm-model FOLDER --qdm-sae SAE_DIR --qdm-dataset FILE`, the README's path
    for your own checkpoint, on a multimodal model: the gate passes and reports it."""
    folder = pytester.path / "tiny-gemma3-mm"
    save_gemma3_multimodal(folder)
    hook = "blocks.1.hook_resid_post"  # an SAE that reconstructs exactly, so the fit check passes
    exact_sae(GEMMA3_TEXT["hidden_size"], hook).save_model(pytester.path / "sae")
    text = "".join(chr(32 + (i * 7919) % 90) for i in range(20_000))  # ASCII: the char vocab
    (pytester.path / "corpus.txt").write_text(text)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess(
        *("--qdm-model", str(folder), "--qdm-sae", "sae", "--qdm-dataset", "corpus.txt"),
        *("--qdm-tokens", "2048", "--qdm-bits", "8,6,4", "--qdm-no-cache"),
        *("-p", "no:cacheprovider", "--qdm-min-survived", "int8:0.5"),
    )
    result.assert_outcomes(passed=2)
    report = written_report(pytester.path)
    assert report["audit"]["hook_name"] == hook
    assert report["audit"]["reference"]["n_tokens"] == 2048
    assert report["audit"]["conditions"]["rtn-int8"]["summary"]["n_active"] > 10


@pytest.mark.parametrize(
    ("ranks_here", "message"),
    [("1", "would be offloaded to disk"), ("2", "with 2 ranks on this node: each rank")],
)
def test_the_gate_refuses_a_split_it_cannot_run_at_configure(
    pytester, monkeypatch, ranks_here, message
):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks_here)  # as torchrun sets it
    result = pytester.runpytest_subprocess("--qdm-model", "tiny", "--qdm-max-memory", "cpu=5MiB")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if "pytest-qdm:" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr.str()


def test_the_gate_refuses_a_poor_sae_fit_with_the_option_named(pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\nqdm_min_explained_variance = 0.9999\n")  # the ini key
    result = pytester.runpytest_subprocess(
        *("--qdm-model", "tiny", "--qdm-tokens", "1024", "--qdm-bits", "8"),
        *("--qdm-match-bits", "0", "--qdm-no-cache", "-p", "no:cacheprovider"),
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*SAE does not fit*--qdm-min-explained-variance none*"])
