"""Transport discovery: entry-point group ``relayrl.transports``.

The built-in ``inproc`` transport registers the same way a plugin does (``relayrl-zmq`` and
``relayrl-nats`` add ``zmq`` and ``nats``). :func:`get` returns the transport *class*; its
constructor takes the transport's settings::

    transport = relayrl.transports.get("inproc")(capacity=64)

Discovery is lazy and cached; ``import relayrl`` imports no transport library.

The message types a transport carries (:class:`TrajectoryBatch`, :class:`Ack`,
:class:`ModelUpdate`, :class:`Notice`, :class:`InferenceRequest`, :class:`InferenceReply`) and
the wire format out-of-process transports share (:func:`encode` / :func:`decode`: a versioned
msgpack envelope; malformed frames raise :class:`~relayrl.ProtocolError`) live here too; the
abstract client and server sides are :class:`relayrl.abc.Transport`, ``TransportClient`` and
``TransportServer``.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import Any

from ._inproc import InprocTransport as InprocTransport
from ._plugins import PluginRegistry
from ._transport_api import NOTICE_KINDS as NOTICE_KINDS
from ._transport_api import Ack as Ack
from ._transport_api import ClientStatistics as ClientStatistics
from ._transport_api import InferenceReply as InferenceReply
from ._transport_api import InferenceRequest as InferenceRequest
from ._transport_api import ModelUpdate as ModelUpdate
from ._transport_api import Notice as Notice
from ._transport_api import ServerStatistics as ServerStatistics
from ._transport_api import TrajectoryBatch as TrajectoryBatch
from ._transport_api import Transport
from ._wire import WIRE_VERSION as WIRE_VERSION
from ._wire import decode as decode
from ._wire import encode as encode

__all__ = [
    "NOTICE_KINDS", "WIRE_VERSION", "Ack", "ClientStatistics", "InferenceReply", "InferenceRequest", "InprocTransport",
    "ModelUpdate", "Notice", "ServerStatistics", "TrajectoryBatch", "available", "decode", "encode", "get", "names",
    "registry", "status",
]

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
