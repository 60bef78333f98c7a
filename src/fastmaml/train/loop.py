"""The one meta-training loop every experiment and application uses.

Run folder layout::

    run_dir/config.json        the full config of the run
    run_dir/metrics.jsonl      one JSON line per logged iteration (and per validation)
    run_dir/checkpoints/last.safetensors   latest state (resume point)
    run_dir/checkpoints/best.safetensors   best validation score so far (if validating)

Determinism: the meta-batch of iteration ``i`` is drawn from a generator seeded by
``(seed, i)``, and the optimizer state is checkpointed, so a run killed at any point
and resumed from its last checkpoint ends with the same parameters as an
uninterrupted run.

Every outer update is a :class:`MetaStep` (``step(batch, iteration) -> {"loss": ..., ...}``):
eager Adam on the meta-gradient (:class:`GradientStep`, the default), the compiled meta-iteration
(:class:`FusedCompiledStep`, ``train.compile``), or one passed as ``meta_step`` (TRPO for meta-RL,
``fastmaml.apps.rl``); everything else — determinism, checkpoints, resume, NaN handling, logging,
time limit — stays this loop's.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol

import torch
from tqdm import tqdm

from fastmaml.core import precision as P
from fastmaml.core.maml import MAML, MetaOutput
from fastmaml.errors import CheckpointError, ConfigError, NonFiniteLossError
from fastmaml.tasks.batch import TaskBatch
from fastmaml.train import batching as B
from fastmaml.train import distributed as D
from fastmaml.fileio import atomic_write_text
from fastmaml.train.checkpoint import (RunDir, checkpoint_meta, load_checkpoint, load_state_into,
                                       save_checkpoint)
from fastmaml.train.memory import keep_freed_memory

BatchSampler = Callable[[torch.Generator], TaskBatch]
Validator = Callable[[MAML], dict[str, float]]


class MetaStep(Protocol):
    """One meta-iteration's update of the learner, whatever the algorithm: eager Adam on the
    meta-gradient (:class:`GradientStep`), the compiled meta-iteration (:class:`FusedCompiledStep`),
    TRPO for meta-RL (:class:`fastmaml.apps.rl.trpo.TRPOStep`).

    ``step(batch, iteration)`` updates the learner's parameters (deterministically) and returns
    ``{"loss": value, ...}``; the other entries are averaged over each logging window and logged beside
    the loss. It must apply nothing when the loss is not finite: the loop then stops with
    :class:`NonFiniteLossError`, keeping the last good checkpoint.
    """

    def __call__(self, batch: TaskBatch, iteration: int) -> Mapping[str, float]: ...


@dataclass
class GradientStep:
    """The meta-gradient (``backward``: ``MAML.meta_backward``, or the compiled gradient), then, if the loss
    is finite, all-reduce over processes, clipping and the optimizer's step."""

    learner: MAML
    optimizer: torch.optim.Optimizer
    backward: Callable[[TaskBatch], MetaOutput]
    grad_clip: float | None
    ctx: D.DistContext
    device: torch.device

    def __call__(self, batch: TaskBatch, iteration: int) -> Mapping[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        # Chunk by chunk (learner.batching.chunk_size); nothing is applied before the NaN check below.
        loss = D.all_reduce_scalar(float(self.backward(batch).loss), self.ctx, self.device)
        if math.isfinite(loss):
            D.average_gradients(self.learner.parameters(), self.ctx)
            if self.grad_clip:
                torch.nn.utils.clip_grad_value_(self.learner.parameters(), self.grad_clip)
            self.optimizer.step()
        return {"loss": loss}


@dataclass
class FusedCompiledStep:
    """Gradient, clipping and Adam in one compiled call (core/compiled.py); it applies nothing if the loss is not finite."""

    compiled: Any  # a fastmaml.core.compiled.CompiledMetaStep
    cfg: TrainConfig

    def __call__(self, batch: TaskBatch, iteration: int) -> Mapping[str, float]:
        return {"loss": float(self.compiled.step(batch, lr=meta_lr_at(self.cfg, iteration)).loss)}

    @property
    def compile_seconds(self) -> float | None:
        """The compiled step's first calls (compilation included); None once it has fallen back to eager."""
        return self.compiled.compile_seconds if self.compiled.compiled else None


def default_meta_step(learner: MAML, optimizer: torch.optim.Optimizer, cfg: TrainConfig, ctx: D.DistContext,
                      device: torch.device) -> MetaStep:
    """Adam on the meta-gradient: eager, or with ``train.compile`` the compiled meta-iteration (which falls
    back to eager where it cannot run: ``true`` with a warning, ``auto`` with one log line)."""
    compiled = compiled_meta_step(learner, optimizer, cfg, ctx)
    if compiled is not None and compiled.fused:
        return FusedCompiledStep(compiled, cfg)
    backward = compiled.backward if compiled is not None else learner.meta_backward
    return GradientStep(learner, optimizer, backward, cfg.grad_clip, ctx, device)


def compiled_meta_step(learner: MAML, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                       ctx: D.DistContext) -> Any:
    """The :class:`~fastmaml.core.compiled.CompiledMetaStep` ``train.compile`` asks for, or None (eager).

    ``auto`` checks up front that torch.compile can run here (torch version, a C++ compiler on a CPU), and
    reports a fallback — then or at the first call, e.g. a torch.compile error — as one log line, not a warning."""
    if cfg.compile not in (True, "auto"):
        if cfg.compile is not False:
            raise ConfigError(f"train.compile must be true, false or auto, got {cfg.compile!r}")
        return None

    def log(msg: str) -> None:
        if ctx.is_main:
            print(f"[fastmaml] {msg}", file=sys.stderr)

    def fallback(reason: str) -> None:
        log(f"train.compile=auto: compiled meta-iteration not used ({reason}); training eager")

    try:
        from fastmaml.core import compiled as C
    except ImportError as e:  # a torch without torch.func
        if cfg.compile is True:
            raise
        fallback(f"{type(e).__name__}: {e}")
        return None
    if cfg.compile == "auto" and (reason := C.compiler_unavailable(cfg.device)):
        fallback(reason)
        return None
    # Under torchrun the gradient is all-reduced before the update: the compiled gradient, eager Adam.
    return C.CompiledMetaStep(learner, optimizer, fuse_optimizer=not ctx.enabled, mode=cfg.compile_mode,
                              grad_clip=cfg.grad_clip, dynamic_shots=cfg.compile_dynamic_shots, log=log,
                              on_fallback=fallback if cfg.compile == "auto" else None)


@dataclass
class TrainConfig:
    iterations: int = 70_000
    meta_batch_size: int = 25
    meta_lr: float = 1e-3
    seed: int = 0
    grad_clip: float | None = None  # clamp each meta-gradient element to [-c, c] (the paper's MiniImagenet setting)
    checkpoint_every: int = 1000
    log_every: int = 100
    validate_every: int = 0  # 0: no validation
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    max_minutes: float | None = None  # stop (with a checkpoint) once training has taken this long
    patience: int = 0  # stop once validation has not improved for this many iterations (0: never; needs validate_every)
    progress: bool = True
    keep_freed_memory: bool = True  # glibc: keep big tensors' memory in the heap (faster; see train/memory.py)
    lr_schedule: str = "constant"  # constant, or cosine (MAML++: meta_lr annealed to min_meta_lr over the iterations)
    min_meta_lr: float = 0.0
    # torch.compile the whole meta-iteration (gradient + Adam: core/compiled.py); falls back to eager where it
    # cannot: true with a warning, auto with one log line (auto also checks for a C++ compiler first). Pays on
    # small models (sinusoid MLP ~5x), not on conv nets (see core/compiled.py): the sinusoid experiment uses auto.
    # compile_mode: None, "max-autotune-no-cudagraphs", "reduce-overhead" (CUDA graphs).
    # compile_dynamic_shots: one compiled graph for every number of points per task (K), so networks that differ
    # only in K share one compilation (the sinusoid experiment's 3 MAML networks: one compile instead of three).
    compile: bool | Literal["auto"] = False
    compile_mode: str | None = None
    compile_dynamic_shots: bool = False
    # Where matmuls and convolutions run (core/precision.py): fp32, bf16 (autocast; master weights, Adam, losses,
    # inner steps and BatchNorm stay float32), or auto: bf16 where it is measured to pay (a CPU with AMX, a CUDA GPU
    # with bf16), fp32 elsewhere. config.json records what it resolved to as precision_resolved.
    precision: str = "fp32"
    # Time the task batchings (vmap over all tasks, in chunks, a loop: train/batching.py) on the first meta-batch,
    # with this precision on this hardware, and train with the fastest; config.json records the choice as
    # batching_resolved, and a resumed run reuses it. Off: maml.vectorize / maml.chunk_size as configured. Only
    # for the default eager Adam step in one process (the compiled step vectorizes; TRPO and torchrun keep theirs).
    tune_batching: bool = False

    # Keys the training loop writes into config.json as a record, not settings (dropped when a config is read back).
    RECORD_KEYS = ("precision_resolved", "batching_resolved")

    @classmethod
    def upgrade_config(cls, data: dict) -> dict:
        """``data`` without the keys the loop recorded (``precision_resolved``, ``batching_resolved``), so a run's
        config.json reads back."""
        return {k: v for k, v in data.items() if k not in cls.RECORD_KEYS}


def meta_lr_at(cfg: TrainConfig, iteration: int) -> float:
    """The outer learning rate of iteration ``iteration`` (a pure function of it, so resuming needs no state)."""
    if cfg.lr_schedule == "constant":
        return cfg.meta_lr
    if cfg.lr_schedule == "cosine":
        frac = min(iteration / max(cfg.iterations, 1), 1.0)
        return cfg.min_meta_lr + 0.5 * (cfg.meta_lr - cfg.min_meta_lr) * (1.0 + math.cos(math.pi * frac))
    raise ConfigError(f"train.lr_schedule {cfg.lr_schedule!r} unknown; use constant or cosine")


def with_record(run_config: dict[str, Any] | None, key: str, value: Any) -> dict[str, Any] | None:
    """``run_config`` with ``train.<key>`` recorded (what the loop resolved, e.g. ``precision_resolved`` beside
    ``train.precision``; :attr:`TrainConfig.RECORD_KEYS`)."""
    if not run_config or not isinstance(run_config.get("train"), dict):
        return run_config
    return {**run_config, "train": {**run_config["train"], key: value}}


def trained_precision(run_dir: str | Path, requested: str, device: str | torch.device) -> tuple[P.Precision, str]:
    """The precision a run was trained in: its config.json's ``train.precision_resolved``, else ``requested``
    resolved here (runs written before precision existed trained in float32: ``requested`` is then fp32)."""
    path = RunDir(run_dir).config
    try:
        resolved = json.loads(path.read_text())["train"]["precision_resolved"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return P.resolve(requested, device)
    return P.by_name(resolved), f"{resolved}, as trained ({path})"


def eval_precision(requested: str, run_dir: str | Path, train_requested: str,
                   device: str | torch.device) -> tuple[P.Precision, str]:
    """``eval.precision``: ``trained`` (the run's own, :func:`trained_precision`) or ``auto | fp32 | bf16``."""
    if requested == "trained":
        return trained_precision(run_dir, train_requested, device)
    return P.resolve(requested, device)


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator that draws iteration ``iteration``'s meta-batch (independent of history)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration)


def meta_train(
    learner: MAML,
    sample_batch: BatchSampler,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    validate: Validator | None = None,
    select_metric: str = "loss",
    select_mode: str = "min",
    run_config: dict[str, Any] | None = None,
    dist_ctx: D.DistContext | None = None,
    meta_step: MetaStep | None = None,
) -> dict[str, Any]:
    """Meta-train ``learner`` for ``cfg.iterations`` meta-iterations (Adam on the meta-gradient by default).

    ``sample_batch(generator)`` returns one meta-batch of ``cfg.meta_batch_size`` tasks.
    ``validate(learner)`` returns metrics; the checkpoint with the best
    ``select_metric`` is kept as ``best.safetensors``. Returns a summary dict.

    ``meta_step`` (a :class:`MetaStep`, e.g. TRPO) replaces the Adam update; the Adam optimizer is
    then unused (its empty state is still checkpointed, so resuming works the same). One process only.
    """
    if cfg.iterations < 0 or cfg.checkpoint_every < 1 or cfg.log_every < 1:
        raise ConfigError("iterations must be >= 0 and checkpoint_every, log_every >= 1")
    if select_mode not in ("min", "max"):
        raise ConfigError(f"select_mode must be 'min' or 'max', got {select_mode!r}")
    ctx = _processes(cfg, dist_ctx, custom_step=meta_step is not None)
    device = torch.device(cfg.device)
    learner.to(device)
    learner.precision, why = P.resolve(cfg.precision, device)
    if ctx.is_main:
        print(f"[fastmaml] precision: {learner.precision.name} ({why})", file=sys.stderr)
    run_config = with_record(run_config, "precision_resolved", learner.precision.name)
    if cfg.tune_batching and meta_step is None and not cfg.compile and not ctx.enabled:
        first_batch = lambda: sample_batch(iteration_generator(cfg.seed, 0)).to(device)  # noqa: E731
        run_config = with_record(run_config, "batching_resolved",
                                 _tune_batching(learner, first_batch, run_dir, resume).to_record())
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.meta_lr)
    step = meta_step or default_meta_step(learner, optimizer, cfg, ctx, device)
    run = _Run(RunDir(run_dir), learner, optimizer, cfg, ctx, validate, select_metric, select_mode, run_config)
    run.start(resume)

    bar = tqdm(total=cfg.iterations, initial=run.start_iteration, disable=not (cfg.progress and ctx.is_main),
               desc="meta-train", dynamic_ncols=True, mininterval=1.0)
    window = _LogWindow()
    with open(run.layout.metrics, "a") if ctx.is_main else _NullFile() as run.log:
        for it in range(run.start_iteration, cfg.iterations):
            if run.out_of_patience():  # a resumed run that had already stopped for patience
                break
            batch = D.shard(sample_batch(iteration_generator(cfg.seed, it)), ctx).to(device)
            learner.set_iteration(it)  # MAML++ schedules (multi-step loss, derivative order) follow it
            for group in optimizer.param_groups:
                group["lr"] = meta_lr_at(cfg, it)
            scalars = {k: float(v) for k, v in step(batch, it).items()}
            loss_value = scalars.pop("loss")
            if not math.isfinite(loss_value):
                bar.close()
                raise run.non_finite(loss_value, it)
            window.add(loss_value, scalars)
            run.done = done = it + 1
            if done % cfg.log_every == 0 or done == cfg.iterations:
                loss, means = run.write_log(window.flush(done, run.seconds()))
                bar.set_postfix(loss=f"{loss:.4f}", **{k: f"{v:.3g}" for k, v in means.items()})
            bar.update(1)
            if run.validating and (done % cfg.validate_every == 0 or done == cfg.iterations):
                run.validate(done)
            if run.end_of_iteration(done):
                break
    bar.close()
    return {"iterations": run.done, "resumed_from": run.start_iteration, "best": run.best,
            "best_iteration": run.best_iteration, "stopped_for_patience": run.out_of_patience(),
            "seconds": run.seconds(), "compile_seconds": getattr(step, "compile_seconds", None)}


def _tune_batching(learner: MAML, first_batch: Callable[[], TaskBatch], run_dir: str | Path,
                   resume: bool) -> B.BatchingChoice:
    """``train.tune_batching``: set the learner's batching, timed on ``first_batch()`` or, for a resumed run, the
    choice its config.json recorded (a resumed run that recorded none keeps the configured batching)."""
    config = RunDir(run_dir).config
    if resume and config.exists():
        try:
            recorded = json.loads(config.read_text()).get("train", {}).get("batching_resolved")
        except (json.JSONDecodeError, AttributeError) as e:
            raise ConfigError(f"{config}: not readable as a run config ({e}); restore it or start a new run") from e
        choice = (B.recorded_choice(recorded, str(config)) if recorded is not None
                  else B.BatchingChoice(learner.batching, "configured: the run started without tuning", {}))
    else:
        choice = B.choose_batching(learner, first_batch())
    learner.batching = choice.batching
    print(f"[fastmaml] task batching: {choice.describe()}", file=sys.stderr)
    return choice


def _processes(cfg: TrainConfig, dist_ctx: D.DistContext | None, custom_step: bool) -> D.DistContext:
    """The process group (under torchrun, WORLD_SIZE > 1 in the environment, this joins it), threads, allocator."""
    ctx = dist_ctx or D.init_from_env(cfg.device)
    if custom_step and ctx.enabled:
        raise ConfigError("a custom meta_step (e.g. TRPO) runs in one process; launch without torchrun")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    return ctx


class _LogWindow:
    """The loss and a meta-step's other scalars, averaged over one logging window."""

    def __init__(self) -> None:
        self.loss, self.n, self.extra = 0.0, 0, {}

    def add(self, loss: float, extra: Mapping[str, float]) -> None:
        self.loss, self.n = self.loss + loss, self.n + 1
        for k, v in extra.items():
            self.extra[k] = self.extra.get(k, 0.0) + v

    def flush(self, iteration: int, seconds: float) -> tuple[dict[str, float], dict[str, float]]:
        """(the log record, the means of the extra scalars), and a fresh window."""
        means = {k: v / self.n for k, v in self.extra.items()}
        rec = {"iteration": iteration, "loss": self.loss / self.n, **means, "time": seconds}
        self.loss, self.n, self.extra = 0.0, 0, {}
        return rec, means


class _Run:
    """A run folder during training: resume, checkpoints, validation and the best score, stopping rules."""

    def __init__(self, layout: RunDir, learner: MAML, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 ctx: D.DistContext, validator: Validator | None, select_metric: str, select_mode: str,
                 run_config: dict[str, Any] | None) -> None:
        self.layout, self.learner, self.optimizer, self.cfg, self.ctx = layout, learner, optimizer, cfg, ctx
        self.validator, self.select_metric, self.select_mode = validator, select_metric, select_mode
        self.run_config = run_config or {}
        self.validating = bool(validator is not None and cfg.validate_every)
        self.start_iteration, self.best, self.best_iteration = 0, None, 0  # best_iteration: train.patience counts from it
        self.last_good = self.done = 0
        self.t0 = time.perf_counter()
        self.device = torch.device(cfg.device)
        self.log: Any = None  # the metrics file while training

    def start(self, resume: bool) -> None:
        """Resume from the last checkpoint, or start a fresh run folder; write config.json."""
        last, time_offset = self.layout.last, 0.0  # time_offset: training seconds before a resume
        if resume and last.exists():
            ckpt = load_checkpoint(last, map_location=self.device)
            load_state_into(self.learner, ckpt["model"], last)
            if ckpt["optimizer"] is None:
                raise CheckpointError(f"{last} holds no optimizer state, so training cannot resume from it")
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.start_iteration = int(ckpt["meta"]["iteration"])
            self.best = ckpt["meta"].get("best")
            self.best_iteration = int(ckpt["meta"].get("best_iteration", self.start_iteration))
            # Runs written before the final validation came ahead of the last checkpoint can hold a better best
            # than last's record of it: the best checkpoint's own record counts, so a worse model never replaces it.
            if self.layout.best.exists():
                kept = checkpoint_meta(self.layout.best)
                if kept.get("best") is not None and self.improves(kept["best"]):
                    self.best, self.best_iteration = kept["best"], int(kept.get("best_iteration", kept["iteration"]))
            if self.ctx.is_main:
                time_offset = _truncate_log(self.layout.metrics, self.start_iteration)
        elif self.ctx.is_main:
            if last.exists():
                raise ConfigError(
                    f"{self.layout.path} already holds a run (checkpoint {last}); pass --resume to continue it "
                    "or choose another run folder"
                )
            self.layout.path.mkdir(parents=True, exist_ok=True)
            self.layout.metrics.unlink(missing_ok=True)
        if self.ctx.is_main:
            atomic_write_text(self.layout.config, json.dumps(self.run_config, indent=2) + "\n")
        self.last_good = self.done = self.start_iteration
        self.t0 = time.perf_counter() - time_offset

    def write_log(self, flushed: tuple[dict[str, float], dict[str, float]]) -> tuple[float, dict[str, float]]:
        """Write a logging window's record to metrics.jsonl; returns (its loss, the extra scalars' means)."""
        rec, means = flushed
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()
        return rec["loss"], means

    def non_finite(self, loss: float, iteration: int) -> NonFiniteLossError:
        kept = (f"the last good checkpoint ({self.layout.last}, iteration {self.last_good}) is kept"
                if self.last_good else "no checkpoint had been written yet")
        return NonFiniteLossError(
            f"meta-loss is {loss} at iteration {iteration + 1}; training stopped and {kept}. "
            "Lower train.meta_lr or maml.inner_lr, set train.grad_clip, or check the data for NaN/inf."
        )

    def seconds(self) -> float:
        """Training time so far, resumes included."""
        return time.perf_counter() - self.t0

    def checkpoint(self, path: Path, iteration: int) -> None:
        if self.ctx.is_main:
            meta = {"iteration": iteration, "best": self.best, "best_iteration": self.best_iteration,
                    "config": self.run_config, "seed": self.cfg.seed}
            save_checkpoint(path, self.learner.state_dict(), self.optimizer, meta)

    def validate(self, iteration: int) -> None:
        scores = self.validator(self.learner)
        self.log.write(json.dumps({"iteration": iteration, "time": self.seconds(),
                                   **{f"val_{k}": v for k, v in scores.items()}}) + "\n")
        self.log.flush()
        score = scores[self.select_metric]
        if self.improves(score):
            self.best, self.best_iteration = score, iteration
            self.checkpoint(self.layout.best, iteration)

    def improves(self, score: float) -> bool:
        """``score`` beats the best so far (lower for ``select_mode`` min, higher for max), or there is none yet."""
        return self.best is None or (score < self.best if self.select_mode == "min" else score > self.best)

    def out_of_patience(self) -> bool:
        """No improvement for train.patience iterations (0: never)."""
        return bool(self.cfg.patience and self.validating and self.best is not None
                    and self.done - self.best_iteration >= self.cfg.patience)

    def end_of_iteration(self, done: int) -> bool:
        """Checkpoint when due; True when training stops here (out of time or patience: checkpoint first)."""
        cfg = self.cfg
        out_of_time = (cfg.max_minutes is not None and self.seconds() / 60 >= cfg.max_minutes) or self.out_of_patience()
        if self.ctx.enabled and cfg.max_minutes is not None:  # every rank must stop at the same iteration
            out_of_time = D.all_reduce_scalar(float(out_of_time), self.ctx, self.device) > 0
        if out_of_time and self.validating and done % cfg.validate_every:
            # A final validation so the best checkpoint reflects the end; before the last checkpoint, which records
            # the best score a resume goes on from.
            self.validate(done)
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations or out_of_time:
            self.checkpoint(self.layout.last, done)
            self.last_good = done
        return out_of_time


def _truncate_log(log_path: Path, iteration: int) -> float:
    """Drop log lines written after the checkpoint we resume from (they will be redone).

    Returns the training time logged up to that point, so times stay cumulative across resumes.
    """
    if not log_path.exists():
        return 0.0
    keep, seconds = [], 0.0
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
            if rec["iteration"] <= iteration:
                keep.append(line)
                seconds = max(seconds, float(rec.get("time", 0.0)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut off by the crash
    atomic_write_text(log_path, "".join(k + "\n" for k in keep))
    return seconds


class _NullFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _):
        pass

    def flush(self):
        pass
