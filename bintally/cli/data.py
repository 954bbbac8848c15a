"""`bintally data ...`: fetch, index, split, check and report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from bintally.cli.app import Opt, ProgressOpt, command, data_app, default_manifest, echo_err, show_progress
from bintally.cli.options import settings_options
from bintally.cli.strict import exclusive
from bintally.data.config import DEFAULT_SOURCE, CheckConfig, FetchConfig, IndexConfig
from bintally.data.split_config import SplitConfig
from bintally.errors import DataError
from bintally.io import atomic_path, check_output_file, check_output_folder


def refuse_to_replace(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite:
        raise DataError(path, f"{what} already exists; pass --overwrite to replace it, or choose another --out")


@command(data_app, "index")
@settings_options(IndexConfig)
def index_cmd(
    settings: dict,
    src: Annotated[Optional[Path], typer.Argument(help="Bucket-layout folder, class folders or a path,count CSV. Default: the bundled sample.")] = None,
):
    """Build a Parquet manifest: one row per photo, with its count, size, hashes and status."""
    from bintally.data.index import index_to_manifest
    from bintally.paths import SAMPLE_DIR

    config = IndexConfig(**settings)
    check_output_file(config.out, (".parquet",))
    refuse_to_replace(config.out, config.overwrite, "a manifest")
    df = index_to_manifest(src or SAMPLE_DIR, config.out, workers=config.workers, progress=show_progress(config.progress))
    bad = df[df["status"] != "ok"]
    for row in bad.itertuples():
        echo_err(f"skipped {row.path}: {row.status}")
    typer.echo(f"{len(df) - len(bad)} usable photos, {len(bad)} unusable; manifest written to {config.out}")


@command(data_app, "split")
@settings_options(SplitConfig, given_only=True)
def split_cmd(
    settings: dict,
    manifest: Annotated[Optional[Path], typer.Argument(help="Manifest from `bintally data index`. Default: the bundled sample.")] = None,
    out: Annotated[Optional[Path], Opt("--out", "-o", help="Where to write the split manifest (default: in place).")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing split (in place) or an existing --out file.")] = False,
):
    """Assign train/val/test, stratified by count, keeping near-duplicates in one split."""
    from bintally.data.manifest import read_manifest, write_manifest
    from bintally.data.split import split_manifest, split_summary, split_warnings

    manifest = default_manifest(manifest)
    target = out or manifest
    check_output_file(target, (".parquet",))
    config = SplitConfig.for_options(**settings)
    df = read_manifest(manifest)
    if out is not None:
        refuse_to_replace(out, overwrite, "a manifest")
    elif "split" in df and not overwrite:
        raise DataError(manifest, "is already split; pass --overwrite to replace its split, or --out NEW.parquet to keep it")
    df = split_manifest(df, config)
    for warning in split_warnings(df):
        echo_err(f"warning: {warning}")
    write_manifest(df, target, info=df.attrs["info"])
    typer.echo(split_summary(df).to_string())
    typer.echo(f"split manifest written to {target}")


@command(data_app, "check")
@settings_options(CheckConfig)
def check_cmd(
    settings: dict,
    manifest: Annotated[Optional[Path], typer.Argument(help="Manifest (split or not). Default: the bundled sample.")] = None,
):
    """Report missing or changed files, corrupt files, duplicates, and leakage across splits (exit 1 on leakage or stale files)."""
    from bintally.data.check import check_manifest, format_report
    from bintally.data.manifest import read_manifest

    config = CheckConfig(**settings)
    show_progress(config.progress)
    if config.json_out:
        check_output_file(config.json_out, (".json",))
    report = check_manifest(read_manifest(default_manifest(manifest)), config.near_duplicate_distance, verify_hashes=config.verify_hashes)
    typer.echo(format_report(report))
    if config.json_out:
        with atomic_path(config.json_out) as tmp:
            tmp.write_text(json.dumps(report.as_dict(), indent=2))
    if not report.ok:
        raise typer.Exit(1)


@command(data_app, "report")
def report_cmd(
    manifest: Annotated[Optional[Path], typer.Argument(help="Manifest (split or not). Default: the bundled sample.")] = None,
    out: Annotated[Path, Opt("--out", "-o", help="Folder for the PNG plots and index.html.")] = Path("data-report"),
):
    """Write plots (class histogram, sample grid, sizes, channel statistics) and an HTML page."""
    from bintally.data.manifest import read_manifest
    from bintally.data.report import write_report

    check_output_folder(out)
    page = write_report(read_manifest(default_manifest(manifest)), out)
    typer.echo(f"report written to {page}")


@command(data_app, "fetch")
@exclusive("ids", "ids_file", "id_range", "file_list", required=True)
@exclusive("source", "bucket")
@exclusive("source", "endpoint_url")
@settings_options(FetchConfig)
def fetch_cmd(
    settings: dict,
    ids: Annotated[Optional[str], Opt(help="Comma-separated ids, as text (e.g. 00523,00524).")] = None,
    ids_file: Annotated[Optional[Path], Opt(help="A text file of ids, one per line.")] = None,
    id_range: Annotated[Optional[str], Opt(help="An inclusive range such as 1-1000 (ids zero-padded to 5 digits).")] = None,
    file_list: Annotated[Optional[Path], Opt(help="A Udacity file_list.json.")] = None,
    source: Annotated[Optional[str], Opt(help="HTTPS base URL of the bucket.")] = None,
    bucket: Annotated[Optional[str], Opt(help="S3 bucket name, with --endpoint-url for an S3-compatible server.")] = None,
    endpoint_url: Annotated[Optional[str], Opt(help="S3-compatible endpoint, e.g. http://127.0.0.1:9000.")] = None,
    progress: ProgressOpt = True,
):
    """Download ABID photos and metadata (default: the public bucket over anonymous HTTPS). Resumable."""
    from bintally.data import fetch as f

    check_output_folder(settings["out"])
    if ids is not None:
        id_list = [i.strip() for i in ids.split(",") if i.strip()]
    elif ids_file is not None:
        id_list = f.ids_from_text_file(ids_file)
    elif id_range is not None:
        id_list = f.parse_id_range(id_range)
    else:
        id_list = f.ids_from_file_list(file_list)
    if bucket or endpoint_url:
        source = f.s3_source(bucket or "aft-vbi-pds", endpoint_url)
    config = FetchConfig(**settings, source=source or DEFAULT_SOURCE)
    summary = f.fetch(id_list, config, progress=show_progress(progress))
    typer.echo(summary.describe())
    if summary.failed:
        raise typer.Exit(1)
