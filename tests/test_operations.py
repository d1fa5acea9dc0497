"""Workflow operations: the profiles, one model's slice, the paper rebuilt from cached tables on a
fresh clone, and the report."""

import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from smk import fresh_clone, job_counts, planned_jobs, snakemake


# ---------------------------------------------------------------- profiles

def test_short_profile_name_resolves_from_the_repo_root(repo):
    """`--profile slurm` is looked up as a path, then as ./slurm: the root link must reach the profile."""
    link = repo / "slurm"
    assert link.is_symlink() and link.resolve() == (repo / "profiles" / "slurm").resolve()
    assert yaml.safe_load((link / "config.yaml").read_text())["executor"] == "slurm"


def test_slurm_profile_gives_gpus_to_gpu_rules_only(repo, tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    out = snakemake(repo, "-n", "--profile", "slurm", "--configfile", str(repo / "config" / "smoke.yaml"),
                    "-d", str(tmp_path), snakefile=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    jobs = planned_jobs(out.stdout)
    assert jobs and {j["rule"] for j in jobs} >= {"extract_kv", "quality", "time_cpu", "encode"}
    for j in jobs:
        wants_gpu = j["resources"].get("gpu") not in (None, "0")
        assert wants_gpu == (j["rule"] == "extract_kv"), j
    # --mem is the rule's own mem_mb, the figure a local run schedules by (before the model's facts
    # exist, a dry run sizes SmolLM2 by its official card)
    from kvwire.resources import card_shape, job_mem_mb

    cfg = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    quality = next(j for j in jobs if j["rule"] == "quality" and j["wildcards"].get("model") == "smollm2-135m")
    expected = job_mem_mb("quality", card_shape(cfg["models"]["smollm2-135m"]["official"]),
                          tokens=max(cfg["prompts"]["bins"]), batch=cfg["quality"]["batch_size"],
                          continuation=cfg["prompts"]["continuation"])
    assert quality["resources"]["mem_mb"] == str(expected) and quality["resources"]["runtime"] == "120"
    timing = next(j for j in jobs if j["rule"] == "time_cpu")
    assert timing["resources"]["cpus_per_task"] == "8" and "--exclusive" in timing["resources"]["slurm_extra"]


def test_default_profile_holds_only_executor_independent_keys(repo):
    """Snakemake applies profiles/default to SLURM runs too, over --profile, key by key."""
    default = yaml.safe_load((repo / "profiles" / "default" / "config.yaml").read_text())
    slurm = yaml.safe_load((repo / "profiles" / "slurm" / "config.yaml").read_text())
    assert "executor" not in default and "jobs" not in default
    assert not set(default) & set(slurm), "the default profile would silently override the slurm profile"


# ---------------------------------------------------------------- slices

def test_a_model_slice_plans_only_that_models_jobs(repo, tmp_path):
    cfg = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    model, other = list(cfg["models"])[:2]
    out = snakemake(repo, "-n", "--forceall", "--configfile", str(repo / "config" / "smoke.yaml"),
                    "-d", str(tmp_path), "--", f"results/slices/{model}.csv")
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = planned_jobs(out.stdout)
    counts = job_counts(out.stdout)
    n_codecs = len(cfg["codecs"])
    assert counts["quality"] == counts["encode"] == counts["time_cpu"] == n_codecs
    assert counts["fetch_model"] == counts["reference"] == counts["model_slice"] == 1
    for j in jobs:
        if "model" in j["wildcards"]:
            assert j["wildcards"]["model"] == model, j
        else:  # only the shared prompt sets carry no model
            assert j["rule"] == "build_prompts", j
    assert other not in out.stdout.replace(f"{other}.", "")  # not even as an input


def test_slice_manifest_hashes_its_files_and_refuses_another_models(tmp_path):
    from kvwire.stages.manifest import sha256_of, slice_manifest

    a = tmp_path / "results" / "quality" / "m1" / "int8.json"
    a.parent.mkdir(parents=True)
    a.write_text('{"x": 1}')
    t = slice_manifest("m1", [str(a)], tmp_path / "s.csv")
    assert t.loc[0, "bytes"] == 8 and t.loc[0, "sha256"] == sha256_of(a)
    assert pd.read_csv(tmp_path / "s.csv").loc[0, "sha256"] == sha256_of(a)
    b = tmp_path / "results" / "quality" / "m2" / "int8.json"
    b.parent.mkdir(parents=True)
    b.write_text("{}")
    with pytest.raises(ValueError, match="m2/int8.json is not part of model 'm1'"):
        slice_manifest("m1", [str(a), str(b)], tmp_path / "s2.csv")
    assert not (tmp_path / "s2.csv").exists()


# ---------------------------------------------------------------- the paper from cached results

PAPER_JOBS = {"figure", "paper_table", "paper_macros", "paper_pdf", "paper"}


def _is_paper_job(rule: str) -> bool:
    return rule in PAPER_JOBS


def _needs_tex():
    missing = [tool for tool in ("latexmk", "pdflatex", "bibtex", "pdftotext") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"TeX Live is not installed ({', '.join(missing)} missing; README set-up)")


def pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def paper_clone(repo, tmp_path_factory):
    """A fresh clone after `snakemake paper`: (clone, run result, seconds)."""
    _needs_tex()
    clone = fresh_clone(repo, tmp_path_factory.mktemp("paper") / "clone")
    assert not (clone / "resources").exists() and not (clone / "results" / "quality").exists()
    t0 = time.perf_counter()
    out = snakemake(clone, "paper", cwd=clone, snakefile=False, timeout=300)
    return clone, out, time.perf_counter() - t0


@pytest.mark.slow  # builds the paper or runs the workflow in a fresh clone
def test_paper_rebuilds_every_figure_from_the_published_tables_alone(repo, paper_clone):
    clone, out, seconds = paper_clone
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    ran = set(re.findall(r"^(?:local)?rule (\w+):", log, re.M))
    assert all(map(_is_paper_job, ran)), ran  # nothing of the study, and no nested Snakemake
    assert {"figure", "paper_table", "paper_macros", "paper_pdf"} <= ran
    drawn = set(re.findall(r"wildcards: root=paper, figure=(\w+)", log))
    assert {"pareto", "decision_flowchart"} <= drawn
    # nothing of the study ran: no model, no KV cache, no timing, no table of this run
    assert not (clone / "resources").exists() and not (clone / "results" / "kv").exists()
    assert not (clone / "results" / "tables").exists()
    from kvwire.stages.figures import __name__ as _  # noqa: F401  (matplotlib draws them: the figures are real)
    import matplotlib.image as mpimg

    figures = sorted((clone / "paper" / "figures").glob("*.png"))
    assert len(figures) >= 10
    for png in figures:
        h, w = mpimg.imread(png).shape[:2]
        assert h > 200 and w > 200, png
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    # the published tables are sources: untouched
    for table in (repo / "paper" / "tables").glob("*.csv"):
        assert (clone / "paper" / "tables" / table.name).read_bytes() == table.read_bytes(), table.name
    # (its wall time, about 45 s on an idle 2-core machine, is in docs/OPERATIONS.md, not asserted:
    # a loaded CI machine is no benchmark)


@pytest.mark.slow  # builds the paper or runs the workflow in a fresh clone
def test_a_paper_artefact_asked_for_by_its_path_plans_only_paper_jobs(repo, tmp_path):
    """`snakemake paper/kvwire.pdf` (or one figure) on a fresh clone: the published tables are
    sources, so the plan holds the figure, table, macro and latexmk jobs and nothing of the study."""
    clone = fresh_clone(repo, tmp_path / "clone")
    for target in ("paper/kvwire.pdf", "paper/figures/pareto.png"):
        out = snakemake(clone, "-n", target, cwd=clone, snakefile=False)
        assert out.returncode == 0, out.stderr[-3000:]
        counts = job_counts(out.stdout)
        assert counts and all(map(_is_paper_job, counts)), counts
    assert counts == {"figure": 1}
    pdf = job_counts(snakemake(clone, "-n", "paper/kvwire.pdf", cwd=clone, snakefile=False).stdout)
    assert pdf["paper_pdf"] == 1 and pdf["paper_table"] == 4 and sum(pdf.values()) >= 15


@pytest.mark.slow  # builds the paper or runs the workflow in a fresh clone
def test_the_paper_pdf_resolves_every_reference_citation_and_macro(paper_clone):
    clone, out, _ = paper_clone
    assert out.returncode == 0
    log = (clone / "paper" / "kvwire.log").read_text(errors="replace")  # the last pdflatex pass
    assert "undefined" not in log.lower(), [line for line in log.splitlines() if "undefined" in line.lower()]
    assert "Undefined control sequence" not in log and "Rerun to get" not in log
    text = pdf_text(clone / "paper" / "kvwire.pdf")
    assert "??" not in text and "[?]" not in text
    assert "no data" not in text  # every cached table is committed
    assert len(re.findall(r"\f", text)) >= 6  # pages
    # the numbers in the text are the generated ones
    macros = dict(re.findall(r"\\newcommand\{\\(kw\w+)\}\{([^{}]*)\}",
                             (clone / "paper" / "generated" / "macros.tex").read_text()))
    assert f"median factor of {macros['kwShiftMedian']}" in " ".join(text.split())
    bib = (clone / "paper" / "kvwire.bbl").read_text()
    cited = set(re.findall(r"\\cite\{([^}]+)\}", (clone / "paper" / "kvwire.tex").read_text()))
    assert all(f"{{{key}}}" in bib for keys in cited for key in keys.split(","))


@pytest.mark.slow  # builds the paper or runs the workflow in a fresh clone
def test_paper_with_a_missing_cached_table_says_so_and_runs_no_experiment(repo, tmp_path):
    _needs_tex()
    clone = fresh_clone(repo, tmp_path / "clone")
    (clone / "paper" / "tables" / "e2e_transfer.csv").unlink()
    out = snakemake(clone, "paper", cwd=clone, snakefile=False, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = " ".join(pdf_text(clone / "paper" / "kvwire.pdf").split())
    assert "no data: paper/tables/e2e_transfer.csv is missing" in text
    assert "figure e2e_model_vs_measured was not built" in text
    assert not (clone / "paper" / "figures" / "e2e_model_vs_measured.pdf").exists()
    assert (clone / "paper" / "figures" / "pareto.pdf").exists()
    assert not (clone / "resources").exists() and not (clone / "results" / "e2e_transfer.csv").exists()


@pytest.mark.slow  # builds the paper or runs the workflow in a fresh clone
def test_report_captions_every_figure_and_table(repo, paper_clone):
    clone, out, _ = paper_clone
    assert out.returncode == 0
    rep = snakemake(clone, "--report", "report.html", "paper", cwd=clone, snakefile=False, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    html = (clone / "report.html").read_text()
    rules_dir = repo / "workflow" / "rules"
    reported = []  # (rule, output path, caption name)
    for smk in rules_dir.glob("*.smk"):
        for block in re.split(r"\n(?=[ ]*rule \w+:)", smk.read_text()):
            name = re.match(r"\s*rule (\w+):", block)
            for path, caption in re.findall(r'report\(\s*"([^"]+)",\s*caption="\.\./report/(\w+)\.rst"', block):
                reported.append((name.group(1), path, caption))
    assert len(reported) >= 25
    from kvwire.figures import FIGURES

    # rule figure draws every registered figure ({figure}), its caption the figure's own (kvwire.figures)
    captions = {}
    for rule, path, caption in list(reported):
        text = (repo / "workflow" / "report" / f"{caption}.rst").read_text()
        if "{figure}" in path:
            assert "snakemake.params.caption" in text
            reported.remove((rule, path, caption))
            for name, fig in FIGURES.items():
                reported.append((rule, path.replace("{figure}", name), name))
                captions[path.replace("{figure}", name)] = fig.caption
    for rule, path, caption in reported:
        text = captions.get(path) or (repo / "workflow" / "report" / f"{caption}.rst").read_text()
        assert re.search(rf"\b{rule}\b", text), f"caption {caption} does not name its rule {rule}"
        if (clone / path.replace("{root}", "paper")).exists():
            assert Path(path).name in html, path
    # every published table is a table some rule writes (and marks for the report), and every paper
    # figure is marked
    marked = {p.replace("{root}", "paper") for _, p, _ in reported}
    made = {Path(p).name for p in marked if p.startswith("results/tables/")}
    published = {p.name for p in (repo / "paper" / "tables").glob("*.csv")}
    assert published - made == set()
    figures = {f"paper/figures/{p.name}" for p in (clone / "paper" / "figures").glob("*.png")}
    assert figures - marked == set()


@pytest.mark.slow  # builds the paper or runs the workflow in a fresh clone
def test_the_paper_without_tex_stops_with_the_line_that_installs_it(repo, tmp_path):
    """latexmk is looked for before it runs: without TeX Live the job fails with the one apt-get
    line of the README's set-up (not a latexmk 'command not found' in a log)."""
    import os
    import sys

    clone = fresh_clone(repo, tmp_path / "clone")
    plan = snakemake(clone, "-n", "paper/kvwire.pdf", cwd=clone, snakefile=False)
    job = next(j for j in planned_jobs(plan.stdout) if j["rule"] == "paper_pdf")
    inputs = re.search(r"rule paper_pdf:\n\s+input: (.*)\n", plan.stdout).group(1).split(", ")
    for path in inputs:  # what the other paper jobs would make, so that only paper_pdf runs
        if not (clone / path).exists():
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            (clone / path).write_text("stand-in\n")
    assert job
    bare = tmp_path / "bin"  # a PATH with the venv's python and a shell's basics, and no TeX
    bare.mkdir()
    for tool in ("bash", "sh", "which", "tee", "cat", "env", "dirname", "mkdir", "rm", "tail", "date", "uname"):
        if shutil.which(tool):
            (bare / tool).symlink_to(shutil.which(tool))
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{bare}"}
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "paper/kvwire.pdf",
                          "--allowed-rules", "paper_pdf"], cwd=clone, capture_output=True, text=True,
                         timeout=120, env={**os.environ, **env})
    assert out.returncode != 0
    readme = (repo / "README.md").read_text()
    install = re.search(r"(sudo apt-get install -y --no-install-recommends latexmk[^\n]*)", readme).group(1)
    assert install in out.stdout + out.stderr
    assert install in (clone / "logs" / "paper" / "latexmk.log").read_text()
