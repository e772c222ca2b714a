"""The Hugging Face Hub policy: one offline rule and one local-or-Hub path rule.

Offline: ``offline=True``, ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` /
``HF_DATASETS_OFFLINE`` set, or a failed 2-second connection check of ``HF_ENDPOINT``
(skipped behind an HTTPS proxy, which decides for itself). Hub loads then run in
huggingface_hub's offline mode (the local cache still works) and a miss raises
:class:`HubUnavailableError` at once, naming the local-folder way forward.

Local-or-Hub rule for a string ``spec`` (:func:`local_dir`): an existing directory is
local; a string that looks like a path (absolute, starts with ``.`` or ``~``, or has more
than one ``/``) but does not exist raises FileNotFoundError; anything else is a Hub name.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class HubUnavailableError(RuntimeError):
    """A model or SAE could not be fetched from the Hugging Face Hub (offline, unreachable,
    or not in the local cache). The message names what was being loaded."""


_reachability: dict[str, tuple[float, bool]] = {}


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the Hub endpoint (``HF_ENDPOINT``) opens within
    ``timeout`` seconds (DNS included). Results are cached for 30 seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (80 if url.scheme == "http" else 443),
    )
    cached = _reachability.get(host)
    if cached and time.monotonic() - cached[0] < 30:
        return cached[1]
    result = [False]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout
    thread.start()
    thread.join(timeout)
    _reachability[host] = (time.monotonic(), result[0])
    return result[0]


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline_reason(offline: bool | None = None) -> str | None:
    """Why Hub loads run offline, or None when they may use the network."""
    if offline is not None:
        return "offline=True was given" if offline else None
    for var in OFFLINE_VARIABLES:
        if env_true(var):
            return f"{var}={os.environ[var]} is set"
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return None  # a proxy decides; do not probe directly
    if not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return f"{endpoint} is not reachable (2 s connection check)"
    return None


@contextmanager
def _offline_mode():
    """huggingface_hub's offline mode for the body (read at call time), then restored."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved[0]
        if saved[1] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[1]


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx", "TransportError"), ("httpx2", "TransportError")):
        with suppress(ImportError, AttributeError):
            errors.append(getattr(__import__(module), name))
    return tuple(errors)


@contextmanager
def from_hub(what: str, instead: str, offline: bool | None):
    """Run a Hub load; turn offline / network failures into one HubUnavailableError."""
    reason = offline_reason(offline)
    try:
        with _offline_mode() if reason else nullcontext():
            yield
    except HubUnavailableError:
        raise
    except (OSError, *_network_errors()) as error:
        if reason is None and not isinstance(error, _network_errors()):
            raise  # online and not a network failure (gated repo, 404, ...): as is
        why = f"offline ({reason}) and not in the local cache" if reason else "network error"
        raise HubUnavailableError(
            f"could not load {what} from the Hugging Face Hub: {why} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"Use a local folder instead: {instead}"
        ) from error


@contextmanager
def quiet_deprecations():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated")
        warnings.filterwarnings("ignore", message=".*from_pretrained is deprecated")
        yield


def model_advice(name: str) -> str:
    """How to audit Hub model ``name`` from a local folder instead."""
    return (
        f"`hf download {name} --local-dir DIR` where the Hub is reachable, "
        "then --qdm-model DIR --qdm-sae SAE_DIR --qdm-dataset FILE on the command line, or "
        "load_model('DIR') in Python (any Hugging Face checkpoint folder works)"
    )


def looks_like_path(spec: Any, *, slashes_mean_path: bool = True) -> bool:
    """Whether ``spec`` names a local path rather than a Hub name (the module doc's rule;
    ``slashes_mean_path=False`` for SAE ids, which may contain slashes)."""
    if isinstance(spec, Path):
        return True
    if not isinstance(spec, str):
        return False
    if Path(spec).expanduser().exists() or spec.startswith(("/", ".", "~")) or "\\" in spec:
        return True
    return slashes_mean_path and spec.count("/") > 1


def local_dir(spec: Any, *, slashes_mean_path: bool = True) -> Path | None:
    """The local folder ``spec`` names, or None for a Hub name. A path-like string that is
    not a folder raises FileNotFoundError."""
    if not looks_like_path(spec, slashes_mean_path=slashes_mean_path):
        return None
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"local folder {str(spec)!r} does not exist or is not a folder")
    return path
