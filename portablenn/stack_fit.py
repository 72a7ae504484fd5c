"""``fit_stack``: ``portablenn.fit`` for the M members of a stack at once, and the use of a trained stack.

One forward, one backward and one update per minibatch do every member's work, with per-member learning
rate, L2, momentum and weight decay (``portablenn.stack_optim.StackedOptimizer``). Member ``i`` trains exactly
as ``fit`` trains ``stacked.member(i)`` alone with its own settings, from the same initial weights and minibatch
order (the rounding of a batched GEMM aside). Per-member losses and metrics stay on the device and are read
once per ``log_every`` epochs; a member whose loss turns NaN or infinite is stopped there (its History ends,
``diverged`` says where), the others train on. ``predict_stack``, ``predict_proba_stack`` and
``evaluate_stack`` use a trained stack, member by member or as an ensemble.
"""
import numbers
import time

import numpy as np

from .data import DeviceData
from .early_stopping import EarlyStopping
from .losses import get_loss
from .optim import SGD
from .pure_step import PureStep
from .stack import Stacked
from .stack_history import StackHistory, _Stops
from .stack_optim import StackedOptimizer, _clip, _listed, _penalty, _strength
from .train import check_clip_norm, check_coupled, check_monitors, check_readers, check_row_weights, place
from .validation import InputError, check_epochs

__all__ = ["fit_stack", "evaluate_stack", "predict_stack", "predict_proba_stack", "EVAL_ROWS"]

EVAL_ROWS = 8192  # rows times members per evaluation forward pass, to bound activation memory


# -- the loss, per member -------------------------------------------------------------------------------
def _stacked_loss(loss, members, per_member_targets, kernels=None, weighted=False):
    """``value_and_grad(xp, outputs (M, batch, out), targets, scale) -> (grad, loss sums (M,), metric sums (M,))``.

    The kernels' stacked twin of the loss where they offer one (NumPy's and CuPy's ``stacked_softmax_xent``) and
    the targets do not end with sample weights (``weighted``); else the loss's own ``value_and_grad``, which takes
    the member axis where the loss says so (``takes_members``), or member by member.
    """
    fast = kernels.fused_loss(loss, stacked=True) if kernels is not None and not weighted else None
    if fast is not None:
        return fast
    if loss.takes_members():
        return loss.value_and_grad

    def each(xp, outputs, targets, scale):
        parts = [loss.value_and_grad(xp, outputs[i, ...], tuple(t[i, ...] for t in targets)
                                     if per_member_targets else targets, scale) for i in range(members)]
        return tuple(xp.stack([part[k] for part in parts]) for k in range(3))
    return each


# -- training -------------------------------------------------------------------------------------------
def fit_stack(stacked, X, y, *, optimizer=None, lr=None, l2=0.0, momentum=None, weight_decay=None, loss=None,
              epochs=1, batch_size="auto", shuffle=True, seed=0, member_seeds=None, device=None, validation=None,
              log_every=1, callback=None, names=None, on_read=None, schedule=None, early_stopping=None,
              clip_norm=None, sample_weight=None):
    """Train every member of ``stacked`` in place, each as ``fit`` would train it alone.

    Parameters
    ----------
    stacked : Stacked
        M members (``stack_mlp``, or ``Stacked([...])`` of models made otherwise).
    X : array of shape (n_samples, in_features)
    y : array of shape (n_samples,) or (n_samples, outputs)
        The targets ``loss`` takes, as ``fit``'s.
    optimizer : Optimizer or StackedOptimizer, optional
        ``SGD(...)`` (default ``SGD(0.1)``), ``Adam(...)`` or ``AdamW(...)``: the rule and the settings every
        member shares; or a ``StackedOptimizer`` already made (then ``lr``, ``l2``, ``momentum`` and
        ``weight_decay`` must be left out).
    lr, l2, momentum, weight_decay : float or sequence of M floats, optional
        Per member (see ``StackedOptimizer``); ``l2`` as ``fit``'s, default 0.
    loss, epochs, batch_size, shuffle, validation, log_every, device
        As ``fit``'s.
    seed : int
        The shuffling seed: every member trains on the same minibatches, permuted by ``(seed, epoch)`` as
        ``fit(seed=seed)`` permutes them; each minibatch is read once for all.
    member_seeds : sequence of M ints, optional
        Each member shuffles by its own seed instead (``fit(seed=member_seeds[i])``'s order).
    callback : callable(i, record) -> None, optional
        Called with member ``i``'s every epoch record, in order, when the metrics are read.
    names : sequence of M str, optional
        What ``diverged`` messages call the members (default "member 0", ...).
    on_read : callable(epoch, history) -> None, optional
        Called after each read of the metrics (every ``log_every`` epochs and after the last), with the
        last epoch read and the ``StackHistory`` so far.
    schedule : portablenn.schedules.Schedule, optional
        As ``fit``'s, for every member on its own: each gets a copy, its base lr the member's (a schedule
        that reads the metrics reads the member's; one that ends training, as scikit-learn's adaptive rule
        does, stops that member). Default: the optimizer's ``schedule``, if it has one.
    early_stopping : portablenn.EarlyStopping, optional
        As ``fit``'s, for every member on its own: a member that stops is frozen (its weights no longer
        change) and, with ``restore_best``, every member ends with its best epoch's weights
        (``StackHistory.stopped``). A Dropout layer's mask counter and a BatchNorm's ``num_batches_tracked`` are
        the stack's, shared, and keep counting; ``stacked.member(i)`` gives a stopped or restored member its own
        counts back (those of its stop or best epoch), with its optimizer state and step count
        (``StackedOptimizer.member``).
    clip_norm : float, optional
        As ``fit``'s: each member's gradients scaled to at most this global 2-norm, the member's own.
    sample_weight : array of shape (n_samples,), optional
        As ``fit``'s, the same for every member (each member's minibatch rows bring their own weights).

    Returns
    -------
    StackHistory
    """
    epochs = check_epochs(epochs)
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise InputError(f"log_every must be a positive integer, got {log_every!r}")
    check_clip_norm(clip_norm)
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise InputError(f"early_stopping must be a portablenn.EarlyStopping, not {type(early_stopping).__name__}")
    if not isinstance(stacked, Stacked):
        raise InputError(f"fit_stack trains a portablenn.stack.Stacked, not {type(stacked).__name__}")
    M = stacked.members
    names = [f"member {i}" for i in range(M)] if names is None else [str(n) for n in names]
    if len(names) != M:
        raise InputError(f"names has {len(names)} entries for {M} members")
    if isinstance(optimizer, StackedOptimizer):
        if any(v is not None for v in (lr, momentum, weight_decay)) or l2:
            raise InputError("a StackedOptimizer carries its own lr, l2, momentum and weight_decay: pass them to it")
        opt = optimizer
    else:
        opt = StackedOptimizer(SGD(0.1) if optimizer is None else optimizer, M, lr=lr, momentum=momentum,
                               weight_decay=weight_decay, l2=l2)
    if member_seeds is not None:
        member_seeds = list(member_seeds)
        if len(member_seeds) != M or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0
                                             for s in member_seeds):
            raise InputError(f"member_seeds must be {M} non-negative integers, got {member_seeds!r}")
    if schedule is None:
        schedule = opt.template.schedule
    check_readers(early_stopping, schedule, log_every)
    loss = get_loss(loss)
    if sample_weight is not None:
        check_row_weights(loss)
    check_monitors(loss, validation is not None, early_stopping, schedule)
    dev, data, val, batch = place(stacked, X, y, validation, loss, device, batch_size, sample_weight)
    check_coupled(stacked.layers, batch, data.n)
    opt.bind(stacked)
    opt.set_schedule(schedule, len(range(0, data.n, batch)), epochs, data.n)
    dev.backend.reserve_heap(dev)  # a stack's temporaries are M times one model's: NumPy keeps freed heap
    shuffled = bool(shuffle) and batch < data.n
    own_orders = shuffled and member_seeds is not None
    value = _stacked_loss(loss, M, own_orders, dev.kernels, weighted=sample_weight is not None)
    value_eval = _stacked_loss(loss, M, False, dev.kernels)
    l2_on = any(opt.l2)
    fused = opt.fuses_sgd and clip_norm is None
    starts = range(0, data.n, batch)
    history = StackHistory(names, opt)
    active = np.ones(M, dtype=bool)
    stops = _Stops(stacked, opt, early_stopping, history, callback)
    history.early_stopping = stops.rules
    xp = dev.xp
    pending, rows, was_training = [], [], stacked.training
    train_step = _StackStep(stacked, opt, value, clip_norm, fused)
    static = None  # arrays that cannot change in place (JAX): every minibatch through one compiled pure function
    if not dev.backend.mutable and not own_orders:
        static = PureStep(dev, data, batch, len(starts), train_step, stacked, opt, stacked.dtype, members=M)
    with dev.activate():
        zeros = dev.zeros((M,), stacked.dtype)
        try:
            stacked.train()
            for epoch in range(1, epochs + 1):
                began = time.perf_counter()
                order = orders = None
                if own_orders:
                    orders = dev.asarray(np.stack([np.random.default_rng([s, epoch]).permutation(data.n)
                                                   for s in member_seeds]), dtype=dev.index_dtype)
                elif shuffled:
                    order = dev.asarray(np.random.default_rng([seed, epoch]).permutation(data.n), dtype=dev.index_dtype)
                step_losses, metric = [], zeros
                if static is not None:
                    static.start_epoch(order)
                for index, start in enumerate(starts):
                    stop = min(start + batch, data.n)
                    if static is not None:
                        static.run(index, start, stop)
                        continue
                    if orders is None:
                        xb, targets = data.rows(start, stop, order)
                    else:
                        xb, targets = _member_rows(xp, data, orders, start, stop)
                    loss_sums, metric_sums = train_step(xb, targets, stop - start)
                    step_losses.append(loss_sums)
                    metric = metric + metric_sums
                if static is not None:
                    step_losses, metric = static.finish_epoch()  # (M, steps), (M,)
                else:
                    step_losses = xp.stack(step_losses, axis=1)
                columns = [zeros, metric, zeros, zeros]
                if val is not None:
                    stacked.eval()
                    columns[2], columns[3] = _totals(stacked, val, value_eval)
                    stacked.train()
                    if l2_on:
                        columns[0] = _penalty(stacked, opt._arrays["l2"])
                rows.append(xp.concat([xp.stack(columns, axis=1), step_losses], axis=1))
                pending.append((epoch, began))
                if epoch % log_every == 0 or epoch == epochs:
                    stacked.materialize()  # the members' own weights, for callbacks and freezing
                    stops.settle()
                    newly = _read(dev, rows, pending, history, active, stops.on_record, loss, data, val)
                    rows, pending = [], []
                    if stops.read(active) or newly:
                        opt.freeze(active, zero=[i in history.diverged for i in range(M)])
                    if on_read is not None:
                        on_read(epoch, history)
                    if not active.any():
                        break
            stacked.materialize()
            stops.finish()
        finally:
            stacked.materialize()
            stacked.train(was_training)
            if static is not None:
                static.close()
    return history


class _StackStep:
    """One minibatch of a stack's training, ``(xb, targets, rows, hyper) -> (loss sums (M,), metric sums (M,))``:
    forward, each member's loss (and L2 term), backward, clipping and the update; the body of ``fit_stack``'s
    loop, which ``PureStep`` compiles where arrays cannot change in place (JAX)."""

    def __init__(self, stacked, opt, value, clip_norm, fused):
        self.stacked, self.opt, self.value, self.clip_norm, self.fused = stacked, opt, value, clip_norm, fused
        self.l2_on = any(opt.l2)

    def __call__(self, xb, targets, rows, hyper=None):
        stacked, opt = self.stacked, self.opt
        grad, loss_sums, metric_sums = self.value(stacked.xp, stacked.forward(xb), targets, 1.0 / rows)
        if self.l2_on:
            loss_sums = loss_sums + rows * _penalty(stacked, opt._arrays["l2"])
        if self.fused:
            opt.backward_and_sgd(grad)
        else:
            stacked.backward(grad)
            if self.clip_norm is not None:
                _clip(stacked, self.clip_norm)
            opt.step(hyper)
        return loss_sums, metric_sums


def _member_rows(xp, data, orders, start, stop):
    """Each member's own minibatch: rows ``orders[i, start:stop]``; ``(M, batch, in)`` and the targets likewise."""
    idx = orders[:, start:stop]
    shape = tuple(idx.shape)
    flat = xp.reshape(idx, (-1,))
    xb = xp.reshape(xp.take(data.X, flat, axis=0), shape + tuple(data.X.shape[1:]))
    targets = tuple(xp.reshape(xp.take(t, flat, axis=0), shape + tuple(t.shape[1:])) for t in data.targets)
    return xb, targets


def _totals(stacked, data, value):
    """Each member's summed loss (no L2) and metric on device data: two ``(M,)`` arrays."""
    chunk = max(256, EVAL_ROWS // stacked.members)
    loss_sums = metric = None
    for start in range(0, data.n, chunk):
        xb, targets = data.rows(start, min(start + chunk, data.n))
        _, step_loss, step_metric = value(stacked.xp, stacked.forward(xb), targets, 1.0)
        loss_sums = step_loss if loss_sums is None else loss_sums + step_loss
        metric = step_metric if metric is None else metric + step_metric
    return loss_sums, metric


def _read(dev, rows, pending, history, active, callback, loss, data, val):
    """Read the pending epochs' rows (one transfer), record each active member's, stop the ones that
    diverged; returns whether any did."""
    values = dev.to_numpy(dev.xp.stack(rows, axis=0)).astype(np.float64)  # (epochs, M, 4 + steps)
    seconds = np.diff([began for _, began in pending] + [time.perf_counter()]).tolist()
    newly = False
    for i in np.flatnonzero(active):
        member = values[:, i, :]
        losses = member[:, 4:]
        columns = {"loss": losses.sum(axis=1) / data.n,
                   **loss.metrics(member[:, 1], data.n, data.outputs, data.statistics)}
        if val is not None:
            columns["val_loss"] = member[:, 2] / val.n + member[:, 0]
            columns.update((f"val_{key}", v) for key, v in
                           loss.metrics(member[:, 3], val.n, val.outputs, val.statistics).items())
        finite = np.isfinite(losses).all(axis=1)
        good = len(pending) if finite.all() else int(np.argmin(finite))
        for k in range(good):
            record = {"epoch": pending[k][0], **{key: float(np.asarray(c)[k]) for key, c in columns.items()},
                      "seconds": seconds[k]}
            history.histories[i].records.append(record)
            if callback is not None:
                callback(int(i), record)
        if good < len(pending):
            epoch, row = pending[good][0], losses[good]
            step = int(np.argmin(np.isfinite(row))) + 1
            history.diverged[int(i)] = {
                "epoch": epoch, "step": step, "loss": float(row[step - 1]),
                "message": f"{history.names[i]}: the training loss became {row[step - 1]} at epoch {epoch}, step "
                           f"{step} of {row.shape[0]}: its learning rate ({history.optimizer.lr[i]:g}) is probably "
                           f"too high"}
            active[i] = False
            newly = True
    return newly


# -- using a trained stack --------------------------------------------------------------------------------
def _forward_all(stacked, X, head):
    """``head(xp, outputs (M, rows, out))`` over ``X`` in eval mode, chunked; a host array, members first."""
    from .validation import check_features

    dev = stacked.device
    n = check_features(X, stacked.in_features, dtype=stacked.dtype)
    chunk = max(256, EVAL_ROWS // stacked.members)
    was_training = stacked.training
    stacked.eval()
    try:
        with dev.activate():
            Xd = dev.asarray(X, dtype=stacked.dtype)
            parts = [head(dev.xp, stacked.forward(Xd[s:min(s + chunk, n), :])) for s in range(0, n, chunk)]
            return dev.to_numpy(dev.xp.concat(parts, axis=1))
    finally:
        stacked.train(was_training)


def predict_proba_stack(stacked, X, *, loss=None, average=False):
    """Each member's probabilities ``(M, n_samples, classes)`` (softmax for softmax cross-entropy, the
    default; sigmoids for binary cross-entropy), or with ``average`` the ensemble's: their mean over the
    members, ``(n_samples, classes)``."""
    loss = get_loss(loss)
    probabilities = _forward_all(stacked, X, lambda xp, out: xp.stack([loss.probabilities(xp, out[i, ...])
                                                                       for i in range(out.shape[0])]))
    return probabilities.mean(axis=0) if average else probabilities


def predict_stack(stacked, X, *, loss=None, average=False):
    """Each member's predictions ``(M, n_samples)`` (class indices, int64, for softmax cross-entropy), or with
    ``average`` the ensemble's: the class of the largest averaged probability (softmax), 0/1 of the averaged
    sigmoids (binary cross-entropy), the mean output (regression)."""
    loss = get_loss(loss)
    if average:
        if loss.task == "regression":
            return _forward_all(stacked, X, lambda xp, out: out).mean(axis=0)
        p = predict_proba_stack(stacked, X, loss=loss, average=True)
        return (p >= 0.5).astype(np.int64) if loss.task == "multilabel" else np.argmax(p, axis=1).astype(np.int64)
    out = _forward_all(stacked, X, lambda xp, o: xp.stack([loss.predict(xp, o[i, ...]) for i in range(o.shape[0])]))
    return out.astype(np.int64) if out.dtype.kind in "biu" else out


def evaluate_stack(stacked, X, y, *, loss=None, l2=0.0):
    """Each member's mean loss (plus its L2 term: ``l2`` one strength or one per member) and metrics, in eval
    mode: a list of M dicts ``{"loss": ..., "error": ...}`` as ``evaluate(..., return_dict=True)``'s."""
    loss, M, dev = get_loss(loss), stacked.members, stacked.device
    l2s = _listed(l2, M, "l2", _strength)
    was_training = stacked.training
    stacked.eval()
    try:
        with dev.activate():
            data = DeviceData(dev, X, y, stacked, loss)
            loss_sums, metric = _totals(stacked, data, _stacked_loss(loss, M, False))
            l2_array = dev.asarray(np.asarray(l2s).reshape(-1, 1, 1), dtype=stacked.dtype)
            mean = loss_sums / data.n + (_penalty(stacked, l2_array) if any(l2s) else 0.0)
            values = dev.to_numpy(dev.xp.stack([mean, metric], axis=1)).astype(np.float64)
    finally:
        stacked.train(was_training)
    metrics = loss.metrics(values[:, 1], data.n, data.outputs, data.statistics)
    return [{"loss": float(values[i, 0]), **{k: float(np.asarray(v)[i]) for k, v in metrics.items()}}
            for i in range(M)]
