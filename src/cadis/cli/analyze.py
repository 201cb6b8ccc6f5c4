"""`cadis analyze`: tables, paired comparisons and figures from result files."""

from __future__ import annotations

import argparse
from pathlib import Path

from cadis.errors import CadisError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cadis.cli import checks

    p = sub.add_parser("analyze", help="certified accuracy, ACR and abstain rate from result TSVs")
    p.add_argument("files", nargs="+", help="result TSVs (shards of one run are merged)")
    p.add_argument("--radii", type=checks.reals(0, hint="e.g. 0,0.25,0.5"), default=(0, 0.25, 0.5, 0.75, 1.0),
                   help="comma-separated radii")
    p.add_argument("--alpha", type=checks.run_setting("alpha"),
                   help="re-certify offline from the stored counts at this failure probability instead of the "
                        "files' (needs the count columns and, for adaptive runs, the sidecar)")
    p.add_argument("--sigma", type=checks.run_setting("sigma"),
                   help="for files without a sidecar (e.g. Cohen's): the σ they were certified at")
    p.add_argument("--n", type=checks.run_setting("n"),
                   help="for files without a sidecar: the number of estimation draws N")
    p.add_argument("--file-alpha", type=checks.run_setting("alpha"),
                   help="for files without a sidecar: the α they were certified at (--alpha re-certifies)")
    p.add_argument("--envelope", action="store_true", help="add the best-σ envelope over the files")
    p.add_argument("--csv", type=checks.output_file, help="also write the table as CSV (missing folders are made)")
    p.add_argument("--markdown", type=checks.output_file, help="also write the table as markdown")
    p.add_argument("--html", type=checks.output_file, help="write a plotly figure of certified accuracy vs radius")
    p.add_argument("--paired", action="store_true",
                   help="also compare the first run with each other run image by image (exact McNemar test)")


def _check_outputs(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """The files to write: never one of the inputs or their sidecars, never two flags on one path."""
    from cadis.certification.output import legacy_sidecar_path, sidecar_path

    inputs = {Path(f).resolve() for f in args.files}
    inputs |= {side(f).resolve() for f in args.files for side in (sidecar_path, legacy_sidecar_path)}
    outputs: list[tuple[Path, str]] = []
    for flag in ("csv", "markdown", "html"):
        path = getattr(args, flag)
        if path is None:
            continue
        if path.resolve() in inputs:
            raise CadisError(f"--{flag} {path} is one of the files being analyzed (or a sidecar); "
                             "choose another name.")
        if path.resolve() in {p.resolve() for p, _ in outputs}:
            raise CadisError(f"--{flag} {path} is already the output of another flag; choose another name.")
        outputs.append((path, flag))
    return outputs


def _write(path: Path, write) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as e:
        raise CadisError(f"Cannot write {path}: {e.strerror or e}; choose another path.") from e


def run(args: argparse.Namespace) -> None:
    from cadis.analysis.tables import (
        certified_accuracy_figure,
        merge_results,
        paired_comparison,
        summary_markdown,
        summary_table,
    )

    radii = list(args.radii)
    outputs = _check_outputs(args)
    if args.paired and len(args.files) < 2:
        raise CadisError("--paired needs at least two runs.")
    # Every row is checked against its run's σ, N and α: from the sidecar, else from the flags.
    settings = {"sigma": args.sigma, "n": args.n, "alpha": args.file_alpha}
    results = merge_results(args.files, args.alpha, {k: v for k, v in settings.items() if v is not None},
                            need_settings=True)
    table = summary_table(results, radii, args.envelope)
    markdown = summary_markdown(table)
    if args.alpha is not None:
        print(f"Re-certified from the stored counts at α={args.alpha:g}.\n")
    print(markdown)
    unknown = {label: df.attrs.get("unknown_class", 0) for label, df in results.items()}
    for label, count in unknown.items():
        if count:
            print(f"\nnote: {label}: {count} image(s) abstained at the file's α and would certify at "
                  f"α={args.alpha:g}, but an abstain does not record its class; they count as abstains here "
                  "(re-run certify at that α for them).")
    if args.paired:
        if len(results) < 2:
            raise CadisError("--paired needs at least two runs (these files merge into one).")
        first, *others = results
        for other in others:
            paired = paired_comparison(results[first], results[other], radii)
            print(f"\n{first} vs {other}: images only the first / only the second certifies at r\n")
            print(paired.to_markdown(floatfmt=["", ".0f", ".0f", ".0f", "+.3f", ".2g"]))
    for path, flag in outputs:
        if flag == "csv":
            _write(path, table.to_csv)
        elif flag == "markdown":
            _write(path, lambda p: p.write_text(markdown + "\n"))
        else:
            figure = certified_accuracy_figure(results, envelope=args.envelope)
            _write(path, lambda p, fig=figure: fig.write_html(p, include_plotlyjs=True))
            print(f"figure: {path}")
