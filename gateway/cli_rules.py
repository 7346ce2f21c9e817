"""``cityneuron rules ...`` and ``cityneuron keys ...``: author, test, sign and push rules."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from rules.bundle import BundleError, locate_rule, parse_bundle
from rules.compiler import CompiledBundle, compile_bundle

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _compiled(path: str) -> CompiledBundle | None:
    """The bundle in `path` compiled, or None after a one-line error at its line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: {path}: {exc.strerror}", file=sys.stderr)
        return None
    except UnicodeDecodeError as exc:
        print(f"error: {path}: not UTF-8 text ({exc.reason})", file=sys.stderr)
        return None
    try:
        return compile_bundle(parse_bundle(text))
    except BundleError as exc:
        if exc.line is None and exc.rule is not None:
            pos = locate_rule(text, exc.rule, exc.field)
            exc.line, exc.column = pos if pos else (None, None)
        print(f"error: {path}:{exc.at()}{exc.message}", file=sys.stderr)
    return None


def cmd_validate(args: argparse.Namespace) -> int:
    compiled = _compiled(args.file)
    if compiled is None:
        return EXIT_USAGE
    kinds: dict[str, int] = {}
    for rule in compiled.rules:
        kinds[rule.rule.trigger] = kinds.get(rule.rule.trigger, 0) + 1
    print(
        f"{args.file}: OK - bundle {compiled.bundle.name!r} version {compiled.version}, "
        f"{len(compiled.rules)} rules ("
        + ", ".join(f"{n} on {k}" for k, n in sorted(kinds.items()))
        + ")"
    )
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    from gateway.kernel.records import Detection, Reading  # noqa: PLC0415
    from rules.engine import RuleEngine  # noqa: PLC0415

    compiled = _compiled(args.file)
    if compiled is None:
        return EXIT_USAGE
    clock = [0.0]
    engine = RuleEngine(node="test", monotonic=lambda: clock[0])
    engine.swap(compiled)
    stream = _recorded(args.stream) if args.stream else _simulated(args.simulate)
    fired = 0
    for t, record in stream:
        clock[0] = t
        engine.run_timers(t)
        if isinstance(record, Reading):
            engine.on_reading(record, t)
        elif isinstance(record, Detection):
            engine.on_detection(record, t)
        for event in engine.take_events():
            fired += 1
            state = event.data.get("state")
            print(
                f"t={t:8.1f}s  {event.kind:<24} {event.source:<14} "
                f"{state + ' ' if state else ''}{event.message}".rstrip()
            )
    stats = engine.stats
    print(
        f"{fired} event(s); {stats.evaluations} evaluations, {stats.missing} with missing "
        f"data, {stats.errors} errors, {stats.suppressed} suppressed"
    )
    return EXIT_OK if stats.errors == 0 else EXIT_FAILED


def _usage(message: str) -> SystemExit:
    """Print `message` as the one-line error it is; the exit for bad input."""
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(EXIT_USAGE)


def _recorded(path: str) -> list[tuple[float, Any]]:
    """JSON lines: {"t": s, "device", "point", "value"} or {"t": s, "detection": {...}}."""
    from gateway.kernel.records import Detection, Reading  # noqa: PLC0415

    out: list[tuple[float, Any]] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _usage(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _usage(f"{path}: not UTF-8 text (JSON lines expected)") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            t = float(row["t"])
            if "detection" in row:
                d = row["detection"]
                record: Any = Detection(
                    camera=d["camera"],
                    model=d.get("model", "?"),
                    label=d["label"],
                    score=float(d.get("score", 1.0)),
                    box=tuple(d.get("box", (0, 0, 0, 0))),
                )
            else:
                record = Reading(device=row["device"], point=row["point"], value=row["value"])
        except (ValueError, KeyError, TypeError) as exc:
            raise _usage(f"{path}:{n}: not a reading or detection ({exc})") from None
        out.append((t, record))
    return sorted(out, key=lambda x: x[0])


SIMULATION_GROUP = "cityneuron.simulations"


def _simulated(seconds: float) -> list[tuple[float, Any]]:
    """The demo's simulated devices, read once a second for `seconds` (the ``city``
    simulation of the simulators' package, found by entry point)."""
    from gateway.kernel.plugins import Plugin, load_group  # noqa: PLC0415

    for item in load_group(SIMULATION_GROUP):
        if item.name == "city" and isinstance(item, Plugin) and callable(item.obj):
            stream: list[tuple[float, Any]] = item.obj(seconds)
            return stream
    raise SystemExit("error: --simulate needs the simulators (firmware_sim), not installed here")


def cmd_sign(args: argparse.Namespace) -> int:
    from gateway.cli_cmd import UsageError, load_key  # noqa: PLC0415
    from rules.signing import sign  # noqa: PLC0415

    compiled = _compiled(args.file)
    if compiled is None:
        return EXIT_USAGE
    try:
        key = load_key(args.key)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    key_id = args.key_id or Path(args.key).stem
    signature = sign(Path(args.file).read_bytes(), key)
    out = Path(args.out or f"{args.file}.sig")
    out.write_text(json.dumps({"key": key_id, "signature": signature}) + "\n", encoding="utf-8")
    print(f"signed version {compiled.version} with key {key_id}: {out}")
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    from gateway.cli_cmd import UsageError, publish_command, signed  # noqa: PLC0415

    if _compiled(args.file) is None:
        return EXIT_USAGE
    text = Path(args.file).read_text(encoding="utf-8")
    command: dict[str, Any] = {"id": f"push-{uuid.uuid4()}", "args": {"bundle": text}}
    sig_path = Path(args.signature or f"{args.file}.sig")
    if sig_path.exists():
        command["args"].update(json.loads(sig_path.read_text(encoding="utf-8")))
    elif not args.unsigned:
        print(
            f"error: no signature {sig_path} (run `cityneuron rules sign` first)", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        topic, body = signed(args, "rules.deploy", command)
        replies = asyncio.run(
            publish_command(args, topic, body, expected=None if args.group else 1)
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: broker {args.host}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    ok = bool(replies) and all(r.get("ok") for r in replies)
    for reply in replies:
        if reply.get("ok"):
            result = reply.get("result", {})
            previous = result.get("previous_version")
            was = "first bundle" if previous is None else f"was version {previous}"
            print(
                f"{reply.get('node')}: deployed version {result.get('version')} "
                f"({result.get('rules')} rules, {was})"
            )
        else:
            err = reply.get("error", {})
            print(f"{reply.get('node')}: refused ({err.get('code')}): {err.get('message')}")
    if not replies:
        print(f"no reply within {args.wait:g}s", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from rules.signing import generate  # noqa: PLC0415

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{args.id}.key", out / f"{args.id}.pub"
    if private_path.exists() and not args.force:
        print(f"error: {private_path} exists (use --force to replace it)", file=sys.stderr)
        return EXIT_USAGE
    private, public = generate()
    if args.force:
        private_path.unlink(missing_ok=True)
    # the private key is 0600 from its first byte: never readable by others, whatever the umask
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public_path.write_text(public + "\n", encoding="utf-8")
    print(f"private key: {private_path} (keep it off the nodes)")
    print(f"public key:  {public_path}")
    print("add to the nodes' config, with the roles this key may sign:")
    print(
        f"security:\n  keys:\n    - {{id: {args.id}, public_key: {public}, "
        "roles: [rules, models, 'write:*']}"
    )
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    """Register `rules` and `keys` on the main parser's subcommands."""
    from gateway.cli_cmd import add_connection_options  # noqa: PLC0415

    rules = sub.add_parser("rules", help="validate, test, sign and push rule bundles")
    rsub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    p = rsub.add_parser("validate", help="check a bundle (schema and CEL)")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)
    p = rsub.add_parser("test", help="run a bundle against a stream and print what fires")
    p.add_argument("file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--stream", help="recorded readings (JSON lines with t, device, point, value)")
    src.add_argument(
        "--simulate",
        type=float,
        default=120.0,
        help="seconds of the demo's simulated devices (default 120)",
    )
    p.set_defaults(func=cmd_test)
    p = rsub.add_parser("sign", help="sign a bundle with an Ed25519 private key")
    p.add_argument("file")
    p.add_argument("--key", required=True, help="private key (PEM) from `keys generate`")
    p.add_argument("--key-id", help="key id the nodes know (default: the key file's name)")
    p.add_argument("--out", help="signature file (default: FILE.sig)")
    p.set_defaults(func=cmd_sign)
    p = rsub.add_parser("push", help="deploy a signed bundle to a node or a fleet group")
    p.add_argument("file")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--node", help="node id")
    target.add_argument("--group", help="fleet group")
    p.add_argument("--signature", help="signature file (default: FILE.sig)")
    p.add_argument("--key", help="operator private key (PEM) that signs the deploy command")
    p.add_argument("--key-id", help="key id the nodes know (default: the key file's name)")
    p.add_argument(
        "--lifetime", type=float, default=300.0, help="seconds the command is valid (300)"
    )
    p.add_argument(
        "--unsigned",
        action="store_true",
        help="push without signatures (nodes with require_signature and "
        "require_signed_commands off only)",
    )
    add_connection_options(p)
    p.set_defaults(func=cmd_push)

    keys = sub.add_parser("keys", help="manage signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = ksub.add_parser("generate", help="create an Ed25519 key pair for signing bundles")
    p.add_argument("--id", required=True, help="key id, e.g. ops-2026")
    p.add_argument("--out", default=".", help="directory for the key files")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    p.set_defaults(func=cmd_keys_generate)
