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
import ssl
import time
import traceback
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import gateway
from gateway.commands import CommandRouter, Reply
from gateway.config import MqttSection
from gateway.health import failing_entry
from gateway.kernel.backoff import backoff
from gateway.kernel.cancel import raise_if_cancelling
from gateway.kernel.component import Ready
from gateway.kernel.records import iso_time, new_id, utcnow
from gateway.nodestate import MAX_REPORTED, Readiness
from gateway.outbox import Message, Outbox

logger = logging.getLogger(__name__)


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
        self.connected = asyncio.Event()
        self.connects = 0
        self.published = 0
        self._inflight: dict[int, Message] = {}
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
                self._lost(group.exceptions[0])
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
            body["failing"] = [failing_entry(c) for c in failing[:MAX_REPORTED]]
        return json.dumps(body, separators=(",", ":")).encode()

    def _client(self, tls: ssl.SSLContext | None) -> aiomqtt.Client:
        cfg = self.config
        password = cfg.password.get_secret_value() if cfg.password else None
        return aiomqtt.Client(
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
            max_queued_incoming_messages=100,
            timeout=max(10.0, cfg.keepalive),
        )

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
                    if self.state is not None:
                        tg.create_task(self._status_loop(client), name="uplink.status")
                    # the body itself must wait: on Python 3.11 a TaskGroup whose child
                    # fails while the body is already leaving never clears the
                    # cancellation it requested, and this task would later look cancelled
                    await self._command_loop(client)
            except asyncio.CancelledError:
                await self._goodbye(client)
                raise
            finally:
                self.connected.clear()
                self.outbox.release(self._inflight.values())
                self._inflight.clear()

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
        if not self.v5:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = content_type
        return props

    async def _send_loop(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        window = self.config.max_inflight
        props = self._properties()
        raw_props = self._properties("image/jpeg")
        while True:
            while len(self._inflight) >= window:
                self._slot_free.clear()
                await self._slot_free.wait()
            msgs = await self.outbox.next_messages(window - len(self._inflight))
            for msg in msgs:
                self._inflight[msg.seq] = msg
                # tasks start in creation order, so the broker sees messages in order
                tg.create_task(
                    self._publish(client, msg, raw_props if msg.raw else props),
                    name=f"uplink.publish[{msg.seq}]",
                )

    async def _publish(
        self, client: aiomqtt.Client, msg: Message, props: Properties | None
    ) -> None:
        await client.publish(self.topics.of(msg.topic), msg.payload(), qos=1, properties=props)
        self._inflight.pop(msg.seq, None)
        self.outbox.ack(msg)
        self.published += 1
        self._slot_free.set()

    # --- commands ----------------------------------------------------------------------

    async def _command_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            name = self.topics.command_name(str(message.topic))
            if name is None:
                continue
            payload = (
                message.payload
                if isinstance(message.payload, bytes)
                else str(message.payload).encode()
            )
            reply = await self.commands.handle(name, payload)
            await self._reply(client, message, name, payload, reply)

    async def _reply(
        self,
        client: aiomqtt.Client,
        message: aiomqtt.Message,
        name: str,
        payload: bytes,
        reply: Reply,
    ) -> None:
        body = reply.to_dict(self.node)
        topic = self.topics.reply(name)
        props: Properties | None = None
        in_props = message.properties
        response_topic = getattr(in_props, "ResponseTopic", None) if self.v5 else None
        if isinstance(response_topic, str) and response_topic:
            topic = response_topic
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = "application/json"
            correlation = getattr(in_props, "CorrelationData", None)
            if correlation is not None:
                props.CorrelationData = correlation
        else:
            # MQTT 3.1.1 clients name their reply topic and correlation in the payload
            fields = _json_fields(payload)
            if isinstance(fields.get("reply_to"), str) and fields["reply_to"]:
                topic = fields["reply_to"]
            if "correlation_id" in fields:
                body["correlation_id"] = fields["correlation_id"]
        await client.publish(
            topic, json.dumps(body, separators=(",", ":")), qos=1, properties=props
        )


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


def _json_fields(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return body if isinstance(body, dict) else {}
