"""The actor-critic machinery PPO, REINFORCE, IPPO and MAPPO share.

Everything that is not the loss lives here: space checks, the thread-safe trajectory buffer,
stale-step filtering, observation and reward normalisation, value bootstrapping, GAE, export
to a model module, and checkpoints.
"""

from __future__ import annotations

import abc
import json
import os
import pickle
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from relayrl import ConfigError, ModelModule, ObservationError, Trajectory, numpy_mlp
from relayrl.abc import Algorithm
from relayrl.spaces import Box, Space, from_gymnasium

from .._threads import set_num_threads
from ._common import ActionDist, RunningMeanStd, gae, linear_layers, mlp

__all__ = ["ActorCriticAlgorithm", "Batch"]

Array = npt.NDArray[Any]

_STATE_FILE = "algorithm.pt"
_META_FILE = "algorithm.json"
_MAX_RETURN_STREAMS = 4096


def _box(space: Any, what: str) -> Box:
    s = from_gymnasium(space)
    if not isinstance(s, Box):
        raise ConfigError(f"{what} must be a Box (one-hot encode discrete observations first), got {s!r}")
    return s


@attrs.define(kw_only=True)
class Batch:
    """A training batch: every trajectory of one update, concatenated (numpy, float32 unless noted)."""

    obs: Array  # [N, obs_dim], normalised
    critic_in: Array  # [N, critic_dim], normalised
    act: Array
    mask: Array | None  # [N, mask_dim] bool
    logp: Array  # behaviour log-probs
    reward: Array  # [N] float64, scaled
    value: Array  # [N] float64, current critic (in scaled units)
    adv: Array  # [N] float64
    ret: Array  # [N] float64, adv + value

    def __len__(self) -> int:
        return int(self.obs.shape[0])


class ActorCriticAlgorithm(Algorithm):
    """Base class: an MLP policy (and separate MLP critic) trained on trajectories.

    Subclasses provide :attr:`config_class` and :meth:`_optimise` (the loss and the SGD loop).
    The config class must have the fields this base reads (see :class:`~relayrl_torch.algorithms.PPOConfig`).
    """

    name: ClassVar[str] = "actor-critic"
    #: Environment-id presets: ``{env_id: {config key: value}}`` (see :meth:`preset_for`).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(
        self,
        obs_space: Any,
        action_space: Any,
        *,
        config: Mapping[str, Any] | Any | None = None,
        seed: int = 0,
    ) -> None:
        cfg = self.make_config(config)
        self._cfg = cfg
        self.obs_space = _box(obs_space, "the observation space")
        self.action_space: Space = from_gymnasium(action_space)
        self._dist = ActionDist(self.action_space)
        self._seed = int(seed)
        if cfg.num_threads is not None:
            set_num_threads(cfg.num_threads)
        self._device = torch.device(cfg.device)
        self._rng = np.random.default_rng(seed)
        self._obs_shape = self.obs_space.shape
        self._obs_dim = int(np.prod(self._obs_shape, dtype=np.int64))
        self.pi = mlp(self._rng, [self._obs_dim, *cfg.hidden, self._dist.out_dim], cfg.activation, 0.01)
        self.log_std: nn.Parameter | None = None
        pi_params = list(self.pi.parameters())
        if self._dist.continuous:
            self.log_std = nn.Parameter(torch.full((self._dist.out_dim,), float(cfg.log_std_init)))
            pi_params.append(self.log_std)
        self.pi.to(self._device)
        if self.log_std is not None:
            self.log_std.data = self.log_std.data.to(self._device)
        self._pi_params = pi_params
        # One Adam (fused kernel: far less per-step overhead on small networks) with a parameter
        # group for the policy and, once built, one for the critic.
        self.opt = torch.optim.Adam([{"params": pi_params, "lr": cfg.lr}], lr=cfg.lr, eps=1e-5,
                                    fused=self._device.type in ("cpu", "cuda"))
        self.vf: nn.Sequential | None = None
        self._critic_dim: int | None = self._initial_critic_dim()
        if self._critic_dim is not None:
            self._build_critic(self._critic_dim)
        self.obs_rms = RunningMeanStd((self._obs_dim,)) if cfg.normalize_obs else None
        self.ret_rms = RunningMeanStd(()) if cfg.normalize_reward else None
        self._ret_streams: OrderedDict[tuple[Any, ...], float] = OrderedDict()
        self._lock = threading.Lock()
        self._train_lock = threading.Lock()
        self._buffer: list[Trajectory] = []
        self._buffered_steps = 0
        self._dropped_at_receive = 0
        self._version = 0
        self._updates = 0
        self._steps_trained = 0
        self._steps_dropped = 0
        self._export_cache: tuple[int, ModelModule] | None = None

    # --- hooks for subclasses -------------------------------------------------------------

    def _initial_critic_dim(self) -> int | None:
        """Width of the critic's input, or None to decide on the first trajectory (MAPPO)."""
        return self._obs_dim

    def _critic_input(self, traj: Trajectory) -> Array:
        """Raw critic input ``[T, critic_dim]`` for a trajectory (the observations by default)."""
        return traj.obs.reshape(len(traj), -1)

    def _critic_final(self, traj: Trajectory) -> Array | None:
        """Raw critic input after the last step (for bootstrapping), or None when unknown."""
        if traj.final_obs is None:
            return None
        return np.asarray(traj.final_obs).reshape(1, -1)

    def _normalise_critic(self, x: Array, update: bool) -> Array:
        """Normalise critic inputs (the observation statistics by default)."""
        return self._normalise_obs(x, update=False)

    @abc.abstractmethod
    def _optimise(self, batch: Batch, lr_frac: float) -> dict[str, float]:
        """One update of the networks on ``batch`` (``lr_frac`` scales the learning rate); returns stats."""

    def _gae_lambda(self) -> float:
        return float(self._cfg.gae_lambda)

    def _export_value(self) -> bool:
        return True

    # --- public API ---------------------------------------------------------------------

    @property
    def config(self) -> Any:
        """The validated configuration."""
        return self._cfg

    @property
    def steps_per_update(self) -> int:
        """``num_envs * n_steps``: environment steps per update."""
        return int(self._cfg.num_envs * self._cfg.n_steps)

    @property
    def version(self) -> int:
        """The current model version (the update count, or the last version passed to :meth:`export_model`)."""
        return self._version

    @property
    def buffered_steps(self) -> int:
        """Steps waiting for the next update."""
        with self._lock:
            return self._buffered_steps

    @classmethod
    def preset_for(cls, env_id: str) -> dict[str, Any]:
        """Config overrides tuned for ``env_id`` (its exact id, or its name without the ``-vN`` suffix)."""
        preset = cls.PRESETS.get(env_id)
        if preset is None:
            base = env_id.rsplit("-v", 1)[0]
            preset = next((p for k, p in cls.PRESETS.items() if k.rsplit("-v", 1)[0] == base), {})
        return dict(preset)

    def _check(self, traj: Trajectory) -> None:
        n = len(traj)
        if n and not (np.isfinite(traj.reward).all() and np.isfinite(traj.logp).all()):
            raise ObservationError("trajectory rewards and log-probabilities must be finite (found NaN or inf)")
        if n and traj.obs.dtype.kind == "f" and not np.isfinite(traj.obs).all():
            raise ObservationError("trajectory observations must be finite (found NaN or inf)")
        if traj.obs.shape[1:] != self._obs_shape:
            raise ObservationError(f"trajectory observations have shape {traj.obs.shape[1:]}, "
                                   f"expected {self._obs_shape}")
        if traj.obs.shape[0] != n or traj.act.shape[0] != n or traj.logp.shape[0] != n or traj.done.shape[0] != n:
            raise ObservationError(f"trajectory columns have different lengths (reward has {n} steps, obs "
                                   f"{traj.obs.shape[0]}, act {traj.act.shape[0]}, logp {traj.logp.shape[0]})")
        want = self.action_space.shape
        if traj.act.shape[1:] != want and not (self._dist.kind == "categorical" and traj.act.shape[1:] == (1,)):
            raise ObservationError(f"trajectory actions have shape {traj.act.shape[1:]}, expected {want}")
        if traj.model_version.shape[0] != n:
            raise ObservationError(f"trajectory model_version has {traj.model_version.shape[0]} entries, expected {n}")
        if traj.mask is not None and (self._dist.continuous or traj.mask.shape != (n, self._dist.out_dim)):
            raise ObservationError(f"trajectory mask has shape {traj.mask.shape}, expected ({n}, {self._dist.out_dim})"
                                   if not self._dist.continuous else "a Gaussian policy takes no action mask")
        if traj.final_obs is not None and np.asarray(traj.final_obs).size != self._obs_dim:
            raise ObservationError(f"trajectory final_obs has shape {np.shape(traj.final_obs)}, "
                                   f"expected {self._obs_shape}")

    def _fresh_suffix(self, traj: Trajectory, version: int) -> Trajectory | None:
        """The trajectory without its stale prefix (None when every step is stale)."""
        max_stale = self._cfg.max_staleness
        if max_stale is None or len(traj) == 0:
            return traj
        threshold = version - max_stale
        mv = traj.model_version
        if mv[0] >= threshold:  # versions never decrease along a trajectory
            return traj
        keep = np.flatnonzero(mv >= threshold)
        if keep.size == 0:
            return None
        start = int(keep[0])
        return attrs.evolve(
            traj,
            obs=traj.obs[start:], act=traj.act[start:], reward=traj.reward[start:], done=traj.done[start:],
            logp=traj.logp[start:], value=traj.value[start:], model_version=traj.model_version[start:],
            mask=None if traj.mask is None else traj.mask[start:],
            extras={k: v[start:] for k, v in traj.extras.items()},
        )

    def receive_trajectory(self, traj: Trajectory) -> bool:
        """Buffer ``traj`` (minus any stale prefix); True once :attr:`steps_per_update` steps are buffered.

        Raises:
            ObservationError: the trajectory does not fit the spaces (nothing is buffered).
        """
        self._check(traj)
        with self._lock:
            n = len(traj)
            if n == 0:
                return self._buffered_steps >= self.steps_per_update
            fresh = self._fresh_suffix(traj, self._version)
            kept = 0 if fresh is None else len(fresh)
            self._dropped_at_receive += n - kept
            if kept:
                assert fresh is not None
                self._buffer.append(fresh)
                self._buffered_steps += kept
            return self._buffered_steps >= self.steps_per_update

    # --- normalisation ------------------------------------------------------------------

    def _normalise_obs(self, x: Array, update: bool) -> Array:
        x = x.reshape(x.shape[0], -1).astype(np.float64, copy=False)
        if self.obs_rms is None:
            return x.astype(np.float32)
        if update:
            self.obs_rms.update(x)
        clip = self._cfg.obs_clip
        return np.clip((x - self.obs_rms.mean) / self.obs_rms.std(), -clip, clip).astype(np.float32)

    def _scale_rewards(self, trajs: list[Trajectory]) -> list[Array]:
        rewards = [t.reward.astype(np.float64) for t in trajs]
        if self.ret_rms is None:
            return rewards
        gamma = self._cfg.gamma
        all_returns = []
        for t, r in zip(trajs, rewards):
            key = (t.actor_id, t.env_id, t.episode)
            acc = self._ret_streams.pop(key, 0.0)
            rets = np.empty_like(r)
            for i, (ri, di) in enumerate(zip(r.tolist(), t.done.tolist())):
                acc = acc * gamma + ri
                rets[i] = acc
                if di:
                    acc = 0.0
            all_returns.append(rets)
            if not t.terminated:
                self._ret_streams[key] = acc
                while len(self._ret_streams) > _MAX_RETURN_STREAMS:
                    self._ret_streams.popitem(last=False)
        self.ret_rms.update(np.concatenate(all_returns))
        scale = 1.0 / float(self.ret_rms.std())
        return [r * scale for r in rewards]

    def _value_scale(self) -> float:
        return 1.0 if self.ret_rms is None else float(self.ret_rms.std())

    # --- the update ---------------------------------------------------------------------

    def _build_critic(self, dim: int) -> None:
        cfg = self._cfg
        crng = np.random.default_rng([self._seed, 1])
        if self.vf is not None:
            raise RuntimeError("the critic is built once")
        self.vf = mlp(crng, [dim, *cfg.hidden, 1], cfg.activation, 1.0).to(self._device)
        self.opt.add_param_group({"params": list(self.vf.parameters()),
                                  "lr": cfg.vf_lr if cfg.vf_lr is not None else cfg.lr})
        self._critic_dim = dim

    def _values(self, x: Array) -> Array:
        assert self.vf is not None
        with torch.no_grad():
            v = self.vf(torch.as_tensor(x, device=self._device)).squeeze(-1)
        res: Array = v.cpu().numpy().astype(np.float64)
        return res

    def _make_batch(self, trajs: list[Trajectory]) -> Batch:
        obs_raw = np.concatenate([t.obs.reshape(len(t), -1) for t in trajs])
        obs = self._normalise_obs(obs_raw, update=True)
        crit_raw = np.concatenate([self._critic_input(t) for t in trajs])
        if self._critic_dim is None:
            self._build_critic(int(crit_raw.shape[1]))
        crit = self._normalise_critic(crit_raw, update=True)
        rewards = self._scale_rewards(trajs)
        value = self._values(crit)
        lengths = [len(t) for t in trajs]
        ends = np.cumsum(lengths) - 1
        next_value = np.empty_like(value)
        next_value[:-1] = value[1:]
        # Bootstrap values of each trajectory's last step: 0 after a terminal state, V(final
        # observation) when known, otherwise the last step's own value.
        finals = [self._critic_final(t) for t in trajs]
        have = [i for i, (t, f) in enumerate(zip(trajs, finals)) if f is not None and not t.terminated]
        next_value[ends] = value[ends]
        if have:
            fin_raw = np.concatenate([f for f in (finals[i] for i in have) if f is not None])
            fin = self._normalise_critic(fin_raw, update=False)
            next_value[ends[have]] = self._values(fin)
        done = np.concatenate([t.done for t in trajs]).astype(bool)
        nonterminal = (~done).astype(np.float64)
        last = done.astype(np.float64)
        last[ends] = 1.0
        reward = np.concatenate(rewards)
        adv = gae(reward, value, next_value, nonterminal, last, self._cfg.gamma, self._gae_lambda())
        masks = [t.mask for t in trajs]
        mask = None
        if any(m is not None for m in masks):
            mask = np.concatenate([m.astype(bool) if m is not None else np.ones((len(t), self._dist.out_dim), bool)
                                   for t, m in zip(trajs, masks)])
        return Batch(
            obs=obs, critic_in=crit, act=np.concatenate([t.act for t in trajs]), mask=mask,
            logp=np.concatenate([t.logp for t in trajs]).astype(np.float32), reward=reward, value=value,
            adv=adv, ret=adv + value,
        )

    def train(self) -> Mapping[str, float]:
        """One update on the buffered trajectories (a snapshot taken under the buffer lock)."""
        with self._train_lock:
            with self._lock:
                snapshot, self._buffer = self._buffer, []
                self._buffered_steps = 0
                dropped = self._dropped_at_receive
                self._dropped_at_receive = 0
                version = self._version
            trajs = []
            for t in snapshot:
                fresh = self._fresh_suffix(t, version)
                kept = 0 if fresh is None else len(fresh)
                dropped += len(t) - kept
                if fresh is not None:
                    trajs.append(fresh)
            self._steps_dropped += dropped
            stats: dict[str, float] = {"dropped_stale_steps": float(dropped)}
            if not trajs:
                stats.update(steps=0.0, updates=float(self._updates), version=float(self._version))
                return stats
            batch = self._make_batch(trajs)
            cfg = self._cfg
            lr_frac = 1.0
            if cfg.anneal_lr and cfg.total_steps:
                lr_frac = max(0.0, 1.0 - self._steps_trained / cfg.total_steps)
            stats.update(self._optimise(batch, lr_frac))
            self._steps_trained += len(batch)
            self._updates += 1
            with self._lock:
                self._version += 1
                stats.update(
                    steps=float(len(batch)), steps_trained=float(self._steps_trained), updates=float(self._updates),
                    version=float(self._version), lr=float(cfg.lr * lr_frac),
                )
            return stats

    # --- shared optimisation helpers ----------------------------------------------------

    def _set_lr(self, lr_frac: float) -> None:
        cfg = self._cfg
        groups = self.opt.param_groups
        groups[0]["lr"] = cfg.lr * lr_frac
        if len(groups) > 1:
            groups[1]["lr"] = (cfg.vf_lr if cfg.vf_lr is not None else cfg.lr) * lr_frac

    def _tensors(self, batch: Batch) -> dict[str, torch.Tensor | None]:
        dev = self._device
        return {
            "obs": torch.as_tensor(batch.obs, device=dev),
            "crit": torch.as_tensor(batch.critic_in, device=dev),
            "act": self._dist.act_tensor(batch.act).to(dev),
            "mask": None if batch.mask is None else torch.as_tensor(batch.mask, device=dev),
            "logp": torch.as_tensor(batch.logp, device=dev),
            "adv": torch.as_tensor(batch.adv, dtype=torch.float32, device=dev),
            "ret": torch.as_tensor(batch.ret, dtype=torch.float32, device=dev),
            "value": torch.as_tensor(batch.value, dtype=torch.float32, device=dev),
        }

    # --- export -------------------------------------------------------------------------

    def export_model(self, *, version: int | None = None) -> ModelModule:
        """The current policy as a model module (numpy MLP by default; see ``export_backend``).

        With observation normalisation on, the statistics are baked into the model. With reward
        normalisation on, the exported value output is in environment reward units.

        The module is built once per update and cached, so calling this often is cheap; while
        :meth:`train` runs in another thread it returns the model of the current version
        without waiting (weights are never read half-updated). Modifying the networks by hand
        is not noticed by the cache: call :meth:`train` or :meth:`load_state` instead.
        """
        with self._lock:
            if version is not None:
                self._version = int(version)
            v = self._version
        locked = self._train_lock.acquire(blocking=False)
        try:
            cached = self._export_cache
            if cached is None or cached[0] != self._updates:
                if not locked:
                    self._train_lock.acquire()  # only when no export of this version exists yet
                    locked = True
                cached = self._export_cache
                if cached is None or cached[0] != self._updates:
                    cached = (self._updates, self._build_export(v))
                    self._export_cache = cached
            module = cached[1]
            return module if module.version == v else module.with_version(v)
        finally:
            if locked:
                self._train_lock.release()

    def _build_export(self, v: int) -> ModelModule:
        cfg = self._cfg
        norm: dict[str, Any] = {}
        if self.obs_rms is not None:
            norm = {"obs_mean": self.obs_rms.mean.astype(np.float32), "obs_std": self.obs_rms.std().astype(np.float32),
                    "obs_clip": float(cfg.obs_clip)}
        value_layers = None
        if self._export_value() and self.vf is not None:
            value_layers = linear_layers(self.vf, scale=self._value_scale())
        log_std = None if self.log_std is None else self.log_std.detach().cpu().numpy()
        extra = {"algorithm": self.name, "updates": self._updates, "steps_trained": self._steps_trained}
        if cfg.export_backend == "onnx":
            from ._export import onnx_mlp

            return onnx_mlp(self, linear_layers(self.pi), value_layers, norm, log_std, v, extra)
        if cfg.export_backend != "numpy":
            return self._export_other(cfg.export_backend, v, extra)
        return numpy_mlp(
            self._obs_shape, self.action_space, linear_layers(self.pi), value_layers=value_layers,
            activation=cfg.activation, log_std=log_std, version=v, extra=extra, **norm,
        )

    def _export_other(self, fmt: str, version: int, extra: dict[str, Any]) -> ModelModule:
        from ._export import export_with_relayrl_torch

        return export_with_relayrl_torch(self, fmt, version, extra)

    def torch_policy(self) -> nn.Module:
        """A self-contained torch module ``obs -> (head output, value)`` equal to the exported model.

        Used for parity checks and for the torch/ONNX exports.
        """
        from ._export import PolicyModule

        return PolicyModule(self)

    # --- checkpoints --------------------------------------------------------------------

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def save_state(self, directory: str | os.PathLike[str]) -> None:
        """Write networks, optimisers, normalisation statistics, RNG state and counters to ``directory``.

        Buffered trajectories are not saved: checkpoint right after :meth:`train`.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        with self._train_lock:
            state: dict[str, Any] = {
                "pi": self.pi.state_dict(),
                "opt": self.opt.state_dict(),
                "log_std": None if self.log_std is None else self.log_std.detach().clone(),
                "vf": None if self.vf is None else self.vf.state_dict(),
                "obs_rms": None if self.obs_rms is None else self.obs_rms.state(),
                "ret_rms": None if self.ret_rms is None else self.ret_rms.state(),
                **self._extra_state(),
            }
            meta = {
                "algorithm": self.name,
                "config": attrs.asdict(self._cfg),
                "obs_space": self.obs_space.to_dict(),
                "action_space": self.action_space.to_dict(),
                "critic_dim": self._critic_dim,
                "seed": self._seed,
                "rng": self._rng.bit_generator.state,
                "version": self._version,
                "updates": self._updates,
                "steps_trained": self._steps_trained,
                "steps_dropped": self._steps_dropped,
                "ret_streams": [[str(k[0]), k[1], k[2], v] for k, v in self._ret_streams.items()],
            }
            torch.save(state, path / _STATE_FILE)
            (path / _META_FILE).write_text(json.dumps(meta, indent=1, default=str))

    def load_state(self, directory: str | os.PathLike[str]) -> None:
        """Restore a :meth:`save_state` checkpoint into this instance.

        Raises:
            ConfigError: the checkpoint is missing, or was written by another algorithm or for
                other spaces or network sizes.
        """
        import uuid

        path = Path(directory)
        try:
            meta = json.loads((path / _META_FILE).read_text())
            state = torch.load(path / _STATE_FILE, weights_only=True, map_location=self._device)
        except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise ConfigError(f"cannot read an algorithm checkpoint from {str(path)!r}: {exc}") from exc
        if meta.get("algorithm") != self.name:
            raise ConfigError(f"checkpoint in {str(path)!r} is for {meta.get('algorithm')!r}, not {self.name!r}")
        if meta["obs_space"] != self.obs_space.to_dict() or meta["action_space"] != self.action_space.to_dict():
            raise ConfigError(f"checkpoint in {str(path)!r} was written for other spaces: "
                              f"{meta['obs_space']} / {meta['action_space']}")
        for key in ("hidden", "activation", "normalize_obs", "normalize_reward"):
            saved = meta["config"].get(key)
            mine = getattr(self._cfg, key)
            if (list(saved) if isinstance(saved, list | tuple) else saved) != (
                list(mine) if isinstance(mine, tuple) else mine
            ):
                raise ConfigError(f"checkpoint {key}={saved!r} does not match this instance's {key}={mine!r}")
        with self._train_lock:
            try:
                saved_dim = meta.get("critic_dim")
                if saved_dim is not None and self.vf is None:
                    self._build_critic(int(saved_dim))
                elif saved_dim != self._critic_dim:
                    raise ValueError(f"critic input width {saved_dim} != {self._critic_dim}")
                self.pi.load_state_dict(state["pi"])
                if self.log_std is not None and state["log_std"] is not None:
                    with torch.no_grad():
                        self.log_std.copy_(state["log_std"])
                if self.vf is not None and state["vf"] is not None:
                    self.vf.load_state_dict(state["vf"])
                self.opt.load_state_dict(state["opt"])
            except (RuntimeError, KeyError, ValueError) as exc:
                raise ConfigError(f"checkpoint in {str(path)!r} does not fit this algorithm: {exc}") from exc
            if self.obs_rms is not None and state["obs_rms"] is not None:
                self.obs_rms.load(state["obs_rms"])
            if self.ret_rms is not None and state["ret_rms"] is not None:
                self.ret_rms.load(state["ret_rms"])
            self._load_extra_state(state)
            self._export_cache = None
            self._rng.bit_generator.state = meta["rng"]
            self._version = int(meta["version"])
            self._updates = int(meta["updates"])
            self._steps_trained = int(meta["steps_trained"])
            self._steps_dropped = int(meta["steps_dropped"])
            self._ret_streams = OrderedDict(
                ((uuid.UUID(a), e, ep), float(v)) for a, e, ep, v in meta.get("ret_streams", [])
            )
