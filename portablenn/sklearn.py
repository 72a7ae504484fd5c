"""scikit-learn estimators, ``MLPClassifier`` and ``MLPRegressor``, that train with portablenn on the device their
input lives on."""
import numbers
import warnings

import numpy as np
from array_api_compat import (array_namespace, is_array_api_obj, is_array_api_strict_namespace, is_cupy_array,
                              is_jax_array, is_numpy_array, is_torch_array)

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.utils import check_array, check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d
    from sklearn.utils.validation import validate_data as _validate_data  # scikit-learn >= 1.6
except ImportError as exc:
    raise ImportError(f"portablenn.sklearn needs scikit-learn >= 1.6 (pip install 'portablenn[sklearn]'): {exc}"
                      ) from exc

from . import backend
from .early_stopping import EarlyStopping
from .layers import Linear, Sequential
from .losses import softmax
from .models import mlp
from .optim import SGD, Adam
from .split import validation_split
from .train import fit
from .validation import check_features, check_range, check_sample_weight

try:
    from .losses import RegressionLoss
except ImportError:  # a portablenn without the regression losses of issue #18: MLPRegressor says so when fitted
    RegressionLoss = None

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "logistic": "sigmoid", "identity": "identity"}
_LEARNING_RATES = ("constant", "invscaling", "adaptive")
_CHUNK = 8192  # rows per forward pass when predicting, to bound activation memory


if RegressionLoss is not None:
    class _SquaredError(RegressionLoss):
        """scikit-learn's ``squared_error`` as its ``MLPRegressor`` trains it: the gradient of a row's
        ``0.5 * sum_k (p_k - y_k) ** 2`` (the output layer's delta is ``p - y``), and the loss reported divided by
        the ``k`` outputs, ``0.5 * mean((p - y) ** 2)`` over all elements, as scikit-learn reports it. For one
        output both are half of ``MeanSquaredError`` (torch's ``MSELoss``); the metrics are RMSE and R^2."""

        row_weights = True

        def value_and_grad(self, xp, outputs, targets, scale):
            (y, *weight) = targets  # and fit's sample weights (batch, 1), where given
            diff = outputs - y
            squares = xp.sum(diff * diff)
            if weight:
                weighted = diff * weight[0]
                return weighted * scale, xp.sum(weighted * diff) * (0.5 / outputs.shape[1]), squares
            return diff * scale, squares * (0.5 / outputs.shape[1]), squares


_PARAMETERS = """
    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(100,)
        Width of each hidden layer; ``()`` is a linear model.
    activation : {"relu", "tanh", "sigmoid", "logistic", "identity"}, default="relu"
        ``"logistic"`` is scikit-learn's name for the sigmoid; ``"identity"`` makes a linear model.
    solver : {"adam", "sgd"}, default="adam"
    alpha : float, default=0.0001
        L2 strength: ``0.5 * alpha * sum(W ** 2)`` is added to the *mean* minibatch loss
        (portablenn's ``l2``; scikit-learn divides its ``alpha`` term by the batch size instead).
    batch_size : int or "auto", default="auto"
        ``"auto"`` is ``min(200, n_samples)``; an int outside ``[1, n_samples]`` is clipped with a
        warning, as scikit-learn does.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        For ``solver="sgd"`` (ignored by Adam, as scikit-learn does), scikit-learn's rules, applied at each
        epoch's end: ``"invscaling"`` sets the rate to ``learning_rate_init / (t_ + 1) ** power_t``;
        ``"adaptive"`` divides it by 5 instead of stopping when the stopping rule (see ``tol``) fires, and
        stops once it is at most 1e-6.
    learning_rate_init : float, default=0.001
    power_t : float, default=0.5
        The exponent of ``"invscaling"``.
    max_iter : int, default=200
        Epochs, at most.
    shuffle : bool, default=True
        Reshuffle the samples every epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights (and Dropout's masks), the shuffling and the validation split. The
        weights are initialised as scikit-learn's: weights and biases uniform on
        ``+-sqrt(6 / (fan_in + fan_out))`` (``2`` instead of 6 for the logistic).
    tol : float, default=1e-4
        scikit-learn's stopping rule, checked after every epoch: an epoch whose training loss is not below
        the best so far minus ``tol`` (with ``early_stopping``: whose validation score is not above the
        best plus ``tol``) counts one, any other resets the count; the best takes any improvement. When the
        count exceeds ``n_iter_no_change``, training stops (or the rate drops, see ``learning_rate``).
        Running to ``max_iter`` instead gives a ``ConvergenceWarning``.
    verbose : bool, default=False
        Print ``"Iteration %d, loss = %.8f"`` after every epoch (and the validation score), as scikit-learn.
    warm_start : bool, default=False
        ``fit`` continues from the fitted network (with a new optimizer, as scikit-learn) instead of a new one.
    momentum : float, default=0.9
        For ``solver="sgd"``.
    nesterovs_momentum : bool, default=True
        For ``solver="sgd"`` with ``momentum > 0``.
    early_stopping : bool, default=False
        Set ``validation_fraction`` of the training data aside (stratified for the classifier), stop on
        its score (see ``tol``) and end with the weights of the epoch that scored best.
    validation_fraction : float, default=0.1
        For ``early_stopping``; the validation set must get at least 2 rows.
    beta_1, beta_2, epsilon : float, default=0.9, 0.999, 1e-8
        For ``solver="adam"``.
    n_iter_no_change : int or inf, default=10
        Epochs without improvement tolerated, see ``tol``.
    dropout : float, default=0.0
        portablenn's own: Dropout with this probability after every hidden activation, in training only.
    device : str, default="auto"
        Where NumPy input is trained and predicted (``"cpu"``, ``"cuda:0"``, ... see
        ``portablenn.device``). Ignored for CuPy, PyTorch, JAX and array-api-strict input, which uses
        the input's own device.
    dtype : {"float32", "float64"}, default="float32"
        Dtype of the parameters and of the outputs.
"""

_ATTRIBUTES = """
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when fitted on a DataFrame with string column names.
    coefs_ : list of ndarray
        ``coefs_[i]`` is layer i's weight matrix, ``(fan_in, fan_out)``: host NumPy copies of ``model_``'s.
    intercepts_ : list of ndarray
        ``intercepts_[i]`` is layer i's bias, ``(fan_out,)``: host NumPy copies.
    loss_curve_ : list of float
        The mean training loss (with the L2 term) of each epoch, over all fits of a ``warm_start`` or
        ``partial_fit`` sequence, as scikit-learn's.
    best_loss_ : float or None
        The smallest of ``loss_curve_``; None with ``early_stopping``.
    validation_scores_ : list of float or None
        The validation score after each epoch with ``early_stopping``, else None.
    best_validation_score_ : float or None
        Their best, or None.
    n_iter_ : int
        Epochs run by the last ``fit`` (1 after ``partial_fit``).
    t_ : int
        Training samples seen, over all fits of a sequence.
    n_layers_ : int
        Layers of units, input and output included (``len(hidden_layer_sizes) + 2``).
    n_outputs_ : int
        Output units.
    out_activation_ : str
    model_ : portablenn.Sequential
        The trained network; it stays on the device it last ran on.
    device_ : str
        Name of the device ``fit`` trained on, e.g. ``"numpy"`` or ``"torch:cpu"``.
"""

_NOTES = """
    *Array in, array out*: given a CuPy, PyTorch, JAX or array-api-strict array, ``fit`` trains on that
    array's device and ``predict`` returns arrays of the input's namespace on the input's device.
    NumPy (and anything else scikit-learn accepts: lists, DataFrames) is validated with
    scikit-learn's own helpers, trained on ``device`` and answered with NumPy arrays.

    The stopping rule reads the epoch's figures that ``fit(log_every=1)`` reads anyway, once per epoch
    (no host sync inside an epoch); the best weights of ``early_stopping`` are kept as a copy on the device.
    ``partial_fit`` runs one epoch and keeps the optimizer's state between calls; pickling keeps the
    weights but not the optimizer's state, so a ``partial_fit`` after unpickling starts a new optimizer.
"""


class _BaseMLP(BaseEstimator):
    """What both estimators share: the parameters, the training set-up and scikit-learn's stopping rule.
    A subclass says how its targets are checked and encoded (``_targets``), its loss and its validation score."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, dropout=0.0, device="auto", dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.device = device
        self.dtype = dtype

    # -- fitted attributes in scikit-learn's form ----------------------------------------------------------
    @property
    def coefs_(self):
        """Weight matrices ``(fan_in, fan_out)``, host NumPy copies of ``model_``'s Linear layers."""
        check_is_fitted(self, "model_")
        return [self.model_.device.to_numpy(layer.params["weight"]).copy() for layer in self.model_.linears]

    @property
    def intercepts_(self):
        """Biases ``(fan_out,)``, host NumPy copies of ``model_``'s Linear layers."""
        check_is_fitted(self, "model_")
        return [self.model_.device.to_numpy(layer.params["bias"]).copy() for layer in self.model_.linears]

    # -- training ------------------------------------------------------------------------------------------
    def _fit(self, X, y, incremental, sample_weight=None):
        """``fit`` (a new network, or the fitted one with ``warm_start``) or ``partial_fit`` (``incremental``:
        one epoch, the optimizer kept)."""
        hidden, activation = self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "model_") or not (self.warm_start or incremental)
        spec = _input_device(X)
        if spec is None:
            X, y = _validate_data(self, X, y, reset=first, dtype=(np.float64, np.float32), **self._y_checks)
            dev = backend.device(self.device)
        else:
            _validate_data(self, X, skip_check_array=True, reset=first)
            check_features(X)
            if y is None:
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
            y = self._host_targets(backend._host(y))
            check_consistent_length(X, y)
            dev = backend.device(spec)
        if sample_weight is not None:  # before _targets sets classes_: refused weights leave the estimator as it was
            sample_weight = check_sample_weight(sample_weight, X.shape[0])
        targets = self._targets(y, first, incremental)
        rng = check_random_state(self.random_state)
        init_seed, shuffle_seed = (int(s) for s in rng.randint(np.iinfo(np.int32).max, size=2))
        if first:
            self._initialize(hidden, activation, init_seed)
        elif self.model_.config["sizes"][1:-1] != hidden:
            raise ValueError(f"hidden_layer_sizes is {self.hidden_layer_sizes!r} but the fitted network's hidden "
                             f"layers are {tuple(self.model_.config['sizes'][1:-1])}: fit with warm_start=False")
        if not incremental or getattr(self, "_optimizer", None) is None:
            self._optimizer = self._new_optimizer()
        validation = None
        if self.early_stopping:
            if X.shape[0] < 2:
                raise ValueError(f"early_stopping cannot split a validation set off n_samples={X.shape[0]}")
            X, targets, validation, *rest = validation_split(X, targets, self.validation_fraction, shuffle_seed,
                                                             stratify=self._stratify, sample_weight=sample_weight)
            sample_weight = rest[0] if rest else None
            if validation[0].shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                                 "your dataset.")
        n, done = X.shape[0], len(self.loss_curve_)
        stopper = _ScikitLearnStopping(self, n)
        self.n_iter_ = 0
        fit(self.model_, X, targets, optimizer=self._optimizer, loss=self._loss(), initial_epoch=done,
            epochs=done + (1 if incremental else self.max_iter), batch_size=self._batch(n),
            shuffle=bool(self.shuffle), l2=self.alpha, device=dev, seed=shuffle_seed, validation=validation,
            early_stopping=stopper, log_every=1, sample_weight=sample_weight)
        self.device_ = dev.name
        if not incremental and stopper.stopped_epoch is None:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def _initialize(self, hidden, activation, init_seed):
        """A new network and scikit-learn's fresh training state (``_initialize``)."""
        extra = {"dropout": float(self.dropout)} if self.dropout else {}
        model = mlp([self.n_features_in_, *hidden, self.n_outputs_], activation=activation, **extra,
                    seed=init_seed, dtype=self.dtype)
        state = model.state_dict()
        state.update(_glorot(model, 2.0 if self.activation == "logistic" else 6.0, init_seed))
        self.model_ = model.load_state_dict(state)
        self.n_layers_ = len(hidden) + 2
        self.t_, self.loss_curve_, self._no_improvement_count, self._optimizer = 0, [], 0, None
        if self.early_stopping:
            self.best_loss_, self.validation_scores_, self.best_validation_score_ = None, [], -np.inf
        else:
            self.best_loss_, self.validation_scores_, self.best_validation_score_ = np.inf, None, None

    def _check_params(self):
        """Validate the hyper-parameters; returns (hidden sizes as a list, portablenn activation name)."""
        hidden = self.hidden_layer_sizes
        hidden = [hidden] if isinstance(hidden, (int, np.integer)) else list(hidden)
        if not all(isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 1 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must hold positive integers, got {self.hidden_layer_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in ("adam", "sgd"):
            raise ValueError(f"solver must be 'adam' or 'sgd', got {self.solver!r}")
        if not _integer(self.max_iter) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (_integer(self.batch_size) or self.batch_size == "auto"):
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")
        if self.learning_rate not in _LEARNING_RATES:
            raise ValueError(f"learning_rate must be one of {', '.join(_LEARNING_RATES)}, got {self.learning_rate!r}")
        for name in ("power_t", "tol"):
            if not _real(getattr(self, name)) or not 0 <= getattr(self, name) < np.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not (_integer(self.n_iter_no_change) and self.n_iter_no_change >= 1 or self.n_iter_no_change == np.inf):
            raise ValueError(f"n_iter_no_change must be a positive integer or inf, got {self.n_iter_no_change!r}")
        if self.early_stopping and not (_real(self.validation_fraction) and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be in (0, 1) with early_stopping, "
                             f"got {self.validation_fraction!r}")
        if not _real(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        return [int(h) for h in hidden], _ACTIVATIONS[self.activation]

    def _batch(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if not 1 <= self.batch_size <= n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        return int(np.clip(self.batch_size, 1, n))

    def _new_optimizer(self):
        if self.solver == "adam":
            return Adam(self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon)
        return SGD(self.learning_rate_init, momentum=self.momentum,
                   nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)

    # -- prediction ----------------------------------------------------------------------------------------
    def _forward(self, X):
        """Validate ``X`` and run the network on its device in eval mode; returns (Device, xp, outputs, whether
        ``X`` is host data)."""
        check_is_fitted(self)
        spec = _input_device(X)
        if spec is None:
            X = _validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
            check_range(X, self.model_.dtype)
            dev = backend.device(self.device)
        else:
            _validate_data(self, X, skip_check_array=True, reset=False)
            check_features(X, self.n_features_in_, dtype=self.model_.dtype)
            dev = backend.device(spec)
        model = self.model_.to(dev)
        model.eval()  # Dropout off
        xp, n = dev.xp, X.shape[0]
        with dev.activate():
            Xd = dev.asarray(X, dtype=model.dtype) if spec is None else xp.astype(X, dev.dtype(model.dtype))
            parts = [model.forward(Xd[s:min(s + _CHUNK, n), :]) for s in range(0, n, _CHUNK)]
            return dev, xp, parts[0] if len(parts) == 1 else xp.concat(parts, axis=0), spec is None

    # -- pickling: the network holds modules (the array namespace), so store its weights ----------------
    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ may return __dict__ itself
        state.pop("_optimizer", None)  # device buffers; a partial_fit after unpickling starts a new one
        model = state.pop("model_", None)
        if model is not None:
            state["_model_state"] = (model.to_config(), getattr(model, "config", None), model.dtype,
                                     model.state_dict())
        return state

    def __setstate__(self, state):
        saved = state.pop("_model_state", None)
        if saved is not None:  # rebuilt on the CPU; predict moves it where its input is
            layers, config, dtype, weights = saved
            model = Sequential.from_config(layers, dtype=dtype).load_state_dict(weights)
            if config is not None:
                model.config = config
            state["model_"] = model
        super().__setstate__(state)


class _ScikitLearnStopping(EarlyStopping):
    """scikit-learn's MLP stopping rule as ``fit``'s early-stopping hook: ``_update_no_improvement_count`` and
    what ``_fit_stochastic`` does after it, on the epoch's record ``fit(log_every=1)`` reads anyway.

    After each epoch it extends the estimator's ``loss_curve_``, ``n_iter_``, ``t_`` (and ``validation_scores_``),
    counts an epoch without improvement by ``tol`` (the training loss, or with ``early_stopping`` the validation
    score, whose best epoch's weights it keeps on the device), sets the learning rate of ``"invscaling"``, and
    when the count exceeds ``n_iter_no_change`` stops training, or with ``"adaptive"`` divides the rate by 5. The
    count and the bests live on the estimator, so a ``warm_start`` or ``partial_fit`` sequence continues them.
    """

    def __init__(self, estimator, rows):
        self.estimator, self.rows = estimator, rows
        self.restore_best = bool(estimator.early_stopping)
        # the History field it reads (fit checks that the fit records it)
        self.monitor = estimator._validation_field if estimator.early_stopping else "loss"
        self.best = self.best_epoch = self.stopped_epoch = None
        self._weights = None

    def start(self, model, validation):
        self._weights = None

    def finish(self, model):
        """The best epoch's weights (and buffers) back into the model, with ``early_stopping``."""
        for store, name, value in self._weights or ():
            store[name] = value
        self._weights = None

    def __repr__(self):
        est = self.estimator
        return (f"{type(self).__name__}(early_stopping={est.early_stopping}, tol={est.tol}, "
                f"n_iter_no_change={est.n_iter_no_change})")

    def update(self, record, model):
        est, loss = self.estimator, record["loss"]
        est.n_iter_ += 1
        est.t_ += self.rows
        est.loss_curve_.append(loss)
        if est.verbose:
            print("Iteration %d, loss = %.8f" % (est.n_iter_, loss))
        if est.early_stopping:
            score = est._validation_score(record)
            est.validation_scores_.append(score)
            if est.verbose:
                print("Validation score: %f" % score)
            est._no_improvement_count = est._no_improvement_count + 1 if score < est.best_validation_score_ + est.tol \
                else 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = self.best = score
                self.best_epoch = record["epoch"]
                xp = model.device.xp  # a device copy of every parameter and buffer (Dropout's counter)
                self._weights = [(store, name, xp.asarray(store[name], copy=True)) for store, name in
                                 [(layer.params, name) for _, layer, name in model.named_parameters()]
                                 + [(layer.buffers, name) for _, layer, name in model.named_buffers()]]
        else:
            est._no_improvement_count = est._no_improvement_count + 1 if loss > est.best_loss_ - est.tol else 0
            if loss < est.best_loss_:
                est.best_loss_ = self.best = loss
                self.best_epoch = record["epoch"]
        sgd, optimizer = est.solver == "sgd", est._optimizer
        if sgd and est.learning_rate == "invscaling":  # the rate of the next epoch
            optimizer.lr = est.learning_rate_init / (est.t_ + 1) ** est.power_t
        if est._no_improvement_count <= est.n_iter_no_change:
            return False
        message = (f"{'Validation score' if est.early_stopping else 'Training loss'} did not improve more than "
                   f"tol={est.tol:f} for {est.n_iter_no_change} consecutive epochs.")
        if sgd and est.learning_rate == "adaptive":
            if optimizer.lr > 1e-6:
                optimizer.lr /= 5.0
                est._no_improvement_count = 0
                if est.verbose:
                    print(message + " Setting learning rate to %f" % optimizer.lr)
                return False
            message += " Learning rate too small."
        if est.verbose:
            print(message + " Stopping.")
        self.stopped_epoch = record["epoch"]
        return True


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = f"""Multi-layer perceptron classifier with scikit-learn's API, trained by ``portablenn.fit``.

    Parameter names and defaults follow ``sklearn.neural_network.MLPClassifier`` (stochastic solvers).
    The network is ``portablenn.mlp([n_features, *hidden_layer_sizes, n_classes])`` trained on softmax
    cross-entropy, also for two classes (scikit-learn uses one logistic output there).
    {_PARAMETERS}
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The sorted class labels, always a host NumPy array.{_ATTRIBUTES}
    Notes
    -----{_NOTES}
    Labels may be any values ``np.unique`` can sort (ints, floats, strings, ...). They are
    encoded on the host, so ``y`` may come from any namespace. For non-NumPy input ``predict``
    returns labels on the input's device through ``xp.take`` on the numeric class values; string
    (or other non-numeric) classes cannot live in such an array, so ``predict`` raises a
    ``ValueError`` there: use ``classes_[argmax(predict_proba(X))]`` on the host instead. The
    validation score of ``early_stopping`` is the accuracy.
    """

    _y_checks = {}  # scikit-learn's validate_data: 1-D labels
    _stratify = True  # the validation split of early_stopping keeps each class's share

    def fit(self, X, y, sample_weight=None):
        """Train on ``X``, ``y`` for at most ``max_iter`` epochs (a new network unless ``warm_start``).

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
            NumPy or anything scikit-learn accepts; or a CuPy, PyTorch, JAX or array-api-strict array,
            which is trained on its own device.
        y : array of shape (n_samples,)
            Class labels of any sortable type, from any namespace.
        sample_weight : array of shape (n_samples,), optional
            Each row's loss times its weight (``portablenn.fit``'s ``sample_weight``: scaled to average 1, each
            minibatch's mean over its rows; scikit-learn divides by the minibatch's summed weight instead, the
            same in full-batch training where the weights sum to the rows: scikit-learn divides its ``alpha``
            term by their sum too, so its L2 strength, unlike ours, changes with their scale). The
            early-stopping split keeps the training rows' weights; its validation score is unweighted.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over ``X``, ``y``, continuing the fitted network and its optimizer.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        y : array of shape (n_samples,)
        sample_weight : array of shape (n_samples,), optional
            As ``fit``'s.
        classes : array of shape (n_classes,), optional
            Every class of all the calls; required on the first call, as scikit-learn's.

        Returns
        -------
        self
        """
        if classes is not None:
            classes = np.unique(column_or_1d(backend._host(classes)))
            if getattr(self, "classes_", None) is None:
                self.classes_ = classes
            elif not np.array_equal(self.classes_, classes):
                raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                                 f"was: {self.classes_!r}")
        elif getattr(self, "classes_", None) is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits).

        Parameters
        ----------
        X : array of shape (n_samples, n_features)

        Returns
        -------
        array of shape (n_samples, n_classes)
            NumPy for NumPy input, else in ``X``'s namespace on ``X``'s device; columns follow
            ``classes_``.
        """
        dev, _, logits, host = self._forward(X)
        proba = softmax(logits)
        return dev.to_numpy(proba) if host else proba

    def predict(self, X):
        """Class labels of the largest logit.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)

        Returns
        -------
        array of shape (n_samples,)
            Values of ``classes_``: NumPy for NumPy input, else in ``X``'s namespace on ``X``'s device.

        Raises
        ------
        ValueError
            For non-NumPy input when ``classes_`` is not numeric (e.g. strings).
        """
        dev, xp, logits, host = self._forward(X)
        index = xp.argmax(logits, axis=1)
        if host:
            return self.classes_[dev.to_numpy(index)]
        if self.classes_.dtype.kind not in "biuf":
            raise ValueError(f"cannot return labels of dtype {self.classes_.dtype} as {dev.library} arrays; "
                             "fit with numeric labels, or take classes_[argmax(predict_proba(X))] on the host")
        return xp.take(dev.asarray(self.classes_), index, axis=0)

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of the predicted labels against ``y``, compared on the host (any namespace, any labels)."""
        dev, xp, logits, _ = self._forward(X)
        pred = self.classes_[dev.to_numpy(xp.argmax(logits, axis=1))]
        if sample_weight is not None:
            sample_weight = backend._host(sample_weight)
        return accuracy_score(column_or_1d(backend._host(y)), pred, sample_weight=sample_weight)

    # -- what the base class asks of a classifier ----------------------------------------------------------
    @staticmethod
    def _host_targets(y):
        return column_or_1d(y, warn=True)

    def _targets(self, y, first, incremental):
        """Checked labels -> their indices in ``classes_`` ``(n,)``; sets ``classes_`` (scikit-learn's rules:
        new classes on a fresh ``fit``, the same set with ``warm_start``, a subset with ``partial_fit``)."""
        check_classification_targets(y)
        classes = np.unique(y)
        if getattr(self, "classes_", None) is None or not (self.warm_start or incremental):
            self.classes_ = classes
        elif self.warm_start and not incremental and set(classes) != set(self.classes_):
            raise ValueError(f"warm_start can only be used where `y` has the same classes as in the previous call "
                             f"to fit. Previously got {self.classes_}, `y` has {classes}")
        elif len(np.setdiff1d(classes, self.classes_)):
            raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                             f"'y' has {classes}.")
        if first:
            self.n_outputs_, self.out_activation_ = len(self.classes_), "softmax"
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _loss(self):
        return None  # fit's default, softmax cross-entropy

    _validation_field = "val_error"

    @staticmethod
    def _validation_score(record):
        return 1.0 - record["val_error"]  # the accuracy


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = f"""Multi-layer perceptron regressor with scikit-learn's API, trained by ``portablenn.fit``.

    Parameter names and defaults follow ``sklearn.neural_network.MLPRegressor`` (stochastic solvers).
    The network is ``portablenn.mlp([n_features, *hidden_layer_sizes, n_outputs])`` with identity
    outputs, trained on scikit-learn's ``squared_error``: half the squared error (``0.5 * MSE``), so
    ``learning_rate_init`` means what it means there, and ``loss_curve_`` is in scikit-learn's terms
    (``0.5 * mean((p - y) ** 2)``, plus the L2 term). portablenn's ``"mse"`` loss (torch's ``MSELoss``)
    is twice that, with twice the gradient.
    {_PARAMETERS}
    Attributes
    ----------{_ATTRIBUTES}
    Notes
    -----{_NOTES}
    ``y`` of shape ``(n_samples,)`` (or ``(n_samples, 1)``, with a ``DataConversionWarning``) gives
    ``predict`` of shape ``(n_samples,)``, as scikit-learn. With several outputs the gradient is that of
    ``0.5 * sum_k (p_k - y_k) ** 2`` per row while ``loss_curve_`` divides it by the outputs, both as
    scikit-learn; the validation score of ``early_stopping`` is then the variance-weighted R^2 (the
    History's ``val_r2``), where scikit-learn averages the outputs' R^2. ``score`` is scikit-learn's R^2.
    """

    _y_checks = {"multi_output": True, "y_numeric": True}
    _stratify = False

    def fit(self, X, y, sample_weight=None):
        """Train on ``X``, ``y`` for at most ``max_iter`` epochs (a new network unless ``warm_start``).

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
            NumPy or anything scikit-learn accepts; or a CuPy, PyTorch, JAX or array-api-strict array,
            which is trained on its own device.
        y : array of shape (n_samples,) or (n_samples, n_outputs)
            Real targets, from any namespace.
        sample_weight : array of shape (n_samples,), optional
            Each row's loss times its weight (``portablenn.fit``'s ``sample_weight``: scaled to average 1, each
            minibatch's mean over its rows; scikit-learn divides by the minibatch's summed weight instead, the
            same in full-batch training where the weights sum to the rows: scikit-learn divides its ``alpha``
            term by their sum too, so its L2 strength, unlike ours, changes with their scale). The
            early-stopping split keeps the training rows' weights; its validation score is unweighted.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``X``, ``y``, continuing the fitted network and its optimizer.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        y : array of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array of shape (n_samples,), optional
            As ``fit``'s.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def predict(self, X):
        """The network's outputs.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)

        Returns
        -------
        array of shape (n_samples,) for one output, else (n_samples, n_outputs)
            NumPy for NumPy input, else in ``X``'s namespace on ``X``'s device.
        """
        dev, xp, outputs, host = self._forward(X)
        if outputs.shape[1] == 1:
            outputs = xp.reshape(outputs, (-1,))
        return dev.to_numpy(outputs) if host else outputs

    def score(self, X, y, sample_weight=None):
        """R^2 of the predictions against ``y`` (``sklearn.metrics.r2_score``), computed on the host."""
        dev, xp, outputs, _ = self._forward(X)
        pred = dev.to_numpy(outputs)
        y = backend._host(y)
        if sample_weight is not None:
            sample_weight = backend._host(sample_weight)
        return r2_score(y, pred.reshape(y.shape) if pred.size == y.size else pred, sample_weight=sample_weight)

    # -- what the base class asks of a regressor -----------------------------------------------------------
    @staticmethod
    def _host_targets(y):
        return check_array(y, ensure_2d=False, dtype=(np.float64, np.float32), input_name="y")

    def _targets(self, y, first, incremental):
        """Checked real targets -> float64 ``(n, n_outputs)``; sets ``n_outputs_`` on a new network."""
        if y.ndim == 2 and y.shape[1] == 1:  # scikit-learn's validate_data keeps (n, 1)
            y = column_or_1d(y, warn=True)
        targets = np.asarray(y, dtype=np.float64).reshape(y.shape[0], -1)
        if first:
            self.n_outputs_, self.out_activation_ = targets.shape[1], "identity"
        elif targets.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {targets.shape[1]} output(s) but the fitted network has {self.n_outputs_}")
        return targets

    def _loss(self):
        if RegressionLoss is None:
            raise ValueError("MLPRegressor needs portablenn's regression losses (issue #18), missing from this version")
        return _SquaredError()

    _validation_field = "val_r2"

    @staticmethod
    def _validation_score(record):
        return record["val_r2"]


def _glorot(model, factor, seed):
    """scikit-learn's MLP initialisation (``_init_coef``) of ``model``'s Linear layers, as host state dict entries:
    each weight and bias uniform on ``+-sqrt(factor / (fan_in + fan_out))`` (factor 6, or 2 for the logistic),
    drawn layer by layer from ``numpy.random.default_rng(seed)``."""
    rng, state = np.random.default_rng(seed), {}
    for index, layer in enumerate(model.layers):
        if isinstance(layer, Linear):
            fan_in, fan_out = layer.params["weight"].shape
            bound = np.sqrt(factor / (fan_in + fan_out))
            state[f"{index}.weight"] = rng.uniform(-bound, bound, (fan_in, fan_out))
            state[f"{index}.bias"] = rng.uniform(-bound, bound, fan_out)
    return state


def _integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _input_device(X):
    """The portablenn device spec of a CuPy, PyTorch, JAX or array-api-strict array; None for NumPy and array-likes.

    Raises
    ------
    ValueError
        For an Array API array of another library.
    """
    if isinstance(X, np.ndarray) or is_numpy_array(X) or not is_array_api_obj(X):
        return None
    if is_cupy_array(X):
        return f"cuda:{X.device.id}"
    if is_torch_array(X):
        where = X.device
        return "torch:cpu" if where.type == "cpu" else f"torch:{where.type}:{where.index or 0}"
    if is_array_api_strict_namespace(array_namespace(X)):
        return f"array_api_strict:{X.device._device}"
    if is_jax_array(X):
        where = X.device
        return "jax:cpu" if where.platform == "cpu" else f"jax:cuda:{where.id}"
    raise ValueError(f"cannot train on {type(X).__module__}.{type(X).__name__} arrays; "
                     "pass NumPy, CuPy, PyTorch, JAX or array-api-strict arrays")
