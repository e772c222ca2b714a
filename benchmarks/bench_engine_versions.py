"""Before/after: the engine at a git revision against the working tree, on workload P.

    .venv/bin/python benchmarks/bench_engine_versions.py --rev 2766b7d --tokens 8192

Each run is a fresh child process (so allocator state cannot leak between versions); runs
alternate between the versions. Reports tokens/s and the time profile of each version, and
checks that every result array is bit-identical. The revision's ``pytest_qdm`` is read with
``git archive`` (read-only) into a temporary folder, imported by its own child process.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

ARRAYS = ("correlation", "silenced", "emergent", "firing_rate")
REFERENCE = ("firing_rate", "mean_activation", "max_activation", "active")


def base_package(rev: str, into: Path) -> None:
    """Extract ``pytest_qdm`` at ``rev`` into ``into``."""
    tar = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "pytest_qdm"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")


def _module(*names: str):
    """The first of ``names`` that imports (the engine moved into stream/ in a later tree)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"none of {names}")


def child(args) -> None:
    import numpy as np
    import torch
    from profiling import engine_timers
    from workloads import workload_p

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant == "base":  # this child imports pytest_qdm from the base tree
        sys.path.insert(0, str(args.base_dir))
    qdm = importlib.import_module("pytest_qdm")
    engine, stats = (
        _module(f"pytest_qdm.{n}", f"pytest_qdm.stream.{n}") for n in ("engine", "stats")
    )
    workload = workload_p(args.tokens, args.ctx)
    tokens = workload.tokens.reshape(-1)[: args.tokens].reshape(-1, args.ctx)
    conditions = [qdm.RTN(bits) for bits in (8, 7, 6, 5, 4)]
    config = qdm.AuditConfig(batch_size=args.batch_size, progress=False)
    with engine_timers(engine, stats) as timers:
        start = time.perf_counter()
        result = qdm.audit(workload.model, workload.sae, tokens, conditions, config)
        seconds = time.perf_counter() - start
    arrays = {f"reference.{k}": getattr(result.reference, k) for k in REFERENCE}
    for name, cond in result.conditions.items():
        arrays.update({f"{name}.{k}": getattr(cond, k) for k in ARRAYS})
    np.savez(args.save, **arrays)
    report = {"seconds": seconds, "tokens": tokens.numel(), "profile": dict(timers.totals)}
    print("VERSION-JSON " + json.dumps(report))


def run_child(args, variant: str, save: Path) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--save", str(save)]
    command += ["--tokens", str(args.tokens), "--ctx", str(args.ctx)]
    command += ["--batch-size", str(args.batch_size), "--base-dir", str(args.base_dir)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("VERSION-JSON ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"{variant} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("VERSION-JSON "))


def compare(base: Path, new: Path) -> tuple[bool, float]:
    import numpy as np

    a, b = np.load(base), np.load(new)
    identical = set(a) == set(b) and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    diffs = [np.nanmax(np.abs(a[k].astype(float) - b[k].astype(float)), initial=0) for k in a]
    return identical, float(max(diffs))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default="HEAD", help="git revision of the base engine (default HEAD)")
    p.add_argument("--tokens", type=int, default=8192, help="tokens (default 8192)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2, help="runs per version (default 2)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_engine_versions.json")
    p.add_argument("--child", choices=["base", "new"], help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--base-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.variant = args.child
        child(args)
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        args.base_dir = Path(tmp)
        base_package(args.rev, args.base_dir)
        runs = {"base": [], "new": []}
        for repeat in range(args.repeats):
            order = ("base", "new") if repeat % 2 == 0 else ("new", "base")
            for variant in order:
                console.print(f"run {repeat + 1}/{args.repeats}: {variant} ...")
                save = args.base_dir / f"{variant}.npz"
                runs[variant].append(run_child(args, variant, save))
        identical, max_diff = compare(args.base_dir / "base.npz", args.base_dir / "new.npz")

    table = Table(title=f"engine at {args.rev} (base) vs working tree (new), {args.tokens} tokens")
    table.add_column("part")
    for variant in runs:
        table.add_column(f"{variant} s", justify="right")
    best = {v: min(r, key=lambda x: x["seconds"]) for v, r in runs.items()}
    parts = sorted({k for r in best.values() for k in r["profile"]})
    for part in parts:
        table.add_row(part, *(f"{best[v]['profile'].get(part, 0):.2f}" for v in runs))
    other = [best[v]["seconds"] - sum(best[v]["profile"].values()) for v in runs]
    table.add_row("other (validation, RTN prep, python)", *(f"{o:.2f}" for o in other))
    table.add_row("total (best run)", *(f"{best[v]['seconds']:.2f}" for v in runs))
    for variant in runs:
        rates = ", ".join(f"{r['tokens'] / r['seconds']:.1f}" for r in runs[variant])
        console.print(f"{variant}: tokens/s per run: {rates}")
    console.print(table)
    speedup = best["base"]["seconds"] / best["new"]["seconds"]
    console.print(
        f"speedup (best runs): {speedup:.2f}x; results bit-identical: {identical} "
        f"(max |difference| {max_diff:.3g})"
    )
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rev": args.rev,
        "runs": runs,
        "speedup_best": speedup,
        "bit_identical": identical,
        "max_abs_difference": max_diff,
        "loadavg_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"written {args.out}")


if __name__ == "__main__":
    main()
