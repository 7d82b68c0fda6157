"""The synthetic alignment tasks and the alignment / trap experiments at small size."""

import csv
import os

import numpy as np
import pytest
from scipy import stats

from experiments import alignment, trap
from experiments.configs import alignment as alignment_config
from experiments.configs import trap as trap_config
from gje_jax.data import synthetic


@pytest.mark.parametrize("name", sorted(synthetic.TASKS))
def test_true_conditional_is_a_density_matching_the_sampler(name):
    task = synthetic.make_task(name)
    rng = np.random.default_rng(0)
    c, t = task.sample(rng, 20000)
    assert c.shape == (20000, task.context_dim) and t.shape == (20000, task.target_dim)
    assert c.dtype == np.float32 and t.dtype == np.float32
    # Samples of the truth land on its branches at the 3-sigma rate.
    rate = float(np.mean(task.on_branch(c, t[:, None, :])))
    assert rate > 0.99
    # exp(true_log_prob(c, .)) integrates to one over t (grid quadrature), at a few contexts.
    for ci in c[:3]:
        if task.target_dim == 1:
            grid = np.linspace(-6, 6, 4001)[:, None]
            dens = np.exp(task.true_log_prob(np.repeat(ci[None], len(grid), 0), grid))
            total = np.trapezoid(dens, grid[:, 0])
        else:
            g = np.linspace(-3, 3, 301)
            tt = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
            dens = np.exp(task.true_log_prob(np.repeat(ci[None], len(tt), 0), tt))
            total = dens.sum() * (g[1] - g[0]) ** 2
        assert total == pytest.approx(1.0, abs=2e-3)
    # The true conditional mean agrees with the samples' mean (all contexts pooled, by
    # the tower rule E[t] = E[E[t | c]]).
    np.testing.assert_allclose(t.mean(0), task.true_mean(c).mean(0), atol=0.05)


def test_two_branch_density_against_scipy():
    task = synthetic.make_task("two_branch", noise=0.2)
    c = np.array([[-1.0], [0.5], [2.0]])
    t = np.array([[0.3], [-1.1], [1.4]])
    g = 1.0 + 0.25 * c[:, 0]
    ref = np.log(0.5 * stats.norm(g, 0.2).pdf(t[:, 0]) + 0.5 * stats.norm(-g, 0.2).pdf(t[:, 0]))
    np.testing.assert_allclose(task.true_log_prob(c, t), ref, rtol=1e-10)
    with pytest.raises(ValueError, match="Unknown alignment task 'tow_branch'"):
        synthetic.make_task("tow_branch")
    with pytest.raises(ValueError, match="ring needs target_dim = 2"):
        synthetic.make_task("ring", target_dim=1)


def _small_alignment(num_steps=800, **overrides):
    c = alignment_config.get_config()
    c.unlock()
    c.num_test, c.num_samples = 500, 16
    c.train.data.num_examples, c.train.batch_size = 4096, 256
    c.train.num_steps = c.train.checkpoint_every = num_steps
    for k, v in overrides.items():
        c[k] = v
    return c


def test_two_branch_gmje_recovers_modes_predictor_lands_between(tmp_path, one_device):
    config = _small_alignment(600, methods=("predictor (MSE)", "gje", "gmje"))
    rows = alignment.run(config, str(tmp_path), progress=False)
    by = {r["method"]: r for r in rows}
    gmje = by["GMJE prototypes (SGD)"]
    assert gmje["recall"] >= 0.95 and gmje["precision"] >= 0.9, gmje
    assert by["predictor (MSE)"]["precision"] <= 0.2
    # GJE is one Gaussian: its samples straddle both branches, with a predictive std that
    # covers them (g(c) >= 0.5 here, the mean is ~0).
    for label in ("GJE batch, lambda_geo=1", "GJE ema", "GJE param"):
        assert by[label]["cond_std"] >= 0.9 and by[label]["precision"] < 0.5, by[label]
    assert gmje["nll"] < by["GJE batch, lambda_geo=1"]["nll"] - 1.0
    # Calibration: coverage grows with the level; one Gaussian over two branches is visibly
    # miscalibrated (ECE 0.12 at full size), the mixture much less (0.005 there).
    for r in rows:
        covers = [r[f"cover{p}"] for p in (50, 80, 90, 95)]
        assert covers == sorted(covers) and 0.0 <= covers[0] and covers[-1] <= 1.0, r
    assert gmje["ece"] < by["GJE batch, lambda_geo=1"]["ece"] - 0.05, (gmje, by["GJE batch, lambda_geo=1"])
    assert os.path.exists(tmp_path / "alignment_two_branch.png")
    assert os.path.exists(tmp_path / "alignment_two_branch_calibration.png")
    with open(tmp_path / "alignment_results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "| two_branch | GMJE prototypes (SGD) |" in open(tmp_path / "alignment_results.md").read()


def test_control_gje_matches_the_true_conditional(tmp_path, one_device):
    config = _small_alignment(methods=("GJE batch, lambda_geo=1",), run_tasks=("control",))
    (row,) = alignment.run(config, str(tmp_path), progress=False)
    # Within 0.05 nats of the true conditional (the README's full-size run: +4 %, 0.009 nats).
    # This 800-step run's gap is 0.01-0.05 nats at seeds 0-6 but one (0.06-0.11), and moves
    # by ~0.01 with float-level changes to the kernels, so a 5 % (0.013 nats) bound here
    # would test rounding; a GJE that ignored the c-t correlation (a marginal Gaussian for t)
    # would be over 1.5 nats off (NLL 1.9, measured).
    assert row["nll"] - row["truth_nll"] <= 0.05, row


def test_trap_naive_collapses_while_geometry_keeps_rank(tmp_path, one_device):
    config = trap_config.get_config("runlocal")
    config.unlock()
    config.train.num_steps = 300
    config.eval_every = 100
    config.train.optim.name = "sgd"
    config.train.optim.lr = 0.05
    config.train.optim.warmup_steps = 0
    config.train.optim.schedule = "constant"
    config.rows = (
        ("GJE batch, lambda_geo=0 (naive)", dict(name="gje", estimator="batch", lambda_geo=0.0)),
        ("GJE batch, lambda_geo=1", dict(name="gje", estimator="batch", lambda_geo=1.0)),
    )
    naive, geo = trap.run(config, str(tmp_path), progress=False)
    assert naive["std_fall"] >= 100.0, naive
    # Rank kept: above half the embedding's width (the joint [c ; t] has twice it).
    assert geo["std_fall"] < 10.0 and geo["effective_rank_end"] > geo["dim"] / 4 and geo["kept_rank"], geo
    assert os.path.exists(tmp_path / "trap_curves.png") and os.path.exists(tmp_path / "trap_results.md")
