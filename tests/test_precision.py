"""Mixed precision (core/precision.py): bf16 meta-gradients against float32 ones, the float32 master state,
``train.precision: auto`` and its record in config.json / results files."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fastmaml.config import from_dict, load_config
from fastmaml.core import precision as P
from fastmaml.core.batch import TaskBatch, TaskBatching
from fastmaml.core.maml import MAML, MAMLPlusPlus, Recompute
from fastmaml.models.conv import ConvNet
from fastmaml.train.loop import TrainConfig, meta_train, trained_precision


def episodes(tasks=8, queries=5, n_way=5, size=28, seed=0) -> TaskBatch:
    """5-way 1-shot tasks: each class a random image, its examples that image plus noise (a learnable task)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(tasks, n_way, 1, 1, size, size, generator=g)
    xs = (protos + 0.3 * torch.randn(tasks, n_way, 1, 1, size, size, generator=g)).flatten(1, 2)
    xq = (protos + 0.3 * torch.randn(tasks, n_way, queries, 1, size, size, generator=g)).flatten(1, 2)
    y = torch.arange(n_way)
    return TaskBatch(xs, y.repeat(tasks, 1), xq, y.repeat_interleave(queries).repeat(tasks, 1))


def learner(precision=P.FP32, hidden=16, **kw) -> MAML:
    torch.manual_seed(1)
    net = ConvNet(1, 5, hidden, 28, strided=True, global_pool=True)
    return MAML(net, F.cross_entropy, inner_lr=kw.pop("inner_lr", 0.1), precision=precision, **kw)


def meta_grads(m: MAML, batch: TaskBatch) -> dict[str, torch.Tensor]:
    m.zero_grad(set_to_none=True)
    m.meta_backward(batch)
    return {n: p.grad.clone() for n, p in m.named_parameters()}


def cosines(a: dict, b: dict) -> dict[str, float]:
    """Per-tensor cosine of two meta-gradients, over the tensors whose float32 gradient is not ~0 (a conv bias
    before BatchNorm has gradient exactly 0 in exact arithmetic: its float32 value is rounding noise)."""
    big = max(float(v.norm()) for v in a.values())
    return {n: float(F.cosine_similarity(a[n].flatten(), b[n].flatten(), dim=0))
            for n in a if float(a[n].norm()) > 1e-4 * big}


# Measured (AMD EPYC, 1 thread, torch 2.13, this batch, hidden 16, α = 0.1): per-tensor cosines 0.969-1.000
# second order, 0.969-1.000 first order (vmap and loop alike); the head and last block ≥ 0.999. The float32
# meta-gradient itself moves as much when θ is merely rounded to bf16 (cosines 0.94-0.99 at α = 0.4): the MAML
# meta-gradient of a 1-shot conv net is that sensitive, so ≥ 0.98 on every tensor is not a bound bf16 can meet
# here. The bounds below: every tensor ≥ 0.95, the whole gradient ≥ 0.98.
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_bf16_meta_gradient_matches_fp32(first_order, vectorize):
    batch = episodes()
    m = learner(first_order=first_order, batching=TaskBatching(vectorize))
    g32 = meta_grads(m, batch)
    m.precision = P.BF16
    g16 = meta_grads(m, batch)
    assert all(g.dtype == torch.float32 for g in g16.values())
    cos = cosines(g32, g16)
    print(f"{vectorize} {'FOMAML' if first_order else 'MAML'} per-tensor cosines:",
          " ".join(f"{c:.3f}" for c in cos.values()))
    assert min(cos.values()) >= 0.95, cos
    whole = F.cosine_similarity(torch.cat([g.flatten() for g in g32.values()]),
                                torch.cat([g.flatten() for g in g16.values()]), dim=0)
    assert whole >= 0.98


def test_bf16_recomputed_steps_and_per_step_bn_match_the_stored_pass():
    """Recomputed inner steps (second order, memory-bounded) in bf16 give the stored bf16 pass's meta-gradient."""
    batch = episodes(tasks=2, queries=2)
    stored = meta_grads(learner(P.BF16, hidden=8, inner_steps=2), batch)
    recomputed = meta_grads(learner(P.BF16, hidden=8, inner_steps=2, recompute=Recompute()), batch)
    assert min(cosines(stored, recomputed).values()) >= 0.999
    m = learner(P.BF16, hidden=8, inner_steps=2, mamlpp=MAMLPlusPlus(per_step_bn=True, multi_step_loss_iterations=5))
    m.meta_backward(batch)
    assert all(b.dtype == torch.float32 for b in m.buffers())  # running statistics stay float32


def test_the_model_runs_in_bf16_and_the_loss_in_fp32():
    m = learner(P.BF16, hidden=8)
    seen = []
    m.model.head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    out = m(episodes(tasks=2, queries=1))
    assert seen and set(seen) == {torch.bfloat16}  # the linear layer ran under autocast
    assert out.loss.dtype == torch.float32 and out.query_pred.dtype == torch.float32


def test_bf16_evaluation_curve_is_float32_and_close():
    batch = episodes(tasks=4, queries=3)
    m = learner(hidden=8)
    fp32 = m.adaptation_curve(batch, steps=2).losses
    m.precision = P.BF16
    bf16 = m.adaptation_curve(batch, steps=2).losses
    assert bf16.dtype == torch.float32
    assert torch.allclose(fp32, bf16, rtol=0.05, atol=0.02)


def _sampler(batch):
    return lambda g: batch


def test_bf16_training_lowers_the_loss_and_keeps_fp32_master_state(tmp_path):
    batch = episodes(tasks=4, queries=2)
    m = learner(hidden=8, inner_lr=0.4)
    cfg = TrainConfig(iterations=8, meta_batch_size=4, meta_lr=3e-3, log_every=1, checkpoint_every=8,
                      progress=False, precision="bf16")
    meta_train(m, _sampler(batch), cfg, tmp_path / "run", run_config={"train": {"precision": "bf16"}})
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.05, losses
    assert m.precision is P.BF16
    assert all(p.dtype == torch.float32 for p in m.parameters())
    state = torch.optim.Adam(m.parameters()).state_dict()  # a fresh one only checks the helper; use the run's:
    from fastmaml.train.checkpoint import load_checkpoint
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    opt_state = ckpt["optimizer"]["state"]
    assert opt_state and all(v.dtype == torch.float32 for s in opt_state.values()
                             for k, v in s.items() if k in ("exp_avg", "exp_avg_sq"))
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
    del state


def test_auto_falls_back_to_fp32_with_one_log_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(P, "bf16_pays", lambda device: (False, "no AMX (test)"))
    m = learner(hidden=8)
    cfg = TrainConfig(iterations=1, meta_batch_size=2, log_every=1, checkpoint_every=1, progress=False, precision="auto")
    meta_train(m, _sampler(episodes(tasks=2, queries=1)), cfg, tmp_path / "run",
               run_config={"train": {"precision": "auto"}})
    lines = [l for l in capsys.readouterr().err.splitlines() if "precision" in l]
    assert lines == ["[fastmaml] precision: fp32 (auto: no AMX (test))"]
    assert m.precision is P.FP32
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved == {"precision": "auto", "precision_resolved": "fp32"}


def test_auto_picks_bf16_where_the_check_says_it_pays(monkeypatch):
    monkeypatch.setattr(P, "bf16_pays", lambda device: (True, "AMX (test)"))
    assert P.resolve("auto", "cpu") == (P.BF16, "auto: AMX (test)")
    monkeypatch.setattr(P, "bf16_pays", lambda device: (False, "no"))
    assert P.resolve("auto", "cpu")[0] is P.FP32
    assert P.resolve("bf16", "cpu")[0] is P.BF16 and P.resolve("fp32", "cpu")[0] is P.FP32
    with pytest.raises(Exception, match="unknown precision"):
        P.resolve("fp16", "cpu")


def test_bf16_pays_reads_the_cpu(monkeypatch):
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx512_bf16", "amx_bf16", "amx_tile"})
    assert P.bf16_pays("cpu")[0]
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    pays, why = P.bf16_pays("cpu")
    assert not pays and "no AMX" in why


def test_precision_round_trips_through_config_json_and_resume(tmp_path):
    from fastmaml.experiments import fewshot as FS
    from fastmaml.config import to_dict

    cfg = load_config(FS.FewShotConfig, None, ["train.precision=bf16", "eval.precision=fp32"])
    assert FS.FewShotConfig().train.precision == "auto" and TrainConfig().precision == "fp32"
    batch = episodes(tasks=2, queries=1)
    tcfg = TrainConfig(iterations=2, meta_batch_size=2, log_every=1, checkpoint_every=1, progress=False,
                       precision="bf16")
    run_config = {"experiment": "fewshot", **to_dict(cfg)}
    meta_train(learner(hidden=8), _sampler(batch), tcfg, tmp_path / "run", run_config=run_config)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["precision"] == "bf16" and saved["train"]["precision_resolved"] == "bf16"
    back = from_dict(FS.FewShotConfig, {k: v for k, v in saved.items() if k != "experiment"})
    assert back.train.precision == "bf16" and back.eval.precision == "fp32"
    assert trained_precision(tmp_path / "run", "fp32", "cpu")[0] is P.BF16  # "as trained" reads the record
    tcfg.iterations = 3
    resumed = learner(hidden=8)
    summary = meta_train(resumed, _sampler(batch), tcfg, tmp_path / "run", resume=True, run_config=run_config)
    assert summary["resumed_from"] == 2 and summary["iterations"] == 3 and resumed.precision is P.BF16


def test_compiled_meta_step_refuses_bf16_and_runs_eager():
    from fastmaml.core.compiled import CompileFallbackWarning, CompiledMetaStep

    m = learner(P.BF16, hidden=8)
    opt = torch.optim.Adam(m.parameters())
    step = CompiledMetaStep(m, opt, compile=False)
    assert not step.compiled and "precision bf16" in step.fallback_reason
    with pytest.warns(CompileFallbackWarning, match="precision bf16"):
        out = step.step(episodes(tasks=2, queries=1))
    assert torch.isfinite(out.loss)


def test_precision_flag_sets_the_train_or_eval_key():
    from fastmaml.cli import build_parser
    from fastmaml.cliargs import config_overrides, parse_args

    parser = build_parser()
    args = parse_args(parser, ["fewshot", "train", "--run-dir", "r", "--precision", "bf16"])
    assert "train.precision=bf16" in config_overrides(args)
    args = parse_args(parser, ["fewshot", "evaluate", "--run-dir", "r", "--precision", "trained"])
    assert "eval.precision=trained" in config_overrides(args)
    args = parse_args(parser, ["sinusoid", "reproduce", "--precision", "auto"])
    assert "train.precision=auto" in config_overrides(args)
    assert not any("precision" in o for o in config_overrides(parse_args(parser, ["sinusoid", "train", "--run-dir", "r"])))
