"""Inference backend discovery.

Backends are plugins registered in the ``relayrl.backends`` entry-point group (the built-in
``numpy`` backend registers the same way). Discovery is lazy and cached; ``import relayrl``
imports no backend.

.. versionadded:: 0.1
"""

from ._backends import available as available
from ._backends import get as get
from ._backends import names as names

__all__ = ["available", "get", "names"]
