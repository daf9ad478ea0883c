"""The code a user copies runs as written: every ```python block of the README, and the ``>>>``
examples of every module docstring of the packages, each in a fresh interpreter (so a block that
leans on an earlier one's imports or names fails here, as it would for the user)."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Ahead, selected_params

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cntk", "finite_nets", "experiments")


def readme_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)
    return [(f"README block {i + 1}", b) for i, b in enumerate(blocks)]


def docstring_examples() -> list[tuple[str, str]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            lines = [m.group(2) for m in re.finditer(r"^\s*(>>>|\.\.\.) ?(.*)$", doc, flags=re.M)]
            if lines:
                out.append((str(path.relative_to(ROOT)), "\n".join(lines) + "\n"))
    return out


CASES = readme_blocks() + docstring_examples()


def test_there_is_code_to_check():
    assert len(readme_blocks()) >= 3 and docstring_examples()


def _run(code, tmp):
    return subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "NUMBA_NUM_THREADS": "1", "HOME": str(tmp)})


@pytest.fixture(scope="module")
def ran(request, tmp_path_factory):
    """Every selected case's interpreter, started together (one thread each, a few at a time)."""
    names = selected_params(request, "test_runs_as_written", "name")
    code, dirs = dict(CASES), {n: tmp_path_factory.mktemp("doc") for n in names}
    ahead = Ahead(lambda n: _run(code[n], dirs[n]), names)
    yield ahead
    ahead.close()


@pytest.mark.parametrize("name, code", CASES, ids=[n for n, _ in CASES])
def test_runs_as_written(name, code, ran):
    out = ran.get(name)
    assert out.returncode == 0, f"{name} fails as written:\n{code}\n{out.stderr[-3000:]}"
