"""The number of CPU threads torch uses for inference (process-wide, default 1)."""

from __future__ import annotations

import os
import threading

import torch

from relayrl import ConfigError

__all__ = ["ENV_VAR", "ensure_configured", "get_num_threads", "set_num_threads"]

#: Environment variable read the first time the torch backend loads a model.
ENV_VAR = "RELAYRL_TORCH_THREADS"

_lock = threading.Lock()
_configured = False


def set_num_threads(n: int) -> None:
    """Set the number of intra-op CPU threads torch uses (``torch.set_num_threads``).

    The setting is process-wide: it applies to every torch model (and to training code in the
    same process). Without a call, the torch backend applies ``$RELAYRL_TORCH_THREADS`` (or 1,
    the right choice when many actors share few cores) when it loads its first model.

    Raises:
        ConfigError: ``n`` is not a positive integer.

    .. versionadded:: 0.1
    """
    global _configured
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the torch thread count must be a positive integer, got {n!r}")
    with _lock:
        torch.set_num_threads(n)
        _configured = True


def get_num_threads() -> int:
    """The number of intra-op CPU threads torch currently uses.

    .. versionadded:: 0.1
    """
    return int(torch.get_num_threads())


def ensure_configured() -> None:
    """Apply ``$RELAYRL_TORCH_THREADS`` (default 1) unless :func:`set_num_threads` was called.

    Raises:
        ConfigError: the environment variable is not a positive integer.
    """
    if _configured:
        return
    raw = os.environ.get(ENV_VAR, "").strip()
    try:
        n = int(raw) if raw else 1
    except ValueError:
        raise ConfigError(f"${ENV_VAR} must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise ConfigError(f"${ENV_VAR} must be a positive integer, got {raw!r}")
    set_num_threads(n)
