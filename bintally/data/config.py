"""The settings of `bintally data index`, `data check` and `data fetch` (`SplitConfig`, data split's, is in split_config.py),
without importing pandas or an HTTP client."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bintally.data.split_config import NEAR_DUPLICATE_DISTANCE, NEAR_DUPLICATE_HELP
from bintally.errors import ConfigError
from bintally.progress import PROGRESS_HELP
from bintally.settings import check_settings, setting

DEFAULT_SOURCE = "https://aft-vbi-pds.s3.amazonaws.com"


@dataclass
class IndexConfig:
    out: Path = setting(Path("manifest.parquet"), flag=("--out", "-o"), help="Manifest to write (.parquet).")
    workers: int | None = setting(None, low=1, help="Decoding processes (default: all cores, at most 8).")
    overwrite: bool = setting(False, flag=("--overwrite",), help="Replace an existing output file.")
    progress: bool = setting(True, help=PROGRESS_HELP)


@dataclass
class CheckConfig:
    json_out: Path | None = setting(None, flag=("--json",), help="Write the full findings as JSON.")
    near_duplicate_distance: int = setting(NEAR_DUPLICATE_DISTANCE, low=0, high=64, help=NEAR_DUPLICATE_HELP)
    verify_hashes: bool = setting(False, flag=("--verify-hashes",), help="Also re-hash every photo (sha256) to find changed files.")
    progress: bool = setting(True, help=PROGRESS_HELP)


@dataclass
class FetchConfig:
    out: Path = setting(Path("abid"), flag=("--out", "-o"), help="Folder to fill in bucket layout (bin-images/, metadata/).")
    source: str = setting(DEFAULT_SOURCE, cli=False)  # base URL; an object key is fetched from f"{source}/{key}"
    concurrency: int = setting(32, low=1, high=1024, help="Downloads at once.")
    retries: int = setting(5, low=0, help="Retries per file, with exponential backoff.")
    backoff: float = setting(0.2, low=0, cli=False)  # first retry wait, doubled each retry, with jitter, capped
    timeout: float = setting(30.0, low=0.001, help="Seconds per request.")
    metadata: bool = setting(True, help="Also fetch metadata/<id>.json.")
    verify_existing: bool = setting(True, cli=False)  # an existing file is checked by size (HEAD Content-Length) before it is skipped

    def __post_init__(self):
        self.out = Path(self.out)
        check_settings(self, "fetch setting")
        if not self.source.startswith(("http://", "https://")):
            raise ConfigError(f"source must be an http(s) URL, got {self.source!r}")
