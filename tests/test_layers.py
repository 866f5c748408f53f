"""The import graph of the library: no circles (lazy imports inside functions included), and
the library below the commands (nothing outside ``signgd_jax.commands`` imports them)."""
import ast
import pathlib

import signgd_jax

ROOT = pathlib.Path(signgd_jax.__file__).parent


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path, modules: set) -> set:
    """The signgd_jax modules ``path`` imports anywhere in its body (``from a import b`` counts as
    ``a.b`` where that is a module, else ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def graph() -> dict:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) - {name} for name, path in paths.items()}


def cycles(edges: dict) -> list:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    edges = graph()
    # a package's __init__ re-exports its modules: edges into the package itself are not layering
    edges = {k: {w for w in v if not (k.startswith(w + ".") and w in ("signgd_jax", "signgd_jax.models",
                                                                          "signgd_jax.commands"))}
             for k, v in edges.items()}
    edges = {k: v for k, v in edges.items() if k not in ("signgd_jax", "signgd_jax.models")}
    assert cycles(edges) == []


def test_library_never_imports_the_commands():
    upward = {k: sorted(w for w in v if w.startswith("signgd_jax.commands"))
              for k, v in graph().items() if not k.startswith("signgd_jax.commands")}
    assert {k: v for k, v in upward.items() if v} == {}


def test_the_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
