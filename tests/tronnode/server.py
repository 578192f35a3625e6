"""A java-tron full node's HTTP API for tests, over a `TronChain`, on 127.0.0.1.

The calls a deposit watcher makes, in the node's shapes (java-tron's `http/*Servlet` classes):

- `/wallet/getnowblock`, `/wallet/getblockbynum` (`num`, `visible`), `/wallet/getblockbylimitnext`
  (`startNum`, `endNum` exclusive, at most 100 blocks: `{"block": [...]}`, `{}` when none),
  `/wallet/gettransactioninfobyblocknum` (`num`: a list, `[]` for a block without infos),
  `/walletsolidity/getnowblock` and `/walletsolidity/getblockbynum` (only blocks 19 deep or more);
- GET with query parameters or POST with a JSON body, as the servlets accept both;
- `/wallet/triggerconstantcontract` (`owner_address`, `contract_address`, `function_selector` and
  `parameter`, or `data`), answered from `TronChain.contracts`: `{"result": {"result": true},
  "energy_used", "constant_result": [hex], "transaction"}`; a REVERT keeps that shape with
  `result.message` (hex of "REVERT opcode executed"), the revert data in `constant_result` and the
  transaction's `ret` FAILED; a VM exception is `{"result": {"code": "OTHER_ERROR", "message": hex of
  "class ... : message"}}`; an address without a contract is `CONTRACT_VALIDATE_ERROR`;
- a block above the tip is `{}`; a malformed parameter is HTTP 200 `{"Error": "..."}` (the servlets
  catch the exception and print its class and message);
- with `api_key` set, requests without the `TRON-PRO-API-KEY` header get 401, as TronGrid answers.

Faults for tests: `go_down()` / `come_up()`, `latency`, `calls` counts requests per path.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from .chain import Contract, TronChain, Tx, transaction_json

MAX_RANGE = 100


class TronNodeServer:
    """Serves a `TronChain` over the node's HTTP API."""

    def __init__(self, chain: TronChain | None = None, *, api_key: str | None = None, port: int = 0) -> None:
        self.chain = chain or TronChain()
        self.api_key = api_key
        self.latency = 0.0
        self.calls: Counter[str] = Counter()
        self._port = port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        # serialized blocks by (id, visible): a benchmark's client, not this server, must be the limit
        self._encoded: dict[tuple[str, bool], bytes] = {}

    async def __aenter__(self) -> TronNodeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{api:wallet|walletsolidity}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def go_down(self) -> None:
        """Stop listening (the port stays reserved for `come_up`)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def come_up(self) -> None:
        """Listen again on the same port."""
        await self._listen()

    async def _handle(self, request: web.Request) -> web.Response:
        api, method = request.match_info["api"], request.match_info["method"]
        self.calls[f"/{api}/{method}"] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.api_key is not None and request.headers.get("TRON-PRO-API-KEY") != self.api_key:
            return web.json_response({"Error": "ApiKey not exists"}, status=401)
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST":
            body = await request.read()
            if body.strip():
                try:
                    loaded = json.loads(body)
                except ValueError as exc:
                    return _error(f"com.alibaba.fastjson.JSONException : {exc}")
                if not isinstance(loaded, dict):
                    return _error("com.alibaba.fastjson.JSONException : not an object")
                params.update(loaded)
        try:
            result = self._call(api, method, params)
        except (TypeError, ValueError) as exc:
            return _error(f"java.lang.NumberFormatException : {exc}")
        if result is None:
            return web.Response(status=404, text="Not Found")
        body = result if isinstance(result, bytes) else orjson.dumps(result)
        return web.Response(body=body, content_type="application/json")

    def _block_bytes(self, height: int, *, visible: bool) -> bytes:
        block = self.chain.block(height, visible=False)
        if not block:
            return b"{}"
        key = (block["blockID"], visible)
        encoded = self._encoded.get(key)
        if encoded is None:
            encoded = self._encoded[key] = orjson.dumps(self.chain.block(height, visible=visible))
        return encoded

    def _call(self, api: str, method: str, params: dict[str, Any]) -> Any:
        chain = self.chain
        visible = str(params.get("visible", "false")).lower() == "true"
        top = chain.tip if api == "wallet" else chain.tip - TronChain.SOLIDIFY_DEPTH
        if method == "getnowblock":
            return self._block_bytes(top, visible=visible)
        if method == "getblockbynum":
            num = _number(params.get("num"))
            return self._block_bytes(num, visible=visible) if num <= top else {}
        if method == "getblockbylimitnext" and api == "wallet":
            start, end = _number(params.get("startNum")), _number(params.get("endNum"))
            if end <= start or end - start > MAX_RANGE:
                raise ValueError(f"startNum {start} endNum {end}: at most {MAX_RANGE} blocks")
            blocks = [self._block_bytes(n, visible=visible) for n in range(start, min(end, top + 1))]
            return b'{"block":[' + b",".join(blocks) + b"]}" if blocks else {}
        if method == "triggerconstantcontract":
            return _constant_call(chain.contracts, params)
        if method == "gettransactioninfobyblocknum":
            num = _number(params.get("num"))
            block = chain.block(num)
            if num > top or not block:
                return []
            key = (block["blockID"] + f":infos:{chain.save_internal}", False)
            encoded = self._encoded.get(key)
            if encoded is None:
                encoded = self._encoded[key] = orjson.dumps(chain.infos(num))
            return encoded
        return None


def _message(text: str) -> str:
    """`result.message` as the node prints it with visible=false: the UTF-8 bytes in hex."""
    return text.encode().hex()


def _call_data(params: dict[str, Any]) -> str:
    selector = params.get("function_selector")
    if isinstance(selector, str) and selector:
        from eth_utils.abi import function_signature_to_4byte_selector

        return function_signature_to_4byte_selector(selector).hex() + str(params.get("parameter") or "")
    return str(params.get("data") or "")


def _constant_call(contracts: dict[bytes, Contract], params: dict[str, Any]) -> dict[str, Any]:
    """java-tron's TriggerConstantContractServlet over the test chain's contracts."""
    owner, address = params.get("owner_address"), params.get("contract_address")
    if not owner:
        return {"result": {"code": "OTHER_ERROR", "message": _message("owner_address isn't set.")}}
    raw = bytes.fromhex(str(address or ""))
    contract = contracts.get(raw[1:]) if len(raw) == 21 and raw[0] == 0x41 else None
    if contract is None:
        message = "Contract validate error : Smart contract is not exist."
        return {"result": {"code": "CONTRACT_VALIDATE_ERROR", "message": _message(message)}}
    data = _call_data(params)
    selector = data[:8]
    if selector in contract.fails:
        error = f"class org.tron.core.vm.program.Program$IllegalOperationException : {contract.fails[selector]}"
        return {"result": {"code": "OTHER_ERROR", "message": _message(error)}}
    value = {"owner_address": str(owner), "contract_address": str(address), "data": data}
    transaction = {**transaction_json(Tx(31, value)), "visible": False}
    if selector in contract.returns:
        transaction["ret"] = [{}]
        result: dict[str, Any] = {"result": True}
        returned = contract.returns[selector]
    else:
        transaction["ret"] = [{"ret": "FAILED"}]
        result = {"result": True, "message": _message("REVERT opcode executed")}
        returned = contract.reverts.get(selector, b"")
    return {"result": result, "energy_used": 471, "constant_result": [returned.hex()], "transaction": transaction}


def _number(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"For input string: {value!r}")
    number = int(value)
    if number < 0:
        raise ValueError(f"negative number {number}")
    return number


def _error(message: str) -> web.Response:
    return web.json_response({"Error": message})
