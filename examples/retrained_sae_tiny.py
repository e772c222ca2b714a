"""The retrained-SAE baseline on the bundled model (docs/retrained-sae.md).

    python examples/retrained_sae_tiny.py --bits 6 4 --budget 65536 --tokens 32768 --out DIR

For each width (and with ``--null`` the reference model itself, the trainer's own noise
floor): audit RTN INTb with the bundled SAE, retrain the SAE on that model's
activations (sae_lens' trainer, from the reference SAE, seed 0) for ``--budget`` tokens of
the training rows (three quarters of ``--tokens``), and measure the three-way table and the
lost/moved split on the held-out quarter. Writes ``retrain-int<b>.json`` (RetrainResult) and
prints the tables.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console

from pytest_qdm.compress.conditions import RTN, Reference
from pytest_qdm.load.tokens import load_tokens
from pytest_qdm.run.retrain_phase import retrain_sae
from pytest_qdm.settings import AuditConfig
from pytest_qdm.zoo import load_tiny_model, load_tiny_sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="*", default=[6, 4])
    parser.add_argument(
        "--null", action="store_true", help="also retrain on the reference model itself"
    )
    parser.add_argument("--budget", type=int, default=65_536)
    parser.add_argument("--tokens", type=int, default=32_768)
    parser.add_argument("--init", choices=("reference", "random"), default="reference")
    parser.add_argument("--out", type=Path, default=Path("qdm-report"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny matrices)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, sae = load_tiny_model(device="cpu"), load_tiny_sae(device="cpu")
    tokens = load_tokens(
        "builtin", model.tokenizer, context_length=128, max_tokens=args.tokens, prepend_bos=True
    )
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()
    conditions = [RTN(bits) for bits in args.bits] + ([Reference()] if args.null else [])
    for condition in conditions:
        started = time.perf_counter()
        result = retrain_sae(
            model, sae, tokens, condition, budget=args.budget, init=args.init, config=AuditConfig()
        )
        path = args.out / f"retrain-{condition.name}-{args.init}.json"
        path.write_text(result.model_dump_json(indent=1))
        console.print(f"{condition.name}: {time.perf_counter() - started:.0f} s -> {path}")
        for row in result.table:
            console.print(row.model_dump())
        for split in result.bands:
            console.print(split.model_dump())


if __name__ == "__main__":
    main()
