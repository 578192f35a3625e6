"""The [api] section: off unless configured, tokens through the secrets mechanism (checked by `run`
before anything else, covered by `systemd credentials`), a listener that fails start-up clearly."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from depositwatch.api import TokenSet
from depositwatch.cli import main
from depositwatch.config import ConfigError, parse_config
from depositwatch.preflight import secrets
from tests.commands.test_listen import exited, run
from tests.daemon.test_daemon import Setup, sqlite_setup, stop
from tests.daemon.test_systemd import EVM_CHAIN, credentials_command, loaded

__all__ = ["sqlite_setup"]

TOKEN = {"name": "wallet", "scopes": ["read", "write"], "secret": {"value": "wallet-secret-value-1234"}}


def test_the_api_is_off_unless_configured() -> None:
    """No [api]: no API. With one: listen defaults to loopback port 8788, and a token is required."""
    assert parse_config({}).api is None
    api = parse_config({"api": {"tokens": [TOKEN]}}).api
    assert api is not None and api.listen == "127.0.0.1:8788"
    assert (api.max_body_bytes, api.max_batch) == (4 * 1024**2, 10_000)


@pytest.mark.parametrize(
    ("api", "where"),
    [
        ({}, "api.tokens: Field required"),
        ({"tokens": []}, "api.tokens: List should have at least 1 item"),
        ({"tokens": [{**TOKEN, "scopes": ["admin"]}]}, "api.tokens.0.scopes.0"),
        ({"tokens": [{**TOKEN, "scopes": []}]}, "api.tokens.0.scopes"),
        ({"tokens": [{**TOKEN, "name": "a b"}]}, "api.tokens.0.name"),
        ({"tokens": [TOKEN, TOKEN]}, "api: api token names must be unique: wallet"),
        ({"tokens": [{**TOKEN, "secret": {"env": "A", "value": "b"}}]}, "api.tokens.0.secret"),
        ({"tokens": [TOKEN], "listen": "localhost"}, "api.listen"),
        ({"tokens": [TOKEN], "max_body_bytes": 10}, "api.max_body_bytes"),
    ],
)
def test_bad_api_settings_name_the_key(api: dict[str, object], where: str) -> None:
    """Each mistake is a config error naming the key path."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"api": api}, "c.toml")
    assert f"c.toml: {where}" in str(caught.value)
    assert "wallet-secret-value-1234" not in str(caught.value)


def test_tokens_are_secrets_of_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Token secrets are listed with the config's secrets (so `run` checks them first); a token matches
    only itself, whatever its scheme's case, and a near miss matches nothing."""
    config = parse_config({"api": {"tokens": [TOKEN, {"name": "ro", "scopes": ["read"], "secret": {"env": "DW_RO"}}]}})
    assert config.api is not None
    assert [where for where, _ in secrets(config)] == ["api.tokens.wallet.secret", "api.tokens.ro.secret"]
    with pytest.raises(ConfigError, match="DW_RO is not set"):
        TokenSet.from_config(config.api.tokens)
    monkeypatch.setenv("DW_RO", "read-only-token-5678")
    tokens = TokenSet.from_config(config.api.tokens)
    found = tokens.authenticate("Bearer wallet-secret-value-1234")
    assert found is not None and (found.actor, found.scopes) == ("token:wallet", frozenset({"read", "write"}))
    found = tokens.authenticate("bearer read-only-token-5678")
    assert found is not None and found.name == "ro"
    for header in (None, "", "Bearer", "Bearer ", "Basic wallet-secret-value-1234", "Bearer wallet-secret-value-123"):
        assert tokens.authenticate(header) is None
    assert tokens.authenticate("Bearer " + "x" * 5000) is None


def test_systemd_credentials_cover_api_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A token in a credential file is loaded by the units; one from the environment is refused with a
    credential name to use instead."""
    api = '[api]\n[[api.tokens]]\nname = "wallet"\nscopes = ["write"]\nsecret = { file = "api-token-wallet" }\n'
    code, out, err = credentials_command(tmp_path, EVM_CHAIN + api, capsys)
    assert code == 0, err
    assert loaded(out) == ["api-token-wallet:/etc/depositwatch/credentials/api-token-wallet"]
    code, out, err = credentials_command(
        tmp_path, EVM_CHAIN + api.replace('file = "api-token-wallet"', 'env = "T"'), capsys
    )
    assert code == 2 and "api.tokens.wallet.secret: environment variable T is not passed" in err
    assert '{ file = "api-token-wallet" }' in err


def test_check_config_names_a_missing_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check-config --resolve-secrets` names the token whose secret is missing, and prints no secret."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[api]\n[[api.tokens]]\nname = "wallet"\nscopes = ["read"]\nsecret = { env = "DW_API_TOKEN_UNSET" }\n'
    )
    code = main(["--config", str(path), "check-config", "--resolve-secrets"])
    captured = capsys.readouterr()
    assert code == 2 and "api.tokens.wallet.secret: environment variable DW_API_TOKEN_UNSET is not set" in captured.err


async def test_a_missing_token_stops_run_before_the_store(sqlite_setup: Setup, tmp_path: Path) -> None:
    """`run` names the unreadable token secret and touches nothing."""
    store = tmp_path / "never" / "state.db"
    config = sqlite_setup.config()
    api = '[api]\n[[api.tokens]]\nname = "wallet"\nscopes = ["read"]\nsecret = { env = "DW_API_TOKEN_UNSET" }\n'
    config.write_text(config.read_text().replace(sqlite_setup.store_url, f"sqlite:///{store}") + api)
    log = tmp_path / "run.log"
    assert await exited(run(config, log=log)) == 2
    assert "api.tokens.wallet.secret: environment variable DW_API_TOKEN_UNSET is not set" in log.read_text()
    assert not store.parent.exists()


async def test_without_api_section_no_listener_and_a_taken_port_stops_start_up(sqlite_setup: Setup) -> None:
    """Without [api] the daemon starts no API; with its port taken, start-up fails naming the address."""
    daemon = await sqlite_setup.start(sqlite_setup.config())
    events = [json.loads(line)["event"] for line in daemon.output().splitlines() if line.startswith("{")]
    assert "http endpoint listening" in events and "api listening" not in events
    assert await stop(daemon) == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = sqlite_setup.config()
        config.write_text(
            config.read_text() + f'[api]\nlisten = "127.0.0.1:{port}"\n[[api.tokens]]\nname = "w"\nscopes = ["read"]\n'
            'secret = { value = "some-token-value-42" }\n'
        )
        failed = await sqlite_setup.start(config, wait_ready=False)
        assert await exited(failed.process) != 0
    assert f"api: cannot listen on 127.0.0.1:{port}" in failed.output()
