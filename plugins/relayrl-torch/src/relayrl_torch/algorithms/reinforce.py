"""REINFORCE with a learned value baseline (Monte-Carlo returns, normalised advantages)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs
import numpy as np
import torch

from ._base import ActorCriticAlgorithm, Batch
from .ppo import _activation, _device, _hidden, _non_negative, _positive, _unit

__all__ = ["REINFORCE", "REINFORCEConfig"]


@attrs.frozen(kw_only=True)
class REINFORCEConfig:
    """REINFORCE hyperparameters (defaults solve CartPole-v1).

    .. versionadded:: 0.1
    """

    #: Parallel environments the runner should use.
    num_envs: int = attrs.field(default=8, validator=_positive)
    #: Steps per environment between updates (one policy-gradient step per update).
    n_steps: int = attrs.field(default=256, validator=_positive)
    #: Hidden layer widths of the policy and of the baseline network.
    hidden: tuple[int, ...] = attrs.field(default=(64, 64), validator=_hidden)
    #: Activation after every hidden layer.
    activation: str = attrs.field(default="tanh", validator=_activation)
    #: Adam learning rate of the policy.
    lr: float = attrs.field(default=5e-3, validator=_positive)
    #: Adam learning rate of the baseline (None: ``lr``).
    vf_lr: float | None = attrs.field(default=None, validator=_positive)
    #: Anneal the learning rates linearly to 0 over ``total_steps``.
    anneal_lr: bool = False
    #: Step budget for the annealing.
    total_steps: int | None = attrs.field(default=500_000, validator=_positive)
    #: Discount factor.
    gamma: float = attrs.field(default=0.99, validator=_unit)
    #: Baseline regression passes over each batch.
    vf_epochs: int = attrs.field(default=5, validator=_positive)
    #: Baseline regression minibatch size.
    minibatch_size: int = attrs.field(default=256, validator=_positive)
    #: Entropy bonus coefficient.
    ent_coef: float = attrs.field(default=0.0, validator=_non_negative)
    #: Gradient-norm clipping.
    max_grad_norm: float = attrs.field(default=1.0, validator=_positive)
    #: Normalise advantages over the batch.
    normalize_advantages: bool = True
    #: Running observation normalisation, baked into exported models.
    normalize_obs: bool = False
    #: Clip normalised observations.
    obs_clip: float = attrs.field(default=10.0, validator=_positive)
    #: Scale rewards by the running standard deviation of the discounted return.
    normalize_reward: bool = False
    #: Drop steps more than this many versions older than the current model (REINFORCE is on-policy).
    max_staleness: int | None = attrs.field(default=1, validator=_non_negative)
    #: Initial log standard deviation of Gaussian policies.
    log_std_init: float = 0.0
    #: Format of exported models.
    export_backend: Literal["numpy", "torch", "onnx"] = "numpy"
    #: torch intra-op threads (None leaves torch's setting alone).
    num_threads: int | None = attrs.field(default=1, validator=_positive)
    #: torch device.
    device: str = attrs.field(default="cpu", validator=_device)


class REINFORCE(ActorCriticAlgorithm):
    """Monte-Carlo policy gradient with a learned state-value baseline.

    Returns are discounted sums of rewards to the end of each trajectory; a truncated trajectory
    is bootstrapped with the baseline's value of ``final_obs`` (or of its last observation).
    Each update takes one policy-gradient step on ``-(log pi(a|s) * A)`` with
    ``A = G - V(s)`` normalised, then fits the baseline for ``vf_epochs`` passes.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "reinforce"
    config_class: ClassVar[type[Any]] = REINFORCEConfig
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"CartPole-v1": {}}

    def _gae_lambda(self) -> float:
        return 1.0

    def _optimise(self, batch: Batch, lr_frac: float) -> dict[str, float]:
        cfg = self._cfg
        self._set_lr(lr_frac)
        t = self._tensors(batch)
        obs, crit, act, mask, adv, ret = t["obs"], t["crit"], t["act"], t["mask"], t["adv"], t["ret"]
        assert obs is not None and crit is not None and act is not None and adv is not None and ret is not None
        assert self.vf is not None
        if cfg.normalize_advantages and adv.shape[0] > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        out = self.pi(obs)
        logp, ent = self._dist.logp_entropy(out, act, self.log_std, mask)
        pg_loss = -(logp * adv).mean()
        ent_mean = ent.mean()
        self.opt.zero_grad(set_to_none=True)
        (pg_loss - cfg.ent_coef * ent_mean).backward()
        torch.nn.utils.clip_grad_norm_(self._pi_params, cfg.max_grad_norm)
        self.opt.step()  # the critic has no gradient here, so Adam leaves it alone
        n = len(batch)
        n_mb = max(1, round(n / cfg.minibatch_size))
        v_sum = 0.0
        count = 0
        for _ in range(cfg.vf_epochs):
            for idx_np in np.array_split(self._rng.permutation(n), n_mb):
                idx = torch.as_tensor(idx_np)
                v_loss = 0.5 * ((self.vf(crit[idx]).squeeze(-1) - ret[idx]) ** 2).mean()
                self.opt.zero_grad(set_to_none=True)
                v_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.vf.parameters(), cfg.max_grad_norm)
                self.opt.step()
                v_sum += float(v_loss.detach())
                count += 1
        return {"policy_loss": float(pg_loss.detach()), "value_loss": v_sum / max(count, 1),
                "entropy": float(ent_mean.detach())}
