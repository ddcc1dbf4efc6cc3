"""``relayrl.train``: agent, environments and training server in one process.

The embedded default wires the real components together over the in-process transport::

    environments --EnvRunner--> Agent --TransportSink--> InprocTransport --> TrainingServer
         ^                        ^                                              |
         +------ actions ---------+------- model updates (handshake, broadcast) -+

In the default ``"sync"`` mode, collection runs one rollout of ``algorithm.steps_per_update``
recorded steps (PPO: ``num_envs * n_steps``), ends the open trajectories there (truncated, with the final
observation for bootstrapping), waits until the server has received every step, and -- if the
algorithm started an update -- waits for the new model before collecting again. That is the
classic on-policy loop (no step is collected with a stale policy) and the fastest stable one.
In ``"async"`` mode collection never waits: :func:`relayrl.connect_agent` applies new models
whenever they arrive (policy lag of up to a version or two; PPO's ``max_staleness`` drops
older steps).

.. versionadded:: 0.1
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import numpy as np
import trio

from ._config import TrainConfig
from ._errors import ConfigError, PluginUnavailableError
from ._model import ModelModule

if TYPE_CHECKING:
    from ._algorithm_api import Algorithm
    from .envs import EnvRunner, RunnerStatistics, VecEnv

__all__ = ["EvalResult", "TrainResult", "evaluate", "prepare_training", "run_training", "train"]

#: Columns of ``metrics.csv`` (one row at the start, one per published model, one at the end).
METRICS_COLUMNS: Final = ("step", "wall_time", "episodes", "mean_return", "model_version", "steps_per_second",
                          "train_time")
#: Default step budget when neither the caller nor the algorithm sets one.
DEFAULT_TOTAL_STEPS: Final = 1_000_000
#: Default number of environments when neither the caller nor the algorithm sets one.
DEFAULT_NUM_ENVS: Final = 8


@attrs.frozen(kw_only=True)
class TrainResult:
    """What a training run produced.

    .. versionadded:: 0.1
    """

    #: The last published model (stamped with its version).
    model: ModelModule
    #: The ``metrics.csv`` rows (plus the algorithm's statistics of each update), oldest first.
    history: tuple[Mapping[str, float], ...]
    #: Whether the mean return of the last ``window`` episodes reached :attr:`target_return`.
    solved: bool
    #: The target used (None: no target, the whole budget ran).
    target_return: float | None
    #: Seconds from the call to the end of training.
    wall_time: float
    #: Environment steps collected.
    steps: int
    #: Episodes finished.
    episodes: int
    #: Mean return of the last ``window`` episodes (NaN before the first episode).
    mean_return: float
    #: Where the run's files are (None when no run directory was asked for).
    run_dir: Path | None
    #: The resolved configuration.
    config: TrainConfig


@attrs.frozen(kw_only=True)
class EvalResult:
    """Returns of an evaluation.

    .. versionadded:: 0.1
    """

    returns: tuple[float, ...]
    lengths: tuple[int, ...]

    @property
    def mean(self) -> float:
        """Mean return."""
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        """Standard deviation of the returns."""
        return float(np.std(self.returns))


@attrs.define(eq=False)
class _Prepared:
    config: TrainConfig
    env: VecEnv
    algorithm: Algorithm
    rollout: int
    run_dir: Path | None


def _env_label(env: Any) -> str:
    name = env if isinstance(env, str) else getattr(env, "__name__", type(env).__name__)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "env"


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<env>-<algo>-s<seed>-<UTC time>`` (what the CLI uses when ``--run-dir`` is not given)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("runs") / f"{_env_label(config.env)}-{config.algo}-s{config.seed}-{stamp}"


def prepare_training(config: TrainConfig, *, run_dir: str | os.PathLike[str] | None = None,
                     algorithm_class: type[Algorithm] | None = None) -> _Prepared:
    """Resolve a config into an environment and an algorithm (and write the resolved config).

    ``algorithm_class`` overrides the registry lookup of ``config.algo`` (for algorithms that
    are not installed as plugins).

    Raises:
        ConfigError: unknown environment, bad ``env_kwargs``, a bad hyperparameter (named), or a
            backend the algorithm cannot export to.
        UnknownPluginError, PluginUnavailableError: the algorithm is not installed.
    """
    from . import algorithms, envs

    cls = algorithm_class if algorithm_class is not None else algorithms.get(config.algo)
    env_id = config.env if isinstance(config.env, str) else None
    algo_cfg: dict[str, Any] = {**(cls.preset_for(env_id) if env_id else {}), **config.algo_config}
    fields = attrs.fields_dict(cls.config_class) if attrs.has(cls.config_class) else {}
    if config.num_envs is not None and "num_envs" in fields:
        algo_cfg["num_envs"] = config.num_envs
    if config.total_steps is not None and "total_steps" in fields:
        algo_cfg["total_steps"] = config.total_steps
    if "export_backend" in fields:
        algo_cfg.setdefault("export_backend", config.backend)
    elif config.backend != "numpy":
        raise ConfigError(f"backend: algorithm {config.algo!r} has no export_backend setting; only numpy is possible")
    resolved = cls.make_config(algo_cfg)
    num_envs = config.num_envs or getattr(resolved, "num_envs", None) or DEFAULT_NUM_ENVS
    total = config.total_steps or getattr(resolved, "total_steps", None) or DEFAULT_TOTAL_STEPS
    env = envs.make(config.env, num_envs=int(num_envs), seed=config.seed, env_kwargs=config.env_kwargs)
    try:
        target = config.target_return if config.target_return is not None else env.reward_threshold
        algorithm = cls(env.observation_space, env.action_space, config=algo_cfg, seed=config.seed)
        # A rollout is what one update consumes, in recorded (agent) steps: the algorithm's own rule.
        rollout = max(int(algorithm.steps_per_update), 1)
        full_algo = attrs.asdict(algorithm.config) if attrs.has(type(algorithm.config)) else dict(algo_cfg)
        final = attrs.evolve(config, num_envs=int(num_envs), total_steps=int(total), target_return=target,
                             algo_config=full_algo)
        path = None if run_dir is None else Path(run_dir)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            data = final.to_dict()
            if not isinstance(data["env"], str):
                data["env"] = repr(data["env"])
            (path / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=repr) + "\n",
                                              encoding="utf-8")
    except BaseException:
        env.close()
        raise
    return _Prepared(config=final, env=env, algorithm=algorithm, rollout=rollout, run_dir=path)


class _Metrics:
    """metrics.csv rows, the history, and TensorBoard scalars."""

    def __init__(self, run_dir: Path | None, tensorboard: bool, start: float) -> None:
        self.rows: list[dict[str, float]] = []
        self._start = start
        self._file: Any = None
        self._writer: Any = None
        self._csv: Any = None
        if run_dir is not None:
            path = run_dir / "metrics.csv"
            new = not path.exists()
            self._file = path.open("a", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(self._file, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
            if new:
                self._csv.writeheader()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise PluginUnavailableError(
                    "--tensorboard needs torch and the tensorboard package: "
                    "`pip install -c constraints.txt tensorboard`") from exc
            if run_dir is None:
                raise ConfigError("tensorboard: a run directory is needed for TensorBoard event files")
            self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def record(self, stats: RunnerStatistics, version: int, *, train_time: float = math.nan,
               algo_stats: Mapping[str, float] | None = None) -> None:
        wall = time.perf_counter() - self._start
        row: dict[str, float] = {
            "step": stats.steps, "wall_time": round(wall, 4), "episodes": stats.episodes,
            "mean_return": stats.mean_return, "model_version": version,
            # Overall throughput (collection and training), not the runner's collection-only rate.
            "steps_per_second": round(stats.steps / wall, 1) if wall > 0 else 0.0, "train_time": train_time,
        }
        if algo_stats:
            row.update({f"train/{k}": float(v) for k, v in algo_stats.items()})
        self.rows.append(row)
        if self._csv is not None:
            self._csv.writerow(row)
            self._file.flush()
        if self._writer is not None:
            step = int(stats.steps)
            if not math.isnan(stats.mean_return):
                self._writer.add_scalar("rollout/mean_return", stats.mean_return, step)
            self._writer.add_scalar("rollout/episodes", stats.episodes, step)
            self._writer.add_scalar("time/steps_per_second", row["steps_per_second"], step)
            self._writer.add_scalar("time/collection_steps_per_second", stats.steps_per_second, step)
            self._writer.add_scalar("model/version", version, step)
            for k, v in (algo_stats or {}).items():
                self._writer.add_scalar(f"train/{k}", float(v), step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()


def _progress_bar(total: int) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[sps]:>7.0f} steps/s"), TextColumn("episodes {task.fields[episodes]}"),
        TextColumn("return {task.fields[ret]}"), TextColumn("v{task.fields[version]}"), TimeElapsedColumn(),
        console=Console(stderr=True), auto_refresh=False, transient=False,
    )
    progress.add_task("train", total=total, sps=0.0, episodes=0, ret="-", version=0)
    return progress


def _refresh_bar(progress: Any, runner: EnvRunner, version: int, start: float) -> None:
    st = runner.statistics()
    ret = "-" if math.isnan(st.mean_return) else f"{st.mean_return:.1f}"
    elapsed = time.perf_counter() - start
    progress.update(progress.task_ids[0], completed=st.steps, sps=st.steps / elapsed if elapsed > 0 else 0.0,
                    episodes=st.episodes, ret=ret, version=version)
    progress.refresh()


async def _show_progress(progress: Any, runner: EnvRunner, version: Callable[[], int], start: float,
                         interval: float) -> None:
    while True:
        _refresh_bar(progress, runner, version(), start)
        await trio.sleep(interval)


async def run_training(prepared: _Prepared, *, progress: bool = False,
                       on_row: Callable[[Mapping[str, float]], None] | None = None) -> TrainResult:
    """Run a prepared training in the current trio run (see :func:`train`).

    Raises:
        ConfigError, ModelError, ObservationError: the algorithm, the model and the environment
            do not fit together.
    """
    from . import envs
    from ._agent import open_agent
    from ._inproc import InprocTransport
    from ._server import UpdateRecord, open_training_server
    from ._transport_sink import TransportSink, connect_agent

    cfg = prepared.config
    env, algorithm = prepared.env, prepared.algorithm
    total = int(cfg.total_steps or DEFAULT_TOTAL_STEPS)
    target = cfg.target_return
    window = cfg.window
    start = time.perf_counter()
    metrics = _Metrics(prepared.run_dir, cfg.tensorboard, start)
    runner_box: list[EnvRunner] = []
    version_box = [0]

    def solved(st: RunnerStatistics) -> bool:
        return target is not None and st.episodes >= window and st.mean_return >= target

    def should_stop(st: RunnerStatistics) -> bool:
        return st.steps >= total or solved(st)

    def on_update(rec: UpdateRecord) -> None:
        version_box[0] = rec.version
        if runner_box:
            metrics.record(runner_box[0].statistics(), rec.version, train_time=rec.train_time, algo_stats=rec.stats)
            if on_row is not None:
                on_row(metrics.rows[-1])

    transport = InprocTransport()
    ckpt = None if prepared.run_dir is None else prepared.run_dir / "checkpoints"
    bar = _progress_bar(total) if progress else None
    try:
        async with open_training_server(algorithm, transport=transport, checkpoint_dir=ckpt,
                                        checkpoint_every=cfg.checkpoint_every, on_update=on_update) as server, \
                transport.open_client() as client:
            version_box[0] = server.version
            async with open_agent(sinks=[TransportSink(client)], seed=cfg.seed) as agent:
                ids = []
                for i, actor in enumerate(await agent.new_actors(env.num_slots)):
                    # Deterministic ids (slot i -> UUID i + 1): trajectories sort the same way every run.
                    ids.append(uuid.UUID(int=i + 1))
                    await agent.set_actor_id(actor, ids[-1])
                first = await client.request_model()
                assert first is not None  # the server publishes its initial model before it serves
                await agent.update_model(first)
                runner = envs.EnvRunner(env, agent, ids=ids, seed=cfg.seed, window=window)
                runner_box.append(runner)
                metrics.record(runner.statistics(), server.version)
                async with trio.open_nursery() as nursery:
                    if bar is not None:
                        bar.start()
                        nursery.start_soon(_show_progress, bar, runner, lambda: version_box[0], start, 0.25)
                    if cfg.mode == "async":
                        await nursery.start(connect_agent, agent, client)
                        await runner.run(total, until=should_stop, cut=True)
                    else:
                        base = server.received_steps
                        installed = first.version
                        while not should_stop(runner.statistics()):
                            # Whole rollouts (like SB3, the budget is rounded up to a full rollout).
                            end = runner.statistics().agent_steps + prepared.rollout
                            server.hold()  # the rollout reaches the algorithm in a canonical order

                            def rollout_done(s: RunnerStatistics, end: int = end) -> bool:
                                return s.agent_steps >= end or solved(s)

                            st = await runner.run(None, until=rollout_done, cut=True)
                            # Every recorded step reaches the server before we decide to wait.
                            await server.wait_for_steps(base + st.agent_steps)
                            server.release()
                            if server.update_pending and not solved(st):
                                # (When the budget ran out, the last rollout is still trained on.)
                                await server.wait_for_version(server.version + 1)
                            if not should_stop(st) and server.version != installed:
                                # Always start a rollout on the newest model.
                                newest = await client.receive_model()
                                await agent.update_model(newest)
                                installed = newest.version
                    nursery.cancel_scope.cancel()
            stats = runner.statistics()
            await server.wait_for_steps(server.received_steps)
            model = server.model
            assert model is not None
            metrics.record(stats, server.version)
            if bar is not None:
                _refresh_bar(bar, runner, version_box[0], start)
    finally:
        metrics.close()
        if bar is not None:
            bar.stop()
        env.close()
    wall = time.perf_counter() - start
    if prepared.run_dir is not None:
        await trio.to_thread.run_sync(model.save, prepared.run_dir / "model")
    return TrainResult(model=model, history=tuple(metrics.rows), solved=solved(stats), target_return=target,
                       wall_time=wall, steps=stats.steps, episodes=stats.episodes, mean_return=stats.mean_return,
                       run_dir=prepared.run_dir, config=cfg)


def train(
    env: Any,
    *,
    algo: str | type[Algorithm] = "ppo",
    num_envs: int | None = None,
    total_steps: int | None = None,
    target_return: float | None = None,
    seed: int = 0,
    backend: str = "numpy",
    run_dir: str | os.PathLike[str] | None = None,
    config: Mapping[str, Any] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
    mode: str = "sync",
    window: int = 100,
    checkpoint_every: int = 10,
    tensorboard: bool = False,
) -> TrainResult:
    """Train ``algo`` on ``env`` until it is solved or the step budget is spent.

    Runs agent, environments and a training server in this process over the in-process
    transport (see the module documentation for the loop). Blocking: it starts its own trio
    run (inside trio, use :func:`prepare_training` + :func:`run_training`).

    Args:
        env: A gymnasium id, ``"module:callable"`` (a gymnasium env or PettingZoo parallel env
            factory), or anything :func:`relayrl.envs.make` accepts.
        algo: Algorithm name (``ppo``, ``reinforce``, ``ippo``, ``mappo`` with relayrl-torch), or an
            :class:`~relayrl.abc.Algorithm` subclass.
        num_envs: Parallel environments (default: the algorithm's setting).
        total_steps: Environment-step budget (default: the algorithm's ``total_steps``).
        target_return: Stop when the mean return of the last ``window`` episodes reaches it
            (default: the environment's reward threshold; multi-agent: every agent's episode
            return counts, so the mean is over agents too).
        seed: Seeds environments, sampling and the algorithm.
        backend: Export format of the models (``numpy``, ``onnx``, ``torch``).
        run_dir: Where to write ``config.json``, ``metrics.csv``, ``checkpoints/`` and the final
            ``model/`` (None: nothing is written). A directory holding checkpoints is resumed.
        config: The algorithm's hyperparameters (over its per-environment preset).
        env_kwargs: Keyword arguments for the environment constructor.
        progress: Show a progress bar on stderr.
        mode: ``"sync"`` (default) or ``"async"`` collection.
        window: Episodes in the moving mean of the stopping rule.
        checkpoint_every: Checkpoint every this many updates (with a ``run_dir``).
        tensorboard: Also write TensorBoard event files (needs the ``tensorboard`` package).

    Returns:
        The final model, the metrics history, whether it solved the task, time and steps.

    Raises:
        ConfigError: a bad argument, environment or hyperparameter (the message names it).
        UnknownPluginError, PluginUnavailableError: the algorithm is not installed.

    .. versionadded:: 0.1
    """
    algo_cls = algo if isinstance(algo, type) else None
    name = algo if isinstance(algo, str) else str(getattr(algo, "name", algo.__name__))
    cfg = TrainConfig.from_dict({
        "env": env, "algo": name, "num_envs": num_envs, "total_steps": total_steps, "target_return": target_return,
        "seed": seed, "backend": backend, "mode": mode, "window": window, "checkpoint_every": checkpoint_every,
        "tensorboard": tensorboard, "env_kwargs": dict(env_kwargs or {}), "algo_config": dict(config or {}),
    })
    prepared = prepare_training(cfg, run_dir=run_dir, algorithm_class=algo_cls)
    result: TrainResult = trio.run(lambda: run_training(prepared, progress=progress))
    return result


async def evaluate_async(model: ModelModule, env: Any, *, episodes: int = 10, deterministic: bool = True,
                         seed: int = 0, num_envs: int | None = None,
                         env_kwargs: Mapping[str, Any] | None = None) -> EvalResult:
    """Run ``model`` for ``episodes`` episodes (see :func:`evaluate`)."""
    from . import envs
    from ._agent import open_agent

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be an int >= 1, got {episodes!r}")
    n = num_envs or min(episodes, 8)
    venv = envs.make(env, num_envs=n, seed=seed, env_kwargs=dict(env_kwargs or {}))
    returns: list[float] = []
    lengths: list[int] = []

    def collect(r: Any, length: Any) -> None:
        returns.extend(float(x) for x in r)
        lengths.extend(int(x) for x in length)

    try:
        if tuple(model.obs_shape) != tuple(venv.observation_space.shape):
            raise ConfigError(f"the model takes observations of shape {model.obs_shape}, "
                              f"the environment gives {venv.observation_space.shape}")
        async with open_agent(model, seed=seed) as agent:
            runner = envs.EnvRunner(venv, agent, deterministic=deterministic, seed=seed)
            await runner.run(None, until=lambda st: st.episodes >= episodes, on_episodes=collect, cut=True)
    finally:
        venv.close()
    return EvalResult(returns=tuple(returns[:episodes]), lengths=tuple(lengths[:episodes]))


def evaluate(model: ModelModule | str | os.PathLike[str], env: Any, *, episodes: int = 10,
             deterministic: bool = True, seed: int = 0, env_kwargs: Mapping[str, Any] | None = None) -> EvalResult:
    """Run a model (or a model directory) for ``episodes`` episodes; deterministic by default.

    Raises:
        ModelError: the model cannot be loaded.
        ConfigError: the environment is unknown or does not fit the model.

    .. versionadded:: 0.1
    """
    module = model if isinstance(model, ModelModule) else ModelModule.load(model)
    result: EvalResult = trio.run(lambda: evaluate_async(module, env, episodes=episodes, deterministic=deterministic,
                                                         seed=seed, env_kwargs=env_kwargs))
    return result
