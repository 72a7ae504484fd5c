"""portablenn: a small, fast MLP trainer written once against the Python Array API (NumPy, CuPy, ...)."""
from .backend import Device, DeviceError, KernelFallbackWarning, device
from .checkpoint import CheckpointError, load, save
from .early_stopping import EarlyStopping
from .layers import GELU, Identity, LeakyReLU, Linear, Module, ReLU, Sequential, Sigmoid, Tanh
from .dropout import Dropout
from .normalization import BatchNorm1d, LayerNorm
from .losses import (BinaryCrossEntropy, Huber, Loss, MeanSquaredError, SoftmaxCrossEntropy, l2_penalty,
                     softmax_cross_entropy, softmax_cross_entropy_grad)
from .models import mlp
from .optim import SGD, Adam, AdamW, Optimizer
from .registry import register_activation, register_layer, register_loss, register_optimizer, register_schedule
from .schedules import Adaptive, CosineWarmup, InverseScaling, ReduceOnPlateau, Schedule, StepDecay
from .step import make_step
from .stack import Stacked
from .sweep import (StackedOptimizer, evaluate_stack, fit_stack, grid, predict_proba_stack, predict_stack,
                    stack_mlp)
from .train import DivergenceError, History, evaluate, fit, predict, predict_proba
from .validation import InputError
from . import distributed  # noqa: F401  registers fit(comm=...)'s adapter; imports mpi4py only when used

__version__ = "0.1.0"

__all__ = ["Adam", "AdamW", "Adaptive", "CosineWarmup", "InverseScaling", "ReduceOnPlateau", "Schedule", "StepDecay",
           "register_schedule", "BinaryCrossEntropy", "CheckpointError", "EarlyStopping", "Device", "DeviceError", "DivergenceError", "Dropout", "GELU", "History", "Huber", "Identity",
           "InputError", "KernelFallbackWarning", "LayerNorm", "LeakyReLU", "Linear", "Loss", "MeanSquaredError", "Module", "Optimizer", "ReLU", "SGD", "Sequential", "Sigmoid",
           "SoftmaxCrossEntropy", "Tanh", "device", "evaluate", "fit", "l2_penalty", "load", "make_step", "mlp",
           "predict", "predict_proba", "register_activation", "register_layer", "register_loss", "register_optimizer",
           "save", "softmax_cross_entropy", "softmax_cross_entropy_grad",
           "Stacked", "StackedOptimizer", "evaluate_stack", "fit_stack", "grid", "predict_proba_stack", "predict_stack",
           "stack_mlp"]
