"""The training loop: resumption, NaN handling, checkpoints, configs, distributed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastmaml.config import load_config
from fastmaml.errors import CheckpointError, ConfigError, NonFiniteLossError
from fastmaml.experiments import sinusoid as S
from fastmaml.tasks.batch import TaskBatch
from fastmaml.train.checkpoint import checkpoint_meta, load_checkpoint
from fastmaml.train.loop import meta_train

ROOT = Path(__file__).resolve().parents[1]


# The loop's semantics, tested eager (train.compile=false): the sinusoid experiment's compiled default would add
# an inductor compile to each test; tests/test_compiled.py tests it.
def small_cfg(**train):
    cfg = load_config(S.SinusoidConfig, None, ["train.progress=false", "train.threads=1", "train.compile=false"])
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def final_params(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoints" / "last.safetensors")["model"]


def test_resume_in_process_equals_uninterrupted(tmp_path):
    cfg = small_cfg(iterations=60, checkpoint_every=20, log_every=10)
    S.train(cfg, tmp_path / "straight")
    cfg_short = small_cfg(iterations=40, checkpoint_every=20, log_every=10)
    S.train(cfg_short, tmp_path / "split")
    S.train(cfg, tmp_path / "split", resume=True)
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(l) for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [10, 20, 30, 40, 50, 60]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """A real crash: the CLI process is SIGKILLed mid-run, then resumed."""
    args = ["sinusoid", "train", "--preset", "paper", "train.iterations=1500", "train.checkpoint_every=100",
            "train.log_every=100", "train.threads=1", "train.progress=false", "train.compile=false"]
    cmd = [sys.executable, "-m", "fastmaml.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cmd + args + ["--run-dir", str(tmp_path / "straight")], check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--run-dir", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and load_checkpoint(ckpt)["meta"]["iteration"] >= 300:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed; raise train.iterations"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["meta"]["iteration"]
    assert 300 <= killed_at < 1500
    subprocess.run(cmd + args + ["--run-dir", str(run), "--resume"], check=True, env=env, capture_output=True)
    a, b = final_params(tmp_path / "straight"), final_params(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = small_cfg(iterations=50, checkpoint_every=10)
    learner = S.build_learner(cfg)
    good = S.batch_sampler(cfg)
    calls = {"n": 0}

    def sampler(g):
        calls["n"] += 1
        batch = good(g)
        if calls["n"] == 15:
            batch = TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y * float("nan"))
        return batch

    with pytest.raises(NonFiniteLossError, match=r"iteration 15\b.*iteration 10"):
        meta_train(learner, sampler, cfg.train, tmp_path)
    meta = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")["meta"]
    assert meta["iteration"] == 10
    assert all(torch.isfinite(v).all() for v in final_params(tmp_path).values())


def test_existing_run_needs_resume_flag(tmp_path):
    cfg = small_cfg(iterations=5, checkpoint_every=5)
    S.train(cfg, tmp_path)
    with pytest.raises(ConfigError, match="--resume"):
        S.train(cfg, tmp_path)


@pytest.mark.parametrize("read", [load_checkpoint, checkpoint_meta])
def test_truncated_foreign_and_missing_checkpoints(tmp_path, read):
    cfg = small_cfg(iterations=5, checkpoint_every=5)
    S.train(cfg, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    assert checkpoint_meta(path) == load_checkpoint(path)["meta"] and checkpoint_meta(path)["iteration"] == 5
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a fastmaml checkpoint"):
        read(foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\xffnot a checkpoint" * 10)
    with pytest.raises(CheckpointError):
        read(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        read(tmp_path / "nope.safetensors")
    # A checkpoint of another architecture is refused with a clear message.
    other = load_config(S.SinusoidConfig, None, ["hidden=[8]"])
    with pytest.raises(CheckpointError, match="does not fit"):
        S.load_learner(other, tmp_path / "run")


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'train.iterationz'"):
        load_config(S.SinusoidConfig, None, ["train.iterationz=5"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(S.SinusoidConfig, None, ["train.iterations=fast"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(S.SinusoidConfig, None, ["train.iterations"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  meta_batch: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.meta_batch'"):
        load_config(S.SinusoidConfig, bad)
    cfg = load_config(S.SinusoidConfig, S.PRESETS / "sinusoid_paper.yaml", ["maml.first_order=true", "shots=[5]"])
    assert cfg.train.iterations == 70000 and cfg.maml.first_order is True and cfg.shots == [5]


def test_cli_reports_errors_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "fastmaml.cli", "sinusoid", "train", "--run-dir", str(tmp_path),
                        "train.iterationz=3"], env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown config key" in r.stderr and "Traceback" not in r.stderr


def test_torchrun_two_processes_match_one(tmp_path):
    """The meta-batch split over 2 gloo processes gives the one-process result (to float rounding)."""
    args = ["sinusoid", "train", "--preset", "paper", "train.iterations=30", "train.checkpoint_every=30",
            "train.threads=1", "train.progress=false", "train.meta_batch_size=24", "train.compile=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "fastmaml.cli", *args, "--run-dir", str(tmp_path / "one")],
                   check=True, env=env, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "fastmaml.cli", *args, "--run-dir", str(tmp_path / "two")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = final_params(tmp_path / "one"), final_params(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert max((a[k] - b[k]).abs().max() for k in a) < 1e-4


def _sgd_meta_step(learner, lr=0.01):
    """A custom outer update (plain SGD on the meta-gradient) through meta_train's meta_step hook."""

    def step(batch, iteration):
        learner.zero_grad(set_to_none=True)
        out = learner.meta_backward(batch)
        with torch.no_grad():
            for p in learner.parameters():
                p -= lr * p.grad
        return {"loss": float(out.loss), "iteration_seen": float(iteration)}

    return step


def test_meta_step_replaces_the_adam_update_and_logs_its_scalars(tmp_path):
    cfg = small_cfg(iterations=6, checkpoint_every=2, log_every=3)
    learner = S.build_learner(cfg)
    sample = S.batch_sampler(cfg)
    start = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    meta_train(learner, sample, cfg.train, tmp_path / "custom", meta_step=_sgd_meta_step(learner))
    # the same updates by hand, on the same meta-batches
    ref = S.build_learner(cfg)
    ref.load_state_dict(start)
    manual = _sgd_meta_step(ref)
    from fastmaml.train.loop import iteration_generator
    for it in range(6):
        manual(sample(iteration_generator(cfg.train.seed, it)), it)
    got = final_params(tmp_path / "custom")
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    lines = [json.loads(l) for l in (tmp_path / "custom" / "metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [3, 6]
    assert [l["iteration_seen"] for l in lines] == [1.0, 4.0]  # window means of 0,1,2 and 3,4,5
    # and it differs from the default Adam run (the hook really replaced the update)
    S.train(cfg, tmp_path / "adam")
    adam = final_params(tmp_path / "adam")
    assert any(not torch.equal(adam[k], got[k]) for k in got)
    assert "iteration_seen" not in (tmp_path / "adam" / "metrics.jsonl").read_text()


def test_meta_step_run_resumes_to_the_same_parameters(tmp_path):
    cfg = small_cfg(iterations=6, checkpoint_every=2, log_every=2)
    learner = S.build_learner(cfg)
    meta_train(learner, S.batch_sampler(cfg), cfg.train, tmp_path / "straight", meta_step=_sgd_meta_step(learner))
    short = small_cfg(iterations=4, checkpoint_every=2, log_every=2)
    learner = S.build_learner(short)
    meta_train(learner, S.batch_sampler(short), short.train, tmp_path / "split", meta_step=_sgd_meta_step(learner))
    learner = S.build_learner(cfg)
    meta_train(learner, S.batch_sampler(cfg), cfg.train, tmp_path / "split", resume=True,
               meta_step=_sgd_meta_step(learner))
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "split")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_meta_step_with_a_nan_loss_stops_the_run(tmp_path):
    cfg = small_cfg(iterations=5, checkpoint_every=1)
    learner = S.build_learner(cfg)
    with pytest.raises(NonFiniteLossError, match="iteration 3"):
        meta_train(learner, S.batch_sampler(cfg), cfg.train, tmp_path / "nan",
                   meta_step=lambda batch, it: {"loss": float("nan") if it == 2 else 1.0})


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path, umask):
    # mkstemp makes 0600 files; results written through it must be readable like any other file.
    from fastmaml.data.archive import save_cache
    from fastmaml.fileio import atomic_write_text
    from fastmaml.train.checkpoint import save_checkpoint

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "results.md", "x\n")
        save_checkpoint(tmp_path / "last.safetensors", torch.nn.Linear(2, 2).state_dict())
        save_cache(tmp_path / "images.safetensors", {"x": torch.zeros(2)}, {"version": 1})
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    want = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert want == 0o666 & ~umask
    for name in ("results.md", "last.safetensors", "images.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_patience_stops_when_validation_stops_improving_and_survives_a_resume(tmp_path):
    cfg = small_cfg(iterations=200, checkpoint_every=10, log_every=10, validate_every=10, patience=30)
    scores = iter([0.9, 0.5, 0.4, 0.45, 0.41, 0.42, 0.43, 0.3, 0.2])  # best at 30, then no better until 70

    def validate(learner):
        return {"loss": next(scores)}

    out = meta_train(S.build_learner(cfg), S.batch_sampler(cfg), cfg.train, tmp_path / "run", validate=validate)
    assert out["stopped_for_patience"] and out["best_iteration"] == 30 and out["iterations"] == 60
    meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")["meta"]
    assert meta["iteration"] == 60 and meta["best_iteration"] == 30
    # resuming a run that stopped for patience trains no further
    again = meta_train(S.build_learner(cfg), S.batch_sampler(cfg), cfg.train, tmp_path / "run", resume=True,
                       validate=validate)
    assert again["iterations"] == 60 and again["stopped_for_patience"]
    # without patience the same scores run to the end
    scores = iter([0.9, 0.5, 0.4] + [0.45] * 17)
    cfg.train.patience = 0
    full = meta_train(S.build_learner(cfg), S.batch_sampler(cfg), cfg.train, tmp_path / "full", validate=validate)
    assert full["iterations"] == 200 and not full["stopped_for_patience"]


def test_the_best_score_a_resume_goes_on_from_is_the_best_checkpoints(tmp_path):
    """A run stopped by its time limit validates once more at the end: the last checkpoint records that score; and a
    run folder whose last checkpoint holds a stale record (written before that order) keeps its best checkpoint
    against a worse model after a resume (an Omniglot 20-way run lost its 92.5% checkpoint to a 92.3% one so)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cfg = small_cfg(iterations=100, checkpoint_every=50, log_every=10, validate_every=10, max_minutes=1e-9)
    out = meta_train(S.build_learner(cfg), S.batch_sampler(cfg), cfg.train, tmp_path / "run",
                     validate=lambda learner: {"loss": 0.3})
    ckpts = tmp_path / "run" / "checkpoints"
    meta = load_checkpoint(ckpts / "last.safetensors")["meta"]
    assert out["iterations"] == 1 and meta["best"] == 0.3 and meta["best_iteration"] == 1

    # The stale record: last says the best was 0.5, the best checkpoint (iteration 1) holds 0.3.
    with safe_open(str(ckpts / "last.safetensors"), framework="pt") as f:
        header = f.metadata()
    stale = {**json.loads(header["meta"]), "best": 0.5, "best_iteration": 0}
    save_file(load_file(str(ckpts / "last.safetensors")), str(ckpts / "last.safetensors"),
              {**header, "meta": json.dumps(stale)})
    cfg.train.max_minutes = None
    cfg.train.iterations = 20
    again = meta_train(S.build_learner(cfg), S.batch_sampler(cfg), cfg.train, tmp_path / "run", resume=True,
                       validate=lambda learner: {"loss": 0.4})  # better than the stale 0.5, worse than 0.3
    assert again["best"] == 0.3 and again["best_iteration"] == 1
    assert load_checkpoint(ckpts / "best.safetensors")["meta"]["iteration"] == 1
