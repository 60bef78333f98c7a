"""Configs of the meta-RL application (dataclasses; YAML presets in ``presets/``).

Defaults are Finn et al. 2017 section 5.3 for 2D navigation. Where the paper and its code
(github.com/cbfinn/maml_rl) differ, the paper's value is the default and the code's is named:

* inner step size α = 0.1 (paper, appendix A.2). ``maml_examples/maml_trpo_point.py`` uses
  ``fast_learning_rates = [0.5]`` and the ICML run's files are named ``..._mbs20_flr_0.5``;
  its test script adapts with 0.5, then 0.25. Try ``maml.inner_lr=0.5`` to follow the code.
* meta-batch 20 tasks (paper; the script's default is 40), 20 trajectories per task per step.
* TRPO as rllab's ``ConjugateGradientOptimizer`` defaults, which the code uses: KL limit 0.01,
  10 CG iterations, damping (``reg_coeff``) 1e-5, backtracking ×0.8 up to 15 times, a step is
  accepted only if the surrogate improves and the mean KL is within the limit. The code
  computes Hessian-vector products exactly (Pearlmutter), as here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastmaml.core.maml import MAMLConfig
from fastmaml.core.step_size import Fixed
from fastmaml.errors import ConfigError
from fastmaml.train.loop import TrainConfig


@dataclass
class EnvConfig:
    name: str = "nav2d"  # a key of fastmaml.apps.rl.envs.ENVIRONMENTS
    horizon: int = 100


@dataclass
class PolicyConfig:
    hidden: list[int] = field(default_factory=lambda: [100, 100])
    activation: str = "relu"  # relu (paper) or tanh
    init_std: float = 1.0


@dataclass
class PGConfig:
    """The policy-gradient inner step and how advantages are estimated."""

    trajectories: int = 20  # per task per inner step (the paper's K)
    discount: float = 0.99
    gae_lambda: float = 1.0
    center_advantages: bool = True  # rllab's center_adv (per task: mean 0, std 1)
    baseline_reg: float = 1e-5  # ridge of the linear feature baseline
    # The inner step's loss (same step, different meta-gradient): "reinforce" −mean log π·A (the paper and
    # its code; the meta-gradient ignores how θ's sampling distribution shapes the inner gradient), or
    # "lvc" −mean π/π_old·A (ProMP's low-variance curvature estimator, which keeps that term and so
    # credits the pre-update policy for exploring). See apps/rl/losses.py.
    inner_loss: str = "reinforce"


@dataclass
class TRPOConfig:
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    # Hessian-vector products from the first `hvp_tasks` tasks only (None, or more than the meta-batch: all,
    # so a preset's 5 of 20 stays valid when train.meta_batch_size is cut for a smoke run). Each CG iteration
    # then costs hvp_tasks/meta_batch_size as much; the curvature estimate is noisier and misses the
    # directions only the other tasks' KL bends, so steps can overshoot: the line search (which checks
    # the KL on all tasks) then backtracks further or rejects the step (seen with 1 of 4 tasks in tests).
    hvp_tasks: int | None = None
    # With inner_steps ≥ 2: maximise the mean surrogate of the policies after *every* inner step (step s
    # on the rollouts it sampled, which are step s+1's support), not only the last, and hold their mean KL
    # to max_kl: MAML++'s multi-step loss for TRPO. False: the last step only (the paper, the original code).
    all_steps: bool = False


@dataclass
class RLEvalConfig:
    num_tasks: int = 40  # test goals (the original test script uses 40)
    seed: int = 2017  # the test tasks' own seed, never used in training
    steps: int = 3  # policy-gradient steps evaluated: returns after 0..steps
    trajectories: int = 40  # per task per step (the original test script: batch 4000 = 40 × 100)
    # Step size of the 2nd and later test-time steps as a fraction of α. 1.0: α throughout. The original
    # test script (maml_examples/test_maml_point.py) takes its first step with α and the later ones with α/2
    # (rllab VPG: init_learning_rate, then the optimizer's 0.5 × α): 0.5 reproduces that protocol.
    # null: as meta-trained (maml.step_size fixed(later=...), 1.0 unless set). A MAML policy with learned step
    # sizes (maml.step_size per_layer_step or per_element) adapts with them instead (beyond the trained steps, the last step's); the
    # baselines, which learned none, keep this protocol.
    later_step_scale: float | None = None
    # With train.validate_every = k > 0, every k meta-iterations each policy is scored on its own validation
    # goals (this seed; never the test goals) by the test protocol above, and the best checkpoint — the
    # highest mean return over steps 1..steps (step 0 for the oracle) — is the one evaluated. 0: the last one.
    validation_tasks: int = 40
    validation_seed: int = 99


def test_later_step_scale(cfg: "RLConfig") -> float:
    """The test-time fraction of α for steps after the first: eval's, else the one MAML was trained with."""
    if cfg.eval.later_step_scale is not None:
        return cfg.eval.later_step_scale
    rule = cfg.maml.step_size_rule()
    return rule.later if isinstance(rule, Fixed) else 1.0


@dataclass
class BaselineTrainConfig:
    """Budget of the pretrained and oracle policies (trained by TRPO without an inner step)."""

    iterations: int = 200
    max_minutes: float | None = 4.0


@dataclass
class RLConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    maml: MAMLConfig = field(default_factory=lambda: MAMLConfig(inner_lr=0.1, inner_steps=1, eval_inner_steps=3))
    pg: PGConfig = field(default_factory=PGConfig)
    trpo: TRPOConfig = field(default_factory=TRPOConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        iterations=500, meta_batch_size=20, checkpoint_every=10, log_every=1, threads=None))
    baseline_train: BaselineTrainConfig = field(default_factory=BaselineTrainConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)
    baselines: list[str] = field(default_factory=lambda: ["pretrained", "random", "oracle"])


BASELINES = ("pretrained", "random", "oracle")


def validate(cfg: RLConfig) -> RLConfig:
    """Raise :class:`ConfigError` naming the key for values the algorithm cannot run with."""
    checks = [
        (cfg.env.horizon >= 1, "env.horizon must be >= 1"),
        (len(cfg.policy.hidden) >= 1 and all(h >= 1 for h in cfg.policy.hidden), "policy.hidden must be positive layer widths"),
        (cfg.policy.activation in ("relu", "tanh"), f"policy.activation must be relu or tanh, got {cfg.policy.activation!r}"),
        (cfg.policy.init_std > 0, "policy.init_std must be > 0"),
        (cfg.pg.trajectories >= 1, f"pg.trajectories must be >= 1, got {cfg.pg.trajectories}"),
        (0 < cfg.pg.discount <= 1, f"pg.discount must be in (0, 1], got {cfg.pg.discount}"),
        (0 <= cfg.pg.gae_lambda <= 1, f"pg.gae_lambda must be in [0, 1], got {cfg.pg.gae_lambda}"),
        (cfg.pg.baseline_reg > 0, "pg.baseline_reg must be > 0"),
        (cfg.pg.inner_loss in ("reinforce", "lvc"),
         f"pg.inner_loss must be reinforce (the paper) or lvc (ProMP's estimator), got {cfg.pg.inner_loss!r}"),
        (cfg.trpo.max_kl > 0, f"trpo.max_kl must be > 0, got {cfg.trpo.max_kl}"),
        (cfg.trpo.cg_iters >= 1, f"trpo.cg_iters must be >= 1, got {cfg.trpo.cg_iters}"),
        (cfg.trpo.cg_damping >= 0, "trpo.cg_damping must be >= 0"),
        (0 < cfg.trpo.backtrack_ratio < 1, f"trpo.backtrack_ratio must be in (0, 1), got {cfg.trpo.backtrack_ratio}"),
        (cfg.trpo.max_backtracks >= 1, "trpo.max_backtracks must be >= 1"),
        (cfg.trpo.hvp_tasks is None or cfg.trpo.hvp_tasks >= 1,
         f"trpo.hvp_tasks must be >= 1 (at most that many tasks' curvature) or null (all), got {cfg.trpo.hvp_tasks}"),
        (cfg.train.meta_batch_size >= 1, "train.meta_batch_size must be >= 1"),
        (cfg.maml.inner_steps >= 0, f"maml.inner_steps must be >= 0, got {cfg.maml.inner_steps}"),
        (cfg.maml.step_size_rule() is not None, "maml.step_size"),  # an unknown or malformed rule raises, naming the key
        (cfg.maml.inner_lr > 0, f"maml.inner_lr must be > 0, got {cfg.maml.inner_lr}"),
        (cfg.eval.num_tasks >= 2, "eval.num_tasks must be >= 2 (a confidence interval needs two tasks)"),
        (cfg.eval.steps >= 0, "eval.steps must be >= 0"),
        (cfg.eval.trajectories >= 1, "eval.trajectories must be >= 1"),
        (cfg.eval.validation_tasks >= 1, "eval.validation_tasks must be >= 1"),
        (cfg.eval.validation_seed != cfg.eval.seed,
         f"eval.validation_seed must differ from eval.seed ({cfg.eval.seed}): validation must not see the test goals"),
        (cfg.eval.later_step_scale is None or cfg.eval.later_step_scale > 0,
         "eval.later_step_scale must be > 0 (1.0: α at every test step; 0.5: the original code's α/2 after the first) "
         "or null (as maml.step_size's later)"),
        (cfg.baseline_train.iterations >= 0, "baseline_train.iterations must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    unknown = sorted(set(cfg.baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
    return cfg
