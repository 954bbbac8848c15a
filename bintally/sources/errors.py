"""Why a photo could not be had by URI, in words any caller (HTTP server, CLI audit) can translate."""

from __future__ import annotations

from enum import Enum


class SourceProblem(Enum):
    INVALID = "invalid"  # not a usable URI, or what it names is not a readable file
    MISSING = "missing"  # no such file or object
    REFUSED = "refused"  # the policy does not allow it
    TOO_LARGE = "too_large"  # over the policy's byte limit
    UNSUPPORTED = "unsupported"  # this installation lacks what the scheme needs (boto3)
    UNREACHABLE = "unreachable"  # the remote store failed, answered an error or could not be reached


class SourceError(Exception):
    """A photo that cannot be fetched; `message` is one line and names the URI."""

    def __init__(self, problem: SourceProblem, message: str):
        super().__init__(message)
        self.problem, self.message = problem, message


def refused(message: str) -> SourceError:
    return SourceError(SourceProblem.REFUSED, message)


def invalid(message: str) -> SourceError:
    return SourceError(SourceProblem.INVALID, message)


def too_large(uri: str, limit: int) -> SourceError:
    return SourceError(SourceProblem.TOO_LARGE, f"{uri}: larger than the limit of {limit:,} bytes")
