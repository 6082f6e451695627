"""Faults around files: atomic results.json, the output folder (file, read-only, locked by another
run) and malformed cached method results."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jaxcl import report
from jaxcl.unlearn.store import RunStore, method_entry_problems

REPO = Path(__file__).resolve().parents[1]


# ---- write_json ---------------------------------------------------------------------------------


def test_write_json_uses_a_unique_temporary_file_in_the_same_folder(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace

    def spy(src, dst):
        renamed.append((src, dst))
        return real_replace(src, dst)

    monkeypatch.setattr(report.os, "replace", spy)
    target = tmp_path / "results.json"
    report.write_json(str(target), {"a": 1})
    report.write_json(str(target), {"a": 2})
    (src1, dst1), (src2, dst2) = renamed
    assert dst1 == dst2 == str(target) and src1 != src2
    for src in (src1, src2):
        assert os.path.dirname(src) == str(tmp_path)
        assert os.path.basename(src).startswith(".results-") and src.endswith(".tmp")
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # no temporary file left
    assert (target.stat().st_mode & 0o777) == 0o666 & ~_umask()  # not mkstemp's 0600


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_write_json_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "results.json"
    report.write_json(str(target), {"ok": [1, 2]})
    with pytest.raises(TypeError):
        report.write_json(str(target), {"bad": object()})  # not JSON-able: fails mid-write
    assert json.loads(target.read_text()) == {"ok": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_concurrent_writers_never_corrupt_the_file(tmp_path):
    target = str(tmp_path / "results.json")
    n_writers, n_writes = 4, 40
    errors, reads = [], []
    stop = threading.Event()

    def writer(w):
        try:
            for k in range(n_writes):
                report.write_json(target, {"writer": w, "k": k, "pad": [w] * 5000})
        except Exception as e:  # collected: an assertion in a thread would be lost
            errors.append(repr(e))

    def reader():
        while not stop.is_set():
            try:
                with open(target) as f:
                    reads.append(json.load(f))
            except FileNotFoundError:
                pass  # before the first rename
            except Exception as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(n_writers)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert errors == []
    assert reads, "the reader never saw the file"
    for obj in reads:  # every read is one whole object of one writer
        assert obj["pad"] == [obj["writer"]] * 5000
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


# ---- prepare_out_dir ----------------------------------------------------------------------------


def test_prepare_out_dir_creates_parents_and_leaves_no_probe(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    assert report.prepare_out_dir(str(out)) == str(out)
    assert out.is_dir() and os.listdir(out) == []
    assert report.prepare_out_dir(str(out)) == str(out)  # an existing folder is fine


def test_prepare_out_dir_rejects_a_file(tmp_path):
    f = tmp_path / "results"
    f.write_text("x")
    with pytest.raises(report.OutputDirError, match=r"exists and is a file.*pass --out to a writable"):
        report.prepare_out_dir(str(f))
    assert issubclass(report.OutputDirError, ValueError)
    assert f.read_text() == "x"


def test_prepare_out_dir_rejects_a_folder_that_cannot_be_created(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    bad = f / "sub"  # under a file: fails even for root
    with pytest.raises(report.OutputDirError, match="pass --out to a writable folder") as e:
        report.prepare_out_dir(str(bad))
    assert str(bad) in str(e.value)


def test_prepare_out_dir_rejects_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip("this user (root) can write into a read-only folder")
        except PermissionError:
            pass
        with pytest.raises(report.OutputDirError, match="cannot be created or written") as e:
            report.prepare_out_dir(str(ro))
        assert str(ro) in str(e.value)
    finally:
        ro.chmod(0o755)


# ---- lock_out_dir -------------------------------------------------------------------------------

HOLD = """
import sys, time
from jaxcl import report
with report.lock_out_dir(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_lock_out_dir_refuses_a_second_run_and_frees_on_exit(tmp_path):
    out = tmp_path / "run"
    with report.lock_out_dir(str(out)) as lock:
        assert lock == str(out / ".jaxcl.lock")
        assert Path(lock).read_text().strip() == str(os.getpid())
        with pytest.raises(report.OutputDirError, match=f"pid {os.getpid()}"):  # a second open file
            with report.lock_out_dir(str(out)):
                pass
    with report.lock_out_dir(str(out)):  # released on exit
        pass


def test_lock_out_dir_another_process_and_a_stale_lock(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        expected = (
            f"another jaxcl run (pid {proc.pid}) is writing to {out}; wait for it or pass another --out"
        )
        with pytest.raises(report.OutputDirError) as e:
            with report.lock_out_dir(str(out)):
                pass
        assert str(e.value) == expected
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    lock = out / ".jaxcl.lock"
    assert lock.read_text().strip() == str(proc.pid)  # killed: its lock file stays behind
    with report.lock_out_dir(str(out)):  # but does not block
        assert lock.read_text().strip() == str(os.getpid())


# ---- cached method results ----------------------------------------------------------------------

GOOD = {
    "metrics": {"forget_acc": [0.1, 0.2], "retain_acc": [0.9, 0.8]},
    "relearn_curve": [[0.1, 0.5], [0.2, 0.6]],
    "weight_change": 1.5,
    "timing": {"compile_s": 0.5, "time_s": 2.0},
}


def _store(tmp_path, **kw):
    return RunStore(str(tmp_path), {"model": "mlp"}, {"config": {"lr": 0.1}}, **kw)


def test_store_round_trip(tmp_path):
    s = _store(tmp_path)
    assert s.load_method("ga") is None  # nothing yet
    s.save_method("ga", GOOD)
    assert s.load_method("ga") == GOOD
    assert sorted(os.listdir(s.methods_dir)) == ["ga.json"]
    assert _store(tmp_path, fresh=True).load_method("ga") is None


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"timing": None}, "no 'timing'"),
        ({"metrics": None}, "no 'metrics'"),
        ({"relearn_curve": None}, "no 'relearn_curve'"),
        ({"timing": {"compile_s": 1.0}}, "'timing' must be an object with a numeric 'time_s'"),
        ({"timing": {"time_s": "2s"}}, "'timing' must be an object with a numeric 'time_s'"),
        ({"metrics": [0.1, 0.2]}, "'metrics' must be a non-empty object, got list"),
        ({"metrics": {"forget_acc": "0.1", "retain_acc": [0.9]}}, "'metrics' entries ['forget_acc']"),
        ({"relearn_curve": [0.1, 0.5]}, "'relearn_curve' is not a list (one per seed) of lists"),
    ],
)
def test_store_rejects_a_wrong_entry_naming_the_file(tmp_path, change, problem):
    s = _store(tmp_path)
    entry = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    s.save_method("npo", entry)
    path = os.path.join(s.methods_dir, "npo.json")
    with pytest.warns(UserWarning) as rec:
        assert s.load_method("npo") is None  # the caller runs the method again
    (w,) = rec
    msg = str(w.message)
    assert path in msg and problem in msg and "running npo again" in msg


def test_store_entry_problems_lists_every_problem():
    assert method_entry_problems(GOOD) == []
    assert method_entry_problems([1, 2]) == ["expected a JSON object, got list"]
    assert method_entry_problems({"weight_change": 1.0}) == [
        "no 'metrics'",
        "no 'relearn_curve'",
        "no 'timing'",
    ]


def test_store_unreadable_json_is_rerun(tmp_path):
    s = _store(tmp_path)
    os.makedirs(s.methods_dir)
    path = os.path.join(s.methods_dir, "ssd.json")
    with open(path, "w") as f:
        f.write('{"metrics": {')  # truncated
    with pytest.warns(UserWarning, match="is unreadable"):
        assert s.load_method("ssd") is None
