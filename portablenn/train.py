"""fit / evaluate / predict: the one training loop, identical on every device.

The loop owns the epochs, the minibatch order, the metrics and the modes; one step built by
``portablenn.step`` does the work of a minibatch; data parallelism plugs in through
``portablenn.reducer.Reducer`` (training never imports ``portablenn.distributed``).
"""
import contextlib
import time

import numpy as np

from . import backend
from .data import DeviceData
from .history import L2, LOSSES, METRIC, VAL_LOSS, VAL_METRIC, DivergenceError, History, fields, read_metrics
from .losses import SoftmaxCrossEntropy, get_loss, l2_penalty, weight_matrices
from .schedules import Schedule
from .reducer import _COMM_ADAPTERS, FlatGradients, Reducer, comm_reducer, register_comm_adapter  # noqa: F401
from .split import validation_split
from .pure_step import pure_step
from .static_step import StaticStep
from .step import loss_function, make_step
from .validation import InputError, check_batch_size, check_epochs, check_features, check_l2, check_sample_weight

__all__ = ["DivergenceError", "History", "Reducer", "fit", "evaluate", "predict", "predict_proba",
           "register_comm_adapter"]

_EVAL_CHUNK = 8192  # rows per forward pass when evaluating, to bound activation memory


def fit(model, X, y, *, optimizer, loss=None, epochs=1, batch_size="auto", shuffle=True, l2=0.0, clip_norm=None,
        device=None, seed=0, validation=None, callback=None, log_every=1, on_step=None, initial_epoch=0, comm=None,
        reducer=None, graph=False, early_stopping=None, validation_fraction=None, schedule=None, sample_weight=None):
    """Train ``model`` in place with minibatch gradient descent on ``loss`` (softmax cross-entropy by default).

    Every minibatch runs one step built once by ``portablenn.step.make_step`` (forward, loss,
    backward, gradient reduction, update); the model is in train mode for the steps and in eval mode
    for the validation passes, and ends in the mode it started in.

    Parameters
    ----------
    model : Sequential
    X : array of shape (n_samples, in_features)
        NumPy or any Array API array; copied to the device once.
    y : array of shape (n_samples,) or (n_samples, outputs)
        The targets ``loss`` takes: integer class labels for softmax cross-entropy, real numbers for
        regression, 0/1 for binary cross-entropy.
    optimizer : Optimizer
        ``SGD(lr, ...)``, ``Adam(lr, ...)``, ``AdamW(...)``; bound to the model here.
    loss : Loss or str, optional
        A ``portablenn.losses.Loss`` or a name in ``portablenn.registry.LOSSES``; default
        ``SoftmaxCrossEntropy()``. It also names the History's metrics (``error``; ``rmse`` and ``r2``).
    epochs : int
        The epoch to train up to (as Keras): with ``initial_epoch=k`` it trains epochs k+1..epochs.
    batch_size : int, None or "auto"
        Rows per minibatch step. None is full-batch gradient descent (the CS231n loop); "auto" (the
        default) is 100 (CMU 10-714's), or every row where there are fewer (as scikit-learn's "auto"); an
        int larger than the data is refused. With ``comm`` it is the global minibatch, split into
        contiguous slices over the ranks.
    shuffle : bool
        A new permutation each epoch, drawn from ``(seed, epoch)`` so that a resumed run shuffles
        as the uninterrupted one; False takes minibatches in order (CMU 10-714).
    l2 : float
        Adds ``0.5 * l2 * sum(W ** 2)`` over weight matrices to the loss, ``l2 * W`` to their gradients.
    clip_norm : float, optional
        Clip each step's gradients to this global 2-norm before the update (``torch.nn.utils.
        clip_grad_norm_``), on the device: no host sync per step.
    device : str or Device, optional
        Where to train; default the model's device. The model is moved there.
    seed : int
        Seed of the host NumPy Generator for the shuffling permutations.
    validation : tuple (X_val, y_val), optional
        Evaluated after every epoch.
    callback : callable(record) -> None, optional
        Called with every epoch's record, in order; the records arrive in blocks each time the
        metrics are read (every ``log_every`` epochs and after the last one).
    log_every : int
        Metrics stay on the device and are read in one transfer every ``log_every`` epochs (and at
        the end): nothing is read back from the device inside an epoch.
    on_step : callable(epoch, step, steps_per_epoch) -> None, optional
        Called on the host after every minibatch step (for progress bars); it gets no device data.
    initial_epoch : int
        Epochs already trained (resume from a checkpoint with the optimizer state restored).
    comm : mpi4py communicator or portablenn.distributed.Communicator, optional
        Data-parallel training over its ranks, each calling ``fit`` with the same arguments and
        data: rank 0's weights and optimizer state are broadcast, each rank computes the gradient
        of its slice of every global minibatch, one allreduce per step sums them, and every rank
        ends with the same weights and History as one process with the same ``batch_size``
        (see ``portablenn.distributed``). Raises ``CommunicationError`` if another rank fails.
        ``fit`` turns it into a :class:`Reducer` with the adapter ``portablenn.distributed`` registers.
    reducer : Reducer, optional
        Data-parallel training with any implementation of :class:`Reducer` (not with ``comm``).
    validation_fraction : float, optional
        Split this share of ``X, y`` off as the validation set (instead of ``validation=``): seeded by
        ``seed``, stratified by class for classification, every class kept in training
        (``portablenn.split.split_indices``); the rest trains in its original order.
    sample_weight : array of shape (n_samples,), optional
        Each row's loss and gradient times its weight (finite, >= 0), the weights scaled to average 1 over the
        training rows: a row of weight 2 counts as two rows, and their scale changes neither the reported loss
        (the weighted mean) nor the step. Each minibatch's gradient is divided by its rows, as unweighted
        (scikit-learn's MLP divides by the minibatch's summed weight: the same in full-batch training). The
        metrics and the validation set stay unweighted; ``validation_fraction`` splits the weights with the
        rows. Not with ``graph=True`` or with a loss whose ``value_and_grad`` does not take them.
    early_stopping : EarlyStopping, optional
        Stop when a monitored History field stops improving, and end with the best epoch's weights
        (``portablenn.EarlyStopping``); needs ``log_every=1`` (its one read per epoch is all it reads).
    schedule : portablenn.schedules.Schedule, optional
        The learning rate of every step is the optimizer's ``lr`` times the schedule's factor for the
        step's global number (computed on the host: no device work); a schedule that reads an epoch's
        History (``ReduceOnPlateau``) needs ``log_every=1``. Attached to the optimizer
        (``optimizer.schedule``) for this fit, so that checkpoints save it; ``None`` removes one.
    graph : bool
        Record the training step once and replay it for every full minibatch: a CUDA graph on a
        CuPy device, one launch per step instead of ~20 (``portablenn.static_step``). Minibatches
        are gathered on the device by a step counter; the results are those of the ordinary path.
        Elsewhere the same static step runs eagerly (slower than the ordinary path on the CPU:
        it copies each minibatch). Not with ``comm``/``reducer``, nor with Adam or a ``schedule`` (whose
        step size changes every step).

    Returns
    -------
    History

    Raises
    ------
    DivergenceError
        When the loss turns NaN or infinite; found when the metrics are read (no per-step sync),
        naming the epoch and step.
    """
    epochs, l2 = check_epochs(epochs), check_l2(l2)
    check_clip_norm(clip_norm)
    initial_epoch = check_epochs(initial_epoch)
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise InputError(f"log_every must be a positive integer, got {log_every!r}")
    if comm is not None and reducer is not None:
        raise InputError("pass fit either comm or reducer, not both")
    if reducer is not None and not isinstance(reducer, Reducer):
        raise InputError(f"reducer must be a portablenn.train.Reducer, not {type(reducer).__name__}")
    check_readers(early_stopping, schedule, log_every)
    if graph and (comm is not None or reducer is not None):
        raise InputError("graph=True cannot be combined with data-parallel training (comm, reducer)")
    optimizer.schedule = schedule  # before the checks below: a scheduled lr cannot be replayed by a graph
    loss = get_loss(loss)
    if sample_weight is not None:
        check_row_weights(loss)
        if graph:
            raise InputError("graph=True records the unweighted step: train with sample_weight without graph")
        sample_weight = check_sample_weight(sample_weight, check_features(X))
    if validation_fraction is not None:
        if validation is not None:
            raise InputError("pass fit either validation or validation_fraction, not both")
        X, y, validation, *rest = validation_split(X, y, validation_fraction, seed, loss.strata, sample_weight)
        sample_weight = rest[0] if rest else None
    if graph and not optimizer.replayable:
        raise InputError(f"graph=True needs an optimizer that does the same work every step (SGD without a "
                         f"schedule), not {type(optimizer).__name__}"
                         + (f" with {type(schedule).__name__}" if schedule is not None else ""))
    if graph and type(loss) is not SoftmaxCrossEntropy:
        raise InputError(f"graph=True records the step of softmax cross-entropy only, not {loss!r}")
    check_monitors(loss, validation is not None, early_stopping, schedule)
    dev, data, val, batch = place(model, X, y, validation, loss, device, batch_size, sample_weight)
    coupled = [layer for layer in model.layers if layer.couples_rows]
    if coupled and (comm is not None or reducer is not None):
        raise InputError(f"{type(coupled[0]).__name__} uses the statistics of the whole minibatch: it cannot be "
                         "trained data-parallel (each rank would see only its slice)")
    check_coupled(model.layers, batch, data.n)
    functional = not dev.backend.mutable  # arrays that cannot change in place (JAX): the step is a pure function
    if functional and (comm is not None or reducer is not None):
        raise InputError(f"data-parallel training sums gradients in place, which {dev.name} cannot do: train on "
                         "a device whose arrays are mutable (cpu, cuda, torch)")
    optimizer.bind(model, l2)
    gradients = None  # the Reducer's set-up; without one, a single worker (identities)
    if comm is not None:
        reducer = comm_reducer(comm)
    if reducer is not None:
        reducer.start(model, optimizer, data.n, None if val is None else val.n, dict(
            epochs=epochs, initial_epoch=initial_epoch, batch_size=batch, shuffle=bool(shuffle), seed=seed, l2=l2,
            clip_norm=clip_norm))
        gradients = FlatGradients(model)  # gradients must be materialised, in one buffer, to be summed
    shard = (reducer or Reducer()).shard
    offset = [layer for layer in model.layers if hasattr(layer, "row_offset")] if reducer is not None else []
    val_part = val  # this worker evaluates its contiguous part shard(0, val.n) of the validation set
    if val is not None and shard(0, val.n) != (0, val.n):
        val_part = val.part(*shard(0, val.n))
    train_step = make_step(model, loss, optimizer, dev, l2=l2, clip_norm=clip_norm, reducer=reducer,
                           gradients=gradients, weighted=sample_weight is not None)
    value = loss_function(loss, dev.kernels)
    weights = weight_matrices(model) if l2 and not functional else None  # rebound every step where functional
    starts = range(0, data.n, batch)
    steps = len(starts)
    if schedule is not None:
        schedule.start(steps_per_epoch=steps, epochs=epochs, rows=data.n)

    history, pending, block, rows, was_training = History(), [], None, [], model.training
    stopped = []  # the epoch the early-stopping check ended training at, set inside the records' callback
    if early_stopping is not None:
        early_stopping.start(model, validation)
    plateau = schedule if schedule is not None and schedule.reads_metrics else None
    if early_stopping is not None or plateau is not None:
        def on_record(record, user=callback):
            if plateau is not None:
                plateau.end_epoch(record)
                if plateau.stop_training:  # scikit-learn's adaptive rate, out of room to shrink
                    stopped.append(record["epoch"])
            if early_stopping is not None and early_stopping.update(record, model):
                stopped.append(record["epoch"])
            if user is not None:
                user(record)
        callback = on_record
    with dev.activate():
        shuffled = bool(shuffle) and batch < data.n
        static = None  # the recorded step (graph=True), or the pure one that immutable arrays need
        if functional:
            static = pure_step(dev, data, batch, steps, train_step, model, optimizer, model.dtype, loss, l2, clip_norm)
        elif graph:
            static = StaticStep(dev, data, batch, shuffled, train_step, optimizer, model.dtype)
        try:
            model.train()  # and eval() around each validation pass only: a mode switch costs ~2 us an epoch
            for epoch in range(initial_epoch + 1, epochs + 1):
                began = time.perf_counter()
                if functional:  # the epoch's row is assembled at its end (_row)
                    row = step_losses = None
                else:
                    if not pending:  # a block of metric rows, read back in one transfer by _flush
                        block = dev.zeros((min(log_every, epochs - epoch + 1), LOSSES + steps), model.dtype)
                    row = block[len(pending), :]
                    step_losses = row[LOSSES:]  # per-step loss sums: the epoch's loss, and where it diverged
                order = None
                if shuffled:
                    order = dev.asarray(np.random.default_rng([seed, epoch]).permutation(data.n), dtype=dev.index_dtype)
                metric = 0.0
                if static is not None:
                    static.start_epoch(order)
                for step, start in enumerate(starts):
                    if functional:
                        static.run(step, start, min(start + batch, data.n))
                    elif static is not None and step < static.steps:
                        static.run()  # a full minibatch through the recorded step
                    else:
                        stop = min(start + batch, data.n)
                        # this worker's slice of the global minibatch, its gradient scaled by the global rows
                        lo, hi = shard(start, stop)
                        for layer in offset:  # Dropout draws the bits of the global minibatch's rows lo..hi
                            layer.row_offset = lo - start
                        xb, targets = data.rows(lo, hi, order)
                        step_losses[step], step_metric = train_step(xb, targets, stop - start)
                        metric = metric + step_metric
                    if on_step is not None:
                        on_step(epoch, step + 1, steps)
                if functional:
                    step_losses, metric = static.finish_epoch()
                elif static is not None:
                    metric = static.finish_epoch(step_losses, metric)
                sums = {METRIC: metric}
                if val is not None:
                    model.eval()
                    sums[VAL_LOSS], sums[VAL_METRIC] = _totals(model, val_part, value)
                    model.train()
                    if l2:
                        sums[L2] = l2_penalty(model, l2, weights)
                if functional:
                    rows.append(_row(dev, sums, step_losses, model.dtype))
                else:
                    for column, value_sum in sums.items():
                        row[column] = value_sum
                if reducer is not None:  # one small reduction of the epoch's additive sums
                    sums = row[METRIC:]
                    reduced = reducer.reduce_metrics(sums)
                    if reduced is not sums:
                        row[METRIC:] = reduced
                pending.append((epoch, began))
                if epoch % log_every == 0 or epoch == epochs:
                    if functional:
                        block = dev.xp.stack(rows)
                        rows.clear()
                    _flush(dev, block, pending, history, callback, optimizer, loss, data, val)
                if stopped:
                    break
            if early_stopping is not None:
                early_stopping.finish(model)
        finally:  # the recorded step holds a graph and a cuBLAS handle: released here, not by the GC
            model.train(was_training)
            for layer in offset:
                layer.row_offset = 0
            if static is not None:
                static.close()
    return history


def place(model, X, y, validation, loss, device, batch_size, sample_weight=None):
    """``(device, data, validation data, batch)``: ``model`` moved to ``device`` (default its own), the training
    set (with its ``sample_weight``) and the validation set checked and put there once (``DeviceData``), the
    minibatch size checked."""
    dev = model.device if device is None else backend.device(device)
    model.to(dev)
    data = DeviceData(dev, X, y, model, loss, sample_weight=sample_weight)
    val = DeviceData(dev, validation[0], validation[1], model, loss, "validation X") if validation else None
    return dev, data, val, check_batch_size(batch_size, data.n)


def check_row_weights(loss):
    """InputError unless ``loss`` takes sample weights (``Loss.takes_row_weights``)."""
    if not loss.takes_row_weights():
        raise InputError(f"{type(loss).__name__} does not take sample_weight (its value_and_grad does not say "
                         "row_weights = True): train without them, or weight the rows in the loss")


def check_clip_norm(clip_norm):
    """InputError unless ``clip_norm`` is None or a positive finite number."""
    if clip_norm is not None and (isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float))
                                  or not 0 < clip_norm < float("inf")):
        raise InputError(f"clip_norm must be a positive finite number or None, got {clip_norm!r}")


def check_coupled(layers, batch, rows):
    """InputError where a layer that uses the whole minibatch's statistics (BatchNorm) would get a minibatch of
    one row (batch size 1, or a last minibatch of 1 of ``rows``)."""
    coupled = [layer for layer in layers if layer.couples_rows]
    if coupled and (batch == 1 or rows % batch == 1):
        name = type(coupled[0]).__name__.removeprefix("Stacked")  # a stack's: its members' layer
        raise InputError(f"{name} needs at least 2 rows in every minibatch; batch size "
                         f"{batch} over {rows} rows leaves a minibatch of 1 row: change the batch size")


def check_readers(early_stopping, schedule, log_every):
    """InputError unless ``schedule`` is a Schedule (or None) and, where it or ``early_stopping`` reads the
    metrics after every epoch, ``log_every`` is 1."""
    if early_stopping is not None and log_every != 1:
        raise InputError(f"early_stopping reads the metrics after every epoch: use log_every=1, not {log_every}")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise InputError(f"schedule must be a portablenn.schedules.Schedule, not {type(schedule).__name__}")
    if schedule is not None and schedule.reads_metrics and log_every != 1:
        raise InputError(f"{type(schedule).__name__} reads the metrics after every epoch: use log_every=1, "
                         f"not {log_every}")


def check_monitors(loss, validated, early_stopping, schedule):
    """InputError naming a field that ``early_stopping`` or ``schedule`` monitors and the fit does not record
    (``validated``: with validation data)."""
    recorded = fields(loss, validated)
    for what, monitor in (("EarlyStopping", getattr(early_stopping, "monitor", None)),
                          (type(schedule).__name__, getattr(schedule, "monitor", None))):
        if monitor is not None and monitor not in recorded:
            needs = " (it needs validation data)" if monitor.startswith("val_") and not validated else ""
            raise InputError(f"{what} monitors {monitor!r}, which this fit does not record{needs}; "
                             f"it records {', '.join(recorded)}")


def _row(dev, sums, step_losses, dtype):
    """An epoch's metric row (``history`` columns L2 .. LOSSES, then the per-step losses) as one new array, for
    devices whose arrays cannot be written into; ``sums`` maps a column to a 0-d array or a float (0 if absent)."""
    xp, zero = dev.xp, dev.zeros((), dtype)
    head = [zero if column not in sums else sums[column] + zero for column in range(LOSSES)]
    return xp.concat([xp.stack(head), step_losses])


_flush = read_metrics  # module-level, so that a test can patch train._flush


def _totals(model, data, value):
    """Summed loss (without the L2 term) and metric of ``model`` on device data; ``value`` is the loss's
    ``value_and_grad`` (the step's: fused where the backend has it)."""
    xp = model.device.xp
    loss_sum = metric = 0.0
    for start in range(0, data.n, _EVAL_CHUNK):
        xb, targets = data.rows(start, min(start + _EVAL_CHUNK, data.n))
        _, step_loss, step_metric = value(xp, model.forward(xb), targets, 1.0)
        loss_sum, metric = loss_sum + step_loss, metric + step_metric
    return loss_sum, metric


@contextlib.contextmanager
def _evaluating(model):
    """Eval mode inside, the model's own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def evaluate(model, X, y, *, l2=0.0, device=None, loss=None, return_dict=False):
    """Mean loss (softmax cross-entropy by default, plus the L2 term) and the loss's metrics, in eval mode.

    Parameters
    ----------
    X : array of shape (n_samples, in_features)
    y : array of shape (n_samples,) or (n_samples, outputs)
        The targets ``loss`` takes (integer labels for softmax cross-entropy).
    loss : Loss or str, optional
        As ``fit``'s.
    return_dict : bool
        Return every figure by its History name (as Keras' ``evaluate(return_dict=True)``).

    Returns
    -------
    (loss, metric) : tuple of float
        The mean loss and the loss's first metric: the error rate for classification, the RMSE for
        regression. With ``return_dict``, ``{"loss": ..., "error": ...}`` or
        ``{"loss": ..., "rmse": ..., "r2": ...}``.
    """
    loss, l2 = get_loss(loss), check_l2(l2)
    dev = model.device if device is None else backend.device(device)
    model.to(dev)
    with dev.activate(), _evaluating(model):
        data = DeviceData(dev, X, y, model, loss)
        loss_sum, metric = _totals(model, data, loss_function(loss, dev.kernels))
        mean = loss_sum / data.n
        if l2:
            mean = mean + l2_penalty(model, l2)
        values = dev.to_numpy(dev.xp.stack([mean, metric])).astype(np.float64)
    metrics = loss.metrics(values[1:], data.n, data.outputs, data.statistics)
    result = {"loss": float(values[0]), **{key: float(np.asarray(value)[0]) for key, value in metrics.items()}}
    return result if return_dict else (result["loss"], result[loss.metric_names[0]])


def _forward_all(model, X, device, head):
    dev = model.device if device is None else backend.device(device)
    model.to(dev)
    n = check_features(X, model.in_features, dtype=model.dtype)
    with dev.activate(), _evaluating(model):
        Xd = dev.asarray(X, dtype=model.dtype)
        parts = [head(dev.xp, model.forward(Xd[s:min(s + _EVAL_CHUNK, n), :])) for s in range(0, n, _EVAL_CHUNK)]
        return dev.to_numpy(dev.xp.concat(parts, axis=0))


def predict(model, X, *, device=None, loss=None):
    """What ``loss`` predicts from each row of ``X``, as a host NumPy array, in eval mode: class indices
    ``(n_samples,)`` (int64) of the largest logit for softmax cross-entropy (the default), 0/1 labels for
    binary cross-entropy, the outputs ``(n_samples, outputs)`` for regression."""
    loss = get_loss(loss)
    predictions = _forward_all(model, X, device, loss.predict)
    return predictions.astype(np.int64) if predictions.dtype.kind in "biu" else predictions


def predict_proba(model, X, *, device=None, loss=None):
    """Probabilities as a host NumPy array, in eval mode: softmax ``(n_samples, classes)`` for softmax
    cross-entropy (the default), sigmoids for binary cross-entropy; TypeError for regression losses."""
    return _forward_all(model, X, device, get_loss(loss).probabilities)
