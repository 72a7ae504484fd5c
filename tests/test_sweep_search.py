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
    lr = np.array([m["lr"] for m in sample(4000, lr=LogUniform(1e-4, 1.0), l2=Uniform(0.0, 1.0))])  # l2: no repeat
    assert 0.46 < np.mean(lr < 1e-2) < 0.54
    assert 0.22 < np.mean(lr < 1e-3) < 0.28
    assert lr.min() >= 1e-4 and lr.max() <= 1.0
    assert all(v == _three_digits(v) for v in lr)
    flat = np.array([m["momentum"] for m in sample(4000, momentum=Uniform(0.9, 0.9999), l2=Uniform(0.0, 1.0))])
    assert flat.min() >= 0.9 and flat.max() == 0.9999 and 0.94 < flat.mean() < 0.96  # 0.99952 -> 1 -> 0.9999


def test_seeds_cross_the_trials_and_a_list_is_drawn_from():
    members = sample(5, lr=LogUniform(0.01, 1.0), hidden=[(10,), (20, 20)], seed=[0, 1, 2])
    assert len(members) == 15
    for t in range(5):
        trial = members[3 * t:3 * t + 3]
        assert [m["seed"] for m in trial] == [0, 1, 2]
        assert len({(m["lr"], m["hidden"]) for m in trial}) == 1
    drawn = [m["hidden"] for m in sample(200, hidden=[(10,), (20, 20)], lr=Uniform(0.1, 0.2))]
    assert set(drawn) == {(10,), (20, 20)} and 70 < drawn.count((10,)) < 130
    assert {m["hidden"] for m in sample(3, hidden=(30,), lr=[0.1, 0.2, 0.3])} == {(30,)}  # one, as grid reads it
    assert sample(1, lr=0.5) == [{"lr": 0.5}]
    with pytest.raises(InputError, match="2 trials, but no setting is drawn"):
        sample(2, lr=0.5, momentum=[0.9])  # two identical members


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


# -- found by the hostile review ----------------------------------------------------------------------------
def test_a_narrow_range_draws_inside_it_not_only_its_ends():
    """3 significant digits cannot tell 0.1234 from 0.1236: a range narrower than them still draws values spread
    over it (more digits), not just its two ends or one of them."""
    for r in (Uniform(0.1234, 0.1236), LogUniform(1.0001, 1.0009), Uniform(0.99, 0.999)):
        v = np.array([m["lr"] for m in sample(50, lr=r)])
        assert len(set(v)) == 50 and v.min() >= r.low and v.max() <= r.high, (r, sorted(set(v))[:5])
    # a wider one keeps 3 digits
    assert all(m["lr"] == _three_digits(m["lr"]) for m in sample(50, lr=Uniform(0.9, 0.99)))
    assert len({m["lr"] for m in sample(50, lr=Uniform(0.99, 0.999))} - {round(0.99 + k / 1000, 3) for k in range(10)})


def test_the_trials_are_different_members_and_no_seed_spread_is_invented(capsys):
    """Rounded to 3 digits, 60 draws of one decade repeat a value (two identical members, which the spread over
    seeds read as one setting run with 2 seeds): every trial is a different member."""
    members = sample(60, lr=LogUniform(0.1, 1.0))
    assert len({m["lr"] for m in members}) == 60
    crossed = sample(40, lr=LogUniform(0.1, 1.0), dropout=[0.0, 0.5], seed=[0, 1])
    assert len({(m["lr"], m["dropout"]) for m in crossed}) == 40 and len(crossed) == 80
    code, out, err = _cli(capsys, "sweep", "--trials", "60", "--lr", "loguniform:0.1:1", "--epochs", "1")
    assert code == 0, err
    assert "over seeds" not in out and len({r[1] for r in _table(out)[1:]}) == 60
    with pytest.raises(InputError, match="could not draw 150 different trials"):
        sample(150, momentum=Uniform(0.9, 0.9001), lr=[0.1])  # 0.9000 .. 0.9001 hold about 100 values


def test_adding_a_range_leaves_a_lists_draws_as_they_were():
    """The documented promise holds for lists too: a list's draws are setting k's stream's, with or without a
    range beside it (here none repeats an earlier trial, so none is drawn again)."""
    lr = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
    for seed in range(40):
        base = [lr[j] for j in np.random.default_rng([seed, 1]).integers(0, len(lr), 4)]
        if len(set(base)) == 4:
            break
    alone = [m["lr"] for m in sample(4, search_seed=seed, lr=lr)]
    beside = [m["lr"] for m in sample(4, search_seed=seed, lr=lr, l2=LogUniform(1e-5, 1e-2))]
    assert alone == beside == base


def test_a_list_repeating_a_value_is_refused():
    with pytest.raises(InputError, match="lr lists a value twice"):
        sample(2, lr=[0.1, 0.1])
    with pytest.raises(InputError, match="seed takes a list"):
        sample(2, lr=[0.1, 0.3], seed=Uniform(0, 3))


def test_each_stack_line_names_the_members_it_holds(capsys):
    """Drawn architectures interleave: a stack's members are not a run of numbers."""
    code, out, err = _cli(capsys, "sweep", "--trials", "5", "--hidden", "10,20", "5", "--lr", "loguniform:0.1:1",
                          "--search-seed", "1", "--epochs", "1")
    assert code == 0, err
    by_arch = {}
    for r in _table(out)[1:]:
        by_arch.setdefault(r[1], []).append(int(r[0]))
    for line in (line for line in out.splitlines() if line.startswith("stack of")):
        arch = "x".join(line.split("[")[1].split("]")[0].split(", ")[1:-1])
        named = []
        for part in line.split("(member")[1].strip("s )").split(", "):
            a, _, b = part.partition("..")
            named += list(range(int(a), int(b or a) + 1))
        assert sorted(by_arch[arch]) == named, line
    code, out, err = _cli(capsys, "sweep", "--trials", "2", "--hidden", "5,10", "--epochs", "1")
    assert code == 0 and "(members 0..0)" not in out and "(member 0)" in out, out


def _scatter_of(monkeypatch, tmp_path, members, finals, field="val_error", diverged=()):
    """The axes ``sweep_plots._scatter`` draws for members with the given final (field, val_loss) values."""
    pytest.importorskip("matplotlib")
    import portablenn.plots as plots_module
    from portablenn.cli import sweep_plots
    from portablenn.sweep import SweepResult, _settings

    full = [_settings(m, k) for k, m in enumerate(members)]
    result = SweepResult(full, [str(k) for k in range(len(full))])
    for k, (value, loss) in enumerate(finals):
        result.histories[k].records.append({"epoch": 1, "loss": loss, "error": value, field: value,
                                            "val_loss": loss})
    for k in diverged:
        result.diverged[k] = {"epoch": 1, "step": 1, "message": "diverged"}
    figures = []
    monkeypatch.setattr(plots_module, "_save", lambda fig, path: figures.append(fig) or path)
    axes = [k for k in ("lr", "l2") if len({m.get(k) for m in members}) > 1]
    sweep_plots._scatter(tmp_path / "s.png", result, {"lr": LogUniform(0.01, 1.0)}, axes, field)
    return result, figures[0].axes[0]


def _labelled(ax, prefix):
    return [c for c in ax.collections if str(c.get_label()).startswith(prefix)]


def test_the_scatter_rings_the_member_the_ranking_puts_first(monkeypatch, tmp_path):
    """Two trials tie on the validation error: the ranking (and the table) breaks the tie by the validation
    loss, and so must the ring."""
    members = [{"lr": 0.1, "l2": 1e-4}, {"lr": 0.3, "l2": 1e-3}, {"lr": 0.5, "l2": 1e-2}]
    result, ax = _scatter_of(monkeypatch, tmp_path, members, [(0.05, 0.40), (0.05, 0.20), (0.30, 0.9)])
    best = result.ranking("val_error")[0]
    assert best == 1
    (ring,) = _labelled(ax, "best")
    np.testing.assert_allclose(ring.get_offsets(), [[0.3, 1e-3]])
    assert ax.get_xscale() == "log"


def test_the_one_setting_scatter_shows_the_diverged_trials(monkeypatch, tmp_path):
    """One drawn setting: the metric is the y axis; a trial that diverged, or ended with an infinite metric,
    is a cross at a finite height (an infinite one would not be drawn)."""
    members = [{"lr": v} for v in (0.01, 0.1, 0.5, 0.9)]
    _, ax = _scatter_of(monkeypatch, tmp_path, members,
                        [(0.3, 0.5), (0.1, 0.2), (math.inf, math.inf), (math.nan, math.nan)], diverged=[3])
    (crosses,) = _labelled(ax, "diverged")
    offsets = np.asarray(crosses.get_offsets())
    assert offsets.shape == (2, 2) and np.isfinite(offsets).all()
    np.testing.assert_allclose(offsets[:, 0], [0.5, 0.9])
    _, ax = _scatter_of(monkeypatch, tmp_path, members, [(math.nan, math.nan)] * 4, diverged=range(4))
    (crosses,) = _labelled(ax, "diverged")
    assert np.isfinite(np.asarray(crosses.get_offsets())).all() and ax.get_xscale() == "log"
    assert len(ax.get_yticks()) == 0  # no metric to read off


@pytest.mark.parametrize("argv, message", [
    (["--trials", "3"], "--trials 3 has nothing to draw"),
    (["--trials", "3", "--lr", "0.1"], "--trials 3 has nothing to draw"),
    (["--trials", "2", "--lr", "0.1,loguniform:0.01:1"], "a range is one value of its own"),
    (["--lr", "0.1,1", "--search-seed", "3"], "--search-seed seeds the draws of --trials"),
])
def test_random_search_misuse_gets_one_clear_line(capsys, argv, message):
    code, out, err = _cli(capsys, "sweep", "--epochs", "1", *argv)
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_header_names_a_range_by_the_bounds_given(capsys):
    code, out, err = _cli(capsys, "sweep", "--trials", "2", "--lr", "uniform:0.12345678:0.9", "--epochs", "1")
    assert code == 0, err
    assert "lr uniform 0.12345678..0.9" in out


def test_a_single_trial_shows_what_it_drew(capsys):
    """One trial: nothing varies between members, but the table must still say which lr was drawn."""
    code, out, err = _cli(capsys, "sweep", "--trials", "1", "--lr", "loguniform:0.1:1", "--seeds", "2",
                          "--epochs", "1")
    assert code == 0, err
    rows = _table(out)
    assert rows[0][:3] == ["#", "lr", "seed"]
    assert {float(r[1]) for r in rows[1:]} == {sample(1, lr=LogUniform(0.1, 1.0))[0]["lr"]}


def test_the_progress_line_names_the_member_the_table_puts_first(capsys):
    """Three members tied on the validation error after one epoch: the progress line breaks the tie by the
    validation loss, as the table's ranking does, not by the members' order."""
    code, out, err = _cli(capsys, "sweep", "--lr", "0.001,0.002,0.003", "--epochs", "1")
    assert code == 0, err
    rows = _table(out)
    assert len({r[-2] for r in rows[1:]}) == 1  # the tie: one validation error
    progress = next(line for line in out.splitlines() if line.startswith("epoch 1/1: best"))
    assert f"(lr={rows[1][1]})" in progress and rows[1][1] != "0.001"


def test_an_infinite_figure_spreads_without_a_warning(capsys):
    """A regression member whose loss overflows to inf (but not NaN): the spread over seeds prints inf, no NumPy
    warning line, and the train loss in the table's format."""
    from portablenn.sweep import SweepResult

    from portablenn.cli.sweep import _print_spread

    result = SweepResult([{"lr": 1.0, "seed": 0}, {"lr": 1.0, "seed": 1}], ["seed=0", "seed=1"])
    result.histories[0].records = [{"epoch": 1, "loss": math.inf, "val_rmse": math.inf}]
    result.histories[1].records = [{"epoch": 1, "loss": 2.0, "val_rmse": 1.0}]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _print_spread(result, ["seed"], "val_rmse")
    out = capsys.readouterr().out
    assert "all: inf +- nan over 2 seeds (train loss inf)" in out


def test_a_users_file_named_like_the_scatter_is_refused_before_training(capsys, tmp_path):
    """sweep_scatter.png is one of --plot's names: a file portablenn did not write is left alone, before any
    training (nothing printed on stdout), unless --overwrite."""
    folder = tmp_path / "plots"
    folder.mkdir()
    mine = folder / "sweep_scatter.png"
    mine.write_text("mine")
    code, out, err = _cli(capsys, "sweep", "--trials", "2", "--lr", "loguniform:0.1:1", "--epochs", "1",
                          "--plot", str(folder))
    assert code == 2 and out == "" and "sweep_scatter.png exists and is not a PNG image" in err
    assert mine.read_text() == "mine"


# -- the hostile review (#20) ---------------------------------------------------------------------------------
def _no_members(*args, **kwargs):
    raise AssertionError("the members were built: the count should have been refused first")


@pytest.mark.parametrize("argv", [
    ["--trials", "1000000000", "--lr", "loguniform:0.1:1"],
    ["--trials", "1000000000", "--lr", "loguniform:0.1:1", "--save-all", "DIR"],
    ["--seeds", "1000000000"],
    ["--lr", "0.1,0.3", "--seeds", "1000000000"],
])
def test_a_sweep_too_large_for_any_memory_is_refused_before_its_members_are_built(capsys, monkeypatch, tmp_path,
                                                                                  argv):
    """10**9 members hold far more than any machine's memory whatever the data (their settings and records alone):
    one line and exit 2 at once, not a list of 10**9 members or seeds built first (minutes, then the OOM killer)."""
    import portablenn.cli.sweep as cli_sweep

    monkeypatch.setattr(cli_sweep, "sample", _no_members)
    monkeypatch.setattr(cli_sweep, "grid", _no_members)
    argv = [str(tmp_path / "all") if a == "DIR" else a for a in argv]
    code, out, err = _cli(capsys, "sweep", "--epochs", "1", *argv)
    assert code == 2 and out == "", err
    assert "members need at least" in err and "whatever the data" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_more_trials_than_the_lists_make_is_refused_before_drawing(monkeypatch):
    """Lists alone make a known number of members: asking for more is refused before anything is drawn (10**9
    trials drew 10**9 list indices first, 8 GB)."""
    import portablenn.sweep as sweep_module

    monkeypatch.setattr(sweep_module.np.random, "default_rng", _no_members)
    with pytest.raises(InputError, match="the lists make only 2 different members"):
        sample(10**9, lr=[0.1, 1.0])


def test_ranking_by_a_field_no_member_recorded_is_refused_not_an_unranked_table():
    """A typo (``val_eror``), or ``val_error`` from a sweep without validation rows, made every member's figure NaN:
    ``table`` and ``ranking`` then silently ordered the members by the tie-break loss or their index."""
    from portablenn.sweep import SweepResult

    result = SweepResult([{"lr": 0.1}, {"lr": 1.0}], ["lr=0.1", "lr=1"])
    result.histories[0].records = [{"epoch": 1, "loss": 0.5, "error": 0.3, "seconds": 0.1}]
    result.histories[1].records = [{"epoch": 1, "loss": 0.9, "error": 0.2, "seconds": 0.1}]
    assert result.ranking("error") == [1, 0]
    for field in ("val_error", "eror"):
        with pytest.raises(InputError, match=f"no member recorded {field!r}; their records hold loss, error"):
            result.table(field)
    empty = SweepResult([{"lr": 0.1}], ["lr=0.1"])  # nothing recorded (diverged at its first step): nothing to check
    assert empty.ranking("val_error") == [0]


def test_a_list_naming_one_value_twice_in_two_spellings_is_refused():
    """1 and 1.0 (or numpy's 1.0) are one learning rate, 10 and (10,) one width: the trials must be different
    members, and the repr-based check let ``sample(2, lr=[1, 1.0])`` train one member twice."""
    for values in ({"lr": [1, 1.0]}, {"lr": [np.float64(0.5), 0.5]}, {"hidden": [10, (10,)]}):
        with pytest.raises(InputError, match="lists a value twice"):
            sample(2, **values)


def test_a_member_with_one_epoch_is_drawn_as_a_point_in_the_learning_curves(monkeypatch, tmp_path):
    """A one-epoch sweep (or a member that diverged in its second epoch) has one record per curve: a line
    through one point draws nothing, so the curves mark it; longer curves stay plain lines."""
    pytest.importorskip("matplotlib")
    import portablenn.plots as plots_module
    from portablenn.cli import sweep_plots
    from portablenn.sweep import SweepResult, _settings

    full = [_settings({"lr": lr}, k) for k, lr in enumerate((0.1, 0.3))]
    result = SweepResult(full, ["0", "1"])
    for k, epochs in enumerate((1, 3)):
        for e in range(1, epochs + 1):
            result.histories[k].records.append({"epoch": e, "loss": 1.0 / e, "error": 0.5, "val_error": 0.4 + k,
                                                "val_loss": 1.0})
    figures = []
    monkeypatch.setattr(plots_module, "_save", lambda fig, path: figures.append(fig) or path)
    sweep_plots.plots(tmp_path, result, {"lr": [0.1, 0.3]}, ["lr"], "val_error")
    for ax in figures[0].axes:
        one, three = ax.get_lines()  # ranking order: member 0 (val_error 0.4) first
        assert len(one.get_xdata()) == 1 and one.get_marker() == "o"
        assert len(three.get_xdata()) == 3 and three.get_marker() in ("None", None, "")
