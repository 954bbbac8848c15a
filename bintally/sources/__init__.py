"""Photos by URI, only from places the operator allowed: s3:// buckets, https:// hosts, a file:// root.

Everything else (http://, ftp://, data:, a file outside the root, a link-local address such as the cloud metadata
service 169.254.169.254) is refused before any connection is made, and every fetch is capped at the policy's byte
limit. Refusals are `SourceError`s that name what went wrong (`SourceProblem`), not any protocol: the server turns
them into HTTP answers, the audit into unreadable photos.
"""

from bintally.sources.errors import SourceError, SourceProblem
from bintally.sources.fetcher import UriFetcher
from bintally.sources.policy import SourcePolicy

__all__ = ["SourceError", "SourceProblem", "SourcePolicy", "UriFetcher"]
