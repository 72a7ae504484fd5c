"""fit / evaluate / predict: the one training loop, identical on every device."""
import time

import numpy as np

from . import backend
from .losses import l2_penalty, softmax, weight_matrices
from .static_step import StaticStep
from .validation import InputError, check_batch_size, check_epochs, check_features, check_l2, check_labels

__all__ = ["DivergenceError", "History", "Reducer", "fit", "evaluate", "predict", "predict_proba",
           "register_comm_adapter"]

_EVAL_CHUNK = 8192  # rows per forward pass when evaluating, to bound activation memory


class History:
    """Per-epoch records ``{"epoch", "loss", "error", "val_loss", "val_error", "seconds"}``.

    ``history["loss"]`` is the list of one field over the epochs, as Keras' ``History.history``.
    ``loss``/``error`` are means over the epoch's minibatches as they were trained (the running
    average Keras reports); ``val_*`` are measured on the validation set after the epoch;
    ``seconds`` is wall-clock time up to the next epoch's start, the last epoch of each metrics read
    up to the read itself (which waits for the device), so GPU time is never under-counted.
    """

    def __init__(self):
        self.records = []

    def __getitem__(self, key):
        return [r[key] for r in self.records]

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __repr__(self):
        return f"History({len(self)} epochs{', last ' + repr(self.records[-1]) if self.records else ''})"


class _DeviceData:
    """A labelled dataset held once on the device: X, integer labels and one-hot rows."""

    def __init__(self, device, X, y, model, name="X"):
        n = check_features(X, model.in_features, name, dtype=model.dtype)
        labels = check_labels(y, n, model.out_features, "y" if name == "X" else f"{name} labels")
        self.n, self.xp = n, device.xp
        self.X = device.asarray(X, dtype=model.dtype)
        self.y = device.asarray(labels, dtype=device.index_dtype)
        classes, xp, dtype = model.out_features, device.xp, device.dtype(model.dtype)
        with device.activate():
            if classes <= n:  # rows of the identity picked by label: ~6x faster than comparing with arange
                identity = xp.eye(classes, dtype=dtype, device=device.native)
                self.onehot = xp.take(identity, self.y, axis=0)
            else:  # never classes squared: an identity larger than the one-hot rows themselves
                columns = xp.arange(classes, dtype=self.y.dtype, device=device.native)
                self.onehot = xp.astype(self.y[:, None] == columns, dtype)

    def rows(self, start, stop, index=None):
        """Rows ``start:stop`` in order, or at positions ``index[start:stop]`` (a device permutation)."""
        if index is None:
            return self.X[start:stop, :], self.y[start:stop], self.onehot[start:stop, :]
        take, idx = self.xp.take, index[start:stop]
        return take(self.X, idx, axis=0), take(self.y, idx, axis=0), take(self.onehot, idx, axis=0)


# -- data parallelism: the interface fit defines (portablenn/distributed.py implements it over MPI/NCCL) --
class Reducer:
    """How ``fit`` combines the work of several workers that train one model together; the base class is
    a single worker (``shard`` returns its arguments, the reductions return theirs).

    ``fit(..., reducer=r)`` calls, in this order:

    * ``r.start(model, optimizer, n, val_n, settings)`` once, when the model, data and optimizer are on
      the device: collective set-up (check that the workers agree, give all of them worker 0's weights
      and optimizer state). ``n``/``val_n`` are the training/validation rows (``val_n`` None without
      validation); ``settings`` is a dict of the fit arguments every worker must share.
    * ``r.shard(start, stop) -> (lo, hi)``: this worker's contiguous rows of the global minibatch
      ``start:stop`` (its loss gradient is still scaled by the global ``stop - start``). ``fit`` also
      evaluates only the rows ``shard(0, val_n)`` of the validation set.
    * ``r.reduce_gradients(flat)`` every step after backward: ``flat`` is a 1-D device array with every
      parameter's gradient (``layer.grads`` are views into it); returns the sum over the workers,
      ``flat`` itself when summed in place, or a new array.
    * ``r.reduce_metrics(sums)`` once per epoch: a 1-D device vector of additive sums (wrong
      predictions, validation loss and wrong predictions, each step's loss); returns the sum over the
      workers, in place or new.

    With a reducer the optimizer step is never fused into backward: the gradients must exist to be summed.
    """

    def start(self, model, optimizer, n, val_n, settings):
        pass

    def shard(self, start, stop):
        return start, stop

    def reduce_gradients(self, flat):
        return flat

    def reduce_metrics(self, sums):
        return sums


_COMM_ADAPTERS = []  # callables comm -> Reducer, or None for a comm they do not know


def register_comm_adapter(adapter):
    """Let ``fit(..., comm=c)`` train with the Reducer ``adapter(c)`` (None: not a comm it knows).

    ``portablenn.distributed`` registers one for mpi4py communicators and its ``Communicator``; train
    itself never imports it.
    """
    if adapter not in _COMM_ADAPTERS:
        _COMM_ADAPTERS.append(adapter)
    return adapter


def _comm_reducer(comm):
    for adapter in _COMM_ADAPTERS:
        reducer = adapter(comm)
        if reducer is not None:
            return reducer
    raise InputError("comm must be an mpi4py communicator or one made by portablenn.distributed."
                     f"make_communicator, not {type(comm).__name__}")


class _FlatGradients:
    """Every parameter's gradient in one flat device buffer, so a reducer sums them all in one call.

    ``layer.grads[name]`` are views into the buffer: kernels that write with ``out=`` fill it directly; a
    gradient a kernel returned as a new array is copied in before the reduction.
    """

    def __init__(self, model):
        self.xp, self.layout, offset = model.device.xp, [], 0
        for _, layer, name in model.named_parameters():
            shape = tuple(int(s) for s in layer.params[name].shape)
            size = int(np.prod(shape))
            self.layout.append((layer, name, offset, size, shape))
            offset += size
        self._point(model.device.zeros(offset, model.dtype))

    def _point(self, flat):
        self.flat, self.views = flat, []
        for layer, name, offset, size, shape in self.layout:
            layer.grads[name] = view = self.xp.reshape(flat[offset:offset + size], shape)
            self.views.append(view)

    def reduce(self, reducer):
        flat = self.flat
        for (layer, name, offset, size, _), view in zip(self.layout, self.views):
            grad = layer.grads[name]
            if grad is not view:  # kernels that ignore out= made a new array: pack it
                flat[offset:offset + size] = self.xp.reshape(grad, (size,))
        reduced = reducer.reduce_gradients(flat)
        if reduced is not flat:  # a new array (libraries reduced through a host copy): views into it
            self._point(reduced)
        else:
            for (layer, name, *_), view in zip(self.layout, self.views):
                layer.grads[name] = view


class _Rows:
    """Rows ``lo:hi`` of device data, read where they are (this worker's part of the validation set)."""

    def __init__(self, data, lo, hi):
        self.data, self.lo, self.n = data, lo, hi - lo

    def rows(self, start, stop):
        return self.data.rows(self.lo + start, self.lo + stop)


def fit(model, X, y, *, optimizer, epochs=1, batch_size=100, shuffle=True, l2=0.0, device=None, seed=0,
        validation=None, callback=None, log_every=1, on_step=None, initial_epoch=0, comm=None, reducer=None,
        graph=False):
    """Train ``model`` in place with minibatch gradient descent on softmax cross-entropy.

    Parameters
    ----------
    model : Sequential
    X : array of shape (n_samples, in_features)
        NumPy or any Array API array; copied to the device once.
    y : integer array of shape (n_samples,)
    optimizer : Optimizer
        ``SGD(lr, ...)`` or ``Adam(lr, ...)``; bound to the model here.
    epochs : int
        The epoch to train up to (as Keras): with ``initial_epoch=k`` it trains epochs k+1..epochs.
    batch_size : int or None
        None is full-batch gradient descent (the CS231n loop). With ``comm`` it is the global
        minibatch, split into contiguous slices over the ranks.
    shuffle : bool
        A new permutation each epoch, drawn from ``(seed, epoch)`` so that a resumed run shuffles
        as the uninterrupted one; False takes minibatches in order (CMU 10-714).
    l2 : float
        Adds ``0.5 * l2 * sum(W ** 2)`` over weight matrices to the loss, ``l2 * W`` to their gradients.
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
    graph : bool
        Record the training step once and replay it for every full minibatch: a CUDA graph on a
        CuPy device, one launch per step instead of ~20 (``portablenn.static_step``). Minibatches
        are gathered on the device by a step counter; the results are those of the ordinary path.
        Elsewhere the same static step runs eagerly (slower than the ordinary path on the CPU:
        it copies each minibatch). Not with ``comm``/``reducer`` nor with Adam (whose step size changes
        every step).

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
    initial_epoch = check_epochs(initial_epoch)
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise InputError(f"log_every must be a positive integer, got {log_every!r}")
    if comm is not None and reducer is not None:
        raise InputError("pass fit either comm or reducer, not both")
    if reducer is not None and not isinstance(reducer, Reducer):
        raise InputError(f"reducer must be a portablenn.train.Reducer, not {type(reducer).__name__}")
    if graph and (comm is not None or reducer is not None):
        raise InputError("graph=True cannot be combined with data-parallel training (comm, reducer)")
    if graph and not optimizer.replayable:
        raise InputError(f"graph=True needs an optimizer that does the same work every step (SGD), "
                         f"not {type(optimizer).__name__}")
    dev = model.device if device is None else backend.device(device)
    model.to(dev)
    data = _DeviceData(dev, X, y, model)
    val = _DeviceData(dev, validation[0], validation[1], model, "validation X") if validation else None
    batch = check_batch_size(batch_size, data.n)
    optimizer.bind(model, l2)
    kernels, fused = dev.kernels, optimizer.in_backward
    grads = None  # -- distributed hook 1: the Reducer's set-up; without one a single worker (identities)
    if comm is not None:
        reducer = _comm_reducer(comm)
    if reducer is None:
        reducer = Reducer()
    else:
        reducer.start(model, optimizer, data.n, None if val is None else val.n, dict(
            epochs=epochs, initial_epoch=initial_epoch, batch_size=batch, shuffle=bool(shuffle), seed=seed, l2=l2))
        grads = _FlatGradients(model)  # gradients must be materialised, in one buffer, to be summed
        fused = False
    val_rows = val  # this worker evaluates its contiguous part shard(0, val.n) of the validation set
    if val is not None and reducer.shard(0, val.n) != (0, val.n):
        val_rows = _Rows(val, *reducer.shard(0, val.n))
    starts = range(0, data.n, batch)
    steps = len(starts)
    weights = weight_matrices(model) if l2 else None
    copy_logits = model.keeps_output  # the loss kernel may overwrite logits that backward still reads

    def train_step(xb, yb, onehot, rows):
        """One minibatch (this rank's part of ``rows``): forward, backward, update -> device (loss sum, wrong)."""
        logits = model.forward(xb)
        if copy_logits:
            logits = dev.xp.asarray(logits, copy=True)
        grad, loss, wrong = kernels.softmax_xent(logits, onehot, yb, optimizer.grad_scale / rows)
        if l2:
            loss = loss + xb.shape[0] * l2_penalty(model, l2, weights)
        if fused:
            model.backward(grad, input_grad=False, optimizer=optimizer)
            optimizer.steps += 1
        else:
            model.backward(grad, input_grad=False)
            if grads is not None:  # -- distributed hook 3: one reduction of all gradients
                grads.reduce(reducer)
            optimizer.step()
        return loss, wrong

    history, pending, block = History(), [], None
    with dev.activate():
        shuffled = bool(shuffle) and batch < data.n
        static = StaticStep(dev, data, batch, shuffled, train_step, optimizer, model.dtype) if graph else None
        try:
            for epoch in range(initial_epoch + 1, epochs + 1):
                began = time.perf_counter()
                if not pending:  # a block of metric rows, read back in one transfer by _flush
                    block = dev.zeros((min(log_every, epochs - epoch + 1), _LOSSES + steps), model.dtype)
                row = block[len(pending), :]
                step_losses = row[_LOSSES:]  # per-step loss sums: the epoch's loss, and where it diverged
                order = None
                if shuffled:
                    order = dev.asarray(np.random.default_rng([seed, epoch]).permutation(data.n), dtype=dev.index_dtype)
                wrong = 0.0
                if static is not None:
                    static.start_epoch(order)
                for step, start in enumerate(starts):
                    if static is not None and step < static.steps:
                        static.run()  # a full minibatch through the recorded step
                    else:
                        stop = min(start + batch, data.n)
                        # -- distributed hook 2: this worker's slice of the global minibatch, scaled by its global rows
                        lo, hi = reducer.shard(start, stop)
                        xb, yb, onehot = data.rows(lo, hi, order)
                        step_losses[step], step_wrong = train_step(xb, yb, onehot, stop - start)
                        wrong = wrong + step_wrong
                    if on_step is not None:
                        on_step(epoch, step + 1, steps)
                if static is not None:
                    wrong = static.finish_epoch(step_losses, wrong)
                row[_WRONG] = wrong
                if val is not None:
                    row[_VAL_LOSS], row[_VAL_WRONG] = _totals(model, val_rows)
                    if l2:
                        row[_L2] = l2_penalty(model, l2, weights)
                sums = row[_WRONG:]  # -- distributed hook 4: one small reduction of the epoch's additive sums
                reduced = reducer.reduce_metrics(sums)
                if reduced is not sums:
                    row[_WRONG:] = reduced
                pending.append((epoch, began))
                if epoch % log_every == 0 or epoch == epochs:
                    _flush(dev, block, pending, history, callback, optimizer, data.n,
                           None if val is None else val.n)
        finally:  # the recorded step holds a graph and a cuBLAS handle: released here, not by the GC
            if static is not None:
                static.close()
    return history


# An epoch's metrics row, all sums (the host divides): the L2 term at the epoch's end (the same on every
# rank), then what data-parallel ranks add up: wrong predictions, validation loss and wrong predictions,
# and the loss sum of every step (which also says where a diverging loss first went bad).
_L2, _WRONG, _VAL_LOSS, _VAL_WRONG, _LOSSES = 0, 1, 2, 3, 4


class DivergenceError(ArithmeticError):
    """The training loss became NaN or infinite; ``epoch`` and ``step`` say where (1-based)."""

    def __init__(self, message, epoch, step):
        super().__init__(message)
        self.epoch, self.step = epoch, step


def _flush(dev, block, pending, history, callback, optimizer, n, val_n):
    """Read the pending epochs' metric rows in one device->host transfer, check them, and record them.

    Vectorised over the rows: with full-batch training every step is an epoch, and a Python pass per
    row would cost as much as a training step.
    """
    values = dev.to_numpy(block[:len(pending), :]).astype(np.float64)  # waits for the device
    # an epoch lasts until the next began, the last until now (after the sync): the block's total is exact
    starts = [began for _, began in pending]
    seconds = np.diff(starts + [time.perf_counter()]).tolist()
    losses = values[:, _LOSSES:]
    columns = {"loss": (losses.sum(axis=1) / n).tolist(), "error": (values[:, _WRONG] / n).tolist(), "seconds": seconds}
    if val_n is not None:
        columns.update(val_loss=(values[:, _VAL_LOSS] / val_n + values[:, _L2]).tolist(),
                       val_error=(values[:, _VAL_WRONG] / val_n).tolist())
    finite = np.isfinite(losses).all(axis=1)
    good = len(pending) if finite.all() else int(np.argmin(finite))
    for i in range(good):
        record = {"epoch": pending[i][0], **{key: column[i] for key, column in columns.items()}}
        history.records.append(record)
        if callback is not None:
            callback(record)
    if good < len(pending):
        epoch, row = pending[good][0], losses[good]
        step = int(np.argmin(np.isfinite(row))) + 1
        pending.clear()
        raise DivergenceError(f"the training loss became {row[step - 1]} at epoch {epoch}, step {step} of "
                              f"{row.shape[0]}: the learning rate ({optimizer.lr:g}) is probably too high",
                              epoch, step)
    pending.clear()


def _totals(model, data):
    """Summed loss (without the L2 term) and number of errors of ``model`` on device data."""
    kernels = model.device.kernels
    loss_sum = wrong = 0.0
    for start in range(0, data.n, _EVAL_CHUNK):
        xb, yb, onehot = data.rows(start, min(start + _EVAL_CHUNK, data.n))
        _, step_loss, step_wrong = kernels.softmax_xent(model.forward(xb), onehot, yb, 1.0)
        loss_sum, wrong = loss_sum + step_loss, wrong + step_wrong
    return loss_sum, wrong


def _sums(model, data, l2):
    """Mean loss (with the L2 term) and error rate of ``model`` on device data, as 0-d device arrays."""
    loss_sum, wrong = _totals(model, data)
    loss = loss_sum / data.n
    if l2:
        loss = loss + l2_penalty(model, l2)
    return loss, wrong / data.n


def evaluate(model, X, y, *, l2=0.0, device=None):
    """Mean softmax cross-entropy (plus the L2 term) and error rate.

    Parameters
    ----------
    X : array of shape (n_samples, in_features)
    y : integer array of shape (n_samples,)

    Returns
    -------
    (loss, error) : tuple of float
    """
    dev = model.device if device is None else backend.device(device)
    model.to(dev)
    with dev.activate():
        data = _DeviceData(dev, X, y, model)
        loss, error = _sums(model, data, check_l2(l2))
        values = dev.to_numpy(dev.xp.stack([loss, error]))
    return float(values[0]), float(values[1])


def _forward_all(model, X, device, head):
    dev = model.device if device is None else backend.device(device)
    model.to(dev)
    n = check_features(X, model.in_features, dtype=model.dtype)
    with dev.activate():
        Xd = dev.asarray(X, dtype=model.dtype)
        parts = [head(dev.xp, model.forward(Xd[s:min(s + _EVAL_CHUNK, n), :])) for s in range(0, n, _EVAL_CHUNK)]
        return dev.to_numpy(dev.xp.concat(parts, axis=0))


def predict(model, X, *, device=None):
    """Class indices ``(n_samples,)`` (host NumPy int64) of the largest logit for each row of ``X``."""
    return _forward_all(model, X, device, lambda xp, logits: xp.argmax(logits, axis=1)).astype(np.int64)


def predict_proba(model, X, *, device=None):
    """Softmax probabilities ``(n_samples, classes)`` as a host NumPy array."""
    return _forward_all(model, X, device, lambda xp, logits: softmax(logits))
