"""Principals for tests that drive the workflow directly: `person(name)` is the local owner of a store signing as
`name` (every role), as `bintally audit ... --by NAME` without a token is."""

from bintally.audit.people import ALL_ROLES, Principal


def person(name: str, roles=ALL_ROLES, kind: str = "local") -> Principal:
    return Principal(name, frozenset(roles), kind, "test")
