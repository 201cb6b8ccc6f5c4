"""Result files under stress: kills at every step a resume depends on, writers racing for one --out (driven step
by step with events, no sleeps), a disk that fills mid-run, sidecar names, and merging shards."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from cadis.certification import output
from cadis.certification.runner import COLUMNS, CertifyConfig, format_row, merge_shards, shard_path
from cadis.certification.smoothing import Certificate
from cadis.cli import main
from cadis.errors import CadisError

from conftest import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _args(den, clf, out, *extra):
    return ["certify", "--denoiser", str(den), "--classifier", f"local-dir:{clf}", "--dataset", "fashion-mnist",
            "--sigma", "0.25", "--n0", "8", "--n", "32", "--batch-size", "40", "--out", str(out), *extra]


def _rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


# ---------------------------------------------------------------- kill -9 at every step a resume depends on

# Runs the CLI with one step wrapped so that the process kills itself (SIGKILL) right there: after the TSV is
# truncated (os.ftruncate of a .tsv: a fresh start, or a torn last row cut off), after the sidecar's temporary
# file is written but before it replaces the sidecar, and after the sidecar is in place but before the header.
# The wrappers replace os functions in that process only; the runner has no hook for them.
KILLER = """
import os, signal, sys
point, argv = sys.argv[1], sys.argv[2:]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "truncated":
    ftruncate = os.ftruncate
    def patched(fd, size):
        ftruncate(fd, size)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tsv"):
            die()
    os.ftruncate = patched
elif point in ("sidecar-temp", "sidecar"):
    replace = os.replace
    def patched(src, dst):
        if point == "sidecar-temp":
            die()
        replace(src, dst)
        die()
    os.replace = patched
from cadis.cli import main
main(argv)
raise SystemExit("not killed")
"""


def _killed_at(point: str, argv: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", KILLER, point, *argv], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]


def _same_rows(out: Path, ref: Path) -> None:
    cols = ["idx", "label", "predict", "radius", "count_a", "n", "p_a_lower"]
    df = _rows(out)
    assert df["idx"].is_unique, "a row was duplicated"
    pd.testing.assert_frame_equal(df.sort_values("idx")[cols].reset_index(drop=True), _rows(ref)[cols])


@pytest.fixture(scope="module")
def reference(tiny_denoiser_dir, tiny_classifier_dir, tmp_path_factory):
    """An uninterrupted run of the first 6 images, and one with another seed (another configuration)."""
    d = tmp_path_factory.mktemp("reference")
    for name, extra in (("ref", []), ("other", ["--seed", "1"])):
        assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, d / f"{name}.tsv", "--max", "6", *extra)) == 0
    return d


@pytest.mark.parametrize("point,start", [("sidecar-temp", "new"), ("sidecar", "new"), ("truncated", "fresh"),
                                         ("sidecar-temp", "fresh"), ("sidecar", "fresh")])
def test_kill_while_starting_a_run_then_resume(point, start, reference, tiny_denoiser_dir, tiny_classifier_dir,
                                               tmp_path):
    out = tmp_path / "k.tsv"
    args = _args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "6")
    if start == "fresh":  # --fresh over a finished run of another configuration
        shutil.copy(reference / "other.tsv", out)
        shutil.copy(reference / "other.tsv.json", tmp_path / "k.tsv.json")
        args.append("--fresh")
    _killed_at(point, args)
    assert not out.exists() or out.read_bytes() == b"", "no header before the sidecar is in place"
    # Re-running the command without --fresh (a plain resume) must neither refuse nor keep the old rows.
    assert main([a for a in args if a != "--fresh"]) == 0
    _same_rows(out, reference / "ref.tsv")
    assert json.loads((tmp_path / "k.tsv.json").read_text())["seed"] == 0


def test_kill_after_cutting_a_torn_last_row_loses_nothing(reference, tiny_denoiser_dir, tiny_classifier_dir,
                                                          tmp_path):
    out = tmp_path / "torn.tsv"
    lines = (reference / "ref.tsv").read_text().splitlines(keepends=True)
    complete = lines[:4]  # header and three rows
    out.write_text("".join(complete) + lines[4][:9])  # the fourth row torn mid-write
    shutil.copy(reference / "ref.tsv.json", tmp_path / "torn.tsv.json")
    args = _args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "6")
    _killed_at("truncated", args)
    assert out.read_text() == "".join(complete), "only the torn row is cut"
    assert main(args) == 0
    assert out.read_text().splitlines(keepends=True)[:4] == complete
    _same_rows(out, reference / "ref.tsv")


def test_a_second_writer_is_refused_while_the_first_holds_the_file(reference, tiny_denoiser_dir,
                                                                   tiny_classifier_dir, tmp_path, capsys):
    import fcntl

    out = tmp_path / "locked.tsv"
    shutil.copy(reference / "ref.tsv", out)
    shutil.copy(reference / "ref.tsv.json", tmp_path / "locked.tsv.json")
    before = out.read_bytes()
    with open(out, "ab") as holder:  # what a running certify holds
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "8")) == 2
    assert "being written by another certify process" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "8")) == 0  # released: it resumes
    assert _rows(out)["idx"].tolist() == list(range(8))


def test_device_type_is_part_of_the_identity_and_old_sidecars_still_resume(reference, tiny_denoiser_dir,
                                                                          tiny_classifier_dir, tmp_path, capsys):
    out = tmp_path / "dev.tsv"
    shutil.copy(reference / "ref.tsv", out)
    side = json.loads((reference / "ref.tsv.json").read_text())
    assert side["device_type"] == "cpu"
    args = _args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "7")
    (tmp_path / "dev.tsv.json").write_text(json.dumps({**side, "device_type": "cuda", "device": "cuda"}))
    assert main(args) == 2
    assert "device_type differ" in capsys.readouterr().err
    # A sidecar from before device_type was recorded: its device (absent: the CPU) stands for it.
    old = {k: v for k, v in side.items() if k not in ("device_type", "device")}
    (tmp_path / "dev.tsv.json").unlink()
    (tmp_path / "dev.json").write_text(json.dumps(old))  # under the name sidecars had before: still read
    assert main(args) == 0
    assert _rows(out)["idx"].tolist() == list(range(7))




# ---------------------------------------------------------------- writers racing for one --out, step by step

def _toy_config(**changes) -> CertifyConfig:
    return CertifyConfig(denoiser="d", classifier="c", dataset="toy", sigma=0.25, n0=10, n=100, **changes)


def _row(idx: int, count: int = 90) -> str:
    return format_row(idx, 0, Certificate(0, 0.5, count, 100, 0.8), 0.1, 0.25, 0.001)


class Steps:
    """Runs writers in named threads and makes `fcntl.flock` wait, per thread, for events other threads set:
    an interleaving fixed by the test, not by timing. `before[name]` / `after[name]`: (event to set, event to
    wait for) around that thread's first exclusive lock."""

    def __init__(self, monkeypatch, before: dict, after: dict):
        self.before, self.after, self.errors, self.seen = before, after, {}, set()
        real = fcntl.flock

        def flock(fd, op):
            name = threading.current_thread().name
            first = op & fcntl.LOCK_EX and name not in self.seen
            self.seen.add(name)
            if first and name in before:
                before[name][0].set()
                assert before[name][1].wait(60), f"{name} waited in vain"
            try:
                real(fd, op)
            finally:
                if first and name in after:
                    after[name][0].set()
                    assert after[name][1].wait(60), f"{name} waited in vain"
        monkeypatch.setattr(output.fcntl, "flock", flock)

    def start(self, name: str, work) -> threading.Thread:
        def run():
            try:
                work()
            except BaseException as e:  # noqa: BLE001  the test reads it
                self.errors[name] = e
        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread


def _write_rows(out: Path, config: CertifyConfig, indices: range) -> None:
    """What certify does with the file it gets: append flushed rows, then close it."""
    f, done = output.open_output(out, config, fresh=False)
    assert done == set()
    for idx in indices:
        f.write(_row(idx).encode())
        f.flush()
    f.close()


def test_a_refused_writer_never_removes_the_new_file_of_the_writer_that_holds_it(tmp_path, monkeypatch):
    # B creates the file and stops just before locking it; A opens that file and locks it (still empty); then B is
    # refused. Before, B removed the empty file on its way out, and A's rows went to a file no path names.
    out, config = tmp_path / "race.tsv", _toy_config()
    b_opened, a_locked, b_done = threading.Event(), threading.Event(), threading.Event()
    steps = Steps(monkeypatch, before={"B": (b_opened, a_locked)}, after={"A": (a_locked, b_done)})
    b = steps.start("B", lambda: output.open_output(out, config, fresh=False))
    assert b_opened.wait(60) and out.exists() and out.stat().st_size == 0  # B made it
    a = steps.start("A", lambda: _write_rows(out, config, range(5)))
    b.join(60)
    b_done.set()
    a.join(60)
    assert not a.is_alive() and not b.is_alive()
    assert "A" not in steps.errors, steps.errors.get("A")
    assert isinstance(steps.errors["B"], CadisError) and "being written by another certify process" in str(
        steps.errors["B"])
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == COLUMNS
    assert [line.split("\t")[0] for line in lines[1:]] == ["0", "1", "2", "3", "4"]  # no row lost
    assert json.loads(output.sidecar_path(out).read_text())["sigma"] == 0.25


def test_a_writer_that_waited_on_a_file_its_creator_removed_writes_to_the_path_not_the_removed_file(tmp_path,
                                                                                                   monkeypatch):
    # A creates and locks the file; C opens the same file and waits for the lock; A cannot write its sidecar, so it
    # removes its empty file, still holding the lock, and lets go. C must find the path gone and start it anew.
    out, config = tmp_path / "cleanup.tsv", _toy_config()
    a_locked, c_opened, a_done = threading.Event(), threading.Event(), threading.Event()
    real_write = output.write_atomic

    def write_atomic(path, data):
        if threading.current_thread().name == "A":
            raise CadisError(f"Cannot write {path}: No space left on device; free some space.")
        real_write(path, data)
    monkeypatch.setattr(output, "write_atomic", write_atomic)
    steps = Steps(monkeypatch, before={"C": (c_opened, a_done)}, after={"A": (a_locked, c_opened)})

    def writer_a():
        try:
            output.open_output(out, config, fresh=False)
        finally:
            a_done.set()
    a = steps.start("A", writer_a)
    assert a_locked.wait(60)
    c = steps.start("C", lambda: _write_rows(out, config, range(3)))
    a.join(60)
    c.join(60)
    assert "No space left" in str(steps.errors["A"]) and "C" not in steps.errors, steps.errors
    lines = out.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines[1:]] == ["0", "1", "2"]  # C's rows are in the file named out


def test_a_write_error_mid_run_is_one_line_and_keeps_the_rows(tiny_denoiser_dir, tiny_classifier_dir, tmp_path):
    ref, out = tmp_path / "ref.tsv", tmp_path / "full.tsv"
    args = [*_args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "40"), "--n0", "4", "--n", "8"]
    assert main([a if a != str(out) else str(ref) for a in args]) == 0
    sidecar = output.sidecar_path(ref).stat().st_size
    assert ref.stat().st_size > sidecar + 200, "the rows must outgrow the sidecar for the limit to hit them"
    # No file may grow beyond the sidecar's size (plus a little): the TSV fails mid-run as on a full disk (EFBIG).
    limited = ("import resource, signal, sys\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)\n"
               "from cadis.cli import main\n"
               "raise SystemExit(main(sys.argv[2:]))\n")
    r = subprocess.run([sys.executable, "-c", limited, str(sidecar + 16), *args], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1 and "File too large" in errors[0] and "rows written so far are kept" in errors[0]
    complete = [line for line in out.read_text().splitlines(keepends=True) if line.endswith("\n")]
    reference = ref.read_text().splitlines(keepends=True)
    assert 3 <= len(complete) < len(reference)

    def without_time(line: str) -> list[str]:
        return line.split("\t")[:5] + line.split("\t")[6:]
    assert [without_time(line) for line in complete] == [without_time(line) for line in reference[:len(complete)]]
    assert main(args) == 0  # the same command, with room: it resumes and cuts the torn row
    cols = ["idx", "label", "predict", "radius", "count_a", "n"]
    pd.testing.assert_frame_equal(_rows(out)[cols], _rows(ref)[cols])


# ---------------------------------------------------------------- sidecar names

def test_outputs_that_differ_in_suffix_keep_sidecars_of_their_own(tiny_denoiser_dir, tiny_classifier_dir, tmp_path,
                                                                  capsys):
    tsv, csv = tmp_path / "x.tsv", tmp_path / "x.csv"
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, tsv, "--max", "1")) == 0
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, csv, "--max", "1", "--seed", "7")) == 0
    assert json.loads((tmp_path / "x.tsv.json").read_text())["seed"] == 0
    assert json.loads((tmp_path / "x.csv.json").read_text())["seed"] == 7
    assert not (tmp_path / "x.json").exists()
    # Each resumes under its own configuration (with one shared x.json the first would now be refused).
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, tsv, "--max", "2")) == 0
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, csv, "--max", "2", "--seed", "7")) == 0
    assert len(_rows(tsv)) == len(_rows(csv)) == 2


def test_a_sidecar_under_the_earlier_name_is_still_read_and_never_renamed(tiny_denoiser_dir, tiny_classifier_dir,
                                                                          tmp_path, capsys):
    out = tmp_path / "old.tsv"
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "1")) == 0
    (tmp_path / "old.tsv.json").rename(tmp_path / "old.json")  # as shipped results have it
    assert output.find_sidecar(out) == tmp_path / "old.json"
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "2")) == 0  # resumes
    assert main(["analyze", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json", "old.tsv"]
    changed = _args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "2", "--seed", "3")
    assert main(changed) == 2 and "another configuration (seed differ)" in capsys.readouterr().err


# ---------------------------------------------------------------- merging shards

def _shard(out: Path, i: int, k: int, rows: list[str], **changes) -> None:
    part = shard_path(out, (i, k))
    part.write_text("\t".join(COLUMNS) + "\n" + "".join(rows))
    output.sidecar_path(part).write_text(json.dumps(_toy_config(shard=(i, k), **changes).to_json()))


def test_merge_shards_merges_only_shards_of_one_configuration(tmp_path):
    out = tmp_path / "m.tsv"
    _shard(out, 0, 2, [_row(0), _row(2)])
    _shard(out, 1, 2, [_row(1), _row(3)[:9]])  # a torn last row is left out
    merge_shards(out, 2)
    assert _rows(out)["idx"].tolist() == [0, 1, 2]
    assert json.loads(output.sidecar_path(out).read_text())["shard"] == "merged from 2"
    _shard(out, 1, 2, [_row(1)], seed=5)
    with pytest.raises(CadisError, match=r"different configurations \(seed differ\)"):
        merge_shards(out, 2)
    _shard(out, 1, 2, [_row(1), _row(2, count=95)])  # image 2 again, with other counts
    with pytest.raises(CadisError, match="line 3 and .* line 3 give image 2 different rows"):
        merge_shards(out, 2)
    _shard(out, 1, 2, [_row(1)])
    shutil.copy(output.sidecar_path(shard_path(out, (0, 2))), output.sidecar_path(shard_path(out, (1, 2))))
    with pytest.raises(CadisError, match="is the sidecar of shard '0/2', not 1/2"):
        merge_shards(out, 2)
