"""Argument groups several commands share (the model flags, --kernels) and the device they name."""
import argparse

from .. import backend
from ..models import ACTIVATIONS
from ..optim import OPTIMIZERS
from ..registry import LOSSES


def model_args(p):
    p.add_argument("--dataset", help="spiral (default) | lines | mnist | csv:PATH | npz:PATH (features, then the "
                                      "targets in the last CSV column(s) or the NPZ array y; see --loss, --targets)")
    p.add_argument("--val", help="validation file for csv:/npz: datasets (same format)")
    p.add_argument("--data-dir", help="MNIST directory (default: $PORTABLENN_DATA, ../shared/data/mnist, cache)")
    p.add_argument("--no-download", action="store_true", help="never download MNIST; fail if it is missing")
    p.add_argument("--model", choices=["mlp", "linear"], help="mlp (default), or linear = softmax regression")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden layer widths, e.g. --hidden 256 128")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS))
    p.add_argument("--loss", choices=sorted(LOSSES),
                   help="softmax_cross_entropy (default: one integer class label per row), binary_cross_entropy "
                        "(0/1 targets: binary, or multi-label with several columns), mse or huber (regression on "
                        "real-valued targets); the model's outputs: one per class, or one per target column")
    p.add_argument("--targets", type=int, metavar="K",
                   help="csv: files: the last K columns are the targets (default 1; regression and "
                        "binary_cross_entropy only); npz: files: y must have K columns")
    p.add_argument("--dropout", type=float, metavar="P",
                   help="zero each hidden unit with probability P in [0, 1) while training (default 0: none)")
    p.add_argument("--norm", choices=["layer", "batch", "none"],
                   help="normalise every hidden layer before its activation: LayerNorm or BatchNorm1d (default none)")
    p.add_argument("--init", help="weight initialiser: he, xavier, xavier_normal, small, cmu, zeros")
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="learning rate (default: the dataset's, per optimizer)")
    p.add_argument("--batch-size", type=int, help="minibatch size; 0 = full batch")
    p.add_argument("--l2", type=float, help="L2 strength: adds 0.5*l2*sum(W**2) to the loss")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="sgd (default), adam or adamw (Adam with decoupled weight decay 0.01 on weight matrices)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0; not with --optimizer adam or adamw)")
    p.add_argument("--weight-decay", type=float, metavar="WD",
                   help="AdamW's decoupled weight decay on weight matrices (default 0.01; --optimizer adamw only: "
                        "--l2 is the coupled L2 term for every optimizer)")
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None,
                   help="reshuffle every epoch (--no-shuffle: minibatches in order)")
    p.add_argument("--seed", type=int, help="seed of the initial weights and the shuffling (default 0)")
    p.add_argument("--dtype", choices=["float32", "float64"])


def control_args(p):
    """train's flags that steer the run: clipping, the learning-rate schedule, early stopping, the validation split."""
    g = p.add_argument_group("training control")
    g.add_argument("--clip-grad", type=float, metavar="NORM",
                   help="clip every step's gradients to this global 2-norm (torch's clip_grad_norm_)")
    g.add_argument("--schedule", choices=["step", "cosine", "plateau"],
                   help="learning-rate schedule: step (x --gamma every --step-size epochs), cosine (from --lr down "
                        "to 0 over --epochs, after a linear --warmup), plateau (x --factor when --monitor has not "
                        "improved for --plateau-patience epochs)")
    g.add_argument("--warmup", type=float, metavar="EPOCHS", help="cosine: linear warmup epochs (default 0)")
    g.add_argument("--step-size", type=int, metavar="EPOCHS", help="step: epochs between drops (required)")
    g.add_argument("--gamma", type=float, help="step: the factor of each drop (default 0.1)")
    g.add_argument("--factor", type=float, help="plateau: the factor of each reduction (default 0.1)")
    g.add_argument("--plateau-patience", type=int, metavar="N",
                   help="plateau: epochs without improvement before a reduction (default 10)")
    g.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None,
                   help="stop when --monitor has not improved for --patience epochs, and end with the best "
                        "epoch's weights")
    g.add_argument("--patience", type=int, metavar="N", help="early stopping: epochs without improvement (default 10)")
    g.add_argument("--min-delta", type=float, metavar="D",
                   help="early stopping: the least change that counts as an improvement (default 0)")
    g.add_argument("--monitor", metavar="FIELD",
                   help="what --early-stopping and --schedule plateau watch: val_loss (default), loss, or the task's "
                        "metrics (error; rmse, r2) and their val_ twins; val_ ones need validation data")
    g.add_argument("--val-fraction", type=float, metavar="F",
                   help="hold out this share of the training rows as the validation set (seeded by --seed, "
                        "stratified by class for softmax_cross_entropy and one 0/1 column of binary_cross_entropy)")


def kernels_arg(p):
    p.add_argument("--kernels", default="auto", choices=backend.KERNEL_MODES,
                   help="fast: the backend's fused kernels; generic: the Array API ones they must match; auto "
                        "(default): fast, after a one-time self-test on a GPU (generic, with a warning, if it fails)")


def device(args, spec=None):
    """The device of ``--device`` (or ``spec``) with the ``--kernels`` asked for."""
    return backend.device(args.device if spec is None else spec, kernels=args.kernels)
