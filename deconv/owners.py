"""Who owns a run or a training: a browser's secret token, and the keyed hash of it that runs and jobs carry.

A browser proves who it is with a random token that only it and the server's memory hold (a cookie the page
sets). Runs (meta.json), jobs, logs and exports carry the owner key instead: an HMAC of the token under a
secret kept in the runs folder, so a key read from a download or a page cannot be turned back into a token,
and a key presented as a token hashes to something else.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from pathlib import Path

TOKEN = re.compile(r"[0-9a-f]{32}")  # what a browser presents: 128 random bits as hex
SECRET_FILE = ".owner-secret"  # in the runs folder: the server's key for owner keys, readable by the server alone
SECRET_BYTES = 32
_PROCESS_SECRET = secrets.token_bytes(SECRET_BYTES)  # used when the runs folder cannot hold a secret


def new_token() -> str:
    """A fresh browser token."""
    return secrets.token_hex(16)


def is_token(value: object) -> bool:
    """Whether a value has a token's form (anything else a browser sends is ignored)."""
    return isinstance(value, str) and TOKEN.fullmatch(value) is not None


def server_secret(runs_dir: str | os.PathLike[str]) -> bytes:
    """The runs folder's secret, created once (servers sharing the folder agree on it); this process's own if the
    folder cannot hold one (then a browser owns its runs until the server restarts)."""
    try:
        return _folder_secret(Path(runs_dir) / SECRET_FILE)
    except OSError as e:
        logging.getLogger(__name__).warning("no owner secret in %s (%s): owners last until the server restarts",
                                            runs_dir, e.strerror or e)
        return _PROCESS_SECRET


def _folder_secret(path: Path) -> bytes:
    """The secret in `path`, written there first if absent."""
    try:
        secret = path.read_bytes()
        if len(secret) == SECRET_BYTES:
            return secret
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_bytes(SECRET_BYTES)
    temp = path.with_name(f"{SECRET_FILE}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(fresh)
    try:  # the first server to link its secret wins; the others read the winner's
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink()
    secret = path.read_bytes()
    if len(secret) != SECRET_BYTES:  # a file someone else wrote there: not a key to trust
        raise OSError(f"{path} is not a secret this app wrote; remove it and restart the app")
    return secret


def owner_key(token: str, secret: bytes) -> str:
    """The owner key of a browser token: what runs, jobs and exports may carry."""
    return hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()[:32]
