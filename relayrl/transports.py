"""Transport discovery: entry-point group ``relayrl.transports``.

The built-in ``inproc`` transport registers the same way a plugin does (``relayrl-zmq`` and
``relayrl-nats`` add ``zmq`` and ``nats``). :func:`get` returns the transport *class*; its
constructor takes the transport's settings::

    transport = relayrl.transports.get("inproc")(capacity=64)

Discovery is lazy and cached; ``import relayrl`` imports no transport library.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import Any

from ._inproc import InprocTransport as InprocTransport
from ._plugins import PluginRegistry
from ._transport_api import Transport

__all__ = ["InprocTransport", "available", "get", "names", "registry", "status"]

#: The process-wide registry of transports (it yields classes, not instances).
registry: PluginRegistry[type[Transport]] = PluginRegistry(
    "relayrl.transports", "transport", instantiate=lambda cls: _check_class(cls)
)


def _check_class(cls: Any) -> type[Transport]:
    if not (isinstance(cls, type) and issubclass(cls, Transport)):
        raise TypeError(f"{cls!r} is not a relayrl.abc.Transport subclass")
    return cls


def available() -> list[str]:
    """Names of the transports that are installed and importable here, sorted.

    .. versionadded:: 0.1
    """
    return registry.available()


def names() -> list[str]:
    """Names of every registered transport, importable or not.

    .. versionadded:: 0.1
    """
    return registry.names()


def status() -> dict[str, str]:
    """``name -> "ok"`` or the reason the transport is unusable.

    .. versionadded:: 0.1
    """
    return registry.status()


def get(name: str) -> type[Transport]:
    """The transport class registered as ``name`` (imported on first use, then cached).

    Raises:
        UnknownPluginError: no installed distribution registers that name; the message says
            which distribution to install.
        PluginUnavailableError: it is installed but a library it needs is missing.

    .. versionadded:: 0.1
    """
    return registry.get(name)
