"""Data-parallel audit: the same workload on 1 and on N processes (torch.distributed, gloo).

    .venv/bin/python benchmarks/bench_distributed.py                       # P, 1 and 2 CPU processes
    .venv/bin/python benchmarks/bench_distributed.py --threads-per-process 1  # scaling with cores
    .venv/bin/python benchmarks/bench_distributed.py --workload tiny --tokens 4096 --nproc 1 2 4
    python benchmarks/bench_distributed.py --workload G --nproc 1 2 4 8    # one process per GPU

Workloads (benchmarks/workloads.py): **P**, the Pythia-70M-shaped model with its 32768-feature
SAE (CPU, float32, context 512); **G**, the Gemma-2-2B-shaped model with its 16384-feature
JumpReLU SAE (CUDA, bf16, context 1024, 500k tokens by default; process i runs on GPU i);
**tiny**, the bundled model and its 2048-feature SAE. Reference + RTN INT8..INT4.

Each run spawns its processes (1 process: no process group, the ordinary code path); on CPU
the machine's cores are split between them (``--threads`` in all), or each process gets
``--threads-per-process`` (1 per process: how the audit scales with cores, as with GPUs). Every process builds the
same workload, waits at a barrier, and ``qdm.audit`` alone is timed on rank 0 (it ends with
the gather and merge, so every rank is done). Prints per run: seconds, tokens/s in all and
per process (per GPU), the speed-up over the first run, the fraction of the device's dense
matmul rate the audit's matmul FLOPs reach (float32 on CPU, bf16 on CUDA, measured here
per process) and the largest difference of any per-feature statistic from the first run's
(expected below 1e-12). ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from roofline import engine_flops, matmul_flops_per_s  # noqa: E402

BITS = (8, 7, 6, 5, 4)
DEFAULT_TOKENS = {"P": 8192, "G": 500_000, "tiny": 8192}


def build(workload: str, tokens: int, device: str):
    """(model, sae, audit tokens [n, ctx], read-out hook) of ``workload`` on ``device``."""
    if workload == "tiny":
        from pytest_qdm import zoo
        from pytest_qdm.load.tokens import load_tokens

        model, sae = zoo.load_tiny_model(device=device), zoo.load_tiny_sae(device=device)
        ctx = zoo.TINY_CONTEXT_LENGTH
        ids = load_tokens(
            "builtin", zoo.load_tiny_tokenizer(), context_length=ctx, max_tokens=tokens,
            prepend_bos=True,
        ).tokens  # fmt: skip
        return model, sae, ids, sae.cfg.metadata.hook_name
    from workloads import workload_g, workload_p

    built = workload_p(tokens) if workload == "P" else workload_g(tokens, device=device)
    return built.model, built.sae, built.tokens, built.hook


def worker(rank: int, nproc: int, args, port: int, out: str) -> None:
    import pytest_qdm as qdm

    device = "cpu"
    if args.workload == "G":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    else:
        torch.set_num_threads(threads_per_process(args, nproc))
    if nproc > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=nproc)
    model, sae, tokens, hook = build(args.workload, args.tokens, device)
    config = qdm.AuditConfig(progress=False, batch_size=args.batch_size, device=device)
    conditions = [qdm.RTN(b) for b in BITS]
    if nproc > 1:
        dist.barrier()
    _sync(device)
    start = time.perf_counter()
    result = qdm.audit(model, sae, tokens, conditions, config)
    _sync(device)
    seconds = time.perf_counter() - start
    if rank == 0:
        ref = result.reference
        arrays = {f"r {n}": c.correlation for n, c in result.conditions.items()}
        arrays.update(firing=ref.firing_rate, mean=ref.mean_activation, max=ref.max_activation)
        read_layer = int(hook.split(".")[1])
        flops = engine_flops(model.cfg, tokens.shape[1], read_layer, sae.cfg.d_sae)
        work = flops * (1 + len(BITS)) * ref.n_tokens
        np.savez(out, seconds=seconds, n_tokens=ref.n_tokens, work=work, **arrays)
    if nproc > 1:
        dist.destroy_process_group()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


TIMING = ("seconds", "n_tokens", "work")


def largest_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over entries that are numbers in both; inf if NaNs differ in place."""
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    return float(np.nanmax(np.abs(a - b), initial=0.0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_process(args, nproc: int) -> int:
    """CPU: ``--threads-per-process``, else ``--threads`` shared among the processes."""
    return args.threads_per_process or max(1, args.threads // nproc)


def device_rate(args, nproc: int) -> float:
    """One process's dense matmul FLOP/s: bf16 on a GPU, float32 on its threads on CPU."""
    if args.workload == "G":
        return matmul_flops_per_s(8192, device="cuda", dtype=torch.bfloat16)
    before = torch.get_num_threads()
    torch.set_num_threads(threads_per_process(args, nproc))
    try:
        return matmul_flops_per_s()
    finally:
        torch.set_num_threads(before)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(DEFAULT_TOKENS), default="P")
    parser.add_argument("--tokens", type=int, help="audit tokens (P, tiny 8192; G 500000)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (8)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="CPU: torch threads over all processes"
    )
    parser.add_argument(
        "--threads-per-process",
        type=int,
        help="CPU: torch threads in each process instead (1: scaling with cores, as with GPUs)",
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    args.tokens = args.tokens or DEFAULT_TOKENS[args.workload]
    if args.workload == "G":
        gpus = torch.cuda.device_count()
        if max(args.nproc) > gpus:
            parser.error(f"workload G runs one process per GPU; this machine has {gpus} GPU(s)")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for nproc in args.nproc:
            out = str(Path(folder) / f"n{nproc}.npz")
            rate = device_rate(args, nproc)
            mp.spawn(worker, args=(nproc, args, free_port(), out), nprocs=nproc)
            runs.append((nproc, rate, dict(np.load(out))))
    first = runs[0][2]
    where = f"{args.threads} threads in all"
    if args.threads_per_process:
        where = f"{args.threads_per_process} thread(s) per process"
    if args.workload == "G":
        where = "one GPU per process"
    print(
        f"qdm.audit, workload {args.workload}, {int(first['n_tokens'])} tokens, RTN INT8..INT4, "
        f"batch {args.batch_size}, {where}"
    )
    figures = []
    for nproc, rate, result in runs:
        seconds = float(result["seconds"])
        tokens_per_s = float(result["n_tokens"]) / seconds
        row = {
            "processes": nproc,
            "seconds": seconds,
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_process": tokens_per_s / nproc,
            "speedup": float(first["seconds"]) / seconds,
            "matmul_rate_per_process": rate,
            "fraction_of_matmul_rate": float(result["work"]) / seconds / nproc / rate,
            "max_abs_difference": max(
                largest_difference(result[k], first[k]) for k in first if k not in TIMING
            ),
        }
        figures.append(row)
        print(
            f"{nproc} process(es): {seconds:8.2f} s  {tokens_per_s:9.0f} tokens/s "
            f"({row['tokens_per_s_per_process']:.0f} per process)  speed-up x{row['speedup']:.2f}  "
            f"{row['fraction_of_matmul_rate']:.2f} of the matmul rate  "
            f"max |difference| from {runs[0][0]} process(es): {row['max_abs_difference']:.1e}"
        )
    if args.out:
        record = {"workload": args.workload, "tokens": int(first["n_tokens"]), "runs": figures}
        record.update(batch_size=args.batch_size, threads=args.threads, torch=torch.__version__)
        record.update(threads_per_process=args.threads_per_process)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
