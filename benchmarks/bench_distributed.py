"""Data-parallel audit: the same workload on 1 and on N CPU processes (torch.distributed, gloo).

    .venv/bin/python benchmarks/bench_distributed.py                  # 1 and 2 processes
    .venv/bin/python benchmarks/bench_distributed.py --tokens 4096 --nproc 1 2 4

Workload: the bundled model (qdm-tiny, 6 layers, d_model 128) read out by its 2048-feature
TopK SAE at blocks.4.hook_resid_post, reference + RTN INT8..INT4, on the builtin corpus.
Each run spawns its processes (1 process: no process group, today's code path), splits the
machine's cores between them (``--threads`` in all), loads, waits at a barrier and times
``qdm.audit`` alone. Prints the seconds, the speed-up over 1 process and the largest
difference of any per-feature statistic from the 1-process result (expected: below 1e-12).
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

BITS = (8, 7, 6, 5, 4)


def worker(rank: int, nproc: int, args, port: int, out: str) -> None:
    import pytest_qdm as qdm
    from pytest_qdm import zoo
    from pytest_qdm.load.tokens import load_tokens

    torch.set_num_threads(max(1, args.threads // nproc))
    if nproc > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=nproc)
    model, sae = zoo.load_tiny_model(), zoo.load_tiny_sae()
    ctx = zoo.TINY_CONTEXT_LENGTH
    tokens = load_tokens(
        "builtin", zoo.load_tiny_tokenizer(), context_length=ctx, max_tokens=args.tokens,
        prepend_bos=True,
    ).tokens  # fmt: skip
    config = qdm.AuditConfig(progress=False, batch_size=args.batch_size)
    conditions = [qdm.RTN(b) for b in BITS]
    if nproc > 1:
        dist.barrier()
    start = time.perf_counter()
    result = qdm.audit(model, sae, tokens, conditions, config)
    seconds = time.perf_counter() - start
    if rank == 0:
        ref = result.reference
        arrays = {f"r {n}": c.correlation for n, c in result.conditions.items()}
        arrays.update(firing=ref.firing_rate, mean=ref.mean_activation, max=ref.max_activation)
        np.savez(out, seconds=seconds, n_tokens=ref.n_tokens, **arrays)
    if nproc > 1:
        dist.destroy_process_group()


TIMING = ("seconds", "n_tokens")


def largest_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over entries that are numbers in both; inf if NaNs differ in place."""
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    return float(np.nanmax(np.abs(a - b), initial=0.0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="audit tokens (default 8192)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (8)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads over all processes"
    )
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for nproc in args.nproc:
            out = str(Path(folder) / f"n{nproc}.npz")
            mp.spawn(worker, args=(nproc, args, free_port(), out), nprocs=nproc)
            results[nproc] = dict(np.load(out))
    base = results[args.nproc[0]]
    print(f"qdm.audit, bundled model, {int(base['n_tokens'])} tokens, RTN INT8..INT4, "
          f"batch {args.batch_size}, {args.threads} threads in all")  # fmt: skip
    for nproc, result in results.items():
        seconds = float(result["seconds"])
        gap = max(largest_difference(result[k], base[k]) for k in base if k not in TIMING)
        speedup = float(base["seconds"]) / seconds
        print(
            f"{nproc} process(es): {seconds:7.2f} s  speed-up x{speedup:.2f}  "
            f"max |difference| from {args.nproc[0]} process(es): {gap:.1e}"
        )


if __name__ == "__main__":
    main()
