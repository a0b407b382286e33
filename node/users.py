"""Users on disk: what ``docraft user add|remove|list`` and ``docraft token rotate`` change.

Users live in the users file the cluster file's ``[auth] users_file`` names
(as ``[[users]]`` tables), else in the cluster file itself (as
``[[auth.users]]`` tables). An edit rewrites those tables at the end of the
file and leaves every other line as it was; the result is validated as a
whole before it replaces the file (atomically, by a rename, mode 0600).
A new token is returned once; only its SHA-256 is written. Running
processes pick the change up within a second or two (``node.auth.Authenticator``).
Two edits of one file at the same moment can lose one of them: run one at a time.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from pathlib import Path

from node.auth import USER_NAME, AuthConfig, User, hash_token, new_token, parse_users
from node.config import ClusterConfig, ConfigError, load_config, parse_config


class UserError(ValueError):
    """The edit makes no sense (an unknown user or role, a name taken); nothing was written."""


def list_users(config_path: Path) -> tuple[User, ...]:
    """The users of the cluster file at ``config_path``; raises ``ConfigError``."""
    return load_config(config_path).auth.users


def add_user(config_path: Path, name: str, role: str) -> str:
    """Add user ``name`` with ``role``; returns its new token. Raises ``UserError`` or ``ConfigError``."""
    config = load_config(config_path)
    if not USER_NAME.fullmatch(name):
        raise UserError(f"a user name is 1 to 64 of A-Z a-z 0-9 . _ -, not {name!r}")
    if role not in config.auth.roles:
        raise UserError(f"no role {role!r} (known: {', '.join(sorted(config.auth.roles))})")
    if any(u.name == name for u in config.auth.users):
        raise UserError(f"user {name!r} exists; use docraft token rotate to give it a new token")
    token = new_token()
    _write_users(config, (*config.auth.users, User(name, role, hash_token(token))))
    return token


def remove_user(config_path: Path, name: str) -> User:
    """Remove user ``name`` (its token stops working); returns it. Raises ``UserError`` or ``ConfigError``."""
    config = load_config(config_path)
    user = _user(config.auth, name)
    _write_users(config, tuple(u for u in config.auth.users if u.name != name))
    return user


def rotate_token(config_path: Path, name: str) -> str:
    """Give user ``name`` a new token, which replaces its old one; returns it."""
    config = load_config(config_path)
    user = _user(config.auth, name)
    token = new_token()
    fresh = User(user.name, user.role, hash_token(token))
    _write_users(config, tuple(fresh if u.name == name else u for u in config.auth.users))
    return token


def _user(auth: AuthConfig, name: str) -> User:
    for user in auth.users:
        if user.name == name:
            return user
    known = ", ".join(u.name for u in auth.users) or "none"
    raise UserError(f"no user {name!r} (users: {known})")


def render_users(users: tuple[User, ...], table: tuple[str, ...]) -> str:
    """``users`` as TOML tables ``[[<table>]]``."""
    header = f"[[{'.'.join(table)}]]"
    blocks = [f'{header}\nname = "{u.name}"\nrole = "{u.role}"\ntoken_sha256 = "{u.token_sha256}"\n' for u in users]
    return "\n".join(blocks)


def _write_users(config: ClusterConfig, users: tuple[User, ...]) -> None:
    auth = config.auth
    if auth.users_path is None:
        raise UserError("these users are not kept in a file")
    path = auth.users_path
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    kept = _without_tables(text, auth.users_table).rstrip()
    new_text = (kept + "\n\n" if kept else "") + render_users(users, auth.users_table)
    _check(config, new_text, users)
    _replace(path, new_text)


def _without_tables(text: str, table: tuple[str, ...]) -> str:
    """``text`` without its ``[[table]]`` blocks (a header line up to the next table header)."""
    header = re.compile(r"\s*\[\[\s*" + r"\s*\.\s*".join(map(re.escape, table)) + r"\s*\]\]\s*(#.*)?")
    lines, skipping = [], False
    for line in text.splitlines():
        if header.fullmatch(line):
            skipping = True
        elif skipping and line.lstrip().startswith("["):
            skipping = False
        if not skipping:
            lines.append(line)
    return "\n".join(lines)


def _check(config: ClusterConfig, text: str, users: tuple[User, ...]) -> None:
    """Raise ``ConfigError`` unless ``text``, written to the users' file, gives exactly ``users``."""
    path, table = config.auth.users_path, ".".join(config.auth.users_table)
    cannot = f"{path} lists users in a form docraft user cannot edit: write them as [[{table}]] tables"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cannot} ({exc})") from None
    if path == config.path:
        found = parse_config(data, config.path).auth.users
    else:
        found = parse_users(data.get("users", []), config.auth.roles, str(path))
    if found != users:
        raise ConfigError(cannot)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to a new file next to ``path`` (``mkstemp`` makes it 0600) and rename it over ``path``."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
