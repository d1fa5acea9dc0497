"""Memory: what the machine has, and what a job of the study needs (its ``mem_mb``).

A local run (`snakemake --cores N`) never starts jobs whose declared ``mem_mb`` add up to more than
the machine's available memory (the workflow registers :func:`available_mem_mb` as Snakemake's
global ``mem_mb`` unless the command line or a profile sets one); on SLURM each job's ``mem_mb``
becomes its ``--mem``. The figures behind :data:`PEAK_MODEL` were measured on the study's own jobs
(their benchmark files, `results/tables/resources.csv`; docs/OPERATIONS.md#memory).
Importing this module imports neither torch nor pandas (the Snakefile imports it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError
from .windows import kept_tokens, layout_of

# Left to the OS, Snakemake itself and page cache when the global limit is set from MemAvailable.
RESERVE_MB = 1024


def available_mem_mb(meminfo: str | Path = "/proc/meminfo", *, reserve_mb: int = RESERVE_MB) -> int:
    """The memory a run may hand out to its jobs: MemAvailable less ``reserve_mb`` (cgroup limits
    included where one is lower), at least 1 MB."""
    avail = _meminfo_mb(Path(meminfo), "MemAvailable")
    if avail is None:  # not Linux: all physical memory
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        except (ValueError, OSError, AttributeError):
            avail = 4096
    limit = _cgroup_limit_mb()
    if limit is not None:
        avail = min(avail, limit)
    return max(1, int(avail) - int(reserve_mb))


def gpu_visible() -> bool:
    """Whether a CUDA GPU is visible to this process, without importing torch (the Snakefile asks):
    an NVIDIA device node and no CUDA_VISIBLE_DEVICES that hides every device."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def _meminfo_mb(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == key:
                return int(rest.split()[0]) // 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit_mb() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text) // 2**20
    return None


# ---------------------------------------------------------------------------------------- mem_mb

# What a job holds at its peak, estimated from the model's shape and the job's tokens (MB), and the
# line fitted to the measured peaks of the study's jobs: peak ≈ base + slope · estimate. The fit and
# its data are in docs/OPERATIONS.md#memory (results/tables/resources.csv of the default study on
# the 2-core CI machine, plus the smoke study); declared mem_mb adds MARGIN on top.
MEM_FIT: dict[str, tuple[float, float]] = {
    # rule: (base MB, slope), from `python bench/fit_memory.py` on 265 jobs with a logged peak: the
    # default study from a fresh clone, the same at 7 prompts per bin with offload contexts to 32k
    # (config/full.yaml), the smoke study and the fresh-clone test's reduced default
    "fetch_model": (422.0, 1.83),
    # base raised by 1030 MB over the 265-job fit (1133): Qwen2.5-0.5B's extraction peaked at 4028 MB at
    # every bin (the dense model's load, not the tokens), 1021 MB over the old line at 256 tokens
    "extract_kv": (2163.0, 1.50),
    "reference": (744.0, 1.79),
    "quality": (450.0, 2.50),
    "encode": (354.0, 0.68),
    "time_cpu": (354.0, 1.58),
    "kv_statistics": (353.0, 0.51),
    "offload_trace": (1431.0, 0.55),
    "router": (354.0, 0.68),  # encode's fit: it reads one cache at a time (own peaks 354-379 MB)
}
MARGIN = 1.25  # over the fitted peak: allocator slack, and shapes between the measured ones
FLOOR_MB = 600  # python, torch and transformers imported: no job of the study peaked below 350 MB
MB = 2**20


def model_shape(facts: Mapping) -> dict:
    """The shape numbers memory depends on, from facts.json (or an official card's config)."""
    def num(*keys, default=None):
        for key in keys:
            if facts.get(key) is not None:
                return int(facts[key])
        if default is None:
            raise ConfigError(f"model facts lack {keys[0]!r}: cannot size the job's memory")
        return default

    heads = num("num_heads", "num_attention_heads")
    hidden = num("hidden_size")
    shape = {
        "layers": num("num_layers", "num_hidden_layers"),
        "heads": heads,
        "kv_heads": num("num_kv_heads", "num_key_value_heads", default=heads),
        "head_dim": num("head_dim", default=hidden // heads),
        "hidden": hidden,
        "intermediate": num("intermediate_size", default=4 * hidden),
        "vocab": num("vocab_size"),
        # a trace longer than the model's positions is cut to fit (kvwire.offload.trace)
        "positions": num("max_position_embeddings", default=2**31),
    }
    # sliding-window layout (kvwire.windows): extracted caches keep min(tokens, window - 1) tokens there
    types, window = layout_of(facts)
    shape["sliding_window"], shape["layer_types"] = window, types
    params = facts.get("num_parameters")
    # transformers' default ties the embeddings (a card that does not say so, Gemma-3's, does tie them)
    tied = facts.get("tie_word_embeddings")
    shape["params"] = int(params) if params else _params_from_shape(shape, tied=True if tied is None else bool(tied))
    return shape


def _params_from_shape(s: Mapping, *, tied: bool) -> int:
    attention = s["hidden"] * s["head_dim"] * (2 * s["heads"] + 2 * s["kv_heads"])
    mlp = 3 * s["hidden"] * s["intermediate"]
    return s["vocab"] * s["hidden"] * (1 if tied else 2) + s["layers"] * (attention + mlp)


def card_shape(official: str) -> dict | None:
    """The shape of an official model card (an embedded one, lib/kvwire/model_cards, by repo id, or
    a card or config.json path), read without torch: what sizes a model's jobs before it exists."""
    from importlib import resources as importlib_resources

    if not official:
        return None
    if official.endswith(".json"):
        entry = Path(official).expanduser()
    else:
        entry = importlib_resources.files("kvwire") / "model_cards" / (official.replace("/", "__") + ".json")
    if not entry.is_file():
        return None
    try:
        card = json.loads(entry.read_text(encoding="utf-8"))
        return model_shape(card.get("config", card))
    except (json.JSONDecodeError, ConfigError, TypeError, ValueError):
        return None


def source_shape(source: str) -> dict | None:
    """The shape of a ``local:`` model directory from its config.json (None for other sources, or a
    directory without one): a local model is sized before its facts exist, without loading it."""
    scheme, _, path = source.partition(":")
    if scheme != "local":
        return None
    return card_shape(str(Path(path) / "config.json")) if Path(path).is_dir() else None


def peak_estimate_mb(rule: str, shape: Mapping, *, tokens: int = 0, batch: int = 1, continuation: int = 0,
                     attention: bool = False) -> float:
    """The bytes a job of ``rule`` must hold at once (MB): weights in the job's dtype, the largest
    activations (logits over the vocabulary, attention probabilities when they are kept) and KV caches.
    ``tokens``: the longest prefix the job handles; ``batch``: prompts handled together."""
    p, v, layers = shape["params"], shape["vocab"], shape["layers"]
    kv_dim = shape["kv_heads"] * shape["head_dim"]
    width = 4 * shape["hidden"] + 3 * shape["intermediate"]  # a layer's widest activations per token
    # tokens over all layers of one prompt's cache as extracted: a sliding-window layer keeps only
    # min(tokens, window - 1) (kvwire.windows.kept_tokens); the prefill itself still holds every token
    kept = sum(kept_tokens(shape.get("layer_types"), shape.get("sliding_window"), tokens, n_layers=layers)) \
        if shape.get("sliding_window") else layers * tokens
    cache_bf16 = 2 * kv_dim * kept * 2  # one prompt's cache as extracted
    full_bf16 = layers * 2 * kv_dim * tokens * 2  # ... and as the prefill holds it
    if rule == "fetch_model":  # GGUF dequantized to float32, then the dense bf16 copy
        est = 4 * p + 2 * p
    elif rule == "extract_kv":  # bf16 model and activations; logits of the last position only;
        # attention probabilities recomputed in blocks of at most 256 MB when kept (kv.prefill_stats)
        est = 2 * p + batch * (full_bf16 + tokens * width * 2)
        if attention:
            est += min(2**28, batch * shape["heads"] * tokens * tokens * 4)
    elif rule in ("reference", "quality"):  # float32 model and caches; the continuation's logits
        t = tokens + continuation
        est = 4 * p + batch * (2 * kv_dim * (kept + layers * continuation) * 4 + continuation * (v + width) * 4
                               + shape["heads"] * continuation * t * 4)
    elif rule in ("encode", "time_cpu", "kv_statistics"):  # one prompt's cache, its decoded copy, the bytes
        est = 3 * cache_bf16
    elif rule == "offload_trace":  # bf16 model; a chunk's activations and attention; the whole cache
        tokens = min(tokens, shape.get("positions", tokens))
        cache_bf16 = layers * 2 * kv_dim * tokens * 2
        chunk = min(tokens, 2048)
        est = 2 * p + chunk * width * 2 + cache_bf16 + shape["heads"] * chunk * tokens * 4
    elif rule == "router":
        est = batch * cache_bf16
    else:
        raise ConfigError(f"no memory model for rule {rule!r} (known: {', '.join(MEM_FIT)})")
    return est / MB


def job_mem_mb(rule: str, shape: Mapping, **work) -> int:
    """The mem_mb a job of ``rule`` declares: the fitted peak for its estimate, with MARGIN, rounded
    up to 100 MB."""
    base, slope = MEM_FIT[rule]
    peak = base + slope * peak_estimate_mb(rule, shape, **work)
    return max(FLOOR_MB, int(math.ceil(MARGIN * peak / 100.0) * 100))


def facts_mem_mb(rule: str, facts_path: str | Path, **work) -> int:
    """:func:`job_mem_mb` for the model whose facts.json is at ``facts_path``."""
    try:
        facts = json.loads(Path(facts_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot size {rule}'s memory: {facts_path} unreadable ({exc})") from None
    return job_mem_mb(rule, model_shape(facts), **work)
