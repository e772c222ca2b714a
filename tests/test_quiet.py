"""Quiet by default (pytest_qdm/quiet.py): third-party lines held back inside, restored
after, shown again when verbose (tests/integration/test_quiet.py runs a whole gate)."""

from __future__ import annotations

import logging
import warnings

from pytest_qdm.quiet import third_party_quiet


def test_held_back_inside_and_restored_after(capsys, caplog):
    logger = logging.getLogger("torchao")
    before, filters = logger.level, list(warnings.filters)
    with third_party_quiet(), warnings.catch_warnings(record=True) as seen:
        logger.warning("Failed to load libtorchao_C_mxfp8.so")
        warnings.warn("The 'utils' module has been deprecated", DeprecationWarning, stacklevel=1)
        from tqdm import tqdm
        from transformers.utils import logging as hf_logging

        for _ in hf_logging.tqdm(range(3), desc="Loading weights"):  # a library's bar
            pass
        for _ in tqdm(range(3), desc="ours"):  # a bar opened here (not a library's) shows
            pass
    assert [str(w.message) for w in seen] == []
    assert logger.level == before and warnings.filters == filters
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "ours" in err
    assert "Failed to load" not in caplog.text
    with third_party_quiet(verbose=True):
        logger.warning("shown when verbose")
    assert "shown when verbose" in caplog.text
