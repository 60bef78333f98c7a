"""Half-cheetah goal velocity / goal direction: rewards, determinism, shapes, clipping, oracle, HalfCheetah-v5 physics."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
import torch

from fastmaml.apps.rl.envs import ENVIRONMENTS, make_tasks
from fastmaml.apps.rl.envs import halfcheetah as hc
from fastmaml.errors import ConfigError



def _have_mujoco() -> bool:
    try:
        hc._require()
    except ConfigError:
        return False
    return True


HAVE_MUJOCO = _have_mujoco()
needs_mujoco = pytest.mark.skipif(not HAVE_MUJOCO, reason="gymnasium/mujoco not installed: pip install 'fastmaml[rl]'")
ENVS = ["cheetah_vel", "cheetah_dir"]


def env_of(name: str, tasks: int = 3, trajectories: int = 2, seed: int = 0, horizon: int = 200, **kw):
    dist = make_tasks(name, horizon=horizon, **kw)
    t = dist.sample_tasks(tasks, torch.Generator().manual_seed(seed))
    return dist, t, dist.make_env(t, trajectories)


def test_registered_and_module_imports_without_mujoco():
    assert ENVIRONMENTS["cheetah_vel"] is hc.CheetahVel and ENVIRONMENTS["cheetah_dir"] is hc.CheetahDir
    # No module-level import of the optional packages: importing the envs never needs them.
    top = ast.parse(inspect.getsource(hc)).body
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    assert not names & {"mujoco", "gymnasium"}


@pytest.mark.parametrize("name", ENVS)
def test_missing_package_gives_the_install_command(monkeypatch, name):
    monkeypatch.setattr(hc, "_PHYSICS", {})  # forget a simulator built by other tests
    monkeypatch.setitem(__import__("sys").modules, "mujoco", None)  # import mujoco -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'fastmaml\[rl\]'.*gymnasium\[mujoco\]"):
        make_tasks(name, horizon=200)


@needs_mujoco
@pytest.mark.parametrize("name", ENVS)
def test_shapes_dtypes_and_never_done(name):
    dist, tasks, env = env_of(name, tasks=3, trajectories=2)
    assert (dist.obs_dim, dist.act_dim, dist.task_dim, dist.horizon) == (17, 6, 1, 200)
    assert tasks.shape == (3, 1)
    obs = env.reset()
    assert obs.shape == (3, 2, 17) and obs.dtype == torch.float32
    nxt, reward, done = env.step(torch.randn(3, 2, 6))
    assert nxt.shape == (3, 2, 17) and reward.shape == (3, 2) and reward.dtype == torch.float32
    assert done.dtype == torch.bool and not done.any()


@needs_mujoco
def test_task_distributions():
    g = torch.Generator().manual_seed(1)
    vel = make_tasks("cheetah_vel").sample_tasks(2000, g)
    assert 0 <= vel.min() and vel.max() <= 2 and abs(float(vel.mean()) - 1) < 0.05
    direc = make_tasks("cheetah_dir").sample_tasks(2000, g)
    assert set(direc.unique().tolist()) == {-1.0, 1.0} and abs(float(direc.mean())) < 0.1


@needs_mujoco
@pytest.mark.parametrize("name", ENVS)
def test_reward_is_the_formula_from_positions_and_action(name):
    dist, tasks, env = env_of(name, tasks=4, trajectories=3, seed=3)
    env.reset()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        action = 1.5 * torch.randn(4, 3, 6, generator=g, dtype=torch.float64)  # many outside [-1, 1]
        x_before = env.qpos[:, 0].copy()
        _, reward, _ = env.step(action)
        velocity = torch.from_numpy((env.qpos[:, 0] - x_before) / 0.05).reshape(4, 3)
        ctrl = 0.05 * action.clamp(-1, 1).square().sum(-1)
        goal = tasks.double()  # [T, 1], broadcast over trajectories
        expected = (-(velocity - goal).abs() if name == "cheetah_vel" else goal * velocity) - ctrl
        torch.testing.assert_close(reward.double(), expected, rtol=1e-6, atol=1e-6)
    assert dist.physics.dt == pytest.approx(0.05) and dist.physics.frame_skip == 5


@needs_mujoco
@pytest.mark.parametrize("name", ENVS)
def test_same_seed_same_episodes(name):
    def run(seed):
        dist, tasks, env = env_of(name, tasks=2, trajectories=3, seed=seed)
        g = torch.Generator().manual_seed(7)
        obs, rewards = [env.reset()], []
        for _ in range(10):
            o, r, _ = env.step(torch.randn(2, 3, 6, generator=g))
            obs.append(o)
            rewards.append(r)
        return torch.stack(obs), torch.stack(rewards)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0][0], c[0][0])  # another seed: other reset noise


@needs_mujoco
def test_every_env_since_sample_tasks_gets_its_own_noise_and_the_sequence_repeats():
    def starts(seed):
        dist = make_tasks("cheetah_vel")
        tasks = dist.sample_tasks(2, torch.Generator().manual_seed(seed))
        return [dist.make_env(tasks, 2).reset() for _ in range(2)]  # e.g. pre- and post-update rollouts

    first, second = starts(0)
    assert not torch.equal(first, second)
    again = starts(0)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])


@needs_mujoco
def test_reset_noise_is_v5s():
    dist, _, env = env_of("cheetah_vel", tasks=50, trajectories=40)
    env.reset()
    qpos, qvel = env.qpos - dist.physics.initial_state[1:10], env.qvel
    assert np.abs(qpos).max() <= 0.1 and np.abs(qpos).max() > 0.099  # U[-0.1, 0.1]
    assert qvel.std() == pytest.approx(0.1, rel=0.05)  # 0.1·N(0, 1)


@needs_mujoco
@pytest.mark.parametrize("name", ENVS)
def test_different_tasks_different_rewards_for_the_same_actions(name):
    dist = make_tasks(name)
    tasks = torch.tensor([[0.5], [1.5]]) if name == "cheetah_vel" else torch.tensor([[-1.0], [1.0]])
    # The same generator for both envs: the same reset noise, so the same motion.
    envs = [dist.make_env(t[None].expand(2, 1), 1, generator=torch.Generator().manual_seed(0)) for t in tasks]
    obs = [e.reset() for e in envs]
    assert torch.equal(obs[0], obs[1])
    action = torch.randn(2, 1, 6, generator=torch.Generator().manual_seed(1))
    (o0, r0, _), (o1, r1, _) = envs[0].step(action), envs[1].step(action)
    assert torch.equal(o0, o1) and not torch.allclose(r0, r1)


@needs_mujoco
def test_actions_are_clipped_to_the_box():
    def step(scale):
        dist = make_tasks("cheetah_vel")
        env = dist.make_env(torch.tensor([[1.0]]), 2, generator=torch.Generator().manual_seed(0))
        env.reset()
        sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0]).expand(1, 2, 6)
        return env.step(scale * sign), env

    (o1, r1, _), env = step(1.0)
    (o5, r5, _), _ = step(5.0)
    assert torch.equal(o1, o5) and torch.equal(r1, r5)  # same torques, same control cost 0.05 · 6
    torch.testing.assert_close(env.clip(torch.tensor([[[3.0, -3.0, 0.5, -0.5, 1.0, -1.0]]])).float(),
                               torch.tensor([[[1.0, -1.0, 0.5, -0.5, 1.0, -1.0]]]))


@needs_mujoco
@pytest.mark.parametrize("name", ENVS)
def test_oracle_appends_the_task(name):
    dist = make_tasks(name, oracle=True, horizon=200)
    assert dist.obs_dim == 18
    tasks = dist.sample_tasks(3, torch.Generator().manual_seed(0))
    env = dist.make_env(tasks, 2)
    obs = env.reset()
    nxt, _, _ = env.step(torch.zeros(3, 2, 6))
    for o in (obs, nxt):
        assert o.shape == (3, 2, 18)
        assert torch.equal(o[..., 17], tasks[:, 0, None].expand(3, 2))


@needs_mujoco
def test_physics_and_observation_are_halfcheetah_v5s():
    import gymnasium

    dist, tasks, env = env_of("cheetah_vel", tasks=1, trajectories=1, seed=2)
    obs = env.reset()
    ref = gymnasium.make("HalfCheetah-v5").unwrapped
    ref.reset(seed=0)
    ref.set_state(env.qpos[0].copy(), env.qvel[0].copy())
    np.testing.assert_allclose(obs[0, 0].double().numpy(), ref._get_obs(), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    # Chaotic dynamics: the two agree to rounding for tens of steps (MuJoCo's solver warm start differs).
    for _ in range(15):
        action = torch.randn(1, 1, 6, generator=g, dtype=torch.float64)
        o, r, _ = env.step(action)
        clipped = action.clamp(-1, 1)[0, 0].numpy()
        ro, _, _, _, info = ref.step(clipped)
        np.testing.assert_allclose(o[0, 0].double().numpy(), ro, atol=1e-5, rtol=1e-5)
        expected = -abs(info["x_velocity"] - float(tasks[0, 0])) - 0.05 * np.square(clipped).sum()
        assert float(r[0, 0]) == pytest.approx(expected, abs=1e-5)
    assert ref.dt == pytest.approx(dist.physics.dt)
    ref.close()


@needs_mujoco
def test_meta_batch_samples_on_the_cheetah():
    from fastmaml.apps.rl.config import PGConfig
    from fastmaml.apps.rl.losses import reinforce_loss
    from fastmaml.apps.rl.policy import GaussianMLPPolicy
    from fastmaml.apps.rl.sampler import sample_meta_batch
    from fastmaml.core.maml import MAML

    torch.manual_seed(0)
    learner = MAML(GaussianMLPPolicy(17, 6, [8], "relu"), reinforce_loss, inner_lr=0.1, inner_steps=1)
    dist = make_tasks("cheetah_dir", horizon=6)
    batch = sample_meta_batch(learner, dist, 2, PGConfig(trajectories=2), torch.Generator().manual_seed(0))
    assert batch.query_x.shape[:2] == (2, 12) and torch.isfinite(batch.post_return).all()
