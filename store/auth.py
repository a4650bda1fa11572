"""Projects and their API keys: create, list, revoke, and look a presented key up.

A key has a scope (`write`: everything its project may do; `read`: GET and HEAD only, for
dashboards and CI readers) and may expire (`expires_at`); an expired or revoked key is refused
like an unknown one, with a sentence saying which it is.

A key is 32 random bytes (`dk_` + URL-safe base64), so a plain sha256 of it is a safe thing to
store: there is nothing to brute-force, and a stolen database holds no usable key. The key
itself is returned once, by `create_key`, and never again. The admin command (`distill keys`)
and the API's auth dependency both go through this module.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.models import ApiKey, KeyScope, Project, utcnow

KEY_PREFIX = "dk_"
SHOWN_CHARS = 10  # "dk_" + 7 characters: enough to tell keys apart in a listing
# last_used_at is a hint for admins, not an audit log: write it at most this often per key
TOUCH_EVERY = timedelta(minutes=1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Caller:
    """Who a valid key belongs to."""

    project: str  # the project's name: the `owner` of its jobs and uploads
    key_id: str
    scope: str = KeyScope.write
    quotas: dict[str, Any] = field(default_factory=dict)  # the project's overrides

    @property
    def read_only(self) -> bool:
        return self.scope == KeyScope.read


class KeyRefused(Exception):
    """The presented key cannot be used; the message says why (unknown, revoked, expired)."""


def get_or_create_project(s: Session, name: str) -> tuple[Project, bool]:
    project = s.scalars(select(Project).where(Project.name == name)).first()
    if project is not None:
        return project, False
    project = Project(name=name)
    s.add(project)
    s.flush()
    return project, True


def create_key(
    s: Session,
    project_name: str,
    label: str = "",
    *,
    scope: KeyScope = KeyScope.write,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key for the project (created if needed); returns the row and the key itself."""
    project, _ = get_or_create_project(s, project_name)
    key = new_key()
    row = ApiKey(
        project_id=project.id,
        name=label,
        prefix=key[:SHOWN_CHARS],
        key_hash=hash_key(key),
        scope=scope,
        expires_at=expires_at,
    )
    s.add(row)
    s.flush()
    return row, key


def list_keys(s: Session, project_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """(key, project name), oldest first."""
    q = select(ApiKey, Project.name).join(Project, ApiKey.project_id == Project.id)
    if project_name:
        q = q.where(Project.name == project_name)
    return [(k, name) for k, name in s.execute(q.order_by(ApiKey.created_at, ApiKey.id))]


def revoke_key(s: Session, key_id: str) -> ApiKey | None:
    """Revoke by id (or a unique id prefix of at least 6 characters); None if no such key.
    Revoking twice keeps the first revocation time."""
    if len(key_id) < 6:
        return None
    matches = list(s.scalars(select(ApiKey).where(ApiKey.id.startswith(key_id, autoescape=True))))
    if len(matches) != 1:
        return None
    key = matches[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    s.flush()
    return key


def key_state(key: ApiKey, now: datetime | None = None) -> str:
    """active, revoked or expired (for listings)."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def check_key(s: Session, key: str, now: datetime | None = None) -> Caller:
    """The caller a presented key stands for, or `KeyRefused` saying why it cannot be used.
    A valid key's `last_used_at` is written when it is older than TOUCH_EVERY (a hint for
    admins, so not a write per request)."""
    now = now or utcnow()
    row = s.execute(
        select(ApiKey, Project.name, Project.quotas)
        .join(Project, ApiKey.project_id == Project.id)
        .where(ApiKey.key_hash == hash_key(key))
    ).first()
    if row is None:
        raise KeyRefused("the API key is not valid (unknown or revoked); ask for a new one")
    api_key, project, quotas = row
    if api_key.revoked_at is not None:
        raise KeyRefused("the API key was revoked; ask for a new one")
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise KeyRefused(
            f"the API key expired on {api_key.expires_at:%Y-%m-%d %H:%M} UTC; ask for a new one "
            "(`distill keys create --project NAME --expires-in-days N`)"
        )
    last_used = api_key.last_used_at
    if last_used is None or now - last_used > TOUCH_EVERY:
        s.execute(update(ApiKey).where(ApiKey.id == api_key.id).values(last_used_at=now))
        s.commit()
    return Caller(
        project=project, key_id=api_key.id, scope=api_key.scope, quotas=dict(quotas or {})
    )


def authenticate(s: Session, key: str, now: datetime | None = None) -> Caller | None:
    """The caller a presented key stands for; None for an unknown, revoked or expired key."""
    try:
        return check_key(s, key, now)
    except KeyRefused:
        return None


def set_webhook_secret(s: Session, project_name: str, secret: str | None = None) -> str:
    """Give the project a webhook signing secret of its own (a new random one by default)."""
    project, _ = get_or_create_project(s, project_name)
    project.webhook_secret = secret or new_webhook_secret()
    s.flush()
    return project.webhook_secret


def project_webhook_secret(s: Session, project_name: str | None) -> str | None:
    if not project_name:
        return None
    return s.scalars(select(Project.webhook_secret).where(Project.name == project_name)).first()
