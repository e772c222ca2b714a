"""Data-parallel audits on torch.distributed (pytest_qdm/stream/distributed.py): 2 CPU ranks
on gloo, launched with ``python -m torch.distributed.run`` as subprocesses.

The bundled model loads once, in one ``torchrun -m pytest`` gate run; the audit tests of
that run (``INNER_TESTS``, on the session's model and tokens) compare 2 ranks with one
process and make a rank raise. Cheap launches that import torch only check that a failed or
stuck rank ends the whole run in bounded time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

LAUNCH_TIMEOUT_S = 240  # a hang fails the test instead of blocking the suite

INNER_TESTS = """
import time

import numpy as np
import pytest
import torch.distributed as dist

import pytest_qdm as qdm
import pytest_qdm.run.audit as audit_module
from pytest_qdm.stream import distributed


@pytest.fixture
def audited(qdm_model, qdm_sae, qdm_tokens):
    rows = qdm_tokens.tokens[:7]  # batches of 2: rank 0 runs 4 rows, rank 1 runs 3
    config = qdm.AuditConfig(progress=False, batch_size=2)
    return lambda: qdm.audit(qdm_model, qdm_sae, rows, [qdm.RTN(8), qdm.RTN(4)], config)


def arrays(result):
    ref = result.reference
    out = {f"r {n}": c.correlation for n, c in result.conditions.items()}
    out.update({f"firing {n}": c.firing_rate for n, c in result.conditions.items()})
    out.update(firing=ref.firing_rate, mean=ref.mean_activation, max=ref.max_activation)
    return out


def test_two_ranks_equal_one_process(audited, monkeypatch):
    assert distributed.rank_and_size()[1] == 2
    merged = arrays(audited())
    other = distributed.gathered(lambda: merged)[1 - dist.get_rank()]
    with monkeypatch.context() as patch:  # no process group: today's code path
        patch.setattr(distributed, "_multi_process", lambda: None)
        single = arrays(audited())
    assert np.isfinite(single["r rtn-int4"]).sum() > 100  # active features were compared
    for key, values in single.items():
        np.testing.assert_array_equal(merged[key], other[key])  # every rank, same result
        np.testing.assert_allclose(merged[key], values, rtol=0, atol=1e-12, err_msg=key)


def test_perplexity_and_sae_transfer_over_two_ranks_equal_one_process(
    qdm_model, qdm_sae, qdm_tokens, monkeypatch
):
    from pytest_qdm.analyse.perplexity import chunked_perplexity, sliding_window_perplexity
    from pytest_qdm.analyse.transfer import TransferSums

    rows = qdm_tokens.tokens[:3]  # batches of 2: rank 0 scores 2 rows, rank 1 scores 1

    def measure():
        sums = TransferSums(qdm_model, qdm_sae, qdm_sae.cfg.metadata.hook_name)
        chunked = chunked_perplexity(
            qdm_model, rows, bos_in_tokens=True, batch_size=2, observer=sums
        )
        stream = rows[:, 1:].reshape(-1)
        sliding = sliding_window_perplexity(qdm_model, stream, window=64, stride=48, batch_size=2)
        transfer = sums.result().model_dump()
        return {"chunked": chunked.mean_nll, "sliding": sliding.mean_nll, **transfer}

    split = measure()
    with monkeypatch.context() as patch:
        patch.setattr(distributed, "_multi_process", lambda: None)
        single = measure()
    assert split["n_tokens"] == single["n_tokens"] == 3 * rows.shape[1]
    for key, value in single.items():
        assert split[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_two_phase_on_two_ranks_equals_one_phase(qdm_model, qdm_sae, qdm_tokens, tmp_path):
    rows, conditions = qdm_tokens.tokens[:7], [qdm.RTN(4), qdm.MagnitudePrune(0.3)]
    folder = tmp_path / f"rank{dist.get_rank()}"  # each rank caches its own rows
    one_phase = qdm.AuditConfig(progress=False, batch_size=2)
    two_phase = one_phase.model_copy(update=dict(two_phase=True, two_phase_dir=str(folder)))
    one, two = (
        arrays(qdm.audit(qdm_model, qdm_sae, rows, conditions, config))
        for config in (one_phase, two_phase)
    )
    for key, values in one.items():
        np.testing.assert_array_equal(two[key], values, err_msg=key)
    assert list(folder.iterdir()) == []


def test_a_rank_without_a_batch_adds_nothing(
    qdm_model, qdm_sae, qdm_tokens, tmp_path, monkeypatch
):
    from pytest_qdm.analyse.transfer import sae_transfer

    rows = qdm_tokens.tokens[:2]  # one batch of 2: rank 1's share is empty
    hook = qdm_sae.cfg.metadata.hook_name

    def measure():
        out = {}
        for two_phase in (False, True):
            config = qdm.AuditConfig(progress=False, batch_size=2, two_phase=two_phase)
            if two_phase:
                folder = str(tmp_path / f"rank{dist.get_rank()}")
                config = config.model_copy(update=dict(two_phase_dir=folder))
            result = qdm.audit(qdm_model, qdm_sae, rows, [qdm.RTN(4)], config)
            out.update({f"{k} two-phase={two_phase}": v for k, v in arrays(result).items()})
        transfer = sae_transfer(qdm_model, qdm_sae, rows, hook, batch_size=2).model_dump()
        return {**out, **{k: np.array(v, dtype=float) for k, v in transfer.items()}}

    split = measure()
    with monkeypatch.context() as patch:
        patch.setattr(distributed, "_multi_process", lambda: None)
        single = measure()
    for key, values in single.items():
        np.testing.assert_allclose(split[key], values, rtol=1e-12, atol=1e-12, err_msg=key)


def test_a_rank_that_raises_ends_every_rank_with_its_error(audited, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("rank one broke on purpose")

    if dist.get_rank() == 1:
        monkeypatch.setattr(audit_module, "run_pass", broken)
    started = time.monotonic()
    with pytest.raises(Exception, match="rank one broke on purpose") as caught:
        audited()
    assert time.monotonic() - started < 60
    if dist.get_rank() == 0:
        assert caught.type is distributed.RankFailed
        assert str(caught.value).startswith("rank 1 of 2 failed: ValueError: rank one broke")
"""

FAILING_SCRIPT = """
import sys, time
import torch.distributed as dist
from pytest_qdm.stream import distributed

distributed.GATHER_TIMEOUT_S = 2
dist.init_process_group("gloo")
rank = dist.get_rank()
if sys.argv[1] == "raise":  # rank 1 fails before any exchange, rank 0 waits inside one
    def protocol():
        if rank == 1:
            raise ValueError("rank one broke on purpose")
        return distributed.concatenated(lambda: [rank], "cpu")
    distributed.agreed(protocol)
else:  # rank 1 never reaches the exchange
    distributed.gathered(lambda: rank)
    if rank == 1:
        time.sleep(LAUNCH_TIMEOUT_S)
    distributed.gathered(lambda: rank)
"""


def test_shares_are_contiguous_whole_batches_covering_every_row_once(monkeypatch):
    import torch

    from pytest_qdm.stream import distributed

    rows = torch.arange(15).unsqueeze(1)
    for size in (1, 2, 3, 5):
        shares = []
        for rank in range(size):
            monkeypatch.setattr(distributed, "rank_and_size", lambda r=rank, n=size: (r, n))
            shares.append(rows[distributed.local_rows(len(rows), 4)].flatten().tolist())
        assert sum(shares, []) == list(range(15))
        assert all(share[0] % 4 == 0 for share in shares if share)
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14], []]


def test_without_a_process_group_nothing_is_exchanged():
    from pytest_qdm.stream import distributed

    state, rows = object(), [1, 2, 3]
    assert distributed.rank_and_size() == (0, 1) and distributed.is_main_process()
    assert distributed.merged_state(lambda: state, "cpu") is state
    assert distributed.local_share(rows) is rows
    assert distributed.summed(lambda: (1.5, 2)) == (1.5, 2)
    assert distributed.from_main(lambda: state) is state
    assert distributed.agreed(lambda: state) is state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node 2 ARGS`` on 127.0.0.1, offline
    (``$GITHUB_STEP_SUMMARY`` goes to ``cwd``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update(MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    env.update(GITHUB_STEP_SUMMARY=str(cwd / "step-summary.md"))
    # this checkout's package, also where another one is installed (git worktrees)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )


def test_torchrun_pytest_gate_and_audits(tmp_path):
    """Both ranks pass the gate and the audit tests; rank 0 alone writes and prints."""
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    reports, logs = tmp_path / "reports", tmp_path / "logs"
    gate = ["--qdm-model", "tiny", "--qdm-tokens", "2048", "--qdm-bits", "8,4"]
    gate += ["--qdm-match-bits", "0", "--qdm-lenses", "none", "--qdm-no-plots", "--qdm-no-cache"]
    gate += ["--qdm-min-survived", "int8:0.5", "--qdm-report-dir", str(reports)]
    pytest_args = ["-m", "pytest", "test_inner.py", "-p", "no:cacheprovider", "-p", "no:xdist"]
    pytest_args += [*gate, "--junitxml", str(tmp_path / "junit.xml"), "-q"]
    run = torchrun(["--redirects", "3", "--log-dir", str(logs), *pytest_args], cwd=tmp_path)
    stdout = {p.parent.name: p.read_text() for p in logs.rglob("stdout.log")}
    assert run.returncode == 0, run.stderr[-3000:] + "".join(stdout.values())[-6000:]
    assert sorted(stdout) == ["0", "1"]
    for text in stdout.values():
        assert "7 passed" in text  # audit item, min_survived check, the five inner tests
    assert "report:" in stdout["0"] and "report:" not in stdout["1"]
    written = {p.name for p in reports.iterdir()}
    assert {"qdm-report.json", "qdm-summary.md", "run.json", "verdicts.json"} <= written
    summary = (tmp_path / "step-summary.md").read_text()
    assert summary.count("min_survived[rtn-int8]") == 1  # appended by rank 0 alone
    verdicts = json.loads((reports / "verdicts.json").read_text())
    assert [v[:2] for v in verdicts] == [["min_survived[rtn-int8]", True]]
    assert (tmp_path / "junit.xml").exists()


def run_failing(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess, float]:
    script = tmp_path / "failing.py"
    script.write_text(FAILING_SCRIPT.replace("LAUNCH_TIMEOUT_S", str(LAUNCH_TIMEOUT_S)))
    started = time.monotonic()
    return torchrun([str(script), mode], cwd=tmp_path), time.monotonic() - started


def test_a_rank_that_raises_fails_the_run_with_its_error(tmp_path):
    run, elapsed = run_failing(tmp_path, "raise")
    assert run.returncode != 0
    assert "RankFailed: rank 1 of 2 failed: ValueError: rank one broke on purpose" in run.stderr
    assert elapsed < 60


def test_a_stuck_rank_fails_the_run_after_the_gather_timeout(tmp_path):
    run, elapsed = run_failing(tmp_path, "stuck")
    assert run.returncode != 0
    assert "RankFailed: rank 0 of 2: not every rank answered within 2 s" in run.stderr
    assert elapsed < 60
