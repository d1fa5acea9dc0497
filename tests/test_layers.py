"""The layering docs/ARCHITECTURE.md promises: every workflow script calls one ``kvwire.stages``
function (plus the job set-up), and the library below ``stages`` takes data, not paths, where the
architecture says so (figures, router, paper)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))
LIB = REPO / "lib" / "kvwire"


def _kvwire_imports(tree: ast.AST) -> dict[str, str]:
    """name -> module, for every ``from kvwire... import name``."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kvwire"):
            for a in node.names:
                out[a.asname or a.name] = node.module
    return out


def stage_calls(source: str) -> tuple[dict[str, str], list[str]]:
    """(kvwire imports, the names of kvwire functions the script calls other than the job set-up)."""
    tree = ast.parse(source)
    imports = _kvwire_imports(tree)
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id in imports and n.func.id != "setup"]
    return imports, calls


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_calls_one_stages_function(script):
    imports, calls = stage_calls(script.read_text())
    outside = {n: m for n, m in imports.items() if not m.startswith("kvwire.stages")}
    assert outside == {}, f"{script.name} imports from the library below stages: {outside}"
    assert len(calls) == 1, f"{script.name} calls {calls}, not one stages function"


def test_the_script_check_sees_a_script_that_does_the_work_itself():
    imports, calls = stage_calls("from kvwire.prompts import build\nfrom kvwire.stages.tables import t\n"
                                 "from kvwire.stages.runtime import setup\nsetup(1)\nbuild(2)\nt(3)\n")
    assert imports["build"] == "kvwire.prompts" and calls == ["build", "t"]


PATH_FREE = ["figures", "router.py", "decide.py", "paper"]  # take data frames; stages read and write


def _reads_or_writes_files(tree: ast.AST) -> list[str]:
    names = {"read_csv", "to_csv", "write_csv", "read_json", "write_json", "atomic_path", "savefig", "open",
             "write_text", "read_text"}
    return sorted({n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id for n in ast.walk(tree)
                   if isinstance(n, ast.Call) and ((isinstance(n.func, ast.Name) and n.func.id in names)
                                                   or (isinstance(n.func, ast.Attribute) and n.func.attr in names))})


@pytest.mark.parametrize("part", PATH_FREE)
def test_plots_router_and_paper_take_data_not_paths(part):
    files = sorted((LIB / part).rglob("*.py")) if (LIB / part).is_dir() else [LIB / part]
    found = {str(f.relative_to(LIB)): _reads_or_writes_files(ast.parse(f.read_text())) for f in files}
    assert {f: calls for f, calls in found.items() if calls} == {}
    assert _reads_or_writes_files(ast.parse("import pandas as pd\npd.read_csv('x')\n")) == ["read_csv"]
