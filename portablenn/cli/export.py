"""portablenn export: a saved model as ONNX (logits and probabilities)."""
import warnings

from .. import outputs
from ..registry import LOSSES
from .errors import CLIError
from .model import load_saved, saved_loss


def add_parser(commands):
    ex = commands.add_parser("export", help="write a saved model as ONNX (logits and probabilities; needs "
                                            "portablenn[onnx])")
    ex.add_argument("checkpoint")
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--overwrite", action="store_true", help="let --onnx replace a file portablenn did not write")
    return ex


def run(args):
    try:
        from ..onnx import export_onnx
        import ndonnx  # noqa: F401
    except ImportError:
        raise CLIError("ONNX export needs ndonnx and onnx: pip install 'portablenn[onnx]'") from None
    outputs.check(args.onnx, "onnx", flag="--onnx", overwrite=args.overwrite,
                  inputs=[(args.checkpoint, "the checkpoint")])
    outputs.prepare(args.onnx, flag="--onnx")
    model, meta = load_saved(args.checkpoint, "cpu")
    loss = saved_loss(None, meta, args.checkpoint)
    if loss.task != "classification":
        name = LOSSES.name_of(loss)
        use = "the logits are its values" if loss.task == "regression" else "a sigmoid of the logits gives them"
        warnings.warn(f"{args.checkpoint} was trained with --loss {name}: {use}; the 'probabilities' output "
                      "(a softmax over the outputs) does not apply to it")
    export_onnx(model, args.onnx)
    print(f"wrote {args.onnx}: input (N, {model.in_features}) {model.dtype} -> logits, probabilities "
          f"(N, {model.out_features})")
    return 0
