"""`kind = "tron"` chain sections: defaults, TRON-only keys, token contracts per kind, the API key as a
secret, the example sections, and `addresses parse --chain tron`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from depositwatch.cli import main
from depositwatch.config import ConfigError, parse_config
from depositwatch.preflight import secret_problems

ROOT = Path(__file__).resolve().parents[2]
USDT = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"


ETH_USDT = "0xdAC17F958D2ee523a2206206994597C13D831ec7"


def token(contract: str) -> list[dict[str, Any]]:
    return [{"symbol": "U", "contract": contract, "decimals": 6}]


def trc10(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i, "symbol": f"A{n}", "decimals": 6} for n, i in enumerate(ids)]


def evm(**keys: Any) -> dict[str, Any]:
    return {"chains": [{"name": "e", "kind": "evm", "chain_id": 1, "rpc_urls": ["http://x"], **keys}]}


def tron(**keys: Any) -> dict[str, Any]:
    return {"chains": [{"name": "tron", "kind": "tron", "rpc_urls": ["http://127.0.0.1:8090"], **keys}]}


def test_defaults_solidified_confirmations_usdt_on_mainnet_only() -> None:
    chain = parse_config(tron()).chains[0]
    assert (chain.confirmations, chain.batch_blocks, chain.internal) == (19, 100, "auto")
    assert (chain.native_asset_symbol, chain.native_asset_decimals) == ("TRX", 6)
    assert [(t.symbol, t.contract, t.decimals) for t in chain.tokens] == [("USDT", USDT, 6)]
    assert parse_config(tron(network="nile")).chains[0].tokens == []
    assert parse_config(tron(tokens=[])).chains[0].tokens == []
    mine = parse_config(tron(confirmations=25, tokens=[{"symbol": "X", "contract": "41" + "ab" * 20, "decimals": 2}]))
    assert mine.chains[0].confirmations == 25
    assert mine.chains[0].tokens[0].contract.startswith("T")  # node hex written as base58


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (tron(tokens=token(ETH_USDT)), "TRON addresses"),
        (tron(tokens=token(USDT[:-1] + "u")), "chains.0.tokens.0.contract"),
        (tron(chain_id=1), "not keys of a TRON chain"),
        (tron(network="Main Net"), "network must be"),
        (tron(trc10=trc10("1002000", "1002000")), "listed twice"),
        (tron(trc10=trc10("01002000")), "chains.0.trc10.0.id"),
        (tron(internal="sometimes"), "chains.0.internal"),
        (evm(api_key={"env": "K"}), "api_key: for TRON chains only"),
        (evm(tokens=token(USDT)), "0x addresses"),
    ],
)  # fmt: skip
def test_bad_tron_sections_are_named(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_the_api_key_is_a_secret() -> None:
    """Named by variable in a start-up problem; shown as stars in the effective config."""
    config = parse_config(tron(api_key={"env": "DW_TRON_KEY_UNSET"}))
    assert secret_problems(config) == ["chains.tron.api_key: environment variable DW_TRON_KEY_UNSET is not set"]
    shown = parse_config(tron(api_key={"value": "inline-tron-key-1234"})).redacted()
    assert "inline-tron-key-1234" not in json.dumps(shown)


def test_example_sections_are_valid() -> None:
    """config/chains/tron*.toml, and the example config's commented TRON section once uncommented."""
    chains = []
    for path in sorted((ROOT / "config" / "chains").glob("tron*.toml")):
        chains += tomllib.loads(path.read_text())["chains"]
    config = parse_config({"chains": chains}, "config/chains")
    by_name = {c.name: c for c in config.chains}
    assert by_name["tron"].network == "mainnet" and by_name["tron-nile"].network == "nile"
    assert [t.contract for t in by_name["tron"].tokens] == [USDT]
    assert [(t.id, t.symbol) for t in by_name["tron"].trc10] == [("1002000", "BTT")]
    example = (ROOT / "config" / "depositwatch.example.toml").read_text()
    block = example.split("# ---- TRON")[1].split("# ---- sinks")[0]
    lines = [line.removeprefix("# ") for line in block.splitlines()[1:] if line.startswith("# ")]
    chain = parse_config(tomllib.loads("\n".join(lines))).chains[0]
    assert (chain.kind, chain.confirmations, chain.trc10[0].id) == ("tron", 19, "1002000")


def test_addresses_parse_tron(capsys: pytest.CaptureFixture[str]) -> None:
    """Base58 and the node's 41-hex form give the same address; a bad checksum exits 2 naming it."""
    assert main(["addresses", "parse", "--chain", "tron", USDT, "41a614f803b6fd780986a42c78ec9c7f77e6ded13c"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [{"address": USDT, "type": "tron", "hex": "41a614f803b6fd780986a42c78ec9c7f77e6ded13c"}] * 2
    assert main(["addresses", "parse", "--chain", "tron", USDT[:-1] + "u"]) == 2
    assert "invalid tron address" in capsys.readouterr().err
