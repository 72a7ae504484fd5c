"""Random search (``portablenn.sweep.sample``, ``portablenn sweep --trials``): the draws are the documented ones,
reproducible, within their ranges and log-uniform where asked; the command line trains exactly the members
``sample`` draws, refuses a bad range in one line, and plots a scatter instead of a heat map."""
import math

import numpy as np
import pytest

from portablenn.sweep import LogUniform, Uniform, grid, sample, sweep
from portablenn.validation import InputError

from _support import cli_run as _cli, table_rows as _table


def _three_digits(v):
    return float(f"{v:.3g}")


def test_sample_draws_what_the_docstring_says():
    """The reference, written from the docstring: setting k of SETTINGS draws from default_rng([search_seed, k]);
    a log-uniform range is exp(uniform(log low, log high)), a list a uniform index, each value to 3 digits."""
    members = sample(6, search_seed=3, lr=LogUniform(1e-3, 1.0), momentum=Uniform(0.0, 0.9), dropout=[0.0, 0.5])
    # SETTINGS = ("hidden", "lr", "l2", "momentum", "weight_decay", "dropout", "seed")
    lr = np.exp(np.random.default_rng([3, 1]).uniform(math.log(1e-3), math.log(1.0), 6))
    momentum = np.random.default_rng([3, 3]).uniform(0.0, 0.9, 6)
    dropout = np.array([0.0, 0.5])[np.random.default_rng([3, 5]).integers(0, 2, 6)]
    assert [m["lr"] for m in members] == [_three_digits(v) for v in lr]
    assert [m["momentum"] for m in members] == [_three_digits(v) for v in momentum]
    assert [m["dropout"] for m in members] == dropout.tolist()
    assert all(set(m) == {"lr", "momentum", "dropout"} for m in members)


def test_sample_is_reproducible_and_a_new_setting_leaves_the_others_draws_alone():
    a = sample(20, search_seed=7, lr=LogUniform(1e-4, 1.0))
    b = sample(20, search_seed=7, lr=LogUniform(1e-4, 1.0), l2=LogUniform(1e-6, 1e-2))
    c = sample(20, search_seed=8, lr=LogUniform(1e-4, 1.0))
    assert [m["lr"] for m in a] == [m["lr"] for m in b]
    assert [m["lr"] for m in a] != [m["lr"] for m in c]
    assert len({m["l2"] for m in b}) > 15


def test_a_log_uniform_range_spreads_over_the_decades_and_stays_inside():
    """Half of LogUniform(1e-4, 1)'s draws lie below 1e-2 (a uniform range would put 1% there); every draw, rounded,
    stays within the range, its ends included."""
    lr = np.array([m["lr"] for m in sample(4000, lr=LogUniform(1e-4, 1.0))])
    assert 0.46 < np.mean(lr < 1e-2) < 0.54
    assert 0.22 < np.mean(lr < 1e-3) < 0.28
    assert lr.min() >= 1e-4 and lr.max() <= 1.0
    assert all(v == _three_digits(v) for v in lr)
    flat = np.array([m["momentum"] for m in sample(4000, momentum=Uniform(0.9, 0.9999))])  # 0.99952 -> 1 -> 0.9999
    assert flat.min() >= 0.9 and flat.max() == 0.9999 and 0.94 < flat.mean() < 0.96


def test_seeds_cross_the_trials_and_a_list_is_drawn_from():
    members = sample(5, lr=LogUniform(0.01, 1.0), hidden=[(10,), (20, 20)], seed=[0, 1, 2])
    assert len(members) == 15
    for t in range(5):
        trial = members[3 * t:3 * t + 3]
        assert [m["seed"] for m in trial] == [0, 1, 2]
        assert len({(m["lr"], m["hidden"]) for m in trial}) == 1
    drawn = [m["hidden"] for m in sample(200, hidden=[(10,), (20, 20)], lr=Uniform(0.1, 0.2))]
    assert set(drawn) == {(10,), (20, 20)} and 70 < drawn.count((10,)) < 130
    assert {m["hidden"] for m in sample(3, hidden=(30,))} == {(30,)}  # one architecture, as grid reads it
    assert sample(2, lr=0.5) == [{"lr": 0.5}, {"lr": 0.5}]


def test_lists_alone_give_distinct_members_drawn_from_their_grid():
    """Without a range, as RandomizedSearchCV: no trial twice, all of them from the grid, at most its size."""
    lists = dict(lr=[0.1, 0.3, 1.0], momentum=[0.0, 0.5, 0.9], dropout=[0.0, 0.2])
    full = {tuple(sorted(m.items())) for m in grid(**lists)}
    for seed in range(5):
        members = sample(7, search_seed=seed, **lists)
        drawn = [tuple(sorted(m.items())) for m in members]
        assert len(set(drawn)) == 7 and set(drawn) <= full
    assert {tuple(sorted(m.items())) for m in sample(18, **lists)} == full
    assert sample(4, search_seed=2, **lists) == sample(4, search_seed=2, **lists)
    assert sample(4, search_seed=2, **lists) != sample(4, search_seed=3, **lists)
    with pytest.raises(InputError, match="19 trials, but the lists make only 18 different members"):
        sample(19, **lists)


@pytest.mark.parametrize("call, message", [
    (lambda: sample(0, lr=LogUniform(0.1, 1.0)), "trials must be a positive integer"),
    (lambda: sample(2, search_seed=-1), "search_seed"),
    (lambda: sample(2, rate=0.1), "unknown sweep settings"),
    (lambda: sample(2, momentum=Uniform(0.5, 1.0)), "momentum's range Uniform(0.5, 1)"),
    (lambda: sample(2, lr=Uniform(0.0, 1.0)), "lr's range"),
    (lambda: sample(2, hidden=Uniform(10, 20)), "hidden takes a list"),
    (lambda: sample(2, lr=[]), "lr has no values"),
    (lambda: LogUniform(0.0, 1.0), "0 < low < high"),
    (lambda: Uniform(1.0, 1.0), "low < high"),
    (lambda: Uniform(0.0, math.inf), "finite"),
])
def test_sample_refuses_bad_settings_by_name(call, message):
    with pytest.raises(InputError, match=None) as info:
        call()
    assert message in str(info.value)


def test_sampled_members_train_as_the_grid_of_the_same_values():
    """A random search is only another list of members: sweep trains the drawn ones as it trains the grid of
    their values (the same histories, member by member)."""
    from portablenn.datasets import spiral

    X, y = spiral(points_per_class=30)
    drawn = sample(3, search_seed=1, lr=LogUniform(0.1, 2.0), l2=LogUniform(1e-5, 1e-2))
    a = sweep(X, y, drawn, epochs=5, batch_size=None, dtype="float64")
    for k, m in enumerate(drawn):
        b = sweep(X, y, grid(lr=m["lr"], l2=m["l2"]), epochs=5, batch_size=None, dtype="float64")
        np.testing.assert_allclose(a.histories[k]["loss"], b.histories[0]["loss"], rtol=1e-12)


# -- the command line -----------------------------------------------------------------------------------------
def test_the_command_line_trains_the_members_sample_draws(capsys, tmp_path):
    code, out, err = _cli(capsys, "sweep", "--trials", "4", "--lr", "loguniform:0.1:2", "--l2", "uniform:0:0.001",
                          "--seeds", "2", "--search-seed", "5", "--epochs", "3", "--plot", str(tmp_path / "plots"))
    assert code == 0, err
    assert "8 members (4 random trials of lr loguniform 0.1..2, l2 uniform 0..0.001 (search seed 5) x 2 seeds)" in out
    rows = _table(out)
    head, body = rows[0], rows[1:]
    assert head[:4] == ["#", "lr", "l2", "seed"]
    expected = sample(4, search_seed=5, lr=LogUniform(0.1, 2.0), l2=Uniform(0.0, 0.001), seed=[0, 1])
    got = {int(r[0]): (float(r[1]), float(r[2]), int(r[3])) for r in body}
    assert got == {k: (m["lr"], m["l2"], m["seed"]) for k, m in enumerate(expected)}
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["sweep_curves.png", "sweep_scatter.png"]  # no heat map: the draws are no grid


def test_a_list_with_trials_is_drawn_from(capsys):
    code, out, err = _cli(capsys, "sweep", "--trials", "3", "--lr", "0.5,1", "--momentum", "0,0.9", "--epochs", "1")
    assert code == 0, err
    assert "3 random trials of lr from 0.5,1, momentum from 0,0.9" in out
    rows = _table(out)
    assert rows[0][:3] == ["#", "lr", "momentum"] and len(rows) == 1 + 3
    assert len({(r[1], r[2]) for r in rows[1:]}) == 3  # three different members of the 2 x 2 grid
    code, out, err = _cli(capsys, "sweep", "--trials", "5", "--lr", "0.5,1", "--momentum", "0,0.9", "--epochs", "1")
    assert code == 2 and "5 trials, but the lists make only 4 different members" in err


@pytest.mark.parametrize("argv, message", [
    (["--lr", "loguniform:0.1:1"], "--lr loguniform:0.1:1 is a range to draw from: give --trials N"),
    (["--trials", "2", "--lr", "loguniform:0:1"], "--lr: loguniform:0:1: a log-uniform range needs LOW > 0"),
    (["--trials", "2", "--lr", "uniform:1:0.1"], "--lr: uniform:1:0.1: LOW must be smaller than HIGH"),
    (["--trials", "2", "--l2", "loguniform:a:b"], "--l2: loguniform:a:b is not a range loguniform:LOW:HIGH"),
    (["--trials", "2", "--l2", "uniform:0:1:2"], "is not a range uniform:LOW:HIGH"),
    (["--trials", "2", "--momentum", "uniform:0.5:1"], "--momentum: uniform:0.5:1: 1 is out of range"),
    (["--trials", "2", "--dropout", "uniform:-0.1:0.5"], "--dropout: uniform:-0.1:0.5: -0.1 is out of range"),
    (["--trials", "0", "--lr", "loguniform:0.1:1"], "--trials must be a positive number"),
    (["--trials", "2", "--search-seed", "-1"], "--search-seed must be a non-negative integer"),
])
def test_bad_ranges_get_one_line_and_exit_2(capsys, argv, message):
    code, out, err = _cli(capsys, "sweep", "--epochs", "1", *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
