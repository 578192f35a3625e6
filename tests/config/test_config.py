"""Configuration: the example validates, errors name the key path, secrets never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from depositwatch.cli import main
from depositwatch.config import ConfigError, load_config, parse_config

HUNTER4 = "whsec_aHVudGVyNC1odW50ZXI0LWh1bnRlcjQtaHVudGVyNA=="
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "depositwatch.example.toml"


def test_example_config_is_valid() -> None:
    """The shipped example parses with every key it documents."""
    config = load_config(EXAMPLE)
    assert [c.name for c in config.chains] == ["btc", "eth"]
    assert config.chain("eth").tokens[0].symbol == "USDT"
    with pytest.raises(ConfigError, match="configured: btc, eth"):
        config.chain("bsc")


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"chains": [{"name": "eth", "kind": "evm", "rpc_urls": ["http://x"]}]}, "chains.0: chain_id is required"),
        ({"chains": [{"name": "b", "kind": "bitcoin", "network": "main", "rpc_urls": ["http://x"]}]}, "chains.0:"),
        ({"chains": [{"name": "e", "kind": "evm", "chain_id": 1, "rpc_urls": ["ftp://x"]}]}, "chains.0.rpc_urls"),
        (
            {
                "chains": [
                    {
                        "name": "e",
                        "kind": "evm",
                        "chain_id": 1,
                        "rpc_urls": ["http://x"],
                        "tokens": [{"symbol": "T", "contract": "0x12", "decimals": 6}],
                    }
                ]
            },
            "chains.0.tokens.0.contract",
        ),
        ({"store": {"url": "mysql://x"}}, "store.url"),
        ({"sinks": [{"name": "w", "type": "webhook", "url": "http://x"}]}, "sinks.0: a webhook sink needs"),
        (
            {"sinks": [{"name": "w", "type": "webhook", "url": "http://x", "secret": {"env": "A", "file": "b"}}]},
            "sinks.0.secret",
        ),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)
def test_errors_name_the_key_path(data: dict[str, object], where: str) -> None:
    """Each validation error names the file and the key path."""
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "my.toml")
    assert f"my.toml: {where}" in str(caught.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the line."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[store\nurl = 1")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML.*line 1"):
        load_config(bad)


def test_secrets_come_from_env_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets resolve from the environment, files and $CREDENTIALS_DIRECTORY; a missing one is named."""
    config = parse_config(
        {
            "sinks": [
                {"name": "a", "type": "webhook", "url": "http://x", "secret": {"env": "DW_TEST_SECRET"}},
                {"name": "b", "type": "webhook", "url": "http://x", "secret": {"file": "hook-secret"}},
            ]
        }
    )
    monkeypatch.delenv("DW_TEST_SECRET", raising=False)
    with pytest.raises(ConfigError, match="DW_TEST_SECRET is not set"):
        config.sinks[0].secret.resolve()  # type: ignore[union-attr]
    monkeypatch.setenv("DW_TEST_SECRET", "s3")
    assert config.sinks[0].secret.resolve().get_secret_value() == "s3"  # type: ignore[union-attr]
    (tmp_path / "hook-secret").write_text("from-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert config.sinks[1].secret.resolve().get_secret_value() == "from-file"  # type: ignore[union-attr]


def test_check_config_redacts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check-config` prints the effective config with inline secrets and URL passwords masked."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[[chains]]\nname = "btc"\nkind = "bitcoin"\nrpc_urls = ["http://user:hunter2@127.0.0.1:8332"]\n'
        'rpc_password = { value = "hunter3" }\n'
        '[[sinks]]\nname = "w"\ntype = "webhook"\nurl = "http://127.0.0.1/x"\n'
        f'secret = {{ value = "{HUNTER4}" }}\n'
    )
    assert main(["--config", str(path), "check-config"]) == 0
    captured = capsys.readouterr()
    for secret in ("hunter2", "hunter3", HUNTER4, HUNTER4.removeprefix("whsec_")):
        assert secret not in captured.out
    assert "written inline" in captured.err
    assert main(["--config", str(tmp_path / "missing.toml"), "check-config"]) == 2


def test_chain_examples_are_valid_together() -> None:
    """Every example chain section validates, with unique names, and token contracts pass EIP-55."""
    import tomllib

    chains = []
    for path in sorted((EXAMPLE.parent / "chains").glob("*.toml")):
        chains += tomllib.loads(path.read_text())["chains"]
    config = parse_config({"chains": chains}, "config/chains")
    by_name = {c.name: c for c in config.chains}
    assert {"eth", "bsc", "polygon", "arbitrum", "optimism", "base", "avalanche", "btc"} <= set(by_name)
    assert {t.symbol: t.decimals for t in by_name["bsc"].tokens}["USDT"] == 18
    assert {t.symbol: t.decimals for t in by_name["eth"].tokens}["USDT"] == 6
