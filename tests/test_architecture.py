"""The import rules of docs/architecture.md, read from the source (lazy imports inside functions included):
the math knows no backend and no training loop, training never imports distributed, a backend never
imports training."""
import ast
import importlib.util
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
    # sweeps: a grid's members built by mlp, one stack per architecture, each trained by stack_fit
    "sweep": {"backend", "history", "losses", "models", "optim", "registry", "stack", "stack_fit", "stack_history",
              "stack_optim", "validation"},
    # a stack's training loop: fit's checks of its options and placement, the pure step that compiles the
    # stack's on JAX, the EarlyStopping rule per member
    "stack_fit": {"data", "early_stopping", "losses", "optim", "pure_step", "stack", "stack_history", "stack_optim",
                  "train", "validation"},
    # the per-member update: the optimizers' rules over the stack's layers
    "stack_optim": {"optim", "stack", "validation"},
    # the per-member records
    "stack_history": {"early_stopping", "history"},
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


def test_every_mutant_of_the_mutation_harness_still_applies():
    """scripts/mutation.py's mutants name a file and a text that occurs in it exactly once, and the file has
    tests to run: a refactor that moves code (sweep.py into stack_*.py) must move its mutants too, or the
    harness reports them STALE instead of testing them."""
    path = PACKAGE.parent / "scripts" / "mutation.py"
    spec = importlib.util.spec_from_file_location("_mutation_harness", path)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    stale = [f"{m[0]} ({m[1]}: found {harness._applies(m)} times)" for m in harness.MUTANTS if harness._applies(m) != 1]
    assert not stale, f"stale mutants in scripts/mutation.py: {stale}"
    untested = sorted({m[1] for m in harness.MUTANTS} - set(harness.TESTS))
    assert not untested, f"scripts/mutation.py has no tests listed for {untested}"
    ids = [m[0] for m in harness.MUTANTS]
    assert len(ids) == len(set(ids)), "duplicate mutant ids"
