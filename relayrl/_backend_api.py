"""The contracts between relayrl and an inference backend plugin (see :mod:`relayrl.abc`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ._heads import Head
    from ._model import ModelMetadata, ModelModule

__all__ = ["HeadOutputs", "InferenceBackend", "Policy"]

FloatArray = npt.NDArray[np.floating[Any]]


@attrs.define(slots=True)
class HeadOutputs:
    """What a :class:`Policy` computes for a batch: the parameters of the action distribution.

    Exactly one of ``logits`` (categorical and multi-categorical heads, shape ``[B, flat_dim]``)
    or ``mean`` (Gaussian head, shape ``[B, action_dim]``) is set. ``log_std`` accompanies
    ``mean`` and has shape ``[B, action_dim]`` or ``[action_dim]`` (state-independent).
    ``value`` is the critic's estimate, shape ``[B]``, when the model has a value output.

    Arrays are host (numpy) arrays, except for backends that declare
    :attr:`Policy.device_arrays`, which may return arrays of their device library.

    .. versionadded:: 0.1
    """

    logits: FloatArray | None = None
    mean: FloatArray | None = None
    log_std: FloatArray | None = None
    value: FloatArray | None = None


class Policy(ABC):
    """A loaded, ready-to-run model: batch of observations in, head outputs out.

    Contract for implementers:

    * :meth:`forward` is synchronous and is called from the trio thread for small batches and,
      when :attr:`releases_gil` is true, possibly from one worker thread at a time for large
      batches. It must not block on I/O.
    * It must not keep references to ``obs`` or ``mask`` after it returns; the runtime reuses
      those buffers.
    * It never returns made-up values: on failure it raises (any exception is reported to the
      caller of ``request_action`` as-is and the runtime keeps running).

    .. versionadded:: 0.1
    """

    #: Whether :meth:`forward` releases the GIL for long enough that running big batches on a
    #: worker thread pays off (torch, onnxruntime: yes; the numpy MLP: only for large batches).
    releases_gil: ClassVar[bool] = False

    @abstractmethod
    def forward(self, obs: npt.NDArray[Any], mask: npt.NDArray[np.bool_] | None = None) -> HeadOutputs:
        """Run the model on ``obs`` of shape ``[B, *obs_shape]``.

        ``mask`` (``[B, flat_dim]`` booleans, True = allowed) is given for models that consume
        it; the framework applies it to the logits itself afterwards, so most backends ignore it.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release resources (sessions, device memory). Called once when no actor uses it."""


class InferenceBackend(ABC):
    """A plugin that turns a :class:`~relayrl.ModelModule` into a :class:`Policy`.

    Plugins register a subclass under the ``relayrl.backends`` entry-point group; relayrl
    instantiates it with no arguments the first time it is asked for, and caches it.
    The class's module may import its heavy library at import time: relayrl imports it only
    when the backend is selected by name, and maps an ``ImportError`` to
    :class:`~relayrl.BackendUnavailableError`.

    .. versionadded:: 0.1
    """

    #: Name under which the backend is registered (``"numpy"``, ``"torch"``, ...).
    name: ClassVar[str]
    #: Distribution that provides it, named in error messages (``"relayrl-torch"``).
    distribution: ClassVar[str] = "relayrl"

    @abstractmethod
    def load(self, module: ModelModule, device: str = "cpu") -> Policy:
        """Build a policy from ``module`` (its metadata and model file bytes) on ``device``.

        Raises:
            ModelError: the file is not a model this backend can run, or does not match the
                metadata.
            BackendUnavailableError: the device (or a library for it) is not available.
        """

    def make_head(self, metadata: ModelMetadata, device: str = "cpu") -> Head | None:
        """A head that samples where this backend's outputs live, or None (the default).

        Backends whose policies return device arrays (CuPy) override this to sample on the
        device; the agent then uses that head instead of :func:`relayrl.make_head`. It must
        draw its randomness from the ``rng`` passed to ``sample`` so seeds stay reproducible.
        """
        return None

    def devices(self) -> list[str]:
        """Devices this backend can use here (``["cpu"]`` unless overridden)."""
        return ["cpu"]
