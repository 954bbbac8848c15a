"""The data stage: fetch photos, index them into a manifest, split, check and report."""

from bintally.data.check import CheckReport, check_manifest
from bintally.data.index import build_manifest, index_to_manifest
from bintally.data.manifest import read_manifest, write_manifest
from bintally.data.split import SplitConfig, class_names, split_manifest
from bintally.errors import DataError

__all__ = [
    "CheckReport", "DataError", "SplitConfig", "build_manifest", "check_manifest", "class_names",
    "index_to_manifest", "read_manifest", "split_manifest", "write_manifest",
]
