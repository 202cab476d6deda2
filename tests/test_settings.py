"""Settings precedence: CLI > environment > $BASTION_HOME/bastion.yaml > defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from bastion.errors import ConfigError
from bastion.settings import EngineSettings, Settings, home_dir, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "bastion.example.yaml"


def test_defaults_are_loopback_only(home: Path) -> None:
    settings = load_settings()
    assert settings.server.host == ["127.0.0.1"]
    assert settings.server.port == 8000
    assert settings.server.max_body_bytes == 4 * 1024 * 1024
    assert settings.engine.slots == 4


def test_home_defaults_to_dot_bastion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_HOME", raising=False)
    assert home_dir() == Path.home() / ".bastion"


def test_shipped_example_config_loads_and_matches_defaults(home: Path) -> None:
    defaults = Settings().model_dump()
    home.mkdir(parents=True)
    (home / "bastion.yaml").write_text(EXAMPLE.read_text())
    assert load_settings().model_dump() == defaults


def test_file_then_env_then_cli(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home.mkdir(parents=True)
    (home / "bastion.yaml").write_text("server:\n  port: 8100\n  drain_timeout: 5\n")
    assert load_settings().server.port == 8100
    monkeypatch.setenv("BASTION_SERVER__PORT", "8200")
    settings = load_settings()
    assert settings.server.port == 8200
    assert settings.server.drain_timeout == 5  # untouched file value survives the env override
    assert load_settings({"server": {"port": 8300}}).server.port == 8300


def test_unknown_key_in_file_is_an_error_naming_it(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "bastion.yaml").write_text("server:\n  prot: 8100\n")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_settings()


# Each kind of YAML mistake, with the line and column where PyYAML stops.
BROKEN_YAML = [
    ("server: [unclosed\n", "line 2, column 1"),  # a flow sequence never closed
    ("server:\n  port: 8000\n   host: x\n", "line 3, column 8"),  # a mis-indented key
    ("server:\n\tport: 8000\n", "line 2, column 1"),  # a tab as indentation
    ("auth:\n  token: *S3cretValue\n", "line 2, column 10"),  # reads as an undefined alias
    ('server:\n  host: "unterminated\n', "line 3, column 1"),  # a quote never closed
]


@pytest.mark.parametrize(("text", "where"), BROKEN_YAML)
def test_invalid_yaml_is_reported_with_its_line_and_column(
    home: Path, text: str, where: str
) -> None:
    home.mkdir(parents=True)
    (home / "bastion.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f"bastion.yaml, {where}: not valid YAML" in caught.value.message


def test_yaml_errors_never_quote_the_file(home: Path) -> None:
    """An unquoted value starting with '*' is parsed as an alias; PyYAML names it in its
    message, and it may be a secret."""
    home.mkdir(parents=True)
    (home / "bastion.yaml").write_text("auth:\n  token: *S3cretValue\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "S3cretValue" not in caught.value.message


def test_out_of_range_value_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_ENGINE__SLOTS", "0")
    with pytest.raises(ConfigError, match=r"engine\.slots"):
        load_settings()


@pytest.mark.parametrize(
    "origin", ["*", "https://app.example/", "https://*.example", "app.example", "ftp://a.b"]
)
def test_cors_origins_must_be_exact_origins(
    home: Path, monkeypatch: pytest.MonkeyPatch, origin: str
) -> None:
    monkeypatch.setenv("BASTION_SERVER__CORS_ORIGINS", f'["{origin}"]')
    with pytest.raises(ConfigError, match=r"server\.cors_origins"):
        load_settings()


def test_cors_origins_accept_hosts_ports_and_ipv6(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origins = ["https://app.example:8443", "http://localhost:3000", "http://[::1]:5173"]
    monkeypatch.setenv("BASTION_SERVER__CORS_ORIGINS", json.dumps(origins))
    assert load_settings().server.cors_origins == origins


def test_max_tokens_settings_bound_output_by_default() -> None:
    engine = EngineSettings()
    assert (engine.default_max_tokens, engine.max_tokens_limit) == (2048, 0)
    assert EngineSettings(max_tokens_limit=16).max_tokens_limit == 16
    for bad in (1, 15, -1):  # below 16 would refuse every legacy completion's default
        with pytest.raises(ValidationError):
            EngineSettings(max_tokens_limit=bad)


@pytest.mark.parametrize("url", ["ftp://hooks.example/x", "hooks.example/x", "http://h:port/x"])
def test_a_webhook_url_that_is_not_http_is_refused_at_start(home: Path, url: str) -> None:
    home.mkdir(parents=True)
    (home / "bastion.yaml").write_text(f"router:\n  webhook_url: '{url}'\n")
    with pytest.raises(ConfigError, match=r"router\.webhook_url"):
        load_settings()
