"""Typed settings for every part of learnrec, read from `LEARNREC_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: `features.schemas.SEOUL_LEARN_REGIONS`, spelled out: importing that module would load pyarrow with the
#: settings, on every command (a test keeps the two equal).
DEFAULT_REGIONS = ("seoul", "chungbuk", "pyeongchang", "gimpo", "incheon", "taebaek")
#: Stream shards on a Redis Cluster unless `RedisSettings.stream_shards` says otherwise: twice the local
#: cluster's three primaries, so each primary holds about two of them.
CLUSTER_STREAM_SHARDS = 6


class RedisSettings(BaseModel):
    """Where the feature store and the streams live."""

    url: str | None = Field(
        default=None,
        description="redis:// URL of an existing server (or cluster node); unset = start the embedded one.",
    )
    cluster: bool = Field(default=False, description="Treat `url` as a Redis Cluster entry node.")
    socket_timeout_ms: int = Field(default=50, ge=1, description="Per-command timeout on the request path.")
    embedded_port: int = Field(default=0, ge=0, description="Port for the embedded server; 0 = a free port.")
    stream_shards: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Shards of the events and exposures streams (features.keys); unset = 1 on a single Redis, "
            f"{CLUSTER_STREAM_SHARDS} on a cluster. Fixed per deployment: a student's records and an event's "
            "id marker live in the shard its student id picks, so changing it breaks deduplication of "
            "retries in flight; export every shard before changing it."
        ),
    )
    replica_acks: int = Field(
        default=0,
        ge=0,
        description=(
            "Replicas that must acknowledge an event batch (Redis WAIT on the stream's node) before POST "
            "/events answers 2xx; fewer in time = 503, the client retries (idempotent). 0 = do not wait "
            "(a single Redis without replicas). Set 1 on a cluster with replicas: an accepted event then "
            "survives its primary's failover."
        ),
    )
    replica_ack_timeout_ms: int = Field(
        default=25,
        ge=1,
        description="How long WAIT waits for `replica_acks`; must stay below `socket_timeout_ms`.",
    )

    def shards(self) -> int:
        """The stream shards in force (`stream_shards`, or its default for a single Redis or a cluster)."""
        if self.stream_shards is not None:
            return self.stream_shards
        return CLUSTER_STREAM_SHARDS if self.cluster else 1

    @model_validator(mode="after")
    def _wait_within_timeout(self) -> RedisSettings:
        if self.replica_acks and self.replica_ack_timeout_ms >= self.socket_timeout_ms:
            raise ValueError(
                f"redis.replica_ack_timeout_ms ({self.replica_ack_timeout_ms}) must be below "
                f"redis.socket_timeout_ms ({self.socket_timeout_ms}): the WAIT reply would time out"
            )
        return self


class MlflowSettings(BaseModel):
    """Tracking store and registry."""

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; unset = SQLite store under the data directory.",
    )
    experiment: str = Field(default="learnrec", description="Experiment that `learnrec train` logs to.")
    registered_model: str = Field(
        default="learnrec-lectures", description="Registered model that holds the champion/challenger."
    )
    telemetry: bool = Field(
        default=False,
        description=(
            "Let MLflow (3.2 and later) send its anonymised usage data from learnrec's processes and the "
            "MLflow UI that `learnrec mlflow-ui` starts. Off: learnrec sets MLFLOW_DISABLE_TELEMETRY and "
            "DO_NOT_TRACK, since it runs on separated networks and its data is about minors."
        ),
    )

    def telemetry_environment(self) -> dict[str, str]:
        """The environment variables that switch MLflow's usage reporting off (none when it is allowed)."""
        return {} if self.telemetry else {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


class ServiceSettings(BaseModel):
    """The FastAPI service."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    model_alias: str = Field(default="champion", description="Alias of the registered model to serve.")
    reload_poll_seconds: float = Field(
        default=10.0, ge=0, description="How often to poll the alias; 0 = never."
    )
    api_keys_file: Path | None = Field(
        default=None, description="JSON file of hashed API keys; unset = dev keys."
    )
    admin_key: SecretStr | None = Field(default=None, description="Admin API key (dev default when unset).")
    experiments_file: Path | None = Field(default=None, description="YAML file of A/B experiments.")
    log_hash_key: SecretStr | None = Field(
        default=None, description="HMAC key for student ids in logs; unset = a random key per process."
    )
    answer_cache_size: int = Field(
        default=20_000,
        ge=0,
        description=(
            "Students whose computed answers the service keeps in memory (about 1.5 KB an answer at k=10, "
            "`answer_cache_shapes` answers at most a student) until Redis reports that their keys changed "
            "(service.answer_cache); 0 = off. On Redis Cluster it tracks every primary."
        ),
    )
    answer_cache_shapes: int = Field(
        default=4,
        ge=1,
        description=(
            "Answers the answer cache keeps per student, one per request shape (k, subject, the key's "
            "region), the least recently put out first: bounds its memory and the cost of a put."
        ),
    )
    regions: tuple[str, ...] = Field(
        default=DEFAULT_REGIONS,
        description=(
            "Partner regions a student may be registered in (PUT /students), besides the regions of the "
            "serving models' catalogues and those an API key is scoped to; add a new partner here."
        ),
    )
    native_threads: int = Field(
        default=1,
        ge=0,
        description=(
            "Threads of the BLAS/OpenMP pools (OpenBLAS, MKL, OpenMP) in the service process; 0 = the "
            "libraries' own default (one per core). One request scores one student: extra threads only "
            "contend with the other requests for the cores."
        ),
    )


class Settings(BaseSettings):
    """All settings. Environment: `LEARNREC_DATA_DIR`, `LEARNREC_REDIS__URL` (or `REDIS_URL`), ..."""

    model_config = SettingsConfigDict(env_prefix="LEARNREC_", env_nested_delimiter="__", extra="ignore")

    env: str = Field(default="development", description="development | production")
    data_dir: Path = Field(
        default=Path("data"), description="Directory learnrec owns: datasets, Redis, MLflow."
    )
    seed: int = Field(default=42, description="Seed for everything random.")
    redis: RedisSettings = RedisSettings()
    mlflow: MlflowSettings = MlflowSettings()
    service: ServiceSettings = ServiceSettings()
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "LEARNREC_REDIS_URL"),
        exclude=True,
        description="Plain `REDIS_URL`, honoured as a shortcut for `redis.url`.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI"),
        exclude=True,
        description="Plain `MLFLOW_TRACKING_URI`, honoured as a shortcut for `mlflow.tracking_uri`.",
    )

    def model_post_init(self, __context: object) -> None:
        if self.redis.url is None and self.redis_url:
            self.redis.url = self.redis_url
        if self.mlflow.tracking_uri is None and self.mlflow_tracking_uri:
            self.mlflow.tracking_uri = self.mlflow_tracking_uri

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def mlflow_dir(self) -> Path:
        return self.data_dir / "mlflow"

    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force (the embedded SQLite store when none is set)."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{(self.mlflow_dir / 'mlflow.db').resolve()}"

    def artifact_root(self) -> str:
        return (self.mlflow_dir / "artifacts").resolve().as_uri()


def apply_telemetry_choice(settings: Settings) -> None:
    """Put `settings.mlflow.telemetry` in force for this process and the processes it starts.

    MLflow reads the variables whenever it would report, so this works even after `import mlflow`; child
    processes (the MLflow UI) inherit them.

    Args:
        settings: the settings in force.
    """
    os.environ.update(settings.mlflow.telemetry_environment())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing the environment."""
    return Settings()
