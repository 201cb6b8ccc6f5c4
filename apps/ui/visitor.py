"""Recognising a hosted visitor across a reload (UI-free: it reads and writes the mappings it is given, which the
pages pass as st.query_params and st.session_state).

The first visit gets an unguessable token (`secrets.token_urlsafe`, 192 bits) that stays in the page's URL as
?visit=…; a reload sends it back. The visitor id (their folder's name, their jobs' owner) is a hash of the token, so
the URL never shows the id and the id never gives away the token. A token this server never issued (and that owns
no folder) is replaced by a fresh one, exactly as on a first visit: nothing tells whether it existed.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import MutableMapping
from typing import Any

from apps.ui.hosting import VISITOR_TTL_S, hosted, prune_visitors, visitor_dir

PARAM = "visit"  # the query parameter that holds the token
TOKEN_KEY = "visitor_token"  # the session's token (the URL loses its parameters when the visitor switches pages)
VISITOR_KEY = "visitor"  # the id the pages use (apps.views._common.visitor)
TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")  # token_urlsafe(24): 24 random bytes in 32 characters

# The ids of the tokens this process handed out, and when (a queued job may not have a folder yet). They are
# forgotten as visitor folders are: a day after issue (a visitor with a folder is still known by it), and the
# oldest beyond MAX_ISSUED, so a stream of first visits cannot grow the server's memory without bound.
_issued: dict[str, float] = {}
_lock = threading.Lock()
MAX_ISSUED = 100_000


def visitor_id(token: str) -> str:
    """The visitor id of a token: 128 bits of its SHA-256, in hexadecimal (hosting.VISITOR_ID)."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()[:32]


def new_token() -> str:
    """A fresh token, remembered as issued; hosted, old visitors' folders are pruned first (as `new_visitor`)."""
    if hosted():
        prune_visitors()
    token = secrets.token_urlsafe(24)
    now = time.time()
    with _lock:
        for vid in [v for v, at in _issued.items() if now - at > VISITOR_TTL_S]:
            del _issued[vid]
        for vid in list(_issued)[:max(0, len(_issued) + 1 - MAX_ISSUED)]:  # insertion order: the oldest first
            del _issued[vid]
        _issued[visitor_id(token)] = now
    return token


def known(token: Any) -> bool:
    """Whether `token` is one this server handed out: issued by this process, or owning a folder (a restart)."""
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        return False
    vid = visitor_id(token)
    with _lock:
        if vid in _issued:
            return True
    return visitor_dir(vid).is_dir()


def recognise(params: MutableMapping[str, Any], state: MutableMapping[str, Any]) -> str:
    """The visitor id of this page view, with the token written to `params` (the URL) and to `state`.

    The URL's token wins when the server knows it (a reload, a bookmarked link); else the session's own token
    (the URL lost it on a page switch); else a new one. An unknown or malformed token is dropped silently."""
    token = params.get(PARAM)
    if not known(token):
        token = state.get(TOKEN_KEY)
        if not known(token):
            token = new_token()
    if state.get(TOKEN_KEY) != token or state.get(VISITOR_KEY) != visitor_id(token):
        state[TOKEN_KEY], state[VISITOR_KEY] = token, visitor_id(token)
    if params.get(PARAM) != token:
        params[PARAM] = token
    return visitor_id(token)
