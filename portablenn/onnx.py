"""ONNX export: run a model's own Array API forward pass on ndonnx, which records it as an ONNX graph."""
import copy
import os
import tempfile

import numpy as np

from . import backend
from .layers import Sequential
from .losses import Loss, get_loss

__all__ = ["export_onnx"]

INPUT, LOGITS, PROBABILITIES, OUTPUTS = "input", "logits", "probabilities", "outputs"


def export_onnx(model, path, *, opset=None, loss=None):
    """Write ``model`` as an ONNX file with a dynamic batch dimension, its outputs those of ``loss``'s task.

    The graph is traced from ``model.forward`` itself, in eval mode: every layer runs its usual
    Array API code with ``xp = ndonnx`` (and the generic ``Kernels``), so the file computes exactly
    what the layers define, a layer registered by a user included. The weights and buffers are embedded as
    constants; ``model`` is not modified. Eval mode makes Dropout the identity (no node at all) and
    BatchNorm1d an affine map of its running statistics; both norms are traced as primitive operations
    (ReduceSum, Sub, Mul, Div, Sqrt, Add), not as ONNX's BatchNormalization or LayerNormalization nodes.

    Parameters
    ----------
    model : Sequential
        E.g. from ``portablenn.mlp``; on any device and in float32 or float64.
    path : str or os.PathLike
        Where to write the ``.onnx`` file.
    opset : int, optional
        ONNX opset of the default domain; default ndonnx's own (21 for ndonnx 0.23). Another
        value converts the graph with ``onnx.version_converter``; opsets below 20 fail there, as
        ndonnx's NaN-aware ``max`` reduces a boolean tensor with ReduceMax (allowed from opset 20).
    loss : Loss or str, optional
        The loss the model was trained with (an object or a registered name); default softmax
        cross-entropy. It picks the outputs: its own ``probabilities`` is traced after the forward pass.

    Returns
    -------
    onnx.ModelProto
        The saved model. Input ``"input"`` of shape ``("N", in_features)`` in the model's dtype. Outputs,
        each ``(batch, out_features)`` in that dtype (ndonnx leaves their batch dimension unnamed): ``"logits"`` and ``"probabilities"`` for a loss that
        gives probabilities (softmax for softmax cross-entropy, sigmoids for binary cross-entropy); one
        output ``"outputs"`` for a regression loss (or any loss that defines no ``probabilities``).

    Raises
    ------
    ImportError
        When ndonnx or onnx is not installed.
    TypeError
        When ``model`` is not a portablenn Sequential, or ``loss`` is neither a Loss nor a name.
    ValueError
        When ``opset`` is not a supported opset number.
    """
    try:
        import ndonnx as ndx
        import onnx
    except ImportError as exc:
        raise ImportError(f"export_onnx needs ndonnx and onnx (pip install 'portablenn[onnx]'): {exc}") from exc

    if not isinstance(model, Sequential):
        raise TypeError(f"export_onnx needs a portablenn Sequential (e.g. from mlp), got {type(model).__name__}")
    loss = get_loss(loss)
    dtype = getattr(ndx, model.dtype)
    traced = _on_device(model, _ndonnx_device(ndx), dtype).eval()  # inference: Dropout off, running statistics
    x = ndx.argument(shape=("N", model.in_features), dtype=dtype)
    logits = traced.forward(x)
    if _gives_probabilities(loss):
        outputs = {LOGITS: logits, PROBABILITIES: loss.probabilities(ndx, logits)}
    else:
        outputs = {OUTPUTS: logits}
    proto = ndx.build({INPUT: x}, outputs)
    if opset is not None:
        proto = _convert(onnx, proto, opset)
    _save(onnx, proto, path)
    return proto


def _save(onnx, proto, path):
    """``onnx.save`` (which reads the format from the suffix) into a temporary folder, then the bytes through
    ``outputs.atomic_write``: a kill mid-export leaves the earlier file whole, never a partial one, and a symlink at
    ``path`` is replaced, not written through."""
    from .outputs import atomic_write

    with tempfile.TemporaryDirectory(prefix="portablenn-export-") as folder:
        staged = os.path.join(folder, "model" + os.path.splitext(os.fspath(path))[1][:16])
        onnx.save(proto, staged)
        with open(staged, "rb") as fh:
            data = fh.read()
    atomic_write(path, data, "the ONNX model")


def _gives_probabilities(loss):
    """Whether ``loss`` turns outputs into probabilities: not a regression loss, and its class (or one between it
    and Loss) defines ``probabilities``."""
    return loss.task != "regression" and type(loss).probabilities is not Loss.probabilities


def _ndonnx_device(ndx):
    """A portablenn Device whose namespace is ndonnx, with the generic Array API kernels."""
    return backend.Device("ndonnx", ndx, None, "cpu", fast=False)


def _on_device(module, dev, dtype):
    """A shallow copy of ``module`` (and of its sub-layers) bound to ``dev``, parameters and buffers as constants
    (integer buffers stay int64)."""
    clone = copy.copy(module)
    clone.params = {name: dev.xp.asarray(np.asarray(module.device.to_numpy(p)), dtype=dtype)
                    for name, p in module.params.items()}
    clone.buffers = {name: dev.xp.asarray(np.asarray(module.device.to_numpy(b)),
                                          dtype=dev.xp.int64 if name in module.integer_buffers else dtype)
                     for name, b in getattr(module, "buffers", {}).items()}
    clone.grads = {}
    clone._bind(dev)
    if hasattr(module, "layers"):
        clone.layers = [_on_device(layer, dev, dtype) for layer in module.layers]
    return clone


def _convert(onnx, proto, opset):
    """``proto`` converted to default-domain opset ``opset``."""
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or opset < 1:
        raise ValueError(f"opset must be a positive integer, got {opset!r}")
    current = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset == current:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, int(opset))
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises RuntimeError, ValidationError, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot convert the model from opset {current} to opset {opset}: {reason}") from None
    return converted
