"""Lazy, cached discovery of entry-point plugins (backends, transports, algorithms).

Nothing is imported until a plugin is asked for by name. ``RELAYRL_PLUGINS`` (a comma-separated
allow-list; empty means only relayrl's own built-ins) restricts what is visible, which tests use
to prove the core works without plugins.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

from ._errors import PluginUnavailableError, UnknownPluginError

__all__ = ["PluginRegistry"]

T = TypeVar("T")

#: Distributions we publish, named in "pip install ..." hints for well-known plugin names.
KNOWN_DISTRIBUTIONS = {
    "torch": "relayrl-torch",
    "onnx": "relayrl-onnx",
    "cupy": "relayrl-cupy",
    "zmq": "relayrl-zmq",
    "nats": "relayrl-nats",
    "ppo": "relayrl-torch",
    "reinforce": "relayrl-torch",
    "ippo": "relayrl-torch",
    "mappo": "relayrl-torch",
}


class PluginRegistry(Generic[T]):
    """Name -> instance of the plugin class registered in one entry-point group."""

    def __init__(
        self,
        group: str,
        kind: str,
        *,
        unknown_error: type[UnknownPluginError] = UnknownPluginError,
        unavailable_error: type[PluginUnavailableError] = PluginUnavailableError,
        instantiate: Callable[[Any], T] | None = None,
    ) -> None:
        self.group = group
        self.kind = kind
        self._unknown = unknown_error
        self._unavailable = unavailable_error
        self._instantiate = instantiate or (lambda cls: cls())
        self._lock = threading.Lock()
        self._eps: dict[str, metadata.EntryPoint] | None = None
        self._loaded: dict[str, T] = {}

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        if self._eps is None:
            allow = os.environ.get("RELAYRL_PLUGINS")
            allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
            found: dict[str, metadata.EntryPoint] = {}
            for ep in metadata.entry_points(group=self.group):
                dist = ep.dist.name if ep.dist is not None else ""
                builtin = dist == "relayrl" or ep.value.startswith("relayrl.")
                if allowed is not None and not builtin and ep.name not in allowed:
                    continue
                found.setdefault(ep.name, ep)
            self._eps = found
        return self._eps

    def names(self) -> list[str]:
        """Every registered name (installed, not necessarily importable)."""
        return sorted(self._entry_points())

    def distribution(self, name: str) -> str:
        """The distribution that provides (or would provide) ``name``."""
        ep = self._entry_points().get(name)
        if ep is not None and ep.dist is not None:
            return ep.dist.name
        return KNOWN_DISTRIBUTIONS.get(name, f"relayrl-{name}")

    def get(self, name: str) -> T:
        """The plugin instance registered as ``name`` (imported on first use, then cached).

        Raises:
            UnknownPluginError: nothing is registered under that name.
            PluginUnavailableError: it is registered but it (or a library it needs) fails to import.
        """
        inst = self._loaded.get(name)
        if inst is not None:
            return inst
        with self._lock:
            inst = self._loaded.get(name)
            if inst is not None:
                return inst
            ep = self._entry_points().get(name)
            if ep is None:
                known = ", ".join(self.names()) or "none"
                dist = KNOWN_DISTRIBUTIONS.get(name, f"relayrl-{name}")
                raise self._unknown(
                    f"no {self.kind} named {name!r} is installed (installed: {known}); "
                    f"install the distribution that provides it, e.g. `pip install -c constraints.txt {dist}`"
                )
            dist = self.distribution(name)
            try:
                cls = ep.load()
            except ImportError as exc:
                missing = getattr(exc, "name", None) or str(exc)
                raise self._unavailable(
                    f"{dist} is installed but cannot be imported because {missing!r} is missing: "
                    f"install it (e.g. `pip install -c constraints.txt {dist}` pulls its requirements)"
                ) from exc
            try:
                inst = self._instantiate(cls)
            except PluginUnavailableError:
                raise
            except Exception as exc:
                raise self._unavailable(f"{self.kind} {name!r} from {dist} failed to initialise: {exc}") from exc
            self._loaded[name] = inst
            return inst

    def available(self) -> list[str]:
        """Names whose plugin imports successfully (errors are swallowed here, not in :meth:`get`)."""
        ok = []
        for name in self.names():
            try:
                self.get(name)
            except PluginUnavailableError:
                continue
            ok.append(name)
        return ok

    def status(self) -> dict[str, str]:
        """``name -> "ok"`` or the reason it is unusable (for ``relayrl backends``)."""
        out: dict[str, str] = {}
        for name in self.names():
            try:
                self.get(name)
            except PluginUnavailableError as exc:
                out[name] = str(exc)
            else:
                out[name] = "ok"
        return out

    def clear_cache(self) -> None:
        """Forget discovered entry points and loaded plugins (tests and hot-installs)."""
        with self._lock:
            self._eps = None
            self._loaded.clear()
