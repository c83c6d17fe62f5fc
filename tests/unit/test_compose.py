"""docker-compose.yml and the Dockerfile (SPEC §7): the stack an operator deploys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.support.stack import ROOT
from worker.adapters.settings import Settings
from worker.entrypoints import cli

COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = YAML(typ="safe").load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
APP = ("migrate", "worker", "beat", "api")
HANDLERS = {"migrate": cli.cmd_migrate, "worker": cli.cmd_worker, "beat": cli.cmd_beat, "api": cli.cmd_api}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``."""
    def one(m: re.Match[str]) -> str:
        name, op, rest = m["name"], m["op"], m["rest"] or ""
        if name in env and env[name] != "":
            return env[name]
        if op == ":?":
            raise KeyError(f"{name} is required: {rest}")
        return rest if op == ":-" else ""
    return re.sub(r"\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<rest>[^}]*))?\}", one, value)


def flags(command: list[str]) -> dict[str, str]:
    return dict(zip(command[1::2], command[2::2], strict=False))


def test_the_stack_has_every_part() -> None:
    assert set(SERVICES) == {"redis", "postgres", *APP}


def test_redis_keeps_an_append_only_file_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    assert redis["image"] == "redis:7"
    command = redis["command"]
    assert command[0] == "redis-server"
    assert flags(command) == {"--appendonly": "yes", "--appendfsync": "everysec", "--maxmemory-policy": "noeviction",
                              "--maxmemory": "${REDIS_MAXMEMORY:-1gb}"}
    assert interpolate(flags(command)["--maxmemory"], {}) == "1gb"     # bounded unless the operator says otherwise
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])
    assert redis["volumes"][0].split(":")[0] in COMPOSE["volumes"]  # a named volume, not the container's layer
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_postgres_has_a_volume_and_a_readiness_check() -> None:
    pg = SERVICES["postgres"]
    assert pg["image"] == "postgres:15"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["volumes"][0].split(":")[0] in COMPOSE["volumes"]


@pytest.mark.parametrize("name", APP)
def test_each_command_is_a_real_leadrouter_subcommand(name: str) -> None:
    service = SERVICES[name]
    args = cli.build_parser().parse_args(service["command"])
    assert args.func is HANDLERS[name]
    assert service.get("build") == "." or "build" in service


def test_api_listens_on_all_interfaces_port_8000_with_a_health_check() -> None:
    api = SERVICES["api"]
    args = cli.build_parser().parse_args(api["command"])
    assert (args.host, args.port) == ("0.0.0.0", 8000)
    assert any(str(p).endswith(":8000") for p in api["ports"])
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


def test_the_worker_can_be_scaled() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "container_name" not in SERVICES["beat"]


def test_migrations_run_once_on_a_healthy_database_before_the_rest() -> None:
    migrate = SERVICES["migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"
    for name in ("worker", "beat", "api"):
        assert SERVICES[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name


def test_every_part_shares_one_environment_from_an_x_anchor() -> None:
    anchors = [k for k in COMPOSE if k.startswith("x-")]
    assert anchors and re.search(r"^x-[\w-]+: &", COMPOSE_TEXT, re.M)
    envs = [SERVICES[name]["environment"] for name in APP]
    assert all(env == envs[0] for env in envs)
    env = envs[0]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://") and "@postgres:5432/" in env["DATABASE_URL"]
    assert "LEADROUTER_CONFIG" in env


def test_secrets_come_from_the_environment_not_the_file() -> None:
    env = SERVICES["worker"]["environment"]
    for key in ("LEADROUTER_SECRET_KEY", "TWILIO_AUTH_TOKEN", "SENDGRID_API_KEY", "SLACK_WEBHOOK_URL"):
        assert re.fullmatch(rf"\$\{{{key}(:[-?][^}}]*)?\}}", env[key]), key
    with pytest.raises(KeyError, match="LEADROUTER_SECRET_KEY"):
        interpolate(env["LEADROUTER_SECRET_KEY"], {})


def test_the_interpolated_environment_is_valid_settings() -> None:
    env = {k: interpolate(v, {"LEADROUTER_SECRET_KEY": "s3cret"})
           for k, v in SERVICES["worker"]["environment"].items()}
    settings = Settings.model_validate({k: v for k, v in env.items() if v != ""})
    assert settings.database_url.startswith("postgresql+psycopg://leadrouter:")
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.config_path == Path("config/routing.yaml")
    assert settings.secret_key == "s3cret"


def test_rules_are_mounted_where_leadrouter_config_points() -> None:
    for name in APP:
        assert "./config:/app/config:ro" in SERVICES[name]["volumes"]


def test_dockerfile_builds_a_non_root_leadrouter_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(re.fullmatch(r"RUN pip install \.", line) for line in lines)
    assert "WORKDIR /app" in lines and any(line.startswith("COPY config/") for line in lines)
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    assert 'ENTRYPOINT ["leadrouter"]' in lines


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "var/"} <= ignored


def test_the_env_example_leaves_the_secret_key_for_the_operator_to_set() -> None:
    from worker.adapters.settings import secret_problem

    values = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert values["LEADROUTER_SECRET_KEY"] == ""
    assert secret_problem(values["LEADROUTER_SECRET_KEY"]) is not None      # copied as it is, nothing starts
