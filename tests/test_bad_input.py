"""Every bad input we know of, through the real command line: a non-zero exit, one line on stderr that says
what went wrong, no traceback, and nothing created or changed on disk (an earlier results file stays byte for
byte as it was).

`CASES` is the table. Each `Case` gives the arguments after `cadis`, with placeholders
{den} and {clf} (a tiny denoiser and classifier), {tmp} (a fresh folder per case) and {res} (a finished
results file in {tmp}, `res.tsv` with its sidecar `res.json`), a part of the expected message, and an
optional `setup(tmp)` that prepares {tmp} (it may return an open file to keep until the case is over).
Append cases to the table to cover more inputs.

The cases run in this process (`cadis.cli.main`, stderr captured at the file-descriptor level, so
library logging is seen too); CADIS_BAD_INPUT_SUBPROCESS=1 runs each as `cadis` instead.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cadis.cli import main
from experiments.cli import COMMANDS as PIPELINE_COMMANDS
from experiments.cli import main as pipeline_main

from conftest import ROOT


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    message: str  # a part of the one line on stderr
    setup: Callable[[Path], object] | None = None  # prepares {tmp}; what it returns is closed afterwards
    skip: str | None = None  # why the case does not apply on this machine


def certify(*extra: str, out: str = "{tmp}/new.tsv") -> tuple[str, ...]:
    """A certify command that works (on the tiny models), with `extra` flags; later flags override earlier ones."""
    return ("certify", "--denoiser", "{den}", "--classifier", "local-dir:{clf}", "--dataset", "fashion-mnist",
            "--sigma", "0.25", "--n0", "8", "--n", "32", "--batch-size", "40", "--max", "2", "--out", out, *extra)


def write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def edit_results(change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """Rewrite the lines of {res}."""
    def setup(tmp: Path) -> None:
        lines = (tmp / "res.tsv").read_text().splitlines(keepends=True)
        (tmp / "res.tsv").write_text("".join(change(lines)))
    return setup


def remove(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).unlink()


def hold_lock(name: str) -> Callable[[Path], object]:
    """What a running certify holds on its --out: an exclusive lock (another open file, so it conflicts)."""
    def setup(tmp: Path):
        f = open(tmp / name, "ab")
        fcntl.flock(f, fcntl.LOCK_EX)
        return f
    return setup


ROOT_USER = os.geteuid() == 0
# Root may write anywhere a permission allows; sysfs refuses new entries even to root.
UNWRITABLE = "/sys/cadis-bad-input/r.tsv" if ROOT_USER else "{tmp}/readonly/r.tsv"


def readonly(tmp: Path) -> None:
    if not ROOT_USER:
        (tmp / "readonly").mkdir()
        (tmp / "readonly").chmod(0o555)


def _set_field(line: str, k: int, value: str) -> str:
    fields = line.rstrip("\n").split("\t")
    fields[k] = value
    return "\t".join(fields) + "\n"


TORN = lambda lines: [*lines[:-1], lines[-1][:7]]  # noqa: E731  the last row cut mid-write
HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"

CASES = [
    # ---- certify: numeric flags, refused before anything is loaded or written
    Case("certify --sigma nan", certify("--sigma", "nan"), "--sigma: must be a finite number > 0"),
    Case("certify --sigma inf", certify("--sigma", "inf"), "--sigma: must be a finite number > 0"),
    Case("certify --sigma 0", certify("--sigma", "0"), "--sigma: must be a finite number > 0"),
    Case("certify --sigma -0.5", certify("--sigma", "-0.5"), "--sigma: must be a finite number > 0"),
    Case("certify --sigma beyond the scheduler", certify("--sigma", "100"), "beyond this scheduler's largest"),
    Case("certify --alpha 0.5", certify("--alpha", "0.5"), "--alpha: must be a finite number > 0 and < 0.5"),
    Case("certify --alpha 0", certify("--alpha", "0"), "--alpha: must be a finite number > 0 and < 0.5"),
    Case("certify --alpha nan", certify("--alpha", "nan"), "--alpha: must be a finite number > 0 and < 0.5"),
    Case("certify --alpha -1", certify("--alpha", "-1"), "--alpha: must be a finite number > 0 and < 0.5"),
    Case("certify --n0 0", certify("--n0", "0"), "--n0: must be a whole number >= 1"),
    Case("certify --n0 2.5", certify("--n0", "2.5"), "--n0: must be a whole number >= 1"),
    Case("certify --n 0", certify("--n", "0"), "--n: must be a whole number >= 1"),
    Case("certify --n nan", certify("--n", "nan"), "--n: must be a whole number >= 1"),
    Case("certify --n inf", certify("--n", "inf"), "--n: must be a whole number >= 1"),
    Case("certify --n lots", certify("--n", "lots"), "--n: must be a whole number >= 1"),
    Case("certify --batch-size 0", certify("--batch-size", "0"), "--batch-size: must be a positive integer"),
    Case("certify --batch-size -3", certify("--batch-size", "-3"), "--batch-size: must be a positive integer"),
    Case("certify --batch-size lots", certify("--batch-size", "lots"), "--batch-size: must be a positive integer"),
    Case("certify --max 0", certify("--max", "0"), "--max: must be a whole number >= 1"),
    Case("certify --max -1", certify("--max", "-1"), "--max: must be a whole number >= 1"),
    Case("certify --skip 0", certify("--skip", "0"), "--skip: must be a whole number >= 1"),
    Case("certify --skip nan", certify("--skip", "nan"), "--skip: must be a whole number >= 1"),
    Case("certify --shard 2/2", certify("--shard", "2/2"), "--shard: I/K needs 0 <= I < K"),
    Case("certify --shard x", certify("--shard", "x"), "--shard: must look like I/K"),
    Case("certify --seed -1", certify("--seed", "-1"), "--seed: must be a whole number >= 0"),
    Case("certify --seed 1e30", certify("--seed", "1e30"), "--seed: must be a whole number >= 0"),
    Case("certify --steps 0", certify("--mode", "multistep", "--steps", "0"), "--steps: must be a whole number"),
    Case("certify --tolerance -1", certify("--adaptive", "--tolerance", "-1"), "--tolerance: must be a finite"),
    Case("certify --tolerance nan", certify("--adaptive", "--tolerance", "nan"), "--tolerance: must be a finite"),
    Case("certify --tolerance inf", certify("--adaptive", "--tolerance", "inf"), "--tolerance: must be a finite"),
    Case("certify --tolerance -1 on an earlier run", certify("--adaptive", "--tolerance", "-1", out="{res}"),
         "--tolerance: must be a finite"),
    Case("certify --radii 0.5,big", certify("--adaptive", "--radii", "0.5,big"), "--radii: must be comma-separated"),
    Case("certify --radii -0.25", certify("--adaptive", "--radii", "-0.25"), "--radii: must be comma-separated"),
    Case("certify --radii nan", certify("--adaptive", "--radii", "0.25,nan"), "--radii: must be comma-separated"),
    Case("certify --device gpu", certify("--device", "gpu"), "--device 'gpu' is not a device"),
    Case("certify --device cuda without CUDA", certify("--device", "cuda"), "CUDA is not available",
         skip="this machine has CUDA" if torch.cuda.is_available() else None),
    # ---- certify --out
    Case("certify --out r.json", certify(out="{tmp}/r.json"), "ends in .json, the name of the results' sidecar"),
    Case("certify --out the sidecar of an earlier run", certify(out="{tmp}/res.json"), "ends in .json"),
    Case("certify --out a directory", certify(out="{tmp}"), "is a directory"),
    Case("certify --out under a file", certify(out="{tmp}/notes.txt/r.tsv"), "is a file, not a folder",
         write("notes.txt", "hello\n")),
    Case("certify --out unwritable", certify(out=UNWRITABLE), "Cannot write" if ROOT_USER else "no permission",
         readonly),
    Case("certify --out whose sidecar is a directory", certify(out="{tmp}/side.tsv"), "is a directory",
         lambda tmp: (tmp / "side.json").mkdir()),
    Case("certify --out another configuration", certify("--sigma", "0.5", out="{res}"), "another configuration"),
    Case("certify --out without its sidecar", certify(out="{res}"), "its sidecar res.json (the run's configuration) "
         "is missing", remove("res.json")),
    Case("certify --out with a garbage sidecar", certify(out="{res}"), "is not a configuration (not valid JSON)",
         write("res.json", "{not json")),
    Case("certify --out with an empty sidecar", certify(out="{res}"), "is not a configuration (not valid JSON)",
         write("res.json", "")),
    Case("certify --out being written by another process", certify(out="{res}"),
         "being written by another certify process", hold_lock("res.tsv")),
    Case("certify --out a file that is not results", certify(out="{tmp}/notes.tsv"), "is not a cadis result file",
         write("notes.tsv", "my notes\nsecond line\n")),
    Case("certify --out a one-line file that is not results", certify(out="{tmp}/notes.tsv"),
         "is not a cadis result file", write("notes.tsv", "my notes, no newline")),
    Case("certify --out results with a broken row", certify(out="{res}"),
         "line 2 is not a result row", edit_results(lambda lines: [lines[0], "garbage\n", *lines[1:]])),
    # ---- analyze
    Case("analyze a missing file", ("analyze", "{tmp}/nope.tsv"), "does not exist"),
    Case("analyze a directory", ("analyze", "{tmp}"), "is a directory"),
    Case("analyze an empty file", ("analyze", "{tmp}/empty.tsv"), "is empty", write("empty.tsv", "")),
    Case("analyze a blank file", ("analyze", "{tmp}/blank.tsv"), "is empty", write("blank.tsv", "\n\n")),
    Case("analyze a binary file", ("analyze", "{tmp}/b.tsv"), "is not a text file",
         write("b.tsv", bytes(range(256)) * 4)),
    Case("analyze a binary file with NULs", ("analyze", "{tmp}/z.tsv"), "is not a text file",
         write("z.tsv", b"idx\tlabel\tpredict\tradius\n\0\0\0\n")),
    Case("analyze a table that is not results", ("analyze", "{tmp}/t.tsv"), "lacks the columns",
         write("t.tsv", "a\tb\n1\t2\n")),
    Case("analyze a header-only file", ("analyze", "{tmp}/h.tsv"), "has a header but no rows yet",
         write("h.tsv", HEADER)),
    Case("analyze a non-numeric radius", ("analyze", "{tmp}/nn.tsv"), "line 3: radius 'big' is not a finite number",
         write("nn.tsv", HEADER + "0\t1\t1\t0.5\t1\t0\n1\t1\t1\tbig\t1\t0\n")),
    Case("analyze a nan radius", ("analyze", "{tmp}/nan.tsv"), "line 2: radius 'nan' is not a finite number",
         write("nan.tsv", HEADER + "0\t1\t1\tnan\t1\t0\n")),
    Case("analyze a fractional label", ("analyze", "{tmp}/fl.tsv"), "line 2: label '1.5' is not a whole number",
         write("fl.tsv", HEADER + "0\t1.5\t1\t0.5\t1\t0\n")),
    Case("analyze a truncated row", ("analyze", "{res}"), "res.tsv line 2 has 4 of 11 fields",
         edit_results(lambda lines: [lines[0], "\t".join(lines[1].split("\t")[:4]) + "\n", *lines[2:]])),
    Case("analyze a torn last row", ("analyze", "{res}"), "its last row is torn", edit_results(TORN)),
    Case("analyze count_a above n", ("analyze", "{res}"), "count_a=99 of n=32 draws is impossible",
         edit_results(lambda lines: [lines[0], _set_field(lines[1], 6, "99"), *lines[2:]])),
    Case("analyze with a garbage sidecar", ("analyze", "{res}"), "is not valid JSON", write("res.json", "{oops")),
    Case("analyze --radii nan", ("analyze", "{res}", "--radii", "0,nan"), "--radii: must be comma-separated"),
    Case("analyze --radii -1", ("analyze", "{res}", "--radii", "-1"), "--radii: must be comma-separated"),
    Case("analyze --radii empty", ("analyze", "{res}", "--radii", ","), "--radii: needs at least one number"),
    Case("analyze --alpha 0.7", ("analyze", "{res}", "--alpha", "0.7"), "--alpha: must be a finite number > 0"),
    Case("analyze --alpha nan", ("analyze", "{res}", "--alpha", "nan"), "--alpha: must be a finite number > 0"),
    Case("analyze --alpha on Cohen's format", ("analyze", "{tmp}/cohen.tsv", "--alpha", "0.01"), "keeps no counts",
         write("cohen.tsv", HEADER + "0\t1\t1\t0.5\t1\t0\n")),
    Case("analyze --alpha without the sidecar", ("analyze", "{res}", "--alpha", "0.01"), "its sidecar res.json is "
         "missing", remove("res.json")),
    Case("analyze --paired with one file", ("analyze", "{res}", "--paired"), "--paired needs at least two runs"),
    Case("analyze --csv a directory", ("analyze", "{res}", "--csv", "{tmp}"), "--csv: {tmp} is a directory"),
    Case("analyze --html under a file", ("analyze", "{res}", "--html", "{tmp}/res.tsv/f.html"),
         "is a file, not a folder"),
    Case("analyze --csv over its input", ("analyze", "{res}", "--csv", "{res}"), "is one of the files being analyzed"),
    Case("analyze --markdown over a sidecar", ("analyze", "{res}", "--markdown", "{tmp}/res.json"),
         "is one of the files being analyzed"),
    # ---- results (the embedded benchmark)
    Case("results --sigmas nan", ("results", "--sigmas", "0.25", "nan"), "--sigmas: must be a finite number > 0"),
    Case("results --sigmas 0", ("results", "--sigmas", "0"), "--sigmas: must be a finite number > 0"),
    Case("results --max 0", ("results", "--max", "0"), "--max: must be a whole number >= 1"),
    Case("results --n -5", ("results", "--n", "-5"), "--n: must be a whole number >= 1"),
    Case("results --steps 0", ("results", "--steps", "0"), "--steps: must be a whole number >= 1"),
    Case("results --threads -1", ("results", "--threads", "-1"), "--threads: must be a whole number >= 0"),
    Case("results --runs-dir a file", ("results", "--runs-dir", "{res}"), "is a file, not a folder"),
    Case("results --methods unknown", ("results", "--methods", "nope"), "Unknown run 'nope'"),
    # ---- zoo (the embedded models' training)
    Case("zoo train-denoiser --lr nan", ("zoo", "train-denoiser", "--lr", "nan"), "--lr: must be a finite number"),
    Case("zoo train-classifier --steps 0", ("zoo", "train-classifier", "--steps", "0"), "--steps: must be a whole"),
    Case("zoo train-classifier --weight-decay inf", ("zoo", "train-classifier", "--weight-decay", "inf"),
         "--weight-decay: must be a finite number >= 0"),
    Case("zoo card --limit 0", ("zoo", "card", "--limit", "0"), "--limit: must be a whole number >= 1"),
    Case("zoo train-denoiser --out under a file", ("zoo", "train-denoiser", "--out", "{res}/x"),
         "is under"),
]


@pytest.fixture(scope="module")
def earlier_run(tiny_denoiser_dir, tiny_classifier_dir, tmp_path_factory) -> Path:
    """A finished run of the first two images (res.tsv, res.json), the {res} of every case."""
    folder = tmp_path_factory.mktemp("earlier")
    argv = [a.format(den=tiny_denoiser_dir, clf=tiny_classifier_dir, tmp=folder) for a in certify(out="{tmp}/res.tsv")]
    assert main(argv) == 0
    return folder


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _run(argv: list[str], capfd) -> tuple[int, str]:
    """Exit status and stderr of `cadis ARGV` (`python -m experiments ARGV` for the pipeline's commands); an
    exception escaping main() is a traceback."""
    pipeline = argv[0] in PIPELINE_COMMANDS
    if os.environ.get("CADIS_BAD_INPUT_SUBPROCESS") == "1":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-m", "experiments" if pipeline else "cadis", *argv], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
        return r.returncode, r.stderr
    capfd.readouterr()
    try:
        code = (pipeline_main if pipeline else main)(argv)
    except BaseException:  # noqa: BLE001  what escapes main() is what a user would see as a traceback
        code = 1
        sys.stderr.write(traceback.format_exc())
    return code, capfd.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case, earlier_run, tiny_denoiser_dir, tiny_classifier_dir,
                                                         tmp_path, capfd):
    if case.skip:
        pytest.skip(case.skip)
    shutil.copy(earlier_run / "res.tsv", tmp_path / "res.tsv")
    shutil.copy(earlier_run / "res.json", tmp_path / "res.json")
    held = case.setup(tmp_path) if case.setup else None
    places = dict(den=tiny_denoiser_dir, clf=tiny_classifier_dir, tmp=tmp_path, res=tmp_path / "res.tsv")
    argv = [a.format(**places) for a in case.argv]
    before = _snapshot(tmp_path)
    try:
        code, err = _run(argv, capfd)
    finally:
        if held is not None:
            held.close()
        if not ROOT_USER and (tmp_path / "readonly").exists():
            (tmp_path / "readonly").chmod(0o755)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.message.format(**places) in lines[0], lines[0]
    assert _snapshot(tmp_path) == before, "a refused command created or changed files"
    assert not Path("/sys/cadis-bad-input").exists()


def test_analyze_creates_the_missing_folders_of_its_outputs(earlier_run, tmp_path, capsys):
    out = tmp_path / "new" / "folder"
    assert main(["analyze", str(earlier_run / "res.tsv"), "--csv", str(out / "t.csv"),
                 "--markdown", str(out / "t.md"), "--html", str(out / "deeper" / "f.html")]) == 0
    assert (out / "t.csv").is_file() and (out / "t.md").is_file() and (out / "deeper" / "f.html").is_file()
