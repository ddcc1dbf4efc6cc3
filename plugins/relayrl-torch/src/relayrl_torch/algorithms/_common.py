"""Pieces shared by the torch algorithms: MLPs, running statistics, action distributions, GAE."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from relayrl import ConfigError
from relayrl._numpy_backend import _orthogonal  # the same init as relayrl.mlp_policy
from relayrl.spaces import Box, Discrete, MultiDiscrete, Space

__all__ = [
    "TORCH_ACTIVATIONS",
    "ActionDist",
    "RunningMeanStd",
    "gae",
    "linear_layers",
    "mlp",
]

Array = npt.NDArray[Any]

#: Activations by the names the numpy backend uses (so exported models compute the same function).
TORCH_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,  # negative slope 0.01, as the numpy backend
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_MASKED = -1e9  # finite, so that 0 * log p stays 0 in the entropy of masked rows


def mlp(rng: np.random.Generator, sizes: Sequence[int], activation: str, out_gain: float) -> nn.Sequential:
    """An MLP with orthogonal initialisation drawn from ``rng`` (hidden gain sqrt(2), output ``out_gain``).

    Initialising from a numpy generator keeps runs reproducible without touching torch's global RNG.
    """
    layers: list[nn.Module] = []
    n = len(sizes) - 1
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(n_in, n_out)
        gain = out_gain if i == n - 1 else math.sqrt(2.0)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(_orthogonal(rng, n_out, n_in, gain)))
            lin.bias.zero_()
        layers.append(lin)
        if i != n - 1:
            layers.append(TORCH_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def linear_layers(net: nn.Sequential, scale: float = 1.0) -> list[tuple[Array, Array]]:
    """``(weight, bias)`` numpy pairs of every Linear layer; the last one is multiplied by ``scale``."""
    lins = [m for m in net if isinstance(m, nn.Linear)]
    out = []
    for i, lin in enumerate(lins):
        w = lin.weight.detach().cpu().numpy().astype(np.float32, copy=True)
        b = lin.bias.detach().cpu().numpy().astype(np.float32, copy=True)
        if i == len(lins) - 1 and scale != 1.0:
            w *= np.float32(scale)
            b *= np.float32(scale)
        out.append((w, b))
    return out


class RunningMeanStd:
    """Running mean and variance (parallel-variance update, float64), as in SB3 / CleanRL."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)

    def update(self, x: Array) -> None:
        """Fold a batch ``[N, *shape]`` into the statistics."""
        if x.shape[0] == 0:
            return
        x = np.asarray(x, dtype=np.float64)
        b_mean = x.mean(axis=0)
        b_var = x.var(axis=0)
        b_count = float(x.shape[0])
        delta = b_mean - self.mean
        total = self.count + b_count
        new_mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.mean = np.asarray(new_mean, dtype=np.float64)
        self.var = np.asarray(m2 / total, dtype=np.float64)
        self.count = total

    def std(self, eps: float = 1e-8) -> Array:
        """``sqrt(var + eps)``."""
        res: Array = np.sqrt(self.var + eps)
        return res

    def state(self) -> dict[str, Any]:
        """Tensors and floats only (``torch.load(weights_only=True)`` can read them)."""
        return {"mean": torch.as_tensor(np.array(self.mean, dtype=np.float64)),
                "var": torch.as_tensor(np.array(self.var, dtype=np.float64)),
                "count": self.count}

    def load(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        self.mean = state["mean"].numpy().astype(np.float64)
        self.var = state["var"].numpy().astype(np.float64)
        self.count = float(state["count"])


class ActionDist:
    """Log-probabilities and entropies of a batch of actions under a policy head, in torch.

    Matches :func:`relayrl.make_head`: categorical (masked logits excluded), independent
    categoricals for ``MultiDiscrete``, diagonal Gaussian with state-independent ``log_std``.
    """

    def __init__(self, space: Space) -> None:
        self.space = space
        if isinstance(space, Discrete):
            self.kind = "categorical"
            self.out_dim = space.n
            self.start = space.start
            self.splits: list[int] = [space.n]
        elif isinstance(space, MultiDiscrete):
            self.kind = "multi_categorical"
            self.out_dim = space.flat_dim
            self.start = 0
            self.splits = [int(n) for n in space.nvec]
        elif isinstance(space, Box):
            if len(space.shape) != 1:
                raise ConfigError(f"Box action spaces must be 1-D, got shape {space.shape}")
            self.kind = "gaussian"
            self.out_dim = space.shape[0]
            self.start = 0
            self.splits = []
        else:  # pragma: no cover - from_gymnasium only returns the three
            raise ConfigError(f"unsupported action space {space!r}")

    @property
    def continuous(self) -> bool:
        """Whether actions are real vectors (Gaussian)."""
        return self.kind == "gaussian"

    def act_tensor(self, act: Array) -> torch.Tensor:
        """Actions as the tensor :meth:`logp_entropy` expects."""
        if self.continuous:
            return torch.as_tensor(np.asarray(act, dtype=np.float32).reshape(len(act), self.out_dim))
        a = np.asarray(act, dtype=np.int64)
        if self.kind == "categorical":
            a = a.reshape(len(a)) - self.start
        else:
            a = a.reshape(len(a), len(self.splits))
        return torch.as_tensor(a)

    def logp_entropy(
        self, out: torch.Tensor, act: torch.Tensor, log_std: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_prob [B], entropy [B])`` of ``act`` under the head outputs ``out``."""
        if self.continuous:
            assert log_std is not None
            z = (act - out) * torch.exp(-log_std)
            logp = (-0.5 * z * z - log_std - _LOG_SQRT_2PI).sum(-1)
            ent = (log_std + 0.5 + _LOG_SQRT_2PI).sum().expand(out.shape[0])
            return logp, ent
        if mask is not None:
            out = out.masked_fill(~mask, _MASKED)
        if self.kind == "categorical":
            lp = torch.log_softmax(out, dim=-1)
            logp = lp.gather(1, act.view(-1, 1)).squeeze(1)
            ent = -(lp.exp() * lp).sum(-1)
            return logp, ent
        logp = out.new_zeros(out.shape[0])
        ent = out.new_zeros(out.shape[0])
        for i, part in enumerate(torch.split(out, self.splits, dim=-1)):
            lp = torch.log_softmax(part, dim=-1)
            logp = logp + lp.gather(1, act[:, i : i + 1]).squeeze(1)
            ent = ent - (lp.exp() * lp).sum(-1)
        return logp, ent


def gae(
    reward: Array,
    value: Array,
    next_value: Array,
    nonterminal: Array,
    last: Array,
    gamma: float,
    lam: float,
) -> Array:
    """Generalised advantage estimates over concatenated trajectories (float64 ``[N]``).

    ``next_value[t]`` is the value of the state after step ``t`` (the next step's value inside a
    trajectory; at a trajectory's end, the bootstrap value). ``nonterminal[t]`` is 0 where step
    ``t`` ended the episode in a terminal state (no bootstrap), and ``last[t]`` is 1 where the
    recursion must stop (the end of a trajectory or a terminal step).
    """
    delta = (reward + gamma * next_value * nonterminal - value).tolist()
    carry = (gamma * lam * (1.0 - last)).tolist()
    adv = [0.0] * len(delta)
    acc = 0.0
    for t in range(len(delta) - 1, -1, -1):
        acc = delta[t] + carry[t] * acc
        adv[t] = acc
    return np.asarray(adv, dtype=np.float64)
