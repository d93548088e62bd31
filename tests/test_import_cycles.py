"""fpgm_ext's modules import each other without a cycle: the import graph (every import
statement, those inside functions included, those under TYPE_CHECKING left out) has no
strongly connected component of more than one module."""
import ast
import os

import fpgm_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fpgm_ext.__file__)))


def _modules():
    mods = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "fpgm_ext")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                package = rel.endswith(".__init__")
                mods[rel[:-9] if package else rel] = (path, package)
    return mods


def _imports(name, path, package, mods):
    tree = ast.parse(open(path).read())
    hidden = {id(x) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
              for x in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in mods)
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".") if package else name.split(".")[:-1]
            target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            for a in node.names:
                if a.name == "_C":
                    continue   # the compiled extension, not a package
                yield f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target


def _cycles(edges):
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    mods = _modules()
    edges = {m: {t for t in _imports(m, p, pkg, mods) if t in mods} for m, (p, pkg) in mods.items()}
    assert len(mods) > 50 and sum(map(len, edges.values())) > 100   # (the graph was read)
    assert _cycles(edges) == []


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
