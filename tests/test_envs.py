"""envs/*.yaml checked structurally (conda cannot be installed here): valid environment files, every
rule's env exists, each carries kvwire's runtime dependencies (kvwire is loaded from lib/, not
installed, inside them) and the extras its rules' scripts import, pinned as in constraints.txt."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
# a conda match spec: name, optional version (=, ==, >=, <, ... or a bare version) and build
CONDA_SPEC = re.compile(r"^[A-Za-z0-9_.-]+(\s*(==?|>=|<=|>|<|!=)?\s*[0-9A-Za-z.*+!_,|<>=-]+)?(\s+\S+)?$")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _env_pip(env: dict) -> dict[str, Requirement]:
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    return {canonicalize_name(r.name): r for r in map(Requirement, pip[0] if pip else [])}


def _rules() -> list[tuple[str, str, str]]:
    """(rule, conda env path relative to the repo, script path or '') of every rule."""
    out = []
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=[ ]*rule \w+:)", smk.read_text()):
            name = re.match(r"\s*rule (\w+):", block)
            if not name:
                continue
            conda = re.search(r'conda:\s*"([^"]+)"', block)
            script = re.search(r'script:\s*"([^"]+)"', block)
            out.append((name.group(1),
                        str((smk.parent / conda.group(1)).resolve().relative_to(REPO)) if conda else "",
                        str((smk.parent / script.group(1)).resolve().relative_to(REPO)) if script else ""))
    return out


def _script_envs() -> set[str]:
    """The envs rules run Python scripts in (they need Python and kvwire's dependencies)."""
    return {env for _, env, script in _rules() if env and script}


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_file_is_a_valid_conda_environment(path):
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict) and set(env) <= {"name", "channels", "dependencies", "variables"}, path
    assert env["channels"] and all(isinstance(c, str) for c in env["channels"])
    deps = env["dependencies"]
    specs = [d for d in deps if isinstance(d, str)]
    dicts = [d for d in deps if not isinstance(d, str)]
    assert all(CONDA_SPEC.match(s) for s in specs), [s for s in specs if not CONDA_SPEC.match(s)]
    assert len(dicts) <= 1 and all(set(d) == {"pip"} and isinstance(d["pip"], list) for d in dicts)
    if dicts:
        assert "pip" in specs, "a pip: section needs pip itself"
    if str(path.relative_to(REPO)) not in _script_envs():
        return  # a tool env (e.g. latex.yaml)
    python = next(s for s in specs if s.startswith("python"))
    version = Version(re.sub(r"^python\s*=*\s*", "", python).rstrip(".*"))
    assert version in SpecifierSet(_project()["requires-python"]), python


@pytest.mark.parametrize("path", [p for p in ENVS if str(p.relative_to(REPO)) in _script_envs()],
                         ids=lambda p: p.name)
def test_env_carries_kvwire_dependencies_at_the_tested_pins(path):
    env = _env_pip(yaml.safe_load(path.read_text()))
    pins = _pins()
    for dep in map(Requirement, _project()["dependencies"]):
        name = canonicalize_name(dep.name)
        assert name in env, f"{path.name} lacks {dep.name}, which kvwire needs"
    for name, req in env.items():
        assert name in pins, f"{path.name} pins {name}, which constraints.txt does not"
        assert str(req.specifier) == f"=={pins[name]}", f"{path.name}: {req} but constraints.txt has {pins[name]}"
        for dep in map(Requirement, _project()["dependencies"]):
            if canonicalize_name(dep.name) == name:
                assert pins[name] in dep.specifier, f"{req} does not satisfy pyproject's {dep}"


def test_every_rule_names_an_existing_env_that_has_what_its_script_imports():
    rules = _rules()
    assert len(rules) > 30
    extras = _project()["optional-dependencies"]
    for rule, env_path, script in rules:
        if rule in ("all", "paper", "link_validation_all"):  # targets only: no job runs
            continue  # target rules run nothing
        assert env_path, f"rule {rule} has no conda env"
        assert (REPO / env_path).exists(), f"rule {rule}: {env_path} does not exist"
        if not script:
            continue
        env = _env_pip(yaml.safe_load((REPO / env_path).read_text()))
        code = (REPO / script).read_text()
        needs = []
        if "kvwire.stages.figures" in code:  # the figures draw with matplotlib and seaborn
            needs += extras["plots"]
        if "kvwire.prompts" in code:  # hf: datasets come through datasets.load_dataset
            needs += extras["datasets"]
        for dep in map(Requirement, needs):
            assert canonicalize_name(dep.name) in env, f"rule {rule} ({script}) needs {dep.name}; {env_path} lacks it"
