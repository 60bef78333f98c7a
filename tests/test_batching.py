"""``train.tune_batching`` (train/batching.py): the task batchings compute the same meta-gradient, the trials leave
no trace, the fastest is chosen and recorded in config.json, and a resumed run reuses the record."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fastmaml.core.batch import TaskBatch, TaskBatching
from fastmaml.core.maml import MAML
from fastmaml.errors import ConfigError
from fastmaml.models.conv import ConvNet
from fastmaml.train import batching as B
from fastmaml.train.loop import TrainConfig, meta_train
from test_precision import episodes  # tests/ is on sys.path (pytest's rootdir-relative import): the same toy episodes


def learner(batching: TaskBatching | None = None) -> MAML:
    torch.manual_seed(3)
    return MAML(ConvNet(1, 5, 8, 28, strided=True), F.cross_entropy, inner_lr=0.4, batching=batching)


def grads(m: MAML, batch: TaskBatch) -> dict[str, torch.Tensor]:
    m.zero_grad(set_to_none=True)
    m.meta_backward(batch)
    return {n: p.grad.clone() for n, p in m.named_parameters()}


def test_candidates_cover_vmap_chunks_and_the_loop():
    got = B.candidates(4, TaskBatching("vmap", 3))
    assert got == [TaskBatching("vmap"), TaskBatching("vmap", 1), TaskBatching("vmap", 2), TaskBatching("loop"),
                   TaskBatching("vmap", 3)]
    assert B.candidates(2, TaskBatching("loop")) == [TaskBatching("vmap"), TaskBatching("vmap", 1), TaskBatching("loop")]


def test_every_candidate_gives_the_same_meta_gradient():
    batch = episodes(tasks=4, queries=2)
    ref = grads(learner(), batch)
    for b in B.candidates(batch.num_tasks, TaskBatching()):
        g = grads(learner(b), batch)
        for n in ref:
            assert torch.allclose(g[n], ref[n], rtol=1e-4, atol=1e-6), (b, n)


def test_trials_leave_parameters_buffers_grads_and_batching_as_they_were():
    batch = episodes(tasks=4, queries=2)
    m = learner(TaskBatching("vmap", 2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    times = B.time_batchings(m, batch, B.candidates(batch.num_tasks, m.batching), repeats=1)
    assert set(times) == set(B.candidates(batch.num_tasks, m.batching)) and all(t > 0 for t in times.values())
    assert m.batching == TaskBatching("vmap", 2)
    assert all(p.grad is None for p in m.parameters())
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ConfigError, match="repeats"):
        B.time_batchings(m, batch, [TaskBatching()], repeats=0)


def fake_times(fastest: TaskBatching):
    return lambda learner, batch, options, repeats=2: {b: (0.1 if b == fastest else 1.0) for b in options}


def test_training_uses_the_fastest_records_it_and_a_resume_reuses_it(tmp_path, monkeypatch, capsys):
    batch = episodes(tasks=4, queries=2)
    monkeypatch.setattr(B, "time_batchings", fake_times(TaskBatching("loop")))
    cfg = TrainConfig(iterations=2, meta_batch_size=4, log_every=1, checkpoint_every=1, progress=False,
                      tune_batching=True)
    m = learner()
    meta_train(m, lambda g: batch, cfg, tmp_path / "run", run_config={"train": {"tune_batching": True}})
    assert m.batching == TaskBatching("loop")
    assert "[fastmaml] task batching: loop (the fastest on the first meta-batch: loop 0.1 s" in capsys.readouterr().err
    rec = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["batching_resolved"]
    assert rec["mode"] == "loop" and rec["chunk_size"] is None and rec["how"] == "timed" and rec["seconds"]["loop"] == 0.1
    # Resumed on a machine where vmap would win: the recorded loop is kept (resuming stays exact).
    monkeypatch.setattr(B, "time_batchings", fake_times(TaskBatching("vmap")))
    cfg.iterations = 3
    resumed = learner()
    meta_train(resumed, lambda g: batch, cfg, tmp_path / "run", resume=True, run_config={"train": {}})
    assert resumed.batching == TaskBatching("loop")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["batching_resolved"]["mode"] == "loop"


def test_a_run_started_without_tuning_resumes_with_its_configured_batching(tmp_path, monkeypatch):
    batch = episodes(tasks=4, queries=2)
    cfg = TrainConfig(iterations=1, meta_batch_size=4, log_every=1, checkpoint_every=1, progress=False)
    meta_train(learner(TaskBatching("vmap", 2)), lambda g: batch, cfg, tmp_path / "run", run_config={"train": {}})
    monkeypatch.setattr(B, "time_batchings", fake_times(TaskBatching("loop")))
    cfg.iterations, cfg.tune_batching = 2, True
    resumed = learner(TaskBatching("vmap", 2))
    meta_train(resumed, lambda g: batch, cfg, tmp_path / "run", resume=True, run_config={"train": {}})
    assert resumed.batching == TaskBatching("vmap", 2)
    rec = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["batching_resolved"]
    assert rec["how"].startswith("configured") and rec["chunk_size"] == 2


def test_a_malformed_record_is_a_clear_error(tmp_path):
    batch = episodes(tasks=4, queries=2)
    cfg = TrainConfig(iterations=1, meta_batch_size=4, log_every=1, checkpoint_every=1, progress=False)
    meta_train(learner(), lambda g: batch, cfg, tmp_path / "run", run_config={"train": {}})
    path = tmp_path / "run" / "config.json"
    path.write_text(json.dumps({"train": {"batching_resolved": {"mode": "warp", "chunk_size": None}}}))
    cfg.iterations, cfg.tune_batching = 2, True
    with pytest.raises(ConfigError, match="batching_resolved is malformed"):
        meta_train(learner(), lambda g: batch, cfg, tmp_path / "run", resume=True, run_config={"train": {}})


def test_fewshot_runs_tune_by_default_and_the_record_reads_back():
    from fastmaml.config import from_dict
    from fastmaml.experiments import fewshot as FS

    assert FS.FewShotConfig().train.tune_batching and not TrainConfig().tune_batching
    back = from_dict(TrainConfig, {"tune_batching": True, "batching_resolved": {"mode": "loop", "chunk_size": None}})
    assert back.tune_batching


def test_a_batching_that_fails_is_skipped_but_the_configured_ones_error_is_raised(monkeypatch):
    batch = episodes(tasks=4, queries=2)
    m = learner()
    real = B._seconds_per_call

    def fails_in_loop(learner, batch, repeats):
        if learner.batching.mode == "loop":
            raise RuntimeError("vmap: an op this test pretends cannot run one task at a time")
        return real(learner, batch, repeats)

    monkeypatch.setattr(B, "_seconds_per_call", fails_in_loop)
    choice = B.choose_batching(m, batch, repeats=1)
    assert choice.batching.mode == "vmap" and choice.seconds["loop"] == float("inf")
    assert "loop failed" in choice.describe() and choice.to_record()["seconds"]["loop"] is None
    again = B.recorded_choice(choice.to_record())  # a resume reads the record back
    assert again.batching == choice.batching and again.to_record()["seconds"]["loop"] is None
    with pytest.raises(RuntimeError, match="pretends"):
        B.time_batchings(learner(TaskBatching("loop")), batch, [TaskBatching("loop")], repeats=1)
