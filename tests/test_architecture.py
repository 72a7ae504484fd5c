"""The import rules of docs/architecture.md, read from the source (lazy imports inside functions included):
the math knows no backend and no training loop, training never imports distributed, a backend never
imports training."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "portablenn"

MATH = {"layers", "losses", "optim", "init", "models", "registry", "kernels", "dropout", "normalization", "counter_rng",
        "schedules", "stack"}
TRAINING = {"step", "train", "data", "history", "reducer", "static_step", "pure_step", "early_stopping", "split"}
BACKENDS = {"backends.__init__", "backends.numpy", "backends.cupy", "backends.cupy_kernels", "backends.strict",
            "backends.torch", "backends.jax"}

# module group -> what it may import from portablenn (module names relative to the package; a name
# matches itself and the modules under it)
ALLOWED = {
    **{m: {"backend", "init", "layers", "registry", "validation", "counter_rng", "dropout", "normalization"}
       for m in MATH},
    **{m: {"backend", "data", "early_stopping", "history", "layers", "losses", "optim", "pure_step", "reducer",
           "schedules", "split", "static_step", "step", "validation"} for m in TRAINING},
    **{m: {"_blas", "backend", "backends", "kernels"} for m in BACKENDS},
    "distributed": {"backend", "backends.cupy", "reducer", "validation"},
    # sweeps: training over the stack (portablenn.stack), whose members mlp builds; fit's checks of its
    # options, its EarlyStopping rule per member, and the pure step that compiles the stack's on JAX
    "sweep": {"backend", "data", "early_stopping", "history", "losses", "models", "optim", "pure_step", "registry",
              "stack", "train", "validation"},
}


def _imports(path):
    """The portablenn modules ``path`` imports, relative to the package, at any depth of the file."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            if node.module:
                found.add(".".join(base + node.module.split(".")))
            else:
                found.update(".".join(base + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("portablenn"):
            found.add(node.module.split(".", 1)[1] if "." in node.module else "")
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("portablenn."))
    return found


def _module(name):
    return PACKAGE / (name.replace(".", "/") + ".py")


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_each_module_imports_only_what_its_layer_may(module):
    allowed = ALLOWED[module]
    imported = {name for name in _imports(_module(module)) if name}
    # a name imported from a package (backends.Backend) counts as the package
    bad = sorted(name for name in imported
                 if not any(name == ok or name.startswith(ok + ".") for ok in allowed)
                 and not (module in BACKENDS and name.startswith("backends.")))
    assert not bad, f"portablenn/{module} imports {bad}; docs/architecture.md allows only {sorted(allowed)}"


def test_the_rules_cover_every_module_they_name():
    for module in ALLOWED:
        assert _module(module).exists(), module


def test_the_scan_sees_lazy_imports():
    """The scan itself: an import inside a function body is found (train.py's lazy ones once hid a circle)."""
    assert "registry" in _imports(_module("layers"))
    assert "backends" in _imports(_module("backend"))  # only inside functions there
