"""The MQTT uplink: forwards the outbox to the broker and receives commands.

One connection at a time, reconnected with jittered, capped backoff for as long as the
node runs (a broker outage is normal operation, not a component failure: the outbox keeps
everything meanwhile). The loss of the connection is logged once, and so is its return.

On connect the node publishes its retained birth status (``online``); the broker publishes
the retained last will (``offline``) if the node vanishes, and an orderly stop publishes
``offline`` itself. Messages go out with QoS 1 through a bounded in-flight window; a
message leaves the outbox only once its PUBACK has arrived.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
import traceback
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import gateway
from gateway.commands import CommandError, CommandRouter, Reply, parse_json
from gateway.config import MqttSection
from gateway.kernel.backoff import backoff
from gateway.kernel.cancel import raise_if_cancelling
from gateway.kernel.component import Ready
from gateway.kernel.records import iso_time, new_id, utcnow
from gateway.nodestate import MAX_REPORTED, Readiness
from gateway.outbox import Message, Outbox

logger = logging.getLogger(__name__)

MAX_PENDING = 64  # commands waiting to run; more at once are answered busy


class _PackedProperties(Properties):
    """A PUBLISH's properties packed once: paho packs them again on every publish."""

    def __init__(self, content_type: str) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.ContentType = content_type
        object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


class Topics:
    """The node's topic names (contract in docs/mqtt-api.md)."""

    def __init__(self, prefix: str, node: str, groups: list[str]) -> None:
        self.root = f"{prefix}/{node}"
        self.status = f"{self.root}/status"
        self.commands = [f"{self.root}/cmd/+"] + [f"{prefix}/fleet/{g}/cmd/+" for g in groups]
        self._prefix = prefix
        self._node = node

    def of(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def reply(self, command: str) -> str:
        return f"{self.root}/replies/{command}"

    def reply_problem(self, topic: str, allowed: list[str]) -> str | None:
        """Why the node must not publish a reply on `topic`, or None.

        A sender chooses its reply topic; the node still publishes only where a reply
        belongs: no wildcards, nothing under the cityneuron prefix but its own replies and
        operators' inboxes (``{prefix}/operators/``; never another node's commands or
        status), and under `allowed` when set."""
        if not topic or len(topic.encode()) > 512:
            return "the reply topic must be 1 to 512 bytes"
        if any(c in topic for c in "+#\0") or topic.startswith("$"):
            return f"the reply topic {topic!r} has a wildcard or is a system topic"
        own = (f"{self.root}/replies/", f"{self._prefix}/operators/")
        if topic.startswith(f"{self._prefix}/") and not topic.startswith(own):
            return (
                f"replies go under {own[0]}, {own[1]} or outside {self._prefix}/, not to {topic!r}"
            )
        if allowed and not topic.startswith(own) and not any(topic.startswith(a) for a in allowed):
            return f"the reply topic {topic!r} is not under mqtt.reply_prefixes"
        return None

    def command_name(self, topic: str) -> str | None:
        """The command name if `topic` is one of this node's command topics."""
        parts = topic.split("/")
        if len(parts) >= 2 and parts[-2] == "cmd":
            return parts[-1]
        return None


class Uplink:
    """Component that keeps the broker connection and drains the outbox into it."""

    name = "uplink"

    def __init__(
        self,
        config: MqttSection,
        *,
        node: str,
        groups: list[str],
        outbox: Outbox,
        commands: CommandRouter | None = None,
        state: Readiness | None = None,
    ) -> None:
        self.config = config
        self.node = node
        self.outbox = outbox
        self.commands = commands or CommandRouter()
        self.state = state
        self.topics = Topics(config.topic_prefix, node, groups)
        self.v5 = config.protocol == "5"
        # longest wait for a PUBACK (or any answer of the broker) before reconnecting
        self.ack_timeout = max(10.0, config.keepalive)
        self.connected = asyncio.Event()
        self.connects = 0
        self.published = 0
        self.commands_busy = 0  # commands answered busy: the intake was full
        self._inflight: dict[int, Message] = {}
        self._sent_at: dict[int, float] = {}  # seq -> when its PUBLISH went out
        self._slot_free = asyncio.Event()
        self._down_since: float | None = None
        self._attempts = 0

    @property
    def inflight(self) -> int:
        """Messages published and awaiting their PUBACK."""
        return len(self._inflight)

    # --- connection --------------------------------------------------------------------

    async def run(self, ready: Ready) -> None:
        ready()
        tls = await asyncio.to_thread(self._tls_context) if self.config.tls.enabled else None
        while True:
            try:
                await self._session(tls)
            except* (aiomqtt.MqttError, OSError) as group:
                self._lost(_first_leaf(group))
                _release_frames(group)
            self._attempts += 1
            await asyncio.sleep(
                backoff(self._attempts, first=1.5, factor=1.5, cap=self.config.reconnect_max)
            )

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if not tls.verify:
            logger.warning("TLS verification of the broker is disabled (tls.verify: false)")
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _status(self, state: str) -> bytes:
        body: dict[str, Any] = {
            "id": new_id(),
            "node": self.node,
            "state": state,
            "version": gateway.__version__,
            "ts": iso_time(utcnow()),
        }
        if state == "online" and self.state is not None:
            failing = self.state.failing()
            body["degraded"] = bool(failing)
            body["failing"] = [c.to_dict() for c in failing[:MAX_REPORTED]]
        return json.dumps(body, separators=(",", ":")).encode()

    def _client(self, tls: ssl.SSLContext | None) -> aiomqtt.Client:
        cfg = self.config
        password = cfg.password.get_secret_value() if cfg.password else None
        client = aiomqtt.Client(
            cfg.host,
            cfg.effective_port,
            identifier=cfg.client_id or self.node,
            protocol=aiomqtt.ProtocolVersion.V5 if self.v5 else aiomqtt.ProtocolVersion.V311,
            username=cfg.username,
            password=password,
            keepalive=cfg.keepalive,
            will=aiomqtt.Will(self.topics.status, self._status("offline"), qos=1, retain=True),
            tls_context=tls,
            max_inflight_messages=cfg.max_inflight,
            # the queue between paho and the command intake; the intake itself is bounded
            max_queued_incoming_messages=1000,
            timeout=self.ack_timeout,
            properties=self._connect_properties(),
        )
        # the window is bounded here (max_inflight, the send loop's semaphore); replies,
        # status and the busy answers of the command intake come on top of it
        client.pending_calls_threshold = cfg.max_inflight + MAX_PENDING + 8
        return client

    def _connect_properties(self) -> Properties | None:
        if not self.v5:
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # the broker never sends the node a packet larger than this (MQTT 5): an oversized
        # command is dropped at the broker, not buffered here (room for topic, properties)
        props.MaximumPacketSize = self.config.max_command_bytes + 64 * 1024
        return props

    async def _session(self, tls: ssl.SSLContext | None) -> None:
        async with self._client(tls) as client:
            try:
                await client.publish(self.topics.status, self._status("online"), qos=1, retain=True)
                for topic in self.topics.commands:
                    await client.subscribe(topic, qos=1)
                raise_if_cancelling()  # aiomqtt's wait_for may have swallowed a stop
                self._up()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._send_loop(client, tg), name="uplink.send")
                    tg.create_task(self._ack_watchdog(), name="uplink.acks")
                    if self.state is not None:
                        tg.create_task(self._status_loop(client), name="uplink.status")
                    # the body itself must wait: on Python 3.11 a TaskGroup whose child
                    # fails while the body is already leaving never clears the
                    # cancellation it requested, and this task would later look cancelled
                    await self._command_loop(client)
            except asyncio.CancelledError:
                await self._goodbye(client)
                raise
            except BaseException as exc:
                # leaving the client's context sends a clean DISCONNECT, which suppresses
                # the will: on anything but a lost link, say offline ourselves first
                if not _network_only(exc):
                    logger.warning("uplink failed (%r); publishing offline status", exc)
                    await self._goodbye(client)
                raise
            finally:
                self.connected.clear()
                self.outbox.release(self._inflight.values())
                self._inflight.clear()
                self._sent_at.clear()

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        """Publish the retained status again whenever a component starts or stops failing."""
        assert self.state is not None
        while True:
            await self.state.wait_changed()
            await client.publish(self.topics.status, self._status("online"), qos=1, retain=True)

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Orderly stop: say offline ourselves (the will is only sent on a lost link)."""
        try:
            async with asyncio.timeout(2.0):
                await client.publish(
                    self.topics.status, self._status("offline"), qos=1, retain=True
                )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            logger.debug("could not publish offline status: %r", exc)

    def _up(self) -> None:
        self.connects += 1
        self.connected.set()
        if self._down_since is None:
            logger.info(
                "connected to broker %s:%d as %s",
                self.config.host,
                self.config.effective_port,
                self.config.client_id or self.node,
            )
        else:
            logger.info(
                "reconnected to broker after %.1fs (%d attempt(s)); %d message(s) waiting",
                time.monotonic() - self._down_since,
                self._attempts,
                self.outbox.stats.messages,
            )
        self._down_since = None
        self._attempts = 0

    def _lost(self, exc: BaseException) -> None:
        self.connected.clear()
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(
                "broker %s:%d unreachable (%s); retrying with backoff, the outbox keeps data",
                self.config.host,
                self.config.effective_port,
                exc,
            )
        else:
            logger.debug("reconnect attempt %d failed: %s", self._attempts, exc)

    # --- sending -----------------------------------------------------------------------

    def _properties(self, content_type: str = "application/json") -> Properties | None:
        return _PackedProperties(content_type) if self.v5 else None

    async def _send_loop(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        window = self.config.max_inflight
        props = self._properties()
        raw_props = self._properties("image/jpeg")
        while True:
            while len(self._inflight) >= window:
                self._slot_free.clear()
                await self._slot_free.wait()
            msgs = await self.outbox.next_messages(window - len(self._inflight))
            now = time.monotonic()
            for msg in msgs:
                self._inflight[msg.seq] = msg
                self._sent_at[msg.seq] = now
                # tasks start in creation order, so the broker sees messages in order
                tg.create_task(
                    self._publish(client, msg, raw_props if msg.raw else props),
                    name=f"uplink.publish[{msg.seq}]",
                )

    async def _publish(
        self, client: aiomqtt.Client, msg: Message, props: Properties | None
    ) -> None:
        # no timeout per message (a timer and a task each): _ack_watchdog watches them all
        await client.publish(
            self.topics.of(msg.topic), msg.payload(), qos=1, properties=props, timeout=math.inf
        )
        self._inflight.pop(msg.seq, None)
        self._sent_at.pop(msg.seq, None)
        self.outbox.ack(msg)
        self.published += 1
        self._slot_free.set()

    async def _ack_watchdog(self) -> None:
        """End the session when a PUBACK is overdue: a broker that takes messages and never
        acknowledges them holds the window; a new connection sends them again."""
        while True:
            limit = self.ack_timeout
            await asyncio.sleep(min(1.0, limit / 4))
            oldest = next(iter(self._sent_at.items()), None)  # sent in seq order
            if oldest is not None and time.monotonic() - oldest[1] > limit:
                raise aiomqtt.MqttError(
                    f"no PUBACK for message {oldest[0]} within {limit:g}s; reconnecting"
                )

    # --- commands ----------------------------------------------------------------------

    async def _command_loop(self, client: aiomqtt.Client) -> None:
        """Take commands off the connection as fast as they come; run them one by one.

        At most `MAX_PENDING` wait: beyond that a command is answered `busy` (QoS 0, so the
        answer costs no round trip) and counted, never dropped silently."""
        pending: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(MAX_PENDING)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._run_commands(client, pending), name="uplink.commands")
            async for message in client.messages:
                if self.topics.command_name(str(message.topic)) is None:
                    continue
                try:
                    pending.put_nowait(message)
                except asyncio.QueueFull:
                    await self._busy(client, message)

    async def _busy(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        self.commands_busy += 1
        if self.commands_busy == 1 or self.commands_busy % 1000 == 0:
            logger.warning(
                "command intake full (%d waiting): %d command(s) answered busy so far",
                MAX_PENDING,
                self.commands_busy,
            )
        name = self.topics.command_name(str(message.topic)) or "?"
        reply = Reply(
            name, None, ok=False, error_code="busy", error="too many commands at once; retry"
        )
        await self._reply(client, self._reply_target(message, _payload(message)), reply, qos=0)

    async def _run_commands(
        self, client: aiomqtt.Client, pending: asyncio.Queue[aiomqtt.Message]
    ) -> None:
        while True:
            message = await pending.get()
            name = self.topics.command_name(str(message.topic)) or "?"
            payload = _payload(message)
            target = self._reply_target(message, payload)
            if target.problem is not None:
                self.commands.refused += 1
                logger.warning("command %s refused: %s", name, target.problem)
                reply = Reply(
                    name, None, ok=False, error_code="bad_reply_topic", error=target.problem
                )
            else:
                reply = await self.commands.handle(name, payload, topic=str(message.topic))
            await self._reply(client, target, reply)

    def _reply_target(self, message: aiomqtt.Message, payload: bytes) -> _ReplyTarget:
        """Where the reply to `message` goes (the default topic, when the one it names is
        refused, with the reason)."""
        name = self.topics.command_name(str(message.topic)) or "?"
        default = self.topics.reply(name)
        extra: dict[str, Any] = {}
        props: Properties | None = None
        in_props = message.properties
        response_topic = getattr(in_props, "ResponseTopic", None) if self.v5 else None
        topic: str | None = None
        if isinstance(response_topic, str) and response_topic:
            topic = response_topic
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = "application/json"
            correlation = getattr(in_props, "CorrelationData", None)
            if correlation is not None:
                props.CorrelationData = correlation
        else:
            # MQTT 3.1.1 clients name their reply topic and correlation in the payload
            fields = _json_fields(payload, self.commands.max_bytes)
            if isinstance(fields.get("reply_to"), str) and fields["reply_to"]:
                topic = fields["reply_to"]
            if "correlation_id" in fields:
                extra["correlation_id"] = fields["correlation_id"]
        if topic is None:
            return _ReplyTarget(default, props, None, extra)
        problem = self.topics.reply_problem(topic, self.config.reply_prefixes)
        if problem is not None:
            return _ReplyTarget(default, None, problem, extra)
        return _ReplyTarget(topic, props, None, extra)

    async def _reply(
        self, client: aiomqtt.Client, target: _ReplyTarget, reply: Reply, *, qos: int = 1
    ) -> None:
        body = {**reply.to_dict(self.node), **target.extra}
        await client.publish(
            target.topic, json.dumps(body, separators=(",", ":")), qos=qos, properties=target.props
        )


@dataclass(frozen=True, slots=True)
class _ReplyTarget:
    topic: str
    props: Properties | None
    problem: str | None  # why the topic the command named is refused
    extra: dict[str, Any]  # fields for the reply's body (MQTT 3.1.1 correlation)


def _release_frames(exc: BaseException) -> None:
    """Drop the local variables held by a failed attempt's tracebacks.

    paho-mqtt leaves the socket of a failed TLS handshake in a local variable; until the
    traceback that holds it is gone, so is the file descriptor. Retrying for hours with
    a bad certificate must not pile up sockets waiting for the garbage collector.
    """
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if e.__traceback__ is not None:
            traceback.clear_frames(e.__traceback__)
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)


def _first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) groups: what the log names as the cause."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _network_only(exc: BaseException) -> bool:
    """Whether `exc` (or every exception in its group) is the link going away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_network_only(e) for e in exc.exceptions)
    return isinstance(exc, aiomqtt.MqttError | OSError)


def _payload(message: aiomqtt.Message) -> bytes:
    if isinstance(message.payload, bytes):
        return message.payload
    return str(message.payload).encode()


def _json_fields(payload: bytes, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        return {}
    try:
        body = parse_json(payload)
    except CommandError:
        return {}
    return body if isinstance(body, dict) else {}
