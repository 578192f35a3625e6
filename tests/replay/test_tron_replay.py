"""`depositwatch replay` over TRON against the TRON test node: ad hoc (`--rpc-url`, `--watch FILE.csv`,
`--token`, `--api-key-env`) and with a config; the same output contract as the other chain kinds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from depositwatch.addresses.tron import parse_tron_address, tron_address
from depositwatch.chains import tron
from depositwatch.cli import main
from depositwatch.timeutil import iso
from tests.pipeline.test_tron_pipeline import (
    ACTIVE,
    BTT,
    CUSTOMER,
    OTHER_TRC10,
    REVOKED,
    REVOKED_AT,
    USDT,
    addr,
    scenario,
    wanted,
)
from tests.tronnode.chain import TronChain, trc20, trx
from tests.tronnode.server import TronNodeServer

MAINNET_USDT = parse_tron_address("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t").key
KEY = "tron-replay-key-canary-3b9e51aa07"


def watch_csv(tmp_path: Path) -> Path:
    path = tmp_path / "watch.csv"
    path.write_text(
        "chain,address,status,label,owner,revoked_at,reason\n"
        f"tron,{addr(REVOKED)},revoked,hot-1,ops,{iso(REVOKED_AT)},breach\n"
        f"tron,{addr(ACTIVE)},active,deposit-1,user-1,,\n"
    )
    return path


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text().splitlines()]


def keyed(lines: list[dict[str, Any]]) -> set[tuple[str, str, str, int | None]]:
    return {(x["txid"], x["kind"], x["asset"], x["index"]) for x in lines}


async def run_cli(*argv: str) -> int:
    # The CLI runs its own event loop; the test node keeps serving from this one meanwhile.
    return await asyncio.to_thread(main, list(argv))


@pytest.fixture
async def node() -> AsyncIterator[TronNodeServer]:
    async with TronNodeServer(TronChain(), api_key=KEY) as server:
        yield server


async def test_ad_hoc_replay_with_an_api_key(
    node: TronNodeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--api-key-env` names the variable; the lines are exactly the scenario's matches (the book has no
    revoked-later address here), TRX and TRC-10 with a null index, TRC-20 with its log index."""
    chain = node.chain
    first = chain.tip + 1
    expected = scenario(chain)
    last = chain.tip
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("DW_TRON_KEY", KEY)
    argv = [
        "replay", "--chain", "tron", "--from", str(first), "--to", str(last), "--rpc-url", node.url,
        "--watch", str(watch_csv(tmp_path)), "--token", f"USDT:{addr(USDT)}:6", "--token", f"BTT:{BTT}:6",
    ]  # fmt: skip
    assert await run_cli(*argv, "--api-key-env", "DW_TRON_KEY", "--output", str(out)) == 0
    lines = read_lines(out)
    # this book has no revoked-later address; internal TRX is not seen: "auto" finds no internal
    # transactions in the node's last blocks (the scenario ends with empty ones)
    assert keyed(lines) == wanted([e for e in expected if not e.later and e.index != -1])
    for line in lines:
        assert line["chain"] == "tron" and line["chain_id"] is None
        assert line["index"] is None or line["asset"] in ("USDT", "UNKNOWN")  # a log's index: TRC-20s only
        header = chain.block(line["block_height"])["block_header"]["raw_data"]
        assert line["block_time"] == iso(header["timestamp"] // 1000)
    assert {x["asset"] for x in lines} >= {"TRX", "USDT", "BTT", OTHER_TRC10}
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err + out.read_text()

    # without the variable: exit 2 naming it, nothing read
    monkeypatch.delenv("DW_TRON_KEY")
    assert await run_cli(*argv, "--api-key-env", "DW_TRON_KEY", "--output", str(tmp_path / "x.jsonl")) == 2
    assert "DW_TRON_KEY" in capsys.readouterr().err
    # without a key: the provider's 401, named, not a traceback
    assert await run_cli(*argv, "--output", str(tmp_path / "y.jsonl")) != 0
    message = capsys.readouterr().err
    assert "HTTP 401" in message and "Traceback" not in message


async def test_mainnet_by_genesis_watches_usdt_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node whose block 0 is mainnet's gets mainnet's USDT with no `--token`; another node does not list
    it (its transfer to a revoked address is an unlisted token's there)."""
    chain = TronChain()
    async with TronNodeServer(chain) as server:
        first = chain.tip + 1
        usdt = trc20(CUSTOMER, REVOKED, MAINNET_USDT, 1_500_000, nonce=chain.next_nonce())
        chain.mine([usdt, trx(CUSTOMER, REVOKED, 9, nonce=chain.next_nonce())])
        argv = [
            "replay", "--chain", "tron", "--from", str(first), "--to", str(chain.tip), "--rpc-url", server.url,
            "--watch", str(watch_csv(tmp_path)),
        ]  # fmt: skip
        plain = tmp_path / "plain.jsonl"
        assert await run_cli(*argv, "--output", str(plain)) == 0
        # not configured there: still seen, as an unlisted token to the revoked address (`token_listed` false)
        assert sorted((x["asset"], x["token_listed"]) for x in read_lines(plain)) == [("TRX", True), ("UNKNOWN", False)]
        genesis = chain.block(0)["blockID"]
        monkeypatch.setitem(tron.GENESIS_IDS, "mainnet", genesis)
        main_out = tmp_path / "mainnet.jsonl"
        assert await run_cli(*argv, "--output", str(main_out)) == 0
    lines = read_lines(main_out)
    assert sorted(x["asset"] for x in lines) == ["TRX", "USDT"]
    usdt_line = next(x for x in lines if x["asset"] == "USDT")
    assert usdt_line["asset_contract"] == "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t" and usdt_line["amount_decimal"] == "1.5"
    assert usdt_line["to"] == tron_address(REVOKED) and usdt_line["index"] == 0


async def test_replay_with_a_config_and_a_store(
    node: TronNodeServer, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `kind = "tron"` section with its API key from the environment; the same range again resumes the
    finished run and prints the same lines."""
    chain = node.chain
    first = chain.tip + 1
    sent = trc20(CUSTOMER, REVOKED, USDT, 3_000_000, nonce=chain.next_nonce())
    chain.mine([sent], count=2)
    monkeypatch.setenv("DW_TRON_KEY", KEY)
    config = tmp_path / "depositwatch.toml"
    config.write_text(
        f'[store]\nurl = "{sqlite_url}"\n\n[[chains]]\nname = "tron"\nkind = "tron"\nnetwork = "testnode"\n'
        f'rpc_urls = ["{node.url}"]\napi_key = {{ env = "DW_TRON_KEY" }}\n'
        f'tokens = [{{ symbol = "USDT", contract = "{addr(USDT)}", decimals = 6 }}]\n'
    )
    assert await run_cli("--config", str(config), "addresses", "import", str(watch_csv(tmp_path))) == 0
    out = tmp_path / "out.jsonl"
    argv = ["--config", str(config), "replay", "--chain", "tron", "--from", str(first), "--to", str(chain.tip)]
    assert await run_cli(*argv, "--output", str(out)) == 0
    lines = read_lines(out)
    assert [(x["kind"], x["asset"], x["amount"], x["index"]) for x in lines] == [
        ("revoked_incoming", "USDT", "3000000", 0)
    ]
    again = tmp_path / "again.jsonl"
    assert await run_cli(*argv, "--output", str(again)) == 0
    assert read_lines(again) == lines


async def test_the_readme_tron_replay_command_runs(
    node: TronNodeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's ad-hoc TRON replay, as written, with only the node, the range and the files ours."""
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    [line] = [x for x in readme.splitlines() if x.startswith("depositwatch replay --chain tron ")]
    argv = shlex.split(line)[1:]
    chain = node.chain
    first = chain.tip + 1
    sent = trx(CUSTOMER, REVOKED, 4_000_000, nonce=chain.next_nonce())
    chain.mine([sent], count=2)
    values = {
        "--rpc-url": node.url,
        "--watch": str(watch_csv(tmp_path)),
        "--from": str(first),
        "--to": str(chain.tip),
    }
    for flag, value in values.items():
        argv[argv.index(flag) + 1] = value
    monkeypatch.setenv(argv[argv.index("--api-key-env") + 1], KEY)
    out = tmp_path / "out.jsonl"
    assert await run_cli(*argv, "--output", str(out)) == 0
    assert [(x["kind"], x["asset"], x["amount_decimal"]) for x in read_lines(out)] == [("revoked_incoming", "TRX", "4")]
