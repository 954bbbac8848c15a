"""`bintally export`."""

from __future__ import annotations

import typer

from bintally.cli.app import app, command, show_progress
from bintally.cli.options import settings_options
from bintally.export.config import ExportConfig


@command(app, "export")
@settings_options(ExportConfig)
def export_cmd(settings: dict):
    """Export a trained model: ONNX (optionally int8) for serving, or safetensors."""
    from bintally.export import export

    config = ExportConfig(**settings)
    result = export(config.model, config.out, format=config.format, quantize=config.quantize, overwrite=config.overwrite, data=config.data,
                    progress=show_progress(config.progress), tta=config.tta)
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
