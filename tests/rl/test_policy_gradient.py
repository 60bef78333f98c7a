"""The inner step's ingredients: REINFORCE is unbiased, returns, the linear baseline, advantages."""

import torch

from fastmaml.apps.rl.advantages import advantages, discounted_returns, fit_linear_baseline, baseline_features
from fastmaml.apps.rl.losses import INNER_LOSSES, reinforce_loss
from fastmaml.apps.rl.rollout import Trajectories


def test_reinforce_gradient_is_unbiased_on_a_gaussian_bandit():
    """a ~ N(μ, σ²), r = −(a − c)²: E[r] = −(μ − c)² − σ², so ∇μ = −2(μ − c), ∇logσ = −2σ² (per dimension)."""
    mu = torch.tensor([0.3, -0.2], dtype=torch.float64)
    log_std = torch.tensor([-0.5, 0.1], dtype=torch.float64)
    c = torch.tensor([0.8, 0.4], dtype=torch.float64)
    n = 200_000
    g = torch.Generator().manual_seed(0)  # fixed: the test cannot flake
    a = mu + log_std.exp() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    r = -((a - c) ** 2).sum(-1)
    old = torch.cat([mu, log_std]).expand(n, 4)
    y = torch.cat([a, r[:, None], torch.ones(n, 1, dtype=torch.float64), old], dim=1)

    # per-sample gradients of the loss (its mean is the estimate) for a standard error
    dist = torch.cat([mu, log_std]).expand(n, 4).clone().requires_grad_(True)
    per_sample = -torch.autograd.grad(reinforce_loss(dist, y) * n, dist)[0]  # ∇ log π(a_i) r_i
    estimate, se = per_sample.mean(0), per_sample.std(0) / n ** 0.5
    true = torch.cat([-2 * (mu - c), -2 * torch.exp(2 * log_std)])
    assert ((estimate - true).abs() < 4 * se).all(), (estimate, true, se)
    assert (se < 0.05 * true.abs()).all()  # and the check is sharp enough to catch a wrong gradient
    # the same number through the loss on the shared parameters
    theta = torch.cat([mu, log_std]).requires_grad_(True)
    grad = torch.autograd.grad(reinforce_loss(theta.expand(n, 4), y), theta)[0]
    torch.testing.assert_close(-grad, estimate)


def _traj(rewards, mask, obs=None):
    t, n, h = rewards.shape
    obs = torch.randn(t, n, h, 2, generator=torch.Generator().manual_seed(1)) if obs is None else obs
    return Trajectories(obs=obs, actions=torch.zeros(t, n, h, 2), rewards=rewards * mask, mask=mask,
                        dists=torch.zeros(t, n, h, 4))


def test_discounted_returns_equal_a_backward_recursion():
    r = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = discounted_returns(r, 0.9)
    ref = torch.zeros_like(r)
    acc = torch.zeros(2, 3, dtype=torch.float64)
    for t in reversed(range(7)):
        acc = r[..., t] + 0.9 * acc
        ref[..., t] = acc
    torch.testing.assert_close(out, ref)


def test_linear_baseline_is_a_per_task_least_squares_fit_over_valid_steps():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(2, 4, 100, generator=g)  # the time features t/100 need a long horizon to be well posed
    mask = torch.ones(2, 4, 100)
    mask[0, 1, 60:] = 0  # an episode that ended early
    traj = _traj(rewards, mask)
    returns = discounted_returns(traj.rewards, 0.99)
    values = fit_linear_baseline(traj, returns, reg=1e-10)
    feats = baseline_features(traj.obs).double()
    for task in range(2):
        keep = mask[task].bool()
        x, y = feats[task][keep], returns[task][keep].double()
        coef = torch.linalg.lstsq(x, y[:, None]).solution
        torch.testing.assert_close(values[task][keep].double(), (x @ coef).squeeze(-1), rtol=1e-4, atol=1e-4)


def test_advantages_are_centered_per_task_and_zero_after_an_episode_ends():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 5, 8, generator=g) - torch.arange(3.0).view(3, 1, 1) * 10  # different scale per task
    mask = torch.ones(3, 5, 8)
    mask[1, 2, 3:] = 0
    adv = advantages(_traj(rewards, mask), discount=0.99, gae_lambda=1.0, center=True)
    assert (adv[1, 2, 3:] == 0).all()
    for task in range(3):
        a = adv[task][mask[task].bool()]
        assert abs(float(a.mean())) < 1e-5 and abs(float(a.std(unbiased=False)) - 1) < 1e-4
    # λ = 1 without centering: return-to-go minus the fitted baseline
    traj = _traj(rewards, mask)
    raw = advantages(traj, 0.99, 1.0, center=False)
    returns = discounted_returns(traj.rewards, 0.99)
    torch.testing.assert_close(raw, (returns - fit_linear_baseline(traj, returns)) * mask, rtol=1e-4, atol=1e-4)


def _bandit(mu, log_std, c, n, seed=0):
    """n pulls of a ~ N(μ, σ²) with reward r = −(a − c)², packed as loss targets (advantage = r)."""
    g = torch.Generator().manual_seed(seed)
    a = mu + log_std.exp() * torch.randn(n, mu.shape[0], generator=g, dtype=torch.float64)
    r = -((a - c) ** 2).sum(-1)
    old = torch.cat([mu, log_std]).expand(n, 2 * mu.shape[0])
    return torch.cat([a, r[:, None], torch.ones(n, 1, dtype=torch.float64), old], dim=1)


def test_lvc_inner_loss_takes_the_same_step_as_reinforce_but_has_the_true_curvature():
    """One-step bandit: E[r] = −(μ − c)² − σ², so ∂²E[r]/∂μ² = −2. The LVC loss's Hessian estimates it
    (E[(∇²log π + ∇log π ∇log πᵀ) r]); log π·r's Hessian (E[∇²log π · r] = −E[r]/σ²) does not."""
    mu = torch.tensor([0.3], dtype=torch.float64)
    log_std = torch.tensor([-0.5], dtype=torch.float64)
    c = torch.tensor([0.8], dtype=torch.float64)
    n = 400_000
    y = _bandit(mu, log_std, c, n)

    def loss_of(loss_fn):
        return lambda m: loss_fn(torch.cat([m, log_std]).expand(n, 2), y)

    grads = {name: torch.autograd.functional.jacobian(loss_of(fn), mu) for name, fn in INNER_LOSSES.items()}
    torch.testing.assert_close(grads["lvc"], grads["reinforce"])  # the inner step itself is unchanged
    curv = {name: -float(torch.autograd.functional.hessian(loss_of(fn), mu)) for name, fn in INNER_LOSSES.items()}
    assert abs(curv["lvc"] - (-2.0)) < 0.1, curv
    expected_reinforce = float(((mu - c) ** 2 + log_std.exp() ** 2) / log_std.exp() ** 2)  # −E[r]/σ² > 0
    assert abs(curv["reinforce"] - expected_reinforce) < 0.1 and abs(curv["reinforce"] - (-2.0)) > 0.5, curv
