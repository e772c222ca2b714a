"""What the forward path costs against the dequantize path, on the same candidate.

Each format's checkpoint is made from the bundled model by its own library (as in
tests/load/test_checkpoints.py), loaded by both paths (``Candidate.from_pretrained(path=...)``)
and audited by both in ONE run (one reference pass, the two conditions on the same
batches). Printed per format: the wall time of each path's forwards inside that run (the
time spent in ``Condition.running``: the forwards to the read-out hook, and the dequantize
path's weight swaps), their ratio forward / dequantize, the load times,
and max |dr| between the two paths over the reference's active features (with the median
and the survival of each).

    .venv/bin/python benchmarks/bench_candidate_paths.py --tokens 8192 --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import pytest_qdm as qdm
from pytest_qdm.compress.conditions import Condition
from pytest_qdm.load.checkpoints import inspect_checkpoint
from pytest_qdm.zoo import weights_dir

FORMATS = ("llm-int8", "nf4", "w8a8", "fp8-dynamic")


def make_checkpoint(fmt: str, root: Path) -> str:
    """The bundled model quantized by ``fmt``'s library, saved with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    folder = root / f"tiny-{fmt}"
    src = str(weights_dir())
    if fmt in ("llm-int8", "nf4"):
        settings = (
            {"load_in_8bit": True}
            if fmt == "llm-int8"
            else {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
        )
        config = BitsAndBytesConfig(**settings, bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(
            src, quantization_config=config, dtype=torch.float32, device_map="cpu"
        )
    else:
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier

        scheme = {"w8a8": "W8A8", "fp8-dynamic": "FP8_DYNAMIC"}[fmt]
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        modifier = QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])
        oneshot(model=model, recipe=modifier)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return str(folder)


class Timed(Condition):
    """A condition whose forwards (the body of :meth:`running`) are timed."""

    def __init__(self, inner: Condition):
        self.inner, self.name, self.seconds = inner, inner.name, 0.0

    def compressed_weights(self, model, layers=None):
        return self.inner.compressed_weights(model, layers)

    def describe(self):
        return self.inner.describe()

    @contextmanager
    def running(self, model, weights):
        started = time.perf_counter()  # the dequantize path's weight swap included
        with self.inner.running(model, weights) as run:
            yield run
        self.seconds += time.perf_counter() - started


def bench(fmt: str, root: Path, reference, sae, tokens) -> dict:
    folder = make_checkpoint(fmt, root)
    loaded, load_seconds = {}, {}
    for path in ("dequantize", "forward"):
        started = time.perf_counter()
        candidate = qdm.Candidate.from_pretrained(folder, name=path, path=path, device="cpu")
        load_seconds[path] = time.perf_counter() - started
        loaded[path] = Timed(candidate)
    default = inspect_checkpoint(folder).path
    started = time.perf_counter()
    result = qdm.audit(
        reference, sae, tokens, list(loaded.values()), qdm.AuditConfig(progress=False)
    )
    audit_seconds = time.perf_counter() - started
    active = result.reference.active
    r = {p: result.conditions[p].correlation[active] for p in loaded}
    gap = np.abs(r["forward"] - r["dequantize"])
    forward, dequantize = loaded["forward"].seconds, loaded["dequantize"].seconds
    return {
        "format": fmt,
        "scheme": result.conditions["forward"].spec.checkpoint.scheme,
        "default_path": default,
        "forward_seconds": forward,
        "dequantize_seconds": dequantize,
        "ratio_forward_over_dequantize": forward / dequantize,
        "load_seconds": load_seconds,
        "audit_seconds": audit_seconds,
        "max_abs_dr": float(gap.max()),
        "median_abs_dr": float(np.median(gap)),
        "survived_pct": {p: result.conditions[p].summary.survived_pct for p in loaded},
        "n_active": int(active.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--formats", default=",".join(FORMATS), help=", ".join(FORMATS))
    parser.add_argument("--threads", type=int, default=None)
    here = Path(__file__).parent
    parser.add_argument("--out", type=Path, default=here / "results/candidate_paths.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from pytest_qdm.load.tokens import load_tokens
    from pytest_qdm.zoo import load_tiny_model, load_tiny_sae

    reference, sae = load_tiny_model(device="cpu"), load_tiny_sae(device="cpu")
    tokens = load_tokens(
        "builtin", reference.tokenizer, context_length=128, max_tokens=args.tokens, prepend_bos=True
    ).tokens
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for fmt in args.formats.split(","):
            row = bench(fmt, Path(root), reference, sae, tokens)
            rows.append(row)
            print(
                f"{fmt} ({row['scheme']}; default path {row['default_path']}): forward "
                f"{row['forward_seconds']:.2f} s, dequantize {row['dequantize_seconds']:.2f} s, "
                f"ratio {row['ratio_forward_over_dequantize']:.2f}; max |dr| "
                f"{row['max_abs_dr']:.3f} (median {row['median_abs_dr']:.1e}) over "
                f"{row['n_active']} active features; survived {row['survived_pct']}",
                flush=True,
            )
    result = {"n_tokens": int(tokens.numel()), "threads": torch.get_num_threads(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
