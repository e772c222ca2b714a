"""Configure-time errors a newcomer meets first: one line, at once, with a suggestion."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_qdm.gate.preflight import preflight
from pytest_qdm.options import QdmOptions
from pytest_qdm.options_parse import build_options

pytest_plugins = ["pytester"]


def test_misspelled_preset_gets_the_closest_name():
    with pytest.raises(ValueError) as error:
        preflight(QdmOptions(model="tinny"))
    assert "did you mean 'tiny'?" in str(error.value)
    assert "\n" not in str(error.value)
    from pytest_qdm.load.presets import get_preset

    with pytest.raises(ValueError, match=r"unknown preset 'pythia-70m'; did you mean 'pythia-70m"):
        get_preset("pythia-70m")


def test_bound_messages_show_what_was_typed_not_a_tuple():
    with pytest.raises(ValueError) as error:
        build_options({"model": "tiny", "min-survived": ["int6:60"]})
    message = str(error.value)
    assert message.startswith("--qdm-min-survived: 'int6:60': the bound is a fraction")
    assert "('int6:60',)" not in message and "(got" not in message
    with pytest.raises(ValueError) as error:
        build_options({"model": "tiny", "dataset": ["a=builtin", "code"]})
    assert "(got" not in str(error.value)  # the message quotes the sources already


def test_hub_id_refused_when_offline(monkeypatch):
    from pytest_qdm.gate.specs import check_specs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"^--qdm-model 'qdm-test/no-such-model' is on the Hug"):
        check_specs(QdmOptions(model="qdm-test/no-such-model", sae="r/s"))
    monkeypatch.setattr("pytest_qdm.gate.specs.offline_reason", lambda: None)  # Hub reachable
    check_specs(QdmOptions(model="qdm-test/no-such-model", sae="r/s"))


def test_a_cached_hub_model_is_not_refused(tmp_path, monkeypatch):
    from huggingface_hub import hf_hub_download  # noqa: F401  (the cache layout it reads)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = (
        "import os, pathlib\n"
        "from pytest_qdm.gate.specs import check_specs\n"
        "from pytest_qdm.options import QdmOptions\n"
        "root = pathlib.Path(os.environ['HF_HUB_CACHE']) / 'models--org--name'\n"
        "(root / 'refs').mkdir(parents=True); (root / 'refs' / 'main').write_text('abc')\n"
        "(root / 'snapshots' / 'abc').mkdir(parents=True)\n"
        "(root / 'snapshots' / 'abc' / 'config.json').write_text('{}')\n"
        "check_specs(QdmOptions(model='org/name', sae='r/s'))\n"
        "print('ok')\n"
    )
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**_env(), **env}
    )
    assert out.stdout.strip() == "ok", out.stderr


def _env() -> dict:
    import os

    return dict(os.environ)
