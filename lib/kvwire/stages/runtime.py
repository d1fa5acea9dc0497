"""Process set-up shared by the stages: logging to a file and the console, seeds, torch threads, and
an uncaught error written to the job's log (with its traceback) instead of only to the console.
Importing it does not import torch (table and figure jobs never need it: 2 s per job)."""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path

LOG = logging.getLogger("kvwire")
# ``LOG.warning(..., extra=FILE_ONLY)``: for the job's log only, not the console (a warning every
# job of a run would repeat; the workflow says it once per run instead).
FILE_ONLY = {"file_only": True}


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def setup(log_path: str | Path | None = None, *, threads: int | None = None, seed: int = 0) -> None:
    """Log to ``log_path`` and stderr; fix torch's thread count and the seeds (results must not
    depend on how many cores the scheduler happened to give the job). An uncaught exception is
    written to ``log_path`` with its traceback, and to stderr as one line that names the log."""
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_ConsoleFilter())
    handlers: list[logging.Handler] = [console]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)
    sys.excepthook = _log_uncaught(log_path)
    if log_path:
        atexit.register(_log_usage, time.perf_counter(), time.process_time())
    random.seed(seed)
    # torch is seeded and threaded where a stage uses it (its module imported it already) or asked
    if threads or "torch" in sys.modules:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        torch.manual_seed(seed)


def _log_uncaught(log_path: str | Path | None):
    """The hook that reports an error the stage did not catch: traceback into the job's log (a
    Snakemake failure message names that log, and prints it with --show-failed-logs), one line on
    the console, where progress bars of other jobs would bury a traceback."""
    from ..errors import KvwireError

    def hook(kind, exc, tb):
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(LOG.makeRecord(LOG.name, logging.ERROR, __file__, 0, "%s", (
                    "".join(traceback.format_exception(kind, exc, tb)).rstrip(),), None))
                handler.flush()
        what = "error" if issubclass(kind, KvwireError) else f"unexpected {kind.__name__}"
        where = f" (traceback in {log_path})" if log_path else ""
        print(f"kvwire: {what}: {exc}{where}", file=sys.stderr, flush=True)
        if not log_path:
            sys.__excepthook__(kind, exc, tb)

    return hook


USAGE_MARK = "kvwire-usage"


def _log_usage(wall0: float, cpu0: float) -> None:
    """The job's last log line: its exact peak resident memory (the kernel's high-water mark, which
    Snakemake's benchmark file can only sample) beside the mem_mb and threads it declared, for the
    resources table (kvwire.stages.usage)."""
    import resource

    job = getattr(sys.modules.get("__main__"), "snakemake", None)  # the rule's script object, if any
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    record = {
        "rule": getattr(job, "rule", None),
        "declared_mem_mb": _declared(job, "mem_mb"),
        "threads": getattr(job, "threads", None),
        "peak_rss_mb": round(peak_kb / 1024, 1),  # ru_maxrss is in kB on Linux
        "wall_s": round(time.perf_counter() - wall0, 3),
        "cpu_s": round(time.process_time() - cpu0, 3),
        "cpu": cpu_model(),
    }
    LOG.info("%s %s", USAGE_MARK, json.dumps(record), extra=FILE_ONLY)


def _declared(job, name: str):
    try:
        value = getattr(job.resources, name)
    except AttributeError:
        return None
    return value if isinstance(value, (int, float)) else None


def cpu_model() -> str:
    """This host's CPU model (what every CPU time is measured on)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine
