"""Errors for bad input: each one is a single line naming the file and the problem."""


class DataError(Exception):
    """Input data that cannot be used; the message names the file and what is wrong."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(Exception):
    """A setting that cannot work (unknown backbone, weights that do not fit, ...), found before any work starts."""
