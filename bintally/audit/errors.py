"""The audit's refusals that name a state rather than a bad value: an unknown task, run or user (HTTP 404) and a
transition the state does not allow (HTTP 409). Kept apart so that the workflow and the people module share them."""

from bintally.errors import ConfigError


class NotFound(ConfigError):
    """An unknown task, run or user (HTTP 404)."""


class Conflict(ConfigError):
    """A transition the task's state does not allow, or lost to a concurrent writer (HTTP 409)."""
