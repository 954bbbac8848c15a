"""The data stage: fetch photos, index them into a manifest, split, check and report.

Names load on first use, so that what needs only the image decoder (the count server) does not
import pandas and scikit-learn.
"""

from importlib import import_module

from bintally.errors import DataError

LAZY = {"CheckReport": "check", "check_manifest": "check", "build_manifest": "index", "index_to_manifest": "index",
        "read_manifest": "manifest", "write_manifest": "manifest", "SplitConfig": "split_config", "class_names": "split_config",
        "split_manifest": "split"}

__all__ = ["DataError", *LAZY]


def __getattr__(name: str):
    if name in LAZY:
        return getattr(import_module(f"bintally.data.{LAZY[name]}"), name)
    raise AttributeError(f"module 'bintally.data' has no attribute {name!r}")
