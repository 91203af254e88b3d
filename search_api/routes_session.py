"""Sign-in for the web page: a key is exchanged for an HttpOnly, SameSite=Strict session cookie.

The cookie holds a random session token (the catalog keeps its hash), never the key: signing out
or revoking the key ends it. Changes made with the cookie also need the session's CSRF token in the
X-CSRF-Token header (search_api.access checks it, and the Origin when the browser sends one).
"""

from __future__ import annotations

import os

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from search_api import access, schemas
from search_api.access import SCOPE_ORDER, SESSION_COOKIE, SESSION_LIFETIME, Access
from search_api.current import current_service
from search_api.openapi import operation
from search_api.problems import ApiProblem
from storage.api_keys import ApiKeys
from storage.paths import display_path

bp = Blueprint("session", __name__, url_prefix="/api/v1")


def _info(who: Access | None, csrf_token: str | None = None) -> dict[str, object]:
    required = access.keys_required()
    scope = who.scope if who else None
    return {
        "keys_required": required,
        "signed_in": who is not None,
        "name": who.name if who else None,
        "scope": scope,
        "may": [s for s in SCOPE_ORDER if scope and SCOPE_ORDER.index(s) <= SCOPE_ORDER.index(scope)],
        "csrf_token": csrf_token or (who.session.csrf_token if who and who.session else None),
        "upload_dir": _upload_dir() if scope and SCOPE_ORDER.index(scope) >= SCOPE_ORDER.index("write") else None,
    }


def _upload_dir() -> str:
    return display_path(str(current_service().settings.storage.resolved_upload_dir())) + os.sep


@bp.get("/session")
@operation(summary="Whether this server needs a key, and what the caller's key or session may do",
           response=schemas.SessionInfo, problems=(429,), tags=("session",))
def get_session() -> ResponseReturnValue:
    """A wrong key or cookie shown here counts towards the limit on failures like anywhere else: this
    route must not become a way to test guesses without it."""
    if not access.keys_required():
        return jsonify(_info(access.identify()))
    limiter, address = access.limiter(), access.client_address()
    wait = limiter.retry_after(address)
    if wait:
        return access.too_many_failures(wait)
    who = access.identify()
    shown = access.presented_key() or request.cookies.get(SESSION_COOKIE)
    if who is None and shown:
        limiter.failed(address, shown)
    return jsonify(_info(who))


@bp.post("/session")
@operation(summary="Sign in: exchange an API key for a session cookie (HttpOnly, SameSite=Strict)",
           body={"application/json": schemas.SignIn}, response=schemas.SessionInfo, problems=(400, 401, 429),
           tags=("session",))
def start_session() -> ResponseReturnValue:
    """The key comes as JSON `{"key": "..."}` (or in the Authorization / X-API-Key header). The answer carries
    the CSRF token that changes made with the cookie must send as X-CSRF-Token."""
    svc = current_service()
    if not access.keys_required():
        return jsonify(_info(Access(None, "admin", access.OPEN)))
    limiter, address = access.limiter(), access.client_address()
    wait = limiter.retry_after(address)
    if wait:
        return access.too_many_failures(wait)
    body = request.get_json(silent=True)
    secret = body.get("key") if isinstance(body, dict) else None
    secret = secret if isinstance(secret, str) and secret else access.presented_key()
    if secret is None:
        raise ApiProblem(400, 'send the key as JSON {"key": "..."}', "invalid_body", field="key")
    books = ApiKeys(svc.catalog)
    key = access.ring().match(books, secret)
    if key is None:
        limiter.failed(address, secret)
        return access.unauthorized("the API key is not valid (wrong or revoked)", "invalid_key")
    token, csrf = books.start_session(key.id, SESSION_LIFETIME)
    response = jsonify(_info(Access(key.name, key.scope, "cookie"), csrf))
    response.set_cookie(SESSION_COOKIE, token, max_age=int(SESSION_LIFETIME.total_seconds()), path="/",
                        httponly=True, samesite="Strict", secure=request.is_secure)
    return response


@bp.delete("/session")
@operation(summary="Sign out: end the session of the cookie (the key itself stays valid)",
           response=schemas.SessionInfo, tags=("session",))
def end_session() -> ResponseReturnValue:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        try:
            ApiKeys(current_service().catalog).end_session(token)
        finally:
            access.ring().forget_session(token)
    required = access.keys_required()
    response = jsonify(_info(None if required else Access(None, "admin", access.OPEN)))
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=request.is_secure)
    return response
