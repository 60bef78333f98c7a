"""MAML for reinforcement learning (Finn et al. 2017, section 5.3) on the project's one engine.

Environments are task distributions (``envs/``); a Gaussian MLP policy (``policy``) is the
model handed to :class:`fastmaml.core.maml.MAML`, whose inner step — a REINFORCE gradient step
with a per-task linear baseline (``losses``, ``advantages``) — adapts it to each task from
vectorized rollouts (``rollout``, ``sampler``). The outer step is TRPO through that inner step
(``trpo``), run by the project's training loop (``experiment``).
"""
