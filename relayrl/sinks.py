"""Trajectory sinks: where emitted trajectories go.

* :class:`TrajectorySink`: the base class (also in :mod:`relayrl.abc`), with the
  ``run`` / ``put`` / ``aclose`` / ``statistics`` contract and the ``overflow`` policies
  (``"block"``, ``"drop_oldest"``, ``"drop_newest"``; see ``docs/backpressure.md``).
* :class:`MemorySink`: the most recent trajectories of each actor, for ``drain()``.
* :class:`ArrowSink`, :class:`ParquetSink`, :class:`CsvSink`: files (one row per step; see
  ``docs/trajectories.md``), read back with :func:`relayrl.read_trajectories`. They need pyarrow,
  which only their writer threads and ``read_trajectories`` import.

.. versionadded:: 0.1
"""

from ._records import read_trajectories as read_trajectories
from ._sinks import OVERFLOW_POLICIES as OVERFLOW_POLICIES
from ._sinks import ArrowSink as ArrowSink
from ._sinks import CsvSink as CsvSink
from ._sinks import MemorySink as MemorySink
from ._sinks import Overflow as Overflow
from ._sinks import ParquetSink as ParquetSink
from ._sinks import SinkStatistics as SinkStatistics
from ._sinks import TrajectorySink as TrajectorySink

__all__ = [
    "OVERFLOW_POLICIES",
    "ArrowSink",
    "CsvSink",
    "MemorySink",
    "Overflow",
    "ParquetSink",
    "SinkStatistics",
    "TrajectorySink",
    "read_trajectories",
]


def _fixup_module_metadata() -> None:
    # Names also exported by ``relayrl`` itself are shown as ``relayrl.X`` (relayrl/__init__.py fixes those).
    for name in set(__all__) - {"TrajectorySink", "read_trajectories"}:
        obj = globals()[name]
        if getattr(obj, "__module__", "") == "relayrl._sinks":
            try:
                obj.__module__ = __name__
            except (AttributeError, TypeError):
                pass


_fixup_module_metadata()
del _fixup_module_metadata
