"""Train qdm-tiny v2 (Llama-style LM + two TopK SAEs) from scratch, seeded, CPU-only, offline.

    HF_HUB_OFFLINE=1 python training/train_tiny.py --out DIR

1. Corpus: prose (pytest_qdm builtin docs) + code (stdlib .py source, see corpus.py); each
   domain has a train and a held-out split; sha256 of every split is in the report.
2. Byte-level BPE (vocab 4096, ``<|endoftext|>`` id 0 = BOS/EOS, ``<|padding|>`` id 1) on
   both domains' train text.
3. ``LlamaForCausalLM`` (RMSNorm, rotary, SwiGLU, untied embeddings, float32), trained on
   rows of [BOS] + 127 tokens drawn from both domains (``--code-fraction`` of rows are code),
   Adam(W) with beta2 0.95, no weight decay, high lr, no grad clipping (the heavy-tail levers).
4. HF -> TransformerLens conversion (hf_to_tl.py, no folding), logits checked to 1e-4.
5. Two sae_lens ``TopKSAE``s on ``blocks.{L}.hook_resid_post`` (read-out + earlier layer).
6. training_report.json with corpus hashes, LM/SAE quality, kurtosis, outlier measure.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

BOS, PAD = "<|endoftext|>", "<|padding|>"
CTX = 128
NAME = "qdm-tiny-v2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--out", type=Path, required=True)
    a("--seed", type=int, default=0)
    a("--vocab-size", type=int, default=4096)
    a("--n-layers", type=int, default=6)
    a("--d-model", type=int, default=128)
    a("--n-heads", type=int, default=4)
    a("--d-mlp", type=int, default=384)
    a("--steps", type=int, default=600)
    a("--batch-size", type=int, default=32)
    a("--lr", type=float, default=1e-2)
    a("--beta2", type=float, default=0.95)
    a("--weight-decay", type=float, default=0.0)
    a("--clip", type=float, default=0.0, help="grad-norm clip; 0 = none")
    a("--warmup-steps", type=int, default=30)
    a("--code-fraction", type=float, default=0.5)
    a("--hooks", default="blocks.4.hook_resid_post,blocks.1.hook_resid_post")
    a("--sae-d", type=int, default=2048)
    a("--sae-k", type=int, default=32)
    a("--sae-steps", type=int, default=600)
    a("--sae-batch-size", type=int, default=1024)
    a("--sae-lr", type=float, default=2e-3)
    a("--sae-train-tokens", type=int, default=200000)
    a("--reuse-model", type=Path, default=None, help="probe only: take LM+tokenizer from DIR")
    return p.parse_args(argv)


def train_tokenizer(out: Path, texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(PAD) == 1
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=PAD,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(
        {
            "add_bos_token": False,
            "add_eos_token": False,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
    )
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(out), local_files_only=True)


def encode(tokenizer: Any, text: str) -> Any:
    import torch

    return torch.tensor(tokenizer.backend_tokenizer.encode(text).ids, dtype=torch.long)


def rows_of(ids: Any, max_tokens: int | None = None) -> Any:
    from pytest_qdm.load import tokens as data

    return data.chunk_tokens(ids, CTX, bos_token_id=0, max_tokens=max_tokens)


def kurtosis_stats(model: Any) -> dict:
    import torch

    ks = {}
    for n, p in model.named_parameters():
        if p.ndim == 2 and "embed" not in n and "lm_head" not in n:
            w = p.detach().double().flatten()
            z = (w - w.mean()) / w.std()
            ks[n] = float((z**4).mean() - 3)
    vals = torch.tensor(list(ks.values()))
    worst = max(ks, key=ks.get)
    return {"mean": float(vals.mean()), "max": float(vals.max()), "argmax": worst, "per": ks}


def outlier_stats(tl_model: Any, rows: Any, hook: str) -> dict:
    import torch

    with torch.no_grad():
        _, cache = tl_model.run_with_cache(rows, names_filter=lambda n: n == hook)
    r = cache[hook][:, 1:].abs().reshape(-1, cache[hook].shape[-1])  # BOS excluded
    med = float(r.median())
    per_dim_max = r.max(0).values
    return {
        "hook": hook,
        "max_abs_over_median_abs": float(r.max()) / med,
        "massive_dims_gt_20x_median": int((per_dim_max > 20 * med).sum()),
        "max_dim_rms_over_mean_dim_rms": float(
            (r.pow(2).mean(0).sqrt().max()) / r.pow(2).mean(0).sqrt().mean()
        ),
    }


def heldout_loss(hf: Any, rows: Any, bs: int = 32) -> float:
    import torch

    tot = cnt = 0.0
    with torch.no_grad():
        for s in range(0, rows.shape[0], bs):
            b = rows[s : s + bs]
            logits = hf(b).logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1), reduction="sum"
            )
            tot += float(nll)
            cnt += b[:, 1:].numel()
    return tot / cnt


def unigram_ce(train_ids: Any, targets: Any, v: int) -> float:
    import torch

    c = torch.bincount(train_ids.flatten(), minlength=v).double() + 1
    logp = c.log() - c.sum().log()
    return float(-logp[targets.flatten()].mean())


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch
    from corpus import EXCLUDED_PARTS, HELDOUT_MODULUS, domain_text, sha256
    from hf_to_tl import check_logits, hf_to_tl
    from sae_train import collect_activations, sae_quality, train_topk_sae
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    log = lambda m: print(m, flush=True)  # noqa: E731
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    texts, corpus_rep = {}, {}
    for dom in ("prose", "code"):
        for split in ("train", "heldout"):
            text, keys = domain_text(dom, split)
            texts[dom, split] = text
            corpus_rep[f"{dom}_{split}"] = {
                "sha256": sha256(text),
                "chars": len(text),
                "documents": len(keys),
            }
    corpus_rep["code_rule"] = (
        f"stdlib *.py (sysconfig stdlib dir), parts excluded {sorted(EXCLUDED_PARTS)}, "
        f"names test_*; heldout iff sha256(relpath)[:8] big-endian % {HELDOUT_MODULUS} == 0"
    )
    corpus_rep["prose_rule"] = "pytest_qdm.load.corpus.builtin_documents(split)"
    if args.reuse_model:
        import shutil

        from transformers import AutoTokenizer

        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(args.reuse_model / f, out / f)
        tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    else:
        tok = train_tokenizer(
            out, [texts["prose", "train"], texts["code", "train"]], args.vocab_size
        )
    ids = {k: encode(tok, t) for k, t in texts.items()}
    for k, v in ids.items():
        corpus_rep[f"{k[0]}_{k[1]}"]["tokens"] = int(v.numel())
    log(f"tokens: { {f'{a}_{b}': int(v.numel()) for (a, b), v in ids.items()} }")

    torch.manual_seed(args.seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.d_model,
        intermediate_size=args.d_mlp,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_heads,
        max_position_embeddings=CTX,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        attention_bias=False,
        mlp_bias=False,
    )
    hf = LlamaForCausalLM(cfg).float()
    n_params = sum(p.numel() for p in hf.parameters())
    opt = torch.optim.AdamW(
        hf.parameters(), lr=args.lr, betas=(0.9, args.beta2), weight_decay=args.weight_decay
    )
    gen = torch.Generator().manual_seed(args.seed)
    n_code = int(round(args.batch_size * args.code_fraction))
    n_prose = args.batch_size - n_code
    pools = {d: rows_of(ids[d, "train"]) for d in ("prose", "code")}
    t0 = time.perf_counter()
    curve = []
    if args.reuse_model:
        prev = json.loads((args.reuse_model / "training_report.json").read_text())
        hf = LlamaForCausalLM.from_pretrained(str(args.reuse_model), local_files_only=True)
        hf = hf.float()
        curve = prev["model"]["curve"]
    for step in range(0 if args.reuse_model else args.steps):
        parts = []
        for d, n in (("prose", n_prose), ("code", n_code)):
            if n:
                off = torch.randint(0, CTX - 1, (1,), generator=gen)
                idx = torch.randint(0, pools[d].shape[0] - 1, (n,), generator=gen)
                flat = ids[d, "train"]
                starts = idx * (CTX - 1) + off
                body = torch.stack([flat[s : s + CTX - 1] for s in starts.tolist()])
                parts.append(torch.cat([torch.zeros(n, 1, dtype=torch.long), body], 1))
        batch = torch.cat(parts)
        warm = min(1.0, (step + 1) / args.warmup_steps)
        prog = max(0.0, (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        hf.train()
        loss = hf(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(hf.parameters(), args.clip)
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            curve.append({"step": step + 1, "train_loss": float(loss.detach())})
            log(
                f"step {step + 1}/{args.steps} loss {float(loss.detach()):.3f} {time.perf_counter() - t0:.0f}s"
            )
    model_s = prev["model"]["wall_seconds"] if args.reuse_model else time.perf_counter() - t0
    hf.eval()
    hf.generation_config.bos_token_id = 0
    hf.generation_config.eos_token_id = 0
    hf.generation_config.pad_token_id = 1
    hf.save_pretrained(str(out), safe_serialization=True)

    tl = hf_to_tl(hf, tok)
    ho = {d: rows_of(ids[d, "heldout"], 50000) for d in ("prose", "code")}
    diff = check_logits(hf, tl, ho["prose"][:4])
    all_train = torch.cat([ids["prose", "train"], ids["code", "train"]])
    lm = {"tl_vs_hf_max_abs_logit_diff": diff}
    for d in ("prose", "code"):
        lm[f"heldout_loss_{d}_nats"] = heldout_loss(hf, ho[d])
        lm[f"unigram_ce_{d}_nats"] = unigram_ce(all_train, ho[d][:, 1:], len(tok))
    log(f"LM: {lm}")
    hooks = args.hooks.split(",")
    kurt = kurtosis_stats(hf)
    outl = outlier_stats(tl, ho["prose"][:64], hooks[0])
    log(f"kurtosis mean {kurt['mean']:.3f} max {kurt['max']:.3f}; outliers {outl}")

    half = args.sae_train_tokens // 2
    sae_rows = torch.cat(
        [rows_of(ids["prose", "train"], half), rows_of(ids["code", "train"], half)]
    )
    acts = collect_activations(tl, sae_rows, hooks)
    ho_acts = collect_activations(tl, ho["prose"], hooks)
    saes = {}
    for hook in hooks:
        t1 = time.perf_counter()
        meta = {
            "model_name": NAME,
            "hook_name": hook,
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": CTX,
            "dataset_path": "builtin prose + stdlib code (train split)",
            "model_from_pretrained_kwargs": {},
        }
        sae, st = train_topk_sae(
            acts[hook],
            args.sae_d,
            args.sae_k,
            args.sae_steps,
            args.sae_batch_size,
            args.sae_lr,
            args.seed,
            meta,
            log,
        )
        sae.save_model(out / f"sae_{hook}")
        q = sae_quality(sae, ho_acts[hook])
        log(f"SAE {hook}: {q}")
        saes[hook] = {
            "class": "sae_lens.TopKSAE",
            "d_sae": args.sae_d,
            "k": args.sae_k,
            "heldout_prose": q,
            "wall_seconds": time.perf_counter() - t1,
            **st,
        }
    sizes = {p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    report = {
        "model_name": NAME,
        "default_hook": hooks[0],
        "hooks": hooks,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "python": platform.python_version(),
        "pytest_qdm_file": __import__("pytest_qdm").__file__,
        "torch": torch.__version__,
        "corpus": corpus_rep,
        "model": {
            "parameter_count": n_params,
            "tokens_trained_on": args.steps * args.batch_size * CTX,
            "tokens_per_parameter": args.steps * args.batch_size * CTX / n_params,
            "wall_seconds": model_s,
            **lm,
            "curve": curve,
        },
        "weight_excess_kurtosis": kurt,
        "activation_outliers": outl,
        "saes": saes,
        "total_bytes": sum(sizes.values()),
        "total_wall_seconds": time.perf_counter() - t_all,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"done in {report['total_wall_seconds']:.0f}s")
    return report


if __name__ == "__main__":
    main()
