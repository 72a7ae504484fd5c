"""Layers with hand-written backward passes: Linear, the activations (ReLU, Sigmoid, Tanh, LeakyReLU, GELU,
Identity) and the Sequential container."""
import copy

from . import backend
from .init import host_copy, linear_params
from .registry import LAYERS, register_activation, register_layer

__all__ = ["Module", "Linear", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "GELU", "Identity", "Sequential"]


class Module:
    """Base of every layer: ``params``/``grads``/``buffers`` dicts of device arrays and the device they live on.

    ``buffers`` hold state that is saved but not trained (BatchNorm1d's running statistics, Dropout's
    draw counter); a layer changes them on the device with ``_set_buffer``.

    A layer implements ``forward(x)`` (caching what backward needs) and ``backward(grad_output,
    input_grad=True)``, which fills ``grads`` with the true gradients of its parameters and returns
    the gradient with respect to its input (or None when ``input_grad`` is False: the first layer
    never needs it in training). Neither knows about optimizers or the backend's fusions
    (``portablenn.step`` chooses those). A new layer is one subclass registered with
    ``portablenn.registry.register_layer`` (see ``docs/architecture.md``).
    """

    training = True  # train mode (Dropout, normalization statistics); ``eval()`` turns it off
    config_keys = ()  # the constructor's arguments that ``to_config`` returns
    torch_class = None  # name of the ``torch.nn`` module computing the same function (PyTorch interop)
    decayed = ()  # the parameters L2 and weight decay apply to (weight matrices; not biases nor norm scales)
    integer_buffers = ()  # the buffers that hold int64 (the others are in the model's float dtype)
    couples_rows = False  # a row's output depends on the other rows of its batch (BatchNorm1d in training)

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self._bind(backend.device("cpu"))

    # -- modes ---------------------------------------------------------------------------------------
    def train(self, mode=True):
        """Train mode (``mode=True``) or eval mode, for this layer and every layer inside; returns self."""
        self.training = bool(mode)
        for layer in getattr(self, "layers", ()):
            layer.train(mode)
        return self

    def eval(self):
        """Eval mode: ``train(False)``."""
        return self.train(False)

    # -- configs: how the registry, checkpoints and the PyTorch interop rebuild a layer -------------
    def to_config(self):
        """The JSON-able constructor arguments that rebuild this layer (without its parameters' values)."""
        return {key: getattr(self, key) for key in self.config_keys}

    @classmethod
    def check_config(cls, config):
        """ValueError naming the first thing wrong with ``config`` (a dict as ``to_config`` returns)."""
        unknown, missing = sorted(set(config) - set(cls.config_keys)), sorted(set(cls.config_keys) - set(config))
        if unknown or missing:
            expected = ", ".join(cls.config_keys) or "no entries"
            raise ValueError(f"{cls.__name__} takes {expected}; "
                             + (f"unknown {unknown}" if unknown else f"missing {missing}"))

    @classmethod
    def from_config(cls, config, dtype="float32"):
        """A new layer from ``to_config``'s dict; parameters get placeholder values (load them after)."""
        cls.check_config(config)
        return cls(**config)

    @classmethod
    def parameter_shapes(cls, config):
        """``{name: shape}`` of the parameters a layer of ``config`` holds, computed without allocating them."""
        return {}

    @classmethod
    def buffer_shapes(cls, config):
        """``{name: shape}`` of the buffers a layer of ``config`` holds (dtypes: ``integer_buffers``)."""
        return {}

    @classmethod
    def config_from_torch(cls, module):
        """This layer's config read from the equivalent ``torch.nn`` module's attributes."""
        return {key: getattr(module, key) for key in cls.config_keys}

    def torch_config(self):
        """The keyword arguments of ``torch.nn.<torch_class>`` that build the equivalent module."""
        return self.to_config()

    def _set_buffer(self, name, value):
        """Buffer ``name`` takes ``value``: written into the buffer's memory where arrays are mutable (so a
        recorded CUDA graph's replay updates it too), rebound to the new array where they are not."""
        if self.device.backend.mutable:
            self.buffers[name][...] = value
        else:
            self.buffers[name] = value

    @staticmethod
    def torch_layout(name, array):
        """Parameter ``name`` as PyTorch stores it (and back: the map is its own inverse)."""
        return array

    def _bind(self, device):
        self.device = device
        self.xp = device.xp
        self.kernels = device.kernels

    def __call__(self, x):
        return self.forward(x)

    def __repr__(self):
        return f"{type(self).__name__}()"


@register_layer
class Linear(Module):
    """Affine map ``y = x @ weight + bias`` with weight of shape ``(in_features, out_features)``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
        Add a bias vector of shape ``(out_features,)`` (initialised to zero).
    init : str or callable
        Weight initialiser from ``portablenn.init.INITS`` (``"he"``, ``"xavier"``, ``"small"``, ...).
    rng : numpy.random.Generator or int, optional
        Host random source (or its seed) for the initial weight.
    dtype : str
        "float32" or "float64".
    """

    config_keys = ("in_features", "out_features", "bias")
    torch_class = "Linear"
    decayed = ("weight",)

    def __init__(self, in_features, out_features, bias=True, *, init="he", rng=None, dtype="float32"):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.params.update(linear_params(self.in_features, self.out_features, bias, init, rng, dtype))

    def forward(self, x):  # (batch, in) -> (batch, out)
        self._x = x  # cached for backward
        return self.kernels.linear(x, self.params["weight"], self.params.get("bias"))

    def backward(self, grad_output, input_grad=True):  # (batch, out) -> (batch, in)
        k, weight = self.kernels, self.params["weight"]
        grad_input = k.matmul(grad_output, weight.T) if input_grad else None
        self.grads["weight"] = k.matmul(self._x.T, grad_output, out=self.grads.get("weight"))
        if "bias" in self.params:
            self.grads["bias"] = k.sum_rows(grad_output, out=self.grads.get("bias"))
        return grad_input

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={'bias' in self.params})"

    def to_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": "bias" in self.params}

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        for key in ("in_features", "out_features"):
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Linear {key} must be a positive integer, got {value!r}")
        if not isinstance(config["bias"], bool):
            raise ValueError(f"Linear bias must be true or false, got {config['bias']!r}")

    @classmethod
    def from_config(cls, config, dtype="float32"):
        cls.check_config(config)
        return cls(**config, init="zeros", dtype=dtype)

    @classmethod
    def parameter_shapes(cls, config):
        shapes = {"weight": (config["in_features"], config["out_features"])}
        if config["bias"]:
            shapes["bias"] = (config["out_features"],)
        return shapes

    @classmethod
    def config_from_torch(cls, module):
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}

    @staticmethod
    def torch_layout(name, array):
        return array.T if name == "weight" else array  # torch keeps (out_features, in_features)


@register_activation("relu", init="he")
class ReLU(Module):
    """``max(x, 0)`` elementwise."""

    torch_class = "ReLU"

    def forward(self, x):  # (batch, n) -> (batch, n)
        self._out = self.kernels.relu(x)
        return self._out

    def backward(self, grad_output, input_grad=True):
        return self.kernels.relu_backward(grad_output, self._out) if input_grad else None


@register_activation("sigmoid", init="xavier")
class Sigmoid(Module):
    """The logistic function ``1 / (1 + exp(-x))``, computed as ``(tanh(x/2) + 1) / 2`` (no overflow)."""

    torch_class = "Sigmoid"

    def forward(self, x):  # (batch, n) -> (batch, n)
        self._out = 0.5 * (self.xp.tanh(0.5 * x) + 1.0)
        return self._out

    def backward(self, grad_output, input_grad=True):
        # d sigmoid/dx = s (1 - s), from the cached output
        return grad_output * (self._out * (1.0 - self._out)) if input_grad else None


@register_activation("tanh", init="xavier")
class Tanh(Module):
    """Hyperbolic tangent elementwise."""

    torch_class = "Tanh"

    def forward(self, x):  # (batch, n) -> (batch, n)
        self._out = self.xp.tanh(x)
        return self._out

    def backward(self, grad_output, input_grad=True):
        # d tanh/dx = 1 - tanh^2, from the cached output
        return grad_output * (1.0 - self._out * self._out) if input_grad else None


@register_activation("leaky_relu", init="he")
class LeakyReLU(Module):
    """``x`` where ``x > 0``, else ``negative_slope * x`` (PyTorch's ``nn.LeakyReLU``; default slope 0.01)."""

    config_keys = ("negative_slope",)
    torch_class = "LeakyReLU"

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):  # (batch, n) -> (batch, n)
        self._positive = x > 0
        return self.xp.where(self._positive, x, self.negative_slope * x)

    def backward(self, grad_output, input_grad=True):
        # slope 1 where the input was positive, negative_slope elsewhere
        return self.xp.where(self._positive, grad_output, self.negative_slope * grad_output) if input_grad else None

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        slope = config["negative_slope"]
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not 0 <= slope < 1:
            raise ValueError(f"LeakyReLU negative_slope must be a number in [0, 1), got {slope!r}")


@register_activation("gelu", init="he")
class GELU(Module):
    """Gaussian error linear unit, tanh form: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    PyTorch's ``nn.GELU(approximate="tanh")``; the exact form needs ``erf``, which the Array API lacks.
    """

    config_keys = ("approximate",)
    torch_class = "GELU"
    _C, _A = 0.7978845608028654, 0.044715  # sqrt(2 / pi), and the cubic term's coefficient

    def __init__(self, approximate="tanh"):
        super().__init__()
        if approximate != "tanh":
            raise ValueError(f"GELU supports approximate='tanh' only (the Array API has no erf), got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):  # (batch, n) -> (batch, n)
        self._x = x
        self._t = self.xp.tanh(self._C * (x + self._A * (x * x * x)))
        return 0.5 * x * (1.0 + self._t)

    def backward(self, grad_output, input_grad=True):
        # d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) C (1 + 3 A x^2), with t the tanh of forward
        if not input_grad:
            return None
        x, t = self._x, self._t
        slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * (self._C * (1.0 + 3.0 * self._A * (x * x)))
        return grad_output * slope

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        if config["approximate"] != "tanh":
            raise ValueError(f"GELU approximate must be 'tanh', got {config['approximate']!r}")


@register_activation("identity", init="xavier")
class Identity(Module):
    """``x`` unchanged (an MLP with ``activation="identity"`` is a product of linear maps)."""

    torch_class = "Identity"

    def forward(self, x):  # (batch, n) -> (batch, n)
        return x

    def backward(self, grad_output, input_grad=True):
        return grad_output if input_grad else None


def _own_positions(layers):
    """Give every position its own layer: each keeps its forward's arrays for its backward.

    A layer object listed twice (``act = ReLU()`` used after every Linear, as in PyTorch) would
    backpropagate the second use's cache through the first. A stateless repeat is replaced by a
    copy; a repeat with parameters (weight sharing, which would need summed gradients) or buffers (a
    Dropout's draw counter: both positions would draw the same masks) is refused.
    """
    first = {}
    for i, layer in enumerate(layers):
        j = first.setdefault(id(layer), i)
        if j == i:
            continue
        if layer.params or layer.buffers:
            what = "parameters" if layer.params else "buffers"
            raise ValueError(f"layer {i} is layer {j} again ({layer!r}): a layer with {what} can appear only "
                             f"once (its state is not shared); create a separate layer")
        layers[i] = copy.copy(layer)
        layers[i].params, layers[i].grads, layers[i].buffers = {}, {}, {}


class Sequential(Module):
    """Layers applied in order; parameters are keyed ``"<index>.<name>"`` as in PyTorch."""

    def __init__(self, *layers):
        self.layers = list(layers[0]) if len(layers) == 1 and isinstance(layers[0], (list, tuple)) else list(layers)
        _own_positions(self.layers)
        sized = [(i, l) for i, l in enumerate(self.layers) if hasattr(l, "in_features")]  # Linear and the like
        for (i, a), (j, b) in zip(sized, sized[1:]):
            if a.out_features != b.in_features:
                raise ValueError(f"layer sizes do not chain: layer {i} gives {a.out_features} features "
                                 f"but layer {j} expects {b.in_features}")
        self.dtype = next((str(p.dtype) for l in self.layers for p in l.params.values()), "float32")
        super().__init__()

    def forward(self, x):  # (batch, in_features) -> (batch, out_features)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_output, input_grad=True):  # (batch, out) -> (batch, in)
        """Backpropagate through every layer, filling each one's ``grads``."""
        for i in range(len(self.layers) - 1, -1, -1):
            grad_output = self.layers[i].backward(grad_output, input_grad or i > 0)
        return grad_output

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"

    @property
    def linears(self):
        return [l for l in self.layers if isinstance(l, Linear)]

    @property
    def in_features(self):
        return next(l.in_features for l in self.layers if hasattr(l, "in_features"))

    @property
    def out_features(self):
        return next(l.out_features for l in reversed(self.layers) if hasattr(l, "out_features"))

    def to_config(self):
        """``{"layers": [{"type": "Linear", "in_features": ..., ...}, {"type": "ReLU"}, ...]}``."""
        return {"layers": [LAYERS.to_config(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config, dtype="float32"):
        """The model ``to_config`` describes, with placeholder parameters (load a state dict after)."""
        return cls([LAYERS.from_config(layer, dtype=dtype) for layer in config["layers"]])

    def named_parameters(self):
        """``[(key, layer, name), ...]`` in layer order, e.g. ``("0.weight", layer0, "weight")``."""
        return [(f"{i}.{name}", layer, name) for i, layer in enumerate(self.layers) for name in layer.params]

    def named_buffers(self):
        """``[(key, layer, name), ...]`` of the buffers in layer order, e.g. ``("1.running_mean", layer1, ...)``."""
        return [(f"{i}.{name}", layer, name) for i, layer in enumerate(self.layers) for name in layer.buffers]

    def _named_state(self):
        """``(key, layer, name, store)`` of every parameter and buffer, each layer's parameters then its
        buffers (PyTorch's state-dict order); ``store`` is the layer's ``params`` or ``buffers`` dict."""
        return [(f"{i}.{name}", layer, name, store) for i, layer in enumerate(self.layers)
                for store in (layer.params, layer.buffers) for name in store]

    def to(self, device=None, dtype=None):
        """Move (copy) every parameter and buffer to ``device`` (a spec or Device) and/or cast the float ones
        to ``dtype`` (integer buffers stay int64)."""
        dev = backend.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        dev.dtype(dtype)  # DeviceError if the device lacks it
        if dev == self.device and dtype == self.dtype:
            return self
        for layer in self.layers + [self]:
            for name, p in layer.params.items():
                layer.params[name] = dev.asarray(self.device.to_numpy(p), dtype=dtype)
            for name, b in layer.buffers.items():
                layer.buffers[name] = dev.asarray(self.device.to_numpy(b),
                                                  dtype="int64" if name in layer.integer_buffers else dtype)
            layer.grads = {}
            layer._bind(dev)
        self.dtype = dtype
        return self

    def state_dict(self):
        """Host NumPy copies of every parameter and buffer, keyed ``"0.weight"``, ``"0.bias"``,
        ``"1.running_mean"``, ... (each layer's parameters, then its buffers, as PyTorch orders them)."""
        return {key: self.device.to_numpy(store[name]).copy() for key, _, name, store in self._named_state()}

    def load_state_dict(self, state):
        """Copy host arrays into the parameters and buffers; biases may be ``(out,)`` or ``(1, out)``.

        Float entries take the model's dtype; integer buffers (``integer_buffers``) must hold integers and
        become int64.

        Raises
        ------
        ValueError
            Naming missing or unexpected keys, the first shape that does not match, or an integer buffer
            given non-integers.
        """
        expected = {key: (layer, name, store) for key, layer, name, store in self._named_state()}
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state dict does not match the model: missing {missing}, unexpected {unexpected}")
        new = {}
        for key, (layer, name, store) in expected.items():
            value = backend._host(state[key])
            shape = tuple(store[name].shape)
            if name == "bias" and store is layer.params and value.shape == (1,) + shape:
                value = value.reshape(shape)
            if value.shape != shape:
                raise ValueError(f"state dict entry {key!r} has shape {value.shape}, the model expects {shape}")
            integer = store is layer.buffers and name in layer.integer_buffers
            if integer and value.dtype.kind not in "iu":
                raise ValueError(f"state dict entry {key!r} has dtype {value.dtype}; the model keeps it as integers")
            new[key] = value
        for key, (layer, name, store) in expected.items():  # a C-ordered copy: training updates parameters in
            # place, and a transposed view (PyTorch's weights) would otherwise stay column-major, changing GEMM rounding
            integer = store is layer.buffers and name in layer.integer_buffers
            store[name] = self.device.asarray(host_copy(new[key], "int64" if integer else self.dtype))
            layer.grads = {}
        return self
