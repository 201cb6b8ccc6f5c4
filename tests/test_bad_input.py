"""Every bad input we know of, through the real command line: a non-zero exit, one line on stderr that says
what went wrong, no traceback, and nothing created or changed on disk (an earlier results file stays byte for
byte as it was). The table is tests/bad_input_cases.py; `test_summary` prints how many were tried, how many
gave a clean error, and how many a traceback.

The cases run in this process (`cadis.cli.main`, stderr captured at the file-descriptor level, so
library logging is seen too); CADIS_BAD_INPUT_SUBPROCESS=1 runs each as `cadis` instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from cadis.cli import main
from experiments.cli import COMMANDS as PIPELINE_COMMANDS
from experiments.cli import main as pipeline_main

from bad_input_cases import CASES, ROOT_USER, Case, certify
from conftest import ROOT


@pytest.fixture(scope="module")
def earlier_run(tiny_denoiser_dir, tiny_classifier_dir, tmp_path_factory) -> Path:
    """A finished run of the first two images (res.tsv, res.tsv.json), the {res} of every case."""
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


# Outside {tmp}: what a case must not create there either (/dev/null's sidecar, a path under sysfs).
OUTSIDE = [Path("/sys/cadis-bad-input"), Path("/dev/null.json"), Path("/dev/null.tsv.json")]
OUTCOMES: dict[str, tuple[int, str, bool]] = {}  # case name: exit status, stderr, whether files changed


def _outcome(case: Case, earlier_run: Path, den: Path, clf: Path, tmp: Path, capfd) -> tuple[int, str, bool]:
    """Run `case` in a fresh folder `tmp` holding a copy of the earlier run; record and return what happened."""
    shutil.copy(earlier_run / "res.tsv", tmp / "res.tsv")
    shutil.copy(earlier_run / "res.tsv.json", tmp / "res.tsv.json")
    held = case.setup(tmp) if case.setup else None
    places = dict(den=den, clf=clf, tmp=tmp, res=tmp / "res.tsv")
    argv = [a.format(**places) for a in case.argv]
    before = _snapshot(tmp)
    try:
        code, err = _run(argv, capfd)
    finally:
        if held is not None:
            held.close()
        if not ROOT_USER and (tmp / "readonly").exists():
            (tmp / "readonly").chmod(0o755)
    changed = _snapshot(tmp) != before or any(p.exists() for p in OUTSIDE)
    OUTCOMES[case.name] = code, err, changed
    return code, err, changed


def _clean(code: int, err: str) -> bool:
    lines = err.strip().splitlines()
    return code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case, earlier_run, tiny_denoiser_dir, tiny_classifier_dir,
                                                         tmp_path, capfd):
    if case.skip:
        pytest.skip(case.skip)
    code, err, changed = _outcome(case, earlier_run, tiny_denoiser_dir, tiny_classifier_dir, tmp_path, capfd)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert _clean(code, err), err[-3000:]
    places = dict(den=tiny_denoiser_dir, clf=tiny_classifier_dir, tmp=tmp_path, res=tmp_path / "res.tsv")
    assert case.message.format(**places) in lines[0], lines[0]
    assert len(lines[0]) < 1000, "an error line quotes at most a short prefix of the input"
    assert not changed, "a refused command created or changed files"


def test_summary(earlier_run, tiny_denoiser_dir, tiny_classifier_dir, tmp_path_factory, capfd):
    """Counts over the table (cases not run yet in this session, e.g. when this test is selected alone, run now)."""
    cases = [c for c in CASES if not c.skip]
    for case in cases:
        if case.name not in OUTCOMES:
            _outcome(case, earlier_run, tiny_denoiser_dir, tiny_classifier_dir, tmp_path_factory.mktemp("case"), capfd)
    outcomes = [OUTCOMES[c.name] for c in cases]
    clean = sum(_clean(code, err) and not changed for code, err, changed in outcomes)
    tracebacks = sum("Traceback" in err for _, err, _ in outcomes)
    with capfd.disabled():
        print(f"\nbad inputs tried: {len(outcomes)}, clean errors: {clean}, tracebacks: {tracebacks}")
    assert clean == len(outcomes) and tracebacks == 0


def test_analyze_creates_the_missing_folders_of_its_outputs(earlier_run, tmp_path, capsys):
    out = tmp_path / "new" / "folder"
    assert main(["analyze", str(earlier_run / "res.tsv"), "--csv", str(out / "t.csv"),
                 "--markdown", str(out / "t.md"), "--html", str(out / "deeper" / "f.html")]) == 0
    assert (out / "t.csv").is_file() and (out / "t.md").is_file() and (out / "deeper" / "f.html").is_file()
