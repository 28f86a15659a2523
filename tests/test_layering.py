"""The layering of the package holds (README "Architecture"): read from the imports, lazy ones included.

Each rule names a part of the package and the parts it must never import. The parts:
``core`` (config, errors, variants, artifacts) at the bottom; ``data``; ``retrieval``; ``model``;
the stages (``pipeline``, ``train``, ``eval``, ``serve``), which never import each other's
internals (``train`` may use ``eval.metrics``); then ``workflow``, ``tune``, ``quickstart``,
``jobs`` and ``cli`` on top. Nothing imports ``cli``, and ``jobs/*.py`` only call ``lavic_ray.jobs``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "lavic_ray"

TOP = ("lavic_ray.workflow", "lavic_ray.tune", "lavic_ray.quickstart", "lavic_ray.diagnosis", "lavic_ray.report",
       "lavic_ray.jobs", "lavic_ray.cli")
STAGES = ("lavic_ray.pipeline", "lavic_ray.train", "lavic_ray.eval", "lavic_ray.serve")
CORE = ("lavic_ray.config", "lavic_ray.errors", "lavic_ray.variants", "lavic_ray.artifacts", "lavic_ray.hardware",
        "lavic_ray.storage")

#: part -> prefixes it must not import
FORBIDDEN = {
    CORE: ("lavic_ray.data", "lavic_ray.retrieval", "lavic_ray.model", *STAGES, *TOP, "lavic_ray.console", "lavic_ray.runtime"),
    ("lavic_ray.data",): ("lavic_ray.retrieval", "lavic_ray.model", *STAGES, *TOP, "lavic_ray.runtime"),
    ("lavic_ray.retrieval",): ("lavic_ray.model", *STAGES, *TOP),
    ("lavic_ray.model",): (*STAGES, *TOP),
    ("lavic_ray.pipeline",): ("lavic_ray.train", "lavic_ray.eval", "lavic_ray.serve", *TOP),
    ("lavic_ray.train",): ("lavic_ray.pipeline", "lavic_ray.serve", *TOP, "lavic_ray.eval.evaluate",
                           "lavic_ray.eval.methods", "lavic_ray.eval.lavic_methods", "lavic_ray.eval.probe"),
    ("lavic_ray.eval",): ("lavic_ray.pipeline", "lavic_ray.train", "lavic_ray.serve", *TOP),
    ("lavic_ray.serve",): ("lavic_ray.pipeline", "lavic_ray.train", "lavic_ray.eval", *TOP),
    ("lavic_ray.workflow",): ("lavic_ray.tune", "lavic_ray.quickstart", "lavic_ray.diagnosis", "lavic_ray.report",
                              "lavic_ray.jobs", "lavic_ray.cli", "lavic_ray.serve"),
    # a job's inputs are checked in a second or so, before anything heavy is imported
    ("lavic_ray.preflight", "lavic_ray.download"): ("lavic_ray.model", "lavic_ray.retrieval", *STAGES, *TOP),
    ("lavic_ray.tune", "lavic_ray.quickstart", "lavic_ray.diagnosis", "lavic_ray.report"): ("lavic_ray.jobs", "lavic_ray.cli"),
    ("lavic_ray.diagnosis", "lavic_ray.report"): ("lavic_ray.quickstart",),
    ("lavic_ray.jobs",): ("lavic_ray.cli",),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every lavic_ray module ``path`` imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lavic_ray")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("lavic_ray"):
            out.add(node.module)
            # ``from lavic_ray import workflow`` names a module
            out |= {f"{node.module}.{a.name}" for a in node.names if (PKG.parent / node.module.replace(".", "/") / f"{a.name}.py").is_file()}
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PKG.rglob("*.py"))}


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_package_is_read():
    g = graph()
    assert "lavic_ray.model.build" in g and "lavic_ray.data.synthetic" in g and len(g) > 40
    assert "lavic_ray.model.lavic" in g["lavic_ray.model.build"]


@pytest.mark.parametrize("part", list(FORBIDDEN), ids=lambda p: "+".join(x.removeprefix("lavic_ray.") for x in p))
def test_no_import_against_the_layering(part):
    bad = []
    for mod, deps in graph().items():
        if not _under(mod, part):
            continue
        bad += [f"{mod} -> {d}" for d in sorted(deps) if _under(d, FORBIDDEN[part])]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_module_imports_the_command_line():
    g = graph()
    assert not [m for m, deps in g.items() if "lavic_ray.cli" in deps and m != "lavic_ray.cli"]


def test_no_import_cycles():
    g = {m: {d for d in deps if d in graph_keys} for graph_keys in [set(graph())] for m, deps in graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for d in g.get(m, ()):
            if d == m:
                continue
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m, [m])
    # a package __init__ re-exporting its modules is not a cycle of the code's own
    cycles = [c for c in cycles if not any(x.count(".") < 2 and x + "." in "".join(c) for x in c if x in g)]
    assert not cycles, cycles


def test_job_scripts_only_call_lavic_ray_jobs():
    for script in sorted((REPO / "jobs").glob("*.py")):
        deps = imports_of(script)
        assert deps == {"lavic_ray.jobs"}, (script.name, deps)
        assert f'main("{script.stem}")' in script.read_text()
