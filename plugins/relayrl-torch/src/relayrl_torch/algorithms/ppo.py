"""Proximal Policy Optimisation (clipped surrogate, GAE, separate actor and critic MLPs)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs
import numpy as np
import torch

from relayrl import ConfigError

from ._base import ActorCriticAlgorithm, Batch
from ._common import TORCH_ACTIVATIONS

__all__ = ["PPO", "PPOConfig"]


def _positive(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{attr.name} must be > 0, got {value!r}")


def _non_negative(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ConfigError(f"{attr.name} must be >= 0, got {value!r}")


def _unit(inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{attr.name} must be in [0, 1], got {value!r}")


def _activation(inst: Any, attr: attrs.Attribute[Any], value: str) -> None:
    if value not in TORCH_ACTIVATIONS:
        raise ConfigError(f"{attr.name} must be one of {sorted(TORCH_ACTIVATIONS)}, got {value!r}")


def _hidden(inst: Any, attr: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if not value or any(h < 1 for h in value):
        raise ConfigError(f"{attr.name} must be a non-empty list of positive layer widths, got {list(value)!r}")


def _device(inst: Any, attr: attrs.Attribute[Any], value: str) -> None:
    try:
        torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{attr.name}: {value!r} is not a torch device") from exc


@attrs.frozen(kw_only=True)
class PPOConfig:
    """PPO hyperparameters. The defaults solve CartPole-v1 quickly; see :meth:`PPO.preset_for`.

    .. versionadded:: 0.1
    """

    #: Parallel environments the runner should use (collection is ``num_envs * n_steps`` steps per update).
    num_envs: int = attrs.field(default=8, validator=_positive)
    #: Steps per environment between updates.
    n_steps: int = attrs.field(default=64, validator=_positive)
    #: Hidden layer widths of the policy and of the (separate) value network.
    hidden: tuple[int, ...] = attrs.field(default=(64, 64), validator=_hidden)
    #: Activation after every hidden layer (a name the numpy backend knows).
    activation: str = attrs.field(default="tanh", validator=_activation)
    #: Adam learning rate of the policy.
    lr: float = attrs.field(default=3e-3, validator=_positive)
    #: Adam learning rate of the value network (None: ``lr``).
    vf_lr: float | None = attrs.field(default=None, validator=_positive)
    #: Anneal the learning rates linearly to 0 over ``total_steps`` environment steps.
    anneal_lr: bool = True
    #: The step budget the annealing is spread over.
    total_steps: int | None = attrs.field(default=120_000, validator=_positive)
    #: Discount factor.
    gamma: float = attrs.field(default=0.98, validator=_unit)
    #: GAE lambda.
    gae_lambda: float = attrs.field(default=0.95, validator=_unit)
    #: Passes over each batch.
    n_epochs: int = attrs.field(default=10, validator=_positive)
    #: Minibatch size (a batch is split into ``round(N / minibatch_size)`` shuffled minibatches).
    minibatch_size: int = attrs.field(default=512, validator=_positive)
    #: Surrogate clipping range.
    clip_coef: float = attrs.field(default=0.2, validator=_positive)
    #: Clip the value loss around the old value predictions too.
    clip_vloss: bool = False
    #: Entropy bonus coefficient.
    ent_coef: float = attrs.field(default=0.0, validator=_non_negative)
    #: Gradient-norm clipping (over the policy and value parameters together).
    max_grad_norm: float = attrs.field(default=0.5, validator=_positive)
    #: Stop the update when a minibatch's approximate KL exceeds 1.5 x this (None: never).
    target_kl: float | None = attrs.field(default=0.01, validator=_positive)
    #: Normalise advantages per minibatch.
    normalize_advantages: bool = True
    #: Running mean/std observation normalisation, baked into exported models.
    normalize_obs: bool = False
    #: Clip normalised observations to ``[-obs_clip, obs_clip]``.
    obs_clip: float = attrs.field(default=10.0, validator=_positive)
    #: Scale rewards by the running standard deviation of the discounted return.
    normalize_reward: bool = False
    #: Drop steps produced by a model more than this many versions older than the current one (None: keep all).
    max_staleness: int | None = attrs.field(default=2, validator=_non_negative)
    #: Initial log standard deviation of Gaussian policies.
    log_std_init: float = 0.0
    #: Format of exported models: the numpy MLP (no torch needed to serve), TorchScript, or ONNX.
    export_backend: Literal["numpy", "torch", "onnx"] = "numpy"
    #: torch intra-op threads (process-wide; None leaves torch's setting alone).
    num_threads: int | None = attrs.field(default=1, validator=_positive)
    #: torch device for training.
    device: str = attrs.field(default="cpu", validator=_device)


class PPO(ActorCriticAlgorithm):
    """PPO with clipped surrogate, GAE, entropy bonus, (optionally clipped) value loss, KL early stop.

    Discrete, MultiDiscrete and 1-D Box action spaces (Gaussian policy with a state-independent
    ``log_std``); observation spaces must be Boxes. The policy and value networks are separate
    MLPs with separate Adam optimisers (so there is no value-loss coefficient: ``vf_lr`` sets
    the critic's step size).

    Truncated trajectories are bootstrapped: the last step's next value is ``V(final_obs)``
    under the current critic, or, when ``final_obs`` is None, the last step's own value.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "ppo"
    config_class: ClassVar[type[Any]] = PPOConfig
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "CartPole-v1": {},
        "Pendulum-v1": {
            "num_envs": 4, "n_steps": 512, "lr": 2e-3, "gamma": 0.9, "gae_lambda": 0.95, "n_epochs": 10,
            "minibatch_size": 512, "clip_coef": 0.2, "ent_coef": 0.0, "normalize_obs": True,
            "normalize_reward": True, "total_steps": 100_000, "anneal_lr": True, "target_kl": None,
        },
    }

    def _optimise(self, batch: Batch, lr_frac: float) -> dict[str, float]:
        cfg = self._cfg
        self._set_lr(lr_frac)
        t = self._tensors(batch)
        obs, crit, act, mask = t["obs"], t["crit"], t["act"], t["mask"]
        old_logp, adv_all, ret, old_v = t["logp"], t["adv"], t["ret"], t["value"]
        assert obs is not None and crit is not None and act is not None and old_logp is not None
        assert adv_all is not None and ret is not None and old_v is not None and self.vf is not None
        n = len(batch)
        n_mb = max(1, round(n / cfg.minibatch_size))
        clip = cfg.clip_coef
        params = [p for g in self.opt.param_groups for p in g["params"]]
        pg_sum = v_sum = ent_sum = kl_sum = cf_sum = 0.0
        count = 0
        stopped = 0.0
        approx_kl = 0.0
        epochs = 0
        for _epoch in range(cfg.n_epochs):
            epochs += 1
            # One minibatch: the whole batch in order (a mean is order-free; no gathers needed).
            splits = [None] if n_mb == 1 else np.array_split(self._rng.permutation(n), n_mb)
            for idx_np in splits:
                idx = None if idx_np is None else torch.as_tensor(idx_np)

                def take(x: torch.Tensor, idx: torch.Tensor | None = idx) -> torch.Tensor:
                    return x if idx is None else x[idx]

                out = self.pi(take(obs))
                logp, ent = self._dist.logp_entropy(out, take(act), self.log_std,
                                                     None if mask is None else take(mask))
                logratio = logp - take(old_logp)
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = float(((ratio - 1) - logratio).mean())
                    clipfrac = float(((ratio - 1.0).abs() > clip).float().mean())
                if cfg.target_kl is not None and approx_kl > 1.5 * cfg.target_kl:
                    stopped = 1.0
                    break
                adv = take(adv_all)
                if cfg.normalize_advantages and adv.shape[0] > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1.0 - clip, 1.0 + clip)).mean()
                ent_mean = ent.mean()
                v = self.vf(take(crit)).squeeze(-1)
                r = take(ret)
                if cfg.clip_vloss:
                    ov = take(old_v)
                    v_clipped = ov + (v - ov).clamp(-clip, clip)
                    v_loss = 0.5 * torch.max((v - r) ** 2, (v_clipped - r) ** 2).mean()
                else:
                    v_loss = 0.5 * ((v - r) ** 2).mean()
                loss = pg_loss - cfg.ent_coef * ent_mean + v_loss
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.opt.step()
                pg_sum += float(pg_loss.detach())
                v_sum += float(v_loss.detach())
                ent_sum += float(ent_mean.detach())
                kl_sum += approx_kl
                cf_sum += clipfrac
                count += 1
            if stopped:
                break
        var_y = float(np.var(batch.ret))
        explained = float("nan") if var_y == 0 else 1.0 - float(np.var(batch.ret - batch.value)) / var_y
        c = max(count, 1)
        return {
            "policy_loss": pg_sum / c, "value_loss": v_sum / c, "entropy": ent_sum / c, "approx_kl": kl_sum / c,
            "clipfrac": cf_sum / c, "epochs": float(epochs), "minibatches": float(count), "kl_stopped": stopped,
            "explained_variance": explained,
        }
