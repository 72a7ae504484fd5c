"""What a stack's training records, member by member: ``StackHistory`` (a ``History`` per member, the members
that diverged or stopped) and ``_Stops``, early stopping and metric-reading schedules per member."""
import numpy as np

from .early_stopping import EarlyStopping
from .history import History

__all__ = ["StackHistory"]


class StackHistory:
    """What ``fit_stack`` returns: one ``History`` per member, and the members that diverged.

    Attributes
    ----------
    histories : list of History
        Member ``i``'s epochs, as ``fit`` would record them (a diverged member's end before its bad epoch).
    diverged : dict of int -> dict
        ``{i: {"epoch", "step", "loss", "message"}}`` for every member whose loss became NaN or infinite.
    stopped : dict of int -> dict
        ``{i: {"epoch", "best_epoch", "best", "reason"}}`` for every member that early stopping (or a schedule
        that ends training) stopped before the last epoch.
    early_stopping : list of EarlyStopping or None
        With early stopping, member ``i``'s rule and its counters (``best``, ``best_epoch``, ``stopped_epoch``;
        ``state_dict`` for a checkpoint).
    optimizer : StackedOptimizer
    names : list of str
    """

    def __init__(self, names, optimizer):
        self.names, self.optimizer = list(names), optimizer
        self.histories = [History() for _ in names]
        self.diverged, self.stopped = {}, {}
        self.early_stopping = None  # each member's EarlyStopping counters (best, best_epoch, ...), with early stopping

    def __getitem__(self, i):
        return self.histories[i]

    def __len__(self):
        return len(self.histories)

    def __repr__(self):
        return f"StackHistory({len(self)} members, {len(self.diverged)} diverged)"


class _Stops:
    """Early stopping and metric-reading schedules, member by member, for ``fit_stack``.

    ``on_record(i, record)`` (the records' callback) feeds member ``i``'s schedule and its own EarlyStopping's
    counters; ``read(active)`` after a read keeps device copies of the improved members' weights (with
    ``restore_best``), stops the members whose rule says so (``active`` False) and returns whether any stopped;
    ``settle()`` before a read puts the stopped members' weights back as they were at their stop (a BatchNorm's
    running statistics move with every training forward); ``finish()`` puts back the best weights (or, without
    ``restore_best``, a stopped member's of its stop) and hands the stack each such member's own counts of the
    shared counters (``Stacked._member_buffers``)."""

    def __init__(self, stacked, opt, early_stopping, history, callback):
        self.stacked, self.opt, self.history, self.callback = stacked, opt, history, callback
        self.template = early_stopping
        self.rules = None if early_stopping is None else [
            EarlyStopping(early_stopping.monitor, early_stopping.patience, early_stopping.min_delta,
                          restore_best=False, mode=early_stopping.mode) for _ in range(stacked.members)]
        for rule in self.rules or ():
            rule.start(None, None)
        self.improved, self.stopping, self.best, self.held = set(), {}, None, None
        self._best_members, self.best_counts, self.held_counts = set(), {}, {}  # the counters: see _counts
        stacked._member_buffers = {}

    def on_record(self, i, record):
        schedules = self.opt.schedules
        if schedules is not None and schedules[i].reads_metrics:
            schedules[i].end_epoch(record)
            if schedules[i].stop_training:
                self.stopping.setdefault(i, f"{type(schedules[i]).__name__} ended its training")
        if self.rules is not None:
            rule = self.rules[i]
            before = rule.best_epoch
            if rule.update(record, None):
                self.stopping.setdefault(i, f"early stopping: {rule.monitor} did not improve for {rule.patience} "
                                            "epochs")
            if rule.best_epoch != before:
                self.improved.add(i)
        if self.callback is not None:
            self.callback(i, record)

    def _stores(self):
        """``(store, name)`` of every per-member array (parameters and buffers with the member axis first)."""
        M = self.stacked.members
        out = []
        for layer in self.stacked.layers:
            for store in (layer.params, layer.buffers):
                out += [(store, name) for name in store if store[name].ndim >= 1 and store[name].shape[0] == M]
        return out

    def _mask(self, members, ndim):
        flags = np.zeros(self.stacked.members, dtype=bool)
        flags[list(members)] = True
        return self.stacked.device.asarray(flags.reshape((-1,) + (1,) * (ndim - 1)))

    def _keep(self, snapshot, members):
        """``snapshot`` (a list of arrays, or None) with ``members``' current values."""
        xp, stores = self.stacked.xp, self._stores()
        if snapshot is None:
            return [xp.asarray(store[name], copy=True) for store, name in stores]
        return [xp.where(self._mask(members, store[name].ndim), store[name], old)
                for (store, name), old in zip(stores, snapshot)]

    def _counts(self):
        """``{stacked layer index: {name: device copy}}`` of the shared 0-d buffers (Dropout's mask counter,
        BatchNorm's num_batches_tracked): copies on the device, no read."""
        xp = self.stacked.xp
        return {j: {name: xp.asarray(value, copy=True) for name, value in layer.buffers.items() if value.ndim == 0}
                for j, layer in enumerate(self.stacked.layers) if any(v.ndim == 0 for v in layer.buffers.values())}

    def _put(self, snapshot, members):
        """``members``' values of ``snapshot`` (``_keep``'s) back into the stack."""
        if snapshot is None or not members:
            return
        xp = self.stacked.xp
        for (store, name), value in zip(self._stores(), snapshot):
            store[name] = xp.where(self._mask(members, value.ndim), value, store[name])
        self.stacked.lay_out()  # new arrays: NumPy's layouts again

    def read(self, active):
        if self.improved and self.template is not None and self.template.restore_best:
            counts = self._counts()
            self.best_counts.update({i: counts for i in self.improved})
            self.best = self._keep(self.best, self.improved)
            self._best_members |= self.improved
        self.improved = set()
        stopping = {i: why for i, why in self.stopping.items() if active[i] and i not in self.history.diverged}
        self.stopping = {}
        if not stopping:
            return False
        self.held = self._keep(self.held, stopping)
        counts = self._counts()
        self.held_counts.update({i: counts for i in stopping})
        for i, why in stopping.items():
            active[i] = False
            rule = self.rules[i] if self.rules is not None else None
            self.history.stopped[i] = {"epoch": self.history.histories[i].records[-1]["epoch"], "reason": why,
                                       "best_epoch": getattr(rule, "best_epoch", None), "best": getattr(rule, "best", None)}
        return True

    def settle(self):
        """Put the stopped members' parameters and buffers back as they were at their stop, before a read shows
        them (a BatchNorm's running statistics move with every training forward, a stopped member's too)."""
        self._put(self.held, set(self.history.stopped))

    def finish(self):
        """The best weights back (``restore_best``; the diverged members' stay zero), or the stopped members'."""
        restore = self._best_members - set(self.history.diverged) if self.best else set()
        stopped = set(self.history.stopped) - restore
        self._put(self.held, stopped)
        self._put(self.best, restore)
        self.stacked._member_buffers = {**{i: self.held_counts[i] for i in stopped},
                                        **{i: self.best_counts[i] for i in restore}}
