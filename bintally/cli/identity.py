"""Who runs an audit command: `cli_principal` (a token from BINTALLY_TOKEN or --token-file, else the owner of a SQLite
store file) and `store_as`, which opens the store and checks the command's roles before anything is read."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

from bintally.cli.app import Opt

TOKEN_FILE_LIMIT = 4096
TokenFileOpt = Annotated[Optional[Path], Opt("--token-file", envvar="BINTALLY_TOKEN_FILE",
                                             help="A file holding your token (else BINTALLY_TOKEN; without either, on a "
                                                  "SQLite store: you as the owner of the file).")]


def read_token(token_file: Path | None) -> str | None:
    """The token of --token-file, else of BINTALLY_TOKEN; None when neither gives one."""
    from bintally.audit.people import TOKEN_ENV
    from bintally.errors import DataError
    from bintally.io import read_regular

    if token_file is None:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    try:
        token = read_regular(token_file, TOKEN_FILE_LIMIT, "token file").decode().strip()
    except UnicodeDecodeError:
        raise DataError(token_file, "is not UTF-8 text: a token file holds one token") from None
    if not token:
        raise DataError(token_file, "is empty: a token file holds one token")
    return token


def cli_principal(store, by: str | None, token_file: Path | None = None):
    """The Principal of this command line. With a token: its user (a --by naming someone else is refused). Without: on
    SQLite the owner of the file (every role, `--by` signs, recorded as local with the OS user); on PostgreSQL the
    same only while the store has no users (to add the first admin), else Unauthorized."""
    from bintally.audit.people import Forbidden, Unauthorized, authenticate, cli_origin, has_users, local_owner

    token = read_token(token_file)
    if token is not None:
        principal = authenticate(store, token, cli_origin())
        if by is not None and by.strip() != principal.name:
            raise Forbidden(f"--by {by.strip()}: your token is {principal.name}'s; leave out --by (a token signs for its own user)")
        return principal
    if store.dialect != "sqlite" and has_users(store):
        raise Unauthorized("this store has users: give your token (BINTALLY_TOKEN or --token-file)")
    return local_owner(by)


@contextmanager
def store_as(db: str | None, by: str | None, token_file: Path | None, *roles: str, create: bool = False):
    """(store, principal) for a command that needs one of `roles` (none: any identity); the store closes after."""
    from bintally.audit import open_store
    from bintally.audit.people import require

    store = open_store(db, create=create)
    try:
        principal = cli_principal(store, by, token_file)
        yield store, require(principal, *roles) if roles else principal
    finally:
        store.close()
