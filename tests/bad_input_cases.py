"""The bad-input table of `cadis` (and the pipeline's commands): each `Case` gives the arguments after `cadis`,
with placeholders {den} and {clf} (a tiny denoiser and classifier), {tmp} (a fresh folder per case) and {res} (a
finished results file in {tmp}, `res.tsv` with its sidecar `res.tsv.json`), a part of the expected message, and
an optional `setup(tmp)` that prepares {tmp} (it may return an open file to keep until the case is over).
Append cases to `CASES` to cover more inputs; tests/test_bad_input.py runs them."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


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


def set_field(k: int, value: str, row: int = 1) -> Callable[[Path], None]:
    """Set field `k` of {res}'s row `row` (1: the first row, file line 2)."""
    return edit_results(lambda lines: [*lines[:row], _set_field(lines[row], k, value), *lines[row + 1:]])


def conflicting_row(lines: list[str]) -> list[str]:
    """{res} with a second row for its first image that gives another label."""
    label = lines[1].split("\t")[1]
    return [*lines, _set_field(lines[1], 1, "8" if label != "8" else "7")]


def sidecar_says(**changes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        side = tmp / "res.tsv.json"
        side.write_text(json.dumps({**json.loads(side.read_text()), **changes}))
    return setup


def shards_of(*splits: str) -> Callable[[Path], None]:
    """{res} as shards of one run label with the given `shard` entries (e.g. 0/2, 1/3), as s0.tsv, s1.tsv, ..."""
    def setup(tmp: Path) -> None:
        config = json.loads((tmp / "res.tsv.json").read_text())
        for k, split in enumerate(splits):
            shutil.copy(tmp / "res.tsv", tmp / f"s{k}.tsv")
            (tmp / f"s{k}.tsv.json").write_text(json.dumps({**config, "label": "run", "shard": split}))
    return setup


def small_classifier(tmp: Path) -> None:
    """A 3-class tiny ViT in timm's local-dir layout, {tmp}/clf3."""
    import timm

    from conftest import make_tiny_vit

    timm.models.save_for_hf(make_tiny_vit(3), tmp / "clf3", safe_serialization=True)


def folder_of_classes(count: int) -> Callable[[Path], None]:
    """An ImageFolder {tmp}/folder with `count` classes of one 28×28 grey image each."""
    def setup(tmp: Path) -> None:
        from PIL import Image

        for c in range(count):
            (tmp / "folder" / f"class{c:02d}").mkdir(parents=True)
            Image.new("L", (28, 28), 30 * c % 255).save(tmp / "folder" / f"class{c:02d}" / "0.png")
    return setup


DEEP = "[" * 100_000 + "]" * 100_000  # nested deeper than Python's JSON parser recurses
SETTINGS = ("--sigma", "0.25", "--n", "32", "--file-alpha", "0.001")  # {res}'s run, as analyze's flags
TORN = lambda lines: [*lines[:-1], lines[-1][:7]]  # noqa: E731  the last row cut mid-write
HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
COHEN = HEADER + "0\t1\t1\t0.1\t1\t0\n"

CASES = [
    # ---- certify: numeric flags, refused before anything is loaded or written
    Case("certify --sigma nan", certify("--sigma", "nan"), "--sigma must be a finite number > 0"),
    Case("certify --sigma inf", certify("--sigma", "inf"), "--sigma must be a finite number > 0"),
    Case("certify --sigma 0", certify("--sigma", "0"), "--sigma must be a finite number > 0"),
    Case("certify --sigma -0.5", certify("--sigma", "-0.5"), "--sigma must be a finite number > 0"),
    Case("certify --sigma beyond the scheduler", certify("--sigma", "100"), "beyond this scheduler's largest"),
    Case("certify --alpha 0.5", certify("--alpha", "0.5"), "--alpha must be a finite number > 0 and < 0.5"),
    Case("certify --alpha 0", certify("--alpha", "0"), "--alpha must be a finite number > 0 and < 0.5"),
    Case("certify --alpha nan", certify("--alpha", "nan"), "--alpha must be a finite number > 0 and < 0.5"),
    Case("certify --alpha -1", certify("--alpha", "-1"), "--alpha must be a finite number > 0 and < 0.5"),
    Case("certify --n0 0", certify("--n0", "0"), "--n0 must be a whole number >= 1"),
    Case("certify --n0 2.5", certify("--n0", "2.5"), "--n0 must be a whole number >= 1"),
    Case("certify --n 0", certify("--n", "0"), "--n must be a whole number >= 1"),
    Case("certify --n nan", certify("--n", "nan"), "--n must be a whole number >= 1"),
    Case("certify --n inf", certify("--n", "inf"), "--n must be a whole number >= 1"),
    Case("certify --n lots", certify("--n", "lots"), "--n: must be a whole number >= 1"),  # not even a number
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
    Case("certify --n 1e30", certify("--n", "1e30"), "--n must be a whole number >= 1 and <= 10000000"),
    Case("certify --n 10000001", certify("--n", "10000001"), "--n must be a whole number >= 1 and <= 10000000"),
    Case("certify --n0 1e30", certify("--n0", "1e30"), "--n0 must be a whole number >= 1 and <= 10000000"),
    Case("certify --alpha 1e-320 (subnormal)", certify("--alpha", "1e-320"), "--alpha must be a finite number > 0 "
         "and < 0.5, and at least 2.225e-308"),
    Case("certify --sigma 1e999", certify("--sigma", "1e999"), "--sigma must be a finite number > 0"),
    Case("certify a 3-class classifier on a 10-class dataset", certify("--classifier", "local-dir:{tmp}/clf3"),
         "The classifier predicts 3 classes but the dataset fashion-mnist has 10", small_classifier),
    Case("certify an 11-class folder with a 10-class classifier", certify("--dataset", "{tmp}/folder"),
         "The classifier predicts 10 classes but the dataset {tmp}/folder has 11", folder_of_classes(11)),
    Case("certify a classifier whose config.json is nested 100000 deep",
         certify("--classifier", "local-dir:{tmp}/deep"), "config.json is nested too deeply",
         write("deep/config.json", DEEP)),
    Case("certify --device gpu", certify("--device", "gpu"), "--device 'gpu' is not a device"),
    Case("certify --device cuda without CUDA", certify("--device", "cuda"), "CUDA is not available",
         skip="this machine has CUDA" if torch.cuda.is_available() else None),
    # ---- certify --out
    Case("certify --out r.json", certify(out="{tmp}/r.json"), "ends in .json, the suffix of results' sidecars"),
    Case("certify --out the sidecar of an earlier run", certify(out="{tmp}/res.tsv.json"), "ends in .json"),
    Case("certify --out a directory", certify(out="{tmp}"), "is a directory"),
    Case("certify --out /dev/null", certify(out="/dev/null"), "/dev/null is not a regular file"),
    Case("certify --out a name of 5000 characters", certify(out="{tmp}/" + "x" * 5000 + ".tsv"),
         "File name too long ('{tmp}/xxx"),
    Case("certify --classifier a name of 5000 characters", certify("--classifier", "local-dir:{tmp}/" + "x" * 5000),
         "File name too long ("),
    Case("certify --out under a file", certify(out="{tmp}/notes.txt/r.tsv"), "is a file, not a folder",
         write("notes.txt", "hello\n")),
    Case("certify --out unwritable", certify(out=UNWRITABLE), "Cannot write" if ROOT_USER else "no permission",
         readonly),
    Case("certify --out whose sidecar is a directory", certify(out="{tmp}/side.tsv"), "is a directory",
         lambda tmp: (tmp / "side.tsv.json").mkdir()),
    Case("certify --out another configuration", certify("--sigma", "0.5", out="{res}"), "another configuration"),
    Case("certify --out without its sidecar", certify(out="{res}"), "its sidecar res.tsv.json (the run's "
         "configuration) is missing", remove("res.tsv.json")),
    Case("certify --out with a garbage sidecar", certify(out="{res}"), "is not a configuration (not valid JSON",
         write("res.tsv.json", "{not json")),
    Case("certify --out with an empty sidecar", certify(out="{res}"), "is not a configuration (not valid JSON",
         write("res.tsv.json", "")),
    Case("certify --out with a sidecar nested 100000 deep", certify(out="{res}"), "is not a configuration",
         write("res.tsv.json", "[" * 100_000 + "]" * 100_000)),
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
    Case("analyze a file name of 5000 characters", ("analyze", "{tmp}/" + "x" * 5000 + ".tsv"),
         "File name too long ("),
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
    Case("analyze with a garbage sidecar", ("analyze", "{res}"), "not valid JSON", write("res.tsv.json", "{oops")),
    Case("analyze a row at alpha=1 (the sidecar: 0.001)", ("analyze", "{res}"),
         "res.tsv line 2: alpha 1 differs from the run's alpha=0.001 (res.tsv.json)", set_field(10, "1")),
    Case("analyze a row at alpha=0.49", ("analyze", "{res}"), "line 2: alpha 0.49 differs from the run's alpha=0.001",
         set_field(10, "0.49")),
    Case("analyze a row at sigma=1e6", ("analyze", "{res}"), "line 2: sigma 1e+06 differs from the run's sigma=0.25",
         set_field(9, "1e6")),
    Case("analyze a row at a negative sigma", ("analyze", "{res}"), "line 2: sigma -0.25 differs from the run's",
         set_field(9, "-0.25")),
    Case("analyze rows of two sigmas", ("analyze", "{res}"), "line 3: sigma 0.5 differs from the run's sigma=0.25",
         set_field(9, "0.5", row=2)),
    Case("analyze a row with another n", ("analyze", "{res}"), "line 2: n=64 but the run draws exactly N=32",
         set_field(7, "64")),
    Case("analyze a negative count", ("analyze", "{res}"), "line 2: count_a=-1 of n=32 draws is impossible",
         set_field(6, "-1")),
    Case("analyze a count of 1e30", ("analyze", "{res}"), "line 2: count_a '1e30' is not a whole number",
         set_field(6, "1e30")),
    Case("analyze a negative radius", ("analyze", "{tmp}/neg.tsv", *SETTINGS), "line 2: radius -0.5 is negative",
         write("neg.tsv", HEADER + "0\t1\t1\t-0.5\t1\t0\n")),
    Case("analyze a radius beyond what N draws certify", ("analyze", "{tmp}/far.tsv", *SETTINGS),
         "line 2: radius 5 is beyond 0.2157, the largest that N=32 draws certify", write("far.tsv", HEADER +
                                                                                           "0\t1\t1\t5\t1\t0\n")),
    Case("analyze two conflicting rows for one image", ("analyze", "{res}"),
         "res.tsv line 2 and {tmp}/res.tsv line 4 give image 0 different rows", edit_results(conflicting_row)),
    Case("analyze a file without a sidecar", ("analyze", "{tmp}/c.tsv"), "has no sidecar (c.tsv.json)",
         write("c.tsv", COHEN)),
    Case("analyze a file without a sidecar, some flags", ("analyze", "{tmp}/c.tsv", "--sigma", "0.25"),
         "give them: --n N --file-alpha ALPHA", write("c.tsv", COHEN)),
    Case("analyze --sigma against the sidecar", ("analyze", "{res}", "--sigma", "0.5"),
         "--sigma 0.5 disagrees with {tmp}/res.tsv.json, which gives sigma=0.25"),
    Case("analyze a sidecar with a negative sigma", ("analyze", "{res}"),
         "the sigma that res.tsv.json gives must be a finite number > 0 (got -1)", sidecar_says(sigma=-1)),
    Case("analyze a sidecar with a subnormal alpha", ("analyze", "{res}"), "the alpha that res.tsv.json gives must "
         "be a finite number > 0 and < 0.5, and at least 2.225e-308 (the smallest normal float; got 1e-320)",
         sidecar_says(alpha=1e-320)),
    Case("analyze a sidecar without n", ("analyze", "{res}"), "its sidecar res.tsv.json does not give the run's σ, N "
         "and α", sidecar_says(n=None)),
    Case("analyze a sidecar nested 100000 deep", ("analyze", "{res}"), "is not a configuration",
         write("res.tsv.json", DEEP)),
    Case("analyze shards of runs split in 2 and in 3", ("analyze", "{tmp}/s0.tsv", "{tmp}/s1.tsv"),
         "split into different numbers of shards (s0.tsv: 2, s1.tsv: 3)", shards_of("0/2", "1/3")),
    Case("analyze a 1 MB cell", ("analyze", "{tmp}/big.tsv"), "... (1000000 characters) is not a finite number",
         write("big.tsv", HEADER + "0\t1\t1\t" + "x" * 1_000_000 + "\t1\t0\n")),
    Case("analyze --alpha 1e-320", ("analyze", "{res}", "--alpha", "1e-320"), "--alpha: must be a finite number > 0 "
         "and < 0.5, and at least"),
    Case("analyze --n 1e30", ("analyze", "{tmp}/c.tsv", "--n", "1e30"), "--n: must be a whole number >= 1 and <="),
    Case("analyze --sigma nan", ("analyze", "{tmp}/c.tsv", "--sigma", "nan"), "--sigma: must be a finite number > 0"),
    Case("analyze --file-alpha 0.5", ("analyze", "{tmp}/c.tsv", "--file-alpha", "0.5"),
         "--file-alpha: must be a finite number > 0 and < 0.5"),
    Case("analyze --radii nan", ("analyze", "{res}", "--radii", "0,nan"), "--radii: must be comma-separated"),
    Case("analyze --radii -1", ("analyze", "{res}", "--radii", "-1"), "--radii: must be comma-separated"),
    Case("analyze --radii empty", ("analyze", "{res}", "--radii", ","), "--radii: needs at least one number"),
    Case("analyze --alpha 0.7", ("analyze", "{res}", "--alpha", "0.7"), "--alpha: must be a finite number > 0"),
    Case("analyze --alpha nan", ("analyze", "{res}", "--alpha", "nan"), "--alpha: must be a finite number > 0"),
    Case("analyze --alpha on Cohen's format", ("analyze", "{tmp}/cohen.tsv", "--alpha", "0.01", *SETTINGS),
         "keeps no counts", write("cohen.tsv", HEADER + "0\t1\t1\t0.5\t1\t0\n")),
    Case("analyze --alpha without the sidecar", ("analyze", "{res}", "--alpha", "0.01"), "has no sidecar "
         "(res.tsv.json)", remove("res.tsv.json")),
    Case("analyze --paired with one file", ("analyze", "{res}", "--paired"), "--paired needs at least two runs"),
    Case("analyze --csv a directory", ("analyze", "{res}", "--csv", "{tmp}"), "--csv: {tmp} is a directory"),
    Case("analyze --html under a file", ("analyze", "{res}", "--html", "{tmp}/res.tsv/f.html"),
         "is a file, not a folder"),
    Case("analyze --csv over its input", ("analyze", "{res}", "--csv", "{res}"), "is one of the files being analyzed"),
    Case("analyze --markdown over a sidecar", ("analyze", "{res}", "--markdown", "{tmp}/res.tsv.json"),
         "is one of the files being analyzed"),
    Case("analyze --csv over a sidecar's earlier name", ("analyze", "{res}", "--csv", "{tmp}/res.json"),
         "is one of the files being analyzed"),
    # ---- results (the embedded benchmark)
    Case("results --sigmas nan", ("results", "--sigmas", "0.25", "nan"), "--sigmas: must be a finite number > 0"),
    Case("results --sigmas 0", ("results", "--sigmas", "0"), "--sigmas: must be a finite number > 0"),
    Case("results --max 0", ("results", "--max", "0"), "--max: must be a whole number >= 1"),
    Case("results --n -5", ("results", "--n", "-5"), "--n: must be a whole number >= 1"),
    Case("results --steps 0", ("results", "--steps", "0"), "--steps: must be a whole number >= 1"),
    Case("results --threads -1", ("results", "--threads", "-1"), "--threads: must be a whole number >= 0"),
    Case("results --threads 100000", ("results", "--threads", "100000"), "--threads: must be a whole number from 0 "
         f"to {os.cpu_count()}, this machine's CPU count"),
    Case("results --runs-dir a file", ("results", "--runs-dir", "{res}"), "is a file, not a folder"),
    Case("results --methods unknown", ("results", "--methods", "nope"), "Unknown run 'nope'"),
    # ---- zoo (the embedded models' training)
    Case("zoo train-denoiser --lr nan", ("zoo", "train-denoiser", "--lr", "nan"), "--lr: must be a finite number"),
    Case("zoo train-classifier --steps 0", ("zoo", "train-classifier", "--steps", "0"), "--steps: must be a whole"),
    Case("zoo train-classifier --weight-decay inf", ("zoo", "train-classifier", "--weight-decay", "inf"),
         "--weight-decay: must be a finite number >= 0"),
    Case("zoo train-classifier --threads 100000", ("zoo", "train-classifier", "--threads", "100000"),
         "--threads: must be a whole number from 0 to"),
    Case("zoo card --limit 0", ("zoo", "card", "--limit", "0"), "--limit: must be a whole number >= 1"),
    Case("zoo train-denoiser --out under a file", ("zoo", "train-denoiser", "--out", "{res}/x"),
         "is under"),
]
