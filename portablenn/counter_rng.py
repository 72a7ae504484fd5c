"""A counter-based random generator in Array API integer operations: the same bits on every backend.

The Array API standard has no random numbers, so Dropout's masks come from a hash: the bits of element
``i`` at draw ``counter`` of a generator seeded ``seed`` are

    key  = lowbias32(lowbias32(seed) ^ (counter mod 2**32))          # one per draw (a 0-d array)
    bits = lowbias32(lowbias32(i) ^ key)                             # one per element, in [0, 2**32)

``lowbias32`` is Chris Wellons' 32-bit integer hash (hash-prospector, "lowbias32": bias 0.17; see
https://nullprogram.com/blog/2018/07/31/)::

    x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16      (all mod 2**32)

It is a bijection on 32-bit words, so distinct elements of one draw never share their input, and the
two rounds keep draws of neighbouring counters unrelated. Nothing here is cryptographic.

The arithmetic is the portable part. The standard leaves signed overflow unspecified and PyTorch
barely supports uint32, so every value is held in **int64** in ``[0, 2**32)``: shifts and xors stay in
range, and each 32 x 32-bit product mod 2**32 is split into two 16 x 32-bit halves (below 2**48 each),
so no intermediate ever exceeds 2**49. The same functions take Python ints (the host: seeds) and int64
arrays of any Array API namespace (the device), with the operators alone; ``tests/test_dropout.py``
holds them to a NumPy uint32 reference that wraps around natively.
"""

__all__ = ["MASK", "lowbias32", "draw_key", "element_bits", "derive_seed"]

MASK = 0xFFFFFFFF  # 2**32 - 1: every value lives in [0, 2**32)
_LOW = 0xFFFF


def _mul32(x, c):
    """``x * c mod 2**32`` for ``x`` in [0, 2**32) and a constant ``c`` below 2**32, no product above 2**48."""
    return ((x & _LOW) * c + ((((x >> 16) * c) & _LOW) << 16)) & MASK


def lowbias32(x):
    """Wellons' lowbias32 of a Python int or int64 array holding values in [0, 2**32); same type back."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def draw_key(seed_hash, counter):
    """The key of one draw: ``lowbias32(seed_hash ^ (counter mod 2**32))``; ``seed_hash`` is
    ``lowbias32(seed)`` (a Python int), ``counter`` an int64 array (0-d) or int."""
    return lowbias32(seed_hash ^ (counter & MASK))


def element_bits(hashed_index, key):
    """The 32 random bits of each element: ``lowbias32(hashed_index ^ key)``, ``hashed_index`` being
    ``lowbias32(i)`` of the elements' flat indices (a draw-independent array a layer can keep)."""
    return lowbias32(hashed_index ^ key)


def derive_seed(seed, index):
    """A 32-bit seed for the ``index``-th generator of a model seeded ``seed`` (a non-negative int of any
    size): the number of its 32-bit words, then each word, hashed into ``lowbias32(index)`` in turn
    (``mlp`` seeds its Dropout layers so)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    words = [seed & MASK]
    while seed >> 32:
        seed >>= 32
        words.append(seed & MASK)
    h = lowbias32(lowbias32(index & MASK) ^ len(words))
    for word in words:
        h = lowbias32(h ^ lowbias32(word ^ 0x9E3779B9))  # the constant: lowbias32(0) is 0
    return h
