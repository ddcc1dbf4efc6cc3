"""Test helpers for relayrl users and plugin authors.

* :class:`BackendConformance`: subclass it in a test module to prove an inference backend
  plugin conforms (round trips, shapes, masking, determinism, rejection of broken models,
  parity with the numpy reference). Needs pytest.
* :data:`REFERENCE_CASES`, :class:`ReferenceCase`, :func:`reference_case`: the reference MLPs.
* :class:`TransportConformance`: subclass it to prove a transport plugin implements the
  transport contract (handshake, acknowledged delivery and re-sends, broadcast, notices,
  inference). Needs pytest and pytest-trio.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._conformance import REFERENCE_CASES as REFERENCE_CASES
    from ._conformance import BackendConformance as BackendConformance
    from ._conformance import ReferenceCase as ReferenceCase
    from ._conformance import reference_case as reference_case
    from ._transport_conformance import TransportConformance as TransportConformance

__all__ = ["REFERENCE_CASES", "BackendConformance", "ReferenceCase", "TransportConformance", "reference_case"]


def __getattr__(name: str) -> Any:
    # The conformance kit imports pytest; load it only when asked for.
    if name == "TransportConformance":
        from . import _transport_conformance

        return _transport_conformance.TransportConformance
    if name in __all__:
        from . import _conformance

        return getattr(_conformance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
