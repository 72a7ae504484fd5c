"""Dropout with masks from a counter-based hash (``portablenn.counter_rng``): the same masks on every backend."""
import numbers

from .counter_rng import MASK, derive_seed, draw_key, element_bits, lowbias32
from .layers import Module
from .registry import register_layer

__all__ = ["Dropout"]


@register_layer
class Dropout(Module):
    """Zero each element with probability ``p`` in train mode and scale the rest by ``1 / (1 - p)``
    (inverted dropout, PyTorch's ``nn.Dropout``); the identity in eval mode.

    The mask is not drawn from a library's random generator but hashed (``portablenn.counter_rng``) from
    ``(seed, counter, element index)``: element ``i`` (row-major index in the ``(batch, n)`` input) is kept
    when its 32 bits are at least ``round(p * 2**32)``. ``counter`` is the buffer ``"counter"`` (int64, 0-d,
    on the device), advanced on the device by every training forward, so NumPy, array-api-strict, PyTorch
    and CuPy draw the same masks bit for bit, a checkpoint resumes the sequence, and a recorded CUDA graph
    draws a new mask at every replay without host work.

    Parameters
    ----------
    p : float
        Probability of zeroing an element, in [0, 1); 0 is the identity.
    seed : int
        The generator's seed, in [0, 2**32). ``mlp`` gives each of its Dropout layers its own
        (``Dropout.seed_for(mlp_seed, k)``); two layers with one seed draw the same masks for one shape.

    Attributes
    ----------
    row_offset : int
        The position of the input's first row within the whole minibatch (default 0): its element
        ``(r, c)`` draws the bits of index ``(row_offset + r) * n + c``. A data-parallel worker that holds rows
        ``lo:hi`` of a minibatch starting at ``start`` sets it to ``lo - start``, and then draws its part
        of the one-process mask.
    """

    config_keys = ("p", "seed")
    torch_class = "Dropout"
    integer_buffers = ("counter",)
    row_offset = 0

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        self.check_config({"p": p, "seed": seed})
        self.p, self.seed = float(p), int(seed)
        # keep when bits >= threshold: P(keep) = 1 - threshold / 2**32, p up to 2**-32
        self._threshold = min(round(self.p * 2.0**32), MASK)
        self._seed_hash = lowbias32(self.seed)
        self.buffers["counter"] = self.xp.zeros((), dtype=self.xp.int64)

    def forward(self, x):  # (batch, n) -> (batch, n)
        if not self.training or not self.p:
            self._keep = None
            return x
        counter = self.buffers["counter"]
        bits = element_bits(self._hashed_index(x.shape), draw_key(self._seed_hash, counter))
        self._set_buffer("counter", counter + 1)  # on the device: the next forward draws the next mask
        self._keep = bits >= self._threshold
        return self.xp.where(self._keep, x * self._scale, 0.0)

    def backward(self, grad_output, input_grad=True):
        # the same mask and scale: d out/dx = keep / (1 - p)
        if not input_grad:
            return None
        return grad_output if self._keep is None else self.xp.where(self._keep, grad_output * self._scale, 0.0)

    @property
    def _scale(self):
        return 1.0 / (1.0 - self.p)

    def _hashed_index(self, shape):
        """``lowbias32`` of the elements' flat indices (from ``row_offset``) for ``shape``, kept on the device per
        shape and offset (a fixed array, never freed while a recorded step may read it)."""
        shape, offset = tuple(shape), int(self.row_offset)
        if (shape, offset) not in self._hashed:
            size, first = 1, offset
            for s in shape:
                size *= int(s)
            for s in shape[1:]:
                first *= int(s)
            if first + size > MASK + 1:
                raise ValueError(f"Dropout draws at most 2**32 elements per minibatch, got shape {shape} "
                                 f"from row {offset}")
            index = self.device.arange(size, "int64") + first
            self._hashed[shape, offset] = lowbias32(self.xp.reshape(index, shape))
        return self._hashed[shape, offset]

    def _bind(self, device):
        super()._bind(device)
        self._hashed = {}

    def __repr__(self):
        return f"Dropout(p={self.p}, seed={self.seed})"

    @staticmethod
    def seed_for(seed, index):
        """The seed of the ``index``-th Dropout layer of a model seeded ``seed`` (``counter_rng.derive_seed``)."""
        return derive_seed(seed, index)

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        p, seed = config["p"], config["seed"]
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
            raise ValueError(f"Dropout p must be a number in [0, 1), got {p!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MASK:
            raise ValueError(f"Dropout seed must be an integer from 0 to 2**32 - 1, got {seed!r}")

    @classmethod
    def buffer_shapes(cls, config):
        return {"counter": ()}

    @classmethod
    def config_from_torch(cls, module):
        return {"p": float(module.p), "seed": 0}

    def torch_config(self):
        return {"p": self.p}
