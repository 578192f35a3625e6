"""No secret is ever printed: canaries planted in every secret-bearing setting, every error path driven,
and every output searched (stdout, stderr, log lines, /healthz, /metrics, every text column of the
store, check-config, replay and other command output).

Each canary is a distinct string, so a failure names the setting that leaked and where it showed.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import structlog

from depositwatch.addresses.base58 import b58check_encode
from depositwatch.alerts.factory import build_sinks
from depositwatch.alerts.sinks import DeliveryError
from depositwatch.config import ChainConfig, ConfigError, Secret, SinkConfig, parse_config, redact_text, redact_url
from depositwatch.devnet import Anvil, send_eth, wait_receipt
from depositwatch.logging import setup_logging
from tests.btcnode import BitcoinRegtestServer
from tests.daemon.test_daemon import ACTIVE, CHAIN_ID, REVOKED, NotifySocket, book, free_port, reap, stop
from tests.receivers import Received, Receiver, Reply
from tests.tronnode.server import TronNodeServer

DAEMON = [sys.executable, "-m", "depositwatch"]


def _whsec(canary: str) -> str:
    return "whsec_" + base64.b64encode(canary.encode()).decode()


# One canary per secret-bearing setting. URL parts that are not "secrets" by type (a node URL's path
# and query, a database URL's password) are canaries too: providers put API keys there.
C = {
    "store_url_password": "cnry-store-url-pw-1b7e",
    "store_password": "cnry-store-password-2c8f",
    "btc_password": "cnry-btc-rpc-password-3d9a",
    "btc_url_password": "cnry-btc-url-pw-4e0b",
    "btc_url_wallet": "cnrybtcwallet5f1c0123456789abcdef",
    "btc_rest_key": "cnrybtcrest6a2d0123456789abcdef0",
    "evm_url_password": "cnry-evm-url-pw-7b3e",
    "evm_path_key": "cnryevmpathkey8c4f0123456789abcd",
    "evm_query_key": "cnry-evm-query-key-9d5a",
    "evm_ws_key": "cnryevmwskey0e6b0123456789abcdef",
    "webhook_secret": "cnry-webhook-secret-one-1f7c-32b!",
    "webhook_secret_next": "cnry-webhook-secret-two-2a8d-32b!",
    "slack_path": "cnryslackpath3b9e0123456789abcdef",
    "slack_down_path": "cnryslackdown4c0f0123456789abcdef",
    "slack_schemeless": "cnryslacknoscheme5d1a0123456789ab",
    "pagerduty_key": "cnry-pagerduty-routing-key-6e2b",
    "replay_url_password": "cnry-replay-url-pw-7f3c",
    "replay_path_key": "cnryreplaypathkey8a4d0123456789ab",
    "replay_query_key": "cnry-replay-query-key-9b5e",
    "api_token": "cnry-api-token-wallet-0c6f",
    "tron_api_key": "cnry-tron-api-key-0c6f-tron",
    "tron_path_key": "cnrytronpathkey1d7a0123456789abcd",
    # An account's extended private key (BIP32 xprv: version, depth 3, chain code, 0x00 + secret), fed
    # where a key tree's public key belongs.
    "xprv": b58check_encode(
        bytes.fromhex("0488ade4") + b"\x03" + bytes(8) + bytes(range(32)) + b"\x00" + bytes(range(1, 33))
    ),
}
WEBHOOK_SECRETS = {
    C["webhook_secret"]: _whsec(C["webhook_secret"]),
    C["webhook_secret_next"]: _whsec(C["webhook_secret_next"]),
}


def forms(canary: str) -> list[str]:
    """The ways a canary could show: itself, and for webhook secrets the whsec_ form and its base64."""
    found = [canary]
    if canary in WEBHOOK_SECRETS:
        encoded = WEBHOOK_SECRETS[canary]
        found += [encoded, encoded.removeprefix("whsec_").rstrip("=")]
    if canary == C["xprv"]:
        found += [canary[i : i + 16] for i in range(4, len(canary) - 16, 16)]  # any part of the key
    return found


@dataclass
class Outputs:
    """Everything the program showed, by where it showed."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, text: str) -> None:
        self.texts[where] = self.texts.get(where, "") + text

    def leaks(self) -> list[str]:
        return [
            f"{name} in {where}"
            for name, canary in C.items()
            for where, text in self.texts.items()
            if any(form in text for form in forms(canary))
        ]


# Units: the redaction function and each place that shows text ---------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://eth.example/v3/0123456789abcdef0123456789abcdef", "https://eth.example:443/…"),
        ("https://eth.example:8545/?apikey=abc", "https://eth.example:8545/…"),
        ("http://user:pass@10.0.0.1:8332/wallet/hot", "http://10.0.0.1:8332/…"),
        ("wss://eth.example/ws/v2/KEY", "wss://eth.example:443/…"),
        ("postgresql://dw:pw@db.internal/depositwatch", "postgresql://db.internal:5432/…"),
        ("http://[::1]:8545/x", "http://[::1]:8545/…"),
        ("tcp://127.0.0.1:28332", "tcp://127.0.0.1:28332/…"),
        ("sqlite:///var/lib/depositwatch/depositwatch.db", "sqlite:///var/lib/depositwatch/depositwatch.db"),
        ("hooks.slack.com/services/T/B/X", "…"),
        ("http://u:p@[::1", "<unparseable URL>"),
    ],
)
def test_redact_url_keeps_scheme_host_and_port_only(url: str, shown: str) -> None:
    """Credentials, path and query go; the host and port stay so an operator knows which node it was."""
    assert redact_url(url) == shown


def test_redact_text_cuts_urls_and_remembered_secrets_out_of_free_text() -> None:
    """URLs inside error text are cut to their host; a secret read from the config is cut wherever it is."""
    Secret(value="cnry-inline-value-0a1b")
    text = "404 for url: https://eth.example/v3/KEYKEYKEY?x=1 (token cnry-inline-value-0a1b)"
    assert redact_text(text) == "404 for url: https://eth.example:443/… (token ********)"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("store", "url"), f"mysql://u:{C['store_url_password']}@db/x"),
        (("store", "url"), C["store_url_password"]),
        (("chains", 0, "rpc_urls", 0), f"http://u:{C['evm_url_password']}@h:99999/v3/{C['evm_path_key']}"),
        (("chains", 0, "rpc_urls", 0), f"ftp://h/v3/{C['evm_path_key']}?k={C['evm_query_key']}"),
        (("chains", 0, "ws_url"), f"http://u:{C['evm_url_password']}@[::1/{C['evm_ws_key']}"),
        (("chains", 0, "chain_id"), C["evm_query_key"]),
        (("sinks", 0, "url"), f"gopher://h/{C['slack_path']}"),
        (("sinks", 0, "secret", "value"), C["webhook_secret"]),  # not whsec_: refused
        (("sinks", 0, "secret", "value"), "whsec_" + base64.b64encode(b"cnry-short").decode()),
    ],
)
def test_config_errors_never_echo_the_value(path: tuple[object, ...], value: str) -> None:
    """Validation errors name the key path and the problem, never the refused value (pydantic's
    input_value included: the model hides input in its errors)."""
    data: dict[str, object] = {
        "store": {"url": "sqlite:///x.db"},
        "chains": [{"name": "eth", "kind": "evm", "chain_id": 1, "rpc_urls": ["http://127.0.0.1:8545"]}],
        "sinks": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1/h", "secret": {"value": "x"}}],
    }
    data["sinks"][0]["secret"]["value"] = WEBHOOK_SECRETS[C["webhook_secret"]]  # type: ignore[index]
    node: object = data
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "c.toml")
    assert ".".join(str(p) for p in path[:2]) in str(caught.value)
    for text in (str(caught.value), repr(caught.value)):
        assert value not in text and "cnry" not in text, text
    # the models themselves: str() of pydantic's error holds no input either
    with pytest.raises(ValueError) as direct:
        ChainConfig(name="eth", kind="evm", chain_id=1, rpc_urls=[f"ftp://h/v3/{C['evm_path_key']}"])
    assert C["evm_path_key"] not in str(direct.value)


def test_logs_never_show_secrets_or_url_keys() -> None:
    """structlog events (values, nested values, exceptions) and standard-library records (aiohttp, asyncio)
    pass the one redaction function."""
    stream = io.StringIO()
    setup_logging("debug", "json", stream=stream)
    try:
        secret = Secret(value=C["pagerduty_key"]).resolve()
        log = structlog.get_logger("test")
        url = f"https://u:{C['evm_url_password']}@eth.example/v3/{C['evm_path_key']}?k={C['evm_query_key']}"
        log.error("node trouble", url=url, error=f"404 for {url}", nested={"urls": [url]}, key=secret)
        log.info("routing", routing_key=C["pagerduty_key"], text=f"key {C['pagerduty_key']}")
        try:
            raise RuntimeError(f"cannot reach {url}")
        except RuntimeError:
            log.exception("failed")
        logging.getLogger("aiohttp.client").error("Unclosed session for %s", url)
    finally:
        setup_logging("warning", "console")
    text = stream.getvalue()
    assert "eth.example:443/…" in text and "node trouble" in text and "Unclosed session" in text
    for name in ("evm_url_password", "evm_path_key", "evm_query_key", "pagerduty_key"):
        assert C[name] not in text, name


async def test_delivery_errors_never_show_a_secret_url_or_an_echoed_key() -> None:
    """Connection failures to a Slack URL and receivers that echo the request (path, routing key) give
    delivery errors without the secret: these are logged and stored in deliveries.last_error."""

    def echo(req: Received, _rx: Receiver) -> Reply:
        return Reply(400, f"no_service for {req.path}: {req.body.decode()}")

    async with Receiver(echo, path=f"/services/{C['slack_path']}") as slack_rx, Receiver(echo) as pd_rx:
        sinks = build_sinks(
            [
                SinkConfig(name="chat", type="slack", secret=Secret(value=slack_rx.url)),
                SinkConfig(
                    name="chat-down",
                    type="slack",
                    secret=Secret(value=f"http://127.0.0.1:{free_port()}/services/{C['slack_down_path']}"),
                ),
                SinkConfig(name="pd", type="pagerduty", url=pd_rx.url, secret=Secret(value=C["pagerduty_key"])),
            ]
        )
        from tests.alerts.test_sinks import message

        reasons = []
        for sink in sinks:
            with pytest.raises(DeliveryError) as caught:
                await sink.send(message())
            reasons.append(caught.value.reason)
            await sink.close()
    assert reasons[0].startswith("HTTP 400: no_service for ") and reasons[2].startswith("HTTP 400")
    assert reasons[1].startswith("connection failed")
    for name in ("slack_path", "slack_down_path", "pagerduty_key"):
        assert not any(C[name] in reason for reason in reasons), (name, reasons)


# The whole program: commands and the daemon ------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str], outputs: Outputs, where: str) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "depositwatch", "--log-format", "json", "--log-level", "debug", *args],
        capture_output=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )
    outputs.add(f"{where} stdout", done.stdout.decode(errors="replace"))
    outputs.add(f"{where} stderr", done.stderr.decode(errors="replace"))
    return done.returncode


def store_text(path: Path) -> str:
    """Every text value in every table of a SQLite store."""
    found = []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                found += [
                    v if isinstance(v, str) else v.decode(errors="replace") for v in row if isinstance(v, str | bytes)
                ]
    return "\n".join(found)


@dataclass
class Scene:
    tmp: Path
    env: dict[str, str]
    outputs: Outputs = field(default_factory=Outputs)


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    (tmp_path / "hook-secret-next").write_text(WEBHOOK_SECRETS[C["webhook_secret_next"]] + "\n")
    env = {
        "DW_STORE_PASSWORD": C["store_password"],
        "DW_BTC_PASSWORD": C["btc_password"],
        "DW_HOOK_SECRET": WEBHOOK_SECRETS[C["webhook_secret"]],
        "DW_PD_KEY": C["pagerduty_key"],
        "DW_API_TOKEN": C["api_token"],
        "DW_TRON_KEY": C["tron_api_key"],
        "CREDENTIALS_DIRECTORY": str(tmp_path),
    }
    return Scene(tmp_path, env)


async def test_commands_never_print_a_secret(scene: Scene) -> None:
    """check-config (with and without --resolve-secrets), bad config files, an unreachable PostgreSQL
    with a password in its URL, a scheme-less Slack URL, and ad-hoc replays against unreachable and bad
    node URLs with keys in them."""
    tmp, out = scene.tmp, scene.outputs
    closed = free_port()
    full = tmp / "full.toml"
    full.write_text(
        f'[store]\nurl = "postgresql://dw:{C["store_url_password"]}@127.0.0.1:{closed}/dw"\n'
        'password = { env = "DW_STORE_PASSWORD" }\n'
        '[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\n'
        f'rpc_urls = ["http://dw:{C["btc_url_password"]}@127.0.0.1:{closed}/wallet/{C["btc_url_wallet"]}"]\n'
        f'rest_url = "http://127.0.0.1:{closed}/rest/{C["btc_rest_key"]}"\n'
        'rpc_user = "dw"\nrpc_password = { env = "DW_BTC_PASSWORD" }\n'
        f'[[chains]]\nname = "eth"\nkind = "evm"\nchain_id = 1\n'
        f'rpc_urls = ["https://dw:{C["evm_url_password"]}@eth.invalid/v3/{C["evm_path_key"]}?apikey={C["evm_query_key"]}"]\n'
        f'ws_url = "wss://eth.invalid/ws/{C["evm_ws_key"]}"\n'
        '[[chains]]\nname = "tron"\nkind = "tron"\napi_key = { env = "DW_TRON_KEY" }\n'
        f'rpc_urls = ["https://tron.invalid/{C["tron_path_key"]}"]\n'
        '[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "https://soc.invalid/hook"\n'
        'secret = { env = "DW_HOOK_SECRET" }\nsecrets = [{ file = "hook-secret-next" }]\n'
        '[[sinks]]\nname = "chat"\ntype = "slack"\n'
        f'secret = {{ value = "https://hooks.slack.invalid/services/{C["slack_path"]}" }}\n'
        '[[sinks]]\nname = "pd"\ntype = "pagerduty"\nsecret = { env = "DW_PD_KEY" }\n'
    )
    assert run_cli(["--config", str(full), "check-config"], scene.env, out, "check-config") == 0
    assert run_cli(["--config", str(full), "check-config", "--resolve-secrets"], scene.env, out, "resolve") == 0
    shown = json.loads(out.texts["check-config stdout"])
    assert shown["chains"][1]["rpc_urls"] == ["https://eth.invalid:443/…"]
    # the store is unreachable: an error naming host and port, not the password
    assert run_cli(["--config", str(full), "alerts", "list"], scene.env, out, "pg-down") != 0
    assert f"127.0.0.1:{closed}" in out.texts["pg-down stderr"]

    schemeless = tmp / "schemeless.toml"
    schemeless.write_text(
        '[store]\nurl = "sqlite:///' + str(tmp / "s.db") + '"\n'
        '[[sinks]]\nname = "chat"\ntype = "slack"\n'
        f'secret = {{ value = "hooks.slack.invalid/services/{C["slack_schemeless"]}" }}\n'
    )
    assert run_cli(["--config", str(schemeless), "check-config", "--resolve-secrets"], scene.env, out, "noscheme") == 2
    assert "sinks.chat.secret: the Slack webhook URL is not a usable URL" in out.texts["noscheme stderr"]
    assert run_cli(["--config", str(schemeless), "run"], scene.env, out, "noscheme-run") != 0

    for n, bad in enumerate(
        [
            f"mysql://u:{C['store_url_password']}@h/x",
            f"postgresql://u:{C['store_url_password']}@[::1/x",
        ]
    ):
        broken = tmp / f"broken-{n}.toml"
        broken.write_text(f'[store]\nurl = "{bad}"\n')
        assert run_cli(["--config", str(broken), "check-config"], scene.env, out, f"broken-{n}") == 2

    watch = tmp / "watch.csv"
    watch.write_text(f"chain,address,status\neth,{REVOKED},revoked\n")
    btc_watch = tmp / "btc-watch.csv"
    btc_watch.write_text("chain,address,status\nbtc,bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080,revoked\n")
    tron_watch = tmp / "tron-watch.csv"
    tron_watch.write_text("chain,address,status\ntron,TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t,revoked\n")
    replay_url = (
        f"http://dw:{C['replay_url_password']}@127.0.0.1:{closed}/v3/{C['replay_path_key']}?k={C['replay_query_key']}"
    )
    for n, (chain, url, csv) in enumerate(
        [
            ("eth", replay_url, watch),
            ("btc", replay_url, btc_watch),
            ("eth", replay_url.replace("http://", "ftp://"), watch),
            ("eth", replay_url.replace(f":{closed}", ":99999"), watch),
            ("eth", replay_url.replace("127.0.0.1", "[::1"), watch),
            ("tron", replay_url, tron_watch),
            ("tron", replay_url.replace(f":{closed}", ":99999"), tron_watch),
        ]
    ):
        args = ["replay", "--chain", chain, "--from", "1", "--to", "2", "--rpc-url", url, "--watch", str(csv)]
        args += ["--network", "regtest"] if chain == "btc" else ["--chain-id", "1"] if n == 0 else []
        args += ["--api-key-env", "DW_TRON_KEY"] if chain == "tron" else []
        assert run_cli(args, scene.env, out, f"replay-{n}") != 0
    # a TRON provider that refuses the key: the 401 is named, the key is not
    async with TronNodeServer(api_key="the-key-the-provider-wants") as tron:
        args = [
            "replay",
            "--chain",
            "tron",
            "--from",
            "1",
            "--to",
            "2",
            "--rpc-url",
            tron.url,
            "--watch",
            str(tron_watch),
        ]
        code = await asyncio.to_thread(run_cli, [*args, "--api-key-env", "DW_TRON_KEY"], scene.env, out, "tron-401")
        assert code != 0
    assert "HTTP 401" in out.texts["tron-401 stderr"]
    assert not out.leaks(), out.leaks()


async def use_the_api(http: aiohttp.ClientSession, url: str, out: Outputs) -> None:
    """Changes, reads, refusals and errors through the API with the canary token: audit rows are
    written under its name, and every answer is kept to search."""
    good = {"Authorization": f"Bearer {C['api_token']}"}
    calls: list[tuple[str, str, dict[str, str], object]] = [
        ("POST", "/api/v1/addresses", good, {"chain": "eth", "address": "0x" + "5e" * 20, "owner": "o"}),
        (
            "POST",
            "/api/v1/addresses/revoke",
            good,
            {"chain": "eth", "addresses": ["0x" + "5e" * 20], "at": 1, "reason": "r"},
        ),
        ("POST", "/api/v1/addresses/reinstate", good, {"chain": "eth", "addresses": ["0x" + "5e" * 20], "reason": "r"}),
        ("POST", "/api/v1/addresses", good, {"chain": "eth", "address": "0xbad"}),
        ("GET", "/api/v1/addresses", good, None),
        ("GET", "/api/v1/health", good, None),
        ("GET", f"/api/v1/addresses/eth/{'0x' + '5e' * 20}/history", good, None),
        ("GET", "/api/v1/addresses", {"Authorization": f"Bearer {C['api_token']}x"}, None),
        ("GET", "/api/v1/addresses", {"Authorization": f"Basic {C['api_token']}"}, None),
    ]
    for method, path, headers, body in calls:
        async with http.request(method, url + path, headers=headers, json=body) as resp:
            out.add("api answers", f"{resp.status} {dict(resp.headers)} {await resp.text()}\n")
    assert "token:wallet" in out.texts["api answers"] and "401" in out.texts["api answers"]


async def test_tree_commands_never_print_a_private_key(scene: Scene) -> None:
    """An xprv (bare, in a descriptor, with an origin, in the address column) in an import, an ad-hoc
    replay's --watch, `addresses parse` and `addresses revoke`: every one refused, the key shown nowhere,
    and the import stores nothing at all (all or nothing)."""
    tmp, out = scene.tmp, scene.outputs
    xprv = C["xprv"]
    store = tmp / "trees.db"
    url = f"sqlite:///{store}"
    rows = [
        f"eth,,{xprv},0-9,revoked,2024-01-01T00:00:00Z",
        f"eth,,[d34db33f/44h/60h/0h]{xprv}/0/*,0-9,revoked,2024-01-01T00:00:00Z",
        f"btc,,wpkh({xprv}/0/*),0-9,revoked,2024-01-01T00:00:00Z",
        f"eth,{xprv},,,revoked,2024-01-01T00:00:00Z",
    ]
    good = f"eth,{REVOKED},,,revoked,2024-01-01T00:00:00Z"
    for n, row in enumerate(rows):
        book = tmp / f"xprv-{n}.csv"
        book.write_text(f"chain,address,descriptor,range,status,revoked_at\n{good}\n{row}\n")
        assert run_cli(["addresses", "import", "--store", url, str(book)], scene.env, out, f"import-{n}") == 2
        assert "extended private key" in out.texts[f"import-{n} stderr"]
        assert not store.exists()  # refused before the store is opened: nothing of the file was kept
        replay = ["replay", "--chain", "eth", "--from", "1", "--to", "2", "--chain-id", "1"]
        replay += ["--rpc-url", f"http://127.0.0.1:{free_port()}", "--watch", str(book)]
        assert run_cli(replay, scene.env, out, f"replay-{n}") != 0
    for n, text in enumerate([xprv, f"wpkh({xprv}/0/*)", f"[d34db33f/84h/0h/0h]{xprv}/<0;1>/*"]):
        parse = ["addresses", "parse", "--chain", "btc", "--descriptor", text]
        assert run_cli(parse, scene.env, out, f"parse-{n}") == 2
        revoke = ["addresses", "revoke", "--store", url, "--chain", "eth", "--descriptor", text]
        assert run_cli([*revoke, "--at", "2024-01-01", "--reason", "x"], scene.env, out, f"revoke-{n}") != 0
    assert not out.leaks(), out.leaks()
    if store.exists():
        assert xprv[8:40] not in store_text(store)


def daemon_config(
    scene: Scene, store: Path, anvil: Anvil, btc: BitcoinRegtestServer, rx: dict[str, Receiver], tron: str
) -> str:
    closed = free_port()
    return (
        f'[store]\nurl = "sqlite:///{store}"\npassword = {{ env = "DW_STORE_PASSWORD" }}\n'
        f'[http]\nlisten = "127.0.0.1:{scene.env["DW_HTTP_PORT"]}"\n'
        f'[api]\nlisten = "127.0.0.1:{scene.env["DW_API_PORT"]}"\n'
        '[[api.tokens]]\nname = "wallet"\nscopes = ["read", "write"]\nsecret = { env = "DW_API_TOKEN" }\n'
        "[alerts]\npoll_interval = 0.05\nshutdown_grace = 2\n"
        # a healthy chain that alerts
        f'[[chains]]\nname = "eth"\nkind = "evm"\nchain_id = {CHAIN_ID}\nrpc_urls = ["{anvil.http_url}"]\n'
        "confirmations = 2\npoll_interval = 0.1\nstart_height = 1\nmempool = false\n"
        # an EVM node that is not there, with credentials, a key in the path and the query, a WebSocket key
        '[[chains]]\nname = "evmdown"\nkind = "evm"\nchain_id = 5\npoll_interval = 0.2\n'
        f'rpc_urls = ["http://dw:{C["evm_url_password"]}@127.0.0.1:{closed}/v3/{C["evm_path_key"]}'
        f'?apikey={C["evm_query_key"]}"]\n'
        f'ws_url = "ws://127.0.0.1:{closed}/ws/{C["evm_ws_key"]}"\n'
        # a Bitcoin node that refuses the password; a wallet path and a REST key in its URLs
        '[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\npoll_interval = 0.2\n'
        f'rpc_urls = ["{btc.url.rstrip("/")}/wallet/{C["btc_url_wallet"]}"]\n'
        f'rest_url = "http://127.0.0.1:{closed}/rest/{C["btc_rest_key"]}"\n'
        f'rpc_user = "{btc.user}"\nrpc_password = {{ env = "DW_BTC_PASSWORD" }}\n'
        # a second Bitcoin chain whose URL carries the password, the node absent
        '[[chains]]\nname = "btcdown"\nkind = "bitcoin"\nnetwork = "regtest"\npoll_interval = 0.2\n'
        f'rpc_urls = ["http://dw:{C["btc_url_password"]}@127.0.0.1:{closed}/"]\n'
        # a TRON provider that refuses the API key, and an absent one with a key in its path
        '[[chains]]\nname = "tron"\nkind = "tron"\nnetwork = "testnode"\npoll_interval = 0.2\n'
        f'rpc_urls = ["{tron}"]\napi_key = {{ env = "DW_TRON_KEY" }}\n'
        '[[chains]]\nname = "trondown"\nkind = "tron"\nnetwork = "testnode"\npoll_interval = 0.2\n'
        f'rpc_urls = ["http://127.0.0.1:{closed}/{C["tron_path_key"]}"]\napi_key = {{ env = "DW_TRON_KEY" }}\n'
        # sinks that fail in every way, each holding a secret
        f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{rx["hook"].url}"\n'
        'secret = { env = "DW_HOOK_SECRET" }\nsecrets = [{ file = "hook-secret-next" }]\n'
        "retry = { initial_backoff = 0.05, max_backoff = 0.2 }\n"
        '[[sinks]]\nname = "chat"\ntype = "slack"\nsecret = { env = "DW_SLACK_URL" }\n'
        "retry = { initial_backoff = 0.05, max_backoff = 0.2 }\n"
        '[[sinks]]\nname = "chat-down"\ntype = "slack"\n'
        f'secret = {{ value = "http://127.0.0.1:{closed}/services/{C["slack_down_path"]}" }}\n'
        "retry = { initial_backoff = 0.05, max_backoff = 0.2 }\n"
        f'[[sinks]]\nname = "pd"\ntype = "pagerduty"\nurl = "{rx["pd"].url}"\nsecret = {{ env = "DW_PD_KEY" }}\n'
        "retry = { initial_backoff = 0.05, max_backoff = 0.2 }\n"
    )


async def test_the_daemon_never_prints_a_secret(scene: Scene) -> None:
    """The daemon with a canary in every secret-bearing setting, node errors on three chains (absent,
    refusing the password), receivers that fail or echo what they got, an unreachable Slack: its
    output, /healthz, /metrics, the API's answers and the store (audit rows included) hold none of them,
    while the healthy chain still alerts."""
    tmp, out = scene.tmp, scene.outputs

    def echo(req: Received, _rx: Receiver) -> Reply:
        return Reply(400, f"invalid request {req.path}: {req.body.decode()}")

    def fail(_req: Received, _rx: Receiver) -> Reply:
        return Reply(500, "receiver broken")

    store = tmp / "state.db"
    started = []
    async with (
        Anvil(chain_id=CHAIN_ID) as anvil,
        BitcoinRegtestServer() as btc,
        TronNodeServer(api_key="the-key-the-provider-wants") as tron,
        Receiver(fail, secrets=[WEBHOOK_SECRETS[C["webhook_secret"]]]) as hook_rx,
        Receiver(echo, path=f"/services/{C['slack_path']}") as slack_rx,
        Receiver(echo) as pd_rx,
        aiohttp.ClientSession() as http,
    ):
        await book(f"sqlite:///{store}", tmp)
        port = free_port()
        api_port = free_port()
        env = {**scene.env, "DW_HTTP_PORT": str(port), "DW_API_PORT": str(api_port), "DW_SLACK_URL": slack_rx.url}
        scene.env.update(env)
        config = tmp / "daemon.toml"
        config.write_text(daemon_config(scene, store, anvil, btc, {"hook": hook_rx, "pd": pd_rx}, tron.url))
        notify = NotifySocket(tmp / "notify.sock")
        log = tmp / "daemon.log"
        errors = tmp / "daemon.err"
        with log.open("wb") as stdout, errors.open("wb") as stderr:
            process = subprocess.Popen(
                [*DAEMON, "--config", str(config), "--log-format", "json", "--log-level", "debug", "run"],
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, **env, "NOTIFY_SOCKET": str(notify.path)},
            )
        from tests.daemon.test_daemon import Daemon

        daemon = Daemon(process, notify, f"http://127.0.0.1:{port}", log, config)
        started.append(daemon)
        try:
            await notify.wait_for("READY=1")
            await use_the_api(http, f"http://127.0.0.1:{api_port}", out)
            txid = await send_eth(anvil.w3, anvil.accounts[1].address, REVOKED, 10**15)
            await wait_receipt(anvil.w3, txid)
            await send_eth(anvil.w3, anvil.accounts[1].address, ACTIVE, 10**15)

            async def health() -> dict[str, object]:
                async with http.get(f"{daemon.http}/healthz") as resp:
                    text = await resp.text()
                out.texts["healthz"] = text
                return json.loads(text)  # type: ignore[no-any-return]

            def failed_sinks() -> set[str]:
                with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                    rows = db.execute("SELECT sink FROM deliveries WHERE last_error IS NOT NULL").fetchall()
                return {r[0] for r in rows}

            async with asyncio.timeout(90):
                while True:
                    chains = (await health())["chains"]
                    assert isinstance(chains, dict)
                    down = all(chains[name]["error"] for name in ("evmdown", "btc", "btcdown", "tron", "trondown"))
                    if down and failed_sinks() >= {"hook", "chat", "chat-down", "pd"} and hook_rx.requests:
                        break
                    await asyncio.sleep(0.2)
            assert hook_rx.requests[0].verified  # signed under the first secret; the receiver checked it
            assert slack_rx.requests and pd_rx.requests
            async with http.get(f"{daemon.http}/metrics") as resp:
                out.add("metrics", await resp.text())
            await health()
        finally:
            code = await stop(daemon) if process.poll() is None else process.returncode
            reap(started)
    assert code == 0, daemon.output()
    out.add("stdout", log.read_text(errors="replace"))
    out.add("stderr", errors.read_text(errors="replace"))
    out.add("store", store_text(store))
    run_cli(["--config", str(config), "alerts", "list", "--status", "pending"], env, out, "alerts list")
    assert "evmdown" in out.texts["healthz"] and "127.0.0.1" in out.texts["stderr"]
    assert not out.leaks(), out.leaks()
