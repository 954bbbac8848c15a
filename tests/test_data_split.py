"""Splitting the bundled sample: stratified, reproducible, and leak-free; `check` finds leaks."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bintally.data import SplitConfig, build_manifest, check_manifest, split_manifest
from bintally.data.duplicates import id_block_key
from bintally.errors import ConfigError
from bintally.paths import SAMPLE_DIR


@pytest.fixture(scope="module")
def sample_df() -> pd.DataFrame:
    return build_manifest(SAMPLE_DIR, progress=False)


def test_sample_is_stratified_and_grouped(sample_df):
    counts = sample_df["count"].clip(upper=6).value_counts()
    assert len(sample_df) == len(list((SAMPLE_DIR / "bin-images").glob("*.jpg"))) == 1132
    assert set(counts.index) == set(range(7)) and counts.min() >= 50
    assert (sample_df["status"] == "ok").all()


def test_default_split_fractions_and_strata(sample_df):
    df = split_manifest(sample_df)
    shares = df["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.8, abs=0.03)
    assert shares["val"] == pytest.approx(0.1, abs=0.03)
    assert shares["test"] == pytest.approx(0.1, abs=0.03)
    per_class = pd.crosstab(df["label"], df["split"])
    assert (per_class[["train", "val", "test"]] > 0).all().all()
    assert df["label"].max() == 6 and (df.loc[df["count"] > 5, "label"] == 6).all()


def test_split_is_reproducible_and_seeded(sample_df):
    a, b = split_manifest(sample_df), split_manifest(sample_df)
    assert a["split"].tolist() == b["split"].tolist()
    c = split_manifest(sample_df, SplitConfig(seed=1))
    assert a["split"].tolist() != c["split"].tolist()


def test_consecutive_id_blocks_stay_together(sample_df):
    df = split_manifest(sample_df)
    per_block = df.groupby(df["id"].map(id_block_key))["split"].nunique()
    assert (per_block == 1).all()


def test_near_duplicates_far_apart_in_id_stay_together(sample_df, tmp_path):
    """Re-encoded copies under unrelated ids are near-duplicates only by pHash: the split must see them."""
    folder = tmp_path / "bucket"
    for sub in ("bin-images", "metadata"):
        (folder / sub).mkdir(parents=True)
    originals = sample_df.sample(40, random_state=0)
    for k, row in enumerate(originals.itertuples()):
        for photo_id, quality in ((row.id, 95), (f"9{k:04d}7", 70)):
            with Image.open(row.path) as img:
                buf = io.BytesIO()
                img.convert("RGB").save(buf, "JPEG", quality=quality)
            (folder / "bin-images" / f"{photo_id}.jpg").write_bytes(buf.getvalue())
            (folder / "metadata" / f"{photo_id}.json").write_text(json.dumps({"EXPECTED_QUANTITY": int(row.count)}))
    df = build_manifest(folder, progress=False)
    split = split_manifest(df, SplitConfig(fractions=(0.5, 0.25, 0.25)))
    report = check_manifest(split)
    assert len(report.near_duplicates) >= 40
    assert report.leaks == []
    scattered = split.copy()
    scattered["split"] = np.resize(["train", "val", "test"], len(split))
    assert len(check_manifest(scattered).leaks) > 0


def test_overflow_exclude_and_max_count(sample_df):
    df = split_manifest(sample_df, SplitConfig(max_count=3, overflow=False))
    assert (df.loc[df["count"] > 3, "split"] == "excluded").all()
    assert df.loc[df["split"] != "excluded", "label"].max() == 3
    df = split_manifest(sample_df, SplitConfig(max_count=3))
    assert (df.loc[df["count"] > 3, "label"] == 4).all()


def test_file_list_selects_subset(sample_df, tmp_path):
    chosen = sample_df[sample_df["count"].between(1, 5)].head(200)
    listing = {str(c): [f"metadata/{i}.json" for i in g["id"]] for c, g in chosen.groupby("count")}
    (tmp_path / "file_list.json").write_text(json.dumps(listing))
    df = split_manifest(sample_df, SplitConfig(file_list=str(tmp_path / "file_list.json")))
    assert set(df.loc[df["split"] != "excluded", "id"]) == set(chosen["id"])


def test_unusable_rows_are_excluded(sample_df):
    df = sample_df.copy()
    df.loc[df.index[:5], "status"] = "corrupt: not an image"
    split = split_manifest(df)
    assert (split["split"].iloc[:5] == "excluded").all()


@pytest.mark.parametrize("settings, problem", [
    (dict(fractions=(0.5, 0.5, 0.5)), "fractions must be three numbers"),
    (dict(fractions=(0.8, 0.2)), "fractions must be three numbers"),
    (dict(fractions=(float("nan"), 0.5, 0.5)), "fractions must be three numbers"),
    (dict(fractions=(1.2, -0.1, -0.1)), "fractions must be three numbers"),
    (dict(fractions=("a", "b", "c")), "fractions must be three numbers"),
    (dict(overflow="drop"), "unknown overflow 'drop'"),
    (dict(seed=-1), "seed must be a whole number from 0"),
    (dict(id_block=0), "id_block must be a whole number >= 1"),
    (dict(near_duplicate_distance=65), "near_duplicate_distance must be a whole number from 0 to 64"),
])
def test_bad_config_is_refused(settings, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        SplitConfig.for_options(**settings)  # overflow spelled as on the command line


def test_check_finds_exact_duplicates_and_corrupt_rows(sample_df):
    df = sample_df.copy()
    df.loc[df.index[1], "sha256"] = df.loc[df.index[0], "sha256"]
    df.loc[df.index[2], "status"] = "corrupt: empty file"
    report = check_manifest(df)
    assert sorted([df["id"].iloc[0], df["id"].iloc[1]]) in report.exact_duplicates
    assert [r["id"] for r in report.unusable] == [df["id"].iloc[2]]
