"""The training server: receive while training, versioned publishing, handshakes, checkpoints and
resume without going back in version, rejected input, failures and telemetry."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from standin_algorithm import StandinAlgorithm

import relayrl
from relayrl import transports
from relayrl._server import LATEST_FILE, latest_checkpoint
from relayrl._transport_api import InferenceRequest, TransportClient
from relayrl.spaces import Box, Discrete

OBS = Box(low=-1.0, high=1.0, shape=(4,))
ACT = Discrete(2)


def make_traj(n: int = 5, *, obs_dim: int = 4) -> relayrl.Trajectory:
    return relayrl.Trajectory(
        obs=np.zeros((n, obs_dim), np.float32), act=np.zeros(n, np.int64), reward=np.ones(n, np.float32),
        done=np.eye(1, n, n - 1, dtype=bool)[0], logp=np.zeros(n, np.float32), value=np.zeros(n, np.float32),
        model_version=np.zeros(n, np.int64), actor_id=uuid.uuid4())


def checkpoint_names(root: Path, pattern: str = "ckpt-*") -> list[str]:
    return sorted(p.name for p in root.glob(pattern))


def algo(**config: Any) -> StandinAlgorithm:
    return StandinAlgorithm(OBS, ACT, config={"steps_per_update": 10, **config})


async def feed_until(server: relayrl.TrainingServer, client: TransportClient, version: int) -> None:
    """Send 10-step batches until the server has published ``version``."""
    with trio.fail_after(30):
        while server.version < version:
            await client.send_trajectories([make_traj(5), make_traj(5)])
            await client.flush()
            if server.update_pending:
                await server.wait_for_version(server.version + 1)


async def test_publishes_version_zero_then_one_per_update() -> None:
    t = transports.InprocTransport()
    seen: list[relayrl.UpdateRecord] = []
    a = algo()
    async with relayrl.open_training_server(a, transport=t, on_update=seen.append) as server, \
            t.open_client() as client:
        first = await client.request_model()
        assert first is not None and first.version == 0 and server.version == 0
        await feed_until(server, client, 3)
        assert [r.version for r in server.history] == [1, 2, 3]
        assert seen == server.history
        assert all(r.steps == 10 for r in server.history) and server.history[-1].total_steps == 30
        latest = await client.receive_model()
        assert latest.version == 3 and latest == a.export_model(version=3)
        st = server.statistics()
        assert (st.version, st.updates, st.trajectories, st.steps, st.rejected) == (3, 3, 6, 30, 0)
        assert st.clients == 0  # this client sent no notice
        await client.notify("client_ids", actor_ids=[uuid.uuid4()])
        await client.flush()
        with trio.fail_after(5):
            while server.statistics().clients != 1:  # noqa: ASYNC110 - the notice is processed asynchronously
                await trio.sleep(0.001)
    assert a.trained_steps == 30


async def test_keeps_receiving_while_training() -> None:
    t = transports.InprocTransport()
    a = algo()
    gate = trio.Event()
    token = trio.lowlevel.current_trio_token()
    original = a.train

    def slow_train() -> Any:
        trio.from_thread.run(gate.wait, trio_token=token)  # training blocks until the test opens the gate
        return original()

    a.train = slow_train  # type: ignore[method-assign]
    async with relayrl.open_training_server(a, transport=t) as server, t.open_client() as client:
        await client.send_trajectories([make_traj(10)])
        with trio.fail_after(10):
            while not server.update_pending:  # noqa: ASYNC110
                await trio.sleep(0.001)
            # While train() waits, more batches are received and acknowledged.
            for _ in range(3):
                await client.send_trajectories([make_traj(4)])
            await client.flush()
        assert server.statistics().steps == 22 and server.version == 0
        gate.set()
        with trio.fail_after(10):
            await server.wait_for_version(2)  # the 12 extra steps make a second update
    assert a.trained_steps == 22


async def test_checkpoint_then_crash_resumes_without_going_back(tmp_path: Path) -> None:
    t = transports.InprocTransport()
    ckpt = tmp_path / "ckpt"
    async with t.open_client() as client:
        async def run_and_crash() -> None:
            async with relayrl.open_training_server(algo(), transport=t, checkpoint_dir=ckpt,
                                                    checkpoint_every=2) as server:
                await feed_until(server, client, 3)
                assert server.statistics().checkpoint_version == 2
                raise RuntimeError("killed mid-run")

        with pytest.raises(RuntimeError, match="killed"):
            await run_and_crash()
        path = latest_checkpoint(ckpt)
        assert path is not None and (path / "algorithm" / "state.json").is_file()
        assert relayrl.ModelModule.load(path / "model").version == 2
        # Version 3 was published after the last checkpoint (2): the restored weights (those of
        # version 2) must not reuse a version the clients already have.
        b = algo()
        async with relayrl.open_training_server(b, transport=t, checkpoint_dir=ckpt, checkpoint_every=2) as server:
            assert b.updates == 2 and b.trained_steps == 20
            assert server.version == 4
            assert server.statistics().updates == 2 and server.statistics().steps == 20  # as checkpointed
            got = await client.receive_model()
            assert got.version == 4 and got == b.export_model(version=4)
            await feed_until(server, client, 5)
            assert [r.version for r in server.history] == [5]
            assert client.statistics().model_version >= 4


async def test_cancelled_server_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    t = transports.InprocTransport()
    versions: list[int] = []
    async with t.open_client() as client:
        with trio.CancelScope() as scope:
            async with relayrl.open_training_server(algo(), transport=t, checkpoint_dir=tmp_path,
                                                    checkpoint_every=1) as server:
                await feed_until(server, client, 2)
                versions.append(server.version)
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        b = algo()
        async with relayrl.open_training_server(b, transport=t, checkpoint_dir=tmp_path) as server:
            # The checkpoint holds version 2 and nothing later was published: same lineage.
            assert server.version == 2 and b.updates == 2
            await feed_until(server, client, 3)
            versions.append(server.version)
    assert versions == [2, 3]
    assert checkpoint_names(tmp_path)[-1].startswith("ckpt-00000003")  # the final checkpoint


async def test_clean_exit_writes_a_final_checkpoint_and_prunes(tmp_path: Path) -> None:
    t = transports.InprocTransport()
    async with relayrl.open_training_server(algo(), transport=t, checkpoint_dir=tmp_path, checkpoint_every=1,
                                            keep_checkpoints=2) as server, t.open_client() as client:
        await feed_until(server, client, 4)
    dirs = checkpoint_names(tmp_path)
    assert len(dirs) == 2
    path = latest_checkpoint(tmp_path)
    assert path is not None and path.name == dirs[-1] and path.name.startswith("ckpt-00000004")
    assert not checkpoint_names(tmp_path, ".*.tmp")


async def test_unacked_batches_survive_a_server_restart(tmp_path: Path) -> None:
    t = transports.InprocTransport(retry_interval=0.05)
    async with t.open_client() as client:
        with trio.CancelScope() as scope:
            async with relayrl.open_training_server(algo(), transport=t, checkpoint_dir=tmp_path):
                scope.cancel()
        # Sent while no server runs: kept, then delivered to the next server.
        await client.send_trajectories([make_traj(6)])
        await client.send_trajectories([make_traj(6)])
        b = algo()
        async with relayrl.open_training_server(b, transport=t, checkpoint_dir=tmp_path) as server:
            with trio.fail_after(10):
                await client.flush()
                await server.wait_for_version(1)
            assert server.statistics().steps == 12
    assert b.trained_steps == 12


async def test_rejected_trajectories_are_counted_and_others_kept() -> None:
    t = transports.InprocTransport()
    a = algo()
    async with relayrl.open_training_server(a, transport=t) as server, t.open_client() as client:
        await client.send_trajectories([make_traj(3, obs_dim=7), make_traj(4), make_traj(3, obs_dim=2)])
        await client.flush()
        st = server.statistics()
        assert (st.rejected, st.trajectories, st.steps) == (2, 1, 4)
        assert client.statistics().unacked == 0
    assert a.received_steps == 4


async def test_inference_requests_get_an_error_reply() -> None:
    t = transports.InprocTransport()
    async with relayrl.open_training_server(algo(), transport=t), t.open_client() as client:
        reply = await client.infer([uuid.uuid4()], np.zeros((1, 4), np.float32))
    assert not reply.ok and "does not serve inference" in (reply.error or "")
    assert InferenceRequest is not None


async def test_training_failure_propagates_unwrapped() -> None:
    t = transports.InprocTransport()
    with pytest.raises(RuntimeError, match="failed on purpose"):
        async with relayrl.open_training_server(algo(fail_on_update=1), transport=t) as server, \
                t.open_client() as client:
            await feed_until(server, client, 5)


@pytest.mark.parametrize(("key", "value"), [("checkpoint_every", 0), ("keep_checkpoints", 0),
                                            ("checkpoint_every", 1.5)])
async def test_bad_settings(key: str, value: Any) -> None:
    with pytest.raises(relayrl.ConfigError, match=key):
        async with relayrl.open_training_server(algo(), transport=transports.InprocTransport(), **{key: value}):
            pass


async def test_broken_checkpoint_pointer_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / LATEST_FILE).write_text("ckpt-missing\n")
    t = transports.InprocTransport()
    with pytest.raises(relayrl.ConfigError, match="not a complete checkpoint"):
        async with relayrl.open_training_server(algo(), transport=t, checkpoint_dir=tmp_path):
            pass
    # The transport is free again for a working server.
    (tmp_path / LATEST_FILE).unlink()
    async with relayrl.open_training_server(algo(), transport=t, checkpoint_dir=tmp_path) as server:
        assert server.version == 0


async def test_train_epoch_span_per_update() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    t = transports.InprocTransport()
    async with relayrl.open_training_server(algo(), transport=t, tracer_provider=provider) as server, \
            t.open_client() as client:
        await feed_until(server, client, 2)
    spans = [s for s in exporter.get_finished_spans() if s.name == "train epoch"]
    assert [s.attributes["rl.model.version"] for s in spans] == [1, 2]  # type: ignore[index]
    assert all(s.attributes["rl.outcome"] == "ok" and s.attributes["rl.steps"] == 10 for s in spans)  # type: ignore[index]
    provider.shutdown()


async def test_agent_in_training_data_mode_end_to_end() -> None:
    """A real agent on a real CartPole env ships trajectories and follows the published versions."""
    import gymnasium as gym

    t = transports.InprocTransport()
    a = StandinAlgorithm(OBS, ACT, config={"steps_per_update": 50})
    env = gym.make("CartPole-v1")
    sent_steps = 0
    async with relayrl.open_training_server(a, transport=t) as server, t.open_client() as client:
        sink = relayrl.TransportSink(client)
        async with relayrl.open_agent(sinks=[sink], seed=0) as agent, trio.open_nursery() as nursery:
            (actor,) = await agent.new_actors(1)
            model = await nursery.start(relayrl.connect_agent, agent, client)
            assert model is not None and model.version == 0
            assert (await agent.get_model_version([actor]))[actor] == 0
            obs, _ = env.reset(seed=0)
            reward = None
            with trio.fail_after(60):
                while server.version < 3:
                    batch = await agent.request_action([actor], obs[None].astype(np.float32), reward=reward)
                    obs, r, term, trunc, _ = env.step(int(batch.act[0]))
                    sent_steps += 1
                    reward = np.float32(r)
                    if term or trunc:
                        await agent.flag_last_action([actor], reward=reward, truncated=trunc,
                                                     final_obs=obs[None].astype(np.float32) if trunc else None)
                        reward = None
                        obs, _ = env.reset()
                # The agent follows: its actor moves to the newest version.
                while (await agent.get_model_version([actor]))[actor] < 3:  # noqa: ASYNC110
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
        # Leaving the agent flushed the in-progress trajectory through the sink, acknowledged.
        with trio.fail_after(10):
            while server.statistics().steps < sent_steps:  # noqa: ASYNC110
                await trio.sleep(0.001)
        assert server.statistics().steps == sent_steps
        assert sink.statistics().steps_written == sent_steps and client.statistics().unacked == 0
    assert a.received_steps == sent_steps


async def test_explicit_checkpoint_waits_for_a_running_update(tmp_path: Path) -> None:
    t = transports.InprocTransport()
    a = algo()
    gate = trio.Event()
    token = trio.lowlevel.current_trio_token()
    original = a.train

    def gated_train() -> Any:
        trio.from_thread.run(gate.wait, trio_token=token)
        return original()

    a.train = gated_train  # type: ignore[method-assign]
    async with relayrl.open_training_server(a, transport=t, checkpoint_dir=tmp_path) as server, \
            t.open_client() as client, trio.open_nursery() as nursery:
        await client.send_trajectories([make_traj(10)])
        await client.flush()
        assert server.update_pending
        done: list[Path | None] = []

        async def take() -> None:
            done.append(await server.checkpoint())

        nursery.start_soon(take)
        await trio.sleep(0.05)
        assert done == []  # blocked behind the update
        gate.set()
        with trio.fail_after(10):
            await server.wait_for_version(1)
            while not done:  # noqa: ASYNC110
                await trio.sleep(0.001)
        path = done[0]
        assert path is not None and path.name.startswith("ckpt-00000001")


async def test_hold_and_release_deliver_in_canonical_order() -> None:
    t = transports.InprocTransport()
    a = algo(steps_per_update=1000)
    order: list[tuple[int, int]] = []
    original = a.receive_trajectory

    def record(traj: relayrl.Trajectory) -> bool:
        order.append((traj.actor_id.int, traj.episode))
        return original(traj)

    a.receive_trajectory = record  # type: ignore[method-assign]

    def traj_of(actor: int, episode: int) -> relayrl.Trajectory:
        tr = make_traj(2)
        tr.actor_id, tr.episode = uuid.UUID(int=actor), episode
        return tr

    async with relayrl.open_training_server(a, transport=t) as server, t.open_client() as client:
        server.hold()
        await client.send_trajectories([traj_of(2, 1), traj_of(1, 1)])
        await client.send_trajectories([traj_of(1, 0), traj_of(2, 0)])
        await client.flush()
        await server.wait_for_steps(8)
        assert order == [] and server.statistics().steps == 0  # held: acknowledged, not yet delivered
        server.release()
        assert order == [(1, 0), (1, 1), (2, 0), (2, 1)]
        assert server.statistics().steps == 8
        await client.send_trajectories([traj_of(3, 0)])  # not holding: straight through
        await client.flush()
        assert order[-1] == (3, 0)


async def test_a_failing_periodic_checkpoint_does_not_stop_training(tmp_path: Path) -> None:
    t = transports.InprocTransport()
    a = algo()
    calls = 0
    original = a.save_state

    def flaky_save(directory: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        original(directory)

    a.save_state = flaky_save  # type: ignore[method-assign]
    async with relayrl.open_training_server(a, transport=t, checkpoint_dir=tmp_path, checkpoint_every=1) as server, \
            t.open_client() as client:
        await feed_until(server, client, 3)
        with trio.fail_after(10):  # the checkpoint after update 3 follows its publication
            while server.statistics().checkpoints + server.statistics().checkpoint_failures < 3:  # noqa: ASYNC110
                await trio.sleep(0.001)
        st = server.statistics()
        assert st.version == 3 and st.checkpoint_failures == 1 and st.checkpoints == 2
        assert not checkpoint_names(tmp_path, ".*.tmp")  # the failed one left nothing half-written
        explicit_fail = calls + 1

        def fail_next(directory: Any) -> None:
            raise OSError(30, "Read-only file system")

        a.save_state = fail_next  # type: ignore[method-assign]
        with pytest.raises(OSError, match="Read-only"):
            await server.checkpoint()  # an explicit checkpoint reports its failure
        assert explicit_fail > 0
        a.save_state = original  # type: ignore[method-assign]
    path = latest_checkpoint(tmp_path)
    assert path is not None and path.name.startswith("ckpt-00000003")
