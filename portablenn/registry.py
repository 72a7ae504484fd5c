"""Registries: the names under which layers, activations, losses, optimizers and schedules are saved and looked up.

A class registered here can be written into a checkpoint's architecture, rebuilt from it, named on the
command line, exported to PyTorch and ONNX: adding a layer is one class and one decorator.

    @register_layer
    class Softplus(Module):
        ...

Configs are plain JSON objects: ``{"type": "Linear", "in_features": 784, "out_features": 100,
"bias": true}`` is ``LAYERS.to_config(layer)`` and ``LAYERS.from_config(config)`` builds it again.
"""

__all__ = ["Configurable", "Registry", "LAYERS", "ACTIVATIONS", "LOSSES", "OPTIMIZERS", "register_layer", "register_activation",
           "register_loss", "register_optimizer", "SCHEDULES", "register_schedule"]


class Configurable:
    """The config protocol of losses and optimizers: the constructor's arguments ``config_keys`` are
    attributes of the same names; ``to_config`` reads them, ``from_config`` calls the constructor."""

    config_keys = ()

    def to_config(self):
        return {key: getattr(self, key) for key in self.config_keys}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.to_config().items())})"


class Registry:
    """Names -> classes of one kind; a class's name is its ``__name__`` unless given."""

    def __init__(self, kind):
        self.kind = kind
        self._classes = {}

    def register(self, cls=None, *, name=None):
        """Register ``cls`` (usable as a decorator, with or without ``name=``); returns ``cls``."""
        def add(cls):
            key = name or cls.__name__
            if self._classes.get(key, cls) is not cls:
                raise ValueError(f"another {self.kind} is already registered as {key!r}: "
                                 f"{self._classes[key].__module__}.{self._classes[key].__qualname__}")
            self._classes[key] = cls
            return cls
        return add if cls is None else add(cls)

    def unregister(self, name):
        """Remove ``name`` (tests that register a class of their own undo it)."""
        self._classes.pop(name, None)

    def get(self, name):
        """The class registered as ``name``; ValueError listing the known names otherwise."""
        cls = self._classes.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {', '.join(self)}")
        return cls

    def name_of(self, obj):
        """The name ``obj``'s class (or ``obj``, a class) is registered under, or None."""
        cls = obj if isinstance(obj, type) else type(obj)
        return next((key for key, value in self._classes.items() if value is cls), None)

    def to_config(self, obj):
        """``{"type": name, **obj.to_config()}``; ValueError for a class that is not registered."""
        name = self.name_of(obj)
        if name is None:
            raise ValueError(f"{type(obj).__name__} is not a registered {self.kind} (register it with "
                             f"portablenn.registry.register_{self.kind})")
        return {"type": name, **obj.to_config()}

    def from_config(self, config, **context):
        """The object ``config`` describes: its class's ``from_config(rest, **context)``."""
        cls = self.get(config.get("type") if isinstance(config, dict) else None)
        return cls.from_config({k: v for k, v in config.items() if k != "type"}, **context)

    def __contains__(self, name):
        return name in self._classes

    def __iter__(self):
        return iter(sorted(self._classes))

    def __len__(self):
        return len(self._classes)

    def __getitem__(self, name):
        return self.get(name)

    def items(self):
        return sorted(self._classes.items())

    def __repr__(self):
        return f"Registry({self.kind!r}: {', '.join(self)})"


LAYERS = Registry("layer")
ACTIVATIONS = Registry("activation")  # lower-case names for mlp(activation=...) and --activation
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")  # learning-rate schedules (portablenn.schedules): "step", "cosine", "plateau", ...


def register_layer(cls=None, *, name=None):
    """Register a layer class for checkpoints, the PyTorch interop and model configs."""
    return LAYERS.register(cls, name=name)


def register_activation(name, *, init):
    """Register an elementwise activation layer as ``name`` for ``mlp``, with the initialiser it wants
    (``init``: a name in ``portablenn.init.INITS``, used by ``mlp(init="auto")``); also a layer."""
    def add(cls):
        cls.auto_init = init
        register_layer(cls)
        return ACTIVATIONS.register(cls, name=name)
    return add


def register_loss(cls=None, *, name=None):
    return LOSSES.register(cls, name=name)


def register_optimizer(cls=None, *, name=None):
    return OPTIMIZERS.register(cls, name=name)


def register_schedule(cls=None, *, name=None):
    """Register a learning-rate schedule (a ``portablenn.schedules.Schedule``) for checkpoints and configs."""
    return SCHEDULES.register(cls, name=name)
