"""The packages' shape: imports flow one way (no cycles; the library never imports the
workbench, nor anything beyond torch and checkpoint-schedules; the drop-in's vocabulary stays
in anode.dropin), the workbench's commands are reached only through its cli, every module
stays small, and no library function takes more than 6 positional parameters. The library's
tests import only the library."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
LIBRARY, WORKBENCH = "anode", "anode_workbench"
MAX_LINES = 400
MAX_POSITIONAL = 6
# the library's requirements (pyproject.toml); scipy is optional, for method="scipy_solver"
LIBRARY_NEEDS = {"torch", "checkpoint_schedules"}
NOT_THE_LIBRARYS = {WORKBENCH, "numpy", "tqdm", "matplotlib"}
DEPRECATED_DICT_FORM = "# deprecated: remove with the dict form"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def files(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


KNOWN = {module_name(p) for package in (LIBRARY, WORKBENCH) for p in files(package)}


def import_nodes(tree: ast.AST):
    """``(node, lazy)`` for every import statement; ``lazy`` when it sits inside a function
    (a lazy import is still a dependency, but costs nothing until called)."""
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, id(node) in inside


def targets(node, path: Path) -> set[str]:
    """The dotted names ``node`` imports: modules of the two packages where it names them
    ("from . import x" names submodule x; "from .m import f" names m), else the absolute name."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    target = node.module or ""
    if node.level:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    subs = {f"{target}.{a.name}" for a in node.names} & KNOWN
    return subs or {target}


def imports(path: Path) -> set[str]:
    """Modules of the two packages that ``path`` imports, at module level or lazily."""
    tree = ast.parse(path.read_text())
    found = {t for node, _ in import_nodes(tree) for t in targets(node, path)}
    return (found & KNOWN) - {module_name(path)}


def graph(package: str) -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in files(package)}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# ---------------------------------------------------------------- import direction

@pytest.mark.parametrize("package", [LIBRARY, WORKBENCH])
def test_no_import_cycles(package):
    g = graph(package)
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    # a package's __init__ importing its own submodules is not a cycle of dependencies
    real = [c for c in cycles if not all(a.startswith(b) or b.startswith(a) for a, b in zip(c, c[1:]))]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)


def test_the_library_imports_only_torch_and_checkpoint_schedules():
    """Nothing under src/anode imports the workbench (or numpy, tqdm, matplotlib, which only
    the workbench needs): ``pip install anode`` brings torch and checkpoint-schedules alone.
    SciPy, optional, is imported only lazily inside anode.dropin (method="scipy_solver")."""
    offenders = []
    for path in files(LIBRARY):
        name = module_name(path)
        for node, lazy in import_nodes(ast.parse(path.read_text())):
            for target in targets(node, path):
                root = target.split(".")[0]
                if root in {LIBRARY, *LIBRARY_NEEDS} or root in sys.stdlib_module_names:
                    continue
                if root == "scipy" and lazy and within(name, f"{LIBRARY}.dropin"):
                    continue
                why = "" if root in NOT_THE_LIBRARYS else " (not a requirement of the library)"
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}{why}")
    assert not offenders, "\n".join(offenders)


def test_nothing_outside_the_dropin_imports_it():
    """torchdiffeq's vocabulary lives in anode.dropin; the rest of the library never imports
    it, except the lines marked for removal with the deprecated dict form of ``options``."""
    offenders = []
    for path in files(LIBRARY):
        if within(module_name(path), f"{LIBRARY}.dropin"):
            continue
        lines = path.read_text().splitlines()
        for node, _ in import_nodes(ast.parse(path.read_text())):
            if not any(within(t, f"{LIBRARY}.dropin") for t in targets(node, path)):
                continue
            if any(DEPRECATED_DICT_FORM in line for line in lines[node.lineno - 1:node.end_lineno]):
                continue
            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not offenders, "imports of anode.dropin outside it:\n" + "\n".join(offenders)


def test_the_commands_are_imported_only_by_the_cli():
    commands, cli = f"{WORKBENCH}.commands", f"{WORKBENCH}.cli"
    offenders = sorted(
        m for package in (LIBRARY, WORKBENCH) for m, deps in graph(package).items()
        if not within(m, commands) and m != cli and any(within(d, commands) for d in deps)
    )
    assert not offenders, f"modules importing {commands} (only {cli} may): {offenders}"


def test_library_tests_never_import_the_workbench():
    """tests/library runs with the library alone: no import of anode_workbench, at module
    level, lazily, or through importlib / pytest.importorskip."""
    offenders = []
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = [(node.lineno, t) for node, _ in import_nodes(tree) for t in targets(node, path)
                 if not getattr(node, "level", 0)]
        names += [(node.lineno, node.args[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                  and getattr(node.func, "attr", getattr(node.func, "id", None))
                  in ("importorskip", "import_module", "__import__")]
        offenders += [f"{path.relative_to(ROOT)}:{line} imports {name}" for line, name in names
                      if isinstance(name, str) and within(name, WORKBENCH)]
    assert not offenders, "\n".join(offenders)


# ---------------------------------------------------------------- size

@pytest.mark.parametrize("package", [LIBRARY, WORKBENCH])
def test_no_module_over_400_lines(package):
    long = {str(p.relative_to(SRC)): n for p in files(package)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def is_autograd_function(cls) -> bool:
    return isinstance(cls, ast.ClassDef) and any(ast.unparse(b).split(".")[-1] == "Function"
                                                  for b in cls.bases)


def test_no_library_function_takes_more_than_6_positional_parameters():
    """Beyond 6 positional parameters a call is read by counting; pass a small frozen record
    instead. ``self``, ``cls`` and ``ctx`` are not counted; ``*args`` counts as too many,
    except in the forward and backward of an autograd Function (torch passes them so) and in
    a wrapper of a deprecated form whose ``def`` line says so (``# deprecated: ...``)."""
    offenders = []
    for path in files(LIBRARY):
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            name = getattr(node, "name", "<lambda>")
            owner = parent.get(node)
            positional = [a.arg for a in node.args.posonlyargs + node.args.args
                          if a.arg not in ("self", "cls", "ctx")]
            star = node.args.vararg is not None and not (
                name in ("forward", "backward") and is_autograd_function(owner)
                or "# deprecated:" in lines[node.lineno - 1])
            if len(positional) > MAX_POSITIONAL or star:
                where = f"{owner.name}.{name}" if isinstance(owner, ast.ClassDef) else name
                count = f"{len(positional)}" + (f" + *{node.args.vararg.arg}" if star else "")
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {where}: {count}")
    assert not offenders, (f"functions taking more than {MAX_POSITIONAL} positional parameters:\n"
                           + "\n".join(offenders))
