"""The `bintally` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from bintally.errors import DataError

app = typer.Typer(help="Count items in warehouse bin photos.", no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Fetch, index, split, check and report on bin photos.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def echo_err(message: str) -> None:
    typer.echo(message, err=True)


def default_manifest(manifest: Optional[Path]) -> Path:
    """With no manifest given, work on the bundled sample (indexed and split once, then cached)."""
    if manifest is not None:
        return manifest
    from bintally.data.sample import sample_manifest

    path = sample_manifest()
    echo_err(f"no manifest given: using the bundled sample ({path})")
    return path


@data_app.command("index")
def index_cmd(
    src: Annotated[Optional[Path], typer.Argument(help="Bucket-layout folder, class folders or a path,count CSV. Default: the bundled sample.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest to write (Parquet).")] = Path("manifest.parquet"),
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes (default: all cores).")] = None,
):
    """Build a Parquet manifest: one row per photo, with its count, size, hashes and status."""
    from bintally.data.index import index_to_manifest
    from bintally.paths import SAMPLE_DIR

    df = index_to_manifest(src or SAMPLE_DIR, out, workers=workers)
    bad = df[df["status"] != "ok"]
    for row in bad.itertuples():
        echo_err(f"{row.path}: {row.status}")
    typer.echo(f"{len(df) - len(bad)} usable photos, {len(bad)} unusable; manifest written to {out}")


@data_app.command("split")
def split_cmd(
    manifest: Annotated[Optional[Path], typer.Argument(help="Manifest from `bintally data index`. Default: the bundled sample.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the split manifest (default: in place).")] = None,
    fractions: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed for the group shuffle.")] = 0,
    max_count: Annotated[int, typer.Option(help="Largest count with its own class.")] = 5,
    overflow: Annotated[str, typer.Option(help="Counts above --max-count: 'class' (one overflow class) or 'exclude'.")] = "class",
    file_list: Annotated[Optional[Path], typer.Option(help="Udacity file_list.json: split only the ids it lists.")] = None,
    near_duplicate_distance: Annotated[int, typer.Option(help="pHash bits within which two photos are near-duplicates.")] = 6,
):
    """Assign train/val/test, stratified by count, keeping near-duplicates in one split."""
    from bintally.data.manifest import read_manifest, write_manifest
    from bintally.data.split import SplitConfig, split_manifest, split_summary

    manifest = default_manifest(manifest)
    try:
        parts = tuple(float(f) for f in fractions.split(","))
        config = SplitConfig(fractions=parts, seed=seed, max_count=max_count, overflow=overflow,
                             file_list=str(file_list) if file_list else None,
                             near_duplicate_distance=near_duplicate_distance)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    df = split_manifest(read_manifest(manifest), config)
    write_manifest(df, out or manifest, info=df.attrs["info"])
    typer.echo(split_summary(df).to_string())
    typer.echo(f"split manifest written to {out or manifest}")


@data_app.command("check")
def check_cmd(
    manifest: Annotated[Optional[Path], typer.Argument(help="Manifest (split or not). Default: the bundled sample.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full findings as JSON.")] = None,
    near_duplicate_distance: Annotated[int, typer.Option(help="pHash bits within which two photos are near-duplicates.")] = 6,
):
    """Report corrupt files, exact and near-duplicates, and leakage across splits (exit 1 on leakage)."""
    from bintally.data.check import check_manifest, format_report
    from bintally.data.manifest import read_manifest

    report = check_manifest(read_manifest(default_manifest(manifest)), near_duplicate_distance)
    typer.echo(format_report(report))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.as_dict(), indent=2))
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("report")
def report_cmd(
    manifest: Annotated[Optional[Path], typer.Argument(help="Manifest (split or not). Default: the bundled sample.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNG plots and index.html.")] = Path("data-report"),
):
    """Write plots (class histogram, sample grid, sizes, channel statistics) and an HTML page."""
    from bintally.data.manifest import read_manifest
    from bintally.data.report import write_report

    page = write_report(read_manifest(default_manifest(manifest)), out)
    typer.echo(f"report written to {page}")


@data_app.command("fetch")
def fetch_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to fill in bucket layout (bin-images/, metadata/).")] = Path("abid"),
    ids: Annotated[Optional[str], typer.Option(help="Comma-separated ids, as text (e.g. 00523,00524).")] = None,
    ids_file: Annotated[Optional[Path], typer.Option(help="A text file of ids, one per line.")] = None,
    id_range: Annotated[Optional[str], typer.Option(help="An inclusive range such as 1-1000 (ids zero-padded to 5 digits).")] = None,
    file_list: Annotated[Optional[Path], typer.Option(help="A Udacity file_list.json.")] = None,
    source: Annotated[Optional[str], typer.Option(help="HTTPS base URL of the bucket.")] = None,
    bucket: Annotated[Optional[str], typer.Option(help="S3 bucket name, with --endpoint-url for an S3-compatible server.")] = None,
    endpoint_url: Annotated[Optional[str], typer.Option(help="S3-compatible endpoint, e.g. http://127.0.0.1:9000.")] = None,
    concurrency: Annotated[int, typer.Option(help="Downloads at once.")] = 32,
    retries: Annotated[int, typer.Option(help="Retries per file, with exponential backoff.")] = 5,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 30.0,
    metadata: Annotated[bool, typer.Option(help="Also fetch metadata/<id>.json.")] = True,
):
    """Download ABID photos and metadata (default: the public bucket over anonymous HTTPS). Resumable."""
    from bintally.data import fetch as f

    chosen = [x for x in (ids, ids_file, id_range, file_list) if x is not None]
    if len(chosen) != 1:
        raise typer.BadParameter("give exactly one of --ids, --ids-file, --id-range, --file-list")
    if ids is not None:
        id_list = [i.strip() for i in ids.split(",") if i.strip()]
    elif ids_file is not None:
        id_list = f.ids_from_text_file(ids_file)
    elif id_range is not None:
        id_list = f.parse_id_range(id_range)
    else:
        id_list = f.ids_from_file_list(file_list)
    if bucket or endpoint_url:
        src = f.s3_source(bucket or "aft-vbi-pds", endpoint_url)
    else:
        src = source or f.DEFAULT_SOURCE
    config = f.FetchConfig(out=out, source=src, concurrency=concurrency, retries=retries,
                           timeout=timeout, metadata=metadata)
    summary = f.fetch(id_list, config)
    typer.echo(summary.describe())
    if summary.failed:
        raise typer.Exit(1)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app(prog_name="bintally")
    except DataError as e:
        echo_err(f"error: {e}")
        sys.exit(2)
