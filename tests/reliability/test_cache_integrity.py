"""The gate never fails because of its cache: entries that do not check out are discarded
with one warning naming the file and recomputed; a cache that cannot be written costs one
warning, and the result is still computed and returned."""

from __future__ import annotations

import errno
import hashlib
import json
import tempfile

import pytest
import torch

from pytest_qdm.cachefiles import CacheWarning, read_checked, write_checked
from pytest_qdm.gate.cache import cache_path, cached_report, remember_sources
from pytest_qdm.run.resume import Checkpoints
from pytest_qdm.schema.protocol import ProtocolReport

KEY = "a" * 24


def entry(tmp_path, report) -> tuple:
    path = cache_path(tmp_path, KEY)
    write_checked(path, KEY, report)
    return path, json.loads(path.read_text())


def computed_again(tmp_path, report) -> bool:
    calls = []
    result, hit = cached_report(tmp_path, KEY, lambda: calls.append(1) or report)
    assert result.to_json() == report.to_json()
    return bool(calls) and not hit


def test_a_good_entry_is_a_hit(tmp_path, tiny_report):
    entry(tmp_path, tiny_report)
    result, hit = cached_report(tmp_path, KEY, lambda: pytest.fail("recomputed a good entry"))
    assert hit and result.to_json() == tiny_report.to_json()


@pytest.mark.parametrize("fault", ["truncated", "empty", "foreign", "edited", "future", "binary"])
def test_a_bad_entry_is_discarded_with_one_line_and_recomputed(tmp_path, tiny_report, fault):
    path, data = entry(tmp_path, tiny_report)
    text = path.read_text()
    if fault == "truncated":  # a killed writer, a full disk, a bad restore
        path.write_text(text[: len(text) // 2])
    elif fault == "empty":
        path.write_text("")
    elif fault == "foreign":  # another fingerprint's entry copied under this name
        path.write_text(json.dumps({**data, "key": "b" * 24}))
    elif fault == "edited":
        path.write_text(json.dumps({**data, "record": data["record"].replace("8", "9", 1)}))
    elif fault == "future":
        record = json.dumps(json.loads(data["record"]) | {"schema_version": 999})
        sha256 = hashlib.sha256(record.encode()).hexdigest()
        path.write_text(json.dumps({**data, "record": record, "sha256": sha256}))
    else:
        path.write_bytes(bytes(range(256)) * 4)
    with pytest.warns(CacheWarning) as caught:
        assert computed_again(tmp_path, tiny_report)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and str(path) in messages[0] and "\n" not in messages[0]
    # recomputed and stored again: the next run hits
    assert read_checked(path, KEY, ProtocolReport).to_json() == tiny_report.to_json()


def test_a_bad_partial_file_is_discarded_and_only_its_part_recomputed(tmp_path):
    store = Checkpoints(tmp_path / "partial-x")
    store.save("perplexity", {"ppl": torch.tensor([1.0, 2.0])})
    good = store._path("perplexity").read_bytes()
    assert torch.equal(store.load("perplexity")["ppl"], torch.tensor([1.0, 2.0]))
    for bad in (good[: len(good) // 2], good[:-1] + b"!", b"", b"\x00" * 64):
        store._path("perplexity").write_bytes(bad)
        with pytest.warns(CacheWarning, match="ignored .*perplexity.safetensors"):
            assert store.load("perplexity") is None
        assert not store._path("perplexity").exists()
    # a file moved from another run's partial folder
    other = Checkpoints(tmp_path / "partial-y")
    other.save("perplexity", 1)
    store.folder.mkdir(exist_ok=True)
    store._path("perplexity").write_bytes(other._path("perplexity").read_bytes())
    with pytest.warns(CacheWarning, match="another run"):
        assert store.load("perplexity") is None


def read_only(monkeypatch, folder):
    """Every temporary file under ``folder`` fails as on a read-only file system."""
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(folder)):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def test_a_read_only_cache_costs_one_warning_not_the_result(tmp_path, tiny_report, monkeypatch):
    read_only(monkeypatch, tmp_path)
    with pytest.warns(CacheWarning, match="could not write .*Read-only file system") as caught:
        assert computed_again(tmp_path, tiny_report)
        remember_sources(tmp_path, "s", _fingerprint())
        Checkpoints(tmp_path / "partial-x").save("perplexity", 1)
    assert len(caught) == 3
    assert not any(tmp_path.rglob("*.json")) and not any(tmp_path.rglob("*.safetensors"))


def test_a_cache_folder_that_cannot_be_locked_costs_one_warning(tmp_path, tiny_report, monkeypatch):
    import pytest_qdm.gate.cache as cache

    def no_lock(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path) + ".lock")

    monkeypatch.setattr(cache, "_locked", no_lock)
    with pytest.warns(CacheWarning, match="Permission denied"):
        assert computed_again(tmp_path, tiny_report)


def _fingerprint():
    from pytest_qdm.schema.gate import Fingerprint

    return Fingerprint(
        model="m",
        model_sha256="0",
        sae="s",
        sae_sha256="0",
        hook="h",
        tokens_sha256="0",
        corpus_sha256=None,
        settings="{}",
        versions={},
    )
