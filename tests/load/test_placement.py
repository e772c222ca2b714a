"""--qdm-device-map / --qdm-max-memory: a model split across devices with transformers'
device_map, run through TransformerLens' TransformerBridge, from the command line's options
to the loaded reference and candidates (on this CPU-only machine every part lands on the
CPU: the test pins that the options reach the loaders, not a placement on GPUs)."""

from __future__ import annotations

import json

import pytest

from pytest_qdm.load.placement import Placement

pytest_plugins = ["pytester"]


def test_max_memory_is_parsed_and_a_bad_one_refused_in_one_line():
    from pytest_qdm.options_parse import build_options

    options = build_options({"device-map": "auto", "max-memory": "0=20GiB, 1=20GiB,cpu=64GiB"})
    assert options.placement == Placement(
        device_map="auto", max_memory={0: "20GiB", 1: "20GiB", "cpu": "64GiB"}
    )
    assert build_options({}).placement == Placement()
    with pytest.raises(ValueError, match=r"--qdm-max-memory: .*'0:20GiB' is not DEVICE=SIZE"):
        build_options({"max-memory": "0:20GiB"})
    with pytest.raises(ValueError, match="--qdm-device-map"):
        build_options({"device-map": "everywhere"})


def test_a_quantized_candidate_is_refused_before_any_model_loads(tmp_path):
    from pytest_qdm.gate.preflight import preflight
    from pytest_qdm.options_parse import build_options

    folder = tmp_path / "llama-nf4"
    folder.mkdir()
    quant = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    config = {"architectures": ["LlamaForCausalLM"], "quantization_config": quant}
    (folder / "config.json").write_text(json.dumps(config))
    options = build_options({"device-map": "auto", "candidate": [str(folder)]}, model="tiny")
    with pytest.raises(ValueError, match="split dense checkpoints only.*bitsandbytes"):
        preflight(options)


def test_the_split_reference_and_a_dense_candidate_run_through_the_bridge():
    """The bundled model as reference and its own folder as a dense candidate, both loaded
    with device_map through the bridge: the candidate is the reference (every r = 1)."""
    import pytest_qdm as qdm
    from pytest_qdm.compress.targets import is_bridge
    from pytest_qdm.gate.subject import load_subject
    from pytest_qdm.options_parse import build_options
    from pytest_qdm.zoo import weights_dir

    raw = {"device-map": "auto", "max-memory": "cpu=8GiB", "candidate": [str(weights_dir())]}
    options = build_options({**raw, "tokens": "512"}, model="tiny", device="cpu")
    subject = load_subject(options)
    (candidate,) = subject.candidates
    assert is_bridge(subject.model) and is_bridge(candidate.model)
    config = qdm.AuditConfig(progress=False, token_lenses=False)
    result = qdm.audit(subject.model, subject.sae, subject.tokens, [candidate], config)
    r = result.conditions[candidate.name].correlation
    active = result.reference.active
    assert active.sum() > 100 and abs(r[active] - 1).max() < 1e-6


def test_the_backend_option_runs_the_gate_model_through_the_bridge():
    from pytest_qdm.compress.targets import is_bridge
    from pytest_qdm.gate.subject import load_subject
    from pytest_qdm.options_parse import build_options

    options = build_options({"backend": "bridge", "tokens": "256"}, model="tiny", device="cpu")
    assert options.placement == Placement(device="cpu", backend="bridge")
    assert is_bridge(load_subject(options).model)
    with pytest.raises(ValueError, match="--qdm-backend"):
        build_options({"backend": "jax"})


def test_a_strategy_is_planned_as_transformers_would_plan_it():
    """The map planned before loading is the one transformers' from_pretrained would make
    from the same strategy and max_memory (here one that spills to disk)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.accelerate import _get_device_map

    from pytest_qdm.load.placement import _planned, plan_device_map
    from pytest_qdm.zoo import weights_dir

    folder, memory = weights_dir(), {"cpu": "5MiB"}
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        empty = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    planned = _planned(folder, torch.float32, "auto", dict(memory))
    assert planned == dict(_get_device_map(empty, "auto", dict(memory), None))
    assert set(planned.values()) == {"cpu", "disk"}
    assert plan_device_map(folder, torch.float32, "sequential", {"cpu": "1GiB"}) == {"": "cpu"}


def test_an_offloading_split_is_refused_before_any_weight_loads(monkeypatch):
    import transformers

    from pytest_qdm.load.models import load_model_from_disk
    from pytest_qdm.zoo import weights_dir

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(ValueError, match=r"8 module\(s\) \(model.layers.1, .*offloaded to disk"):
        load_model_from_disk(weights_dir(), max_memory={"cpu": "5MiB"})
    with pytest.raises(ValueError, match="the whole model would be offloaded to disk"):
        load_model_from_disk(weights_dir(), device_map="sequential", max_memory={"cpu": "1MiB"})
    with pytest.raises(ValueError, match=r"\(model.layers.0\) would be offloaded to disk"):
        load_model_from_disk(weights_dir(), device_map={"model.layers.0": "disk", "": "cpu"})


def test_a_gpu_the_machine_lacks_is_refused_in_one_line():
    import torch

    from pytest_qdm.load.placement import plan_device_map
    from pytest_qdm.zoo import weights_dir

    absent = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"name GPU\(s\) \[{absent}\], but this machine has"):
        plan_device_map(weights_dir(), torch.float32, "auto", {absent: "1GiB", "cpu": "1GiB"})
    with pytest.raises(ValueError, match=rf"name GPU\(s\) \[{absent}\]"):
        plan_device_map(weights_dir(), torch.float32, {"": f"cuda:{absent}"}, None)
