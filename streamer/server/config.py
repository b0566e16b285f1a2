"""The server's configuration: a tree of small pydantic models read from YAML.

```yaml
sources:
  - id: door
    url: rtsp://192.168.1.20/stream1
    fps: 1
    watches: [{id: visitor, text: "tell me when a person appears"}]
  - {id: lobby, url: /videos/lobby.mp4, loop: true}
memory: {budget_tokens: 4096, policy: curvature}     # the sections of streamer.engine_config.EngineConfig
retrieval: {top_k: 4}
answer: {max_new_tokens: 48}
snapshot: {dir: /var/lib/streamer, every_s: 60}
model: {name: embedded, llm: /models/qwen2.5-0.5b-instruct}   # or model: /models/Qwen2.5-VL-7B-Instruct
server: {host: 0.0.0.0, port: 8080, token: "${STREAMER_TOKEN}"}
```

Strings may name environment variables as `${NAME}`, so secrets stay out of the file; the token
is also read from `STREAMER_TOKEN` when the file sets none. A bad value is reported in one
sentence that names the field.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from streamer.engine_config import (
    DEFAULT_FPS,
    MOVED,
    AnswerConfig,
    EngineConfig,
    MemoryConfig,
    RetrievalConfig,
    SnapshotConfig,
)
from streamer.errors import UserError, first_problem, read_yaml_file
from streamer.models import DEVICE_PATTERN, EMBEDDED, ModelChoice

TOKEN_ENV = "STREAMER_TOKEN"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
ApiSourceKind = Literal["rtsp", "synthetic", "webcam"]
DEFAULT_API_SOURCES: tuple[ApiSourceKind, ...] = ("rtsp", "synthetic")
STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class WatchConfig(BaseModel):
    """A standing question a stream starts with (`streamer.watches`); its events go to attached clients."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="the watch's name in events and the API")
    text: str = Field(min_length=1, description="e.g. 'tell me when the sign says CLOSED'")
    every_s: float = Field(5.0, gt=0, description="longest stream time between checks (clear frames are all checked)")
    hold_s: float = Field(2.0, ge=0, description="how long it must hold before an episode starts")
    cooldown_s: float = Field(10.0, ge=0, description="no new episode this soon after one ended")
    confirm: int = Field(2, ge=1, description="looks that must see it in a row before an episode starts")
    on: float = Field(0.9, gt=0, le=1, description="how sure the stream must be of it (p_yes) to start an episode")
    webhook: str | None = Field(
        None, description="POST each event as JSON here; must start with a server.webhook_urls entry"
    )


class SourceConfig(BaseModel):
    """One stream the server opens at start."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=STREAM_ID_PATTERN, description="the stream's name in the API")
    url: str = Field(min_length=1, description="rtsp://..., webcam:N, synthetic:..., or a video file path")
    fps: float = Field(DEFAULT_FPS, gt=0, le=60, description="frames ingested per second")
    loop: bool = Field(False, description="play a video file again from the start when it ends")
    speed: float = Field(
        1.0,
        gt=0,
        le=100,
        description="a looping video file played this many times faster than real time (stream time follows "
        "the file: a long replay or soak in less time); one-process servers only",
    )
    tls_verify: bool = Field(
        True, description="rtsps: check the camera's TLS certificate and host name before reading (false: trust it)"
    )
    tls_ca_file: Path | None = Field(
        None, description="rtsps: PEM file of the authorities (or the camera's own certificate) to trust"
    )
    watches: list[WatchConfig] = Field(default_factory=list, description="standing questions on this stream")


class ModelConfig(BaseModel):
    """Which model answers (see `streamer.models`); `model: FOLDER_OR_ID` alone is short for `{name: ...}`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(EMBEDDED, min_length=1, description="embedded, a checkpoint folder or a Hugging Face model id")
    llm: str | None = Field(None, description="the embedded stack's LM: a causal-LM folder or .gguf (default SmolLM2)")
    device: str = Field("auto", pattern=DEVICE_PATTERN.pattern, description="cpu, cuda, cuda:N or auto")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    download: bool = Field(False, description="download a hub id missing from the local cache")

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def choice(self) -> ModelChoice:
        return ModelChoice(self.name, self.llm, self.device, self.dtype, self.download)


class ServerConfig(BaseModel):
    """Where the server listens, who may use it, and how much any one client may ask of it."""

    model_config = ConfigDict(extra="forbid")

    # Set by `streamer serve` when it made `token` itself (`local_token`); not a setting.
    _token_made: bool = PrivateAttr(False)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    token: SecretStr | None = Field(None, description="required from clients; mandatory off loopback")
    local_token: bool = Field(
        True,
        description="`streamer serve` on loopback with no token makes one at start (printed in the ready URL and "
        "kept for `streamer ask` in the cache folder); false: loopback clients need no token (`--no-token`)",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve HTTPS and WSS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    behind_tls_proxy: bool = Field(
        False, description="a TLS proxy in front terminates HTTPS, so plain HTTP off loopback is acceptable"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names clients may reach the server by, besides loopback and `host` (see allowed_host_names)",
    )
    api_sources: list[ApiSourceKind] = Field(
        default_factory=lambda: list(DEFAULT_API_SOURCES),
        description="kinds of source a client may open with POST /streams (files: see api_file_folders)",
    )
    api_file_folders: list[Path] = Field(
        default_factory=list, description="folders whose video files a client may open with POST /streams"
    )
    max_streams: int = Field(16, ge=1, description="streams one server ingests at once, however they were added")
    source_open_timeout_s: float = Field(20.0, gt=0, description="longest wait for a source a client adds to open")
    stun_servers: list[str] = Field(
        default_factory=list,
        description="STUN servers for WebRTC peers, e.g. stun:stun.l.google.com:19302 (none: LAN only)",
    )
    max_message_bytes: int = Field(16384, ge=1024, le=1 << 20, description="largest websocket message accepted")
    queue_messages: int = Field(256, ge=8, description="messages waiting for one slow client before it is dropped")
    max_messages_per_s: float = Field(
        50.0,
        gt=0,
        allow_inf_nan=False,
        description="messages one connection may send per second; beyond that they are read more slowly",
    )
    message_burst: int = Field(100, ge=1, description="messages a connection may send at once before the rate applies")
    max_questions_per_connection: int = Field(8, ge=1)
    max_watches_per_stream: int = Field(32, ge=1, description="standing questions one stream may hold")
    webhook_urls: list[str] = Field(
        default_factory=list,
        description="URL prefixes a watch may POST its events to, e.g. https://hooks.example.com/ (none: no webhooks)",
    )
    max_connections: int = Field(64, ge=1, description="websocket connections open at once, server-wide")
    max_connections_per_address: int = Field(8, ge=1, description="websocket connections from one address")
    idle_timeout_s: float = Field(
        600.0, gt=0, description="a connection that sends nothing and waits for no answer this long is closed"
    )
    max_pending_questions: int = Field(32, ge=1, description="questions queued or answering, server-wide")
    answer_workers: int = Field(
        16,
        ge=1,
        description="questions answered at once (each waits in a thread while the model scheduler decodes "
        "them together; match answer.max_rows)",
    )
    status_interval_s: float = Field(1.0, gt=0, description="seconds between stream.status messages")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value().strip()) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"a token needs at least {MIN_TOKEN_CHARS} characters (an empty one would let anyone in); make one "
                "with `python -c 'import secrets; print(secrets.token_urlsafe(24))'`"
            )
        return token

    @model_validator(mode="after")
    def _cert_with_key(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together; give both files or neither")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context from tls_cert and tls_key; None without them."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as error:
            reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or error
            raise UserError(
                f"Cannot use server.tls_cert '{self.tls_cert}' with server.tls_key '{self.tls_key}' ({reason}); "
                "give a PEM certificate chain and its private key."
            ) from None
        return context

    @property
    def token_made(self) -> bool:
        """Whether `token` was made at start for a loopback server (see `local_token`)."""
        return self._token_made

    def make_token(self, token: str) -> None:
        self.token = SecretStr(token)
        self._token_made = True

    @property
    def loopback(self) -> bool:
        """Whether the bind address is reachable only from this machine."""
        return is_loopback(self.host)

    def allowed_host_names(self) -> frozenset[str] | None:
        """The names a request's Host header may carry; None when any name is allowed.

        A request whose Host is not the server's own name is how a web page whose name was made to
        resolve to this machine (DNS rebinding) reaches a server on loopback without a token: so
        loopback names always, the configured host when it is a name or address, and what the
        operator adds. A server on a wildcard address with no names added answers to any name: it
        requires a token there, which a foreign page does not have.
        """
        if self.host in WILDCARD_HOSTS and not self.allowed_hosts:
            return None
        names = set(LOOPBACK_NAMES) | {name.lower().strip("[]") for name in self.allowed_hosts}
        if self.host not in WILDCARD_HOSTS:
            names.add(self.host.lower().strip("[]"))
        return frozenset(names)


def is_loopback(host: str) -> bool:
    """Whether an address (or `localhost`) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


class ClusterConfig(BaseModel):
    """`cluster:` serve the streams from Ray worker processes (`streamer.cluster`) instead of this one."""

    model_config = ConfigDict(extra="forbid")

    ray: bool = Field(False, description="run the streams on Ray workers (needs `bash scripts/setup.sh --ray`)")
    address: str | None = Field(None, description="a Ray cluster to join (e.g. auto, host:6379); none: start one here")
    workers: int = Field(2, ge=1, le=1024, description="worker processes, one GPU (or streamer_worker slot) each")
    gpus_per_worker: float | None = Field(
        None,
        ge=0,
        description="GPUs each worker takes (0: a streamer_worker slot instead; none: 1 if the cluster has GPUs)",
    )
    failover_after_s: float = Field(
        10.0, gt=0, description="how long a worker may stay unreachable before its streams move to the others"
    )


class StreamerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SourceConfig] = Field(default_factory=list)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="before")
    @classmethod
    def _moved_settings(cls, value: Any) -> Any:
        """A setting of the earlier flat `memory:` section that now lives in another section is named there."""
        memory = value.get("memory") if isinstance(value, dict) else None
        if isinstance(memory, dict):
            for name in memory:
                moved = MOVED.get(name) if isinstance(name, str) else None
                if moved is not None and not moved.startswith("memory."):
                    section, field = moved.split(".")
                    raise ValueError(f"memory.{name} is now {moved}: write it as `{section}: {{{field}: ...}}`")
        return value

    @model_validator(mode="after")
    def _unique_source_ids(self) -> StreamerConfig:
        seen: set[str] = set()
        for source in self.sources:
            if source.id in seen:
                raise ValueError(f"two sources are named '{source.id}'; give each its own id")
            seen.add(source.id)
            allowed = tuple(self.server.webhook_urls)
            for watch in source.watches:
                if watch.webhook is not None and not (allowed and watch.webhook.startswith(allowed)):
                    raise ValueError(
                        f"watch '{watch.id}' posts to a URL outside server.webhook_urls; add its prefix there"
                    )
        return self

    def engine_config(self) -> EngineConfig:
        return EngineConfig(memory=self.memory, retrieval=self.retrieval, answer=self.answer, snapshot=self.snapshot)

    def check_exposure(self, bound_host: str | None = None) -> None:
        """Refuse an address other machines can reach unless clients must present a token.

        `bound_host` is the address actually listened on, when it differs from the configured one.
        """
        host = self.server.host if bound_host is None else bound_host
        if is_loopback(host):
            return
        if self.server.token is None:
            raise UserError(
                f"Listening on {host} lets other machines in, so a token is required: "
                f"set {TOKEN_ENV} (or server.token in the config), or listen on 127.0.0.1."
            )
        if self.server.tls_cert is None and not self.server.behind_tls_proxy:
            raise UserError(
                f"Listening on {host} without TLS would send the token in clear text: give server.tls_cert and "
                "server.tls_key (--tls-cert, --tls-key), or set server.behind_tls_proxy when a proxy in front "
                "terminates TLS."
            )


def read_config_file(path: Path, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The YAML file as a plain tree with `${NAME}` references replaced from `environ`."""
    raw = read_yaml_file(path, "Config file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(
            f"Config file '{path}' must be a mapping with sources, memory, retrieval, answer, snapshot, model, "
            "server and cluster sections."
        )
    tree: dict[str, Any] = _interpolate(raw, environ, path, ())
    return tree


def build_config(raw: Mapping[str, Any], where: str, environ: Mapping[str, str] = os.environ) -> StreamerConfig:
    """Validate `raw`; the token falls back to the environment. `where` names the input in errors."""
    try:
        config = StreamerConfig.model_validate(raw)
    except ValidationError as error:
        raise UserError(validation_sentence(error, where)) from None
    if config.server.token is None and environ.get(TOKEN_ENV):
        if len(environ[TOKEN_ENV].strip()) < MIN_TOKEN_CHARS:
            raise UserError(
                f"{TOKEN_ENV} needs at least {MIN_TOKEN_CHARS} characters; make a token with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`."
            )
        config.server.token = SecretStr(environ[TOKEN_ENV])
    return config


def validation_sentence(error: ValidationError, where: str) -> str:
    """The first problem of `error` as one sentence naming the field."""
    problem = first_problem(error)
    if problem.unknown:
        return f"{where}: '{problem.field}' is not a known setting; check its spelling."
    return f"{where}: {problem.field}: {problem.message}." if problem.field else f"{where}: {problem.message}."


def _interpolate(value: Any, environ: Mapping[str, str], path: Path, at: tuple[str, ...]) -> Any:
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                field = ".".join(at) or "the top level"
                raise UserError(
                    f"Config file '{path}' uses ${{{name}}} at {field}, but {name} is not set; "
                    "set it in the environment."
                )
            return environ[name]

        return _ENV_REFERENCE.sub(lookup, value)
    if isinstance(value, dict):
        return {key: _interpolate(item, environ, path, (*at, str(key))) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, environ, path, (*at, str(i))) for i, item in enumerate(value)]
    return value
