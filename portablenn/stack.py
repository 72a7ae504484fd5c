"""Many models as one: M same-architecture MLPs whose parameters carry a leading member axis.

``Stacked([model_0, ..., model_{M-1}])`` holds member ``i``'s Linear weight ``(in, out)`` as slice ``i`` of a
``(M, in, out)`` array and its bias ``(out,)`` as ``(M, 1, out)``, so one ``matmul`` (broadcast over the
member axis) does the work of M small ones: ``(batch, in)`` shared by every member, or ``(M, batch, in)``
(each member its own rows) -> ``(M, batch, out)``. The elementwise activations of ``layers.py`` run on
the 3-D arrays unchanged; Dropout draws, for member ``i``, exactly the mask member ``i``'s own Dropout
layer draws (``portablenn.counter_rng``), with its own ``p`` and seed (``p = 0`` where the member has no
Dropout layer there). LayerNorm and BatchNorm1d hold their weight, bias and running statistics as
``(M, 1, n)``, each member normalising its own ``(batch, n)`` slice. ``member(i)`` gives member ``i`` back as an
ordinary ``Sequential``: a checkpoint, ``fit``, ``predict`` take it as they take any model. The math only:
``portablenn.stack_fit`` trains it (``portablenn.sweep`` builds grids of them).
"""
import copy

import numpy as np

from . import backend
from .counter_rng import MASK, draw_key, element_bits, lowbias32
from .dropout import Dropout
from .layers import Linear, Module, ReLU, Sequential
from .normalization import BatchNorm1d, LayerNorm
from .registry import ACTIVATIONS, LAYERS

__all__ = ["Stacked", "StackedLinear", "StackedDropout", "StackedLayerNorm", "StackedBatchNorm1d", "StackError",
           "architecture_key"]


class StackError(ValueError):
    """Models that cannot share a stack (different architectures, unsupported layers), in one sentence."""


def _elementwise(layer):
    """Whether ``layer`` is a registered elementwise activation without state (ReLU, Tanh, GELU, ...)."""
    name = ACTIVATIONS.name_of(layer)
    return name is not None and not layer.params and not layer.buffers and not layer.couples_rows


def _core(model):
    """``[(position, layer), ...]`` of ``model``'s layers other than Dropout; StackError for one a stack
    cannot hold."""
    core = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dropout):
            continue
        if type(layer) not in (Linear, *_NORMS) and not _elementwise(layer):
            raise StackError(f"layer {i} ({layer!r}) cannot be stacked: a stack holds Linear layers, the "
                             f"elementwise activations, LayerNorm, BatchNorm1d and Dropout")
        core.append((i, layer))
    return core


def architecture_key(model):
    """What members of one stack share: every layer's config (a norm's size, eps and momentum included) except
    Dropout's (``p`` and ``seed`` may differ, and a member may lack a Dropout layer another has: it drops
    nothing there), plus the dtype. Models with equal keys can be stacked."""
    return (model.dtype,) + tuple(repr(sorted(LAYERS.to_config(layer).items())) for _, layer in _core(model))


class StackedLinear(Module):
    """M Linear layers: ``y[i] = x[i] @ weight[i] + bias[i]``, weight ``(M, in, out)``, bias ``(M, 1, out)``.

    The input is ``(batch, in)`` (the same rows for every member: the first layer) or ``(M, batch, in)``.
    """

    decayed = ("weight",)

    def __init__(self, linears):
        super().__init__()
        first = linears[0]
        self.in_features, self.out_features, self.members = first.in_features, first.out_features, len(linears)
        self.params["weight"] = np.stack([first.device.to_numpy(l.params["weight"]) for l in linears])
        if "bias" in first.params:
            self.params["bias"] = np.stack([l.device.to_numpy(l.params["bias"]).reshape(1, -1) for l in linears])

    def forward(self, x):  # (batch, in) or (M, batch, in) -> (M, batch, out)
        self._x = x  # cached for backward
        joint = self.joint() if x.ndim == 2 else None
        if joint is not None:  # the bias as the weight's last row: [x, 1] @ joint (NumPy's join_bias)
            self._xa = xa = self._with_ones(x)
            if self.reuse:
                return self.kernels.matmul_into(xa, joint, self._buffer("out", (self.members, x.shape[0],
                                                                                self.out_features), x.dtype))
            return self.xp.matmul(xa, joint)
        wide = self.side_by_side(self.params["weight"]) if x.ndim == 2 else None
        if wide is not None:  # every member's product as one GEMM (batch, in) @ (in, M * out)
            y = self.kernels.matmul(x, wide, self._buffer("out", (x.shape[0], wide.shape[1]), x.dtype)
                                    if self.reuse else None)
            if self._scale is not None:  # the weight held as scale * V (decay_lazily): x @ W = (x @ V) * scale
                members = self.xp.reshape(y, (x.shape[0], self.members, -1))
                members *= self._scale[1]
            if "bias" in self.params:  # (M, 1, out) is (1, M * out) in memory
                y += self.xp.reshape(self.params["bias"], (1, -1))
            return self.xp.permute_dims(self.xp.reshape(y, (x.shape[0], self.members, -1)), (1, 0, 2))
        if self.reuse and getattr(self.kernels, "matmul_into", None) is not None:
            y = self.kernels.matmul_into(x, self.params["weight"], self._buffer("out", (self.members, x.shape[-2],
                                                                                        self.out_features), x.dtype))
        else:
            y = self.xp.matmul(x, self.params["weight"])
        if "bias" not in self.params:
            return y
        if self.device.backend.mutable:  # into the fresh product, as Kernels.linear adds it
            y += self.params["bias"]
            return y
        return y + self.params["bias"]

    def backward(self, grad_output, input_grad=True):  # (M, batch, out) -> (M, batch, in)
        xp, x = self.xp, self._x
        grad_input = self.input_gradient(grad_output) if input_grad else None
        joint = self.joint() if x.ndim == 2 else None
        if joint is not None:  # both gradients as one batched GEMM [x, 1].T @ g: (M, in + 1, out)
            g = xp.matmul(self._xa.T, grad_output)
            self.grads["weight"], self.grads["bias"] = g[:, :-1, :], g[:, -1:, :]
            return grad_input
        wide = self.side_by_side(self.params["weight"]) if x.ndim == 2 else None
        if wide is not None:  # the weight gradient as one GEMM x.T @ (batch, M * out), laid out as the weight
            rows = self.rows_side_by_side(grad_output)
            gw = self.kernels.matmul(x.T, rows)
            self.grads["weight"] = xp.permute_dims(xp.reshape(gw, (x.shape[1], self.members, -1)), (1, 0, 2))
            if "bias" in self.params:
                self.grads["bias"] = xp.reshape(xp.sum(rows, axis=0), tuple(self.params["bias"].shape))
            return grad_input
        self.grads["weight"] = xp.matmul(x.T if x.ndim == 2 else xp.matrix_transpose(x), grad_output)
        if "bias" in self.params:  # (1, batch) @ (M, batch, out): the rows summed by one batched GEMV
            self.grads["bias"] = xp.matmul(self._ones(grad_output.shape[1], grad_output.dtype), grad_output)
        return grad_input

    def input_gradient(self, grad_output):  # (M, batch, out) -> (M, batch, in)
        """``grad_output @ W^T`` per member, laid out in memory as the cached input where the kernels can
        (NumPy's ``matmul_like``: the previous layer then reads it side by side, without a copy)."""
        xp, x = self.xp, self._x
        weight_t = xp.matrix_transpose(self.params["weight"])
        if x.ndim == 3 and self.side_by_side(x) is not None:
            return self.kernels.matmul_like(grad_output, weight_t, x)
        if self.reuse_grad and getattr(self.kernels, "matmul_into", None) is not None and x.ndim == 3:
            return self.kernels.matmul_into(grad_output, weight_t, self._buffer("grad", tuple(x.shape), x.dtype))
        return xp.matmul(grad_output, weight_t)

    def _buffer(self, name, shape, dtype):
        """An array kept from call to call for ``name`` and this shape (``reuse``: a hidden layer of a stack)."""
        key = (name, shape, dtype)
        if key not in self._buffers:
            with self.device.activate():
                self._buffers[key] = self.xp.empty(shape, dtype=dtype, device=self.device.native)
        return self._buffers[key]

    # -- side by side: a stack's first layer on NumPy's kernels (``NumpyKernels.side_by_side``) ----------------
    def side_by_side(self, a):
        """``(M, rows, cols)`` laid out as ``(rows, M, cols)`` -> its ``(rows, M * cols)`` view, where the kernels
        offer such views and ``a`` is laid out so; else None (the broadcast ``matmul`` runs: the generic twin)."""
        side = getattr(self.kernels, "side_by_side", None)
        return None if side is None else side(a)

    def rows_side_by_side(self, g):
        """``(M, batch, out)`` -> ``(batch, M * out)``: a view where ``g`` is laid out so, else a copy."""
        rows = self.side_by_side(g)
        if rows is None:
            rows = self.xp.reshape(self.xp.permute_dims(g, (1, 0, 2)), (g.shape[1], -1))
        return rows

    def lay_out(self):
        """Keep the weight laid out as ``(in, M, out)`` (still an ``(M, in, out)`` array to every reader), where
        the kernels offer it and arrays change in place: the first layer's ``x @ W`` for every member is then
        one GEMM, and so is its update. Called by ``Stacked`` for its first layer."""
        lay = getattr(self.kernels, "lay_side_by_side", None)
        weight = self.params["weight"]
        if lay is not None and self.device.backend.mutable and self.side_by_side(weight) is None:
            self.params["weight"] = weight = lay(weight)
        join = getattr(self.kernels, "join_bias", None)
        if (join is not None and "bias" in self.params and self.device.backend.mutable and self.joint() is None
                and self.side_by_side(weight) is None and self.in_features < self.kernels.side_by_side_min_rows):
            self._joint = join(weight, self.params["bias"])
            self.params["weight"], self.params["bias"] = self._joint[1:]

    # -- the decay as a per-member scale: the fused SGD step of a side-by-side weight (portablenn.stack_optim)
    # W = (1 - lr l2) W - x.T @ g with a different factor per member costs a pass over the whole weight, as long
    # as one model's GEMMs on MNIST's 784 x 100 x 16. Held as W = scale * V instead, the step is V -= x.T @ (g /
    # scale') with scale' = (1 - lr l2) scale: the pass goes over the (batch, M * out) gradient, not the weight.
    # Only while a fused SGD step runs: ``materialize`` gives the weight back (at every metric read and at the
    # end of the fit), so nothing else ever sees V.
    lazy_min_scale = 2.0 ** -20  # a smaller scale is folded into the weight (one pass), so V never grows past 1e6 W

    def decay_lazily(self, keep, keep_host, rows):
        """Scale member ``i``'s weight by ``keep[i]`` (device ``(M, 1)``, and its host copy) without touching it;
        returns ``rows`` ``(batch, M * out)`` divided by each member's new scale (the GEMM's operand)."""
        xp = self.xp
        if self._scale is not None and self._scale[0].min() * min(keep_host) < self.lazy_min_scale:
            self.materialize()
        if self._scale is None:
            self._scale = [np.array(keep_host, dtype=np.float64), keep + 0.0]
        else:
            self._scale[0] *= keep_host
            self._scale[1] *= keep
        scaled = xp.reshape(rows, (rows.shape[0], self.members, -1)) / self._scale[1]
        return xp.reshape(scaled, tuple(rows.shape))

    def materialize(self):
        """Fold a lazy scale into the weight (``decay_lazily``): the parameter is the member's weight again."""
        if self._scale is not None:
            weight = self.side_by_side(self.params["weight"])
            members = self.xp.reshape(weight, (weight.shape[0], self.members, -1))
            members *= self._scale[1]
            self._scale = None

    def sq_sum_scale(self):
        """``(M,)`` factors of the weight's sums of squares while a lazy scale is held (else None)."""
        return None if self._scale is None else self.xp.reshape(self._scale[1], (-1,)) ** 2

    def joint(self):
        """The ``(M, in + 1, out)`` array whose views are the weight and the bias (``lay_out``; NumPy's
        ``join_bias``), or None: not joined, or the parameters since replaced by other arrays."""
        joint = self._joint
        if joint is None or self.params.get("weight") is not joint[1] or self.params.get("bias") is not joint[2]:
            return None
        return joint[0]

    def _with_ones(self, x):
        """``(batch, in)`` -> ``[x, 1]`` ``(batch, in + 1)``, in an array kept per shape (its ones written once)."""
        key = ("ones column", tuple(x.shape), x.dtype)
        if key not in self._buffers:
            with self.device.activate():
                self._buffers[key] = self.xp.ones((x.shape[0], x.shape[1] + 1), dtype=x.dtype, device=self.device.native)
        xa = self._buffers[key]
        xa[:, :-1] = x
        return xa

    def _ones(self, rows, dtype):
        key = (rows, dtype)
        if key not in self._ones_cache:
            with self.device.activate():
                self._ones_cache[key] = self.xp.ones((1, rows), dtype=dtype, device=self.device.native)
        return self._ones_cache[key]

    # Set by Stacked where arrays change in place: a hidden layer's output (``reuse``) and a layer's input gradient
    # inside the stack (``reuse_grad``) go into arrays kept from step to step (each is read again only within
    # the same forward and backward).
    reuse = reuse_grad = False

    def _bind(self, device):
        super()._bind(device)
        self._ones_cache, self._buffers, self._joint, self._scale = {}, {}, None, None

    def member(self, i):
        """Member ``i``'s ``{"weight": (in, out), "bias": (out,)}`` as host arrays."""
        params = {"weight": self.device.to_numpy(self.params["weight"][i, ...])}
        if "bias" in self.params:
            params["bias"] = self.device.to_numpy(self.params["bias"][i, 0, ...])
        return params

    def member_shape(self, name):
        """The shape of one member's parameter ``name`` in its own model: ``(in, out)`` or ``(out,)``."""
        return (self.in_features, self.out_features) if name == "weight" else (self.out_features,)

    def __repr__(self):
        return f"StackedLinear({self.members} x {self.in_features}, {self.out_features}, bias={'bias' in self.params})"


class StackedDropout(Module):
    """M Dropout layers: member ``i`` zeroes with probability ``p[i]`` and draws the mask its own
    ``Dropout(p[i], seed[i])`` draws at the same counter (``p = 0``: no Dropout there, nothing dropped).

    The per-member seed hash, threshold and scale are ``(M, 1, 1)`` arrays on the device; the element
    index of ``(r, c)`` is ``r * n + c`` of the ``(batch, n)`` rows, as for one model.
    """

    integer_buffers = ("counter",)

    def __init__(self, ps, seeds, counter=0):
        super().__init__()
        self.p, self.seed, self.members = tuple(float(p) for p in ps), tuple(int(s) for s in seeds), len(ps)
        self.buffers["counter"] = self.xp.asarray(int(counter), dtype=self.xp.int64)
        self._host = {"hash": np.array([lowbias32(s) for s in self.seed], dtype=np.int64).reshape(-1, 1, 1),
                      "threshold": np.array([min(round(p * 2.0**32), MASK) for p in self.p],
                                            dtype=np.int64).reshape(-1, 1, 1),
                      "scale": np.array([1.0 / (1.0 - p) for p in self.p]).reshape(-1, 1, 1)}

    def forward(self, x):  # (M, batch, n) -> (M, batch, n)
        if not self.training or not any(self.p):
            self._keep = None
            return x
        counter, constants = self.buffers["counter"], self._constants(x.dtype)
        bits = element_bits(self._hashed_index(tuple(x.shape[1:])), draw_key(constants["hash"], counter))
        self._set_buffer("counter", counter + 1)  # on the device, as Dropout
        self._keep = bits >= constants["threshold"]
        return self.xp.where(self._keep, x * constants["scale"], 0.0)

    def backward(self, grad_output, input_grad=True):
        if not input_grad:
            return None
        if self._keep is None:
            return grad_output
        return self.xp.where(self._keep, grad_output * self._constants(grad_output.dtype)["scale"], 0.0)

    def _constants(self, dtype):
        """The (M, 1, 1) device arrays, the scale in ``dtype``; made once per device and dtype."""
        if dtype not in self._device_constants:
            dev = self.device
            self._device_constants[dtype] = {
                "hash": dev.asarray(self._host["hash"], dtype="int64"),
                "threshold": dev.asarray(self._host["threshold"], dtype="int64"),
                "scale": dev.asarray(self._host["scale"].astype(str(dtype).split(".")[-1]), dtype=dtype)}
        return self._device_constants[dtype]

    def _hashed_index(self, shape):
        if shape not in self._hashed:
            size = int(np.prod(shape))
            if size > MASK + 1:
                raise ValueError(f"Dropout draws at most 2**32 elements per minibatch, got shape {shape}")
            self._hashed[shape] = lowbias32(self.xp.reshape(self.device.arange(size, "int64"), shape))
        return self._hashed[shape]

    def _bind(self, device):
        super()._bind(device)
        self._hashed, self._device_constants = {}, {}

    def member(self, i):
        """``{"counter": ()}``: the draw counter every member's Dropout shares, as a host array."""
        return {"counter": self.device.to_numpy(self.buffers["counter"])}

    def __repr__(self):
        return f"StackedDropout({self.members} members, p={self.p})"


class _StackedNorm:
    """What the stacked norms add to their member class's math: member ``i``'s weight and bias (and float
    buffers) as slice ``i`` of ``(M, 1, n)`` arrays, integer buffers (``num_batches_tracked``) shared, and each
    member's parameter gradients summed over its own rows. The input is ``(M, batch, n)``, or ``(batch, n)``
    shared by every member (a norm first in the model)."""

    def _stack(self, norms):
        first = norms[0]
        Module.__init__(self)
        for key in first.config_keys:  # eps, momentum, n: the members' config (architecture_key: equal)
            setattr(self, key, getattr(first, key))
        self.members = len(norms)
        for store in ("params", "buffers"):
            for name in getattr(first, store):
                values = [l.device.to_numpy(getattr(l, store)[name]) for l in norms]
                if name in self.integer_buffers:
                    if len({int(v) for v in values}) > 1:
                        raise StackError(f"the members' {type(first).__name__} layers have different {name} "
                                         f"({sorted({int(v) for v in values})}): stack models trained on as many "
                                         f"minibatches")
                    getattr(self, store)[name] = np.asarray(values[0], dtype=np.int64)
                else:
                    getattr(self, store)[name] = np.stack([v.reshape(1, -1) for v in values])

    def _affine_backward(self, grad_output):  # (M, batch, n) -> (M, batch, n)
        """Fill the weight and bias gradients ``(M, 1, n)``, each member's summed over its own rows; returns
        ``d loss / d xhat``."""
        xp = self.xp
        self.grads["weight"] = xp.sum(grad_output * self._xhat, axis=-2, keepdims=True)
        self.grads["bias"] = xp.sum(grad_output, axis=-2, keepdims=True)
        return grad_output * self.params["weight"]

    def member(self, i):
        """Member ``i``'s parameters ``(n,)`` and buffers (its running statistics ``(n,)``, the shared count)
        as host arrays, keyed as its own layer's."""
        to_numpy = self.device.to_numpy
        state = {name: to_numpy(self.params[name][i, 0, ...]) for name in self.params}
        for name, value in self.buffers.items():
            state[name] = to_numpy(value) if name in self.integer_buffers else to_numpy(value[i, 0, ...])
        return state

    def member_shape(self, name):
        """The shape of one member's parameter ``name`` in its own layer: ``(n,)``."""
        return (self.in_features,)

    def __repr__(self):
        return f"Stacked{super().__repr__().replace('(', f'({self.members} x ', 1)}"


class StackedLayerNorm(_StackedNorm, LayerNorm):
    """M LayerNorm layers: member ``i``'s rows normalised over their features and scaled and shifted by
    ``weight[i]``, ``bias[i]`` (``(M, 1, n)``). ``LayerNorm``'s forward and backward, the statistics
    ``(M, batch, 1)``; the same in train and eval mode."""

    def __init__(self, norms):  # the members' LayerNorm layers
        self._stack(norms)


class StackedBatchNorm1d(_StackedNorm, BatchNorm1d):
    """M BatchNorm1d layers: in train mode member ``i`` normalises each feature over its own rows and moves its
    running statistics (``(M, 1, n)``) towards them; in eval mode it uses them. ``BatchNorm1d``'s formulas with
    the statistics ``(M, 1, n)``; ``num_batches_tracked`` (int64, 0-d) counts every member's updates at once."""

    def __init__(self, norms):  # the members' BatchNorm1d layers
        self._stack(norms)

    def forward(self, x):  # (M, batch, n) or (batch, n) -> (M, batch, n)
        xp, rows = self.xp, x.shape[-2]
        self._batch_stats = self.training
        if not self.training:
            return self._normalise(x - self.buffers["running_mean"], self.buffers["running_var"])
        if rows < 2:
            raise ValueError(f"BatchNorm1d needs at least 2 rows per batch in train mode, got {rows} "
                             f"(the variance of one row is undefined): use a larger batch, or eval mode")
        mean = xp.mean(x, axis=-2, keepdims=True)  # each member's over its own rows
        xc = x - mean
        var = xp.mean(xc * xc, axis=-2, keepdims=True)  # biased: what normalises
        m, b = self.momentum, self.buffers
        self._set_buffer("running_mean", (1.0 - m) * b["running_mean"] + m * mean)
        self._set_buffer("running_var", (1.0 - m) * b["running_var"] + (m * rows / (rows - 1)) * var)  # unbiased
        self._set_buffer("num_batches_tracked", b["num_batches_tracked"] + 1)
        return self._normalise(xc, var)

    def backward(self, grad_output, input_grad=True):
        # batch statistics: means over each member's rows; running statistics are constants: dx = inv g
        g = self._affine_backward(grad_output)
        if not input_grad:
            return None
        return self._normalised_backward(g, -2) if self._batch_stats else g * self._inv


_NORMS = {LayerNorm: StackedLayerNorm, BatchNorm1d: StackedBatchNorm1d}  # a member's norm -> the stacked one


class Stacked(Module):
    """M same-architecture models trained as one; parameters keyed ``"<index>.<name>"`` with a leading
    member axis (``"0.weight"``: ``(M, in, out)``).

    Parameters
    ----------
    models : sequence of Sequential
        The members, each initialised as usual (``mlp(..., seed=s)``); their Linear layers, norms and
        activations must agree (``architecture_key``), their Dropout ``p`` and seed may differ. Their current
        parameters and buffers (a BatchNorm1d's running statistics) are copied: the stack does not share
        arrays with them.

    Attributes
    ----------
    members : int
        M.
    layers : list
        ``StackedLinear``, the activations (shared: elementwise), ``StackedLayerNorm``, ``StackedBatchNorm1d``,
        ``StackedDropout``.
    """

    def __init__(self, models):
        models = list(models)
        if not models:
            raise StackError("a stack needs at least one model")
        for i, model in enumerate(models):
            if not isinstance(model, Sequential):
                raise StackError(f"member {i} is a {type(model).__name__}, not a Sequential model")
        key = architecture_key(models[0])
        for i, model in enumerate(models[1:], 1):
            if architecture_key(model) != key:
                raise StackError(f"member {i} has another architecture than member 0 ({model.dtype} "
                                 f"{[type(l).__name__ for _, l in _core(model)]} against {models[0].dtype} "
                                 f"{[type(l).__name__ for _, l in _core(models[0])]}, or other sizes): stack "
                                 f"each architecture on its own")
        self.members = len(models)
        self.dtype = models[0].dtype
        # member -> {stacked layer index: {name: 0-d array}}: a shared counter (Dropout's, BatchNorm's) as member i
        # had it when early stopping stopped it or at the best epoch it restored (portablenn.stack_history);
        # member() uses it
        self._member_buffers = {}
        self.configs = [copy.deepcopy(getattr(m, "config", None)) for m in models]  # mlp's arguments, for member()
        self._layer_configs = [m.to_config() for m in models]
        cores = [_core(m) for m in models]
        drops = [self._dropouts(m) for m in models]  # core position -> the Dropout after it, per member
        layers, self._where = [], [dict() for _ in models]  # member's layer index -> stacked layer index
        for j, (_, layer) in enumerate(cores[0]):
            if type(layer) is Linear:
                layers.append(StackedLinear([core[j][1] for core in cores]))
            elif type(layer) in _NORMS:
                layers.append(_NORMS[type(layer)]([core[j][1] for core in cores]))
            else:
                layers.append(copy.copy(layer))
                layers[-1].params, layers[-1].grads, layers[-1].buffers = {}, {}, {}
            for i, core in enumerate(cores):
                self._where[i][core[j][0]] = len(layers) - 1
            if any(j in d for d in drops):
                found = [d.get(j) for d in drops]
                counters = {int(np.asarray(models[i].device.to_numpy(f.buffers["counter"]))) for i, f in
                            enumerate(found) if f is not None}
                if len(counters) > 1:
                    raise StackError(f"the members' Dropout layers after layer {core[j][0]} have drawn different "
                                     f"numbers of masks ({sorted(counters)}): stack fresh models")
                layers.append(StackedDropout([f.p if f else 0.0 for f in found], [f.seed if f else 0 for f in found],
                                             counters.pop()))
                for i, f in enumerate(found):
                    if f is not None:
                        self._where[i][models[i].layers.index(f)] = len(layers) - 1
        self.layers = layers
        super().__init__()
        self._bind(backend.device("cpu"))
        self.to(models[0].device, self.dtype)

    @staticmethod
    def _dropouts(model):
        found, j = {}, -1
        for layer in model.layers:
            if isinstance(layer, Dropout):
                found[j] = layer
            else:
                j += 1
        return found

    # -- the math ------------------------------------------------------------------------------------
    def forward(self, x):  # (batch, in) or (M, batch, in) -> (M, batch, out)
        for i, layer in enumerate(self.layers):
            if i in self._in_place:  # a ReLU after a StackedLinear: on its fresh product, in place
                x = layer._out = layer.kernels.relu_(x)
            else:
                x = layer.forward(x)
        return x

    def backward(self, grad_output, input_grad=False):  # (M, batch, out) -> (M, batch, in)
        """Backpropagate through every layer, filling each one's ``grads`` (``(M, ...)`` like its params)."""
        for i in range(len(self.layers) - 1, -1, -1):
            grad_output = self.layer_backward(i, grad_output, input_grad or i > 0)
        return grad_output

    def layer_backward(self, i, grad_output, input_grad=True):
        """``layers[i].backward``; a ReLU fed by a later layer of the stack changes that layer's gradient in place."""
        layer = self.layers[i]
        if input_grad and i in self._in_place and i < self._last_linear:  # a gradient the stack made, not the caller's
            return layer.kernels.relu_backward_(grad_output, layer._out)
        return layer.backward(grad_output, input_grad)

    def _plan(self):
        """Which layers work in place (arrays change in place and the kernels offer it: NumPy's)."""
        kernels, mutable = self.device.kernels, self.device.backend.mutable
        inplace = mutable and getattr(kernels, "relu_", None) is not None
        self._in_place = {i for i, layer in enumerate(self.layers) if inplace and type(layer) is ReLU and i > 0
                          and isinstance(self.layers[i - 1], StackedLinear)}
        linears = [i for i, layer in enumerate(self.layers) if isinstance(layer, StackedLinear)]
        self._last_linear = linears[-1] if linears else -1
        for i in linears:
            self.layers[i].reuse = mutable and i != linears[-1]
            self.layers[i].reuse_grad = mutable and i > 0

    # -- what a model offers ---------------------------------------------------------------------------
    def __len__(self):
        return self.members

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Stacked({self.members} members{inner}\n)"

    @property
    def in_features(self):
        return self.layers[0].in_features

    @property
    def out_features(self):
        return next(l.out_features for l in reversed(self.layers) if hasattr(l, "out_features"))

    def named_parameters(self):
        """``[(key, layer, name), ...]`` in layer order; each parameter has the member axis first."""
        return [(f"{i}.{name}", layer, name) for i, layer in enumerate(self.layers) for name in layer.params]

    def to(self, device=None, dtype=None):
        """Move (copy) every parameter and buffer to ``device`` and/or cast the float ones to ``dtype``."""
        dev = backend.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        dev.dtype(dtype)  # DeviceError if the device lacks it
        if dev == self.device and dtype == self.dtype and getattr(self, "_placed", False):
            return self
        for layer in self.layers + [self]:
            for name, p in layer.params.items():
                layer.params[name] = dev.asarray(np.ascontiguousarray(self.device.to_numpy(p)), dtype=dtype)
            for name, b in layer.buffers.items():
                layer.buffers[name] = dev.asarray(self.device.to_numpy(b),
                                                  dtype="int64" if name in layer.integer_buffers else dtype)
            layer.grads = {}
            layer._bind(dev)
        self.dtype, self._placed = dtype, True
        self._plan()
        self.lay_out()
        return self

    def materialize(self):
        """Every layer's parameters as the members' own again (``StackedLinear.materialize``)."""
        for layer in self.layers:
            if isinstance(layer, StackedLinear):
                layer.materialize()

    def lay_out(self):
        """Lay the first layer's weight side by side where the device's kernels can use it
        (``StackedLinear.lay_out``); called again by whoever replaces the parameters with new arrays."""
        if self.layers and isinstance(self.layers[0], StackedLinear):
            self.layers[0].lay_out()

    def state_dict(self):
        """Host copies of every parameter (member axis first) and buffer, keyed as a Sequential's."""
        return {f"{i}.{name}": self.device.to_numpy(store[name]).copy() for i, layer in enumerate(self.layers)
                for store in (layer.params, layer.buffers) for name in store}

    def member(self, i, device=None):
        """Member ``i`` as an ordinary ``Sequential`` (its own architecture, Dropout layers included, and
        ``config``), holding copies of its current parameters; on the stack's device unless told."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.members:
            raise IndexError(f"member index must be an integer from 0 to {self.members - 1}, got {i!r}")
        model = Sequential.from_config(self._layer_configs[i], dtype=self.dtype)
        state = {}
        for k, layer in enumerate(model.layers):
            stacked = self.layers[self._where[i][k]] if k in self._where[i] else None
            if hasattr(stacked, "member"):  # StackedLinear, StackedDropout, the stacked norms
                state.update({f"{k}.{name}": value for name, value in stacked.member(i).items()})
            own = self._member_buffers.get(i, {}).get(self._where[i].get(k))
            for name, value in (own or {}).items():  # the shared counters as they were at its stop or best epoch
                state[f"{k}.{name}"] = self.device.to_numpy(value)
        model.load_state_dict(state)
        if self.configs[i] is not None:
            model.config = copy.deepcopy(self.configs[i])
        return model.to(self.device if device is None else device)

    def member_key(self, i, key):
        """The state-dict key member ``i``'s own model gives the stack's ``key`` ("3.weight" -> "2.weight" for
        a member without the Dropout layer another member has)."""
        index, _, name = key.partition(".")
        own = {stacked: k for k, stacked in self._where[i].items()}
        return f"{own[int(index)]}.{name}"

    def models(self, device=None):
        """Every member as an ordinary ``Sequential`` (``member(i)`` for each ``i``)."""
        return [self.member(i, device) for i in range(self.members)]
