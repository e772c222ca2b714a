"""Correctness of the audit on CUDA, in one short run for the first machine with a GPU.

    python benchmarks/gpu_checks.py                 # on a machine with 1 or more GPUs
    python benchmarks/gpu_checks.py --device cpu    # smoke run of this script here

Each check prints PASS or FAIL with its measured figure; the exit status is 1 if any
failed. The bundled model and its SAE, RTN INT8..INT4, the builtin corpus:

1. float32 on the GPU against float32 on the CPU (TF32 off): per-feature r agree
   (max |dr| over features active on both, and the survived fractions);
2. two-phase against one-phase on the GPU: identical, bit for bit;
3. the model in bfloat16 on the GPU against float32 on the CPU: the median |dr| over
   features (0.005 measured in bfloat16 on the CPU, 8,192 tokens);
4. with 2 or more GPUs: the model split over two GPUs (half its blocks on each, an explicit
   ``device_map`` through the TransformerBridge) against the same bridge model on one GPU,
   and the split really spans both GPUs.

Checks that need more GPUs than the machine has say SKIP with the reason. The time of each
check is printed; the whole run takes about a minute on one GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

BITS = (8, 7, 6, 5, 4)
TOLERANCE = {"float32": 1e-4, "bfloat16_median": 0.02, "split": 1e-5}


def tokens(n: int):
    from pytest_qdm import zoo
    from pytest_qdm.load.tokens import load_tokens

    return load_tokens(
        "builtin", zoo.load_tiny_tokenizer(), context_length=zoo.TINY_CONTEXT_LENGTH,
        max_tokens=n, prepend_bos=True,
    ).tokens  # fmt: skip


def audited(model, sae, rows, device: str, **config):
    import pytest_qdm as qdm

    settings = qdm.AuditConfig(progress=False, device=device, **config)
    return qdm.audit(model, sae, rows, [qdm.RTN(b) for b in BITS], settings)


def r_table(result) -> dict[str, np.ndarray]:
    return {name: c.correlation for name, c in result.conditions.items()}


def max_dr(a, b) -> float:
    """max |r_a - r_b| over features active (finite r) in both, for every condition."""
    worst = 0.0
    for name, ra in r_table(a).items():
        rb = r_table(b)[name]
        both = np.isfinite(ra) & np.isfinite(rb)
        worst = max(worst, float(np.abs(ra[both] - rb[both]).max(initial=0.0)))
    return worst


def median_dr(a, b) -> float:
    gaps = []
    for name, ra in r_table(a).items():
        rb = r_table(b)[name]
        both = np.isfinite(ra) & np.isfinite(rb)
        gaps.append(np.abs(ra[both] - rb[both]))
    return float(np.median(np.concatenate(gaps)))


def survived(result) -> str:
    return ", ".join(f"{c.summary.survived_pct:.1f}" for c in result.conditions.values())


def two_gpu_map() -> dict[str, int]:
    """The bundled model's first half of blocks (and embedding) on GPU 0, the rest on GPU 1."""
    import json

    from pytest_qdm.zoo import weights_dir

    layers = json.loads((weights_dir() / "config.json").read_text())["num_hidden_layers"]
    placed = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 1, "lm_head": 1}
    placed.update({f"model.layers.{i}": int(i >= layers // 2) for i in range(layers)})
    return placed


class Checks:
    def __init__(self):
        self.failed = 0

    def report(self, name: str, ok: bool | None, figure: str, started: float) -> None:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        self.failed += ok is False
        print(f"{verdict}  {name}: {figure}  ({time.perf_counter() - started:.1f} s)", flush=True)


def main(argv=None) -> int:
    from pytest_qdm import zoo
    from pytest_qdm.load.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to smoke-test")
    parser.add_argument("--tokens", type=int, default=8192)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; run on a GPU machine, or --device cpu to smoke-test")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpus = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0) if gpus else "no GPU"
    print(f"torch {torch.__version__}, {gpus} GPU(s): {name}; {args.tokens} tokens", flush=True)
    rows, checks = tokens(args.tokens), Checks()

    started = time.perf_counter()
    cpu = audited(zoo.load_tiny_model(), zoo.load_tiny_sae(), rows, "cpu")
    model, sae = zoo.load_tiny_model(device=args.device), zoo.load_tiny_sae(device=args.device)
    here = audited(model, sae, rows, args.device)
    gap = max_dr(here, cpu)
    figure = f"max |dr| {gap:.1e} (bound {TOLERANCE['float32']:g}); survived % {survived(here)}"
    checks.report(
        "1 float32 on the device = float32 on CPU", gap <= TOLERANCE["float32"], figure, started
    )

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        two = audited(model, sae, rows, args.device, two_phase=True, two_phase_dir=folder)
    same = all(np.array_equal(r_table(two)[n], r, equal_nan=True) for n, r in r_table(here).items())
    checks.report("2 two-phase = one-phase on the device", same, f"identical: {same}", started)

    started = time.perf_counter()
    bf16_model = zoo.load_tiny_model(device=args.device).to(torch.bfloat16)
    half = audited(bf16_model, sae, rows, args.device)
    gap = median_dr(half, cpu)
    figure = f"median |dr| {gap:.2e} (bound {TOLERANCE['bfloat16_median']:g}); survived % {survived(half)}"
    checks.report(
        "3 bfloat16 on the device ~ float32 on CPU",
        gap <= TOLERANCE["bfloat16_median"],
        figure,
        started,
    )

    started = time.perf_counter()
    if gpus < 2 or not args.device.startswith("cuda"):
        checks.report("4 a model split over 2 GPUs", None, f"needs 2 GPUs, have {gpus}", started)
    else:
        whole = load_model("tiny", device="cuda:0", backend="bridge")
        split = load_model("tiny", device="cuda:0", device_map=two_gpu_map())
        placed = sorted({str(p.device) for p in split.parameters()})
        gap = max_dr(audited(split, sae, rows, "cuda:0"), audited(whole, sae, rows, "cuda:0"))
        ok = gap <= TOLERANCE["split"] and len(placed) >= 2
        figure = f"max |dr| {gap:.1e} (bound {TOLERANCE['split']:g}); weights on {placed}"
        checks.report("4 a model split over 2 GPUs = on one GPU", ok, figure, started)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
