"""`bintally export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from bintally.cli.app import Opt, ProgressOpt, app, command, show_progress


@command(app, "export")
def export_cmd(
    model: Annotated[Path, Opt("--model", "-m", help="Run directory, its model/ folder, or a model folder.")],
    out: Annotated[Path, Opt("--out", "-o", help="Folder to write the export to (new or empty; see --overwrite).")],
    format: Annotated[Literal["onnx", "safetensors"], Opt(
        "--format", help="onnx: model.onnx + model.json for ONNX Runtime (no torch needed to serve it); "
                         "safetensors: the PyTorch model.")] = "onnx",
    quantize: Annotated[Optional[Literal["int8"]], Opt(
        help="int8: static quantisation calibrated on training photos; records validation accuracy and speed-up of both.")] = None,
    data: Annotated[Optional[Path], Opt(help="Manifest or folder whose val (and train) photos check the export. "
                                             "Default: the run's own data, else the bundled sample.")] = None,
    tta: Annotated[Optional[bool], Opt("--tta/--no-tta", help="Average each photo with its mirror image (the model's own "
                                                              "setting if neither is given); --no-tta halves the compute.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing export in --out.")] = False,
    progress: ProgressOpt = True,
):
    """Export a trained model: ONNX (optionally int8) for serving, or safetensors."""
    from bintally.export import export

    result = export(model, out, format=format, quantize=quantize, overwrite=overwrite, data=data, progress=show_progress(progress),
                    tta=tta)
    for name, p in result.parity.items():
        typer.echo(f"parity {name}: {p['photos']} photos, max |p_onnx - p_torch| {p['max_abs_diff']:.2g}, "
                   f"same count on {p['count_agreement']:.1%}")
    if result.int8:
        v, s = result.int8["validation"], result.int8["speed"]
        typer.echo(f"int8 validation ({v['photos']} photos): accuracy {v['fp32']['accuracy']:.3f} -> {v['int8']['accuracy']:.3f}, "
                   f"RMSE {v['fp32']['rmse']:.3f} -> {v['int8']['rmse']:.3f}")
        typer.echo(f"int8 speed (batch {s['batch_size']}, {s['threads']} threads): {s['fp32_images_per_s']:.1f} -> "
                   f"{s['int8_images_per_s']:.1f} images/s ({s['speedup']:.2f}x; CPU time per image {s['fp32_cpu_ms_per_image']:.1f} -> "
                   f"{s['int8_cpu_ms_per_image']:.1f} ms)")
    typer.echo(f"wrote {result.out}")
