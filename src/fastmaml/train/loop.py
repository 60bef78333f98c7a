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

Algorithms whose outer update is not "Adam on a meta-gradient" (e.g. TRPO for meta-RL,
``fastmaml.apps.rl``) pass ``meta_step``: it replaces the gradient/Adam update of one
iteration and returns the loss (plus any other scalars to log); everything else —
determinism, checkpoints, resume, NaN handling, logging, time limit — stays this loop's.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from tqdm import tqdm

from fastmaml.core.maml import MAML
from fastmaml.errors import CheckpointError, ConfigError, NonFiniteLossError
from fastmaml.tasks.batch import TaskBatch
from fastmaml.train import distributed as D
from fastmaml.fileio import atomic_write_text
from fastmaml.train.checkpoint import RunDir, load_checkpoint, load_state_into, save_checkpoint
from fastmaml.train.memory import keep_freed_memory

BatchSampler = Callable[[torch.Generator], TaskBatch]
Validator = Callable[[MAML], dict[str, float]]
# meta_step(batch, iteration) -> {"loss": ..., other scalars to log}; it updates the learner itself.
MetaStep = Callable[[TaskBatch, int], Mapping[str, float]]


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
    # torch.compile the whole meta-iteration (gradient + Adam: core/compiled.py); falls back to eager, with a
    # warning, where it cannot. Pays on small models (sinusoid MLP ~5x), not on conv nets (see core/compiled.py).
    # compile_mode: None, "max-autotune-no-cudagraphs", "reduce-overhead" (CUDA graphs).
    compile: bool = False
    compile_mode: str | None = None


def meta_lr_at(cfg: TrainConfig, iteration: int) -> float:
    """The outer learning rate of iteration ``iteration`` (a pure function of it, so resuming needs no state)."""
    if cfg.lr_schedule == "constant":
        return cfg.meta_lr
    if cfg.lr_schedule == "cosine":
        frac = min(iteration / max(cfg.iterations, 1), 1.0)
        return cfg.min_meta_lr + 0.5 * (cfg.meta_lr - cfg.min_meta_lr) * (1.0 + math.cos(math.pi * frac))
    raise ConfigError(f"train.lr_schedule {cfg.lr_schedule!r} unknown; use constant or cosine")


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
    """Meta-train ``learner`` with Adam for ``cfg.iterations`` meta-iterations.

    ``sample_batch(generator)`` returns one meta-batch of ``cfg.meta_batch_size`` tasks.
    ``validate(learner)`` returns metrics; the checkpoint with the best
    ``select_metric`` is kept as ``best.safetensors``. Returns a summary dict.

    ``meta_step(batch, iteration)``, if given, replaces the Adam update on ``learner.meta_backward``:
    it must update the learner's parameters itself (deterministically, and never with a
    non-finite step) and return ``{"loss": value, ...}``; the other entries are averaged over
    each logging window and logged beside the loss. The Adam optimizer is then unused (its
    empty state is still checkpointed, so resuming works the same). One process only.
    """
    if cfg.iterations < 0 or cfg.checkpoint_every < 1 or cfg.log_every < 1:
        raise ConfigError("iterations must be >= 0 and checkpoint_every, log_every >= 1")
    if select_mode not in ("min", "max"):
        raise ConfigError(f"select_mode must be 'min' or 'max', got {select_mode!r}")
    # Under torchrun (WORLD_SIZE > 1 in the environment) this joins the process group.
    ctx = dist_ctx or D.init_from_env(cfg.device)
    if meta_step is not None and ctx.enabled:
        raise ConfigError("a custom meta_step (e.g. TRPO) runs in one process; launch without torchrun")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    layout = RunDir(run_dir)
    run_dir = layout.path
    last_path, best_path, log_path = layout.last, layout.best, layout.metrics
    device = torch.device(cfg.device)
    learner.to(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.meta_lr)
    # ---- train.compile: the compiled meta-step (begin) ----
    compiled = None
    if cfg.compile and meta_step is None:
        from fastmaml.core.compiled import CompiledMetaStep

        # Under torchrun the gradient is all-reduced before the update: the compiled gradient, eager Adam.
        compiled = CompiledMetaStep(learner, optimizer, fuse_optimizer=not ctx.enabled, mode=cfg.compile_mode,
                                    grad_clip=cfg.grad_clip)
    # ---- train.compile (end) ----

    start, best, time_offset = 0, None, 0.0  # time_offset: training seconds before a resume
    best_iteration = 0  # where the best validation score was reached (train.patience counts from it)
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path, map_location=device)
        load_state_into(learner, ckpt["model"], last_path)
        if ckpt["optimizer"] is None:
            raise CheckpointError(f"{last_path} holds no optimizer state, so training cannot resume from it")
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["meta"]["iteration"])
        best = ckpt["meta"].get("best")
        best_iteration = int(ckpt["meta"].get("best_iteration", start))
        if ctx.is_main:
            time_offset = _truncate_log(log_path, start)
    elif ctx.is_main:
        if last_path.exists():
            raise ConfigError(
                f"{run_dir} already holds a run (checkpoint {last_path}); pass --resume to continue it "
                "or choose another run folder"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
    if ctx.is_main:
        atomic_write_text(layout.config, json.dumps(run_config or {}, indent=2) + "\n")

    def checkpoint(path: Path, iteration: int) -> None:
        if ctx.is_main:
            meta = {"iteration": iteration, "best": best, "best_iteration": best_iteration, "config": run_config or {},
                    "seed": cfg.seed}
            save_checkpoint(path, learner.state_dict(), optimizer, meta)

    def run_validation(iteration: int) -> None:
        nonlocal best, best_iteration
        scores = validate(learner)
        log.write(json.dumps({"iteration": iteration, "time": time.perf_counter() - t0,
                              **{f"val_{k}": v for k, v in scores.items()}}) + "\n")
        log.flush()
        score = scores[select_metric]
        if best is None or (score < best if select_mode == "min" else score > best):
            best, best_iteration = score, iteration
            checkpoint(best_path, iteration)

    bar = tqdm(
        total=cfg.iterations, initial=start, disable=not (cfg.progress and ctx.is_main), desc="meta-train",
        dynamic_ncols=True, mininterval=1.0,
    )
    t0, window_loss, window_n = time.perf_counter() - time_offset, 0.0, 0
    window_extra: dict[str, float] = {}  # meta_step's other scalars, summed over the logging window
    last_good, done = start, start

    def out_of_patience() -> bool:
        return bool(cfg.patience and validate is not None and cfg.validate_every and best is not None
                    and done - best_iteration >= cfg.patience)

    with open(log_path, "a") if ctx.is_main else _NullFile() as log:
        for it in range(start, cfg.iterations):
            if out_of_patience():  # a resumed run that had already stopped for patience
                break
            batch = D.shard(sample_batch(iteration_generator(cfg.seed, it)), ctx).to(device)
            learner.set_iteration(it)  # MAML++ schedules (multi-step loss, derivative order) follow it
            for group in optimizer.param_groups:
                group["lr"] = meta_lr_at(cfg, it)
            extra: dict[str, float] = {}
            applied = False  # train.compile: the fused step has updated the parameters already
            if compiled is not None and compiled.fused:
                # Gradient, clipping and Adam in one compiled call; it applies nothing if the loss is not finite.
                out = compiled.step(batch, lr=meta_lr_at(cfg, it))
                loss_value, applied = float(out.loss), True
            elif meta_step is None:
                optimizer.zero_grad(set_to_none=True)
                # Chunk by chunk (learner.chunk_size); nothing is applied before the NaN check below.
                out = (compiled.backward if compiled is not None else learner.meta_backward)(batch)
                loss_value = D.all_reduce_scalar(float(out.loss), ctx, device)
            else:
                extra = {k: float(v) for k, v in meta_step(batch, it).items()}
                loss_value = extra.pop("loss")
            if not math.isfinite(loss_value):
                bar.close()
                kept = f"the last good checkpoint ({last_path}, iteration {last_good}) is kept" if last_good else (
                    "no checkpoint had been written yet")
                raise NonFiniteLossError(
                    f"meta-loss is {loss_value} at iteration {it + 1}; training stopped and {kept}. "
                    "Lower train.meta_lr or maml.inner_lr, set train.grad_clip, or check the data for NaN/inf."
                )
            if meta_step is None and not applied:
                D.average_gradients(learner.parameters(), ctx)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_value_(learner.parameters(), cfg.grad_clip)
                optimizer.step()

            window_loss += loss_value
            window_n += 1
            for k, v in extra.items():
                window_extra[k] = window_extra.get(k, 0.0) + v
            done = it + 1
            if done % cfg.log_every == 0 or done == cfg.iterations:
                means = {k: v / window_n for k, v in window_extra.items()}
                rec = {"iteration": done, "loss": window_loss / window_n, **means, "time": time.perf_counter() - t0}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}", **{k: f"{v:.3g}" for k, v in means.items()})
                window_loss, window_n, window_extra = 0.0, 0, {}
            bar.update(1)
            if validate is not None and cfg.validate_every and (done % cfg.validate_every == 0 or done == cfg.iterations):
                run_validation(done)
            # No improvement for train.patience iterations: stop as if out of time (checkpoint, then break).
            out_of_time = (cfg.max_minutes is not None and (time.perf_counter() - t0) / 60 >= cfg.max_minutes
                           ) or out_of_patience()
            if ctx.enabled and cfg.max_minutes is not None:  # every rank must stop at the same iteration
                out_of_time = D.all_reduce_scalar(float(out_of_time), ctx, device) > 0
            if done % cfg.checkpoint_every == 0 or done == cfg.iterations or out_of_time:
                checkpoint(last_path, done)
                last_good = done
            if out_of_time:
                if validate is not None and cfg.validate_every and done % cfg.validate_every:
                    run_validation(done)  # a final validation so the best checkpoint reflects the end
                break
    bar.close()
    return {"iterations": done, "resumed_from": start, "best": best, "best_iteration": best_iteration,
            "stopped_for_patience": out_of_patience(), "seconds": time.perf_counter() - t0}


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
