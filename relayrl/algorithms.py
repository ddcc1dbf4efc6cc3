"""Learning-algorithm discovery: entry-point group ``relayrl.algorithms``.

Algorithms are plugins (the torch plugin, ``relayrl-torch``, provides ``ppo``, ``reinforce``,
``ippo`` and ``mappo``). :func:`get` returns the algorithm *class*; instantiate it with the
environment's spaces. Discovery is lazy: importing this module imports no plugin and no torch.

Example::

    PPO = relayrl.algorithms.get("ppo")
    algo = PPO(env.observation_space, env.action_space, config=PPO.preset_for("CartPole-v1"))

.. versionadded:: 0.1
"""

from __future__ import annotations

from ._algorithm_api import Algorithm
from ._plugins import PluginRegistry

__all__ = ["available", "get", "names", "registry"]

#: The process-wide registry of algorithm classes.
registry: PluginRegistry[type[Algorithm]] = PluginRegistry(
    "relayrl.algorithms",
    "learning algorithm",
    instantiate=lambda cls: cls,
)


def available() -> list[str]:
    """Names of the algorithms that are installed and importable here, sorted.

    .. versionadded:: 0.1
    """
    return registry.available()


def names() -> list[str]:
    """Names of every registered algorithm, importable or not.

    .. versionadded:: 0.1
    """
    return registry.names()


def get(name: str) -> type[Algorithm]:
    """The algorithm class registered as ``name`` (imported on first use, then cached).

    Raises:
        UnknownPluginError: no installed distribution registers that name; the message names
            the distribution to install (``relayrl-torch`` for ``ppo``).
        PluginUnavailableError: it is installed but a library it needs (torch) is missing.

    .. versionadded:: 0.1
    """
    cls = registry.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        from ._errors import PluginUnavailableError

        raise PluginUnavailableError(
            f"the entry point {name!r} in group 'relayrl.algorithms' ({registry.distribution(name)}) "
            f"does not name a relayrl.abc.Algorithm subclass: {cls!r}"
        )
    return cls
