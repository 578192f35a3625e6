"""The `[[chains]]` section: one followed chain (Bitcoin, EVM or TRON), its node, its tokens and its limits."""

# The sections are pydantic models (through `_Strict`), which copy mutable defaults; ruff sees that only
# when the base class is in the same module.
# ruff: noqa: RUF012

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from depositwatch.config.base import Secret, _Strict, check_url


class TokenConfig(_Strict):
    """A token contract to follow: ERC-20 on an EVM chain (`0x...`), TRC-20 on TRON (`T...` or `41...` hex)."""

    symbol: Annotated[str, Field(min_length=1, max_length=16)]
    contract: str
    decimals: Annotated[int, Field(ge=0, le=36)]

    @field_validator("contract")
    @classmethod
    def _contract(cls, value: str) -> str:
        from depositwatch.addresses import AddressError, parse_ethereum_address
        from depositwatch.addresses.tron import parse_tron_address

        try:
            if value.startswith(("0x", "0X")):
                return parse_ethereum_address(value).address
            return parse_tron_address(value).address
        except AddressError as exc:
            raise ValueError(exc.reason) from exc


class Trc10Config(_Strict):
    """A TRC-10 token of a TRON chain: its numeric id (`1002000` is BitTorrent's), symbol and decimals."""

    id: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,18}$")]
    symbol: Annotated[str, Field(min_length=1, max_length=16)]
    decimals: Annotated[int, Field(ge=0, le=36)]


TRON_API_KEY_HEADER = "TRON-PRO-API-KEY"
TRON_NETWORKS = ("mainnet", "nile", "shasta")
TRON_USDT = TokenConfig(symbol="USDT", contract="TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t", decimals=6)
# TRON: solidified after 19 blocks; ranges of 100 blocks are one getblockbylimitnext request.
_TRON_DEFAULTS = {"confirmations": 19, "batch_blocks": 100}


class ChainConfig(_Strict):
    """One followed chain: a Bitcoin network, an EVM network or a TRON network."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    kind: Literal["bitcoin", "evm", "tron"]
    # Bitcoin: mainnet, testnet, signet, regtest. EVM: free text for humans (e.g. "mainnet").
    # TRON: mainnet, nile or shasta (the node's block 0 is checked), or another name (not checked).
    network: str = "mainnet"
    chain_id: Annotated[int, Field(ge=1)] | None = None
    rpc_urls: Annotated[list[str], Field(min_length=1)]
    ws_url: str | None = None
    rpc_user: str | None = None
    rpc_password: Secret | None = None
    cookie_file: Path | None = None
    rest_url: str | None = None
    zmq_url: str | None = None
    native_symbol: str | None = None
    native_decimals: Annotated[int, Field(ge=0, le=36)] | None = None
    tokens: list[TokenConfig] = []
    confirmations: Annotated[int, Field(ge=1, le=10_000)] = 6
    reorg_depth: Annotated[int, Field(ge=1, le=10_000)] = 100
    max_lag_blocks: Annotated[int, Field(ge=1)] = 12
    poll_interval: Annotated[float, Field(gt=0, le=3600)] = 2.0
    getlogs_max_range: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    batch_blocks: Annotated[int, Field(ge=1, le=1000)] = 20
    max_in_flight: Annotated[int, Field(ge=1, le=64)] = 4
    # EVM: ranges of `batch_blocks` read ahead while the follower matches and commits (catching up, replay)
    read_ahead: Annotated[int, Field(ge=0, le=16)] = 4
    # Node requests: seconds to connect, to wait for each read on the socket, and for a whole request
    connect_timeout: Annotated[float, Field(gt=0, le=600)] = 5.0
    read_timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0
    request_timeout: Annotated[float, Field(gt=0, le=3600)] = 300.0
    # A longer node answer fails that request (every body is held in memory: at most max_in_flight of them)
    max_response_bytes: Annotated[int, Field(ge=1024, le=4 * 1024**3)] = 64 * 1024 * 1024
    mempool: bool = True  # Bitcoin: the mempool; EVM: pending transactions (txpool_content), where offered
    # EVM, with `mempool`: pending ERC-20 transfer/transferFrom calls too (their alert id is the pending one)
    pending_tokens: bool = True
    # Seconds a mempool (Bitcoin) or pending (EVM) match's transaction must have been gone before it is retracted
    mempool_drop_grace: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    traces: bool = False
    # EVM: a watched set (active and revoked) of at most this many addresses is fetched filtered, where the
    # node serves trace_filter: Transfer logs, transactions and traces of those addresses only, plus every
    # block's header, instead of every block in full (chains/evm_filtered.py); 0 always reads blocks in full
    filter_max_keys: Annotated[int, Field(ge=0, le=100_000)] = 1000
    # EVM and TRON: Transfer logs of every contract (not only `tokens`) to or from a revoked address
    any_tokens: bool = True
    # Poisoning: a transfer to or from a revoked address of zero, or of less than its asset's dust
    # threshold (base units, by asset symbol: the native symbol or a configured token's), is recorded
    # and alerted at `info` ("info") or not alerted at all ("off"); it never pages.
    dust: dict[Annotated[str, Field(min_length=1, max_length=16)], Annotated[int, Field(ge=0, le=2**256 - 1)]] = {}
    poisoning_alerts: Literal["info", "off"] = "info"
    start_height: Annotated[int, Field(ge=0)] | None = None
    # a block explorer's transaction page, `{txid}` standing for the transaction id (alerts link to it)
    explorer_tx_url: str | None = None
    # TRON: a TronGrid-compatible provider's key, sent as the TRON-PRO-API-KEY header to rpc_urls only
    api_key: Secret | None = None
    # TRON: TRC-10 tokens to name (others are still reported, under their id with 0 decimals)
    trc10: list[Trc10Config] = []
    # TRON: internal TRX transfers need a node with vm.saveInternalTx; "auto" looks at recent blocks
    internal: Literal["auto"] | bool = "auto"

    @model_validator(mode="before")
    @classmethod
    def _tron_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "tron":
            data = {**_TRON_DEFAULTS, **data}
            if "tokens" not in data and data.get("network", "mainnet") == "mainnet":
                data["tokens"] = [TRON_USDT]
        return data

    @field_validator("explorer_tx_url")
    @classmethod
    def _explorer(cls, value: str | None) -> str | None:
        if value is not None:
            if value.count("{txid}") != 1:
                raise ValueError("explorer_tx_url must contain {txid} exactly once")
            check_url(value.replace("{txid}", "0"), {"http", "https"})
        return value

    # A standby reports the chain unhealthy when its last commit (by the leader) is older than this;
    # unset: 300 s for EVM, 7200 s for Bitcoin (an hour without a block is rare but happens).
    standby_max_commit_age: Annotated[float, Field(gt=0, le=86_400 * 7)] | None = None

    @field_validator("rpc_urls", "ws_url", "rest_url", "zmq_url", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        for url in value if isinstance(value, list) else [value]:
            if url is None:
                continue
            check_url(str(url), {"http", "https", "ws", "wss", "tcp", "ipc"})
        return value

    @model_validator(mode="after")
    def _per_kind(self) -> ChainConfig:
        tron_only = [key for key in ("api_key", "trc10", "internal") if key in self.model_fields_set]
        if self.kind != "tron" and tron_only:
            raise ValueError(f"{', '.join(tron_only)}: for TRON chains only")
        if self.kind == "bitcoin":
            if self.network not in {"mainnet", "testnet", "signet", "regtest"}:
                raise ValueError(f"network must be mainnet, testnet, signet or regtest, not {self.network!r}")
            if self.tokens:
                raise ValueError("tokens are for EVM and TRON chains")
        elif self.kind == "tron":
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", self.network):
                raise ValueError(f"network must be mainnet, nile, shasta or a lower-case name, not {self.network!r}")
            bad = [t.symbol for t in self.tokens if not t.contract.startswith("T")]
            if bad:
                raise ValueError(f"tokens {', '.join(bad)}: a TRON chain's token contracts are TRON addresses (T...)")
            if self.chain_id is not None or self.ws_url or self.rest_url or self.zmq_url or self.rpc_user:
                raise ValueError("chain_id, ws_url, rest_url, zmq_url and rpc_user are not keys of a TRON chain")
            ids = [t.id for t in self.trc10]
            if len(set(ids)) != len(ids):
                raise ValueError("trc10: a token id is listed twice")
        else:
            if self.chain_id is None:
                raise ValueError("chain_id is required for an EVM chain")
            bad = [t.symbol for t in self.tokens if not t.contract.startswith("0x")]
            if bad:
                raise ValueError(f"tokens {', '.join(bad)}: an EVM chain's token contracts are 0x addresses")
        return self

    @property
    def max_commit_age(self) -> float:
        """Seconds since the chain's last commit after which a standby calls the chain unhealthy."""
        if self.standby_max_commit_age is not None:
            return self.standby_max_commit_age
        return 7200.0 if self.kind == "bitcoin" else 300.0

    @property
    def native_asset_symbol(self) -> str:
        """BTC for Bitcoin, TRX for TRON, ETH unless configured for an EVM chain."""
        return self.native_symbol or {"bitcoin": "BTC", "tron": "TRX"}.get(self.kind, "ETH")

    @property
    def native_asset_decimals(self) -> int:
        """8 for Bitcoin, 6 for TRON, 18 unless configured for an EVM chain."""
        if self.native_decimals is not None:
            return self.native_decimals
        return {"bitcoin": 8, "tron": 6}.get(self.kind, 18)
