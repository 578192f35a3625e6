"""Configuration: one TOML file, validated, with secrets taken from the environment or from files.

The rest of the program imports the configuration from here; each part has its own module:
`base` (the strict model, `ConfigError`, secrets, URL checks), `redaction` (what may be shown),
`chains` and `sinks` (those sections), `schema` (`Config` and the other sections) and `load`
(reading and validating the file).
"""

from depositwatch.config.base import ConfigError, Secret, check_url
from depositwatch.config.chains import (
    TRON_API_KEY_HEADER,
    TRON_NETWORKS,
    TRON_USDT,
    ChainConfig,
    TokenConfig,
    Trc10Config,
)
from depositwatch.config.load import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATHS,
    format_validation_error,
    load_config,
    parse_config,
)
from depositwatch.config.redaction import (
    HIDDEN,
    MIN_KEY_SEGMENT,
    MIN_REMEMBERED,
    REDACTED,
    redact_text,
    redact_url,
    remember_secret,
    remember_url,
)
from depositwatch.config.schema import (
    LISTEN_ENV,
    AlertsConfig,
    ApiConfig,
    ApiToken,
    Config,
    HaConfig,
    HttpConfig,
    LogConfig,
    RetentionConfig,
    StoreConfig,
    parse_listen,
)
from depositwatch.config.sinks import EMAIL_PATTERN, RetryConfig, SinkConfig

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATHS",
    "EMAIL_PATTERN",
    "HIDDEN",
    "LISTEN_ENV",
    "MIN_KEY_SEGMENT",
    "MIN_REMEMBERED",
    "REDACTED",
    "TRON_API_KEY_HEADER",
    "TRON_NETWORKS",
    "TRON_USDT",
    "AlertsConfig",
    "ApiConfig",
    "ApiToken",
    "ChainConfig",
    "Config",
    "ConfigError",
    "HaConfig",
    "HttpConfig",
    "LogConfig",
    "RetentionConfig",
    "RetryConfig",
    "Secret",
    "SinkConfig",
    "StoreConfig",
    "TokenConfig",
    "Trc10Config",
    "check_url",
    "format_validation_error",
    "load_config",
    "parse_config",
    "parse_listen",
    "redact_text",
    "redact_url",
    "remember_secret",
    "remember_url",
]
