"""Learning-rate schedules (portablenn.schedules) against their formulas written again here in plain Python and
NumPy (run in CI), against torch.optim.lr_scheduler and scikit-learn's own rules when installed; the optimizers'
scheduled learning rate step by step on every device against the NumPy oracle (SGD with momentum under a changing
lr is Keras's SGD); the SGD-in-the-GEMMs step against the plain one; configs and state through JSON; bad
arguments. The tests through ``fit(schedule=...)`` skip until ``fit`` takes the keyword."""
import inspect
import json
import math
import warnings

import numpy as np
import pytest

import portablenn as pn
from portablenn.data import DeviceData
from portablenn.registry import SCHEDULES
from portablenn.schedules import Adaptive, CosineWarmup, InverseScaling, ReduceOnPlateau, Schedule, StepDecay

import _oracle as oracle
from _support import classification_data, require_dtype
from _tolerances import assert_close, assert_state_close


# -- the formulas, written again ---------------------------------------------------------------------------
def step_decay_oracle(step_size, gamma, steps_per_epoch, epochs):
    """torch's StepLR, chainable form: the factor is multiplied by gamma at every ``step_size``-th epoch start."""
    out, f = [], 1.0
    for epoch in range(epochs):
        if epoch and epoch % step_size == 0:
            f *= gamma
        out += [f] * steps_per_epoch
    return np.array(out)


def cosine_oracle(warmup_steps, total, min_factor, steps):
    """Linear warmup s/W for s = 1..W, then eta_min + (1 - eta_min)(1 + cos(pi t / (T - W))) / 2 for
    t = s - 1 - W, held at eta_min once t reaches T - W."""
    s = np.arange(1, steps + 1, dtype=np.float64)
    t, length = s - 1 - warmup_steps, total - warmup_steps
    progress = np.where(t >= length, 1.0, t / max(length, 1))
    cosine = min_factor + (1 - min_factor) * (1 + np.cos(np.pi * progress)) / 2
    return np.where(s <= warmup_steps, s / max(warmup_steps, 1), cosine)


def plateau_oracle(values, lr, *, factor, patience, threshold, threshold_mode="rel", mode="min", cooldown=0,
                   min_lr=0.0, eps=1e-8):
    """torch.optim.lr_scheduler.ReduceLROnPlateau's documented rule; the lr after each value."""
    sign = 1 if mode == "min" else -1
    best, bad, cool, out = sign * math.inf, 0, 0, []
    for value in values:
        if threshold_mode == "rel":
            better = value < best * (1 - threshold) if mode == "min" else value > best * (1 + threshold)
        else:
            better = value < best - threshold if mode == "min" else value > best + threshold
        if better:
            best, bad = value, 0
        else:
            bad += 1
        if cool > 0:
            cool, bad = cool - 1, 0
        if bad > patience:
            if lr - max(lr * factor, min_lr) > eps:
                lr = max(lr * factor, min_lr)
            cool, bad = cooldown, 0
        out.append(lr)
    return out


def adaptive_oracle(values, lr, *, tol, n_iter_no_change, mode="min"):
    """scikit-learn's MLP with learning_rate="adaptive": BaseMultilayerPerceptron._update_no_improvement_count
    (training loss, or validation score with early_stopping) then SGDOptimizer.trigger_stopping.
    Returns the lr after each epoch and the epoch (1-based) it stops at, or None."""
    best = math.inf if mode == "min" else -math.inf
    count, out = 0, []
    for epoch, value in enumerate(values, start=1):
        if mode == "min":
            count = count + 1 if value > best - tol else 0
            best = min(best, value) if value < best else best
        else:
            count = count + 1 if value < best + tol else 0
            best = value if value > best else best
        if count > n_iter_no_change:
            if lr <= 1e-6:
                out.append(lr)
                return out, epoch
            lr /= 5.0
            count = 0
        out.append(lr)
    return out, None


def factors(schedule, steps):
    return np.array([schedule.factor(s) for s in range(1, steps + 1)])


# -- each schedule's factors against its formula ---------------------------------------------------------
@pytest.mark.parametrize("step_size, gamma, spe, epochs", [(1, 0.5, 3, 6), (2, 0.1, 4, 7), (3, 0.9, 1, 10)])
def test_step_decay_factors_follow_the_formula(step_size, gamma, spe, epochs):
    schedule = StepDecay(step_size, gamma).start(spe, epochs, 50)
    np.testing.assert_allclose(factors(schedule, spe * epochs), step_decay_oracle(step_size, gamma, spe, epochs),
                               rtol=1e-14)
    assert schedule.factor(1) == 1.0 and schedule.factor(spe * step_size) == 1.0
    assert schedule.factor(spe * step_size + 1) == gamma  # the first step of epoch step_size (0-based) drops


@pytest.mark.parametrize("warmup, min_factor, spe, epochs, length, warmup_steps", [
    (0, 0.0, 4, 5, None, 0),
    (1, 0.0, 4, 5, None, 4),
    (1.5, 0.1, 4, 5, None, 6),
    (0.5, 0.2, 5, 3, None, 3),    # 2.5 steps round half up to 3
    (0.01, 0.0, 5, 3, None, 1),   # a warmup is never zero steps
    (2, 0.05, 3, 10, 4, 6),       # its own length: 4 epochs, then held at min_factor
    (3, 0.0, 2, 3, None, 6),      # all warmup
])
def test_cosine_warmup_factors_follow_the_formula(warmup, min_factor, spe, epochs, length, warmup_steps):
    schedule = CosineWarmup(warmup, min_factor, length).start(spe, epochs, 50)
    total = (length or epochs) * spe
    steps = epochs * spe + 3  # and past the end
    got = factors(schedule, steps)
    np.testing.assert_allclose(got, cosine_oracle(warmup_steps, total, min_factor, steps), rtol=1e-14, atol=1e-15)
    assert got[0] > 0  # never a zero lr
    if warmup_steps:
        assert got[warmup_steps - 1] == 1.0 and got[0] == 1.0 / warmup_steps
    if total > warmup_steps:
        assert got[warmup_steps] == 1.0  # the cosine starts at its peak (t = 0)
    assert got[-1] == pytest.approx(min_factor)  # past the schedule's end


@pytest.mark.parametrize("power_t, rows, spe", [(0.5, 37, 4), (0.25, 10, 1), (1.0, 3, 2), (0.0, 8, 3)])
def test_inverse_scaling_follows_scikit_learns_update(power_t, rows, spe):
    """sklearn's fit loop: every epoch trains with the current rate, then ``t_ += n_samples`` and
    ``learning_rate = learning_rate_init / (t_ + 1) ** power_t``."""
    lr, epochs = 0.3, 6
    schedule = InverseScaling(power_t).start(spe, epochs, rows)
    expected, t, rate = [], 0, lr
    for _ in range(epochs):
        expected += [rate] * spe
        t += rows
        rate = lr / (t + 1) ** power_t
    np.testing.assert_allclose(lr * factors(schedule, spe * epochs), expected, rtol=1e-15)


def test_inverse_scaling_against_scikit_learn_itself():
    stochastic = pytest.importorskip("sklearn.neural_network._stochastic_optimizers")
    lr, rows, spe, power_t = 0.2, 13, 3, 0.4
    theirs = stochastic.SGDOptimizer([np.zeros(1)], learning_rate_init=lr, lr_schedule="invscaling",
                                     power_t=power_t)
    ours = InverseScaling(power_t).start(spe, 8, rows)
    for epoch in range(8):
        for s in range(epoch * spe + 1, (epoch + 1) * spe + 1):
            assert lr * ours.factor(s) == pytest.approx(theirs.learning_rate, rel=1e-15)
        theirs.iteration_ends((epoch + 1) * rows)


# metric sequences that walk through improvements, ties, changes under the threshold and plateaus
_SEQUENCES = [
    [1.0, 0.9, 0.9, 0.95, 0.8999, 0.85, 0.85, 0.85, 0.85, 0.84999, 0.7, 0.7, 0.7, 0.7, 0.69, 0.69, 0.69, 0.69],
    list(np.round(np.cumsum(np.random.default_rng(0).normal(-0.01, 0.03, 40)) + 2.0, 4)),
    list(np.random.default_rng(1).choice([0.5, 0.49995, 0.4, 0.45, 0.39, 0.3999], 40)),
]
_PLATEAUS = [
    dict(factor=0.5, patience=1, threshold=1e-4, threshold_mode="rel"),
    dict(factor=0.1, patience=0, threshold=0.01, threshold_mode="abs"),
    dict(factor=0.5, patience=2, threshold=0.0, threshold_mode="rel", cooldown=2),
    dict(factor=0.3, patience=1, threshold=1e-3, threshold_mode="abs", min_lr=0.01),
    dict(factor=0.5, patience=1, threshold=1e-4, threshold_mode="rel", mode="max"),
    dict(factor=0.5, patience=0, threshold=0.02, threshold_mode="abs", mode="max", cooldown=1),
    dict(factor=0.9, patience=0, threshold=0.0, threshold_mode="abs", min_lr=0.106, eps=1e-3),  # eps skips
]


def _plateau_run(kwargs, values, lr):
    schedule = ReduceOnPlateau(monitor="val_loss", **kwargs).start(3, len(values), 30)
    schedule.base_lr = lr
    out = []
    for epoch, value in enumerate(values, start=1):
        schedule.end_epoch({"epoch": epoch, "loss": 1.0, "val_loss": value, "seconds": 0.0})
        out.append(lr * schedule.factor(3 * epoch + 1))  # the next epoch's first step
    return out


@pytest.mark.parametrize("kwargs", _PLATEAUS)
@pytest.mark.parametrize("values", range(len(_SEQUENCES)))
def test_reduce_on_plateau_follows_torchs_rule(kwargs, values):
    values, lr = _SEQUENCES[values], 0.2
    got = _plateau_run(kwargs, values, lr)
    np.testing.assert_allclose(got, plateau_oracle(values, lr, **kwargs), rtol=1e-14)


@pytest.mark.parametrize("kwargs", _PLATEAUS)
@pytest.mark.parametrize("values", range(len(_SEQUENCES)))
def test_reduce_on_plateau_against_torch(kwargs, values):
    torch = pytest.importorskip("torch")
    values, lr = _SEQUENCES[values], 0.2
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    expected = []
    for value in values:
        theirs.step(value)
        expected.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(_plateau_run(kwargs, values, lr), expected, rtol=1e-14)


def test_the_plateau_sequences_reduce_and_skip():
    """The cases above are not vacuous: some reduce several times, the min_lr and eps cases hold the lr."""
    runs = [plateau_oracle(v, 0.2, **k) for v in _SEQUENCES for k in _PLATEAUS]
    assert sum(len(set(r)) > 2 for r in runs) > len(runs) // 2
    assert min(plateau_oracle(_SEQUENCES[0], 0.2, **_PLATEAUS[3])) == 0.01
    # 0.2 * 0.9 ** 6 = 0.10629 would drop to min_lr 0.106, by less than eps: it stays
    assert min(plateau_oracle(_SEQUENCES[0], 0.2, **_PLATEAUS[6])) == pytest.approx(0.2 * 0.9 ** 6, rel=1e-14)


def _adaptive_run(values, lr, **kwargs):
    schedule = Adaptive(monitor="loss", **kwargs).start(2, len(values), 30)
    schedule.base_lr = lr
    out, stopped = [], None
    for epoch, value in enumerate(values, start=1):
        schedule.end_epoch({"epoch": epoch, "loss": value, "seconds": 0.0})
        out.append(lr * schedule.factor(2 * epoch + 1))
        if schedule.stop_training:
            stopped = epoch
            break
    return out, stopped


@pytest.mark.parametrize("kwargs", [dict(tol=1e-4, n_iter_no_change=2), dict(tol=0.05, n_iter_no_change=1),
                                    dict(tol=0.0, n_iter_no_change=1, mode="max"),
                                    dict(tol=1e-3, n_iter_no_change=2, mode="max")])
@pytest.mark.parametrize("values", range(len(_SEQUENCES)))
@pytest.mark.parametrize("lr", [0.1, 2e-5])
def test_adaptive_follows_scikit_learns_rule(kwargs, values, lr):
    values = _SEQUENCES[values]
    got, stopped = _adaptive_run(values, lr, **kwargs)
    expected, expected_stop = adaptive_oracle(values, lr, **kwargs)
    assert stopped == expected_stop
    np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_adaptive_against_scikit_learns_optimizer():
    """The division and the stop are scikit-learn's ``SGDOptimizer.trigger_stopping`` itself."""
    stochastic = pytest.importorskip("sklearn.neural_network._stochastic_optimizers")
    theirs = stochastic.SGDOptimizer([np.zeros(1)], learning_rate_init=3e-5, lr_schedule="adaptive")
    ours = Adaptive(tol=0.5, n_iter_no_change=1).start(1, 20, 10)
    ours.base_lr = 3e-5
    count, best = 0, math.inf
    for epoch in range(1, 21):
        loss = 1.0  # never improves by tol
        count, best = (count + 1 if loss > best - 0.5 else 0), min(best, loss)
        ours.end_epoch({"epoch": epoch, "loss": loss})
        if count > 1:
            if theirs.trigger_stopping("", False):
                assert ours.stop_training
                break
            count = 0
        assert not ours.stop_training
        assert 3e-5 * ours.factor(epoch + 1) == pytest.approx(theirs.learning_rate, rel=1e-14)
    assert ours.stop_training and ours.base_lr * ours.scale <= 1e-6


# -- torch's schedulers ----------------------------------------------------------------------------------
def _torch_lrs(torch, make, steps, lr=0.1, per_epoch=None):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make(torch.optim.lr_scheduler, opt)
    out = []
    for s in range(1, steps + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_epoch is None or s % per_epoch == 0:
            scheduler.step()
    return np.array(out)


def test_step_decay_against_torch():
    torch = pytest.importorskip("torch")
    spe, epochs = 3, 9
    expected = _torch_lrs(torch, lambda s, o: s.StepLR(o, step_size=2, gamma=0.3), spe * epochs, per_epoch=spe)
    np.testing.assert_allclose(0.1 * factors(StepDecay(2, 0.3).start(spe, epochs, 9), spe * epochs), expected,
                               rtol=1e-13)


@pytest.mark.parametrize("warmup, min_factor", [(0, 0.0), (0, 0.1), (1, 0.0), (2.5, 0.05)])
def test_cosine_warmup_against_torch(warmup, min_factor):
    torch = pytest.importorskip("torch")
    spe, epochs, lr = 4, 6, 0.1
    total, w = spe * epochs, math.floor(warmup * spe + 0.5)

    def make(schedulers, opt):
        cosine = schedulers.CosineAnnealingLR(opt, T_max=total - w, eta_min=min_factor * lr)
        if not w:
            return cosine
        linear = schedulers.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=w - 1)
        return schedulers.SequentialLR(opt, [linear, cosine], milestones=[w])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecated epoch argument, inside torch
        expected = _torch_lrs(torch, make, total, lr)
    got = lr * factors(CosineWarmup(warmup, min_factor).start(spe, epochs, 9), total)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


# -- the optimizers with a schedule, step by step on every device ----------------------------------------
class KerasSGD:
    """tf.keras.optimizers.SGD (and scikit-learn's SGDOptimizer), the lr set before each step:
    ``velocity = momentum * velocity - lr * g``, ``w += velocity`` (Nesterov: ``w += momentum * velocity - lr * g``);
    ``g = grad + l2 * w`` on weight matrices."""

    def __init__(self, momentum=0.0, nesterov=False, l2=0.0):
        self.lr, self.momentum, self.nesterov, self.l2, self.velocity = None, momentum, nesterov, l2, {}

    def step(self, params, grads):
        for key in params:
            g = grads[key] + (self.l2 * params[key] if key.endswith(".weight") and self.l2 else 0.0)
            velocity = self.momentum * self.velocity.get(key, 0.0 * g) - self.lr * g
            self.velocity[key] = velocity
            params[key] = params[key] + ((self.momentum * velocity - self.lr * g) if self.nesterov else velocity)


def _oracle_optimizer(kind, kwargs, l2):
    """The NumPy reference whose ``lr`` the caller sets before every step (as a torch scheduler sets the group's)."""
    if kind == "sgd":
        return KerasSGD(kwargs.get("momentum", 0.0), kwargs.get("nesterov", False), l2)
    return oracle.make(kind, kwargs, l2)  # oracle.Adam and AdamW read self.lr at each step


def _oracle_train(state, arch, X, y, opt, lrs, *, epochs, batch, l2, validation=None, on_epoch=None):
    """Minibatch training in float64 with step ``s``'s lr ``lrs(s, epoch)``; ``on_epoch(epoch, record)`` may
    change what ``lrs`` gives. Returns the parameters after every step, the lr of every step and the records."""
    params = {k: np.array(v, dtype=np.float64) for k, v in state.items()}
    n, steps, used, records, s = len(y), [], [], [], 0
    for epoch in range(1, epochs + 1):
        loss_sum = 0.0
        for start in range(0, n, batch):
            rows = slice(start, start + batch)
            loss, _, grads = oracle.loss_and_grads(params, arch, X[rows], y[rows])
            loss_sum += (loss + oracle.penalty(params, l2)) * len(y[rows])
            s += 1
            opt.lr = lrs(s, epoch)
            used.append(opt.lr)
            opt.step(params, grads)
            steps.append({k: v.copy() for k, v in params.items()})
        record = {"epoch": epoch, "loss": loss_sum / n}
        if validation is not None:
            record["val_loss"] = oracle.metrics(params, arch, *validation, l2=l2)[0]
        records.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
    return steps, used, records


def _biased_model(dtype, seed=2):
    model = pn.mlp([4, 6, 3], dtype=dtype, seed=seed)
    state = model.state_dict()
    for key in state:
        if key.endswith(".bias"):
            state[key] = np.linspace(-0.5, 0.4, state[key].shape[0]).astype(dtype)
    return model.load_state_dict(state)


def _train_with_step(device, model, optimizer, schedule, X, y, *, epochs, batch, l2):
    """What fit will do, through make_step: the schedule set and started, every minibatch in order."""
    loss = pn.SoftmaxCrossEntropy()
    model.to(device)
    optimizer.bind(model, l2)
    optimizer.schedule = schedule
    data = DeviceData(device, X, y, model, loss)
    schedule.start(-(-data.n // batch), epochs, data.n)
    step = pn.make_step(model, loss, optimizer, device, l2=l2)
    states = []
    for _ in range(epochs):
        for start in range(0, data.n, batch):
            stop = min(start + batch, data.n)
            step(*data.rows(start, stop), stop - start)
            states.append(model.state_dict())
    return step, states


OPTIMIZERS = [
    pytest.param("sgd", dict(lr=0.3), id="sgd"),
    pytest.param("sgd", dict(lr=0.1, momentum=0.9), id="momentum"),
    pytest.param("sgd", dict(lr=0.1, momentum=0.8, nesterov=True), id="nesterov"),
    pytest.param("adam", dict(lr=0.02), id="adam"),
    pytest.param("adamw", dict(lr=0.02, weight_decay=0.5), id="adamw"),
]
SCHEDULE_CASES = [  # (schedule, its factor at 1-based step s with 3 steps an epoch over 4 epochs: the formula)
    pytest.param(lambda: CosineWarmup(warmup=1.5, min_factor=0.1),
                 lambda s: cosine_oracle(5, 12, 0.1, 12)[s - 1], id="cosine"),  # 4.5 steps round to 5
    pytest.param(lambda: StepDecay(1, 0.5), lambda s: 0.5 ** ((s - 1) // 3), id="step"),
    pytest.param(lambda: InverseScaling(0.5), lambda s: 1 / ((s - 1) // 3 * 10 + 1) ** 0.5, id="invscaling"),
]


def _ours(kind, kwargs):
    return {"sgd": pn.SGD, "adam": pn.Adam, "adamw": pn.AdamW}[kind](**kwargs)


@pytest.mark.parametrize("make_schedule, formula", SCHEDULE_CASES)
@pytest.mark.parametrize("kind, kwargs", OPTIMIZERS)
def test_scheduled_optimizer_matches_the_numpy_oracle_step_by_step(device, dtype, kind, kwargs, make_schedule, formula):
    """10 rows in minibatches of 4, 4, 2 for 4 epochs, L2 0.05: after every step, the parameters equal the
    float64 NumPy reference run with the formula's lr at each step (Keras's SGD, torch's Adam and AdamW)."""
    X, y = classification_data(n=10, features=4, classes=3, seed=1)
    model = _biased_model(dtype)
    arch, state = oracle.architecture(model), model.state_dict()
    lr = kwargs["lr"]
    steps, lrs, _ = _oracle_train(state, arch, X.astype(dtype).astype(np.float64), y,
                                  _oracle_optimizer(kind, kwargs, 0.05), lambda s, e: lr * formula(s),
                                  epochs=4, batch=4, l2=0.05)
    optimizer = _ours(kind, kwargs)
    _, states = _train_with_step(device, model, optimizer, make_schedule(), X, y, epochs=4, batch=4, l2=0.05)
    assert len(set(lrs)) > 3  # the lr does change
    assert [optimizer.lr_at(s) for s in range(1, 13)] == pytest.approx(lrs, rel=1e-14)
    for i, (got, want) in enumerate(zip(states, steps), start=1):
        assert_state_close(got, want, dtype, factor=10, err_msg=f"{device.name} {kind} after step {i}")


def test_sgd_momentum_under_a_changing_lr_is_not_torchs():
    """The oracle above can tell the two formulations apart: with a changing lr, torch's momentum
    (``b = m b + g``, ``p -= lr b``) moves differently from the velocity ``lr * v`` kept here."""
    X, y = classification_data(n=10, features=4, classes=3, seed=1)
    model = _biased_model("float64")
    arch, state = oracle.architecture(model), model.state_dict()
    schedule = lambda s, e: 0.1 * 0.5 ** ((s - 1) // 3)  # noqa: E731
    keras, _, _ = _oracle_train(state, arch, X, y, KerasSGD(0.9), schedule, epochs=3, batch=4, l2=0.0)
    torchs, _, _ = _oracle_train(state, arch, X, y, oracle.SGD(0.1, 0.9), schedule, epochs=3, batch=4, l2=0.0)
    _, ours = _train_with_step(pn.device("numpy"), model, pn.SGD(0.1, momentum=0.9), StepDecay(1, 0.5), X, y,
                               epochs=3, batch=4, l2=0.0)
    assert_state_close(ours[-1], keras[-1], "float64")
    assert not np.allclose(ours[-1]["0.weight"], torchs[-1]["0.weight"], rtol=1e-6)


@pytest.mark.parametrize("make_schedule", [lambda: CosineWarmup(1, 0.2), lambda: StepDecay(1, 0.3)],
                         ids=["cosine", "step"])
def test_sgd_in_the_gemms_follows_the_schedule_as_the_plain_step(make_schedule):
    """NumPy's fused step (the lr folded into the loss gradient, ``W = (1 - lr l2) W - x.T @ g``) with a
    schedule equals the same step built on the generic kernels, step by step in float64."""
    X, y = classification_data(n=40, features=4, classes=3, seed=3)
    fused_step, fused = _train_with_step(pn.device("cpu"), _biased_model("float64"), pn.SGD(0.5), make_schedule(),
                                         X, y, epochs=3, batch=10, l2=0.05)
    plain_step, plain = _train_with_step(pn.device("cpu", kernels="generic"), _biased_model("float64"),
                                         pn.SGD(0.5), make_schedule(), X, y, epochs=3, batch=10, l2=0.05)
    assert "sgd_in_gemm" in fused_step.fused and plain_step.fused == []
    for i, (a, b) in enumerate(zip(fused, plain), start=1):
        for key in b:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-14, err_msg=f"{key} after step {i}")


def test_hyper_uses_the_scheduled_lr():
    schedule = StepDecay(1, 0.5).start(2, 4, 8)
    sgd, adam, adamw = pn.SGD(0.4), pn.Adam(0.01, beta1=0.8, beta2=0.9), pn.AdamW(0.01, weight_decay=0.3)
    for optimizer in (sgd, adam, adamw):
        assert optimizer.replayable is (optimizer is sgd)
        optimizer.schedule = schedule
        assert not optimizer.replayable and schedule.base_lr == optimizer.lr
    for step in (1, 2, 3, 5, 7):
        factor = 0.5 ** ((step - 1) // 2)
        assert sgd.hyper(step) == (0.4 * factor,)
        c1, c2 = 1 - 0.8 ** step, 1 - 0.9 ** step
        assert adam.hyper(step)[0] == pytest.approx(0.01 * factor * math.sqrt(c2) / c1, rel=1e-15)
        assert adamw.hyper(step)[2] == pytest.approx(1 - 0.01 * factor * 0.3, rel=1e-15)
    sgd.schedule = None
    assert sgd.replayable and sgd.hyper(7) == (0.4,)


def test_a_recorded_step_refuses_a_schedule():
    from portablenn.static_step import StaticStep
    model = pn.mlp([4, 6, 3], seed=1)
    optimizer = pn.SGD(0.1).bind(model)
    optimizer.schedule = StepDecay(1)
    data = DeviceData(model.device, *classification_data(n=8, features=4), model, pn.SoftmaxCrossEntropy())
    with pytest.raises(ValueError, match="schedule"):
        StaticStep(model.device, data, 4, False, lambda *a: None, optimizer, model.dtype)


# -- configs, state and bad arguments --------------------------------------------------------------------
ALL = [lambda: StepDecay(3, 0.5), lambda: CosineWarmup(0.5, 0.1, 7), lambda: CosineWarmup(),
       lambda: ReduceOnPlateau("loss", factor=0.3, patience=2, threshold=0.01, threshold_mode="abs", cooldown=1,
                               min_lr=1e-4, mode="max", eps=1e-9),
       lambda: InverseScaling(0.3), lambda: Adaptive("val_r2", tol=1e-3, n_iter_no_change=3, mode="max")]


@pytest.mark.parametrize("make", ALL)
def test_config_and_state_round_trip_through_json(make):
    schedule = make()
    config = json.loads(json.dumps(SCHEDULES.to_config(schedule)))
    again = SCHEDULES.from_config(config)
    assert type(again) is type(schedule) and again.to_config() == schedule.to_config()
    for s in (schedule, again):
        s.start(3, 10, 30).base_lr = 0.1
    values = [1.0, 1.0, 1.0, 0.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    if schedule.reads_metrics:  # learn something first: a reduction, a cooldown, a count of bad epochs under way
        for epoch, value in enumerate(values, start=1):
            schedule.end_epoch({"epoch": epoch, "loss": value, "val_r2": value, "seconds": 0.0})
        assert schedule.state_dict() != again.state_dict()
        assert any(v not in (0, None, 1.0, False) for k, v in schedule.state_dict().items() if k != "best")
    again.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert again.state_dict() == schedule.state_dict()
    assert list(factors(again, 30)) == list(factors(schedule, 30))
    for epoch in range(11, 16):  # both go on alike
        for s in (schedule, again):
            s.end_epoch({"epoch": epoch, "loss": 2.0, "val_r2": 2.0})
        assert again.state_dict() == schedule.state_dict()


def test_the_registry_names_every_schedule():
    assert {name: SCHEDULES[name] for name in SCHEDULES} == {
        "adaptive": Adaptive, "cosine": CosineWarmup, "invscaling": InverseScaling, "plateau": ReduceOnPlateau,
        "step": StepDecay}
    assert ReduceOnPlateau(factor=0.5).to_config()["factor"] == 0.5  # torch's keyword, though factor() is a method


@pytest.mark.parametrize("make, message", [
    (lambda: StepDecay(0), "step_size"), (lambda: StepDecay(1.5), "step_size"),
    (lambda: StepDecay(True), "step_size"), (lambda: StepDecay(1, 0.0), "gamma"), (lambda: StepDecay(1, 1.5), "gamma"),
    (lambda: StepDecay(1, math.nan), "gamma"), (lambda: CosineWarmup(-1), "warmup"),
    (lambda: CosineWarmup(math.inf), "warmup"), (lambda: CosineWarmup("1"), "warmup"),
    (lambda: CosineWarmup(0, 1.5), "min_factor"), (lambda: CosineWarmup(0, -0.1), "min_factor"),
    (lambda: CosineWarmup(0, 0, 0), "epochs"), (lambda: CosineWarmup(5, 0, 3), "longer"),
    (lambda: CosineWarmup(4).start(2, 3, 10), "longer"),
    (lambda: ReduceOnPlateau(""), "monitor"), (lambda: ReduceOnPlateau(3), "monitor"),
    (lambda: ReduceOnPlateau(factor=1.0), "factor"), (lambda: ReduceOnPlateau(factor=0), "factor"),
    (lambda: ReduceOnPlateau(patience=-1), "patience"), (lambda: ReduceOnPlateau(patience=1.0), "patience"),
    (lambda: ReduceOnPlateau(threshold=-1e-3), "threshold"),
    (lambda: ReduceOnPlateau(threshold_mode="relative"), "threshold_mode"),
    (lambda: ReduceOnPlateau(cooldown=-1), "cooldown"), (lambda: ReduceOnPlateau(min_lr=-1), "min_lr"),
    (lambda: ReduceOnPlateau(mode="up"), "mode"), (lambda: ReduceOnPlateau(eps=math.nan), "eps"),
    (lambda: InverseScaling(-0.5), "power_t"), (lambda: Adaptive(tol=-1), "tol"),
    (lambda: Adaptive(n_iter_no_change=0), "n_iter_no_change"), (lambda: Adaptive(mode="maximum"), "mode"),
    (lambda: StepDecay(1).start(0, 3, 10), "steps_per_epoch"), (lambda: StepDecay(1).start(1, 3, 0), "rows"),
    (lambda: StepDecay(1).start(2, 3, 10).factor(0), "step"),
])
def test_bad_arguments_are_one_clear_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make, state, message", [
    (lambda: StepDecay(1), {"scale": 1.0}, "keys"),
    (lambda: StepDecay(1), [], "dict"),
    (lambda: ReduceOnPlateau(), {"scale": 1.0, "best": None}, "keys"),
    (lambda: ReduceOnPlateau(), {"scale": 0.0, "best": None, "num_bad_epochs": 0, "cooldown_counter": 0}, "scale"),
    (lambda: ReduceOnPlateau(), {"scale": 2.0, "best": None, "num_bad_epochs": 0, "cooldown_counter": 0}, "scale"),
    (lambda: ReduceOnPlateau(), {"scale": "1", "best": None, "num_bad_epochs": 0, "cooldown_counter": 0}, "scale"),
    (lambda: ReduceOnPlateau(), {"scale": 1.0, "best": math.nan, "num_bad_epochs": 0, "cooldown_counter": 0}, "best"),
    (lambda: ReduceOnPlateau(), {"scale": 1.0, "best": "x", "num_bad_epochs": 0, "cooldown_counter": 0}, "best"),
    (lambda: ReduceOnPlateau(), {"scale": 1.0, "best": 1.0, "num_bad_epochs": -1, "cooldown_counter": 0}, "num_bad"),
    (lambda: ReduceOnPlateau(), {"scale": 1.0, "best": 1.0, "num_bad_epochs": 0, "cooldown_counter": 0.5}, "cooldown"),
    (lambda: Adaptive(), {"scale": 0.2, "best": 1.0, "count": 0, "stop_training": 1}, "stop_training"),
])
def test_a_bad_state_is_one_clear_value_error(make, state, message):
    schedule = make()
    before = schedule.state_dict()
    with pytest.raises(ValueError, match=message):
        schedule.load_state_dict(state)
    assert schedule.state_dict() == before  # nothing half-loaded


def test_misuse_is_named():
    with pytest.raises(RuntimeError, match="start"):
        StepDecay(1).factor(1)
    plateau = ReduceOnPlateau("val_loss", patience=0).start(1, 3, 3)
    with pytest.raises(ValueError, match="val_loss.*validation"):
        plateau.end_epoch({"epoch": 1, "loss": 1.0, "error": 0.5, "seconds": 0.1})
    plateau.end_epoch({"epoch": 1, "val_loss": 1.0})
    with pytest.raises(RuntimeError, match="optimizer"):
        plateau.end_epoch({"epoch": 2, "val_loss": 1.0})  # a reduction needs the base lr: set on an optimizer
    with pytest.raises(ValueError, match="schedule"):
        pn.SGD(0.1).schedule = "cosine"
    assert isinstance(StepDecay(1), Schedule) and not StepDecay(1).reads_metrics and ReduceOnPlateau().reads_metrics


# -- through fit(schedule=...) ---------------------------------------------------------------------------
fit_takes_schedule = pytest.mark.skipif("schedule" not in inspect.signature(pn.fit).parameters,
                                        reason="fit does not take schedule= yet")


class _Interrupt(Exception):
    pass


def _resumed(schedule):
    """A schedule as a checkpoint gives it back: from its JSON config and its JSON state."""
    again = SCHEDULES.from_config(json.loads(json.dumps(SCHEDULES.to_config(schedule))))
    return again.load_state_dict(json.loads(json.dumps(schedule.state_dict())))


RESUMED = [
    pytest.param(lambda: CosineWarmup(warmup=1.5, min_factor=0.05), id="cosine"),
    pytest.param(lambda: StepDecay(2, 0.3), id="step"),
    pytest.param(lambda: ReduceOnPlateau("loss", factor=0.5, patience=1, threshold=0.7), id="plateau"),
    pytest.param(lambda: InverseScaling(0.5), id="invscaling"),
    pytest.param(lambda: Adaptive("loss", tol=1.0, n_iter_no_change=1), id="adaptive"),
]


@fit_takes_schedule
@pytest.mark.parametrize("make_optimizer", [lambda: pn.SGD(0.2, momentum=0.9), lambda: pn.Adam(0.02)],
                         ids=["momentum", "adam"])
@pytest.mark.parametrize("make_schedule", RESUMED)
def test_fit_resumes_mid_schedule_bit_for_bit(device, make_schedule, make_optimizer):
    """5 epochs in one go equal 2 epochs, interrupted, then 3 more with the optimizer's state and the
    schedule rebuilt from its config and state (as a checkpoint holds them): weights and losses bit for bit."""
    X, y = classification_data(n=30, features=4, classes=3, seed=4)
    kwargs = dict(batch_size=8, seed=3)
    whole = pn.mlp([4, 6, 3], seed=1).to(device)
    whole_schedule = make_schedule()
    history = pn.fit(whole, X, y, optimizer=make_optimizer(), epochs=5, schedule=whole_schedule, **kwargs)

    def interrupt(record):
        if record["epoch"] == 2:
            raise _Interrupt
    model, optimizer, schedule = pn.mlp([4, 6, 3], seed=1).to(device), make_optimizer(), make_schedule()
    with pytest.raises(_Interrupt):
        pn.fit(model, X, y, optimizer=optimizer, epochs=5, schedule=schedule, callback=interrupt, **kwargs)
    restored = type(optimizer).from_config(optimizer.to_config()).bind(model)
    restored.state, restored.steps = dict(optimizer.state), optimizer.steps
    rest = pn.fit(model, X, y, optimizer=restored, epochs=5, initial_epoch=2, schedule=_resumed(schedule), **kwargs)
    assert rest["loss"] == history["loss"][2:]
    for key, value in whole.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)
    if whole_schedule.reads_metrics:
        assert whole_schedule.state_dict()["scale"] < 1.0  # the learned state mattered


@fit_takes_schedule
@pytest.mark.parametrize("kind, kwargs", [pytest.param("sgd", dict(lr=0.1, momentum=0.8, nesterov=True), id="nesterov"),
                                          pytest.param("adamw", dict(lr=0.02, weight_decay=0.1), id="adamw")])
def test_fit_with_cosine_warmup_matches_the_numpy_oracle(device, dtype, kind, kwargs):
    """fit starts the schedule with its steps per epoch and epochs: the weights after every step equal the
    NumPy reference with the formula's lr (10 rows in minibatches of 4: 3 steps an epoch, 4 epochs)."""
    X, y = classification_data(n=10, features=4, classes=3, seed=1)
    model = _biased_model(dtype).to(device)
    arch, state = oracle.architecture(model), model.state_dict()
    formula = cosine_oracle(5, 12, 0.1, 12)
    steps, _, _ = _oracle_train(state, arch, X.astype(dtype).astype(np.float64), y,
                                _oracle_optimizer(kind, kwargs, 0.01), lambda s, e: kwargs["lr"] * formula[s - 1],
                                epochs=4, batch=4, l2=0.01)
    states = []
    pn.fit(model, X, y, optimizer=_ours(kind, kwargs), epochs=4, batch_size=4, shuffle=False, l2=0.01,
           schedule=CosineWarmup(warmup=1.5, min_factor=0.1), on_step=lambda *a: states.append(model.state_dict()))
    assert len(states) == 12
    for i, (got, want) in enumerate(zip(states, steps), start=1):
        assert_state_close(got, want, dtype, factor=10, err_msg=f"{device.name} {kind} after step {i}")


@fit_takes_schedule
def test_fit_plateau_reduces_at_the_epoch_the_history_says(device):
    """ReduceOnPlateau on val_loss: the lr of each epoch is what torch's rule gives on the History's
    val_loss (read independently), and the weights equal the NumPy reference that applies the rule to its own
    validation loss."""
    require_dtype(device, "float64")
    X, y = classification_data(n=40, features=4, classes=3, seed=5)
    Xv, yv = classification_data(n=30, features=4, classes=3, seed=6)
    rule = dict(factor=0.5, patience=1, threshold=0.02, threshold_mode="rel")
    lr, epochs, model = 0.3, 8, _biased_model("float64").to(device)
    arch, state = oracle.architecture(model), model.state_dict()
    optimizer, lrs = pn.SGD(lr, momentum=0.5), []
    history = pn.fit(model, X, y, optimizer=optimizer, epochs=epochs, batch_size=16, shuffle=False,
                     validation=(Xv, yv), schedule=ReduceOnPlateau("val_loss", **rule),
                     on_step=lambda epoch, step, steps: lrs.append(optimizer.lr_at(optimizer.steps)))
    per_epoch = [lrs[3 * e] for e in range(epochs)]  # 3 steps an epoch
    expected = [lr] + plateau_oracle(history["val_loss"], lr, **rule)[:-1]
    np.testing.assert_allclose(per_epoch, expected, rtol=1e-14)
    assert len(set(per_epoch)) >= 3, per_epoch  # it did reduce, twice or more

    current = [lr]
    values = []

    def on_epoch(epoch, record):
        values.append(record["val_loss"])
        current[0] = plateau_oracle(values, lr, **rule)[-1]
    steps, _, records = _oracle_train(state, arch, X, y, KerasSGD(0.5), lambda s, e: current[0], epochs=epochs,
                                      batch=16, l2=0.0, validation=(Xv, yv), on_epoch=on_epoch)
    assert_close(history["val_loss"], [r["val_loss"] for r in records], "float64", factor=100)
    assert_state_close(model.state_dict(), steps[-1], "float64", factor=100)


@fit_takes_schedule
def test_fit_step_decay_with_adam_against_torch():
    torch = pytest.importorskip("torch")
    X, y = classification_data(n=20, features=4, classes=3, seed=2)
    model = _biased_model("float64")
    state = model.state_dict()
    pn.fit(model, X, y, optimizer=pn.Adam(0.05), epochs=5, batch_size=8, shuffle=False,
           schedule=StepDecay(2, 0.3))
    nn = torch.nn
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for i in (0, 2):
            net[i].weight.copy_(torch.from_numpy(state[f"{i}.weight"].T.copy()))
            net[i].bias.copy_(torch.from_numpy(state[f"{i}.bias"].copy()))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(5):
        for start in range(0, 20, 8):
            opt.zero_grad()
            nn.functional.cross_entropy(net(Xt[start:start + 8]), yt[start:start + 8]).backward()
            opt.step()
        scheduler.step()
    for i in (0, 2):
        np.testing.assert_allclose(model.state_dict()[f"{i}.weight"], net[i].weight.detach().numpy().T, rtol=1e-9,
                                   atol=1e-12)


@fit_takes_schedule
def test_fit_refuses_what_a_schedule_cannot_do():
    X, y = classification_data(n=20, features=4, classes=3)
    model = pn.mlp([4, 6, 3], seed=1)
    with pytest.raises(ValueError, match="log_every"):
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), schedule=ReduceOnPlateau("loss"), log_every=2, epochs=2)
    with pytest.raises(ValueError, match="graph|schedule"):
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), schedule=StepDecay(1), graph=True, epochs=2)


def test_fit_stops_where_the_adaptive_rule_runs_out_of_room():
    """scikit-learn's adaptive rate: when it would shrink an lr already at most 1e-6, training ends there."""
    X, y = classification_data(n=30, features=4, classes=3, seed=1)
    schedule = Adaptive(tol=10.0, n_iter_no_change=1)  # no epoch improves by 10: a trigger every 2nd epoch
    history = pn.fit(pn.mlp([4, 3], seed=0), X, y, optimizer=pn.SGD(1e-5), epochs=50, batch_size=10,
                     schedule=schedule)
    replay = Adaptive(tol=10.0, n_iter_no_change=1)
    replay.start(steps_per_epoch=3, epochs=50, rows=30)
    replay.base_lr = 1e-5
    for epoch, record in enumerate(history, start=1):
        replay.end_epoch(record)
        if replay.stop_training:
            break
    assert schedule.stop_training and epoch == len(history) < 50
