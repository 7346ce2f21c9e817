"""``cityneuron cmd sign|send``: the operator's side of signed commands (gateway/authz.py).

`sign` prints a signed command as one JSON object ``{"topic", "payload"}`` (to send later,
or from another machine); `send` signs (or takes such a file) and publishes it, waits for
the replies and prints them, one JSON object per line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.api import DEVICE_ID_PATTERN

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


class UsageError(Exception):
    """Bad operator input: one line for the user, exit status 2."""


def load_key(path: str) -> Ed25519PrivateKey:
    """The operator's private key, or a `UsageError` that says what is wrong with it."""
    from rules.signing import load_private  # noqa: PLC0415

    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the key ({exc.strerror})") from None
    try:
        return load_private(pem)
    except (ValueError, TypeError):
        raise UsageError(
            f"{path}: not an Ed25519 private key in PEM (make one with `cityneuron keys generate`)"
        ) from None


def command_topic(prefix: str, name: str, node: str | None, group: str | None) -> str:
    if not name or set(name) - NAME_CHARS:
        raise UsageError(f"{name!r} is not a command name (letters, digits, '.', '_', '-')")
    target = group or node or ""
    if not re.fullmatch(DEVICE_ID_PATTERN, target):
        what = "group" if group else "node"
        raise UsageError(f"{target!r} is not a {what} id (letters, digits, '_', '-')")
    if group:
        return f"{prefix}/fleet/{group}/cmd/{name}"
    return f"{prefix}/{node}/cmd/{name}"


def _parse_args_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--args is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError('--args must be a JSON object, e.g. \'{"device": "valve-3"}\'')
    return value


def signed(args: argparse.Namespace, name: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(topic, command body) for `name`, signed with ``--key`` unless ``--unsigned``."""
    from gateway.authz import sign_command  # noqa: PLC0415

    topic = command_topic(args.prefix, name, args.node, args.group)
    if args.unsigned:
        return topic, body
    if not args.key:
        raise UsageError("--key is required (the operator's private key), or --unsigned")
    if not 10 <= args.lifetime <= 7 * 86400:
        raise UsageError("--lifetime must be between 10 s and 7 days")
    key_id = args.key_id or Path(args.key).stem
    private = load_key(args.key)
    return topic, sign_command(topic, body, key_id=key_id, private=private, lifetime=args.lifetime)


def _body(args: argparse.Namespace) -> dict[str, Any]:
    return {"id": args.id or f"cli-{uuid.uuid4()}", "args": _parse_args_json(args.args)}


def cmd_sign(args: argparse.Namespace) -> int:
    try:
        topic, body = signed(args, args.name, _body(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"topic": topic, "payload": body}))
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    try:
        topic, body = _to_send(args)
        replies = asyncio.run(
            publish_command(args, topic, body, expected=None if "/fleet/" in topic else 1)
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: broker {args.host}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    for reply in replies:
        print(json.dumps(reply))
    if not replies:
        print(f"no reply within {args.wait:g}s", file=sys.stderr)
    return EXIT_OK if replies and all(r.get("ok") for r in replies) else EXIT_FAILED


def _to_send(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.signed:
        return _presigned(args.signed)
    if not args.name:
        raise UsageError("name the command, or give --signed FILE from `cmd sign`")
    if not (args.node or args.group):
        raise UsageError("--node or --group is required")
    return signed(args, args.name, _body(args))


def _presigned(path: str) -> tuple[str, dict[str, Any]]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not JSON ({exc})") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("topic"), str)
        or not isinstance(doc.get("payload"), dict)
    ):
        raise UsageError(f"{path}: not a signed command from `cityneuron cmd sign`")
    return doc["topic"], doc["payload"]


def _password(args: argparse.Namespace) -> str | None:
    if args.password_file:
        try:
            return Path(args.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"{args.password_file}: {exc.strerror}") from None
    return os.environ.get("CITYNEURON_MQTT_PASSWORD")


async def publish_command(
    args: argparse.Namespace, topic: str, body: dict[str, Any], *, expected: int | None
) -> list[Any]:
    """Publish command `body` to `topic` and collect the replies for ``args.wait`` seconds
    (or until `expected` have come).

    Each node answers on its own ``{prefix}/{node}/replies/{command}`` (no response topic is
    set), the one place a per-node broker ACL lets it publish; a reply counts when it names
    this command's id and the node its topic belongs to."""
    import ssl  # noqa: PLC0415

    import aiomqtt  # noqa: PLC0415

    tls = None
    if not args.no_tls:
        tls = ssl.create_default_context(cafile=args.ca_file)
        if args.cert_file:
            tls.load_cert_chain(args.cert_file, args.key_file)
    name = topic.rsplit("/", 1)[-1]
    replies: list[Any] = []
    try:
        async with aiomqtt.Client(
            args.host,
            args.port or (1883 if args.no_tls else 8883),
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=tls,
            username=args.username,
            password=_password(args),
        ) as client:
            await client.subscribe(f"{args.prefix}/+/replies/{name}", qos=1)
            await client.publish(topic, json.dumps(body), qos=1)
            try:
                async with asyncio.timeout(args.wait):
                    async for message in client.messages:
                        reply = _reply(message.payload, str(message.topic), args.prefix)
                        if reply is None or reply.get("command_id") != body.get("id"):
                            continue
                        replies.append(reply)
                        if expected is not None and len(replies) >= expected:
                            break
            except TimeoutError:
                pass
    except aiomqtt.MqttError as exc:
        raise OSError(f"MQTT: {exc}") from None
    return replies


def _reply(payload: Any, topic: str, prefix: str) -> dict[str, Any] | None:
    """A reply as a dict when it parses and comes from the node whose topic it is on."""
    try:
        reply = json.loads(payload if isinstance(payload, bytes) else b"")
    except ValueError:
        return None
    node = topic[len(prefix) + 1 :].split("/", 1)[0]
    if not isinstance(reply, dict) or reply.get("node") != node:
        return None
    return reply


def add_connection_options(p: argparse.ArgumentParser) -> None:
    """The broker options every operator command takes."""
    p.add_argument("--host", required=True, help="MQTT broker")
    p.add_argument("--port", type=int, help="port (8883 with TLS, 1883 without)")
    p.add_argument("--ca-file", help="CA of the broker's certificate")
    p.add_argument("--cert-file", help="client certificate (PEM), for brokers that want one")
    p.add_argument("--key-file", help="client certificate's private key (PEM)")
    p.add_argument("--username", help="broker user")
    p.add_argument(
        "--password-file",
        help="file holding the broker password (or set CITYNEURON_MQTT_PASSWORD)",
    )
    p.add_argument("--no-tls", action="store_true", help="plain MQTT (test brokers only)")
    p.add_argument("--prefix", default="cityneuron/v1", help="topic prefix")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for replies")


def add_signing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", help="operator private key (PEM) from `keys generate`")
    p.add_argument("--key-id", help="key id the nodes know (default: the key file's name)")
    p.add_argument(
        "--lifetime", type=float, default=300.0, help="seconds the signature is valid (300)"
    )
    p.add_argument("--unsigned", action="store_true", help="do not sign (open commands: ping)")


def add_parsers(sub: Any) -> None:
    cmd = sub.add_parser("cmd", help="sign and send commands to nodes")
    csub = cmd.add_subparsers(dest="cmd_command", required=True, metavar="ACTION")
    for action, helptext in (
        ("sign", "print a signed command (JSON: topic and payload)"),
        ("send", "sign, send and print the replies"),
    ):
        p = csub.add_parser(action, help=helptext)
        p.add_argument("name", nargs="?" if action == "send" else None, help="command, e.g. write")
        target = p.add_mutually_exclusive_group(required=action == "sign")
        target.add_argument("--node", help="node id")
        target.add_argument("--group", help="fleet group")
        p.add_argument("--args", help="the command's arguments as a JSON object")
        p.add_argument("--id", help="command id (default: a new one)")
        add_signing_options(p)
        if action == "send":
            p.add_argument("--signed", help="send this output of `cmd sign` as it is")
            add_connection_options(p)
            p.set_defaults(func=cmd_send)
        else:
            p.add_argument("--prefix", default="cityneuron/v1", help="topic prefix")
            p.set_defaults(func=cmd_sign)
