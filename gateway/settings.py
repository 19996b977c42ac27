"""Settings: one frozen object built from the environment (and CLI flags) at start-up, passed to `create_app`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.clock import SYSTEM_CLOCK, Clock

DEFAULT_MODEL = "claude-sonnet-5-5"
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant."
DEFAULT_AGENT = "default"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3271
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL", "EXTRA")
# A gateway token (or a named key) must be at least this long and this varied: a guard against accidents ("secret",
# "1234"), not a strength meter. `agentspace token create` makes 43 characters of 32 random bytes.
MIN_TOKEN_CHARS = 32
MIN_TOKEN_DISTINCT_CHARS = 10


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or choices[0]).upper()
    if raw not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {env.get(name)!r}")
    return raw


def token_problem(token: str) -> str | None:
    """Why a gateway token (or a named key) is too weak to use, or None. One rule for every secret clients present."""
    if len(token) < MIN_TOKEN_CHARS:
        return f"it has {len(token)} characters; at least {MIN_TOKEN_CHARS} are required"
    if len(set(token)) < MIN_TOKEN_DISTINCT_CHARS:
        return f"it uses only {len(set(token))} different characters; at least {MIN_TOKEN_DISTINCT_CHARS} are required"
    if not token.isprintable() or any(c.isspace() for c in token):
        return "it holds spaces or control characters"
    return None


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    default_model: str = DEFAULT_MODEL
    default_max_tokens: int = 8192
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    # Retries before the first token; the SDK's own retries are turned off so ours are the only ones.
    upstream_max_retries: int = 2
    upstream_retry_base_s: float = 0.5
    upstream_retry_max_s: float = 8.0
    upstream_connect_timeout_s: float = 10.0
    # Longest silence between two upstream bytes, and longest whole turn.
    upstream_read_timeout_s: float = 120.0
    upstream_total_timeout_s: float = 900.0
    # Limits on what a client may send.
    max_frame_bytes: int = 4 * 1024 * 1024
    # Largest HTTP API request body (the Messages API itself takes up to 32 MB).
    max_request_bytes: int = 32 * 1024 * 1024
    max_content_chars: int = 1_000_000
    max_sessions_per_page: int = 200
    # Pipelined frames (sent before the answers to earlier ones) draw on these; a client that waits is never limited.
    frames_per_second: float = 50.0
    frame_burst: int = 100
    # Every frame's bytes draw on these; a connection in debt is not read until it is repaid (pacing.py).
    bytes_per_second: int = 8 * 1024 * 1024
    byte_burst: int = 16 * 1024 * 1024
    # The edge: what an unauthenticated socket may send, how many sockets, how much unread data in all, how long.
    preauth_bytes: int = 8192
    max_connections: int = 1024
    max_connections_per_address: int = 256
    max_buffered_bytes: int = 64 * 1024 * 1024
    handshake_timeout_s: float = 10.0
    frame_timeout_s: float = 30.0
    heartbeat_s: float = 30.0
    # What happens to a running stream whose client disconnects: "cancel" or "finish".
    on_disconnect: str = "cancel"
    # How often partial assistant text is written during a stream, so a crash loses at most this much.
    checkpoint_interval_s: float = 1.0
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    auth_timeout_s: float = 5.0
    # FULL: a commit is on disk before it is acknowledged (power loss loses nothing committed). NORMAL: faster; under
    # WAL a power loss may drop the last commits, never corrupts.
    sqlite_synchronous: str = "FULL"
    # How long a thread waiting for the GIL waits before the running one is asked to let go (sys.setswitchinterval;
    # CPython's default is 5 ms). The database thread gives the GIL up at each SQLite call and asks for it back: at
    # 5 ms a wait, a busy event loop held a turn's writes, and so its end frame, back by up to 1.6 s (issue 15).
    gil_switch_ms: float = 0.5
    db_pool_size: int = 5
    db_max_overflow: int = 5
    log_format: str = "text"
    log_level: str = "INFO"
    # The discovery file (gateway/cli/runtime_file.py); None: neither written nor read. `runtime_file_forced`: it was
    # asked for by name, so it is written even by a gateway whose database others may share (PostgreSQL).
    runtime_file: Path | None = None
    runtime_file_forced: bool = False
    # `agentspace serve --workers N` (gateway/cli/workers.py): this process is worker `worker` (1..N) of `workers`;
    # `worker_dir` holds every worker's private socket, through which /metrics gathers the others' series.
    workers: int = 1
    worker: int | None = None
    worker_dir: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    # What "now" is for prices, budget periods and stored timestamps (gateway/clock.py); tests set their own.
    clock: Clock = field(default=SYSTEM_CLOCK, compare=False)

    @property
    def agents_dir(self) -> Path:
        return self.home / "agents"

    @property
    def vault_path(self) -> Path:
        return self.home / "keys.json"

    @property
    def token_path(self) -> Path:
        return self.home / "token"

    @property
    def prices_path(self) -> Path:
        return self.home / "prices.toml"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("AGENTSPACE_HOME") or Path.home() / ".agentspace").expanduser()
        db_url = env.get("AGENTSPACE_DB_URL") or default_db_url(home)
        origins = tuple(o.strip() for o in env.get("AGENTSPACE_ALLOWED_ORIGINS", "").split(",") if o.strip())
        runtime_file, runtime_file_forced = runtime_file_setting(env.get("AGENTSPACE_RUNTIME_FILE"))
        return cls(
            home=home,
            db_url=db_url,
            host=env.get("AGENTSPACE_HOST") or DEFAULT_HOST,
            port=_int(env, "AGENTSPACE_PORT", DEFAULT_PORT),
            default_model=env.get("AGENTSPACE_MODEL") or DEFAULT_MODEL,
            default_max_tokens=_int(env, "AGENTSPACE_MAX_TOKENS", 8192),
            anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
            anthropic_base_url=env.get("ANTHROPIC_BASE_URL") or None,
            upstream_max_retries=_int(env, "AGENTSPACE_UPSTREAM_RETRIES", 2),
            upstream_retry_base_s=_float(env, "AGENTSPACE_UPSTREAM_RETRY_BASE_S", 0.5),
            upstream_retry_max_s=_float(env, "AGENTSPACE_UPSTREAM_RETRY_MAX_S", 8.0),
            upstream_read_timeout_s=_float(env, "AGENTSPACE_UPSTREAM_READ_TIMEOUT_S", 120.0),
            upstream_total_timeout_s=_float(env, "AGENTSPACE_UPSTREAM_TOTAL_TIMEOUT_S", 900.0),
            max_frame_bytes=_int(env, "AGENTSPACE_MAX_FRAME_BYTES", 4 * 1024 * 1024),
            max_request_bytes=_int(env, "AGENTSPACE_MAX_REQUEST_BYTES", 32 * 1024 * 1024),
            max_content_chars=_int(env, "AGENTSPACE_MAX_CONTENT_CHARS", 1_000_000),
            max_sessions_per_page=_int(env, "AGENTSPACE_MAX_SESSIONS_PER_PAGE", 200),
            frames_per_second=_float(env, "AGENTSPACE_FRAMES_PER_SECOND", 50.0),
            frame_burst=_int(env, "AGENTSPACE_FRAME_BURST", 100),
            bytes_per_second=_int(env, "AGENTSPACE_BYTES_PER_SECOND", 8 * 1024 * 1024),
            byte_burst=_int(env, "AGENTSPACE_BYTE_BURST", 16 * 1024 * 1024),
            preauth_bytes=_int(env, "AGENTSPACE_PREAUTH_BYTES", 8192),
            max_connections=_int(env, "AGENTSPACE_MAX_CONNECTIONS", 1024),
            max_connections_per_address=_int(env, "AGENTSPACE_MAX_CONNECTIONS_PER_ADDRESS", 256),
            max_buffered_bytes=_int(env, "AGENTSPACE_MAX_BUFFERED_BYTES", 64 * 1024 * 1024),
            handshake_timeout_s=_float(env, "AGENTSPACE_HANDSHAKE_TIMEOUT_S", 10.0),
            frame_timeout_s=_float(env, "AGENTSPACE_FRAME_TIMEOUT_S", 30.0),
            heartbeat_s=_float(env, "AGENTSPACE_HEARTBEAT_S", 30.0),
            on_disconnect=env.get("AGENTSPACE_ON_DISCONNECT") or "cancel",
            checkpoint_interval_s=_float(env, "AGENTSPACE_CHECKPOINT_INTERVAL_S", 1.0),
            token=env.get("AGENTSPACE_TOKEN") or read_token_file(home / "token"),
            allowed_origins=origins,
            auth_timeout_s=_float(env, "AGENTSPACE_AUTH_TIMEOUT_S", 5.0),
            sqlite_synchronous=_choice(env, "AGENTSPACE_SQLITE_SYNCHRONOUS", SQLITE_SYNCHRONOUS),
            gil_switch_ms=_float(env, "AGENTSPACE_GIL_SWITCH_MS", 0.5),
            db_pool_size=_int(env, "AGENTSPACE_DB_POOL_SIZE", 5),
            db_max_overflow=_int(env, "AGENTSPACE_DB_MAX_OVERFLOW", 5),
            log_format=env.get("AGENTSPACE_LOG_FORMAT") or "text",
            log_level=env.get("AGENTSPACE_LOG_LEVEL") or "INFO",
            runtime_file=runtime_file,
            runtime_file_forced=runtime_file_forced,
        )


RUNTIME_FILE_OFF = ("", "off", "none", "0", "false", "no")


def default_runtime_file() -> Path:
    """Where the original AgentSpace CLI looks for a running gateway."""
    return Path.home() / ".config" / "agentspace" / "runtime.json"


def runtime_file_setting(raw: str | None) -> tuple[Path | None, bool]:
    """AGENTSPACE_RUNTIME_FILE: unset means the default path; a path names it (and forces it); `off` turns it off."""
    if raw is None:
        return default_runtime_file(), False
    if raw.strip().lower() in RUNTIME_FILE_OFF:
        return None, False
    return Path(raw).expanduser(), True


def read_token_file(path: Path) -> str | None:
    """The token `agentspace token create` stored, or None when there is none (an empty file counts as none)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return token or None


def default_db_url(home: Path) -> str:
    return f"sqlite+aiosqlite:///{home / 'gateway.db'}"
