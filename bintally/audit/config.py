"""`AuditConfig`: the settings of `bintally audit run` (and of a run created over HTTP), validated before any work."""

from __future__ import annotations

import getpass
from dataclasses import dataclass, fields
from typing import ClassVar

from bintally.audit.scoring import PROBABILITY_SCORES, SCORES
from bintally.audit.snapshots import MAX_RECORD
from bintally.errors import ConfigError
from bintally.models.artifact import MODEL_HELP
from bintally.progress import PROGRESS_HELP
from bintally.settings import Backend, check_settings, setting
from bintally.sources import SourcePolicy
from bintally.sources.policy import DEFAULT_MAX_BYTES
from bintally.text import TextError, check_text

TEXT_SETTINGS = ("name", "created_by", "data", "model", "file_root", "allow_s3_buckets", "allow_https_hosts")


def checked_text(value: str, what: str) -> str:
    """`value` unchanged, or ConfigError when it holds a control character (bintally.text.check_text)."""
    try:
        return check_text(value, what)
    except TextError as e:
        raise ConfigError(str(e)) from None


def default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass
class AuditConfig:
    EXCLUSIVE: ClassVar = (("budget", "threshold"),)

    model: str = setting(flag=("--model", "-m"), help=MODEL_HELP)
    data: str = setting(help="Bucket-layout folder (bin-images/, metadata/: the record is EXPECTED_QUANTITY and its SKU "
                             "lines), a CSV of bin_id,image,record_qty[,captured_at] or of SKU lines bin_id,image,sku,qty[,...], "
                             "or a JSON records file (image: a path or an allowlisted URI). See docs/audit.md.")
    lines: str = setting("use", choices=("use", "ignore"), help="The record's SKU lines: use them (a bucket's lines must "
                                                                "sum to EXPECTED_QUANTITY), or ignore them and audit the "
                                                                "totals only (a run of its own).")
    db: str | None = setting(None, cli=False)  # bintally audit's shared --db option
    name: str | None = setting(None, help="Run name. Default: the source's name and a digest of model and settings "
                                          "(the same command finds the same run).")
    budget: float | None = setting(None, help="Share of the bins to recount, highest scores first. Default 0.10.")
    threshold: float | None = setting(None, help="Instead of --budget: recount every bin scoring at least this (a "
                                                 "probability 0-1, or items with --score distance).")
    score: str = setting("auto", choices=SCORES, help="Rank by P(record wrong) from the photo and the record's lines or total "
                                                      "(auto: the record-aware scorer), by 1 - P(count == record) "
                                                      "(mismatch), or by the expected |count - record| in items (distance).")
    control: float = setting(0.02, help="Share of the bins recounted at random besides (estimates what the model misses).")
    tolerance: int = setting(0, low=0, high=MAX_RECORD, help="A first count further than this from the record asks for a recount.")
    backend: Backend = setting(Backend.ONNX, help="Inference backend (a run is exported to ONNX once).")
    batch_size: int = setting(32, low=1, high=4096, help="Photos per forward pass (and per committed batch).")
    seed: int = setting(0, low=0, high=2**32 - 1, help="Seed of the control slice's random draw.")
    created_by: str = setting(default_factory=default_user, flag=("--by",), default_text="the login name", help="Who creates the run.")
    allow_s3_buckets: tuple[str, ...] = setting((), flag=("--allow-s3-bucket",), help="Bucket whose s3:// images may be read (repeatable).")
    allow_https_hosts: tuple[str, ...] = setting((), flag=("--allow-https-host",), help="Host whose https:// images may be read (repeatable).")
    file_root: str | None = setting(None, help="Folder whose file:// images may be read.")
    max_bytes: int = setting(DEFAULT_MAX_BYTES, cli=False)  # largest photo read
    progress: bool = setting(True, help=PROGRESS_HELP)

    def validate(self) -> "AuditConfig":
        check_settings(self, "audit setting")  # types, score, backend, tolerance, batch size, budget with threshold
        if self.budget is None and self.threshold is None:
            self.budget = 0.10
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ConfigError(f"budget must be a share of the bins above 0 and at most 1 (0.10 = 10%), got {self.budget}")
        if self.threshold is not None and self.score in PROBABILITY_SCORES and not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be a score from 0 to 1, got {self.threshold}")
        if self.threshold is not None and not self.threshold >= 0:
            raise ConfigError(f"threshold must be a distance of 0 items or more, got {self.threshold}")
        if not 0 <= self.control < 1:
            raise ConfigError(f"control must be a share of the bins from 0 to below 1 (0.02 = 2%), got {self.control}")
        if self.name is not None and (not self.name.strip() or len(self.name) > 200):
            raise ConfigError(f"name {self.name!r}: give 1-200 characters")
        if not self.created_by.strip() or len(self.created_by) > 100:
            raise ConfigError(f"created_by {self.created_by!r}: give a name of 1-100 characters")
        for name in TEXT_SETTINGS:
            value = getattr(self, name)
            for item in value if isinstance(value, (list, tuple)) else () if value is None else (value,):
                checked_text(item, name)
        return self

    def source_policy(self) -> SourcePolicy:
        """Where the photos a CSV names by URI may come from (its fields are the policy's own), checked."""
        return SourcePolicy(**{f.name: getattr(self, f.name) for f in fields(SourcePolicy)}).checked()
