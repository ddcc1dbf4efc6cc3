"""Trajectory sinks: where emitted trajectories go.

* :class:`TrajectorySink`: the base class (also in :mod:`relayrl.abc`), with the
  ``run`` / ``put`` / ``aclose`` / ``statistics`` contract and the ``overflow`` policies
  (``"block"``, ``"drop_oldest"``, ``"drop_newest"``; see ``docs/backpressure.md``).
* :class:`MemorySink`: the most recent trajectories of each actor, for ``drain()``.

.. versionadded:: 0.1
"""

from ._sinks import OVERFLOW_POLICIES as OVERFLOW_POLICIES
from ._sinks import MemorySink as MemorySink
from ._sinks import Overflow as Overflow
from ._sinks import SinkStatistics as SinkStatistics
from ._sinks import TrajectorySink as TrajectorySink

__all__ = ["OVERFLOW_POLICIES", "MemorySink", "Overflow", "SinkStatistics", "TrajectorySink"]


def _fixup_module_metadata() -> None:
    # Names also exported by ``relayrl`` itself are shown as ``relayrl.X`` (relayrl/__init__.py fixes those).
    for name in set(__all__) - {"TrajectorySink"}:
        obj = globals()[name]
        if getattr(obj, "__module__", "") == "relayrl._sinks":
            try:
                obj.__module__ = __name__
            except (AttributeError, TypeError):
                pass


_fixup_module_metadata()
del _fixup_module_metadata
