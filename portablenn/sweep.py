"""Hyperparameter sweeps and seed ensembles trained as one stacked model (``portablenn.stack.Stacked``).

``sweep`` builds the members of a grid (``grid``), one stack per architecture (``stack_mlp``), in chunks when
the device's memory is short (``stack_memory``, ``largest_stack``), trains each with ``fit_stack``
(``portablenn.stack_fit``) and returns a ``SweepResult``. The stack's training itself, its optimizer and its
records live in ``portablenn.stack_fit``, ``portablenn.stack_optim`` and ``portablenn.stack_history``; their
public names are also importable from here.
"""
import itertools
import math
import numbers

import numpy as np

from . import backend
from .history import History
from .losses import get_loss
from .models import mlp
from .optim import SGD, Adam, AdamW
from .registry import OPTIMIZERS
from .stack import Stacked
from .stack_fit import EVAL_ROWS, evaluate_stack, fit_stack, predict_proba_stack, predict_stack
from .stack_history import StackHistory
from .stack_optim import StackedOptimizer, _listed, _number, _probability, _rate, _strength
from .validation import InputError, available_memory, check_batch_size, format_bytes, training_memory

__all__ = ["StackedOptimizer", "StackHistory", "SweepResult", "fit_stack", "evaluate_stack", "predict_stack",
           "predict_proba_stack", "stack_mlp", "grid", "sample", "Uniform", "LogUniform", "sweep", "stack_memory",
           "largest_stack", "memory_limit", "SETTINGS"]

# what may differ between members, in the order names and tables show them
SETTINGS = ("hidden", "lr", "l2", "momentum", "weight_decay", "dropout", "seed")


# -- building -----------------------------------------------------------------------------------------
def stack_mlp(sizes, seeds, *, activation="relu", bias=True, init="auto", dtype="float32", dropout=0.0, norm=None):
    """A ``Stacked`` of ``mlp(sizes, seed=seeds[i], dropout=dropout[i], ...)`` for each member ``i``: each
    initialised on the host by its own seed, as ``mlp`` does. ``dropout`` is one probability or one per member;
    ``norm`` (``mlp``'s: "layer" or "batch") is every member's."""
    seeds = list(seeds)
    drops = _listed(dropout, len(seeds), "dropout", _probability)
    return Stacked([mlp(sizes, activation=activation, bias=bias, init=init, seed=int(s), dtype=dtype, dropout=d,
                        norm=norm) for s, d in zip(seeds, drops)])

# -- memory -----------------------------------------------------------------------------------------------
def stack_memory(sizes, members, itemsize, rows, batch_rows, optimizer_buffers=0, bias=True, own_rows=False,
                 norm=False):
    """Estimated bytes to train a stack of ``members`` ``mlp(sizes)``: ``(total, per member, shared)``.

    One member costs what ``validation.training_memory`` counts for one model, less the data (shared by
    the stack), with the activations of a minibatch or of an evaluation chunk; with ``own_rows`` (each member
    shuffling by its own seed) its minibatch of inputs too.
    """
    sizes = [int(s) for s in sizes]
    eval_rows = max(256, EVAL_ROWS // max(1, members))
    one, _ = training_memory(sizes, itemsize, rows, batch_rows, optimizer_buffers, bias, eval_rows, norm)
    shared = rows * (sizes[0] + sizes[-1]) * itemsize
    per_member = one - shared + (batch_rows * sizes[0] * itemsize if own_rows else 0)
    return shared + members * per_member, per_member, shared


def memory_limit(device):
    """``(bytes, description)`` a stack on ``device`` may use: the GPU's free memory (CuPy), else the host's
    (``validation.available_memory``); ``(None, None)`` where unknown."""
    info = getattr(getattr(device, "native", None), "mem_info", None)  # cupy.cuda.Device
    if device.kind != "cpu" and info is not None:
        return int(info[0]), f"the free memory of {device.name}"
    return available_memory()


def largest_stack(sizes, itemsize, rows, batch_rows, optimizer_buffers=0, bias=True, own_rows=False, limit=None,
                  norm=False):
    """The most members of ``mlp(sizes)`` a stack may hold within ``limit`` bytes (None: no limit known)."""
    if limit is None:
        return None
    _, per_member, shared = stack_memory(sizes, 1, itemsize, rows, batch_rows, optimizer_buffers, bias, own_rows,
                                         norm)
    return max(0, int((limit - shared) // per_member))


# -- sweeps -----------------------------------------------------------------------------------------------
def grid(**values):
    """Every combination of the given settings (each a value or a list of values): a list of dicts, the
    settings in ``SETTINGS`` order, the last one varying fastest; e.g. ``grid(lr=[0.1, 1.0], seed=[0, 1])``."""
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise InputError(f"unknown sweep settings {unknown}; expected some of {', '.join(SETTINGS)}")
    keys = [k for k in SETTINGS if k in values]
    lists = []
    for k in keys:
        v = values[k]
        many = isinstance(v, (list, tuple)) and not (k == "hidden" and all(isinstance(h, numbers.Integral) for h in v))
        lists.append(list(v) if many else [v])
        if not lists[-1]:
            raise InputError(f"{k} has no values")
    return [dict(zip(keys, combo)) for combo in itertools.product(*lists)]


class Uniform:
    """A range for ``sample`` to draw a setting from, uniformly in ``[low, high]``."""

    scale = "linear"

    def __init__(self, low, high):
        if isinstance(low, bool) or isinstance(high, bool) or not all(
                isinstance(v, numbers.Real) and math.isfinite(v) for v in (low, high)) or not low < high:
            raise InputError(f"{type(self).__name__} needs finite numbers low < high, got {low!r}, {high!r}")
        self.low, self.high = float(low), float(high)

    def draw(self, rng, n):
        """``n`` values in range, each rounded to 3 significant digits (what a table prints is what trained), or
        more where the range is narrow, as many as keep 50 steps or more within it (``Uniform(0.99, 0.999)`` draws
        0.9972, not only 0.99, 0.991, ..., 0.999); 6 at most, as a table prints them."""
        return [self._rounded(float(v)) for v in self._draw(rng, n)]

    def _rounded(self, v):
        width, digits = self.high - self.low, 3
        if v != 0.0 and math.isfinite(width):  # the step near v, 10 ** (e - digits + 1), at most width / 50
            digits = max(3, math.ceil(math.floor(math.log10(abs(v))) + 1 - math.log10(width / 50) - 1e-9))
        return min(max(float(f"{v:.{min(digits, 6)}g}"), self.low), self.high)

    def _draw(self, rng, n):
        return rng.uniform(self.low, self.high, n)

    def __repr__(self):
        return f"{type(self).__name__}({number_text(self.low)}, {number_text(self.high)})"

    def __eq__(self, other):
        return type(other) is type(self) and (other.low, other.high) == (self.low, self.high)

    __hash__ = None


def number_text(v):
    """A number as ``format(v, 'g')`` writes it, or every digit where that would round it."""
    short = format(v, "g")
    return short if float(short) == v else repr(float(v))


class LogUniform(Uniform):
    """A range drawn uniformly in log space: ``exp(uniform(log low, log high))``, ``0 < low < high``; for learning
    rates and strengths, whose useful values span orders of magnitude (CS231n's ``10 ** uniform(-6, -1)``)."""

    scale = "log"

    def __init__(self, low, high):
        super().__init__(low, high)
        if self.low <= 0:
            raise InputError(f"LogUniform needs 0 < low < high, got {low!r}, {high!r}")

    def _draw(self, rng, n):
        return np.exp(rng.uniform(math.log(self.low), math.log(self.high), n))


_CHECKS = {"lr": _rate, "l2": _strength, "weight_decay": _strength, "dropout": _probability,
           "momentum": lambda v, name: _number(v, name, 0.0, 1.0)}
_TRIES = 1000  # draws in a row that may repeat earlier trials before sample gives up (ranges too narrow)


def sample(trials, *, search_seed=0, **values):
    """``trials`` members drawn at random (random search, Bergstra and Bengio 2012): a list of dicts as ``grid``'s.

    Each setting is a value (every member's), a list (each trial draws one of its values, uniformly) or a range,
    ``Uniform(low, high)`` or ``LogUniform(low, high)`` (each trial draws a number, rounded to 3 significant
    digits, more where the range is narrow: ``Uniform.draw``). The draws come from
    ``numpy.random.default_rng([search_seed, k])``, ``k`` the setting's place in ``SETTINGS``: the same
    ``search_seed`` draws the same trials, and adding a setting leaves the others' draws as they were.

    The trials are different members: a trial whose drawn settings repeat an earlier trial's (3 digits make
    that likely: 60 draws of one log-uniform decade nearly always repeat one) is drawn again, every drawn setting from
    its second stream ``default_rng([search_seed, k, 1])``; only such a trial may change when a setting is added.
    Where every drawn setting is a list, that is scikit-learn's ``RandomizedSearchCV``: distinct combinations,
    drawn without replacement, at most as many trials as combinations. ``seed``, the initial weights' seed, is
    crossed instead: a list of seeds runs every trial with each, so that the spread over seeds means what it means
    in a grid.
    """
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1:
        raise InputError(f"trials must be a positive integer, got {trials!r}")
    if isinstance(search_seed, bool) or not isinstance(search_seed, numbers.Integral) or search_seed < 0:
        raise InputError(f"search_seed must be a non-negative integer, got {search_seed!r}")
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise InputError(f"unknown sweep settings {unknown}; expected some of {', '.join(SETTINGS)}")
    if isinstance(values.get("seed"), Uniform):
        raise InputError("seed takes a list of seeds (every trial runs with each), not a range")
    trials, drawn, choices = int(trials), {}, {}
    for key in SETTINGS:  # checked, and the total of lists alone, before anything is drawn
        if key not in values or key == "seed":
            continue
        v = values[key]
        if isinstance(v, Uniform):
            if key not in _CHECKS:
                raise InputError(f"{key} takes a list of values to choose from, not a range")
            for end in (v.low, v.high):
                _CHECKS[key](end, f"{key}'s range {v!r}")
            choices[key] = v
        elif _listed_values(key, v):
            if not v:
                raise InputError(f"{key} has no values")
            if len({_same(key, x) for x in v}) < len(v):
                raise InputError(f"{key} lists a value twice: {list(v)!r}")
            if len(v) > 1:
                choices[key] = list(v)
    if trials > 1 and not choices:
        raise InputError(f"{trials} trials, but no setting is drawn (each has one value): give one a range or a "
                         "list of values")
    if not any(isinstance(c, Uniform) for c in choices.values()):
        total = math.prod(len(c) for c in choices.values())
        if trials > total:
            raise InputError(f"{trials} trials, but the lists make only {total} different member"
                             f"{'s' if total != 1 else ''}: ask for at most {total}, or train every combination "
                             "(grid)")
    for k, key in enumerate(SETTINGS):
        if key not in values or key == "seed":
            continue
        v, rng = values[key], np.random.default_rng([int(search_seed), k])
        if isinstance(v, Uniform):
            drawn[key] = v.draw(rng, trials)
        elif _listed_values(key, v):
            drawn[key] = [v[j] for j in rng.integers(0, len(v), trials)]
        else:
            drawn[key] = [v] * trials
    _distinct(trials, drawn, choices, int(search_seed))
    seeds = values.get("seed", None)
    seeds = [None] if seeds is None else (list(seeds) if isinstance(seeds, (list, tuple)) else [seeds])
    if not seeds:
        raise InputError("seed has no values")
    return [{**{key: drawn[key][t] for key in SETTINGS if key in drawn}, **({"seed": s} if s is not None else {})}
            for t in range(int(trials)) for s in seeds]


def _listed_values(key, v):
    """Whether ``v`` is a list of values to choose from (``hidden``'s list of ints is one architecture, as in grid)."""
    return isinstance(v, (list, tuple)) and not (key == "hidden" and all(isinstance(h, numbers.Integral) for h in v))


def _same(key, value):
    """What two values of ``key`` share when they are one member's: 1 and 1.0 are one rate, 10 and (10,) one width."""
    if key == "hidden":
        value = (value,) if isinstance(value, numbers.Integral) else value
        return repr(tuple(int(h) if isinstance(h, numbers.Integral) else h for h in value))
    return repr(float(value) if isinstance(value, numbers.Real) else value)


def _distinct(trials, drawn, choices, search_seed):
    """Draw again, in place, each trial whose drawn settings (``choices``) repeat an earlier trial's."""
    ranges = any(isinstance(c, Uniform) for c in choices.values())  # lists alone: at most their total (sample)
    spare = {key: np.random.default_rng([search_seed, SETTINGS.index(key), 1]) for key in choices}
    seen = set()
    for t in range(trials):
        combo = tuple(_same(key, drawn[key][t]) for key in choices)
        tries = 0
        while combo in seen:  # lists alone: ends, as fewer trials than combinations are asked for
            if ranges and tries == _TRIES:
                raise InputError(f"could not draw {trials} different trials: after {t}, {_TRIES} draws in a row "
                                 "repeated earlier ones (drawn numbers are rounded, to 3 significant digits or more "
                                 "in a narrow range, and these ranges hold too few of them): ask for fewer trials, "
                                 "or widen a range")
            tries += 1
            for key, c in choices.items():
                drawn[key][t] = (c.draw(spare[key], 1)[0] if isinstance(c, Uniform)
                                 else c[int(spare[key].integers(len(c)))])
            combo = tuple(_same(key, drawn[key][t]) for key in choices)
        seen.add(combo)


def _name(settings, varying):
    parts = []
    for key in SETTINGS:
        if key in varying and key in settings:
            v = settings[key]
            parts.append(f"{key}={'x'.join(map(str, v)) if key == 'hidden' else format(v, 'g')}")
    return " ".join(parts)


def tie_field(field):
    """The loss that breaks ties of ``field``: ``val_loss`` for a validation metric, else ``loss``."""
    return "val_loss" if field.startswith("val_") else "loss"


def rank_key(field):
    """``key(value, loss, index)`` ordering members as ``SweepResult.ranking`` does (the table, the progress line and
    the scatter's ring): the best ``field`` first (``r2`` upwards, the others downwards), ties broken by the loss
    (``tie_field``), then the index; NaN values last."""
    sign = -1.0 if field.removeprefix("val_") == "r2" else 1.0

    def key(value, loss, index):
        return (math.isnan(value), sign * value if not math.isnan(value) else 0.0,
                loss if not math.isnan(loss) else math.inf, index)
    return key


class SweepResult:
    """The members of a sweep, their histories and trained stacks.

    Attributes
    ----------
    members : list of dict
        Each member's settings (``SETTINGS``: ``hidden`` a tuple; ``lr``, ``l2``, ... floats; ``seed`` an int).
    names : list of str
        ``"lr=0.1 l2=0.001"``: the settings that vary over the sweep.
    histories : list of History
    diverged : dict of int -> dict
        As ``StackHistory.diverged``, by member index in the sweep.
    stopped : dict of int -> dict
        As ``StackHistory.stopped``, by member index in the sweep.
    early_stopping : dict of int -> EarlyStopping
        With early stopping, each member's rule and counters (``StackHistory.early_stopping``).
    restored : dict of int -> int
        The epoch whose weights early stopping put back, by member (``restore_best``): ``final`` reads it.
    groups : list of (indices, Stacked, StackedOptimizer)
        The stacks trained: one per architecture (and chunk), the members' indices in the sweep.
    notes : list of str
        What the sweep did that a reader should know (groups, chunks).
    """

    def __init__(self, members, names):
        self.members, self.names = members, names
        self.histories, self.diverged, self.groups, self.notes = [History() for _ in members], {}, [], []
        self.stopped, self.early_stopping, self.restored = {}, {}, {}

    def __len__(self):
        return len(self.members)

    def _where(self, i):
        for indices, stacked, opt in self.groups:
            if i in indices:
                return indices.index(i), stacked, opt
        raise IndexError(f"member {i} was not trained")

    def model(self, i, device=None):
        """Member ``i`` as an ordinary ``Sequential``."""
        k, stacked, _ = self._where(i)
        return stacked.member(k, device)

    def optimizer(self, i):
        """Member ``i``'s ordinary optimizer, with its state (``StackedOptimizer.member``)."""
        k, _, opt = self._where(i)
        return opt.member(k)

    def final(self, i, field):
        """``field`` of the epoch whose weights member ``i`` ends with: the last recorded, or the best one that
        early stopping restored (``restored``); NaN where it diverged or recorded none."""
        if i in self.diverged or not self.histories[i].records:
            return math.nan
        records = self.histories[i].records
        if i in self.restored:
            records = [r for r in records if r["epoch"] == self.restored[i]] or records
        return records[-1].get(field, math.nan)

    def ranking(self, field):
        """Member indices from the best final ``field`` to the worst (``r2`` upwards, the others downwards), ties
        broken by the final loss of the same split; diverged members last (``rank_key``). InputError for a field
        that no member recorded (a typo, or a validation figure of a sweep without validation rows)."""
        recorded = [k for h in self.histories for r in h.records[:1] for k in r if k not in ("epoch", "seconds")]
        if recorded and field not in recorded:
            raise InputError(f"no member recorded {field!r}; their records hold {', '.join(dict.fromkeys(recorded))}")
        key, tie = rank_key(field), tie_field(field)
        return sorted(range(len(self)), key=lambda i: key(self.final(i, field), self.final(i, tie), i))

    def table(self, field):
        """One dict a member, best first (``ranking(field)``), as ``portablenn sweep`` prints them: ``member``
        (its index), ``name``, its settings (``SETTINGS``), every final figure its History has (``final``: the
        restored epoch's where early stopping restored one, NaN where it diverged), ``epochs`` trained,
        ``best_epoch`` (the restored one, or None) and ``status`` ("trained", "stopped" or "diverged"). A list of
        flat records: ``pandas.DataFrame(result.table("val_error"))`` is scikit-learn's ``cv_results_`` view."""
        fields = []
        for h in self.histories:
            for record in h.records[:1]:
                fields += [k for k in record if k not in ("epoch", "seconds") and k not in fields]
        rows = []
        for i in self.ranking(field):
            status = "diverged" if i in self.diverged else "stopped" if i in self.stopped else "trained"
            rows.append({"member": i, "name": self.names[i], **{k: self.members[i][k] for k in SETTINGS},
                         **{k: self.final(i, k) for k in fields}, "epochs": len(self.histories[i]),
                         "best_epoch": self.restored.get(i), "status": status})
        return rows

    def spread(self, field):
        """``[(settings without seed, [member indices], mean, std), ...]`` of the final ``field`` over the seeds
        of each setting (std with ``ddof=0``; NaN where a member diverged), for settings run with several seeds."""
        groups = {}
        for i, m in enumerate(self.members):
            key = tuple((k, m[k]) for k in SETTINGS if k in m and k != "seed")
            groups.setdefault(key, []).append(i)
        out = []
        for key, indices in groups.items():
            if len(indices) > 1:
                values = np.array([self.final(i, field) for i in indices])
                out.append((dict(key), indices, float(values.mean()), float(values.std())))
        return out


def sweep(X, y, members, *, outputs=None, activation="relu", bias=True, init="auto", dtype="float32", optimizer="sgd",
          nesterov=False, loss=None, epochs=1, batch_size="auto", shuffle=True, seed=0, shuffle_per_member=False,
          device=None, validation=None, log_every=1, callback=None, chunk=False, on_group=None, on_read=None,
          schedule=None, early_stopping=None, clip_norm=None, norm=None, sample_weight=None):
    """Train every member of ``members`` (``grid(...)``'s or ``sample(...)``'s dicts), one stack per architecture.

    Parameters
    ----------
    X, y : the training data, as ``fit``'s
    members : list of dict
        Each with any of ``SETTINGS``: ``hidden`` (hidden widths, default ``(100,)``), ``lr`` (default 0.1),
        ``l2``, ``momentum``, ``weight_decay`` (AdamW), ``dropout`` (default 0) and ``seed`` (the initial
        weights, default 0); ``grid(...)`` makes every combination, ``sample(...)`` a random search.
    outputs : int, optional
        The model's outputs; default the classes (largest label + 1, over ``y`` and the validation labels)
        for softmax cross-entropy, the target columns otherwise.
    activation, bias, init, dtype, norm : as ``mlp``'s, shared by every member
    optimizer : {"sgd", "adam", "adamw"}
    nesterov : bool
        SGD's Nesterov momentum, for every member.
    seed : int
        The shuffling seed all members share; with ``shuffle_per_member`` each member shuffles by its own ``seed``.
    chunk : bool
        Where the device's memory cannot hold a whole stack, train it in chunks of as many members as fit
        (said in ``notes``); otherwise refuse (InputError naming the most members that would fit).
    callback : callable(i, record), optional
        Member ``i`` of the sweep, each epoch record.
    on_group : callable(indices, stacked), optional
        Called before each stack trains (the command line prints it).
    on_read : callable(epoch, indices, StackHistory), optional
        Called after each read of a stack's metrics (``fit_stack``'s ``on_read``), with its members' indices.
    schedule, early_stopping, clip_norm : optional
        As ``fit_stack``'s: each member has its own schedule and early stopping.
    sample_weight : array of shape (n_samples,), optional
        As ``fit``'s, the same for every member.

    Returns
    -------
    SweepResult
    """
    if not members:
        raise InputError("a sweep needs at least one member")
    loss = get_loss(loss)
    members = [_settings(m, k) for k, m in enumerate(members)]
    varying = {k for k in SETTINGS if len({repr(m.get(k)) for m in members}) > 1}
    names = [_name(m, varying) or f"member {i}" for i, m in enumerate(members)]
    result = SweepResult(members, names)
    if optimizer not in OPTIMIZERS or OPTIMIZERS[optimizer] not in (SGD, Adam, AdamW):
        raise InputError(f"a sweep trains with sgd, adam or adamw, not {optimizer!r}")
    n_in = int(np.shape(X)[1]) if len(np.shape(X)) == 2 else None
    if outputs is None:
        if loss.task == "classification":
            labels = [np.asarray(y)] + ([np.asarray(validation[1])] if validation else [])
            outputs = int(max(int(np.max(lab)) for lab in labels)) + 1
        else:
            outputs = 1 if np.ndim(y) == 1 else int(np.shape(y)[1])
    dev = backend.device("cpu") if device is None else backend.device(device)
    rows = int(np.shape(X)[0])
    batch = check_batch_size(batch_size, rows)  # as fit_stack will, before the memory estimate uses it
    groups = {}
    for i, m in enumerate(members):
        groups.setdefault(tuple(m["hidden"]), []).append(i)
    if len(groups) > 1:
        result.notes.append(f"{len(groups)} architectures ({', '.join('x'.join(map(str, h)) for h in groups)}): "
                            f"one stack each, trained one after another")
    template_cls = OPTIMIZERS[optimizer]
    buffers = {SGD: 1 if any(m["momentum"] for m in members) else 0, Adam: 2, AdamW: 2}[template_cls]
    itemsize = np.dtype(dtype).itemsize
    limit, source = memory_limit(dev)
    for hidden, indices in groups.items():
        sizes = [n_in, *hidden, outputs]
        need, _, _ = stack_memory(sizes, len(indices), itemsize, rows, batch, buffers, bias, shuffle_per_member,
                                  bool(norm))
        size = len(indices)
        if limit is not None and need > limit:
            most = largest_stack(sizes, itemsize, rows, batch, buffers, bias, shuffle_per_member, limit, bool(norm))
            if not chunk or most < 1:
                raise InputError(f"a stack of {len(indices)} members {sizes} needs {format_bytes(need)}, more than "
                                 f"{source} ({format_bytes(limit)}); at most {most} members would fit: sweep fewer "
                                 f"settings, or train in chunks" + (" (--chunk)" if most else ""))
            size = most
            result.notes.append(f"{'x'.join(map(str, hidden))}: {len(indices)} members need {format_bytes(need)}, "
                                f"more than {source} ({format_bytes(limit)}): trained in chunks of {most}")
        for c in range(0, len(indices), size):
            part = indices[c:c + size]
            ms = [members[i] for i in part]
            stacked = stack_mlp(sizes, [m["seed"] for m in ms], activation=activation, bias=bias, init=init,
                                dtype=dtype, dropout=[m["dropout"] for m in ms], norm=norm)
            extra = {"nesterov": True} if nesterov else {}
            if template_cls is SGD:
                template = SGD(ms[0]["lr"], momentum=max(m["momentum"] for m in ms) or 0.0, **extra)
            else:
                template = template_cls(ms[0]["lr"])
            opt = StackedOptimizer(template, len(ms), lr=[m["lr"] for m in ms], l2=[m["l2"] for m in ms],
                                   momentum=[m["momentum"] for m in ms] if template_cls is SGD else None,
                                   weight_decay=[m["weight_decay"] for m in ms] if template_cls is AdamW else None)
            if on_group is not None:
                on_group(part, stacked)
            forward = None if callback is None else (lambda k, record, part=part: callback(part[k], record))
            history = fit_stack(stacked, X, y, optimizer=opt, loss=loss, epochs=epochs, batch_size=batch_size,
                                shuffle=shuffle, seed=seed,
                                member_seeds=[m["seed"] for m in ms] if shuffle_per_member else None,
                                device=dev, validation=validation, log_every=log_every, callback=forward,
                                names=[names[i] for i in part], schedule=schedule, early_stopping=early_stopping,
                                clip_norm=clip_norm, sample_weight=sample_weight,
                                on_read=None if on_read is None else (lambda e, h, part=part: on_read(e, part, h)))
            for k, i in enumerate(part):
                result.histories[i] = history.histories[k]
                if k in history.diverged:
                    result.diverged[i] = history.diverged[k]
                if k in history.stopped:
                    result.stopped[i] = history.stopped[k]
                if history.early_stopping is not None:
                    result.early_stopping[i] = rule = history.early_stopping[k]
                    if early_stopping.restore_best and rule.best_epoch is not None and k not in history.diverged:
                        result.restored[i] = rule.best_epoch
            result.groups.append((part, stacked, opt))
    return result


_DEFAULTS = {"hidden": (100,), "lr": 0.1, "l2": 0.0, "momentum": 0.0, "weight_decay": 0.0, "dropout": 0.0, "seed": 0}


def _settings(member, k):
    """One member's settings, every key of ``SETTINGS`` filled and checked; InputError naming member ``k``."""
    if not isinstance(member, dict):
        raise InputError(f"member {k} must be a dict of settings, not {type(member).__name__}")
    unknown = sorted(set(member) - set(SETTINGS))
    if unknown:
        raise InputError(f"member {k} has unknown settings {unknown}; expected some of {', '.join(SETTINGS)}")
    m = {**_DEFAULTS, **member}
    hidden = m["hidden"]
    hidden = (hidden,) if isinstance(hidden, numbers.Integral) else tuple(hidden)
    if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise InputError(f"member {k}: hidden must be positive integer widths, got {m['hidden']!r}")
    seed = m["seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"member {k}: seed must be a non-negative integer, got {seed!r}")
    return {"hidden": tuple(int(h) for h in hidden), "lr": _rate(m["lr"], f"member {k}: lr"),
            "l2": _strength(m["l2"], f"member {k}: l2"),
            "momentum": _number(m["momentum"], f"member {k}: momentum", 0.0, 1.0),
            "weight_decay": _strength(m["weight_decay"], f"member {k}: weight_decay"),
            "dropout": _probability(m["dropout"], f"member {k}: dropout"), "seed": int(seed)}
