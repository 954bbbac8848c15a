"""file:// URIs: a regular file under the policy's root, never a path that leads out of it."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import SplitResult, unquote

from bintally.data.images import max_image_bytes, read_photo
from bintally.errors import DataError
from bintally.io import NoSuchFile, TooLarge
from bintally.sources.errors import SourceError, SourceProblem, invalid, refused, too_large
from bintally.sources.policy import SourcePolicy


def read_file(uri: str, parts: SplitResult, policy: SourcePolicy) -> bytes:
    """The bytes of the file a file:// URI names, if it lies under the policy's root and fits its byte limit."""
    if not policy.file_root:
        raise refused(f"{uri}: file:// URIs are not allowed (the server was started without --file-root)")
    return read_capped(uri, path_under_root(uri, parts, Path(policy.file_root).resolve()), policy.max_bytes)


def path_under_root(uri: str, parts: SplitResult, root: Path) -> Path:
    """The resolved path a file:// URI names (symbolic links followed); refused when it is outside `root`."""
    if parts.netloc not in ("", "localhost"):
        raise refused(f"{uri}: file:// URIs must name a local path (file:///path)")
    if "?" in uri or "#" in uri:
        raise invalid(f"{uri}: a file:// URI names a file alone, with no query or fragment "
                      "(write a '?' or '#' in a file name as %3F or %23)")
    raw = unquote(parts.path)
    if "\x00" in raw:
        raise invalid(f"{uri}: the path contains a NUL byte")
    if ".." in Path(raw).parts or not raw.startswith("/"):
        raise refused(f"{uri}: the path must be absolute and must not contain '..'")
    try:
        resolved = Path(raw).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        # say "not found" only inside the root: outside it, the answer must not reveal what exists
        if Path(os.path.normpath(raw)).is_relative_to(root):
            raise SourceError(SourceProblem.MISSING, f"{uri}: no such file") from None
        raise refused(f"{uri}: outside the allowed file root") from None
    except (OSError, RuntimeError) as e:  # a symlink loop, a permission problem on the way
        raise refused(f"{uri}: cannot be resolved ({e.__class__.__name__})") from None
    if not resolved.is_relative_to(root):
        raise refused(f"{uri}: outside the allowed file root (symbolic links may not lead out of it)")
    return resolved


def read_capped(uri: str, path: Path, limit: int) -> bytes:
    """A regular file's bytes (`read_photo`: never a FIFO, device or socket), opened without following a last-moment
    symbolic link; at most `limit` bytes, or the photo byte limit when it is smaller."""
    limit = min(limit, max_image_bytes())
    try:
        return read_photo(path, follow_symlinks=False, limit=limit)
    except TooLarge:
        raise too_large(uri, limit) from None
    except NoSuchFile:
        raise SourceError(SourceProblem.MISSING, f"{uri}: no such file") from None
    except DataError as e:
        raise invalid(f"{uri}: {e.problem}") from None
