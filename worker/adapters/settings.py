"""Settings from the environment (and a ``.env`` file), validated once at start."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # hide_input_in_errors: a refused DATABASE_URL or REDIS_URL is never echoed with its password
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      hide_input_in_errors=True)

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", alias="REDIS_URL")
    database_url: str = Field(default="sqlite:///var/leadrouter.db", alias="DATABASE_URL")
    config_path: Path = Field(default=Path("config/routing.yaml"), alias="LEADROUTER_CONFIG")
    write_key: str | None = Field(default=None, alias="LEADROUTER_WRITE_KEY")
    write_keys: str | None = Field(default=None, alias="LEADROUTER_WRITE_KEYS")
    public_write_keys: str | None = Field(default=None, alias="LEADROUTER_PUBLIC_WRITE_KEYS")
    cors_origins: str = Field(default="", alias="LEADROUTER_CORS_ORIGINS")
    # No default: api, worker and beat refuse to start without a strong one (worker.entrypoints.startup).
    secret_key: str = Field(default="", alias="LEADROUTER_SECRET_KEY")
    public_url: str = Field(default="http://127.0.0.1:8000", alias="LEADROUTER_PUBLIC_URL")
    # who may open /board: "name:token,name:token" (worker.entrypoints.board); none: the board refuses everyone
    operator_tokens: str = Field(default="", alias="LEADROUTER_OPERATOR_TOKENS")
    twilio_account_sid: str | None = Field(default=None, alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: str | None = Field(default=None, alias="TWILIO_AUTH_TOKEN")
    twilio_from_number: str | None = Field(default=None, alias="TWILIO_FROM_NUMBER")
    # An optional pool of SMS senders, "+14155550100,+14155550101": each message goes from the one whose
    # bucket (sms_segments_per_second each) frees soonest. Unused with a Messaging Service (Twilio picks).
    twilio_from_numbers: str = Field(default="", alias="TWILIO_FROM_NUMBERS")
    sms_segments_per_second: float = Field(default=1.0, alias="TWILIO_SMS_SEGMENTS_PER_SECOND", gt=0, le=1000)
    twilio_messaging_service_sid: str | None = Field(default=None, alias="TWILIO_MESSAGING_SERVICE_SID")
    twilio_api_base_url: str | None = Field(default=None, alias="TWILIO_API_BASE_URL")
    sendgrid_api_key: str | None = Field(default=None, alias="SENDGRID_API_KEY")
    sendgrid_from_email: str | None = Field(default=None, alias="SENDGRID_FROM_EMAIL")
    sendgrid_api_base_url: str | None = Field(default=None, alias="SENDGRID_API_BASE_URL")
    sendgrid_webhook_public_key: str | None = Field(default=None, alias="SENDGRID_WEBHOOK_PUBLIC_KEY")
    slack_webhook_url: str | None = Field(default=None, alias="SLACK_WEBHOOK_URL")
    batch_size: int = Field(default=500, alias="LEADROUTER_BATCH_SIZE", ge=1, le=10000)
    tick_seconds: float = Field(default=0.25, alias="LEADROUTER_TICK_SECONDS", gt=0)
    db_statement_timeout: float = Field(default=60.0, alias="LEADROUTER_DB_STATEMENT_TIMEOUT", gt=0)
    reclaim_idle_seconds: float = Field(default=60, alias="LEADROUTER_RECLAIM_IDLE_SECONDS", gt=0)

    @field_validator("database_url")
    @classmethod
    def _db(cls, v: str) -> str:
        if not v.startswith(("sqlite", "postgresql")):
            raise ValueError("DATABASE_URL must be sqlite:///PATH or postgresql+psycopg://…")
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v.removeprefix("postgresql://")
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(v)
            url.port  # noqa: B018 - parsed lazily: a port that is no number fails here
        except (ArgumentError, ValueError):
            # never the value itself: it holds the database password
            raise ValueError("DATABASE_URL is not a valid URL (sqlite:///PATH or "
                             "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB)") from None
        if url.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
            raise ValueError("DATABASE_URL must be sqlite:///PATH or postgresql+psycopg://… "
                             f"(not {url.drivername})")
        return v

    @field_validator("twilio_from_numbers")
    @classmethod
    def _senders(cls, v: str) -> str:
        bad = [n for n in (p.strip() for p in v.split(",")) if n and not re.fullmatch(r"\+[1-9][0-9]{6,14}", n)]
        if bad:
            raise ValueError(f"TWILIO_FROM_NUMBERS is E.164 numbers separated by commas; not: {', '.join(bad)}")
        return v

    def sms_senders(self) -> list[str]:
        """The SMS sender pool: ``TWILIO_FROM_NUMBERS``, else the one ``TWILIO_FROM_NUMBER`` (or none)."""
        pool = [n.strip() for n in self.twilio_from_numbers.split(",") if n.strip()]
        return list(dict.fromkeys(pool)) or ([self.twilio_from_number] if self.twilio_from_number else [])

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://")
        return v

    def sources(self) -> dict[str, str]:
        """Write key → source name, trusted and public. One key is the source ``default``."""
        out: dict[str, str] = {}
        if self.write_key:
            out[self.write_key] = "default"
        out.update(_named_keys(self.write_keys, "LEADROUTER_WRITE_KEYS"))
        public = _named_keys(self.public_write_keys, "LEADROUTER_PUBLIC_WRITE_KEYS")
        clash = set(public.values()) & set(out.values())
        if clash:
            raise ValueError(f"a source is either trusted or public, not both: {', '.join(sorted(clash))}")
        out.update(public)
        return out

    def public_sources(self) -> frozenset[str]:
        """The names of the public (browser) sources: they may not send ``Lead Contacted`` nor overwrite
        a contact trait or one a trusted source set."""
        return frozenset(_named_keys(self.public_write_keys, "LEADROUTER_PUBLIC_WRITE_KEYS").values())


def _named_keys(value: str | None, setting: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (value or "").split(","):
        if not part.strip():
            continue
        name, sep, key = part.strip().partition(":")
        if not sep or not name or not key:
            raise ValueError(f"{setting} is name:key,name:key")
        out[key] = name
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    get_settings.cache_clear()


def project_root() -> Path:
    return Path(os.environ.get("LEADROUTER_HOME", Path.cwd()))


MIN_SECRET_BYTES = 32
# Values published in this repository's history, docs and examples: anyone can sign with them.
KNOWN_SECRETS = frozenset({
    "dev-insecure-secret-change-me", "change-me", "changeme", "secret", "test-secret", "bench-secret",
    "set-me", "please-change-me",
})


def secret_problem(secret: str | None) -> str | None:
    """What is wrong with ``LEADROUTER_SECRET_KEY`` for a service, or None."""
    if not secret:
        return "LEADROUTER_SECRET_KEY is not set"
    if secret.strip().lower() in KNOWN_SECRETS:
        return "LEADROUTER_SECRET_KEY is a published default value"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"LEADROUTER_SECRET_KEY is shorter than {MIN_SECRET_BYTES} bytes"
    return None
