"""`bintally data report`: plots a person would rather look at than read, on one HTML page."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Template  # noqa: E402

from bintally.data.images import decode_image  # noqa: E402
from bintally.data.manifest import manifest_name, usable  # noqa: E402
from bintally.data.split import SPLITS, manifest_labels, split_summary  # noqa: E402
from bintally.errors import DataError  # noqa: E402

CHANNELS = ("r", "g", "b")
SPLIT_COLOURS = {"train": "#4c72b0", "val": "#dd8452", "test": "#55a868", "excluded": "#bbbbbb"}

PAGE = Template("""<!doctype html>
<html><head><meta charset="utf-8"><title>bintally data report</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}</style></head><body>
<h1>Data report</h1>
<p>Source: <code>{{ source }}</code></p>
<h2>Summary</h2>
<table><tr><th>photos</th><th>usable</th><th>unusable</th></tr>
<tr><td>{{ n }}</td><td>{{ n_usable }}</td><td>{{ n - n_usable }}</td></tr></table>
{% if statuses %}<h3>Unusable files by reason</h3>{{ statuses }}{% endif %}
<h3>Pixel statistics (usable photos, RGB in [0, 1])</h3>{{ channel_table }}
{% if split_table %}<h2>Splits</h2>{{ split_table }}{% endif %}
{% for title, file in plots %}<h2>{{ title }}</h2><img src="{{ file }}" alt="{{ title }}">{% endfor %}
</body></html>""")


def count_labels(df: pd.DataFrame) -> pd.Series:
    """Class label per row: the split's label if present, else the count's class in the manifest's label space."""
    if "label" in df:
        return df["label"]
    return manifest_labels(df).label_of(df["count"])


def label_names(df: pd.DataFrame) -> list[str]:
    return manifest_labels(df).names


def plot_class_histogram(df: pd.DataFrame, path: Path) -> None:
    labels, names = count_labels(df), label_names(df)
    split = df["split"] if "split" in df else pd.Series("all", index=df.index)
    table = pd.crosstab(labels, split).reindex(range(len(names)), fill_value=0)
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = np.zeros(len(names))
    for column in [c for c in (*SPLITS, "excluded", "all") if c in table]:
        ax.bar(range(len(names)), table[column], bottom=bottom, label=column, color=SPLIT_COLOURS.get(column, "#4c72b0"))
        bottom += table[column].to_numpy()
    ax.set_xticks(range(len(names)), names)
    ax.set_xlabel("items in bin")
    ax.set_ylabel("photos")
    if table.columns.size:
        ax.legend()
    ax.set_title("Photos per count")
    save(fig, path)


def thumbnails(rows: pd.DataFrame, n: int, seed: int, size: int) -> list:
    """Up to n photos of `rows` in a seeded order, skipping any that no longer decode (deleted or changed since indexing)."""
    found = []
    for path in rows["path"].sample(frac=1, random_state=seed):
        if len(found) == n:
            break
        try:
            found.append(decode_image(path).resize((size, size)))
        except DataError:
            continue
    return found


def plot_sample_grid(df: pd.DataFrame, path: Path, per_class: int = 8, seed: int = 0, size: int = 96) -> None:
    labels, names = count_labels(df), label_names(df)
    fig, axes = plt.subplots(len(names), per_class, figsize=(per_class * 1.2, len(names) * 1.3), squeeze=False)
    for row, name in enumerate(names):
        images = thumbnails(df[(labels == row).fillna(False)], per_class, seed, size)
        for col in range(per_class):
            axes[row, col].axis("off")
            if col < len(images):
                axes[row, col].imshow(images[col])
        axes[row, 0].set_title(f"{name} items", fontsize=8, loc="left")
    fig.suptitle("Sample photos per count")
    save(fig, path)


def plot_image_sizes(df: pd.DataFrame, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = df.groupby(["width", "height"]).size().reset_index(name="n")
    left.scatter(sizes["width"], sizes["height"], s=10 + 200 * sizes["n"] / sizes["n"].max(), alpha=0.5)
    left.set_xlabel("width (px)")
    left.set_ylabel("height (px)")
    left.set_title("Image sizes (marker area ~ photos)")
    right.hist(df["bytes"] / 1024, bins=50, color="#4c72b0")
    right.set_xlabel("file size (KiB)")
    right.set_ylabel("photos")
    right.set_title("File sizes")
    save(fig, path)


def plot_channel_stats(df: pd.DataFrame, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for c, colour in zip(CHANNELS, ("red", "green", "blue")):
        left.hist(df[f"mean_{c}"], bins=50, alpha=0.5, color=colour, label=c.upper())
        right.hist(df[f"std_{c}"], bins=50, alpha=0.5, color=colour, label=c.upper())
    left.set_title("Per-photo channel mean")
    right.set_title("Per-photo channel std")
    left.legend()
    save(fig, path)


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def channel_statistics(df: pd.DataFrame) -> pd.DataFrame:
    """Dataset mean and std per channel, pooling pixels (each photo weighted by its pixel count)."""
    weights = (df["width"] * df["height"]).astype(float).to_numpy()
    rows = {}
    for c in CHANNELS:
        mean = np.average(df[f"mean_{c}"], weights=weights)
        second_moment = np.average(df[f"std_{c}"].astype(float) ** 2 + df[f"mean_{c}"].astype(float) ** 2, weights=weights)
        rows[c.upper()] = {"mean": round(mean, 4), "std": round(float(np.sqrt(second_moment - mean**2)), 4)}
    return pd.DataFrame(rows).T


def write_report(df: pd.DataFrame, out: str | Path) -> Path:
    """Write the PNG plots and index.html into `out`; return the page's path."""
    good = df[usable(df)]
    if good.empty:
        raise DataError(manifest_name(df), f"no usable photos to report on ({len(df)} photos, none usable: see `bintally data check`)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        ("Photos per count", "class_histogram.png", plot_class_histogram),
        ("Sample photos per count", "sample_grid.png", plot_sample_grid),
        ("Image and file sizes", "image_sizes.png", plot_image_sizes),
        ("Channel statistics", "channel_stats.png", plot_channel_stats),
    ]
    for _, file, plot in plots:
        plot(good, out / file)
    bad = df.loc[~usable(df), "status"].str.split(":").str[0].value_counts()
    page = out / "index.html"
    page.write_text(
        PAGE.render(
            source=html.escape(str(df.attrs.get("info", {}).get("source", "?"))),
            n=len(df),
            n_usable=len(good),
            statuses=bad.to_frame("photos").to_html() if len(bad) else "",
            channel_table=channel_statistics(good).to_html(),
            split_table=split_summary(df).to_html() if "split" in df else "",
            plots=[(title, file) for title, file, _ in plots],
        )
    )
    return page
