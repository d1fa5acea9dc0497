"""Repository contracts: CI runs the README's test command; conda env files are well formed."""

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
    assert len(commands) == 2
    assert commands[0].rstrip().endswith("snakemake --cores 8 all")
    assert all("pip install" in c for c in commands)


def test_conda_env_files_are_valid(repo):
    envs = sorted((repo / "envs").glob("*.yaml"))
    assert envs
    for path in envs:
        env = yaml.safe_load(path.read_text())
        assert set(env) <= {"name", "channels", "dependencies"}, path
        assert any(isinstance(d, str) and d.startswith("python") for d in env["dependencies"]), path
        pip = [d for d in env["dependencies"] if isinstance(d, dict)]
        assert all(set(d) == {"pip"} and all(isinstance(x, str) for x in d["pip"]) for d in pip), path


def test_every_rule_env_exists(repo):
    for smk in (repo / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().exists(), (smk, env)
