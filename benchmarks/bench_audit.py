"""Benchmark the QDM audit engine against a straightforward implementation.

    .venv/bin/python benchmarks/bench_audit.py                     # full run
    .venv/bin/python benchmarks/bench_audit.py --tokens 4096 --rss-tokens 4096 8192  # smoke

Workload P (CPU): Pythia-70M-shaped model, 512 -> 32768 SAE at blocks.4.hook_resid_post,
reference + RTN INT8..INT4. Workload G (CUDA only): Gemma-2-2B-shaped model, 2304 -> 16384
JumpReLU SAE at layer 12, bf16. Prints a rich table and writes JSON (see README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from profiling import engine_timers  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from roofline import engine_flops, full_flops, matmul_flops_per_s  # noqa: E402
from straightforward import straightforward_audit  # noqa: E402
from workloads import workload_g, workload_p  # noqa: E402

import pytest_qdm as qdm  # noqa: E402
import pytest_qdm.stream.engine as engine  # noqa: E402

BITS = (8, 7, 6, 5, 4)
SWEEP_TOKENS = {"P": 200_000, "G": 500_000}
console = Console()


def conditions():
    return [qdm.RTN(bits) for bits in BITS]


BARE = {"token_lenses": False, "drilldown_features": 0}  # the pass without lenses/drill-down


def timed_engine(workload, batch_size: int, device: str | None = None, **options):
    """qdm.audit of the sweep with the profile timers on: (result, seconds, breakdown).
    ``options``: AuditConfig fields (default: the default audit, lenses and drill-down on)."""
    config = qdm.AuditConfig(batch_size=batch_size, progress=False, device=device, **options)
    with engine_timers() as timers:
        _sync()
        start = time.perf_counter()
        result = qdm.audit(workload.model, workload.sae, workload.tokens, conditions(), config)
        _sync()
        seconds = time.perf_counter() - start
    parts = dict(timers.totals)
    parts["other (validation, RTN prep, python)"] = seconds - sum(parts.values())
    return result, seconds, parts


def timed_straightforward(workload, batch_size: int):
    _sync()
    start = time.perf_counter()
    correlations, firing = straightforward_audit(
        workload.model, workload.sae, workload.tokens, conditions(), workload.hook, batch_size
    )
    _sync()
    return correlations, firing, time.perf_counter() - start


def max_abs_dr(result, correlations) -> float:
    active = result.reference.active
    return max(
        float(np.max(np.abs(result.conditions[name].correlation[active] - r[active])))
        for name, r in correlations.items()
    )


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# Peak memory, measured in a fresh child process per token budget ---------------------


def rss_child(args) -> None:
    """Build workload P, reset the peak RSS, run the engine; print one JSON line."""
    workload = workload_p(args.tokens, args.ctx)
    workload.tokens = workload.tokens.reshape(-1)[: args.tokens].reshape(-1, args.ctx)
    before = _maxrss_mib()
    reset = _reset_peak_rss()
    config = qdm.AuditConfig(batch_size=args.batch_size, progress=False)
    start = time.perf_counter()
    qdm.audit(workload.model, workload.sae, workload.tokens, conditions(), config)
    seconds = time.perf_counter() - start
    report = {
        "tokens": workload.tokens.numel(),
        "seconds": seconds,
        "peak_rss_mib": _maxrss_mib(),
        "peak_rss_before_audit_mib": before,
        "peak_reset_before_audit": reset,
    }
    print("RSS-JSON " + json.dumps(report))


def _maxrss_mib() -> float:
    """Peak RSS of this process: VmHWM (Linux), else ru_maxrss. (ru_maxrss of a child
    starts at its parent's peak on Linux and is not reset by clear_refs.)"""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    except (OSError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the peak-RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_rss(args, budgets: list[int]) -> list[dict]:
    """One fresh child per token budget, run side by side (peaks are per process)."""
    children = []
    for tokens in budgets:
        command = [sys.executable, __file__, "--rss-child", "--tokens", str(tokens)]
        command += ["--ctx", str(args.ctx), "--batch-size", str(args.batch_size)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        children.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    reports = []
    for child in children:
        out, err = child.communicate()
        line = next((x for x in out.splitlines() if x.startswith("RSS-JSON ")), None)
        if child.returncode or line is None:
            raise RuntimeError(f"RSS child failed ({child.returncode}):\n{err[-3000:]}")
        reports.append(json.loads(line.removeprefix("RSS-JSON ")))
    return reports


# Workloads ---------------------------------------------------------------------------


def bench_p(args) -> dict:
    threads = torch.get_num_threads()
    console.print(f"[bold]Workload P[/] (CPU, {threads} torch threads): building ...")
    workload = workload_p(args.tokens, args.ctx)
    workload.tokens = workload.tokens.reshape(-1)[: args.tokens].reshape(-1, args.ctx)
    n_tokens = workload.tokens.numel()
    peak = matmul_flops_per_s()
    figures = {"tokens": n_tokens}
    if not args.skip_allocator_ab:  # first: mallopt has not touched this process yet
        console.print(f"engine, CPU allocator tuning off, on {n_tokens} tokens ...")
        engine.TUNE_CPU_ALLOCATOR = False
        try:
            _, figures["engine_untuned_s"], _ = timed_engine(workload, args.batch_size)
        finally:
            engine.TUNE_CPU_ALLOCATOR = True
    if not args.skip_straightforward:
        console.print(f"straightforward on {n_tokens} tokens ...")
        correlations, firing, figures["straightforward_s"] = timed_straightforward(
            workload, args.batch_size
        )
    console.print(f"engine on {n_tokens} tokens ...")
    result, figures["engine_s"], figures["engine_profile_s"] = timed_engine(
        workload, args.batch_size
    )
    if not args.skip_bare:
        console.print(f"engine, token lenses and drill-down off, on {n_tokens} tokens ...")
        _, figures["engine_bare_s"], _ = timed_engine(workload, args.batch_size, **BARE)
    if not args.skip_straightforward:
        figures["max_abs_dr"] = max_abs_dr(result, correlations)
        active = firing > qdm.AuditConfig().active_threshold
        figures["same_active_set"] = bool(np.array_equal(active, result.reference.active))
    peak = max(peak, matmul_flops_per_s())  # best of before and after
    figures.update(_shape_figures(workload, result, args.ctx), matmul_flops_per_s=peak)
    if args.rss_tokens:
        console.print(
            f"engine peak RSS at {args.rss_tokens} tokens (concurrent child processes) ..."
        )
        figures["rss"] = measure_rss(args, args.rss_tokens)
    return derive(figures, "P", workload, args, threads)


def bench_g(args) -> dict:
    if not torch.cuda.is_available():
        reason = "torch.cuda.is_available() is False (no CUDA GPU on this machine)"
        console.print(f"[yellow]Workload G skipped:[/] {reason}")
        return {"workload": "G", "skipped": reason}
    console.print("[bold]Workload G[/] (CUDA, bf16): building ...")
    workload = workload_g(args.g_tokens, args.g_ctx)
    figures = {"tokens": workload.tokens.numel()}
    peak = matmul_flops_per_s(8192, device="cuda", dtype=torch.bfloat16)
    if not args.skip_straightforward:  # on the first rows only; the engine on the same rows
        rows = max(1, args.g_straightforward_tokens // args.g_ctx)
        subset = dataclasses.replace(workload, tokens=workload.tokens[:rows])
        console.print(f"straightforward on {subset.tokens.numel()} tokens ...")
        correlations, _, figures["straightforward_s"] = timed_straightforward(
            subset, args.g_batch_size
        )
        small, _, _ = timed_engine(subset, args.g_batch_size, device="cuda")
        figures["straightforward_tokens"] = subset.tokens.numel()
        figures["max_abs_dr"] = max_abs_dr(small, correlations)
    console.print(f"engine on {figures['tokens']} tokens ...")
    torch.cuda.reset_peak_memory_stats()
    result, figures["engine_s"], figures["engine_profile_s"] = timed_engine(
        workload, args.g_batch_size, device="cuda"
    )
    figures["engine_peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    peak = max(peak, matmul_flops_per_s(8192, device="cuda", dtype=torch.bfloat16))
    figures.update(_shape_figures(workload, result, args.g_ctx), matmul_flops_per_s=peak)
    return derive(figures, "G", workload, args, None)


def _shape_figures(workload, result, ctx: int) -> dict:
    cfg, d_sae = workload.model.cfg, workload.sae.cfg.d_sae
    read_layer = int(workload.hook.split(".")[1])
    return {
        "engine_flops_per_token_pass": engine_flops(cfg, ctx, read_layer, d_sae),
        "full_flops_per_token_pass": full_flops(cfg, ctx, d_sae),
        "n_active": int(result.reference.active.sum()),
        "mean_l0": float(result.reference.firing_rate.sum()),
        "survived_pct": {n: c.summary.survived_pct for n, c in result.conditions.items()},
    }


def derive(figures: dict, name: str, workload, args, threads) -> dict:
    """Throughputs, ratio, roofline fractions and the extrapolated sweep times."""
    passes = 1 + len(BITS)
    n = figures["tokens"]
    f = dict(figures, workload=name, token_source=workload.token_source, threads=threads)
    f["engine_tokens_per_s"] = n / f["engine_s"]
    work = f["engine_flops_per_token_pass"] * passes * n
    f["engine_flops_per_s"] = work / f["engine_s"]
    f["roofline_fraction"] = f["engine_flops_per_s"] / f["matmul_flops_per_s"]
    parts = f["engine_profile_s"]
    compute_s = parts.get("forward to the read-out layer", 0) + parts.get(
        "SAE encode (full width)", 0
    )
    f["roofline_fraction_forward_encode"] = work / compute_s / f["matmul_flops_per_s"]
    if "engine_bare_s" in f:
        f["lenses_drilldown_cost"] = f["engine_s"] / f["engine_bare_s"]
        f["bare_roofline_fraction"] = work / f["engine_bare_s"] / f["matmul_flops_per_s"]
    if "engine_untuned_s" in f:
        f["engine_untuned_tokens_per_s"] = n / f["engine_untuned_s"]
        f["allocator_tuning_speedup"] = f["engine_untuned_s"] / f["engine_s"]
    f["sweep_tokens"] = SWEEP_TOKENS[name]
    f["engine_sweep_s"] = SWEEP_TOKENS[name] / f["engine_tokens_per_s"]
    if "straightforward_s" in f:
        plain_n = f.get("straightforward_tokens", n)
        f["straightforward_tokens_per_s"] = plain_n / f["straightforward_s"]
        f["speedup"] = f["engine_tokens_per_s"] / f["straightforward_tokens_per_s"]
        if "engine_untuned_tokens_per_s" in f:
            f["speedup_untuned"] = (
                f["engine_untuned_tokens_per_s"] / f["straightforward_tokens_per_s"]
            )
        f["straightforward_sweep_s"] = SWEEP_TOKENS[name] / f["straightforward_tokens_per_s"]
    if f.get("rss"):
        low, high = f["rss"][0], f["rss"][-1]
        f["rss_growth"] = high["peak_rss_mib"] / low["peak_rss_mib"] - 1
    return f


# Output ------------------------------------------------------------------------------


def show(figures: dict) -> None:
    if figures.get("skipped"):
        return
    name = figures["workload"]
    table = Table(title=f"Workload {name}: {figures['tokens']} tokens, {figures['token_source']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("engine tokens/s", f"{figures['engine_tokens_per_s']:.1f}"),
        ("straightforward tokens/s", _fmt(figures.get("straightforward_tokens_per_s"), ".1f")),
        ("speedup (engine / straightforward)", _fmt(figures.get("speedup"), ".2f", "x")),
        (
            "engine tokens/s, allocator tuning off",
            _fmt(figures.get("engine_untuned_tokens_per_s"), ".1f"),
        ),
        ("speedup, allocator tuning off", _fmt(figures.get("speedup_untuned"), ".2f", "x")),
        ("max |dr| over active features", _fmt(figures.get("max_abs_dr"), ".2e")),
        ("active features / mean L0", f"{figures['n_active']} / {figures['mean_l0']:.1f}"),
        ("measured dense matmul GFLOP/s", f"{figures['matmul_flops_per_s'] / 1e9:.1f}"),
        ("engine GFLOP/s (whole audit)", f"{figures['engine_flops_per_s'] / 1e9:.1f}"),
        ("roofline fraction (whole audit)", f"{figures['roofline_fraction']:.1%}"),
        (
            "roofline fraction, lenses + drill-down off",
            _fmt(figures.get("bare_roofline_fraction"), ".1%"),
        ),
        (
            "lenses + drill-down cost (default / bare)",
            _fmt(figures.get("lenses_drilldown_cost"), ".2f", "x"),
        ),
        (
            "roofline fraction (forward + encode)",
            f"{figures['roofline_fraction_forward_encode']:.1%}",
        ),
        (
            f"{figures['sweep_tokens'] // 1000}k-token sweep, engine",
            f"{figures['engine_sweep_s'] / 60:.1f} min",
        ),
        (
            f"{figures['sweep_tokens'] // 1000}k-token sweep, straightforward",
            _fmt(figures.get("straightforward_sweep_s", 0) / 60 or None, ".1f", " min"),
        ),
    ]
    for rss in figures.get("rss", []):
        rows.append(
            (f"engine peak RSS at {rss['tokens']} tokens", f"{rss['peak_rss_mib']:.0f} MiB")
        )
    if "rss_growth" in figures:
        rows.append(
            ("peak RSS growth, largest vs smallest budget", f"{figures['rss_growth']:+.1%}")
        )
    if "engine_peak_cuda_mib" in figures:
        rows.append(("engine peak CUDA memory", f"{figures['engine_peak_cuda_mib']:.0f} MiB"))
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    profile = Table(title=f"Workload {name}: where the engine's time goes")
    for column in ("part", "seconds", "share"):
        profile.add_column(column, justify="left" if column == "part" else "right")
    parts = figures["engine_profile_s"]
    for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        profile.add_row(part, f"{seconds:.2f}", f"{seconds / figures['engine_s']:.1%}")
    console.print(profile)


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_at_end": os.getloadavg(),
    }


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return re.search(r"model name\s*:\s*(.*)", text).group(1)
    except (OSError, AttributeError):
        return platform.processor()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=["P", "G", "all"], default="all")
    p.add_argument("--tokens", type=int, default=8192, help="P tokens timed (default 8192)")
    p.add_argument("--ctx", type=int, default=512, help="P context length (default 512)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--rss-tokens",
        type=int,
        nargs="*",
        default=[20480, 81920],
        help="P token budgets for the peak-RSS children (default 20480 81920; none: skip)",
    )
    p.add_argument("--skip-straightforward", action="store_true")
    p.add_argument("--skip-bare", action="store_true", help="no run without lenses/drill-down")
    p.add_argument(
        "--skip-allocator-ab",
        action="store_true",
        help="P: skip the extra engine run with the CPU allocator tuning off",
    )
    p.add_argument("--g-tokens", type=int, default=500_000, help="G tokens (default 500000)")
    p.add_argument("--g-ctx", type=int, default=1024, help="G context length (default 1024)")
    p.add_argument("--g-batch-size", type=int, default=8, help="G sequences per batch (default 8)")
    p.add_argument(
        "--g-straightforward-tokens",
        type=int,
        default=65536,
        help="G tokens for the straightforward comparison (default 65536)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_audit.json")
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return
    command = " ".join([Path(sys.executable).name, *sys.argv])
    runs = []
    if args.workload in ("P", "all"):
        runs.append(bench_p(args))
    if args.workload in ("G", "all"):
        runs.append(bench_g(args))
    for figures in runs:
        show(figures)
    report = {"command": command, "machine": machine(), "workloads": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    console.print(f"written {args.out}")


if __name__ == "__main__":
    main()
