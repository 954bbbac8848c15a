"""The `bintally` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from bintally.errors import ConfigError, DataError

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


Opt = typer.Option


@app.command("train", context_settings={"help_option_names": ["-h", "--help"]})
def train_cmd(
    data: Annotated[Optional[str], Opt(help="Split manifest, bucket folder, class folders or CSV. Default: the bundled sample.")] = None,
    preset: Annotated[Optional[str], Opt(help="Named recipe: fast (frozen features), finetune, best.")] = None,
    config_file: Annotated[Optional[Path], Opt("--config", help="JSON settings (e.g. from bintally tune); flags override them.")] = None,
    out: Annotated[Optional[str], Opt(help="Run directory. Default: runs/train.")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue the run in this directory from its last checkpoint.")] = None,
    backbone: Annotated[Optional[str], Opt(help="efficientnet_lite0/1/2, resnet18/34/50/101 or any timm model name.")] = None,
    head: Annotated[Optional[str], Opt(help="linear, mlp or ordinal.")] = None,
    weights: Annotated[Optional[str], Opt(help="Backbone weights file (.pt/.pth state dict).")] = None,
    pretrained: Annotated[Optional[bool], Opt("--pretrained/--random-init", help="Start from shipped ImageNet weights.")] = None,
    max_count: Annotated[Optional[int], Opt(help="Largest count with its own class; more is one overflow class.")] = None,
    overflow: Annotated[Optional[str], Opt(help="class: counts above max-count form one class; exclude: learn counts 0..max-count only.")] = None,
    decode: Annotated[Optional[str], Opt(help="Count from probabilities: argmax, median or expected (default: median for ordinal).")] = None,
    dropout: Annotated[Optional[float], Opt(help="Dropout before the head's layers.")] = None,
    mode: Annotated[Optional[str], Opt(help="frozen (head on cached features), partial or full fine-tuning.")] = None,
    unfreeze: Annotated[Optional[int], Opt(help="partial: how many top backbone stages to train.")] = None,
    image_size: Annotated[Optional[int], Opt(help="Input size in pixels.")] = None,
    epochs: Annotated[Optional[int], Opt()] = None,
    batch_size: Annotated[Optional[int], Opt(help="Per process.")] = None,
    optimizer: Annotated[Optional[str], Opt(help="adam, adamw or sgd.")] = None,
    lr: Annotated[Optional[float], Opt(help="Head learning rate.")] = None,
    backbone_lr_scale: Annotated[Optional[float], Opt(help="Backbone lr = lr x this.")] = None,
    weight_decay: Annotated[Optional[float], Opt()] = None,
    schedule: Annotated[Optional[str], Opt(help="cosine, sgdr (warm restarts) or step; all with warm-up.")] = None,
    momentum: Annotated[Optional[float], Opt(help="SGD momentum.")] = None,
    warmup_epochs: Annotated[Optional[float], Opt()] = None,
    restart_epochs: Annotated[Optional[int], Opt(help="sgdr: length of the first cycle (doubles each restart).")] = None,
    step_epochs: Annotated[Optional[int], Opt(help="step: decay every this many epochs.")] = None,
    step_gamma: Annotated[Optional[float], Opt(help="step: decay factor.")] = None,
    label_smoothing: Annotated[Optional[float], Opt()] = None,
    balance: Annotated[Optional[str], Opt(help="none, sampler (class-balanced sampling) or weights (loss weights).")] = None,
    ema: Annotated[Optional[float], Opt(help="EMA decay of the weights, e.g. 0.999; 0 = off.")] = None,
    amp: Annotated[Optional[bool], Opt("--amp/--no-amp", help="bf16 autocast (default: on for GPUs only).")] = None,
    compile: Annotated[Optional[bool], Opt("--compile/--no-compile", help="torch.compile the model.")] = None,
    channels_last: Annotated[Optional[bool], Opt("--channels-last/--no-channels-last")] = None,
    tta: Annotated[Optional[bool], Opt("--tta/--no-tta", help="Average with the mirrored photo when evaluating.")] = None,
    workers: Annotated[Optional[int], Opt(help="Data-loader processes.")] = None,
    device: Annotated[Optional[str], Opt(help="auto, cpu, cuda, cuda:1 ...")] = None,
    seed: Annotated[Optional[int], Opt()] = None,
    max_steps: Annotated[Optional[int], Opt(help="Stop after this many steps (smoke runs).")] = None,
    profile: Annotated[Optional[bool], Opt("--profile", help="Write a PyTorch profiler trace to RUN/profile.")] = None,
    progress: Annotated[Optional[bool], Opt("--progress/--no-progress", help="Progress bars.")] = None,
):
    """Train a counting model (run under torchrun for DistributedDataParallel)."""
    flags = {k: v for k, v in locals().items() if k not in ("resume", "preset", "config_file") and v is not None}
    from bintally.training import Interrupted, resolve_config, train
    from bintally.training.config import read_config_file

    from_file = read_config_file(config_file) if config_file else {}
    preset = preset or from_file.pop("preset", None)
    explicit = from_file | flags
    config = resolve_config(preset, **explicit)
    try:
        result = train(config, resume=str(resume) if resume else None, explicit=explicit)
    except Interrupted as e:
        echo_err(str(e))
        raise typer.Exit(130) from None
    except KeyboardInterrupt:  # the signal came as the run ended: it finished and saved everything first
        echo_err(f"stopped by signal after the run finished; results are in {config.out}")
        raise typer.Exit(130) from None
    final = result.final
    n = config.max_count
    typer.echo(f"run: {result.run}  ({result.wall_time_s} s)")
    typer.echo(f"validation (last epoch): accuracy {final['val_accuracy']:.3f}, RMSE {final['val_rmse']:.3f} on all {final['val_n']} photos; "
               f"accuracy {final[f'val_accuracy_0_{n}']:.3f}, RMSE {final[f'val_rmse_0_{n}']:.3f} on counts 0-{n}")
    for check, message in result.health["findings"].items():
        typer.echo(f"health: {check}: {message}")


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[Optional[Path], Opt("--model", "-m", help="Run directory or best.pt.")] = None,
    data: Annotated[Optional[Path], Opt(help="Manifest, bucket folder or class folders. Default: the bundled sample.")] = None,
    split: Annotated[str, Opt(help="Split to score; 'all' scores every photo. Data without a split column is scored whole.")] = "test",
    predictions: Annotated[Optional[Path], Opt(help="Recompute every metric from a saved predictions file instead.")] = None,
    json_out: Annotated[Optional[Path], Opt("--json", help="Write every metric to this JSON file.")] = None,
    report: Annotated[Optional[Path], Opt(help="Write an HTML report with plots into this folder.")] = None,
    save_predictions: Annotated[Optional[Path], Opt(help="Save per-photo predictions (.csv or .parquet).")] = None,
    bootstrap: Annotated[int, Opt(help="Bootstrap resamples for the 95% intervals.")] = 1000,
    workers: Annotated[int, Opt(help="Data-loader processes.")] = 2,
    progress: Annotated[bool, Opt("--progress/--no-progress")] = True,
):
    """Score a trained model: accuracy, RMSE, per-class metrics, calibration and confidence intervals."""
    from bintally.evaluation import evaluate

    options = {"resamples": bootstrap} | ({} if predictions else {"workers": workers, "progress": progress})
    result = evaluate(model=model, data=data, split=None if split == "all" else split, predictions=predictions,
                      json_out=json_out, report=report, save_to=save_predictions, **options)
    m, n = result.metrics, result.max_count
    if result.info.get("no_split_column") and split != "all":
        echo_err(f"note: {data} has no split column, so all its photos were scored; to score one split, "
                 f"pass the split manifest (`bintally data split`, or the manifest.parquet in the training run)")
    for name, suffix in (("all", ""), (f"0-{n}", f"_0_{n}"), (f"1-{n}", f"_1_{n}")):
        if m[f"n{suffix}"]:
            low, high = m["ci95"][f"accuracy{suffix}"]
            typer.echo(f"{name:>4}: n={m[f'n{suffix}']:<5} accuracy {m[f'accuracy{suffix}']:.3f} [{low:.3f}, {high:.3f}]  "
                       f"RMSE {m[f'rmse{suffix}']:.3f}  MAE {m[f'mae{suffix}']:.3f}  within-1 {m[f'within1{suffix}']:.3f}")
    typer.echo(f"ECE {m['ece']:.3f}")
    for written in (json_out, save_predictions, report and report / "index.html"):
        if written:
            typer.echo(f"wrote {written}")


@app.command("tune")
def tune_cmd(
    data: Annotated[Optional[str], Opt(help="Split manifest, bucket folder, class folders or CSV. Default: the bundled sample.")] = None,
    n_trials: Annotated[int, Opt(help="Trials to add to the study in this call (all workers together).")] = 50,
    timeout: Annotated[Optional[float], Opt(help="Stop starting new trials after this many seconds.")] = None,
    study: Annotated[str, Opt(help="Study name; the same name resumes the study.")] = "bintally",
    storage: Annotated[Optional[str], Opt(help="SQLAlchemy URL, e.g. postgresql://host/db. Default: sqlite:///OUT/optuna.db.")] = None,
    out: Annotated[str, Opt(help="Outputs go to OUT/STUDY/.")] = "runs/tune",
    jobs: Annotated[int, Opt(help="Local worker processes sharing the study.")] = 1,
    pruner: Annotated[str, Opt(help="median, hyperband or none.")] = "median",
    mode: Annotated[str, Opt(help="frozen (heads on cached features), partial or full.")] = "frozen",
    preset: Annotated[Optional[str], Opt(help="Fixed settings the search leaves alone.")] = "fast",
    config_file: Annotated[Optional[Path], Opt("--config", help="JSON of fixed training settings applied over the preset.")] = None,
    backbones: Annotated[str, Opt(help="Comma-separated backbones to try.")] = "efficientnet_lite0",
    image_sizes: Annotated[str, Opt(help="Comma-separated image sizes to try.")] = "224",
    min_epochs: Annotated[int, Opt()] = 5,
    max_epochs: Annotated[int, Opt()] = 30,
    max_count: Annotated[int, Opt(help="Largest count with its own class.")] = 5,
    seed: Annotated[int, Opt()] = 0,
    progress: Annotated[bool, Opt("--progress/--no-progress")] = True,
):
    """Search training settings with Optuna (TPE, pruning on per-epoch validation accuracy)."""
    from bintally.training import Interrupted
    from bintally.training.config import read_config_file
    from bintally.tuning import TuneConfig, tune

    fixed = read_config_file(config_file) if config_file else {}
    config = TuneConfig(data=data, study=study, storage=storage, out=out, n_trials=n_trials, timeout=timeout, jobs=jobs,
                        pruner=pruner, mode=mode, preset=preset, fixed=fixed, backbones=split_list(backbones),
                        image_sizes=[int(s) for s in split_list(image_sizes)], min_epochs=min_epochs, max_epochs=max_epochs,
                        max_count=max_count, seed=seed, progress=progress)
    try:
        result = tune(config)
    except (KeyboardInterrupt, Interrupted):
        echo_err(f"stopped; the finished trials are kept in {config.storage_url}. Run the same command to go on.")
        raise typer.Exit(130) from None
    typer.echo(f"study {result.study} ({result.storage}): {result.trials} trials, {result.complete} complete, {result.pruned} pruned")
    if result.best_config:
        typer.echo(f"best validation accuracy (counts 0-{max_count}): {result.best_value:.4f} with {json.dumps(result.best_params)}")
        typer.echo(f"train it: bintally train --config {result.best_config}")
    for name, path in result.outputs.items():
        typer.echo(f"{name}: {path}")


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@app.command("predict")
def predict_cmd(
    images: Annotated[list[Path], typer.Argument(help="Photos to count.")],
    model: Annotated[Path, Opt("--model", "-m", help="Run directory or best.pt.")] = Path("runs/train"),
    as_json: Annotated[bool, Opt("--json", help="Full output: probabilities of every count.")] = False,
):
    """Count the items in each photo."""
    from bintally.predict import Predictor

    results = Predictor.load(model).predict_paths(images)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for r in results:
        typer.echo(f"{r['image']}\t{r['count']}\t(p={r['probability']:.2f}, expected {r['expected_count']:.2f})")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app(prog_name="bintally")
    except (DataError, ConfigError) as e:
        echo_err(f"error: {e}")
        sys.exit(2)
