"""Half-cheetah goal velocity and goal direction (Finn et al. 2017, section 5.3) on MuJoCo.

* ``cheetah_vel``: task = a goal velocity ~ U[0, 2];
  reward = −|forward velocity − goal| − 0.05·‖a‖²;
* ``cheetah_dir``: task = a direction, −1 or +1 with probability ½ each;
  reward = direction · forward velocity − 0.05·‖a‖²;
* horizon 200 (the paper); the cheetah never falls, so no episode ends early (``done`` is all False);
* action: the policy's raw Gaussian sample, clipped to the actuators' box [−1, 1]⁶; the control
  cost is computed on the clipped action (as the original code; the policy gradient still uses the
  unclipped sample).

Physics, observation and forward velocity are gymnasium's **HalfCheetah-v5**: its model
(``half_cheetah.xml`` from gymnasium's installed assets, timestep 0.01) stepped ``frame_skip`` = 5
physics steps per action (dt = 0.05 s), observation = ``qpos[1:]`` and ``qvel`` (17 numbers; the
x position is left out), forward velocity = (x after − x before) / dt, reset noise: qpos + U[−0.1, 0.1],
qvel + 0.1·N(0, 1).

Where this differs from the paper's environment (rllab's ``HalfCheetahEnvRand`` /
``HalfCheetahEnvRandDirec`` in github.com/cbfinn/maml_rl, wrapped in rllab's ``normalize``):

* observation: rllab appends the torso's centre of mass (``com_subtree``, 3 numbers) to
  ``qpos[1:]`` and ``qvel``: 20 dimensions there, 17 here;
* frame skip / dt: rllab's ``half_cheetah.xml`` has the same timestep 0.01 but no ``frame_skip``
  entry, so every action lasts 1 physics step (dt = 0.01 s, a 200-step episode is 2 s of motion);
  v5 holds each action for 5 steps (dt = 0.05 s, 10 s per episode). Speeds reachable, and so the
  returns, are not comparable between the two;
* forward velocity: rllab reads the torso's centre-of-mass velocity (``body_comvels``) after the
  step; v5 (and this file) differentiates the root x position over the action's duration;
* control cost coefficient: rllab 0.1 · 0.5 = 0.05 (the paper's value, used here); v5's own
  ``HalfCheetah-v5`` reward uses ``ctrl_cost_weight`` = 0.1 and the unclipped action;
* reset noise: rllab qpos + N(0, 0.01²), qvel + N(0, 0.1²); v5 qpos + U[−0.1, 0.1] (ten times
  wider), qvel + 0.1·N(0, 1) (the same);
* action range: both models' actuators take [−1, 1] (``ctrlrange``, gears 120/90/60/120/60/30);
  rllab's ``normalize`` maps the policy's [−1, 1] onto that box and clips, i.e. the same clipping;
* goal velocity: the paper says U[0, 2] (used here); ``HalfCheetahEnvRand``'s own fallback draws
  U[0.1, 0.8]. Direction: rllab draws U[0, 2] and takes −1 below 1, i.e. ±1 with probability ½.

Speed: no gymnasium wrapper and no Python loop over episodes. One ``mujoco.MjModel`` is shared;
the ``T·N`` states live in one numpy array, and every control step advances all of them by
``frame_skip`` physics steps in a single call of MuJoCo's C ``rollout`` (a thread pool of
``torch.get_num_threads()`` threads when that is above 1). The solver's warm start is reset to
zero at each control step (``rollout`` does not return it), so trajectories agree with a
gymnasium env stepped on the same states to ~1e-6, not bit for bit.

Determinism: reset noise is drawn from the env's own numpy generator, seeded from a number drawn
from the torch generator in :meth:`sample_tasks` (the training loop's), from how many envs were
built since then, and from the task values; or from ``make_env(..., generator=g)`` when a caller
passes one. The same seed gives the same episodes; a resumed run draws the same as an
uninterrupted one.

gymnasium and mujoco are optional (``pip install 'fastmaml[rl]'``): this module imports without
them and raises :class:`ConfigError` naming the install command when a cheetah task is built.
"""

from __future__ import annotations

import importlib
import inspect
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastmaml.errors import ConfigError

INSTALL_HINT = "pip install 'fastmaml[rl]'  (or: pip install 'gymnasium[mujoco]>=1.0')"


def _require() -> tuple[Any, Any, Any]:
    """``(mujoco, mujoco.rollout, gymnasium)``, or a :class:`ConfigError` saying how to install them."""
    try:
        mujoco = importlib.import_module("mujoco")
        mj_rollout = importlib.import_module("mujoco.rollout")
        gymnasium = importlib.import_module("gymnasium")
    except ImportError as e:
        raise ConfigError(f"the half-cheetah environments need gymnasium and MuJoCo, which are not installed "
                          f"({e}); install them with: {INSTALL_HINT}") from e
    if not hasattr(mj_rollout, "Rollout"):
        raise ConfigError(f"the half-cheetah environments need mujoco >= 3.3.1 (mujoco.rollout.Rollout), found "
                          f"{getattr(mujoco, '__version__', '?')}; upgrade with: {INSTALL_HINT}")
    return mujoco, mj_rollout, gymnasium


class _Physics:
    """HalfCheetah-v5's compiled model, its frame skip, the layout of a MuJoCo state vector, a thread pool."""

    def __init__(self, threads: int | None = None) -> None:
        mujoco, mj_rollout, gymnasium = _require()
        self.mujoco = mujoco
        xml = Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / "half_cheetah.xml"
        v5 = importlib.import_module("gymnasium.envs.mujoco.half_cheetah_v5").HalfCheetahEnv
        defaults = inspect.signature(v5.__init__).parameters
        self.frame_skip = int(defaults["frame_skip"].default)
        self.reset_noise = float(defaults["reset_noise_scale"].default)
        self.model = mujoco.MjModel.from_xml_path(str(xml))
        self.dt = float(self.model.opt.timestep) * self.frame_skip
        self.nq, self.nv, self.nu = self.model.nq, self.model.nv, self.model.nu
        self.ctrl_low = self.model.actuator_ctrlrange[:, 0].copy()
        self.ctrl_high = self.model.actuator_ctrlrange[:, 1].copy()
        s = mujoco.mjtState
        self.spec = s.mjSTATE_FULLPHYSICS
        self.nstate = mujoco.mj_stateSize(self.model, self.spec)
        # mj_getState concatenates the components in the order of their bits: time, qpos, qvel, ...
        self.qpos_at = mujoco.mj_stateSize(self.model, s.mjSTATE_TIME)
        self.qvel_at = self.qpos_at + self.nq
        data = mujoco.MjData(self.model)
        self.initial_state = np.empty(self.nstate)
        mujoco.mj_getState(self.model, data, self.initial_state, self.spec)  # qpos0, zero velocity
        self.threads = max(1, torch.get_num_threads() if threads is None else int(threads))
        self.datas = [mujoco.MjData(self.model) for _ in range(self.threads)]
        self.pool = mj_rollout.Rollout(nthread=self.threads if self.threads > 1 else 0)

    def advance(self, states: np.ndarray, ctrl: np.ndarray, out: np.ndarray) -> np.ndarray:
        """States ``[B, nstate]`` after holding ``ctrl [B, nu]`` for ``frame_skip`` physics steps."""
        self.pool.rollout(self.model, self.datas, states, ctrl[:, None, :], nstep=self.frame_skip, state=out,
                          initial_warmstart=np.zeros((states.shape[0], self.nv)))
        return out[:, -1]


_PHYSICS: dict[int, _Physics] = {}


def physics(threads: int | None = None) -> _Physics:
    """One :class:`_Physics` per thread count, built on first use (model compiled once per process)."""
    n = max(1, torch.get_num_threads() if threads is None else int(threads))
    if n not in _PHYSICS:
        _PHYSICS[n] = _Physics(n)
    return _PHYSICS[n]


class HalfCheetahTasks:
    """Common part of the two cheetah task families; subclasses define the tasks and the forward reward."""

    obs_dim = 17
    act_dim = 6
    task_dim = 1

    def __init__(self, horizon: int = 200, ctrl_cost: float = 0.05, threads: int | None = None) -> None:
        self.horizon = horizon
        self.ctrl_cost = ctrl_cost
        self.threads = threads
        physics(threads)  # fails here, with the install command, when mujoco is missing
        self._seed = 0  # drawn from the training generator by sample_tasks
        self._built = 0  # envs built since then

    @property
    def physics(self) -> _Physics:
        """The shared simulator, with a pool of ``threads`` (default: torch's thread count now) threads."""
        return physics(self.threads)

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def forward_reward(self, velocity: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Reward for ``velocity [T, N]`` given ``tasks [T, 1]`` (before the control cost)."""
        raise NotImplementedError

    def sample_tasks(self, n: int, generator: torch.Generator) -> torch.Tensor:
        tasks = self._draw(n, generator)
        self._seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self._built = 0
        return tasks

    def make_env(self, tasks: torch.Tensor, trajectories: int,
                 generator: torch.Generator | None = None) -> "HalfCheetahEnv":
        if generator is not None:
            entropy = [int(torch.randint(0, 2**62, (1,), generator=generator))]
        else:
            digest = zlib.crc32(np.ascontiguousarray(tasks.detach().cpu().double().numpy()).tobytes())
            entropy = [self._seed, self._built, digest]
            self._built += 1
        return HalfCheetahEnv(self, tasks, trajectories, np.random.default_rng(np.random.SeedSequence(entropy)))


class CheetahVel(HalfCheetahTasks):
    """Goal velocity: run at a speed drawn from U[``goal_low``, ``goal_high``] (paper: U[0, 2])."""

    def __init__(self, horizon: int = 200, goal_low: float = 0.0, goal_high: float = 2.0, ctrl_cost: float = 0.05,
                 threads: int | None = None) -> None:
        super().__init__(horizon, ctrl_cost, threads)
        self.goal_low, self.goal_high = goal_low, goal_high

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.goal_low + (self.goal_high - self.goal_low) * torch.rand(n, 1, generator=generator)

    def forward_reward(self, velocity: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        return -(velocity - tasks).abs()


class CheetahDir(HalfCheetahTasks):
    """Goal direction: run forward (+1) or backward (−1), each with probability ½."""

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2, (n, 1), generator=generator).float() * 2 - 1

    def forward_reward(self, velocity: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        return tasks * velocity


class HalfCheetahEnv:
    """``[T, N]`` half-cheetahs, all advanced together by one MuJoCo ``rollout`` call per step."""

    def __init__(self, spec: HalfCheetahTasks, tasks: torch.Tensor, trajectories: int, rng: np.random.Generator) -> None:
        self.spec = spec
        self.sim = spec.physics
        self.tasks = tasks[:, None, 0].to(torch.float64)  # [T, 1]
        self.shape = (tasks.shape[0], trajectories)
        self.rng = rng
        self.batch = self.shape[0] * self.shape[1]
        self.states = np.tile(self.sim.initial_state, (self.batch, 1))
        self._out = np.empty((self.batch, self.sim.frame_skip, self.sim.nstate))
        self.dtype = tasks.dtype if tasks.is_floating_point() else torch.get_default_dtype()

    @property
    def qpos(self) -> np.ndarray:
        return self.states[:, self.sim.qpos_at: self.sim.qpos_at + self.sim.nq]

    @property
    def qvel(self) -> np.ndarray:
        return self.states[:, self.sim.qvel_at: self.sim.qvel_at + self.sim.nv]

    def observation(self) -> torch.Tensor:
        obs = np.concatenate([self.qpos[:, 1:], self.qvel], axis=1)
        return torch.from_numpy(obs).reshape(*self.shape, -1).to(self.dtype)

    def reset(self) -> torch.Tensor:
        sim, noise = self.sim, self.sim.reset_noise
        self.states = np.tile(sim.initial_state, (self.batch, 1))
        self.qpos[:] += self.rng.uniform(-noise, noise, size=(self.batch, sim.nq))
        self.qvel[:] += noise * self.rng.standard_normal((self.batch, sim.nv))
        return self.observation()

    def clip(self, action: torch.Tensor) -> torch.Tensor:
        """The action the actuators receive: clipped to their box (here [-1, 1])."""
        low = torch.as_tensor(self.sim.ctrl_low, dtype=torch.float64)
        high = torch.as_tensor(self.sim.ctrl_high, dtype=torch.float64)
        return torch.maximum(torch.minimum(action.to(torch.float64), high), low)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctrl = self.clip(action)
        x_before = self.qpos[:, 0].copy()
        self.states = self.sim.advance(self.states, ctrl.reshape(self.batch, -1).numpy(), self._out).copy()
        velocity = torch.from_numpy((self.qpos[:, 0] - x_before) / self.sim.dt).reshape(self.shape)
        reward = self.spec.forward_reward(velocity, self.tasks) - self.spec.ctrl_cost * ctrl.square().sum(-1)
        return self.observation(), reward.to(self.dtype), torch.zeros(self.shape, dtype=torch.bool)
