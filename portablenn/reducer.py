"""Data parallelism as training sees it: the Reducer interface ``fit`` calls, and the flat gradient buffer.

``portablenn.distributed`` implements ``Reducer`` over MPI and NCCL and registers a comm adapter at
import; training never imports it.
"""
import numpy as np

from .validation import InputError

__all__ = ["Reducer", "FlatGradients", "register_comm_adapter", "comm_reducer"]


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


def comm_reducer(comm):
    """The Reducer a registered adapter makes of ``comm``; InputError if none knows it."""
    for adapter in _COMM_ADAPTERS:
        reducer = adapter(comm)
        if reducer is not None:
            return reducer
    raise InputError("comm must be an mpi4py communicator or one made by portablenn.distributed."
                     f"make_communicator, not {type(comm).__name__}")


class FlatGradients:
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
