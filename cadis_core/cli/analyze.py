"""`python -m cadis_core analyze`: tables, paired comparisons and figures from result files."""

from __future__ import annotations

import argparse

from ..errors import CadisError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="certified accuracy, ACR and abstain rate from result TSVs")
    p.add_argument("files", nargs="+", help="result TSVs (shards of one run are merged)")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="comma-separated radii")
    p.add_argument("--envelope", action="store_true", help="add the best-σ envelope over the files")
    p.add_argument("--csv", help="also write the table as CSV")
    p.add_argument("--markdown", help="also write the table as markdown")
    p.add_argument("--html", help="write a plotly figure of certified accuracy vs radius")
    p.add_argument("--paired", action="store_true",
                   help="also compare the first run with each other run image by image (exact McNemar test)")


def run(args: argparse.Namespace) -> None:
    from ..analysis import (
        certified_accuracy_figure,
        merge_results,
        paired_comparison,
        summary_markdown,
        summary_table,
    )

    try:
        radii = [float(r) for r in args.radii.split(",")]
    except ValueError:
        raise CadisError(f"--radii must be comma-separated numbers (got {args.radii!r}).") from None
    results = merge_results(args.files)
    table = summary_table(results, radii, args.envelope)
    markdown = summary_markdown(table)
    print(markdown)
    if args.paired:
        if len(results) < 2:
            raise CadisError("--paired needs at least two runs.")
        first, *others = results
        for other in others:
            paired = paired_comparison(results[first], results[other], radii)
            print(f"\n{first} vs {other}: images only the first / only the second certifies at r\n")
            print(paired.to_markdown(floatfmt=["", ".0f", ".0f", ".0f", "+.3f", ".2g"]))
    if args.csv:
        table.to_csv(args.csv)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown + "\n")
    if args.html:
        certified_accuracy_figure(results, envelope=args.envelope).write_html(args.html, include_plotlyjs=True)
        print(f"figure: {args.html}")
