"""`SourcePolicy`: which buckets, hosts and folder photos may come from, and how large one may be."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from bintally.errors import ConfigError

DEFAULT_MAX_BYTES = 20_000_000  # also the server's default body limit (--max-body-mb 20)


@dataclass(frozen=True)
class SourcePolicy:
    allow_s3_buckets: tuple[str, ...] = ()
    allow_https_hosts: tuple[str, ...] = ()  # host names, lower case
    file_root: str | None = None  # file:// URIs only under this folder (no .. or symlink escapes)
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self):
        object.__setattr__(self, "allow_s3_buckets", tuple(self.allow_s3_buckets))
        object.__setattr__(self, "allow_https_hosts", tuple(h.lower() for h in self.allow_https_hosts))

    def checked(self) -> SourcePolicy:
        """This policy with its file root resolved; ConfigError (one line) for a setting that cannot work."""
        policy = self
        if self.file_root is not None:
            root = Path(self.file_root)
            if not root.is_dir():
                raise ConfigError(f"--file-root {self.file_root}: not a folder")
            policy = replace(self, file_root=str(root.resolve()))
        for host in self.allow_https_hosts:
            if not host or "/" in host or ":" in host.strip("[]") and not host.startswith("["):
                raise ConfigError(f"--allow-https-host {host!r}: give a host name such as images.example.com")
        for bucket in self.allow_s3_buckets:
            if not bucket or "/" in bucket:
                raise ConfigError(f"--allow-s3-bucket {bucket!r}: give a bucket name such as my-bucket")
        return policy
