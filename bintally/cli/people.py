"""`bintally audit user|token|settings|events`: the people of an audit store, their tokens, separation of duties and
the event log."""

from __future__ import annotations

import json
from typing import Annotated, Literal, Optional

import typer

from bintally.cli.app import HELP, Opt, command, echo_err
from bintally.cli.audit import DbOpt, JsonOpt, audit_app
from bintally.cli.identity import TokenFileOpt, store_as

user_app = typer.Typer(help="The people of the audit store and their roles (an admin).", no_args_is_help=True, context_settings=HELP)
token_app = typer.Typer(help="Tokens: each user's key to the store, shown once.", no_args_is_help=True, context_settings=HELP)
settings_app = typer.Typer(help="The store's separation of duties (an admin).", no_args_is_help=True, context_settings=HELP)
audit_app.add_typer(user_app, name="user")
audit_app.add_typer(token_app, name="token")
audit_app.add_typer(settings_app, name="settings")

SETTING_NAMES = Literal["separate_count_and_approval", "separate_count_and_recount"]
ONCE = "is shown only this once (only its hash is stored): keep it, e.g. in a file for --token-file, readable by its user alone"


def show_token(token: str, whose: str) -> None:
    typer.echo(token)
    echo_err(f"the token of {whose} {ONCE}")


@command(user_app, "add")
def user_add_cmd(
    name: Annotated[str, typer.Argument(help="The user's name (letters, digits, '.', '_', '@', '-').")],
    role: Annotated[list[str], Opt("--role", help="A role (repeatable): counter, reviewer, auditor, admin.")],
    db: DbOpt = None,
    token_file: TokenFileOpt = None,
):
    """Add a user with their roles and print their token once (on a new store, the file's owner adds the first admin)."""
    from bintally.audit.people import add_user

    with store_as(db, None, token_file, "admin", create=True) as (store, principal):
        token = add_user(store, name, role, principal)
    show_token(token, name.strip())


@command(user_app, "list")
def user_list_cmd(db: DbOpt = None, json_out: JsonOpt = False, token_file: TokenFileOpt = None):
    """The users, their roles and whether they are disabled (an admin or auditor)."""
    from bintally.audit.people import list_users

    with store_as(db, None, token_file, "admin", "auditor") as (store, _):
        users = list_users(store)
    if json_out:
        typer.echo(json.dumps(users, indent=2))
        return
    if not users:
        typer.echo("no users: every command runs as the owner of the store file (`bintally audit user add NAME --role admin`)")
    for u in users:
        typer.echo(f"{u['name']:<20} {','.join(u['roles']):<32} {'disabled' if u['disabled'] else 'enabled':<8} "
                   f"added {u['created_at']} by {u['created_by']}")


@command(user_app, "disable")
def user_disable_cmd(
    name: Annotated[str, typer.Argument(help="The user to disable.")],
    db: DbOpt = None,
    token_file: TokenFileOpt = None,
):
    """Disable a user: their tokens and dashboard sessions stop working at once (an admin)."""
    from bintally.audit.people import disable_user

    with store_as(db, None, token_file, "admin") as (store, principal):
        disable_user(store, name.strip(), principal)
    typer.echo(f"user {name.strip()} is disabled")


@command(token_app, "rotate")
def token_rotate_cmd(
    name: Annotated[Optional[str], typer.Argument(help="Whose token (an admin); leave out for your own.")] = None,
    db: DbOpt = None,
    token_file: TokenFileOpt = None,
):
    """A new token (printed once); every older token of the user and their dashboard sessions stop working at once."""
    from bintally.audit.people import rotate_token

    with store_as(db, None, token_file) as (store, principal):
        whose = name.strip() if name is not None else principal.name
        token = rotate_token(store, whose, principal)
    show_token(token, whose)


@command(settings_app, "set")
def settings_set_cmd(
    key: Annotated[SETTING_NAMES, typer.Argument(help="separate_count_and_approval: no one reviews a task they counted; "
                                                      "separate_count_and_recount: the recount is someone else's.")],
    value: Annotated[Literal["true", "false"], typer.Argument(help="true (the default) or false.")],
    db: DbOpt = None,
    token_file: TokenFileOpt = None,
):
    """Turn a separation of duties on or off for this store (an admin; recorded in the event log)."""
    from bintally.audit.people import set_setting

    with store_as(db, None, token_file, "admin") as (store, principal):
        set_setting(store, key, value == "true", principal)
    typer.echo(f"{key} = {value}")


@command(audit_app, "events")
def events_cmd(
    limit: Annotated[int, Opt(min=1, max=100_000, help="The newest this many events.")] = 100,
    db: DbOpt = None,
    json_out: JsonOpt = False,
    token_file: TokenFileOpt = None,
):
    """The event log, newest first: who did what, when and from where (an auditor or admin)."""
    from bintally.audit.people import events

    with store_as(db, None, token_file, "auditor", "admin") as (store, _):
        rows = events(store, limit)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    for e in rows:
        detail = json.dumps(e["detail"], sort_keys=True) if e["detail"] else ""
        typer.echo(f"{e['id']:>6} {e['at']}  {e['actor']} ({e['actor_kind']})  {e['action']:<14} {e['target'] or '-'}  {detail}  "
                   f"from {e['origin']}")
