#!/usr/bin/env python3
"""A test double of Azure Event Hubs: an AMQP 1.0 listener (python-qpid-proton) that speaks to a
producer as Event Hubs does, for eds's Event Hubs driver tests, end-to-end tests and benchmark.

What it does, as the service does:
- SASL ANONYMOUS (the client authenticates with a CBS token, not SASL), plain TCP (no TLS);
- claims-based security: `put-token` requests on `$cbs` (type `servicebus.windows.net:sastoken`)
  are checked against --key-name/--key (the SAS signature is recomputed: HMAC-SHA256 of the
  URL-encoded resource and the expiry) and answered with status-code 202, or 401 and a
  description;
- `$management` READ of `com.microsoft:eventhub` (name, created_at, partition_count,
  partition_ids) and of `com.microsoft:partition` (the partition's properties);
- sender links to `<hub>` and `<hub>/Partitions/<n>`, refused (amqp:unauthorized-access) before a
  good token was put on the connection and (amqp:not-found) for another hub; the receiving end
  advertises --max-message-size on attach;
- batch envelopes (the data sections of one transfer, each an encoded message) unpacked into their
  messages. proton's Python binding does not expose a transfer's message format (0x80013700), so
  an envelope is told by its data sections: each one decodes as a whole AMQP message.

Every message it accepts is written to --out as one JSON line: body (base64), message id, content
type, partition key (message annotation x-opt-partition-key), application properties, the link's
partition (or null) and a per-transfer number; the line is flushed before the transfer is
settled, so a reader never misses a message the client saw accepted.

Standard input takes commands, one a line: `accept` (the default), `reject` (every transfer is
rejected with amqp:internal-error), `hang` (transfers are neither settled nor recorded).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import traceback
import urllib.parse

from proton import UNDESCRIBED, Array, Data, Message, symbol, timestamp
from proton import Condition, Delivery, Endpoint
from proton.handlers import IncomingMessageHandler, MessagingHandler
from proton import Handler
from proton.reactor import Container

SAS_TOKEN_TYPE = "servicebus.windows.net:sastoken"
DATA_SECTION = 0x75

mode = {"value": "accept"}
DEBUG = bool(__import__("os").environ.get("EVENTHUB_DOUBLE_DEBUG"))


def read_commands():
    for line in sys.stdin:
        command = line.strip()
        if command in ("accept", "reject", "hang"):
            mode["value"] = command
            # The acknowledgement the harness waits for: transfers from now on get this mode.
            print(f"mode {command}", flush=True)
            if DEBUG:
                print(f"mode {command}", file=sys.stderr, flush=True)
    # Standard input closed: the test that started the double is gone (even a SIGKILLed one),
    # so the double goes too instead of listening on forever.
    os._exit(0)


def data_sections(raw):
    """The payloads of the data sections of an encoded message, or None when it has none."""
    sections, rest = [], bytes(raw)
    while rest:
        d = Data()
        used = d.decode(rest)
        rest = rest[used:]
        d.rewind()
        d.next()
        if d.type() != Data.DESCRIBED:
            return None
        d.enter()
        d.next()
        descriptor = d.get_object()
        d.next()
        if descriptor == DATA_SECTION:
            sections.append(bytes(d.get_binary()))
        d.exit()
    return sections


def is_message(raw):
    try:
        m = Message()
        m.decode(raw)
        return raw[:2] == b"\x00\x53"
    except Exception:
        return False


def plain(value):
    """An AMQP value as JSON can hold it."""
    if isinstance(value, (bytes, memoryview)):
        return {"binary": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return str(value)


def sas_ok(token, key_name, key):
    """Whether `token` is a SAS token signed with key_name/key, and why not."""
    if not token.startswith("SharedAccessSignature "):
        return False, "not a SharedAccessSignature"
    fields = dict(f.split("=", 1) for f in token[len("SharedAccessSignature "):].split("&") if "=" in f)
    for f in ("sr", "sig", "se", "skn"):
        if f not in fields:
            return False, f"no {f}"
    if fields["skn"] != key_name:
        return False, f"unknown key name {fields['skn']}"
    if int(fields["se"]) < time.time():
        return False, "expired"
    signed = (fields["sr"] + "\n" + fields["se"]).encode()
    expected = base64.b64encode(hmac.new(key.encode(), signed, hashlib.sha256).digest()).decode()
    if urllib.parse.unquote(fields["sig"]) != expected:
        return False, "signature mismatch"
    return True, "OK"


def settle(delivery, condition=None):
    """Settles `delivery` accepted, or rejected with `condition`, unless it is settled already."""
    if not delivery.settled:
        if condition is None:
            delivery.update(Delivery.ACCEPTED)
        else:
            delivery.local.condition = condition
            delivery.update(Delivery.REJECTED)
        delivery.settle()


class Later(Handler):
    """Runs `action` when its timer fires."""

    def __init__(self, action):
        super().__init__()
        self.action = action

    def on_timer_task(self, event):
        self.action()


class EventHub(MessagingHandler):
    def __init__(self, args):
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True, peer_close_is_error=False)
        # Transfers are read here (on_delivery), raw, so the envelope's sections can be unpacked.
        self.handlers = [h for h in self.handlers if not isinstance(h, IncomingMessageHandler)]
        self.args = args
        self.out = open(args.out, "a", buffering=1)
        self.transfers = 0
        self.authorized = set()  # connections with a good token
        self.credit = 100

    def on_start(self, event):
        event.container.allowed_mechs = "ANONYMOUS"
        event.container.listen(f"127.0.0.1:{self.args.port}")
        print(f"listening {self.args.port}", file=sys.stderr, flush=True)

    def hub_partition(self, address):
        """(hub, partition or None) of a sender's target, or None when it is not a hub's. The
        target is a path (`hub`, `hub/Partitions/1`) or a whole URL (`amqps://ns/hub`), as
        clients name it either way."""
        address = address or ""
        if "://" in address:
            address = address.split("://", 1)[1].partition("/")[2]
        parts = address.split("/")
        if len(parts) == 1:
            return parts[0], None
        if len(parts) == 3 and parts[1].lower() == "partitions":
            return parts[0], parts[2]
        return None

    def refuse(self, link, condition, description):
        # As the service: an attach without a terminus, then the detach with the error.
        link.source.copy(link.remote_source)
        link.open()
        link.condition = Condition(condition, description)
        link.close()

    def on_link_remote_open(self, event):
        # Runs before MessagingHandler's own handlers, which open a link still uninitialised.
        link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if link.is_receiver:
            address = link.remote_target.address
            if address not in ("$cbs", "$management") and not address.endswith(("/$cbs", "/$management")):
                target = self.hub_partition(address)
                if target is None or target[0] != self.args.hub:
                    return self.refuse(link, "amqp:not-found", f"The messaging entity '{address}' could not be found.")
                if target[1] is not None and target[1] not in self.partition_ids():
                    return self.refuse(link, "amqp:not-found", f"partition {target[1]} does not exist")
                if event.connection not in self.authorized:
                    return self.refuse(link, "amqp:unauthorized-access", "Unauthorized access. No token put for the entity.")
                link.max_message_size = self.args.max_message_size
            link.open()
            link.flow(self.credit)
        else:
            link.open()

    def partition_ids(self):
        return [str(i) for i in range(self.args.partitions)]

    def on_message(self, event):
        link, delivery = event.link, event.delivery
        address = link.remote_target.address or ""
        node = address.rsplit("/", 1)[-1]
        if node in ("$cbs", "$management"):
            # Answered after the settle delay too (the same fe2o3-amqp race, on the request's
            # outcome and on the response): a lost answer costs the client its whole timeout.
            request, connection = event.message, event.connection

            def answer():
                if connection.state & Endpoint.REMOTE_CLOSED:
                    return  # the client went away meanwhile
                try:
                    self.accept(delivery)
                    self.respond(connection, node, request)
                except Exception:
                    traceback.print_exc()
                    sys.stderr.flush()

            self.later(event, answer)
        elif mode["value"] == "hang":
            pass
        elif mode["value"] == "reject":
            condition = Condition("amqp:internal-error", "the test double rejects every transfer now")
            self.later(event, lambda: settle(delivery, condition))
        else:
            self.record(link, event.message, self.raw)
            # Every outcome (accepted or rejected) is sent after --settle-delay-ms, as a service
            # across a network answers. fe2o3-amqp 0.16.2 (under azure_messaging_eventhubs 0.16)
            # writes a transfer before it registers the delivery as unsettled, so an outcome that
            # comes back first (in microseconds, on loopback, or while the client's task waits for
            # a core on a loaded machine) is dropped and the client's send waits until eds's timeout.
            self.later(event, lambda: settle(delivery))
        link.flow(1)

    def on_delivery(self, event):
        # Keep the raw bytes of the transfer: the envelope's data sections are read from them.
        delivery = event.delivery
        if DEBUG:
            print(f"delivery {delivery.tag!r} receiver={delivery.link.is_receiver} readable={delivery.readable} partial={delivery.partial} pending={delivery.pending} credit={delivery.link.credit}", file=sys.stderr, flush=True)
        if delivery.link.is_receiver and delivery.readable and not delivery.partial:
            self.raw = delivery.link.recv(delivery.pending)
            if DEBUG:
                open(f"/tmp/eventhub-double-{delivery.pending}-{len(self.raw)}.bin", "wb").write(self.raw)
            msg = Message()
            msg.decode(self.raw)
            delivery.link.advance()
            event.message = msg
            try:
                self.on_message(event)
            except Exception:
                # Never silently: a transfer the double cannot read stays unsettled, and says why.
                traceback.print_exc()
                sys.stderr.flush()

    def record(self, link, envelope, raw):
        _, partition = self.hub_partition(link.remote_target.address)
        sections = data_sections(raw) or []
        inner = sections if sections and all(is_message(s) for s in sections) else None
        self.transfers += 1
        messages = []
        if inner is None:
            messages.append(envelope)
        else:
            for s in inner:
                m = Message()
                m.decode(s)
                messages.append(m)
        for m in messages:
            annotations = m.annotations or {}
            body = m.body
            if isinstance(body, (bytes, memoryview)):
                body = base64.b64encode(bytes(body)).decode()
            else:
                body = base64.b64encode(json.dumps(plain(body)).encode()).decode()
            line = {
                "transfer": self.transfers,
                "batch": inner is not None,
                "partition": partition,
                "body": body,
                "message_id": plain(m.id),
                "content_type": plain(m.content_type),
                "partition_key": plain(annotations.get(symbol("x-opt-partition-key"))),
                "properties": {str(k): plain(v) for k, v in (m.properties or {}).items()},
            }
            self.out.write(json.dumps(line) + "\n")
        self.out.flush()

    def reply_link(self, connection, reply_to):
        link = connection.link_head(Endpoint.LOCAL_ACTIVE)
        while link:
            if link.is_sender and link.remote_target.address == reply_to:
                return link
            link = link.next(Endpoint.LOCAL_ACTIVE)
        return None

    def later(self, event, action):
        """Runs `action` after --settle-delay-ms (see on_message for why every answer waits)."""
        event.container.schedule(self.args.settle_delay_ms / 1000.0, Later(action))

    def respond(self, connection, address, request):
        props = request.properties or {}
        status, description, body = 200, "OK", None
        if address == "$cbs":
            if props.get("operation") != "put-token":
                status, description = 400, f"unknown operation {props.get('operation')}"
            elif props.get("type") != SAS_TOKEN_TYPE:
                status, description = 400, f"token type {props.get('type')} (want {SAS_TOKEN_TYPE})"
            else:
                ok, why = sas_ok(str(request.body), self.args.key_name, self.args.key)
                if ok:
                    # Event Hubs answers a good token with 202 Accepted.
                    status, description = 202, "Accepted"
                    self.authorized.add(connection)
                else:
                    status, description = 401, f"InvalidSignature: {why}"
        else:
            if connection not in self.authorized:
                status, description = 401, "Unauthorized: no token put on this connection"
            elif props.get("operation") != "READ":
                status, description = 400, f"unknown operation {props.get('operation')}"
            elif props.get("name") != self.args.hub:
                status, description = 404, f"The messaging entity '{props.get('name')}' could not be found."
            elif props.get("type") == "com.microsoft:eventhub":
                body = {
                    "name": self.args.hub,
                    "type": "com.microsoft:eventhub",
                    "created_at": timestamp(1_700_000_000_000),
                    "partition_count": len(self.partition_ids()),
                    "partition_ids": Array(UNDESCRIBED, Data.STRING, *self.partition_ids()),
                }
            elif props.get("type") == "com.microsoft:partition":
                body = {
                    "name": self.args.hub,
                    "type": "com.microsoft:partition",
                    "partition": str(props.get("partition")),
                    "begin_sequence_number": 0,
                    "last_enqueued_sequence_number": -1,
                    "last_enqueued_offset": "-1",
                    "last_enqueued_time_utc": timestamp(1_700_000_000_000),
                    "is_partition_empty": True,
                }
            else:
                status, description = 400, f"unknown type {props.get('type')}"
        link = self.reply_link(connection, request.reply_to)
        if link is None:
            print(f"no reply link for {request.reply_to}", file=sys.stderr, flush=True)
            return
        response = Message(
            correlation_id=request.id,
            properties={"status-code": status, "status-description": description},
            body=body,
        )
        link.send(response)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hub", required=True)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--max-message-size", type=int, default=1024 * 1024)
    p.add_argument("--key-name", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--settle-delay-ms", type=float, default=20.0)
    p.add_argument("--mode", choices=("accept", "reject", "hang"), default="accept")
    args = p.parse_args()
    mode["value"] = args.mode
    threading.Thread(target=read_commands, daemon=True).start()
    Container(EventHub(args)).run()


if __name__ == "__main__":
    main()
