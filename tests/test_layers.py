"""
The layers of the house, read from the code's imports (every import statement, at any depth of
a file: a lazy import inside a function counts as much as one at the top).

  the ground      nanoirl's algorithm files and the toy's exact core: they import the standard
                  library, torch, numpy and each other, nothing else (no torch.distributed:
                  ranks live in the machinery and the scripts)
  the machinery   the rest of nanoirl/ (flags, run directory, checkpoints, metrics, torchrun,
                  formats, the Hub): it imports the ground, never toy/ or a script
  toy/            imports nanoirl/ and itself, never a script
  the scripts     train_*.py, sweep_mlirl.py and toy_vs_text.py on top, bench.py apart: nothing
                  of the project imports them, and a script imports no other (but sweep_mlirl.py,
                  which runs train_mlirl.py over seeds; toy_vs_text.py runs the scripts as commands)
and no module imports itself back through others (no circles).
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUND = {f"nanoirl.{m}" for m in ("policy", "model", "sft", "airl", "gail", "fdiv", "reward", "ppo", "soft_pi",
                                   "mlirl", "dpo")} | \
         {f"toy.{m}" for m in ("mdp", "tabular", "gpt", "metrics", "train", "exact")}
SCRIPTS = {"train_sft", "train_airl", "train_mlirl", "sweep_mlirl", "toy_vs_text", "bench"}
THIRD_PARTY_OF_THE_GROUND = {"torch", "numpy"}


def modules():
    """{module name: path} of every module of the project but its tests."""
    paths = sorted(ROOT.glob("nanoirl/*.py")) + sorted(ROOT.glob("toy/*.py")) + \
        [ROOT / f"{s}.py" for s in sorted(SCRIPTS)]
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in paths}


def imported(path):
    """Every module name an import statement of the file names, at any depth (`from a import b`
    names a and a.b: b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import"
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def graph(mods):
    """{module: the project's modules it imports}."""
    return {name: {m for m in imported(path) if m in mods and m != name} for name, path in mods.items()}


def ground_violations(mods):
    """{ground module: what it imports beyond the standard library, torch, numpy and the ground}."""
    bad = {}
    for name in GROUND & mods.keys():
        for m in sorted(imported(mods[name])):
            top = m.split(".")[0]
            if m in ("nanoirl", "toy") or top in ("nanoirl", "toy") and m not in mods:
                continue  # the package of `from nanoirl import x`, or a name (x of `from nanoirl.x import y`)
            ok = m in GROUND if top in ("nanoirl", "toy") else \
                top in sys.stdlib_module_names or top in THIRD_PARTY_OF_THE_GROUND
            if not ok or m.startswith("torch.distributed"):
                bad.setdefault(name, []).append(m)
    return bad


def upward_imports(g):
    """{module: the modules above it that it imports}: nanoirl/ -> toy/ or a script, toy/ -> a
    script, a script -> another (bench.py stands apart; sweep_mlirl.py runs train_mlirl.py)."""
    bad = {}
    for name, deps in g.items():
        above = {d for d in deps if d in SCRIPTS or (name.startswith("nanoirl.") and d.startswith("toy."))}
        above -= {"train_mlirl"} if name == "sweep_mlirl" else set()
        if above:
            bad[name] = sorted(above)
    return bad


def circles(g):
    """Every import circle found by a depth-first walk, as a list of modules."""
    state, found = {}, []

    def visit(u, path):
        state[u] = "open"
        for v in sorted(g[u]):
            if state.get(v) == "open":
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v, path + [v])
        state[u] = "done"

    for u in sorted(g):
        if u not in state:
            visit(u, [u])
    return found


def test_the_project_has_the_modules_the_layers_name():
    mods = modules()
    assert GROUND <= mods.keys(), GROUND - mods.keys()
    assert {m for m in mods if m.startswith("nanoirl.")} - GROUND, "no machinery found"


def test_the_ground_imports_only_the_standard_library_torch_numpy_and_the_ground():
    assert ground_violations(modules()) == {}


def test_nothing_imports_upwards():
    assert upward_imports(graph(modules())) == {}


def test_no_import_circles():
    assert circles(graph(modules())) == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """Each check fails where it should: a ground file importing torch.distributed and the
    machinery, the machinery importing toy/, toy/ importing a script, and a circle."""
    files = {"nanoirl/sft.py": "import torch.distributed\nfrom nanoirl import run\n",
             "nanoirl/run.py": "import nanoirl.sft\nif True:\n    from toy.mdp import ToyMDP\n",
             "toy/mdp.py": "import math\nimport train_mlirl\n", "train_mlirl.py": "import argparse\n"}
    mods = {}
    for f, text in files.items():
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_text(text)
        mods[f.removesuffix(".py").replace("/", ".")] = tmp_path / f
    g = graph(mods)
    assert ground_violations(mods) == {"nanoirl.sft": ["nanoirl.run", "torch.distributed"], "toy.mdp": ["train_mlirl"]}
    assert upward_imports(g) == {"nanoirl.run": ["toy.mdp"], "toy.mdp": ["train_mlirl"]}
    assert circles(g) == [["nanoirl.run", "nanoirl.sft", "nanoirl.run"]]
