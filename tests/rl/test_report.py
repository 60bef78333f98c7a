"""The RL report's paired and per-task tables, from a hand-made results dict."""

from fastmaml.apps.rl.report import group_table, learned_rate_lines, paired_table


def rows(lines, first_cell):
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith(f"| {first_cell} |")]


def test_paired_table_is_the_per_task_difference():
    per_task = {"maml": [[0.0, 10.0], [0.0, 20.0], [0.0, 6.0]],
                "pretrained": [[1.0, 9.0], [1.0, 15.0], [1.0, 7.0]],  # MAML − pretrained: [−1, −1, −1], [1, 5, −1]
                "oracle": [[5.0, 5.0]] * 3}
    lines = paired_table(per_task, steps=2)
    (row,) = rows(lines, "pretrained")
    assert row[1] == "-1.00 ± 0.00 (0 of 3)"
    # mean 5/3, sample sd of [1, 5, −1] = sqrt(28/3), CI = 1.96 · sd / sqrt(3)
    half = 1.959963984540054 * (28 / 3) ** 0.5 / 3 ** 0.5
    assert row[2] == f"+1.67 ± {half:.2f} (2 of 3)"
    assert not rows(lines, "oracle") and not rows(lines, "random")  # the oracle is not adapted
    assert paired_table({"pretrained": [[1.0]]}, steps=1) == []


def test_group_table_splits_a_discrete_task_distribution_and_skips_a_continuous_one():
    report = {"test_tasks": [1.0, -1.0, 1.0, -1.0],
              "per_task_returns": {"maml": [[10.0], [-2.0], [14.0], [-4.0]]}}
    found = {r[1]: r[2] for r in rows(group_table(report, steps=1), "MAML")}
    assert set(found) == {"-1 (2 tasks)", "1 (2 tasks)"}
    assert found["1 (2 tasks)"].startswith("12.00 ±") and found["-1 (2 tasks)"].startswith("-3.00 ±")
    continuous = {"test_tasks": [[0.1, 0.2], [0.3, 0.1], [0.0, 0.5], [0.2, 0.2], [0.4, 0.4]],
                  "per_task_returns": {"maml": [[1.0]] * 5}}
    assert group_table(continuous, steps=1) == []
    assert group_table({**continuous, "test_tasks": continuous["test_tasks"][:3],
                        "per_task_returns": {"maml": [[1.0]] * 3}}, steps=1) == []  # few, but no task repeats
    assert group_table({"per_task_returns": {"maml": [[1.0]]}}, steps=1) == []  # results written before test_tasks


def test_learned_step_sizes_are_reported_per_step_or_summarised_per_element():
    cfg = {"maml": {"inner_lr_mode": "per_layer_step", "inner_lr": 0.1}}
    (line,) = learned_rate_lines({"config": cfg, "learned_inner_lrs": {"log_std": [0.25, 0.125], "mean.0.bias": [0.1, 0.05]}})
    assert "per inner step" in line and "log_std 0.25 / 0.125" in line and "mean.0.bias 0.1 / 0.05" in line
    cfg = {"maml": {"inner_lr_mode": "per_element", "inner_lr": 0.1}}
    (line,) = learned_rate_lines({"config": cfg, "learned_inner_lrs": {"mean.0.weight": {"mean": 0.2, "min": -0.5, "max": 1.5}}})
    assert "per element" in line and "mean.0.weight mean 0.2 (-0.5 to 1.5)" in line
    assert learned_rate_lines({"config": cfg, "learned_inner_lrs": {}}) == []
    assert learned_rate_lines({"config": cfg}) == []  # reports written before step sizes could be learned
