"""The backend registry: entry-point group ``relayrl.backends``."""

from __future__ import annotations

from ._backend_api import InferenceBackend
from ._errors import BackendUnavailableError, UnknownBackendError
from ._plugins import PluginRegistry

__all__ = ["available", "get", "names", "registry"]

#: The process-wide registry of inference backends.
registry: PluginRegistry[InferenceBackend] = PluginRegistry(
    "relayrl.backends",
    "inference backend",
    unknown_error=UnknownBackendError,
    unavailable_error=BackendUnavailableError,
)


def available() -> list[str]:
    """Names of the backends that are installed and importable here, sorted.

    .. versionadded:: 0.1
    """
    return registry.available()


def names() -> list[str]:
    """Names of every registered backend, importable or not.

    .. versionadded:: 0.1
    """
    return registry.names()


def get(name: str) -> InferenceBackend:
    """The backend registered as ``name`` (imported on first use, then cached).

    Raises:
        UnknownBackendError: no installed distribution registers that name; the message says
            which distribution to install.
        BackendUnavailableError: it is installed but a library it needs is missing.

    .. versionadded:: 0.1
    """
    return registry.get(name)
