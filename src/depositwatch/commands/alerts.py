"""`depositwatch alerts ...`: list, show, redeliver, test and deliver the alert outbox."""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any

import structlog

from depositwatch.alerts.dispatcher import Dispatcher
from depositwatch.alerts.factory import dispatcher_for, reload_sinks, sinks_for
from depositwatch.alerts.format import test_alert_body
from depositwatch.alerts.sinks import AlertSink
from depositwatch.api.records import alert_record
from depositwatch.commands import CommandError, add_store_option, err, load, out, store_from
from depositwatch.config import Config, ConfigError, SinkConfig, load_config
from depositwatch.jsonutil import dumps, loads
from depositwatch.leadership import AlreadyRunning, take_dispatcher
from depositwatch.messages import OutboxMessage
from depositwatch.models import MatchKind
from depositwatch.store import SqlStore
from depositwatch.timeutil import iso

log = structlog.get_logger("depositwatch.alerts")

STATUSES = ["new", "pending", "delivered", "dead", "unrouted"]
KINDS = [str(k) for k in MatchKind] + ["test"]
COLUMNS = ["seq", "alert id", "rev", "event", "kind", "severity", "chain", "status", "created"]


def register(sub: Any) -> None:
    """Add the `alerts` group."""
    group = sub.add_parser("alerts", help="the alert outbox: list, show, redeliver, test, deliver")
    commands = group.add_subparsers(dest="alerts_command", required=True)

    listing = commands.add_parser("list", help="outbox messages, newest first")
    listing.add_argument("--status", choices=STATUSES, help="only messages in this state")
    listing.add_argument("--kind", choices=KINDS, help="only this kind (a retraction counts as its original kind)")
    listing.add_argument("--limit", type=_positive, default=50, help="at most N messages (default 50)")
    listing.add_argument("--json", action="store_true", help="a JSON array, with bodies and deliveries")
    add_store_option(listing)
    listing.set_defaults(handler=_list)

    show = commands.add_parser("show", help="every message of an alert id (or one outbox seq), per sink")
    show.add_argument("id", help="an alert id, or an outbox sequence number")
    show.add_argument("--json", action="store_true", help="as JSON")
    add_store_option(show)
    show.set_defaults(handler=_show)

    redeliver = commands.add_parser("redeliver", help="put dead deliveries back in line")
    redeliver.add_argument("seq", nargs="*", metavar="ID", help="outbox sequence numbers or alert ids")
    redeliver.add_argument("--dead", action="store_true", help="every dead delivery")
    redeliver.add_argument(
        "--force",
        action="store_true",
        help="also resend delivered messages (a receiver lost them), under the same idempotency key",
    )
    add_store_option(redeliver)
    redeliver.set_defaults(handler=_redeliver)

    test = commands.add_parser("test", help="send a clearly marked test alert through one sink now")
    test.add_argument("--sink", required=True, help="a sink name from the config")
    add_store_option(test)
    test.set_defaults(handler=_test)

    deliver = commands.add_parser("deliver", help="run the dispatcher alone (until SIGINT/SIGTERM)")
    deliver.add_argument(
        "--until-empty", action="store_true", help="exit once every message is delivered or dead (exit 0)"
    )
    deliver.add_argument(
        "--timeout", type=float, default=None, help="with --until-empty: give up after SECONDS (exit 1)"
    )
    add_store_option(deliver)
    deliver.set_defaults(handler=_deliver)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


# list and show --------------------------------------------------------------------------------------


def _row(message: OutboxMessage) -> list[str]:
    return [
        str(message.seq),
        message.alert_id,
        str(message.rev),
        message.event,
        message.kind,
        message.severity,
        message.chain,
        message.status,
        iso(message.created_at) or "",
    ]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in [header, *rows]]


async def _list(args: argparse.Namespace) -> int:
    store = await store_from(args)
    try:
        messages = await store.outbox.messages(status=args.status, kind=args.kind, limit=args.limit)
        if args.json:
            records = [alert_record(m, await store.outbox.deliveries(m.seq)) for m in messages]
            out(dumps(records, indent=True))
            return 0
    finally:
        await store.close()
    if not messages:
        err("no messages")
        return 0
    for line in table(COLUMNS, [_row(m) for m in messages]):
        out(line)
    return 0


async def _show(args: argparse.Namespace) -> int:
    store = await store_from(args)
    try:
        messages = await store.outbox.find(args.id)
        found = [(m, await store.outbox.deliveries(m.seq)) for m in messages]
    finally:
        await store.close()
    if not found:
        err(f"no outbox message with alert id or seq {args.id!r}")
        return 1
    if args.json:
        out(dumps([alert_record(m, d) for m, d in found], indent=True))
        return 0
    for index, (message, deliveries) in enumerate(found):
        if index:
            out("")
        out(
            f"seq {message.seq}  alert {message.alert_id}  rev {message.rev}  {message.event}  {message.kind}"
            f"  {message.severity}  {message.chain}  {message.status}  created {iso(message.created_at)}"
        )
        out(f"idempotency key {message.idempotency_key}")
        if deliveries:
            rows = [
                [
                    d.sink,
                    d.status,
                    str(d.attempts),
                    (iso(d.next_attempt_at) or "") if d.status == "pending" else "-",
                    iso(d.delivered_at) or "-",
                    d.last_error or "-",
                ]
                for d in deliveries
            ]
            for line in table(["sink", "status", "attempts", "next attempt", "delivered", "last error"], rows):
                out("  " + line)
        else:
            out("  not routed to any sink yet" if message.status == "new" else "  no sink wanted it")
        out("  body:")
        for line in dumps(loads(message.payload), indent=True).splitlines():
            out("    " + line)
    return 0


# redeliver ------------------------------------------------------------------------------------------


async def _redeliver(args: argparse.Namespace) -> int:
    if bool(args.seq) == bool(args.dead):
        raise CommandError("name outbox sequence numbers, or --dead for every dead delivery (not both)")
    if args.force and args.dead:
        raise CommandError("--force resends named messages only: give their sequence numbers or alert ids")
    store = await store_from(args)
    try:
        seqs: list[int] | None = None
        if not args.dead:
            seqs, missing = [], []
            for name in args.seq:
                found = await store.outbox.find(name)
                seqs += [m.seq for m in found]
                if not found:
                    missing.append(name)
            if missing:
                err(f"no outbox message with alert id or seq {', '.join(map(repr, missing))}; nothing was redelivered")
                return 1
        count = await store.outbox.redeliver(seqs, time.time(), force=args.force)
    finally:
        await store.close()
    what = "dead or delivered" if args.force else "dead"
    if count:
        out(f"{count} {what} deliver{'y' if count == 1 else 'ies'} back in line; a running dispatcher sends them now")
    else:
        out(f"nothing to redeliver: no {what} delivery" + ("" if args.dead else " among those messages"))
    return 0


# test -----------------------------------------------------------------------------------------------


def _sink_config(config: Config, name: str) -> SinkConfig:
    for sink in config.sinks:
        if sink.name == name:
            return sink
    known = ", ".join(s.name for s in config.sinks) or "none"
    raise CommandError(f"no sink named {name!r} in the config (configured: {known})")


async def _test(args: argparse.Namespace) -> int:
    config = load(args)
    [sink] = sinks_for(config, [_sink_config(config, args.sink).name])
    store = await store_from(args, config)
    dispatcher = dispatcher_for(config, store.outbox, sinks=[sink])
    try:
        message = await store.outbox.enqueue_test_alert(test_alert_body(sink.name), sink.name)
        attempt = await dispatcher.deliver_now(message, sink.name, final=True)
    finally:
        await dispatcher.stop(0)
        await store.close()
    if attempt.ok:
        out(f"test alert {message.alert_id} (seq {message.seq}) delivered to {sink.name}")
        return 0
    err(f"test alert {message.alert_id} (seq {message.seq}) to {sink.name} failed: {attempt.error}")
    err(f"it is kept as dead; after fixing the sink, `depositwatch alerts redeliver {message.seq}` sends it again")
    return 1


# deliver --------------------------------------------------------------------------------------------


def _sinks(config: Config) -> list[AlertSink]:
    if not config.sinks:
        raise CommandError("no sinks are configured: add [[sinks]] sections to the config")
    return sinks_for(config)


async def _deliver(args: argparse.Namespace) -> int:
    config = load(args)
    sinks = _sinks(config)
    store = await store_from(args, config)
    try:
        password = config.store.password.resolve().get_secret_value() if config.store.password else None
        leases = await take_dispatcher(store, password, config.ha.lease_ttl)
    except AlreadyRunning as exc:
        await store.close()
        raise CommandError(str(exc)) from None
    dispatcher = dispatcher_for(config, leases.outbox, sinks=sinks)
    try:
        if args.until_empty:
            return await _until_empty(args, store, dispatcher)
        await _until_signalled(args, dispatcher, config)
        return 0
    finally:
        await dispatcher.stop(config.alerts.shutdown_grace)
        await leases.release_all()
        await store.close()


async def _until_empty(args: argparse.Namespace, store: SqlStore, dispatcher: Dispatcher) -> int:
    settled = await dispatcher.drain(args.timeout)
    counts = await store.outbox.counts()
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "empty"
    if settled:
        out(f"outbox settled: {summary}")
        return 0
    err(f"gave up after {args.timeout:g} s with messages still pending: {summary}")
    return 1


async def _until_signalled(args: argparse.Namespace, dispatcher: Dispatcher, config: Config) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def reload() -> None:
        try:
            if not load_config(args.config).sinks:
                raise CommandError("no sinks are configured: add [[sinks]] sections to the config")
            reload_sinks(dispatcher, args.config)
        except (ConfigError, CommandError) as exc:
            log.error("reload failed; keeping the current sinks", error=str(exc))

    signals = {signal.SIGINT: stopping.set, signal.SIGTERM: stopping.set, signal.SIGHUP: reload}
    for signum, handler in signals.items():
        loop.add_signal_handler(signum, handler)
    runner = asyncio.create_task(dispatcher.run(), name="dispatcher")
    waiter = asyncio.create_task(stopping.wait())
    try:
        done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if runner in done:
            runner.result()  # it only ends by itself on a bug: let it be seen
        log.info("stopping: finishing deliveries under way", grace=config.alerts.shutdown_grace)
        await dispatcher.stop(config.alerts.shutdown_grace)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        for task in (runner, waiter):
            task.cancel()
        await asyncio.gather(runner, waiter, return_exceptions=True)
