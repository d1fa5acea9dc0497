"""Repository contracts: CI runs the README's test command and the set-up the README gives (the conda
env files are checked in test_envs.py)."""

import re

import yaml


def readme_test_command(repo) -> str:
    text = (repo / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```\s*<!-- /test-command -->", text, re.S)
    assert block, "README lacks the marked test command"
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command_verbatim(repo):
    ci_lines = [line.strip() for line in (repo / ".ci" / "run").read_text().splitlines()]
    assert readme_test_command(repo) in ci_lines


def test_readme_has_exactly_two_setup_commands(repo):
    text = (repo / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", setup, re.S)
    pip = [c for c in commands if "pip install" in c]
    assert len(pip) == 2
    assert pip[0].rstrip().endswith("snakemake --cores 8 all")
    tex = [c for c in commands if "apt-get install" in c]
    assert len(tex) == 1 and "latexmk" in tex[0], "the README set-up installs TeX Live for the paper"
    # CI installs the same packages before it runs the tests
    packages = tex[0].split("apt-get install", 1)[1].split()
    ci = (repo / ".ci" / "run").read_text()
    assert all(p in ci for p in packages if not p.startswith("-")), packages


def test_nothing_the_study_or_ci_needs_names_the_developers_shared_folder(repo):
    """A user's clone has no ../shared: no config, rule, script, library module, profile, CI step or
    test may read from it (the study's inputs are carried in data/)."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split()
    roots = ("Snakefile", "config/", "workflow/", "scripts/", "lib/", "profiles/", ".ci/", "tests/", "envs/",
             "bench/", "pyproject.toml", "constraints.txt")
    # a path into it: "../shared/..." or `... / "shared" / ...` (a check that it is absent is fine)
    pattern = re.compile(r"\.\./shared/|/\s*[\"']shared[\"']\s*(?:/|$)")
    offenders = []
    for name in files:
        path = repo / name
        if not name.startswith(roots) or not path.is_file() or path.suffix in {".safetensors", ".raw", ".jsonl"}:
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1)
                      if pattern.search(line) and "test_repo.py" not in name]
    assert not offenders, offenders


def test_ci_also_runs_the_slow_tier_the_default_leaves_out(repo):
    """The README's command is the fast tier (pyproject's addopts deselect `slow`); CI runs the slow tier
    after it, so nothing marked slow goes unrun."""
    import tomllib

    addopts = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert "-m 'not slow'" in addopts
    ci_lines = [line.strip() for line in (repo / ".ci" / "run").read_text().splitlines()]
    readme = readme_test_command(repo)
    assert "python -m pytest -q -m slow" in ci_lines[ci_lines.index(readme) + 1:]
    assert "python -m pytest -q -m slow" in (repo / "README.md").read_text()
