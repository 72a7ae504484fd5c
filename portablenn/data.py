"""A dataset held once on the device: the features and the loss's encoding of the targets, read by rows."""
from .validation import check_features, check_sample_weight

__all__ = ["DeviceData"]


class DeviceData:
    """``X (n, in_features)`` and ``targets`` (the loss's device arrays, each with ``n`` rows) on a device,
    with ``statistics``: the host figures of the targets the loss's metrics need (``Loss.statistics``).

    Parameters
    ----------
    device : Device
    X, y : host or any-library arrays
        Checked here (features against the model, targets by the loss), then copied once.
    model : Sequential
        Its input features, outputs and dtype.
    loss : portablenn.losses.Loss
        Checks and encodes ``y`` (softmax cross-entropy: integer labels and one-hot rows).
    name : str
        "X", or what the error messages call this set ("validation X").
    sample_weight : optional
        One weight per row (``validation.check_sample_weight``), the last of ``targets`` as ``(n, 1)``.
    """

    def __init__(self, device, X, y, model, loss, name="X", sample_weight=None):
        n = check_features(X, model.in_features, name, dtype=model.dtype)
        y = loss.check_targets(y, n, model.out_features, "y" if name == "X" else f"{name} labels")
        self.n, self.xp, self.start, self.outputs = n, device.xp, 0, model.out_features
        self.statistics = loss.statistics(y)
        self.X = device.asarray(X, dtype=model.dtype)
        self.targets = loss.encode(device, y, model.out_features, model.dtype)
        weights = check_sample_weight(sample_weight, n)
        if weights is not None:  # after the loss's own targets, where its value_and_grad finds them
            self.targets = (*self.targets, device.asarray(weights.reshape(n, 1), dtype=model.dtype))

    def rows(self, start, stop, index=None):
        """``(X rows, targets rows)``: rows ``start:stop`` in order, or at positions ``index[start:stop]``
        (a device permutation)."""
        start, stop = self.start + start, self.start + stop
        if index is None:
            return self.X[start:stop, ...], tuple([t[start:stop, ...] for t in self.targets])
        take, idx = self.xp.take, index[start:stop]
        return take(self.X, idx, axis=0), tuple([take(t, idx, axis=0) for t in self.targets])

    def part(self, lo, hi):
        """The rows ``lo:hi`` as a DeviceData that reads them where they are (no copy)."""
        view = object.__new__(DeviceData)
        view.__dict__.update(self.__dict__, n=hi - lo, start=self.start + lo)
        return view
