"""The data report: real plots from real photos, and pixel statistics that match the pixels."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bintally.data import build_manifest, split_manifest
from bintally.data.report import channel_statistics, write_report


def test_report_writes_plots_and_page(small_bucket, tmp_path):
    df = split_manifest(build_manifest(small_bucket, progress=False))
    page = write_report(df, tmp_path / "report")
    html = page.read_text()
    for name in ("class_histogram", "sample_grid", "image_sizes", "channel_stats"):
        png = tmp_path / "report" / f"{name}.png"
        with Image.open(png) as img:
            assert img.size[0] > 300 and len(np.unique(np.asarray(img.convert("L")))) > 10
        assert f'src="{name}.png"' in html
    assert "<h2>Splits</h2>" in html and str(small_bucket) in html


def test_channel_statistics_match_pooled_pixels(small_bucket):
    df = build_manifest(small_bucket, progress=False).head(4)
    pixels = np.concatenate(
        [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255 for p in df["path"]]
    )
    stats = channel_statistics(df)
    np.testing.assert_allclose(stats["mean"].to_numpy(), pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(stats["std"].to_numpy(), pixels.std(0), atol=1e-3)
