"""The result store's JSON-lines index: record, history, compaction on sweep, restarts."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from pipelines.outputs.results import ResultStore


def stored(store: ResultStore, mode: str = "text_to_image", extension: str = "png", **entry) -> str:
    result_id = store.save(b"image bytes", extension)
    store.record(result_id, {"mode": mode, **entry})
    return result_id


def index_lines(store: ResultStore) -> list[str]:
    return store.index_path.read_text(encoding="utf-8").splitlines()


def age(store: ResultStore, result_id: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(store.folder / result_id, (then, then))


def test_history_is_newest_first_limited_and_filtered(tmp_path):
    store = ResultStore(tmp_path)
    ids = [stored(store, mode="kontext_edit" if i % 2 else "text_to_image", n=i) for i in range(6)]
    history = store.history()
    assert [entry["id"] for entry in history] == ids[::-1]
    assert [entry["n"] for entry in store.history(limit=2)] == [5, 4]
    assert [entry["n"] for entry in store.history(mode="kontext_edit")] == [5, 3, 1]
    assert [entry["n"] for entry in store.history(limit=1, mode="text_to_image")] == [4]
    assert store.history(limit=0) == [] and len(store.history(limit=None)) == 6
    assert store.history(mode="redux_variation") == []


def test_an_entry_carries_id_created_and_the_fields_given(tmp_path):
    store = ResultStore(tmp_path)
    before = time.time()
    result_id = stored(store, prompt="a cat ☕", seed=42, id="not mine", created=0)
    (entry,) = store.history()
    assert entry == {"id": result_id, "created": entry["created"], "mode": "text_to_image",
                     "prompt": "a cat ☕", "seed": 42}
    assert before <= entry["created"] <= time.time()
    assert list(entry)[:2] == ["id", "created"]


def test_record_refuses_what_is_not_a_result_id(tmp_path):
    with pytest.raises(ValueError):
        ResultStore(tmp_path).record("../etc/passwd", {})


def test_history_skips_results_whose_file_is_gone(tmp_path):
    store = ResultStore(tmp_path)
    kept, gone = stored(store), stored(store)
    (store.folder / gone).unlink()
    assert [entry["id"] for entry in store.history()] == [kept]


def test_empty_store_has_no_history(tmp_path):
    store = ResultStore(tmp_path)
    assert store.history() == [] and store.compact_index() == 0 and store.sweep() == 0


def test_sweep_removes_old_files_and_their_index_lines(tmp_path):
    store = ResultStore(tmp_path, retention_seconds=3600)
    old, fresh = stored(store, n=1), stored(store, n=2)
    missing = stored(store, n=3)
    age(store, old, 7200)
    (store.folder / missing).unlink()
    assert store.sweep() == 1
    assert not (store.folder / old).exists() and (store.folder / fresh).exists()
    assert [json.loads(line)["id"] for line in index_lines(store)] == [fresh]
    assert [entry["id"] for entry in store.history()] == [fresh]
    assert not list(store.folder.glob(".*.part"))  # the temporary index is gone


def test_sweep_leaves_an_index_with_nothing_to_drop_untouched(tmp_path):
    store = ResultStore(tmp_path)
    stored(store)
    before = store.index_path.stat()
    store.sweep()
    assert store.index_path.stat().st_ino == before.st_ino


def test_sweep_now_zero_is_a_time_not_a_default(tmp_path):
    store = ResultStore(tmp_path, retention_seconds=1)
    stored(store)
    assert store.sweep(now=0) == 0  # nothing is older than 1 s before the epoch


def test_index_survives_a_restart(tmp_path):
    first = ResultStore(tmp_path)
    ids = [stored(first, n=i) for i in range(3)]
    second = ResultStore(tmp_path)
    assert [entry["id"] for entry in second.history()] == ids[::-1]
    newer = stored(second, n=3)
    assert [entry["id"] for entry in ResultStore(tmp_path).history()] == [newer, *ids[::-1]]


def test_corrupt_lines_are_skipped_and_dropped_by_compaction(tmp_path):
    store = ResultStore(tmp_path)
    first = stored(store, n=1)
    with open(store.index_path, "a", encoding="utf-8") as index:
        index.write('{"id": "broken\n[1, 2]\n{"id": "../x.png"}\n\n\xff not json\n')
    second = stored(store, n=2)
    assert [entry["id"] for entry in store.history()] == [second, first]
    assert store.compact_index() == 5  # the blank line too
    assert len(index_lines(store)) == 2


def test_a_partial_last_line_costs_only_itself(tmp_path):
    store = ResultStore(tmp_path)
    first = stored(store)
    with open(store.index_path, "ab") as index:
        index.write(b'{"id": "cut off by a cra')  # no newline: a write interrupted
    second = stored(store)
    assert [entry["id"] for entry in store.history()] == [second, first]


def test_history_reads_across_block_boundaries(tmp_path, monkeypatch):
    from pipelines.outputs import results

    store = ResultStore(tmp_path)
    ids = [stored(store, prompt="x" * (i * 7)) for i in range(30)]
    original = results._lines_from_end
    monkeypatch.setattr(results, "_lines_from_end", lambda path: original(path, block_size=16))
    assert [entry["id"] for entry in store.history(limit=None)] == ids[::-1]


def test_concurrent_records_lose_no_line(tmp_path):
    store = ResultStore(tmp_path)
    ids = [store.save(b"x", "webp") for _ in range(8)]
    per_thread = 200
    start = threading.Barrier(8)

    def writer(thread: int) -> None:
        start.wait()
        for i in range(per_thread):
            store.record(ids[thread], {"thread": thread, "i": i, "prompt": "p" * 300})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = [json.loads(line) for line in index_lines(store)]
    assert len(entries) == 8 * per_thread
    assert {(entry["thread"], entry["i"]) for entry in entries} == {
        (n, i) for n in range(8) for i in range(per_thread)}
    assert len(store.history(limit=None)) == 8 * per_thread
