"""Nothing the gate reads back runs code: a pickle planted in any of its files is refused
(and recomputed where it is a cache), and the package never unpickles or trusts remote code."""

from __future__ import annotations

import ast
import builtins
import dataclasses
import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch

import pytest_qdm
from pytest_qdm.cachefiles import CacheWarning
from pytest_qdm.gate.cache import cache_path, cached_report, remembered_fingerprint
from pytest_qdm.run.resume import Checkpoints
from pytest_qdm.tensorfile import StoredValueError, dumps, loads

FORBIDDEN_KEYWORDS = {("weights_only", False), ("trust_remote_code", True), ("allow_pickle", True)}
UNPICKLERS = {"load", "loads", "Unpickler"}


class Payload:
    """Unpickling this creates ``marker``: proof that the unpickler ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def pickled_payloads(marker: Path) -> list[bytes]:
    """The payload as a raw pickle and as torch.save writes it (a zip with data.pkl)."""
    import io

    buffer = io.BytesIO()
    torch.save({"state": Payload(marker)}, buffer)
    return [pickle.dumps(Payload(marker)), buffer.getvalue()]


def violations(source: str) -> list[str]:
    """Calls in ``source`` that unpickle or trust remote code."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            value = keyword.value
            if isinstance(value, ast.Constant) and (keyword.arg, value.value) in FORBIDDEN_KEYWORDS:
                found.append(f"line {node.lineno}: {keyword.arg}={value.value}")
        function = node.func
        if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name):
            owner, name = function.value.id, function.attr
            if owner in {"pickle", "cPickle", "dill", "cloudpickle"} and name in UNPICKLERS:
                found.append(f"line {node.lineno}: {owner}.{name}")
            if owner == "torch" and name == "load" and not _weights_only(node):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
    return found


def _weights_only(call: ast.Call) -> bool:
    return any(
        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def test_the_package_never_unpickles_nor_trusts_remote_code():
    package = Path(pytest_qdm.__file__).parent
    found = {
        str(path.relative_to(package)): hits
        for path in sorted(package.rglob("*.py"))
        if (hits := violations(path.read_text(encoding="utf-8")))
    }
    assert found == {}


def test_the_scan_catches_each_kind_of_call():
    planted = (
        "torch.load(f, weights_only=False)\ntorch.load(f)\npickle.load(f)\n"
        "AutoModel.from_pretrained(p, trust_remote_code=True)\nnp.load(f, allow_pickle=True)\n"
    )
    assert {hit.split(":")[0] for hit in violations(planted)} == {f"line {n}" for n in range(1, 6)}
    assert violations("torch.load(f, weights_only=True)\nnp.load(f)\n") == []


def test_a_planted_partial_run_file_runs_nothing_and_is_recomputed(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "partial-abc"
    store = Checkpoints(folder)
    for payload in pickled_payloads(marker):
        for name in ("perplexity", "shard0"):
            folder.mkdir(exist_ok=True)
            store._path(name).write_bytes(payload)
            (folder / f"{name}.pt").write_bytes(payload)  # the old format's name
            with pytest.warns(CacheWarning, match=rf"ignored .*{name}\.safetensors"):
                assert store.load(name) is None
        assert store.load_shards() == []
    assert not marker.exists()


def test_a_planted_cache_entry_runs_nothing_and_is_recomputed(tmp_path, tiny_report):
    marker, key = tmp_path / "ran", "0" * 24
    for payload in pickled_payloads(marker):
        cache_path(tmp_path, key).write_bytes(payload)
        (tmp_path / "sources-s.json").write_bytes(payload)
        with pytest.warns(CacheWarning, match="ignored .*protocol-0+\\.json"):
            assert cached_report(tmp_path, key, lambda: tiny_report) == (tiny_report, False)
        with pytest.warns(CacheWarning, match="ignored .*sources-s\\.json"):
            assert remembered_fingerprint(tmp_path, "s") is None
    assert not marker.exists()


def test_a_planted_baseline_is_refused_in_one_line_and_runs_nothing(tmp_path):
    from pytest_qdm.gate.baseline import read_baseline

    marker = tmp_path / "ran"
    for payload in pickled_payloads(marker):
        path = tmp_path / "baseline.json"
        path.write_bytes(payload)
        with pytest.raises(ValueError, match="is not a pytest-qdm baseline") as error:
            read_baseline(path)
        assert "\n" not in str(error.value)
    assert not marker.exists()


def test_a_planted_two_phase_batch_and_rank_payload_run_nothing(tmp_path):
    from pytest_qdm.stream.distributed import _loads
    from pytest_qdm.stream.two_phase import ReferenceCache

    marker = tmp_path / "ran"
    files = ReferenceCache(tmp_path)
    for payload in pickled_payloads(marker):
        files.path(0).write_bytes(payload)
        with pytest.raises(Exception, match="(?i)header|metadata|deserializ"):
            files.read(0)
        with pytest.raises(StoredValueError):
            _loads(payload, "cpu")
    assert not marker.exists()


def test_stored_values_round_trip_exactly_and_only_as_package_types():
    from pytest_qdm.schema.gate import Verdict

    value = {
        "t": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        ("a", 1): [Verdict("x", True, "ok"), None, 1.5, float("inf")],
        "bf16": torch.ones(3, dtype=torch.bfloat16),
    }
    back = loads(dumps(value))
    assert torch.equal(back["t"], value["t"]) and back["bf16"].dtype == torch.bfloat16
    assert back[("a", 1)] == value[("a", 1)]
    foreign = dataclasses.make_dataclass("Foreign", ["x"])
    with pytest.raises(TypeError, match="not a pytest-qdm type"):
        dumps(foreign(1))
    with pytest.raises(TypeError, match="without pickle"):
        dumps(warnings.WarningMessage("m", UserWarning, "f", 1))


def test_a_forged_file_naming_a_class_outside_the_package_builds_nothing(tmp_path):
    from safetensors.torch import save

    from pytest_qdm.tensorfile import FORMAT, _digest

    marker = tmp_path / "ran"
    for name in ("subprocess:Popen", "builtins:open", "pytest_qdm.tensorfile:Path"):
        node = {"kind": "dataclass", "type": name, "fields": {"args": [str(marker), "w"]}}
        tree = json.dumps(node)
        metadata = {"format": FORMAT, "version": "1", "tree": tree, "sha256": _digest(tree, {})}
        with pytest.raises(StoredValueError, match="pytest-qdm type|stored kind"):
            loads(save({}, metadata=metadata))
    assert not marker.exists()
