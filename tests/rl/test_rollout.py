"""Vectorized sampling: deterministic for a seed, the 2D navigation dynamics, the oracle's observations."""

import torch

from fastmaml.apps.rl.envs import make_tasks
from fastmaml.apps.rl.envs.nav2d import Nav2D
from fastmaml.apps.rl.rollout import per_task_actor, rollout, shared_actor
from fastmaml.apps.rl.sampler import detached

from .helpers import Nav2D64, tiny_batch, tiny_learner


def test_rollouts_are_deterministic_for_a_seed():
    learner = tiny_learner()
    dist, tasks = Nav2D64(horizon=20), torch.tensor([[0.3, -0.2], [-0.4, 0.1]], dtype=torch.float64)
    actor = shared_actor(learner.model, detached(learner))
    a = rollout(dist, tasks, 5, actor, torch.Generator().manual_seed(7))
    b = rollout(dist, tasks, 5, actor, torch.Generator().manual_seed(7))
    c = rollout(dist, tasks, 5, actor, torch.Generator().manual_seed(8))
    for k in ("obs", "actions", "rewards", "mask", "dists"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert not torch.equal(a.actions, c.actions)
    # whole meta-batches too (tasks, both rollouts, the inner step in between)
    x, y = tiny_batch(learner, seed=3), tiny_batch(learner, seed=3)
    assert torch.equal(x.query_y, y.query_y) and torch.equal(x.support_x, y.support_x)


def test_nav2d_dynamics_rewards_clipping_and_done():
    dist = Nav2D(horizon=100)
    goals = torch.tensor([[0.05, 0.0], [0.5, 0.5]])
    env = dist.make_env(goals, trajectories=2)
    assert torch.equal(env.reset(), torch.zeros(2, 2, 2))
    action = torch.tensor([[[0.5, 0.0], [5.0, -5.0]], [[1.0, 1.0], [1.0, 1.0]]])
    obs, reward, done = env.step(action)
    torch.testing.assert_close(obs[0, 0], torch.tensor([0.05, 0.0]))  # 0.5 * 0.1
    torch.testing.assert_close(obs[0, 1], torch.tensor([0.1, -0.1]))  # clipped to ±0.1
    torch.testing.assert_close(reward[1], -torch.full((2,), (2 * 0.4 ** 2) ** 0.5))
    assert done.tolist() == [[True, False], [False, False]]


def test_steps_after_done_are_masked_out():
    learner = tiny_learner()
    dist = Nav2D64(horizon=30, done_radius=10.0)  # everything is "done" after the first step
    traj = rollout(dist, torch.zeros(2, 2, dtype=torch.float64), 3, shared_actor(learner.model, detached(learner)),
                   torch.Generator().manual_seed(0))
    assert traj.mask[..., 0].eq(1).all() and traj.mask[..., 1:].eq(0).all()
    assert traj.rewards[..., 1:].eq(0).all() and torch.equal(traj.returns(), traj.rewards[..., 0])


def test_oracle_sees_its_goal_and_per_task_actors_use_their_own_parameters():
    oracle = make_tasks("nav2d", oracle=True, horizon=5)
    assert oracle.obs_dim == 4
    goals = torch.tensor([[0.1, 0.2], [-0.3, 0.4]])
    obs = oracle.make_env(goals, 3).reset()
    assert torch.equal(obs[..., 2:], goals[:, None, :].expand(-1, 3, -1))
    learner = tiny_learner()
    params = {k: torch.stack([v, v + 1.0]) for k, v in detached(learner).items()}  # task 1 differs
    out = per_task_actor(learner.model, params)(params, torch.zeros(2, 3, 2, dtype=torch.float64))
    assert torch.equal(out[0], learner.model(torch.zeros(3, 2, dtype=torch.float64)).detach())
    assert not torch.equal(out[0], out[1])
