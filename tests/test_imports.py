"""The package's import graph: no cycle anywhere in comd_jax/, counting the imports inside
functions too (a lazy import that closes a cycle hides a layering mistake until someone
hoists it), and the library never imports its benchmarks."""
import ast
import os

from tests._paths import REPO

PACKAGE = os.path.join(REPO, "comd_jax")


def _modules(root: str) -> dict:
    mods = {}
    base = os.path.dirname(root)
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                mods[module[: -len(".__init__")] if module.endswith(".__init__") else module] = path
    return mods


def _graph(mods: dict) -> dict:
    def resolve(name: str):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                edges.update(resolve(a.name) for a in node.names if a.name.split(".")[0] == "comd_jax")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "comd_jax":
                # `from comd_jax.models import lora` imports the submodule; `from x import name`, x
                edges.update(resolve(f"{node.module}.{a.name}") for a in node.names)
        graph[module] = edges - {module, None}
    return graph


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycle_in_the_package():
    cycles = _cycles(_graph(_modules(PACKAGE)))
    assert not cycles, f"import cycles in comd_jax/: {cycles}"


def test_the_library_does_not_import_its_benchmarks():
    graph = _graph(_modules(PACKAGE))
    wrong = sorted(m for m, edges in graph.items() if not m.startswith("comd_jax.bench")
                   and any(e.startswith("comd_jax.bench") for e in edges))
    assert not wrong, f"library modules importing comd_jax.bench: {wrong}"


def test_a_cycle_through_a_lazy_import_is_found(tmp_path):
    pkg = tmp_path / "comd_jax"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "a.py").write_text("from comd_jax.models import b\n")
    (pkg / "models" / "b.py").write_text("def f():\n    from comd_jax.models.a import thing\n")
    (pkg / "models" / "c.py").write_text("import comd_jax.models.a\n")
    assert _cycles(_graph(_modules(str(pkg)))) == [["comd_jax.models.a", "comd_jax.models.b"]]
