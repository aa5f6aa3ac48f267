"""The durable job store: written before an id is handed out, found again by a new process."""

from __future__ import annotations

import subprocess
import sys
import time

from pipelines.jobs.store import JobRecord, JobStore


def test_a_job_is_on_disk_when_added_and_a_new_process_reads_it(tmp_path):
    store = JobStore(tmp_path)
    store.add(JobRecord(id="j1", api="runpod", route="dev", mode="text_to_image", request={"prompt": "a fox"}))
    store.add(JobRecord(id="j2", api="fal", route="flux/dev", mode="text_to_image", request={"prompt": "a cat"}))
    store.update("j1", status="running", started_at=time.time(), attempts=1)
    # Another process, as after a restart, without this one closing anything.
    script = ("from pipelines.jobs.store import JobStore; import sys; "
              "print([(j.id, j.status, j.request['prompt']) for j in JobStore(sys.argv[1]).unfinished()])")
    seen = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    assert seen.stdout.strip() == "[('j1', 'running', 'a fox'), ('j2', 'queued', 'a cat')]"


def test_counts_queued_and_sweep(tmp_path):
    store = JobStore(tmp_path)
    for number in range(4):
        store.add(JobRecord(id=f"j{number}", api="runpod", route="dev", mode="text_to_image", request={}))
    store.update("j0", status="completed", finished_at=time.time() - 100, attempts=2, result={"seed": 1})
    store.update("j1", status="failed", finished_at=time.time(), attempts=1, error="no")
    assert store.counts("runpod", "dev") == {"queued": 2, "running": 0, "completed": 1, "failed": 1,
                                             "cancelled": 0, "retried": 1}
    assert store.counts("fal")["queued"] == 0
    assert [job.id for job in store.queued("runpod", "dev")] == ["j2", "j3"]
    assert [job.id for job in store.sweep(time.time() - 50)] == ["j0"]
    assert store.get("j0") is None and store.get("j1").error == "no"
