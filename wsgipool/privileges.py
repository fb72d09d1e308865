"""--user and --group: the app runs as an unprivileged user while the main process keeps root.

The main process binds its sockets (port 80, a socket in /run) and stays as it
started, so that it can remove its unix socket and pid file at exit.  The
template process drops privileges before it imports the app, and the workers
it forks inherit that, so no application code ever runs as root.  Names are
checked when the configuration is read (a typo is one line and exit 2), and
resolved again in the template, where the switch happens.
"""

from __future__ import annotations

import grp
import os
import pwd

__all__ = ["drop_privileges", "parse_group", "parse_user", "resolve_ids"]


def _text(value: object, what: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a {what} name or number, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"expected a {what} name or number, got {value!r}")
    return str(value).strip()


def parse_user(value: object) -> str | None:
    """A user name or numeric uid that exists on this machine (None: stay as started)."""
    text = _text(value, "user")
    if text is not None:
        _uid(text)
    return text


def parse_group(value: object) -> str | None:
    """A group name or numeric gid that exists on this machine (None: the user's group)."""
    text = _text(value, "group")
    if text is not None:
        _gid(text)
    return text


#: Above this no uid or gid exists ((uid_t) -1 means "unchanged" to the system calls).
_ID_MAX = 2**32 - 2


def _number(text: str, kind: str) -> int:
    number = int(text)
    if number > _ID_MAX:
        raise ValueError(f"{kind} {number} is out of range (at most {_ID_MAX})")
    return number


def _uid(text: str) -> tuple[int, int | None, str | None]:
    """(uid, primary gid, name) of a user given by name or number."""
    if text.isdigit():
        _number(text, "uid")
    try:
        entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except KeyError:
        if text.isdigit():  # a uid without a passwd entry is legal (containers use them)
            return int(text), None, None
        raise ValueError(f"no such user: {text!r}") from None
    return entry.pw_uid, entry.pw_gid, entry.pw_name


def _gid(text: str) -> int:
    if text.isdigit():
        return _number(text, "gid")
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {text!r}") from None


def resolve_ids(user: str | None, group: str | None) -> tuple[int | None, int | None, str | None]:
    """(uid, gid, user name) to switch to; None where nothing changes."""
    uid: int | None = None
    gid: int | None = None
    name: str | None = None
    if user is not None:
        uid, gid, name = _uid(user)
    if group is not None:
        gid = _gid(group)
    elif uid is not None and gid is None:
        # Keeping root's group after leaving root's uid would be a trap: say which group.
        raise ValueError(f"uid {uid} has no entry in the user database; give --group too")
    return uid, gid, name


def drop_privileges(user: str | None, group: str | None) -> None:
    """Become `user` (with its groups) and `group`; PermissionError in one line if not root."""
    uid, gid, name = resolve_ids(user, group)
    if uid is None and gid is None:
        return
    try:
        if gid is not None and gid != os.getgid():
            if name is not None:
                os.initgroups(name, gid)
            else:
                os.setgroups([gid])
            os.setgid(gid)
        elif name is not None and uid != os.getuid():
            os.initgroups(name, os.getgid())
        if uid is not None and uid != os.getuid():
            os.setuid(uid)
    except PermissionError:
        who = ", ".join(
            part
            for part in (f"user {user}" if user else "", f"group {group}" if group else "")
            if part
        )
        raise PermissionError(
            f"cannot switch to {who}: only root can (running as uid {os.getuid()})"
        ) from None
