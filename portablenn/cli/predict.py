"""portablenn predict: class indices and probabilities of a saved model for the rows of a .npy/.csv file."""
import sys
from pathlib import Path

import numpy as np

from .. import outputs
from ..train import predict_proba
from .arguments import device, kernels_arg
from .errors import CLIError
from .model import load_saved


def add_parser(commands):
    pr = commands.add_parser("predict", help="class indices and probabilities for the rows of a .npy/.csv file")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--input", required=True, help=".npy array (n, features) or .csv without labels")
    pr.add_argument("--output", help=".npz (arrays classes, probabilities) or .csv; '-' prints CSV "
                                     "(default: INPUT.predictions.npz)")
    pr.add_argument("--overwrite", action="store_true", help="let --output replace a file portablenn did not write")
    pr.add_argument("--device", default="cpu")
    kernels_arg(pr)
    return pr


def run(args):
    path = Path(args.input)
    if not path.is_file():
        raise CLIError(f"input file {path} does not exist")
    out = args.output or str(path) + ".predictions.npz"
    if out != "-":
        kind = {".npz": "predictions-npz", ".csv": "predictions-csv"}.get(Path(out).suffix.lower())
        if kind is None:
            raise CLIError(f"--output {out}: name a .npz file (arrays classes and probabilities) or a .csv file, "
                           "or '-' for CSV on standard output")
        outputs.check(out, kind, flag="--output", overwrite=args.overwrite,
                      inputs=[(args.input, "the --input file"), (args.checkpoint, "the --checkpoint")])
        outputs.prepare(out, flag="--output")
    model, _ = load_saved(args.checkpoint, device(args))
    if path.suffix == ".npy":
        from ..datasets.files import load_npy

        X = load_npy(path)
    else:
        try:
            X = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError as exc:
            raise CLIError(f"cannot read {path} as numeric CSV: {exc}") from None
    probs = predict_proba(model, X, device=args.device)
    classes = probs.argmax(axis=1)
    if out == "-" or out.lower().endswith(".csv"):
        lines = ["class," + ",".join(f"p{c}" for c in range(probs.shape[1]))]
        lines += [f"{c}," + ",".join(f"{p:.6g}" for p in row) for c, row in zip(classes, probs)]
        if out == "-":
            print("\n".join(lines))
            return 0
        data = ("\n".join(lines) + "\n").encode()
    else:
        import io

        buffer = io.BytesIO()  # written under the name given (np.savez would append .npz to another name)
        np.savez(buffer, classes=classes, probabilities=probs)
        data = buffer.getvalue()
    outputs.atomic_write(out, data, "predictions")
    print(f"{X.shape[0]} predictions -> {out}", file=sys.stderr)
    return 0
