"""
docs/guide.md stays true to the code it maps the papers onto, and README.md and every page of docs/
to the files they name:
  references    in every doc, every `file.py:function` named exists (modules imported and read with
                getattr, top-level scripts parsed with ast), every `tests/test_x.py::test_name` exists
                (collected with ast, not run), each is a link to its file, and every relative link
                resolves, its #anchor to a heading of the page it points at
  equation map  the table has a row for every Sun24 equation 1-30 and MLIRL equation 1-11, plus
                MLIRL Algorithm 1 and RLignment's constructs, and every row names code and a test or
                says "context"
  details       each numbered implementation detail quotes lines that are in the function it names
  ladder        every command of the teaching ladder runs, in a fast mode that takes the same code
                path: the scripts with small settings into a temporary directory (argparse keeps the
                last value of a repeated flag), the pytest selections collected (they select tests
                that the suite runs anyway)
"""
import ast
import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

CODE_REF = re.compile(r"`((?:[\w-]+/)*[\w-]+\.py):([A-Za-z_][\w.]*)`")
TEST_REF = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)`")
LINKED_REF = re.compile(r"\[`((?:[\w-]+/)*[\w-]+\.py)(?::|::)[\w.]+`\]\(([^)\s]+)\)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SUN24 = set(range(1, 24)) | {28, 29, 30}
MLIRL = set(range(1, 12))
RLIGNMENT = ("Init-SFT", "Init-Demo", "SFT-Demo", "reward = logit", "Best-of-N")


def guide():
    return GUIDE.read_text()


def prose(text):
    """The guide without its fenced code blocks (commands and pseudocode hold no references)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def section(text, title):
    """The text of the '## title' section, up to the next '## '."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"docs/guide.md has no section '## {title}'"
    return m.group(1)


# ---- resolving names ---------------------------------------------------------------------------------
def is_module(path):
    return path.split("/")[0] in ("nanoirl", "toy")


def ast_lookup(path, qualname):
    """The ast node of `qualname` (functions and classes, dotted for methods) in a file, or None."""
    source = (ROOT / path).read_text()
    body = ast.parse(source).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
        if node is None:
            return None, source
        body = node.body
    return node, source


def source_of(path, qualname):
    """Source text of a named function or class: imported from a module, parsed from a script."""
    if is_module(path):
        obj = importlib.import_module(path[:-3].replace("/", "."))
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return inspect.getsource(obj)
    node, source = ast_lookup(path, qualname)
    assert node is not None, f"{path} defines no {qualname}"
    return ast.get_source_segment(source, node)


def collected_tests(path):
    tree = ast.parse((ROOT / path).read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def name(doc):
    return str(doc.relative_to(ROOT))


def anchor(heading):
    """GitHub's anchor of a heading: lower case, every character but letters, digits, _, - and
    spaces dropped (markup and punctuation), spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    return {anchor(h) for h in re.findall(r"^#{1,6} (.*)$", prose(path.read_text()), re.M)}


# ---- references and links ----------------------------------------------------------------------------
def test_the_docs_are_found():
    assert {name(d) for d in DOCS} >= {"README.md", "docs/guide.md", "docs/results.md", "docs/operations.md"}


@pytest.mark.parametrize("doc", DOCS, ids=name)
def test_every_named_function_exists(doc):
    refs = sorted(set(CODE_REF.findall(prose(doc.read_text()))))
    if doc == GUIDE:
        assert len(refs) > 50, "the guide should map the papers onto the code"
    missing = []
    for path, qualname in refs:
        if not (ROOT / path).is_file():
            missing.append(f"{path} (no such file)")
        elif is_module(path):
            obj = importlib.import_module(path[:-3].replace("/", "."))
            for part in qualname.split("."):
                obj = getattr(obj, part, None)
            if obj is None:
                missing.append(f"{path}:{qualname}")
        elif ast_lookup(path, qualname)[0] is None:
            missing.append(f"{path}:{qualname}")
    assert not missing, f"{name(doc)} names code that does not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=name)
def test_every_named_test_exists(doc):
    refs = sorted(set(TEST_REF.findall(prose(doc.read_text()))))
    if doc == GUIDE:
        assert len(refs) > 20
    missing = [f"{p}::{n}" for p, n in refs if not (ROOT / p).is_file() or n not in collected_tests(p)]
    assert not missing, f"{name(doc)} names tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=name)
def test_references_are_links_to_their_files(doc):
    """One click from a name to its file: `a/b.py:f` and `tests/t.py::test_x` are always written as
    [`...`](../a/b.py), relative to the doc (docs/ or the root), so they work on GitHub."""
    text = prose(doc.read_text())
    n_refs = len(CODE_REF.findall(text)) + len(TEST_REF.findall(text))
    linked = LINKED_REF.findall(text)
    assert len(linked) == n_refs, f"{name(doc)}: every file.py:function and test reference must be a link to its file"
    wrong = [(path, target) for path, target in linked if target != os.path.relpath(ROOT / path, doc.parent)]
    assert not wrong, f"{name(doc)}: links that do not point at the named file: {wrong}"


@pytest.mark.parametrize("doc", DOCS, ids=name)
def test_relative_links_resolve(doc):
    targets = [t for t in LINK.findall(prose(doc.read_text())) if not re.match(r"[a-z]+:", t)]
    if doc == GUIDE:
        assert any(t.endswith(".png") for t in targets), "the guide shows the ladder's figures"
    missing = []
    for target in targets:
        path, _, fragment = target.partition("#")
        path = (doc.parent / path) if path else doc
        if not path.exists() or (fragment and path.suffix == ".md" and fragment not in anchors(path)):
            missing.append(target)
    assert not missing, f"relative links in {name(doc)} that do not resolve: {missing}"


# ---- the equation map ----------------------------------------------------------------------------------
def table_rows():
    rows = [line for line in section(guide(), "The equation map").splitlines() if line.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))] for line in rows[2:]]  # skip head, rule


def test_equation_map_has_every_equation():
    rows = table_rows()
    firsts = [r[0] for r in rows]
    sun = {int(n) for c in firsts for n in re.findall(r"Sun24 Eq\. (\d+)", c)}
    ml = {int(n) for c in firsts for n in re.findall(r"MLIRL Eq\. (\d+)", c)}
    assert SUN24 <= sun, f"rows missing for Sun24 Eq. {sorted(SUN24 - sun)}"
    assert MLIRL <= ml, f"rows missing for MLIRL Eq. {sorted(MLIRL - ml)}"
    assert any("MLIRL Algorithm 1" in c for c in firsts)
    for name in ("AIRL", "GAIL", "FAIRL", "α-IRL"):
        assert any(c.startswith("Sun24 App. B") and name in c for c in firsts), f"no App. B row for {name}"
    for name in RLIGNMENT:
        assert any(c.startswith("RLignment") and name in c for c in firsts), f"no RLignment row for {name}"


def test_every_row_names_code_and_a_test_or_says_context():
    for row in table_rows():
        assert len(row) == 5, f"a row of the equation map needs 5 cells: {row}"
        eq, _, code, test, _ = row
        context = "context" in code
        assert context or CODE_REF.search(code), f"{eq}: no function named, and not marked context"
        assert context or TEST_REF.search(test) or "no test" in test, f"{eq}: no test named"


# ---- implementation details -------------------------------------------------------------------------
def detail_items():
    text = section(guide(), "Implementation details")
    return re.findall(r"^\d+\. (.*?)(?=^\d+\. |^#|\Z)", text, re.S | re.M)


def test_implementation_details_quote_their_code():
    """Each numbered detail names its function(s); every other code span in it is a quote that
    must occur (whitespace aside) in the source of one of those functions."""
    items = detail_items()
    assert len(items) >= 20
    squash = lambda s: re.sub(r"\s+", "", s)
    for item in items:
        refs = CODE_REF.findall(item)
        assert refs, f"an implementation detail names no function: {item[:80]!r}"
        sources = [squash(source_of(path, name)) for path, name in refs]
        spans = [s for s in re.findall(r"`([^`]+)`", item) if not CODE_REF.fullmatch(f"`{s}`")]
        assert spans, f"an implementation detail quotes no code: {item[:80]!r}"
        for quote in spans:
            assert any(squash(quote) in src for src in sources), \
                f"{quote!r} is not in {[f'{p}:{n}' for p, n in refs]}"


# ---- the teaching ladder --------------------------------------------------------------------------------
def ladder_commands():
    text = section(guide(), "Teaching ladder")
    blocks = re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)
    lines = [line.split(" #")[0].strip() for b in blocks for line in b.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def fast_mode(argv, tmp):
    """(argv to run, files it must write under tmp) for a ladder command: the same entry point and
    code path, with small settings and tmp as the output directory."""
    if argv[:3] == ["python", "-m", "pytest"]:
        return argv[1:] + ["--collect-only", "-p", "no:cacheprovider"], []
    if argv[:3] == ["python", "-m", "toy.plots"]:
        figures = argv[argv.index("--figures") + 1].split(",") if "--figures" in argv else ["modes", "training", "low_demo"]
        return argv[1:] + ["--out", str(tmp), "--steps", "20", "--demos", "3,12", "--seeds", "1"], \
            [f"{f}.png" for f in figures]
    if argv[:3] == ["python", "-m", "toy.irl"]:
        return argv[1:] + ["--rounds", "2"], []
    if argv[:2] == ["python", "train_mlirl.py"]:
        return argv[1:] + ["--out", str(tmp), "--rounds", "2", "--sft-steps", "30", "--ppo-iterations", "2",
                           "--rollout-batch-size", "32"], ["metrics.jsonl", "mlirl_fig2.png"]
    raise AssertionError(f"no fast mode for the ladder command {' '.join(argv)!r}: add one here")


def test_ladder_is_short_and_every_step_has_a_command():
    commands = ladder_commands()
    assert 5 <= len(commands) <= 12, commands


@pytest.mark.slow
@pytest.mark.parametrize("command", ladder_commands())
def test_ladder_command_runs(command, tmp_path):
    argv, expected = fast_mode(shlex.split(command), tmp_path)
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NANOIRL_NO_PLOTS": ""})  # the figures as a reader gets them
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    if argv[:2] == ["-m", "pytest"]:  # the selection is not empty ("-q" lists ids, "-qq" counts)
        counts = [int(n) for n in re.findall(r"^tests/\S+\.py: (\d+)$", done.stdout, re.M)]
        assert "::" in done.stdout or sum(counts) > 0, done.stdout
    for name in expected:
        assert (tmp_path / name).is_file(), f"{command} did not write {name}"
