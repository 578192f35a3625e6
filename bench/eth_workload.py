"""A generated anvil chain for the Ethereum benchmarks: saved once with --dump-state, reused with --load-state.

    python bench/eth_workload.py                  # generate bench/out/eth-workload/ unless it is current
    python bench/eth_workload.py --blocks 500 --force

The chain: three TestTokens (USDT and USDC with 6 decimals, which the benchmarks follow, and OTHER, which
they do not), then `--blocks` packed blocks (`--no-mining`, every block mined with `evm_mine` and its
transaction count checked). Each block holds, by default:

- 10 plain ETH sends from ten dev accounts;
- one `transferMany` of USDT and one of USDC (8 recipients each: 16 Transfer logs), one of OTHER (4);
- 2 sweeps: revoked addresses (impersonated, funded at set-up) sending ETH and USDT onwards;
- every 50th block, a `failingTransfer` of USDT to a watched address (reverted: its log is never seen).

That is 15 transactions and 32 transfers of the followed assets a block. Recipients are drawn from
`--population` addresses; `--watched` of them are watched (the import CSV `watch.csv`, `--revoked` of
them revoked at 2020-01-01, the sweepers among them), and `watch-small.csv` holds `--small` of the
watched addresses for the node-side log filter measurement.

Everything is deterministic for a given set of parameters; `meta.json` records them with the token
contracts and the block range, so a second call with the same parameters only checks the files.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/eth_workload.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from depositwatch.devnet import (
    Anvil,
    deploy_token,
    failing_transfer,
    impersonate,
    mine,
    mint_token,
    rpc,
    send_eth,
    send_token,
    send_token_many,
    set_balance,
)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "eth-workload"
CHAIN_ID = 31337
CHAIN = "eth"
REVOKED_AT = "2020-01-01T00:00:00Z"
FORMAT = 3  # bump when the chain's shape changes


@dataclass(frozen=True)
class Params:
    """What the chain is made of."""

    blocks: int = 3000
    eth_per_block: int = 10
    token_recipients: int = 8  # per transferMany of USDT and of USDC
    other_recipients: int = 4
    sweeps_per_block: int = 2
    population: int = 50_000
    watched: int = 5_000
    revoked: int = 500
    sweepers: int = 100
    small: int = 20
    seed: int = 20240501
    format: int = FORMAT


@dataclass(frozen=True)
class Workload:
    """A generated chain on disk."""

    folder: Path
    params: Params
    tokens: dict[str, str]  # symbol -> checksummed contract (USDT, USDC, OTHER)
    first: int  # first block of the generated range
    last: int  # the tip
    txs: int
    transfers: int  # ETH and USDT/USDC transfers in the range (OTHER left out)

    @property
    def state(self) -> Path:
        return self.folder / "state.json"

    @property
    def watch_csv(self) -> Path:
        return self.folder / "watch.csv"

    @property
    def small_csv(self) -> Path:
        return self.folder / "watch-small.csv"

    def token_args(self) -> list[str]:
        """`--token SYMBOL:CONTRACT:6` options of the followed tokens."""
        out = []
        for symbol in ("USDT", "USDC"):
            out += ["--token", f"{symbol}:{self.tokens[symbol]}:6"]
        return out

    def node(self, **kwargs: Any) -> Anvil:
        """An anvil serving this chain (`--load-state`)."""
        return Anvil(chain_id=CHAIN_ID, load_state=self.state, accounts=16, **kwargs)


def address(seed: int, i: int) -> str:
    """The i-th address of the population (deterministic, lower-case hex)."""
    return "0x" + hashlib.sha256(f"{seed}:{i}".encode()).digest()[:20].hex()


def population(params: Params) -> tuple[list[str], list[str], set[str], list[str]]:
    """(every address, watched addresses, the revoked among them, the sweepers) for these parameters."""
    rng = random.Random(params.seed)
    everyone = [address(params.seed, i) for i in range(params.population)]
    watched = rng.sample(everyone, params.watched)
    revoked = watched[: params.revoked]
    sweepers = revoked[: params.sweepers]
    return everyone, watched, set(revoked), sweepers


def write_csv(path: Path, addresses: list[str], revoked: set[str]) -> None:
    lines = ["chain,address,status,label,owner,revoked_at,reason"]
    for n, addr in enumerate(addresses):
        if addr in revoked:
            lines.append(f"{CHAIN},{addr},revoked,hot-{n},cust-{n % 997},{REVOKED_AT},bench")
        else:
            lines.append(f"{CHAIN},{addr},active,dep-{n},cust-{n % 997},,")
    path.write_text("\n".join(lines) + "\n")


def load(folder: Path = OUT) -> Workload | None:
    """The workload saved in `folder`, or None when there is none (or it is incomplete)."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    workload = Workload(
        folder=folder,
        params=Params(**meta["params"]),
        tokens=meta["tokens"],
        first=meta["first"],
        last=meta["last"],
        txs=meta["txs"],
        transfers=meta["transfers"],
    )
    if not (workload.state.is_file() and workload.watch_csv.is_file() and workload.small_csv.is_file()):
        return None
    return workload


def ensure(params: Params, folder: Path = OUT, *, force: bool = False, quiet: bool = False) -> Workload:
    """The workload for `params`: the saved one when it matches, else a freshly generated one."""
    found = None if force else load(folder)
    if found is not None and found.params == params:
        return found
    return asyncio.run(generate(params, folder, quiet=quiet))


async def generate(params: Params, folder: Path = OUT, *, quiet: bool = False) -> Workload:
    """Build the chain on a fresh anvil and save it (state, CSVs, meta.json) under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("meta.json", "state.json"):
        (folder / name).unlink(missing_ok=True)
    everyone, watched, revoked, sweepers = population(params)
    write_csv(folder / "watch.csv", watched, revoked)
    rng = random.Random(params.seed + 1)
    small = [*sweepers[:5], *rng.sample(watched[params.revoked :], params.small - 5)]
    write_csv(folder / "watch-small.csv", small, revoked)
    began = time.perf_counter()
    state = folder / "state.json"
    partial = folder / "state.partial.json"
    partial.unlink(missing_ok=True)
    # --prune-history: without it anvil writes every old block's full state to disk, which grows with the
    # state and makes generation quadratic; blocks, receipts and logs are kept (and dumped) either way.
    async with Anvil(
        chain_id=CHAIN_ID,
        no_mining=True,
        accounts=16,
        balance_eth=10**7,
        dump_state=partial,
        extra_args=["--prune-history"],
    ) as node:
        w3 = node.w3
        dev = [a.address for a in node.accounts]
        tokens = {
            symbol: await deploy_token(w3, dev[0], symbol, decimals)
            for symbol, decimals in (("USDT", 6), ("USDC", 6), ("OTHER", 18))
        }
        # Balances: the token senders and every sweeper get tokens and gas money.
        mints = [
            mint_token(w3, tokens["USDT"], dev[10], dev[10], 10**18),
            mint_token(w3, tokens["USDC"], dev[11], dev[11], 10**18),
            mint_token(w3, tokens["OTHER"], dev[12], dev[12], 10**30),
            mint_token(w3, tokens["USDT"], dev[13], dev[13], 10**18),
        ]
        for tx in mints:
            await tx
        await mine(w3)
        for n, sweeper in enumerate(sweepers):
            await set_balance(w3, sweeper, 10**21)
            await impersonate(w3, sweeper)
            await mint_token(w3, tokens["USDT"], dev[14], sweeper, 10**15)
            if n % 20 == 19:
                await mine(w3)
        await mine(w3)
        first = await node.block_number() + 1
        txs = transfers = 0
        turn = 0
        for b in range(params.blocks):
            sends = []
            for i in range(params.eth_per_block):
                to = rng.choice(everyone)
                sends.append(send_eth(w3, dev[i], to, rng.randrange(1, 10**16), gas=21_000))
            for symbol, sender, count in (
                ("USDT", dev[10], params.token_recipients),
                ("USDC", dev[11], params.token_recipients),
                ("OTHER", dev[12], params.other_recipients),
            ):
                recipients = rng.sample(everyone, count)
                amounts = [rng.randrange(1, 10**10) for _ in recipients]
                sends.append(send_token_many(w3, tokens[symbol], sender, recipients, amounts))
            for s in range(params.sweeps_per_block):
                sweeper = sweepers[turn % len(sweepers)]
                turn += 1
                to = rng.choice(everyone)
                if s % 2 == 0:
                    sends.append(send_eth(w3, sweeper, to, rng.randrange(1, 10**15), gas=21_000))
                else:
                    sends.append(send_token(w3, tokens["USDT"], sweeper, to, rng.randrange(1, 10**6)))
            if b % 50 == 49:
                sends.append(failing_transfer(w3, tokens["USDT"], dev[13], rng.choice(watched), 12345))
            await asyncio.gather(*sends)
            await rpc(w3, "evm_mine")
            height = first + b
            count = int(await rpc(w3, "eth_getBlockTransactionCountByNumber", hex(height)), 16)
            if count != len(sends):
                raise SystemExit(f"block {height} holds {count} transactions, {len(sends)} were sent")
            txs += count
            transfers += params.eth_per_block + 2 * params.token_recipients + params.sweeps_per_block
            if not quiet and (b + 1) % 500 == 0:
                rate = (b + 1) / (time.perf_counter() - began)
                print(f"# generated {b + 1}/{params.blocks} blocks ({rate:.0f} blocks/s)", file=sys.stderr)
        last = await node.block_number()
    partial.replace(state)  # the node wrote it on SIGINT at exit
    workload = Workload(folder, params, tokens, first, last, txs, transfers)
    meta = {
        "params": asdict(params),
        "tokens": tokens,
        "first": first,
        "last": last,
        "txs": txs,
        "transfers": transfers,
        "seconds": round(time.perf_counter() - began, 1),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    if not quiet:
        size = state.stat().st_size / 1024 / 1024
        print(
            f"# generated blocks {first}-{last}: {txs:,} transactions, {transfers:,} followed transfers "
            f"in {meta['seconds']} s; state {size:.0f} MB",
            file=sys.stderr,
        )
    return workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Params()
    parser.add_argument("--blocks", type=int, default=defaults.blocks)
    parser.add_argument("--population", type=int, default=defaults.population)
    parser.add_argument("--watched", type=int, default=defaults.watched)
    parser.add_argument("--revoked", type=int, default=defaults.revoked)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--force", action="store_true", help="generate again even if a matching chain is saved")
    args = parser.parse_args()
    params = Params(blocks=args.blocks, population=args.population, watched=args.watched, revoked=args.revoked)
    workload = ensure(params, args.out, force=args.force)
    print(
        json.dumps(
            {
                "folder": str(workload.folder),
                "first": workload.first,
                "last": workload.last,
                "txs": workload.txs,
                "transfers": workload.transfers,
                "tokens": workload.tokens,
            }
        )
    )


if __name__ == "__main__":
    main()
