"""One settings tree for the whole server.

Precedence, highest first: CLI flags (passed as init keyword arguments), environment
variables ``BASTION_<SECTION>__<FIELD>``, ``$BASTION_HOME/bastion.yaml``, then the defaults
below. Field descriptions double as help text and as the configuration reference.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bastion.engine.cpu import RepackSetting
from bastion.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


def home_dir() -> Path:
    """``$BASTION_HOME``, default ``~/.bastion``."""
    raw = os.environ.get("BASTION_HOME")
    return Path(raw).expanduser() if raw else Path.home() / ".bastion"


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700; everything under BASTION_HOME is private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSettings(_Section):
    host: list[str] = Field(
        default_factory=lambda: ["127.0.0.1"],
        min_length=1,
        description="Addresses to bind; repeat --host for several. Loopback only by default.",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    default_model: str = Field(
        default=DEFAULT_MODEL,
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="Model served when a request omits `model`.",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest request body accepted; larger bodies get 413.",
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request head (request line and headers); larger heads get 431.",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a complete request head, from the "
        "connection opening or the head's first byte; then 408 and the connection closes.",
    )
    body_timeout: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a complete request body; then 408.",
    )
    tls_handshake_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds a client on the HTTPS port has to complete the TLS handshake "
        "from the moment it connects; then the connection is closed.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Open connections per listener (HTTP, HTTPS), handshakes included; more "
        "are closed at once (plain HTTP gets 503). Lowered at start to fit the open-file limit.",
    )
    max_connections_per_client: int = Field(
        default=64,
        ge=1,
        le=1_000_000,
        description="Open connections per client address on each listener; more are closed "
        "at once. Behind a reverse proxy every connection comes from the proxy's address.",
    )
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="Seconds running requests may take to finish after SIGTERM.",
    )
    trusted_hosts: list[str] = Field(
        default_factory=list,
        description="Host names accepted in the Host header on loopback listeners besides "
        "localhost and loopback addresses (anything else gets 403: DNS rebinding).",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port]) that may call the API from a web "
        "page. None by default: no CORS headers at all. Callers still need a key.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level for bastion and uvicorn."
    )

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin such as https://app.example:8443 "
                    "(scheme, host and optional port; no path, no wildcard)"
                )
        return origins


_ORIGIN = re.compile(r"https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


class EngineSettings(_Section):
    threads: int = Field(
        default=0, ge=0, le=512, description="llama.cpp threads; 0 uses every core."
    )
    slots: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Requests decoded together in one batch, each in its own KV sequence "
        "of ctx_per_slot tokens (continuous batching).",
    )
    ctx_per_slot: int = Field(
        default=4096,
        ge=128,
        le=1_048_576,
        description="Most tokens (prompt + completion) one request may use.",
    )
    default_max_tokens: int = Field(
        default=2048,
        ge=0,
        le=1_048_576,
        description="Completion tokens a chat request may generate when it sets no max_tokens "
        "(still capped by the context and max_tokens_limit); 0 runs to the end of the context.",
    )
    max_tokens_limit: int = Field(
        default=0,
        ge=0,
        le=1_048_576,
        description="Most completion tokens a request may ask for: a larger max_tokens is a "
        "400 naming max_tokens. 0: only the context limits it; otherwise at least 16.",
    )
    time_slice: float = Field(
        default=2.0,
        ge=0.0,
        le=3600.0,
        description="When requests wait and every slot is busy, a stream that has run this "
        "many seconds is paused (its KV saved) so a waiting one can start; 0 never pauses.",
    )
    prefix_cache: bool = Field(
        default=True,
        description="Reuse the KV of a prompt prefix a slot already holds (faster first "
        "tokens in chats). Turn off where callers must not learn from timing whether "
        "another caller sent the same prefix.",
    )
    stream_interval: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Seconds streamed text may wait to go out together with the next tokens "
        "(first tokens and endings go at once); fewer hand-offs leave llama.cpp more CPU.",
    )
    batch_tokens: int = Field(
        default=512,
        ge=16,
        le=65_536,
        description="Most tokens decoded in one step; long prompts are prefilled in chunks.",
    )
    prefill_chunk: int = Field(
        default=128,
        ge=1,
        le=65_536,
        description="Most prompt tokens per step while other requests are streaming, so a "
        "long prompt delays their next token only briefly.",
    )

    repack: RepackSetting = Field(
        default="auto",
        description="Let llama.cpp repack quantised weights for its faster CPU kernels. auto: "
        "on, except where the CPU has AMX (llama.cpp's AMX repacking crashes there, llama.cpp "
        "issue 20824); a model's catalog entry may override it.",
    )

    isolation: Literal["process", "thread"] = Field(
        default="process",
        description="process: each embedded engine runs in its own supervised child process, "
        "so a native crash costs only its requests; thread: inside the API process (tests, "
        "benchmarks).",
    )
    restart_limit: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Restarts of a crashed engine process in a row (backoff doubling from "
        "restart_backoff) before the model is marked failed; a restart that then serves for "
        "a minute resets the count.",
    )
    restart_backoff: float = Field(
        default=0.5,
        ge=0.0,
        le=300.0,
        description="Seconds before the first restart of a crashed engine; doubles each time, "
        "at most 60.",
    )

    @field_validator("max_tokens_limit")
    @classmethod
    def _limit_allows_the_completions_default(cls, value: int) -> int:
        # Legacy completions without max_tokens ask for OpenAI's 16: a lower cap refuses them.
        if 0 < value < 16:
            raise ValueError("must be 0 (no limit but the context) or at least 16")
        return value

    def resolved_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)


class RouterSettings(_Section):
    max_queue: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Requests that may wait per model (for a slot or for the model to load); "
        "beyond them clients get 429.",
    )
    preload: list[str] | None = Field(
        default=None,
        description="Models loaded at start; default: server.default_model. Every other catalog "
        "model loads on its first request.",
    )
    load_timeout: float = Field(
        default=300.0,
        gt=0.0,
        le=86_400.0,
        description="Seconds a request waits for its model to load (import, verify, load) "
        "before a 503.",
    )
    max_loaded: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Most models loaded at once; 0: no count limit. Loading past it unloads "
        "the least recently used idle model first.",
    )
    max_memory: int = Field(
        default=0,
        ge=0,
        description="Most bytes of weights plus KV cache loaded at once; 0: no limit. Loading "
        "past it unloads the least recently used idle models first.",
    )
    idle_ttl: float = Field(
        default=0.0,
        ge=0.0,
        le=31_536_000.0,
        description="Seconds after its last request that a model is unloaded; 0: never.",
    )
    swap_after: float = Field(
        default=10.0,
        ge=0.0,
        le=3600.0,
        description="When models must take turns, how long requests for the unloaded one may "
        "wait while the loaded one keeps taking requests; then the loaded one drains and is "
        "swapped out. Groups requests into few swaps instead of one per request.",
    )
    webhook_url: str | None = Field(
        default=None,
        description="POSTed after each load and unload: JSON with model, action, duration and "
        "result, signed in the X-Bastion-Signature header (HMAC-SHA256 of the body).",
    )
    webhook_secret_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Name of the environment variable holding the webhook's HMAC secret.",
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_is_an_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parsed = urllib.parse.urlsplit(value)
        try:
            parsed.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError("the port is not a number") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


class StoreSettings(_Section):
    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Directories under which local_path models may live (none by default).",
    )
    offline: bool = Field(
        default=True,
        description="Never contact a model hub (sets HF_HUB_OFFLINE=1 for bastion and its "
        "engines). Set false to pull from Hugging Face.",
    )
    allow_http: bool = Field(
        default=False, description="Allow plain-http model URLs (https only by default)."
    )
    url_allowlist: list[str] = Field(
        default_factory=list,
        description="host, host:port or [ipv6]:port that URL pulls may reach even though it "
        "resolves to an address that is not globally reachable (an internal mirror). Matched "
        "against the URL as written (no port means the scheme's default), never against the "
        "address a name resolves to. Everything else non-global is refused, also through "
        "redirects.",
    )
    max_download_bytes: int = Field(
        default=256 * 1024**3, ge=1, description="Largest file a URL pull accepts."
    )


class IntegritySettings(_Section):
    require_signature: bool = Field(
        default=True,
        description="Serve only models whose manifest is signed by a trusted key "
        "($BASTION_HOME/keys/trusted/). Models bastion imports or pulls itself, after checking "
        "their digest, are signed with this server's own key.",
    )


class TlsSettings(_Section):
    port: int | None = Field(
        default=None, ge=0, le=65535, description="HTTPS port (off unless set; --tls-port)."
    )
    certfile: Path | None = Field(
        default=None, description="Server certificate; default $BASTION_HOME/tls/server.crt."
    )
    keyfile: Path | None = Field(
        default=None, description="Server key; default $BASTION_HOME/tls/server.key."
    )
    client_ca: Path | None = Field(
        default=None,
        description="CA that client certificates must chain to (mutual TLS). On the HTTPS "
        "listener the certificate is then the credential; its CN is the caller's identity.",
    )
    host: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Addresses the HTTPS listener binds; default: the same as server.host. "
        "E.g. plain HTTP on 127.0.0.1 (server.host) and HTTPS on 0.0.0.0.",
    )
    plain_http: bool = Field(
        default=True,
        description="With tls.port set, also serve plain HTTP on server.host:server.port. "
        "False (--no-plain): only the HTTPS listener binds.",
    )


class AuthSettings(_Section):
    loopback_bypass: bool = Field(
        default=True,
        description="Callers on 127.0.0.0/8 or ::1 need no API key and have every scope "
        "(inference and admin). Off: loopback callers need a key like anyone else.",
    )
    admin_certs: list[str] = Field(
        default_factory=list,
        description="Client-certificate CNs (mutual TLS) that get the admin scope besides "
        "inference: /api/*, /metrics. Every other verified certificate is inference only.",
    )


class AuditSettings(_Section):
    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=4096,
        description="Size at which audit/audit.jsonl rotates (the hash chain continues).",
    )
    include_content: bool = Field(
        default=False,
        description="Also record each completion request's prompt and the generated text. "
        "Off by default: the log then holds who, when and how much, never what.",
    )
    unauthenticated_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=4096,
        description="Size at which audit/unauthenticated.jsonl rotates: requests that never "
        "authenticated (refusals, /health probes) are kept apart, so a flood of them cannot "
        "rotate the records of real callers out.",
    )
    checkpoint_interval: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="Seconds between signed checkpoints of the audit chain (also written at "
        "rotation and at shutdown; skipped while the log is idle).",
    )
    checkpoint_syslog: str | None = Field(
        default=None,
        description="Also send each checkpoint to syslog: a Unix socket path (/dev/log), "
        "host or host:port (UDP, port 514). Keeps a copy an attacker on this box cannot edit.",
    )
    checkpoint_url: str | None = Field(
        default=None,
        description="Also POST each checkpoint (one JSON object) to this http(s) URL, "
        "best-effort and off the request path.",
    )

    @field_validator("checkpoint_url")
    @classmethod
    def _http_only(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/?#\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class _YamlSource(InitSettingsSource):
    """Reads ``$BASTION_HOME/bastion.yaml`` when it exists."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls, read_yaml_settings(path))


def yaml_error_where(exc: yaml.YAMLError) -> str:
    """``", line 3, column 7: not valid YAML (ScannerError)"``: where the parser stopped.
    PyYAML's own text is left out: it can quote the file (an unquoted ``*password`` is read as
    an alias and named in the message), and bastion.yaml may hold secrets."""
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: not valid YAML ({exc.__class__.__name__})"


def read_yaml_settings(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}{yaml_error_where(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BASTION_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    integrity: IntegritySettings = Field(default_factory=IntegritySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls, config_path()))


def config_path() -> Path:
    return home_dir() / "bastion.yaml"


def load_settings(overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
    """Build settings from CLI overrides, environment, config file and defaults."""
    try:
        kwargs: dict[str, Any] = dict(overrides or {})
        return Settings(**kwargs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
