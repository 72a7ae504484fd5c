"""Argument groups several commands share (the model flags, --kernels) and the device they name."""
import argparse

from .. import backend
from ..models import ACTIVATIONS
from ..optim import OPTIMIZERS


def model_args(p):
    p.add_argument("--dataset", help="spiral (default) | lines | mnist | csv:PATH | npz:PATH (label in the last "
                                      "CSV column)")
    p.add_argument("--val", help="validation file for csv:/npz: datasets (same format)")
    p.add_argument("--data-dir", help="MNIST directory (default: $PORTABLENN_DATA, ../shared/data/mnist, cache)")
    p.add_argument("--no-download", action="store_true", help="never download MNIST; fail if it is missing")
    p.add_argument("--model", choices=["mlp", "linear"], help="mlp (default), or linear = softmax regression")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden layer widths, e.g. --hidden 256 128")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS))
    p.add_argument("--init", help="weight initialiser: he, xavier, xavier_normal, small, cmu, zeros")
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="learning rate (default: the dataset's, per optimizer)")
    p.add_argument("--batch-size", type=int, help="minibatch size; 0 = full batch")
    p.add_argument("--l2", type=float, help="L2 strength: adds 0.5*l2*sum(W**2) to the loss")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="sgd (default), adam or adamw (Adam with decoupled weight decay 0.01 on weight matrices)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0; not with --optimizer adam or adamw)")
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None,
                   help="reshuffle every epoch (--no-shuffle: minibatches in order)")
    p.add_argument("--seed", type=int, help="seed of the initial weights and the shuffling (default 0)")
    p.add_argument("--dtype", choices=["float32", "float64"])


def kernels_arg(p):
    p.add_argument("--kernels", default="auto", choices=backend.KERNEL_MODES,
                   help="fast: the backend's fused kernels; generic: the Array API ones they must match; auto "
                        "(default): fast, after a one-time self-test on a GPU (generic, with a warning, if it fails)")


def device(args, spec=None):
    """The device of ``--device`` (or ``spec``) with the ``--kernels`` asked for."""
    return backend.device(args.device if spec is None else spec, kernels=args.kernels)
