"""The import rule of docs/architecture.md: no cycles between modules or packages, and every import points down the
data flow's layers. Read from the source (every import statement, function-level ones included, since those are the
ones that hide a cycle)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "gpt_ds"
# lower first; a package may import itself and anything listed before it
LAYERS = [["gpt_ds.errors", "gpt_ds.config", "gpt_ds.watchdog", "gpt_ds.faults"], ["gpt_ds.dist"], ["gpt_ds.data"], ["gpt_ds.kernels"], ["gpt_ds.model"],
          ["gpt_ds.ds_config", "gpt_ds.flops"], ["gpt_ds.checkpoint"], ["gpt_ds.zero"],
          ["gpt_ds.train"], ["gpt_ds.export_card"], ["gpt_ds.export", "gpt_ds.evaluate", "gpt_ds.finetune",
                                                       "gpt_ds.plot", "gpt_ds.config_cmd"],
          ["gpt_ds.cli"]]


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT.parent).with_suffix("").parts)
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = p
    return out


def graph() -> dict[str, set[str]]:
    mods, g = modules(), {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt_ds"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("gpt_ds"))
        g[name] = {d for d in deps if d in mods and d != name}
    return g


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
                out.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules_or_packages():
    g = graph()
    assert cycles(g) == []
    packages: dict[str, set[str]] = {}
    for a, deps in g.items():
        packages.setdefault(package(a), set()).update(package(b) for b in deps if package(b) != package(a))
    assert cycles(packages) == []


def test_every_import_points_down_the_layers():
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    g = graph()
    assert {package(m) for m in g} - {"gpt_ds"} <= set(rank), "a new package needs a place in LAYERS"
    upward = [f"{a} -> {b}" for a, deps in g.items() for b in deps
              if package(a) in rank and package(b) in rank and rank[package(b)] > rank[package(a)]]
    assert upward == []


def test_the_library_never_imports_the_demo():
    """demo/ (make demo, the real-text extractors the benches share) sits above the library and ships outside it."""
    found = [f"{p.relative_to(ROOT.parent)}: {getattr(node, 'module', None) or node.names[0].name}"
             for p in ROOT.rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
             if (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "demo")
             or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "demo" for a in node.names))]
    assert found == []


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The imports that stay inside a function, each for a reason a newcomer can check (docs/architecture.md, "Imports"):
# deepspeed (seconds to import, and the launcher, `check`, `estimate` and `prepare` must not need it) and what pulls it
# in; torch and transformers where a command that never uses them would pay for them; packages a run may not have.
DEFERRED_INTERNAL = {
    ("gpt_ds/export.py", "gpt_ds.train.engines"),      # deepspeed, only for `export --verify`
    ("gpt_ds/train/launch.py", "gpt_ds.train.trainer"),  # deepspeed, in a rank only (never the --nproc launcher)
    ("gpt_ds/zero/check.py", "gpt_ds.zero.sizes"),     # torch + transformers, for the run-dir space check only
    ("gpt_ds/plot.py", "gpt_ds.zero.sizes"),           # torch + transformers, for --x flops without a vocab only
}
DEFERRED_EXTERNAL = {"deepspeed", "torch", "transformers", "tokenizers", "sentencepiece", "sklearn", "scipy",
                     "matplotlib", "pydantic", "pyarrow", "datasets", "wandb"}


def function_level_imports() -> list[tuple[str, str]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        out += [(str(path.relative_to(ROOT.parent)), a.name) for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        out.append((str(path.relative_to(ROOT.parent)), node.module or ""))
    return sorted(set(out))


def test_imports_sit_at_the_top_unless_listed_with_a_reason():
    found = function_level_imports()
    internal = {(f, m) for f, m in found if m.startswith("gpt_ds")}
    assert internal <= DEFERRED_INTERNAL, f"move to the top, or list with a reason: {internal - DEFERRED_INTERNAL}"
    external = {(f, m) for f, m in found if not m.startswith("gpt_ds") and m.split(".")[0] not in DEFERRED_EXTERNAL}
    assert external == set(), f"the standard library and light packages go at the top: {external}"
