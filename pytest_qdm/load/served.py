"""A GGUF file as llama.cpp serves it: llama.cpp's own CPU forward (its quantized kernels,
q8-quantized activations in the dot products) on the audit's token ids, read at the SAE's
hook through the scheduler's eval callback (llama-cpp-python's low-level API).

llama.cpp names the residual stream after block ``L`` ``l_out-L``: TransformerLens'
``blocks.L.hook_resid_post``. :class:`ServedModel` gives the audit the part of a
HookedTransformer's surface it reads (``run_with_hooks`` with read-only hooks, logits, per-token
loss, ``cfg``, ``hook_dict``), so the engine streams its read-out into the same per-feature
statistics and takes perplexity from llama.cpp's logits. Hooks that would patch an
activation are refused: llama.cpp's graph cannot be edited from here.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
EXTRA = "llamacpp"


def require_llama_cpp() -> None:
    """ImportError (one line naming the extra) when llama-cpp-python is missing."""
    import importlib.util

    from pytest_qdm.load.formats import MissingFormatLibrary

    if importlib.util.find_spec("llama_cpp") is None:
        raise MissingFormatLibrary(
            "the served path runs llama.cpp through llama-cpp-python: "
            f"pip install 'pytest-qdm[{EXTRA}]'"
        )


def tensor_name(hook: str) -> str:
    """The llama.cpp graph tensor a read-out hook is (``blocks.L.hook_resid_post`` ->
    ``l_out-L``); ValueError for any other hook."""
    match = _RESID_POST.match(hook)
    if match is None:
        raise ValueError(
            f"the served path reads llama.cpp's residual stream (blocks.L.hook_resid_post) "
            f"only, not {hook!r}; use --qdm-candidate-path dequantize for this SAE"
        )
    return f"l_out-{match.group(1)}"


def _ggml():
    """libggml's tensor accessors (stable C API) from llama-cpp-python's own libraries."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    base = next(iter(sorted(lib_dir.glob("libggml-base.*"))), None) or next(
        iter(sorted(lib_dir.glob("libggml.*")))
    )
    lib = ctypes.CDLL(str(base))
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    return lib


def _quiet_logs() -> None:
    import llama_cpp

    @llama_cpp.llama_log_callback
    def ignore(level, text, user_data):  # noqa: ARG001 (C callback signature)
        return None

    _quiet_logs.callback = ignore  # kept alive: llama.cpp holds the pointer
    llama_cpp.llama_log_set(ignore, ctypes.c_void_p())


class ServedModel:
    """``file`` loaded by llama.cpp (CPU, ``threads`` threads; default torch's), with the
    HookedTransformer surface the audit reads. One row per llama.cpp decode, its memory
    cleared before each, so every row is computed from its own tokens alone; the context is
    made for the longest row seen."""

    served = True

    def __init__(self, file: str | Path, threads: int | None = None):
        require_llama_cpp()
        import llama_cpp
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        self.file = Path(file)
        config = AutoConfig.from_pretrained(self.file.parent, gguf_file=self.file.name)
        self.cfg = SimpleNamespace(
            model_name=self.file.stem,
            original_architecture=MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type),
            n_layers=config.num_hidden_layers,
            d_model=config.hidden_size,
            d_vocab=config.vocab_size,
            n_ctx=config.max_position_embeddings,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
        self.hook_dict = {
            f"blocks.{i}.hook_resid_post": None for i in range(config.num_hidden_layers)
        }
        self._ggml, self._wanted, self._captured = _ggml(), set(), {}
        _quiet_logs()
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self._model = llama_cpp.llama_model_load_from_file(str(self.file).encode(), model_params)
        if not self._model:
            raise ValueError(f"llama.cpp could not load {str(self.file)!r}")
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(self._observe)
        self._threads, self._ctx, self._batch, self._length = threads, None, None, 0

    def _context(self, length: int) -> None:
        """A llama.cpp context (and batch) for rows of up to ``length`` tokens, decoded in one
        micro-batch."""
        import llama_cpp

        if length <= self._length:
            return
        self._free(("_batch", "_ctx"))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = length
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = self._threads or torch.get_num_threads()
        params.cb_eval, params.cb_eval_user_data = self._callback, None
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise ValueError(f"llama.cpp could not make a context for {str(self.file)!r}")
        self._batch, self._length = llama_cpp.llama_batch_init(length, 0, 1), length

    def _free(self, handles=("_batch", "_ctx", "_model")) -> None:
        import llama_cpp

        free = {
            "_batch": llama_cpp.llama_batch_free,
            "_ctx": llama_cpp.llama_free,
            "_model": llama_cpp.llama_model_free,
        }
        for handle in handles:
            if getattr(self, handle, None) is not None:
                free[handle](getattr(self, handle))
                setattr(self, handle, None)

    def __del__(self):
        with contextlib.suppress(ImportError):  # interpreter shutdown: the process frees all
            self._free()

    def _observe(self, tensor, ask, user_data):  # noqa: ARG002 (C callback signature)
        name = self._ggml.ggml_get_name(tensor).decode()
        if ask:
            return name in self._wanted
        if name in self._wanted:
            n = self._ggml.ggml_nelements(tensor)
            if self._ggml.ggml_nbytes(tensor) != 4 * n:
                raise ValueError(f"llama.cpp tensor {name} is not float32")
            out = np.empty(n, dtype=np.float32)
            self._ggml.ggml_backend_tensor_get(tensor, out.ctypes.data, 0, 4 * n)
            self._captured.setdefault(name, []).append(out)
        return True

    def parameters(self):
        """Where the audit puts token ids: the CPU (llama.cpp keeps its own weights)."""
        return iter([torch.zeros(0)])

    def _row(self, ids: torch.Tensor, logits: bool) -> torch.Tensor | None:
        """Decode one row; captured tensors land in ``self._captured``; logits [ctx, vocab]."""
        import llama_cpp

        n, batch = ids.numel(), self._batch
        batch.n_tokens = n
        for i, token in enumerate(ids.tolist()):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = logits or i == n - 1
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama.cpp's llama_decode returned {status} on {self.file.name}")
        if not logits:
            return None
        pointer = llama_cpp.llama_get_logits(self._ctx)
        flat = np.ctypeslib.as_array(pointer, shape=(n * self.cfg.d_vocab,))
        return torch.from_numpy(flat.reshape(n, self.cfg.d_vocab).copy())

    def run_with_hooks(
        self,
        tokens: torch.Tensor,
        *,
        fwd_hooks=(),
        stop_at_layer: int | None = None,  # noqa: ARG002 (llama.cpp runs every block)
        return_type: str | None = "logits",
        loss_per_token: bool = False,
    ):
        """The TransformerLens call the audit makes: read-only hooks on
        ``blocks.L.hook_resid_post``, then logits, per-token loss or None."""
        names = {hook: tensor_name(hook) for hook, _ in fwd_hooks}
        last = f"l_out-{self.cfg.n_layers - 1}"  # llama.cpp keeps only output rows there
        want_logits = return_type is not None or last in names.values()
        self._wanted = set(names.values())
        rows, captured = [], {name: [] for name in self._wanted}
        self._context(tokens.shape[1])
        for row in tokens.cpu():
            self._captured = {}
            rows.append(self._row(row, want_logits))
            for name in self._wanted:
                captured[name].append(np.concatenate(self._captured[name]))
        n, ctx = tokens.shape
        for hook, fn in fwd_hooks:
            stacked = np.stack(captured[names[hook]]).reshape(n, ctx, self.cfg.d_model)
            activation = torch.from_numpy(stacked).to(tokens.device)
            if fn(activation, hook=SimpleNamespace(name=hook)) is not None:
                raise ValueError(
                    "the served path reads llama.cpp's activations and cannot replace them "
                    f"(a hook on {hook!r} returned a tensor)"
                )
        if return_type is None:
            return None
        logits = torch.stack(rows).to(tokens.device)
        if return_type == "logits":
            return logits
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            tokens[:, 1:].reshape(-1),
            reduction="none",
        ).reshape(n, ctx - 1)
        return nll if loss_per_token else nll.mean()

    def __call__(self, tokens: torch.Tensor, return_type: str | None = "logits", **kwargs):
        return self.run_with_hooks(tokens, return_type=return_type, **kwargs)
