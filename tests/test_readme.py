"""The README's two commands stay true: CI runs the README's test command, and the first command
names a script and a requirements file that exist."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_block():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_opens_with_install_and_test_commands():
    install, tests = first_block()[:2]
    assert install.startswith("pip install -r requirements.txt && python train_mlirl.py")
    assert (ROOT / "requirements.txt").is_file() and (ROOT / "train_mlirl.py").is_file()
    assert tests.startswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    tests = first_block()[1]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    assert tests in ci, f"CI does not run the README's test command {tests!r}"
    assert any("-r requirements.txt" in line for line in ci), "CI does not install requirements.txt"
