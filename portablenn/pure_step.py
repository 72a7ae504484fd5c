"""The training step as a pure function of the training state, for arrays that cannot change in place.

JAX's arrays are immutable and its speed comes from compiling whole functions. So here one minibatch of
training is ``(state, sums, X, targets, order, start, index, hyper) -> (state, sums)``: ``state`` holds the
model's parameters, the optimizer's state and the layers' buffers; ``sums`` the epoch's per-step losses and its
metric sum. The minibatch is gathered inside from the device-resident data by its first position ``start``
(through the epoch's permutation ``order``, or None) and its loss written at ``index``: one compiled function
serves every full minibatch, and a partial last one compiles once more (its row count is static).

The step itself is ``portablenn.step.Step``, unchanged: the function binds the state into the model and the
optimizer, calls it and collects what it rebound (``Step`` takes the optimizers' functional rules where the
backend is not ``mutable``). It runs only while being compiled, so everything it changed on the Python objects
(layer caches, the optimizer's step count) is put back afterwards. After every call the new state is rebound
into the model and optimizer, so that callbacks, validation and checkpoints see it as on any other device.
The host passes the step's optimizer scalars (``optimizer.hyper``: learning rate, Adam's bias correction) as
arguments, so schedules and Adam need no recompilation. The state is read from the model before every call, so
a callback that rebinds a parameter between steps is seen; its arrays are donated to the next step.

``Backend.compile_pure`` compiles it (JAX: ``jax.jit`` with ``state`` and ``sums`` donated); a backend that
does not compile runs it eagerly.
"""

__all__ = ["PureStep", "pure_step"]


def pure_step(dev, data, batch, steps, train_step, model, optimizer, dtype, loss, l2, clip_norm):
    """The ``PureStep`` of a fit: the one of ``optimizer``'s previous fit of ``model``, with its compiled functions,
    where nothing its trace reads has changed (device, minibatch size and count, dtype, the model's layers, the
    loss, L2, clipping, the optimizer's class and settings other than ``lr``, which comes in through ``hyper``);
    else a new one, kept on the optimizer for the next fit (``MLPClassifier.partial_fit`` calls ``fit`` per
    call: compiling is then paid once, not every call)."""
    settings = sorted((k, repr(v)) for k, v in optimizer.to_config().items() if k != "lr")
    key = (dev, batch, steps, str(dtype), repr(model), type(loss), repr(loss), len(data.targets), float(l2),
           clip_norm, type(optimizer), tuple(settings))  # len: the targets end with sample weights, or not
    held = getattr(optimizer, "_pure_step", None)
    if held is not None and held[0] == key and held[1]._model is model:
        held[1].adopt(data)
        return held[1]
    step = PureStep(dev, data, batch, steps, train_step, model, optimizer, dtype)
    optimizer._pure_step = (key, step)
    return step


class PureStep:
    """Every minibatch of an epoch through one pure (compiled) function of the training state.

    Parameters
    ----------
    dev : Device
    data : portablenn.data.DeviceData
        The training set on the device: ``X (n, in)`` and the loss's targets.
    batch : int
        Rows per minibatch.
    steps : int
        Minibatches per epoch (the length of the per-step loss vector).
    train_step : portablenn.step.Step
    model : Sequential
    optimizer : Optimizer
    dtype : str
        The model's dtype (of the loss and metric sums).
    members : int, optional
        A stack's (``portablenn.stack_fit``): the step's loss and metric sums are ``(members,)`` arrays, the epoch's
        ``(members, steps)`` and ``(members,)``.
    """

    def __init__(self, dev, data, batch, steps, train_step, model, optimizer, dtype, members=None):
        self.dev, self.data, self.batch, self.steps = dev, data, batch, steps
        self._lead = () if members is None else (int(members),)
        self._train_step, self._model, self._optimizer, self._dtype = train_step, model, optimizer, dtype
        self._params = model.named_parameters()  # (key, layer, name)
        self._buffers = [(layer, name) for layer in model.layers for name in layer.buffers]
        self.adopt(data)
        self._run = dev.backend.compile_pure(self._pure, dev, donate_argnums=(0, 1), static_argnames=("rows",))

    def adopt(self, data):
        """Start a fit on ``data``: the optimizer's state made, and the model's and optimizer's arrays copied once
        (the compiled function donates, frees, the state it is given: while fit runs they hold arrays of their
        own, never a caller's)."""
        xp, optimizer = self.dev.xp, self._optimizer
        self.data, self.sums, self.order = data, None, None
        for key, layer, name in self._params:  # the optimizer's state exists before the function is compiled
            optimizer.buffers(key, layer.params[name], self.dev)
        self._rebind(([xp.asarray(layer.params[name], copy=True) for _, layer, name in self._params],
                      [tuple(xp.asarray(s, copy=True) for s in optimizer.state[key]) for key, _, _ in self._params],
                      [xp.asarray(layer.buffers[name], copy=True) for layer, name in self._buffers]))

    def close(self):
        """The fit ended: let go of its data (the compiled functions stay, for the optimizer's next fit)."""
        self.data = self.sums = self.order = None

    def start_epoch(self, order=None):
        """Zero the epoch's sums; ``order`` is its row permutation (a device index array) or None."""
        self.order = order
        self.sums = (self.dev.zeros(self._lead + (self.steps,), self._dtype), self.dev.zeros(self._lead, self._dtype))

    def run(self, index, start, stop):
        """Train on rows ``start:stop`` of the epoch's order, the ``index``-th minibatch (0-based)."""
        optimizer, data = self._optimizer, self.data
        hyper = optimizer.hyper(optimizer.steps + 1)
        # the state as the model holds it now (a callback between steps may have rebound a parameter)
        state, self.sums = self._run(self._collect(), self.sums, data.X, data.targets, self.order, start, index,
                                     hyper, rows=stop - start)
        optimizer.steps += 1
        self._rebind(state)

    def finish_epoch(self):
        """``(losses (steps,), metric)``: the epoch's per-step loss sums and its metric sum, on the device (a
        stack's: ``(members, steps)`` and ``(members,)``)."""
        sums, self.sums = self.sums, None
        return sums

    def _pure(self, state, sums, X, targets, order, start, index, hyper, rows):
        xp = self.dev.xp
        positions = start + xp.arange(rows, dtype=self.dev.index_dtype)
        if order is not None:
            positions = xp.take(order, positions, axis=0)
        xb, tb = xp.take(X, positions, axis=0), tuple(xp.take(t, positions, axis=0) for t in targets)
        saved = self._save()
        try:
            self._rebind(state)
            loss, metric = self._train_step(xb, tb, rows, hyper)
            state = self._collect()
        finally:
            self._restore(saved)
        losses, total = sums
        # where, not an index assignment: arrays that cannot change in place (a stack's loss (M,) as a column)
        hits = xp.arange(self.steps, dtype=self.dev.index_dtype) == index
        losses = xp.where(hits, xp.expand_dims(loss, axis=-1) if self._lead else loss, losses)
        return state, (losses, total + metric)

    def _rebind(self, state):
        params, slots, buffers = state
        for (key, layer, name), value, kept in zip(self._params, params, slots):
            layer.params[name] = value
            self._optimizer.state[key] = kept
        for (layer, name), value in zip(self._buffers, buffers):
            layer.buffers[name] = value

    def _collect(self):
        return ([layer.params[name] for _, layer, name in self._params],
                [tuple(self._optimizer.state[key]) for key, _, _ in self._params],
                [layer.buffers[name] for layer, name in self._buffers])

    def _save(self):
        """What compiling the step changes on the Python objects: every layer's and the optimizer's attributes,
        and the contents of those that are dicts (params, grads, buffers, caches), which others may hold."""
        objects = [*self._model.layers, self._optimizer]
        return [(obj, dict(vars(obj)), {key: dict(value) for key, value in vars(obj).items() if isinstance(value, dict)})
                for obj in objects]

    @staticmethod
    def _restore(saved):
        for obj, attributes, contents in saved:
            vars(obj).clear()
            vars(obj).update(attributes)
            for key, content in contents.items():  # the same dict objects, their old items
                attributes[key].clear()
                attributes[key].update(content)
