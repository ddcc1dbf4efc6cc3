"""Abstract base classes that plugins implement.

* :class:`InferenceBackend` and :class:`Policy`: inference backends (entry-point group
  ``relayrl.backends``); :class:`HeadOutputs` is what a policy returns.
* :class:`TrajectorySink`: trajectory sinks (see :mod:`relayrl.sinks`).
* :class:`Algorithm`: learning algorithms (entry-point group ``relayrl.algorithms``).
* :class:`Transport`, :class:`TransportClient`, :class:`TransportServer`: transports (entry-point
  group ``relayrl.transports``; see :mod:`relayrl.transports`).

.. versionadded:: 0.1
"""

from ._algorithm_api import Algorithm as Algorithm
from ._backend_api import HeadOutputs as HeadOutputs
from ._backend_api import InferenceBackend as InferenceBackend
from ._backend_api import Policy as Policy
from ._sinks import TrajectorySink as TrajectorySink
from ._transport_api import Transport as Transport
from ._transport_api import TransportClient as TransportClient
from ._transport_api import TransportServer as TransportServer

__all__ = [
    "Algorithm", "HeadOutputs", "InferenceBackend", "Policy", "TrajectorySink", "Transport", "TransportClient",
    "TransportServer",
]
