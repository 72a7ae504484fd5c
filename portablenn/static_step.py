"""The training step with static shapes and addresses, so that a CUDA graph can record it once.

A captured graph replays fixed kernels on fixed memory: it cannot slice ``X[start:stop]`` at a new
offset, nor write a step's loss to a new place. So here the minibatch's rows are gathered from
static buffers by a step counter that lives on the device, the loss lands in a static per-epoch
vector at the counter's position, and the counter then advances, all inside the step
(``Kernels.minibatch`` and ``Kernels.record_step``: on CuPy one kernel each). The host only calls
``run()`` once per full minibatch; a partial last minibatch takes the ordinary path.

The device's backend compiles the step (``Backend.compile``): CuPy's records it as a CUDA graph on
its second call and replays it from then on; elsewhere the step runs eagerly (the same operations, so the CPU tests check the
logic that the GPU replays).
"""

__all__ = ["StaticStep"]


class StaticStep:
    """Full minibatches of one epoch through a step a CUDA graph can replay.

    Parameters
    ----------
    dev : Device
    data : portablenn.data.DeviceData
        The training set on the device: ``X (n, in)`` and the targets of softmax cross-entropy,
        ``(labels (n,), onehot (n, classes))``.
    batch : int
        Rows per minibatch; the epoch's first ``n // batch`` minibatches run here.
    shuffled : bool
        Whether every epoch brings a row permutation (``start_epoch(order)``).
    train_step : callable(xb, targets, rows) -> (loss_sum, wrong)
        One minibatch's forward, backward and update (``portablenn.step.Step``), returning 0-d device arrays.
    optimizer : Optimizer
        Its host-side step count is kept right: a replay does not run Python. It must be ``replayable``
        (the same scalars every step: a recorded graph bakes in the learning rate), so not with a schedule.
    dtype : str
        The model's dtype (of the loss and error sums).
    """

    def __init__(self, dev, data, batch, shuffled, train_step, optimizer, dtype):
        if not optimizer.replayable:
            what = "a learning-rate schedule" if optimizer.schedule is not None else type(optimizer).__name__
            raise ValueError(f"a recorded step replays the same scalars every step, which {what} changes: "
                             "train without graph=True")
        self.dev, self.data, self.batch, self.shuffled = dev, data, batch, shuffled
        self.steps = data.n // batch
        self._train_step, self._optimizer = train_step, optimizer
        index = dev.index_dtype
        self.order = dev.arange(data.n, index) if shuffled else None  # this epoch's row permutation
        self.start = dev.zeros((), index)  # position of the next minibatch's first row, advanced by the step
        self._offsets = dev.arange(batch, index)
        self._starts = dev.arange(self.steps, index) * batch  # each step's first position
        self.losses = dev.zeros((self.steps,), dtype)  # per-step loss sums of the epoch
        self.wrong = dev.zeros((), dtype)  # wrong predictions so far this epoch
        self._run = dev.backend.compile(self._step, dev)

    def start_epoch(self, order=None):
        """Rewind to the epoch's first row and zero the sums; ``order`` is its permutation when shuffled."""
        if self.shuffled:
            self.order[...] = order
        self.start[...] = 0
        self.losses[...] = 0
        self.wrong[...] = 0

    def run(self):
        """Train on the next full minibatch (replaying the captured graph where there is one)."""
        done = self._optimizer.steps
        self._run()
        self._optimizer.steps = done + 1

    def finish_epoch(self, step_losses, wrong):
        """Copy the per-step losses into ``step_losses[:steps]``; returns ``wrong`` plus this epoch's count."""
        step_losses[:self.steps] = self.losses
        return wrong + self.wrong

    def close(self):
        """Release the recorded step (its graph and cuBLAS handle on CuPy); ``fit`` calls it when it ends.

        Also breaks the cycle between this object and the recording, which holds ``_step``.
        """
        close, self._run = getattr(self._run, "close", None), None
        if close is not None:
            close()

    def _step(self):
        kernels, data = self.dev.kernels, self.data
        labels, onehot = data.targets
        xb, yb, ob = kernels.minibatch(data.X, labels, onehot, self.order, self.start, self._offsets)
        loss, wrong = self._train_step(xb, (yb, ob), self.batch)
        kernels.record_step(self.losses, self.wrong, self.start, self._starts, loss, wrong, self.batch)
