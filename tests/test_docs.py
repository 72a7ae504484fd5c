"""The user-facing docs say what the code does (README.md and docs/*.md), checked without training anything long.

* Every ``portablenn SUBCOMMAND ...`` (or ``python -m portablenn ...``) command line, in a code block or inline
  in backticks, names a real subcommand and only options that subcommand's parser has (spelled out: argparse
  would take an abbreviation, a reader's copy should not need to); a command in a code block must also parse
  whole (choices, types, required options).
* Every ``--flag`` a doc names anywhere in backticks or a code block is an option of some subcommand or of a
  script in scripts/ (or of an outside tool listed in ``OUTSIDE_FLAGS``); a ``scripts/X`` command names a
  script that exists and only flags that script has.
* Every ``pip install ".[extra]"`` / ``portablenn[extra]`` names an extra of pyproject.toml, and every file
  and link a doc points into the repository exists (with its ``#anchor``).
* Every Python code block compiles, and every ``portablenn`` name it uses (``pn.X``, ``from portablenn.Y import
  Z``, keyword arguments of portablenn's functions and classes) exists. A block marked
  ``<!-- doc-test: run -->`` on one of the two lines above its fence also runs, as it stands, in a temporary
  directory; ``portablenn.datasets.mnist`` is replaced there by a small synthetic set of MNIST's shapes (the
  call itself checked against the real signature), so no download and no minutes of training.

A failure names the doc, the line and what is wrong.
"""
import ast
import builtins
import contextlib
import importlib
import inspect
import io
import os
import re
import shlex
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import portablenn
import portablenn.cli
from portablenn.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_MARK = "<!-- doc-test: run -->"
# flags of programs other than portablenn and its scripts that the docs show
OUTSIDE_FLAGS = {"--gpus-per-task", "--ntasks-per-node",  # srun
                 "--index-url",  # pip
                 "--cuda", "--library",  # python -m cupyx.tools.install_library
                 "--timeout"}  # pytest-timeout
# (doc, path) that a doc owned elsewhere still names after the file moved: reported, to be fixed there; an
# entry that is fixed must go
STALE_ELSEWHERE = set()
SUBCOMMAND_NAMES = set(portablenn.cli.COMMANDS)
SHELL_LANGS = {"bash", "sh", "shell", "console", ""}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
FLAG = re.compile(r"^--[a-z][a-z0-9-]*$")


# ---------------------------------------------------------------- reading the docs

@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first content line
    lang: str
    lines: list
    run: bool  # marked RUN_MARK

    @property
    def text(self):
        return "\n".join(self.lines) + "\n"


def rel(path):
    return path.relative_to(ROOT).as_posix()


def _split(path):
    """(blocks, prose) of a markdown file: its fenced code blocks, and the other lines as (line number, text)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, prose, i = [], [], 0
    while i < len(lines):
        fence = re.match(r"\s*(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not fence:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence.group(1)):
            end += 1
        marked = any(RUN_MARK in lines[k] for k in range(max(0, i - 2), i))
        blocks.append(Block(path, i + 2, fence.group(2).lower(), lines[i + 1:end], marked))
        i = end + 1
    return blocks, prose


SPLIT = {path: _split(path) for path in DOCS}
BLOCKS = [block for path in DOCS for block in SPLIT[path][0]]
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang in ("python", "py")]


def inline_spans(path):
    """(line, text) of every `code span` outside code blocks; a span may wrap onto the next line."""
    prose = SPLIT[path][1]
    text = "\n".join(line for _, line in prose)
    starts = np.cumsum([0] + [len(line) + 1 for _, line in prose])
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        k = int(np.searchsorted(starts, match.start(), side="right")) - 1
        yield prose[k][0], " ".join(match.group(1).split())


def split_commands(line):
    """The commands of a shell line, each a list of tokens (split at `&&`, `|`, `;`, ...; `#` comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: no longer shell
        tokens = line.split()
    commands, command = [], []
    for token in tokens + [";"]:
        if token in SEPARATORS:
            if command:
                commands.append(command)
            command = []
        else:
            command.append(token)
    return commands


def shell_commands(block):
    """(line, tokens) of every command of a shell block (or of the `$ ` lines of an output transcript)."""
    transcript = block.lang not in ("bash", "sh", "shell")
    k = 0
    while k < len(block.lines):
        line, start = block.lines[k], k
        if transcript:
            if not line.startswith("$ "):
                k += 1
                continue
            line = line[2:]
        while line.rstrip().endswith("\\") and k + 1 < len(block.lines):  # continuation lines
            k += 1
            line = line.rstrip()[:-1] + " " + block.lines[k]
        k += 1
        for command in split_commands(line):
            yield block.line + start, command


def span_commands(span):
    """The commands of an inline span, `[--optional FLAG]` brackets removed."""
    return split_commands(re.sub(r"[\[\]]", " ", span))


LAUNCHERS = {"mpiexec", "mpirun", "srun", "time", "timeout", "env", "nohup"}


def portablenn_args(tokens):
    """The arguments after `portablenn` (or `python -m portablenn`) where a command runs it, or None where it
    runs something else (`pip install portablenn`, `git archive HEAD portablenn`)."""
    if not tokens:
        return None
    first = 0
    if os.path.basename(tokens[0]) in LAUNCHERS:  # `mpiexec -n 4 portablenn train ...`
        first = next((i for i, t in enumerate(tokens) if os.path.basename(t) in ("portablenn", "python", "python3")
                      or t.endswith("/python")), len(tokens))
    if first >= len(tokens):
        return None
    word = os.path.basename(tokens[first])
    if word == "portablenn":
        return tokens[first + 1:]
    if word.startswith("python") and tokens[first + 1:first + 3] == ["-m", "portablenn"]:
        return tokens[first + 3:]
    return None


def all_commands():
    """(where, tokens, whole) for every command line: code-block commands (whole=True) and inline spans."""
    for block in BLOCKS:
        if block.lang in SHELL_LANGS:
            for line, tokens in shell_commands(block):
                yield f"{rel(block.path)}:{line}", tokens, True
    for path in DOCS:
        for line, span in inline_spans(path):
            for command in span_commands(span):
                if command[0] in SUBCOMMAND_NAMES and any(t.startswith("--") for t in command):
                    command = ["portablenn", *command]  # `eval --split val`, `predict --output`: the CLI's
                yield f"{rel(path)}:{line}", command, False


COMMANDS = list(all_commands())


# ---------------------------------------------------------------- what the code accepts

def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return parser, dict(action.choices)


PARSER, SUBPARSERS = _subparsers()
OPTIONS = {name: {s for a in sub._actions for s in a.option_strings} for name, sub in SUBPARSERS.items()}
ALL_OPTIONS = set().union(*OPTIONS.values()) | {s for a in PARSER._actions for s in a.option_strings}


def script_flags(path):
    """The --flags a script in scripts/ has: quoted literals in Python, words in a shell script."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)", text))
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


SCRIPTS = {p.name: p for p in (ROOT / "scripts").iterdir() if p.suffix in (".py", ".sh")}
SCRIPT_FLAGS = {name: script_flags(p) for name, p in SCRIPTS.items()}
KNOWN_FLAGS = ALL_OPTIONS | set().union(*SCRIPT_FLAGS.values()) | OUTSIDE_FLAGS


def option_problems(args):
    """What is wrong with `portablenn ARGS`' subcommand and option names ([] when nothing)."""
    if not args or args[0] in ("--help", "-h", "--version"):
        return []
    command, rest = args[0], args[1:]
    if command not in SUBPARSERS:
        return [f"unknown subcommand {command!r} (portablenn has {', '.join(SUBPARSERS)})"]
    problems = []
    for token in rest:
        if token == "--":
            break
        if not token.startswith("-") or token == "-" or re.match(r"-\d|-\.\d", token):  # a value (- is stdout)
            continue
        name = token.split("=", 1)[0]
        if name not in OPTIONS[command]:
            problems.append(f"`portablenn {command}` has no option {name}")
    return problems


def is_concrete(args):
    """Whether a command can be parsed whole: no placeholders (<x>, $VAR, ..., FILE) and no --help."""
    return not any(re.search(r"[<>$]|\.\.\.|^-h$|^--help$", t) or (t.isupper() and len(t) > 1) for t in args)


def parse_error(args):
    """argparse's complaint about `portablenn ARGS`, or None when it parses."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            PARSER.parse_args(args)
        except SystemExit as exc:
            if exc.code:
                return err.getvalue().strip().splitlines()[-1]
    return None


# ---------------------------------------------------------------- command lines

def test_the_docs_show_commands():
    """The extraction works: a doc rewrite that hides every command from it must not pass silently."""
    shown = {tuple(portablenn_args(t)[:1]) for _, t, _ in COMMANDS if portablenn_args(t)}
    assert {("train",), ("eval",), ("predict",), ("sweep",), ("parity",)} <= shown, shown
    assert sum(whole for _, t, whole in COMMANDS if portablenn_args(t)) >= 15


def test_command_lines_use_real_subcommands_and_options():
    problems = []
    for where, tokens, whole in COMMANDS:
        args = portablenn_args(tokens)
        if args is None:
            continue
        found = option_problems(args)
        problems += [f"{where}: {p} (in: {' '.join(tokens)})" for p in found]
        if whole and not found and args and args[0] in SUBPARSERS and is_concrete(args):
            error = parse_error(args)
            if error:
                problems.append(f"{where}: `portablenn {' '.join(args)}` does not parse: {error}")
    assert not problems, "\n".join(problems)


def test_every_flag_the_docs_name_exists():
    problems = []
    for path in DOCS:
        for line, span in inline_spans(path):
            for token in (t for command in span_commands(span) for t in command):
                name = token.split("=", 1)[0]
                if FLAG.match(name) and name not in KNOWN_FLAGS:
                    problems.append(f"{rel(path)}:{line}: {name} is no option of portablenn or of its scripts "
                                    f"(in: `{span}`)")
    for block in BLOCKS:
        if block.lang in SHELL_LANGS:
            for line, tokens in shell_commands(block):
                for token in tokens:
                    name = token.split("=", 1)[0]
                    if FLAG.match(name) and name not in KNOWN_FLAGS:
                        problems.append(f"{rel(block.path)}:{line}: {name} is no option of portablenn or of its "
                                        f"scripts (in: {' '.join(tokens)})")
    assert not problems, "\n".join(problems)


def test_script_commands_name_real_scripts_and_flags():
    problems = []
    for where, tokens, _ in COMMANDS:
        for i, token in enumerate(tokens):
            match = re.match(r"^(?:\./)?scripts/([\w.-]+\.(?:py|sh))$", token)
            if not match:
                continue
            name = match.group(1)
            if name not in SCRIPTS:
                problems.append(f"{where}: no script scripts/{name}")
                continue
            for arg in tokens[i + 1:]:
                flag = arg.split("=", 1)[0]
                if FLAG.match(flag) and flag not in SCRIPT_FLAGS[name]:
                    problems.append(f"{where}: scripts/{name} has no option {flag}")
    assert not problems, "\n".join(problems)


def test_extras_and_repository_paths_exist():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([\w-]+)\s*=", section, re.M))
    assert {"cli", "test"} <= extras, extras
    problems, stale = [], set()
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{rel(path)}:{number}"
            for extra in re.findall(r"(?:portablenn|[\"']\.)\[([\w,-]+)\]", line):
                problems += [f"{where}: pyproject.toml has no extra {e!r}" for e in extra.split(",")
                             if e not in extras]
            for target in re.findall(r"\]\(([^)\s]+)\)", line):  # markdown links and images
                if re.match(r"[a-z]+:", target):
                    continue
                file, _, anchor = target.partition("#")
                resolved = (path.parent / file).resolve() if file else path
                if not resolved.exists():
                    problems.append(f"{where}: the link {target} points at nothing")
                elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    problems.append(f"{where}: {rel(resolved)} has no heading #{anchor}")
            for name in re.findall(r"`((?:portablenn|tests|scripts|docs|\.ci)/[\w./-]+)`", line):
                if (rel(path), name) in STALE_ELSEWHERE:
                    stale.add((rel(path), name))
                elif not (ROOT / name).exists():
                    problems.append(f"{where}: `{name}` does not exist")
    problems += [f"{doc}: no longer names {name}: remove it from STALE_ELSEWHERE" for doc, name in
                 STALE_ELSEWHERE - stale]
    assert not problems, "\n".join(problems)


def anchors(path):
    """GitHub's anchors of a markdown file's headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+\s+(.*)$", path.read_text(encoding="utf-8"), re.M)}


# ---------------------------------------------------------------- Python blocks

class OptionalMissing(Exception):
    """A portablenn module the block uses needs a package that is not installed here (scikit-learn, ...)."""


def _import(name):
    """``importlib.import_module(name)``; OptionalMissing where what is missing is not portablenn's."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if exc.name and not exc.name.startswith("portablenn"):
            raise OptionalMissing(exc.name) from exc
        raise


def _resolve(module, parts):
    """Follow ``parts`` from ``module`` (submodules imported as needed); (object, the part that is missing)."""
    obj = module
    for k, part in enumerate(parts):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif isinstance(obj, types.ModuleType):
            try:
                obj = _import(f"{obj.__name__}.{part}")
            except ImportError:
                return None, ".".join(parts[:k + 1])
        else:
            return None, ".".join(parts[:k + 1])
    return obj, None


def _dotted(node):
    """``a.b.c`` of an attribute chain on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def portablenn_name_problems(source):
    """What a Python block names from portablenn that does not exist: modules, attributes, keyword arguments."""
    tree = ast.parse(source)
    for node in ast.walk(tree):  # each node's parent, to find the outermost attribute of a chain
        for child in ast.iter_child_nodes(node):
            child.parent = node
    bound = {}  # a name in the block -> the portablenn object it holds
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "portablenn":
                    continue
                try:
                    module = _import(alias.name)
                except ImportError as exc:
                    problems.append((node.lineno, f"import {alias.name}: {exc}"))
                    continue
                if alias.asname:
                    bound[alias.asname] = module
                else:
                    bound["portablenn"] = portablenn
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "portablenn":
            try:
                module = _import(node.module)
            except ImportError as exc:
                problems.append((node.lineno, f"from {node.module} import ...: {exc}"))
                continue
            for alias in node.names:
                obj, missing = _resolve(module, [alias.name])
                if missing:
                    problems.append((node.lineno, f"{node.module} has no {alias.name}"))
                else:
                    bound[alias.asname or alias.name] = obj
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "parent", None), ast.Attribute):
            parts = _dotted(node)
            if parts and parts[0] in bound and isinstance(bound[parts[0]], types.ModuleType):
                _, missing = _resolve(bound[parts[0]], parts[1:])
                if missing:
                    problems.append((node.lineno, f"{bound[parts[0]].__name__}.{missing} does not exist "
                                                  f"(written {'.'.join(parts)})"))
        if isinstance(node, ast.Call):
            parts = _dotted(node.func)
            if not parts or parts[0] not in bound:
                continue
            obj, missing = _resolve(bound[parts[0]], parts[1:])
            if missing or not callable(obj):
                continue
            try:
                signature = inspect.signature(obj)
            except (TypeError, ValueError):
                continue
            params = signature.parameters
            if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                continue
            for keyword in node.keywords:
                if keyword.arg is not None and (keyword.arg not in params
                                                or params[keyword.arg].kind is inspect.Parameter.POSITIONAL_ONLY):
                    problems.append((node.lineno, f"{'.'.join(parts)}() takes no argument {keyword.arg}= "
                                                  f"({'.'.join(parts)}{signature})"))
    return problems


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: f"{rel(b.path)}:{b.line}")
def test_python_block_compiles_and_names_what_portablenn_has(block):
    try:
        compile(block.text, f"{rel(block.path)}:{block.line}", "exec")
    except SyntaxError as exc:
        pytest.fail(f"{rel(block.path)}:{block.line + (exc.lineno or 1) - 1}: does not compile: {exc.msg}")
    try:
        found = portablenn_name_problems(block.text)
    except OptionalMissing as exc:
        pytest.skip(f"needs {exc} to look up its portablenn names")
    problems = [f"{rel(block.path)}:{block.line - 1 + line}: {message}" for line, message in found]
    assert not problems, "\n".join(problems)


def test_some_python_blocks_run():
    """The blocks README.md and docs/sweeps.md promise to run are marked to run here."""
    marked = {rel(b.path) for b in PYTHON_BLOCKS if b.run}
    assert {"README.md", "docs/sweeps.md"} <= marked, marked


def fake_mnist(real):
    """`portablenn.datasets.mnist` with MNIST's shapes and dtypes at a few hundred rows; the call is checked
    against the real function's signature."""
    signature = inspect.signature(real)

    def mnist(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        split = bound.arguments["split"]
        assert split in ("train", "test"), split
        rng = np.random.default_rng(0 if split == "train" else 1)
        n = 300 if split == "train" else 100
        y = rng.integers(0, 10, n).astype(np.uint8)
        X = rng.random((n, 784), dtype=np.float32) * 0.5
        X[np.arange(n), y.astype(np.int64) * 78] = 1.0  # a pixel per class: something to learn
        return X, y

    return mnist


@pytest.mark.parametrize("block", [b for b in PYTHON_BLOCKS if b.run], ids=lambda b: f"{rel(b.path)}:{b.line}")
def test_marked_python_block_runs(block, tmp_path, monkeypatch):
    import portablenn.datasets
    import portablenn.datasets.mnist  # noqa: F401  (the submodule, which the package's function shadows)

    fake = fake_mnist(portablenn.datasets.mnist)
    monkeypatch.setattr(portablenn.datasets, "mnist", fake)
    monkeypatch.setattr(importlib.import_module("portablenn.datasets.mnist"), "mnist", fake)
    monkeypatch.chdir(tmp_path)
    code = compile(block.text, f"{rel(block.path)}:{block.line}", "exec")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            exec(code, {"__name__": "__doc_block__", "__builtins__": builtins})
        except Exception as exc:
            tb = exc.__traceback__
            line = None
            while tb is not None:
                if tb.tb_frame.f_code.co_filename == code.co_filename:
                    line = tb.tb_lineno
                tb = tb.tb_next
            where = f"{rel(block.path)}:{block.line - 1 + line}" if line else f"{rel(block.path)}:{block.line}"
            pytest.fail(f"{where}: the block raised {type(exc).__name__}: {exc}")
