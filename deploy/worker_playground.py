"""A worker's Playground: the manager and safety checker `python app.py` would build, used
only to run requests (`generate_here`); the ingress keeps the line and stores the results."""

from __future__ import annotations

import atexit
import shlex
import shutil
import tempfile
from pathlib import Path

import app
from pipelines.models.startup import start_manager
from pipelines.outputs.results import ResultStore
from pipelines.service import Playground


def parsed_flags(flags: str | list[str]):
    """The app's own flags (`--demo --max-queue 32`), as `python app.py` parses them."""
    return app.parse_args(shlex.split(flags) if isinstance(flags, str) else list(flags))


def worker_playground(args, context_parallel=None, time_limit_seconds: float | None = None) -> Playground:
    """`context_parallel`: the transformers' ContextParallelConfig on a worker of several
    ranks; `time_limit_seconds`: instead of the flags' (0: the caller keeps the limit)."""
    manager, demo_reason, plan = start_manager(args, context_parallel=context_parallel)
    safety = app.safety_checker(args, manager)
    unused_store = ResultStore(scratch_folder("flux-worker-results-"), retention_seconds=3600)
    limit = args.time_limit if time_limit_seconds is None else time_limit_seconds
    return Playground(manager, unused_store, demo_reason, safety, time_limit_seconds=limit, memory_plan=plan)


def scratch_folder(prefix: str) -> Path:
    """A temporary folder of this process, removed when it ends (normally)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, True)
    return Path(folder)
