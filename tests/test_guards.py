"""Run-directory guards: one process at a time (even after a SIGKILL), same data on resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from instructkit.errors import UserError
from instructkit.train.guards import (
    LOCK_FILE,
    RunLock,
    check_fingerprint,
    owned_run_dir,
    records_fingerprint,
    save_fingerprint,
)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from instructkit.train.guards import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_a_second_process_is_refused_until_the_first_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by instructkit process {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops a dead process's lock; nothing is left stuck
        try:
            lock = RunLock(tmp_path).acquire()
            break
        except UserError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    lock.release()


def test_the_same_process_can_take_the_lock_again_after_release(tmp_path):
    with RunLock(tmp_path):
        pass
    with RunLock(tmp_path):
        pass


def test_release_removes_the_lock_file_and_a_stale_handle_is_not_a_lock(tmp_path):
    first = RunLock(tmp_path).acquire()
    with open(tmp_path / LOCK_FILE) as stale:  # a racer opened it before the owner released it
        first.release()
        assert not (tmp_path / LOCK_FILE).exists()
        second = RunLock(tmp_path).acquire()  # takes a new file, not the removed one
        assert os.stat(tmp_path / LOCK_FILE).st_ino != os.fstat(stale.fileno()).st_ino
    second.release()


def test_owned_run_dir_removes_a_directory_it_created_only_while_empty(tmp_path):
    with pytest.raises(RuntimeError), owned_run_dir(tmp_path / "failed"):
        assert (tmp_path / "failed" / LOCK_FILE).exists()
        raise RuntimeError("setup failed")
    assert not (tmp_path / "failed").exists()
    with owned_run_dir(tmp_path / "kept"):
        (tmp_path / "kept" / "config.yaml").write_text("")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["config.yaml"]


def test_changed_data_is_refused_and_the_same_data_accepted(tmp_path):
    records = [{"instruction": f"i{n}", "input": "", "output": "o"} for n in range(5)]
    save_fingerprint(tmp_path, records_fingerprint(records))
    check_fingerprint(tmp_path, records_fingerprint([dict(r) for r in records]), "d.json")
    with pytest.raises(UserError, match=r"d.json: the data changed .*5 records then, 3 now"):
        check_fingerprint(tmp_path, records_fingerprint(records[:3]), "d.json")
    edited = records[:4] + [{"instruction": "i4", "input": "", "output": "other"}]
    with pytest.raises(UserError, match="5 records, contents differ"):
        check_fingerprint(tmp_path, records_fingerprint(edited), "d.json")
