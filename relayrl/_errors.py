"""The relayrl exception hierarchy.

One root, :class:`RelayRLError`; each subclass also derives from the builtin exception a
caller would naturally catch (an unknown actor id is a :class:`KeyError`, a bad observation
is a :class:`ValueError`), so code that does not know relayrl still handles them sensibly.
"""

from __future__ import annotations

__all__ = [
    "AgentClosedError",
    "BackendUnavailableError",
    "ConfigError",
    "IntegrityError",
    "ModelError",
    "NoModelError",
    "ObservationError",
    "PluginUnavailableError",
    "ProtocolError",
    "RelayRLError",
    "SinkError",
    "UnknownActorError",
    "UnknownBackendError",
    "UnknownPluginError",
]


class RelayRLError(Exception):
    """Root of every error relayrl raises on purpose.

    .. versionadded:: 0.1
    """


class ModelError(RelayRLError, ValueError):
    """A model module is malformed or cannot serve.

    Raised when a model directory, metadata file or bundle cannot be parsed, when the declared
    shapes do not match what the model computes, when a dummy forward fails or produces
    non-finite values, and when an update is rejected. Nothing ever falls back to zero actions.

    .. versionadded:: 0.1
    """


class IntegrityError(ModelError):
    """A bundle or model file does not match its checksum (corrupted or tampered with).

    .. versionadded:: 0.1
    """


class NoModelError(RelayRLError, LookupError):
    """An actor was asked for an action before it had a model.

    Give a model to ``open_agent``, ``new_actor`` or ``update_model`` first.
    ``get_model_version`` reports -1 for such an actor.

    .. versionadded:: 0.1
    """


class PluginUnavailableError(RelayRLError, ImportError):
    """A plugin (backend, transport, algorithm), or a library it needs, is not installed or cannot run here.

    The message names the distribution to install (for example ``relayrl-torch``) or the
    missing requirement (``torch``, a CUDA device).

    .. versionadded:: 0.1
    """


class UnknownPluginError(PluginUnavailableError, LookupError):
    """No installed distribution registers a plugin of that name in the entry-point group asked.

    .. versionadded:: 0.1
    """


class BackendUnavailableError(PluginUnavailableError):
    """An inference backend plugin, or a library or device it needs, is not available here.

    .. versionadded:: 0.1
    """


class UnknownBackendError(BackendUnavailableError, UnknownPluginError):
    """No plugin registers a backend of that name in the ``relayrl.backends`` entry-point group.

    .. versionadded:: 0.1
    """


class UnknownActorError(RelayRLError, KeyError):
    """An actor id is not registered with the agent.

    .. versionadded:: 0.1
    """

    def __str__(self) -> str:
        # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else ""


class ObservationError(RelayRLError, ValueError):
    """An observation, mask or reward has the wrong shape, dtype or content.

    The message names the expected and the actual value. A rejected request records nothing.

    .. versionadded:: 0.1
    """


class ConfigError(RelayRLError, ValueError):
    """A configuration value or file is invalid; the message names the bad key.

    .. versionadded:: 0.1
    """


class AgentClosedError(RelayRLError, RuntimeError):
    """The agent (or one of its sinks) was used after it was shut down.

    .. versionadded:: 0.1
    """


class ProtocolError(RelayRLError, ValueError):
    """A transport frame is malformed, truncated, of another wire version or of an unknown type.

    Raised by :func:`relayrl._wire.decode` (the message names the bad field); a transport drops
    the frame and keeps serving.

    .. versionadded:: 0.1
    """


class SinkError(RelayRLError, OSError):
    """A trajectory sink failed to write or read its data.

    .. versionadded:: 0.1
    """
