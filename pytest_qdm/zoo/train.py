"""Reproduce the bundled qdm-tiny weights: ``python -m pytest_qdm.zoo.train``.

Steps, all seeded and CPU-only, with no network:

1. Byte-level BPE tokenizer (``tokenizers``) on the built-in train corpus (``pytest_qdm.data``):
   vocabulary 4096, ``<|endoftext|>`` id 0 (BOS/EOS) and ``<|padding|>`` id 1, as GPT-NeoX.
2. A GPT-NeoX/Pythia-style ``HookedTransformer`` (rotary, parallel attention + MLP, LayerNorm,
   GELU, untied embeddings) trained from scratch with AdamW on rows of
   ``[BOS] + 127`` train-corpus tokens (a fresh random phase and order each epoch).
3. Held-out evaluation: next-token loss in nats/token on the held-out split, and the
   cross-entropy of an add-one-smoothed unigram model (counted on the train tokens) on the
   same held-out target tokens.
4. Two sae_lens ``StandardSAE``s on ``blocks.{L}.hook_resid_post`` (see ``train_sae``),
   measured on held-out activations.

Writes ``tokenizer.json``, ``tokenizer_config.json``, ``model.safetensors``,
``model_config.json``, ``sae_<hook>/`` and ``training_report.json`` into ``--out`` (default:
the package's ``zoo/weights``). The defaults below produced the shipped weights (see
``MODEL_CARD.md`` for the measured wall time; about 14 minutes for the model and 5 for the
SAEs on a shared 2-core CPU). Not run in CI. One torch thread is the default: on a shared
2-core machine it was measured faster than two, and it keeps the run bit-reproducible.
Bit-for-bit reproduction also needs the same Python (the corpus is read from the standard
library; its sha256 is in the report), the same torch version and the same CPU kind.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

from pytest_qdm.load import tokens as data
from pytest_qdm.zoo import (
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    TINY_CONTEXT_LENGTH,
    TINY_HOOKS,
    TINY_MODEL_NAME,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    TRAINING_REPORT_FILE,
    weights_dir,
)
from pytest_qdm.zoo.train_sae import SAETrainConfig, collect_activations, sae_quality, train_sae

BOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pytest_qdm.zoo.train", description=__doc__.split("\n")[0]
    )
    a = p.add_argument
    a("--out", type=Path, default=weights_dir(), help="output folder (default: %(default)s)")
    a("--seed", type=int, default=0, help="seed for everything (default: %(default)s)")
    a(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 is faster than 2 on a shared 2-core machine (default: %(default)s)",
    )
    a("--vocab-size", type=int, default=4096, help="BPE vocabulary (default: %(default)s)")
    a("--n-layers", type=int, default=6, help="(default: %(default)s)")
    a("--d-model", type=int, default=128, help="(default: %(default)s)")
    a("--n-heads", type=int, default=4, help="(default: %(default)s)")
    a(
        "--rotary-fraction",
        type=float,
        default=0.25,
        help="rotary_dim / d_head, as Pythia (default: %(default)s)",
    )
    a(
        "--init-range",
        type=float,
        default=None,
        help="std of the normal (gpt2-mode) weight init (default: TransformerLens's 0.8/sqrt(d_model))",
    )
    a("--steps", type=int, default=800, help="model optimizer steps (default: %(default)s)")
    a(
        "--batch-size",
        type=int,
        default=32,
        help="rows of n_ctx tokens per step (default: %(default)s)",
    )
    a("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default: %(default)s)")
    a("--weight-decay", type=float, default=0.1, help="(default: %(default)s)")
    a("--warmup-steps", type=int, default=60, help="(default: %(default)s)")
    a("--sae-expansion", type=int, default=8, help="d_sae / d_model (default: %(default)s)")
    a(
        "--sae-l1",
        type=float,
        default=1.0,
        help="sparsity coefficient lambda (default: %(default)s)",
    )
    a("--sae-steps", type=int, default=3000, help="SAE steps per hook (default: %(default)s)")
    a(
        "--sae-batch-size",
        type=int,
        default=2048,
        help="activations per SAE step (default: %(default)s)",
    )
    a("--sae-lr", type=float, default=1e-3, help="(default: %(default)s)")
    a("--only-saes", action="store_true", help="reuse the model in --out and retrain the SAEs")
    return p.parse_args(argv)


def train_tokenizer(out: Path, vocab_size: int) -> Any:
    """Byte-level BPE on the train documents; writes tokenizer.json and tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text for _, text in data.builtin_documents("train")], trainer)
    if tok.token_to_id(BOS_TOKEN) != 0 or tok.token_to_id(PAD_TOKEN) != 1:
        raise RuntimeError("special tokens did not get ids 0 and 1")
    tok.save(str(out / TOKENIZER_FILE))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": BOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(out), local_files_only=True)


def model_config(args: argparse.Namespace, d_vocab: int) -> dict[str, Any]:
    """HookedTransformerConfig kwargs (written to model_config.json)."""
    d_head = args.d_model // args.n_heads
    return {
        "model_name": TINY_MODEL_NAME,
        "n_layers": args.n_layers,
        "d_model": args.d_model,
        "n_heads": args.n_heads,
        "d_head": d_head,
        "d_mlp": 4 * args.d_model,
        "n_ctx": TINY_CONTEXT_LENGTH,
        "d_vocab": d_vocab,
        "act_fn": "gelu",
        "normalization_type": "LN",
        "positional_embedding_type": "rotary",
        "rotary_dim": max(2, int(round(d_head * args.rotary_fraction))),
        "rotary_adjacent_pairs": False,
        "init_mode": "gpt2",
        "initializer_range": (
            args.init_range if args.init_range is not None else 0.8 / math.sqrt(args.d_model)
        ),
        "parallel_attn_mlp": True,
        "original_architecture": "GPTNeoXForCausalLM",
        "default_prepend_bos": True,
        "tokenizer_prepends_bos": False,
        "seed": args.seed,
    }


def _epoch_rows(ids: Any, ctx: int, gen: Any) -> Any:
    """A random phase and a random order of [BOS] + (ctx - 1)-token rows over the train ids."""
    import torch

    offset = int(torch.randint(0, ctx - 1, (1,), generator=gen))
    rows = data.chunk_tokens(ids[offset:], ctx, bos_token_id=0)
    return rows[torch.randperm(rows.shape[0], generator=gen)]


def heldout_loss(model: Any, tokens: Any, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats/token) over every position of ``tokens``."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size]
            loss = model(batch, return_type="loss", loss_per_token=True)
            total += float(loss.sum())
            count += loss.numel()
    return total / count


def unigram_cross_entropy(train_ids: Any, targets: Any, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of add-one-smoothed train unigram frequencies on ``targets``."""
    import torch

    counts = torch.bincount(torch.as_tensor(train_ids).flatten(), minlength=vocab_size).double() + 1
    logp = counts.log() - counts.sum().log()
    return float(-logp[torch.as_tensor(targets).flatten()].mean())


def train_model(
    args: argparse.Namespace, cfg_kwargs: dict, train_ids: Any, heldout: Any, log: Any
) -> tuple[Any, list]:
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(args.seed)
    model = HookedTransformer(HookedTransformerConfig(**cfg_kwargs))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    rows, cursor, curve = _epoch_rows(train_ids, TINY_CONTEXT_LENGTH, gen), 0, []
    t0 = time.perf_counter()
    for step in range(args.steps):
        if cursor + args.batch_size > rows.shape[0]:
            rows, cursor = _epoch_rows(train_ids, TINY_CONTEXT_LENGTH, gen), 0
        batch = rows[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        warm = min(1.0, (step + 1) / args.warmup_steps)
        progress = max(0.0, (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps))
        for group in opt.param_groups:
            group["lr"] = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        model.train()
        loss = model(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            model.eval()
            ho = heldout_loss(model, heldout[:128])
            curve.append(
                {"step": step + 1, "train_loss": float(loss.detach()), "heldout_loss_subset": ho}
            )
            log(
                f"step {step + 1}/{args.steps} train {float(loss.detach()):.3f} heldout(16k tok) {ho:.3f} {time.perf_counter() - t0:.0f}s"
            )
    return model.eval(), curve


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch
    from safetensors.torch import load_file, save_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    train_corpus, heldout_corpus = data.builtin_corpus("train"), data.builtin_corpus("heldout")
    if args.only_saes:
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(out), local_files_only=True)
    else:
        tokenizer = train_tokenizer(out, args.vocab_size)
    train_ids = torch.tensor(data.encode_text(tokenizer, train_corpus.text), dtype=torch.long)
    heldout = data.chunk_tokens(
        data.encode_text(tokenizer, heldout_corpus.text), TINY_CONTEXT_LENGTH, bos_token_id=0
    )
    log(
        f"corpus: {len(train_corpus.text)} chars / {train_ids.numel()} train tokens, {heldout.numel()} held-out"
    )
    cfg_kwargs = model_config(args, d_vocab=len(tokenizer))
    t_model = time.perf_counter()
    if args.only_saes:
        cfg_kwargs = json.loads((out / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
        model = HookedTransformer(HookedTransformerConfig(**cfg_kwargs))
        model.load_state_dict(load_file(str(out / MODEL_WEIGHTS_FILE)), strict=False)
        model.eval()
        curve = json.loads((out / TRAINING_REPORT_FILE).read_text())["model"]["curve"]
        model_seconds = json.loads((out / TRAINING_REPORT_FILE).read_text())["model"][
            "wall_seconds"
        ]
    else:
        model, curve = train_model(args, cfg_kwargs, train_ids, heldout, log)
        model_seconds = time.perf_counter() - t_model
        params = {n: p.detach().contiguous() for n, p in model.named_parameters()}
        save_file(params, str(out / MODEL_WEIGHTS_FILE), metadata={"model_name": TINY_MODEL_NAME})
        (out / MODEL_CONFIG_FILE).write_text(
            json.dumps(cfg_kwargs, indent=2) + "\n", encoding="utf-8"
        )
    ho_loss = heldout_loss(model, heldout)
    uni = unigram_cross_entropy(train_ids, heldout[:, 1:], len(tokenizer))
    log(f"held-out loss {ho_loss:.4f} nats/token, unigram {uni:.4f}, gap {uni - ho_loss:.4f}")

    sae_cfg = SAETrainConfig(
        d_sae=args.sae_expansion * args.d_model,
        l1_coefficient=args.sae_l1,
        steps=args.sae_steps,
        batch_size=args.sae_batch_size,
        lr=args.sae_lr,
        seed=args.seed,
    )
    train_rows = data.chunk_tokens(train_ids, TINY_CONTEXT_LENGTH, bos_token_id=0)
    train_acts = collect_activations(model, train_rows, list(TINY_HOOKS))
    heldout_acts = collect_activations(model, heldout, list(TINY_HOOKS))
    sae_reports = {}
    for hook in TINY_HOOKS:
        t_sae = time.perf_counter()
        metadata = {
            "model_name": TINY_MODEL_NAME,
            "hook_name": hook,
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": TINY_CONTEXT_LENGTH,
            "dataset_path": "pytest_qdm.data:builtin (train split)",
            "model_from_pretrained_kwargs": {},
        }
        log(f"SAE {hook}: {train_acts[hook].shape[0]} train activations")
        sae, stats = train_sae(train_acts[hook], sae_cfg, metadata, log)
        sae.save_model(out / f"sae_{hook}")
        quality = sae_quality(sae, heldout_acts[hook])
        log(f"SAE {hook}: {quality}")
        sae_reports[hook] = {
            "heldout": quality.to_dict(),
            "wall_seconds": time.perf_counter() - t_sae,
            **stats,
        }

    n_params = sum(p.numel() for p in model.parameters())
    report = {
        "model_name": TINY_MODEL_NAME,
        "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"
        },
        "python": platform.python_version(),
        "torch": torch.__version__,
        "corpus": {
            "train_sha256": train_corpus.sha256,
            "heldout_sha256": heldout_corpus.sha256,
            "train_chars": len(train_corpus.text),
            "train_tokens": int(train_ids.numel()),
            "heldout_tokens": int(heldout.numel()),
        },
        "model": {
            "config": cfg_kwargs,
            "parameter_count": n_params,
            "steps": args.steps,
            "tokens_trained_on": args.steps * args.batch_size * TINY_CONTEXT_LENGTH,
            "wall_seconds": model_seconds,
            "heldout_loss_nats": ho_loss,
            "unigram_cross_entropy_nats": uni,
            "curve": curve,
        },
        "saes": sae_reports,
        "total_wall_seconds": time.perf_counter() - t_start,
    }
    (out / TRAINING_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(json.dumps({k: v for k, v in report["model"].items() if k != "curve"}, indent=2))
    return report


if __name__ == "__main__":
    main()
