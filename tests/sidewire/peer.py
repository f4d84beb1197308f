"""A sidewire 0.1.9 peer for keywire's interop test and benchmark, built on sidewire's own Router.

Usage: peer.py --brokers host:port,... [--peer KEYHEX] [--count N] [--mode interop|bench|listen]

Prints one line per event on stdout, each starting with "SWPEER " and followed by JSON:
  ready  {key, subscribed: [hosts]}     once its Router has started
then waits for a line "go" on stdin, and:
  interop: sends N distinct messages to --peer (at most 10 in flight) and answers every message
           from --peer with "re: <text>"; ends with
  done   {sent_acked, send_failed, received, answered, answer_failed, answers_received,
          send_ack_ms: [...]}
  bench:   sends N messages one at a time and reports send->ACK times in done.send_ack_ms.
  listen:  only acknowledges (sidewire does that by itself) until stdin closes.
Any failure prints "SWPEER {"event": "error", ...}" and exits 1. Bounded: exits after --timeout.
"""

import argparse
import asyncio
import json
import os
import sys
import time

try:
    from aionetiface import IP4, IP6, Interface, Signing
    from sidewire import Router
except ImportError as exc:  # pragma: no cover - reported to the Rust test
    print("SWPEER " + json.dumps({"event": "error", "error": f"sidewire is not installed: {exc}"}), flush=True)
    sys.exit(1)


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write("SWPEER " + json.dumps(fields) + "\n")
    sys.stdout.flush()


def servers_from(brokers):
    servers = {IP4: {}, IP6: {}}
    for item in brokers.split(","):
        host, port = item.rsplit(":", 1)
        af = IP6 if ":" in host else IP4
        servers[af][host] = {"host": host, "port": int(port), "af": int(af)}
    return servers


async def read_line():
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def main(args):
    nic = await Interface("default")
    inbox = asyncio.Queue()

    async def on_message(msg, src_pk_hex, queue_id_hex, client):
        # Called from sidewire's MQTT reader before it ACKs: never block here.
        inbox.put_nowait((msg, src_pk_hex))

    router = Router(Signing.keypair(), on_message, get_time=time.time, nic=nic,
                    servers=servers_from(args.brokers))
    subscribed = await router.start()
    emit("ready", key=router.kp.public_key_hex, subscribed=[c.host for c in subscribed])
    if args.mode == "listen":
        while await read_line():
            pass
        await router.close()
        return 0
    if (await read_line()).strip() != "go":
        emit("error", error="expected 'go' on stdin")
        return 1
    pipe = await router.pipe(args.peer)
    tag = os.urandom(4).hex()
    result = {"sent_acked": 0, "send_failed": 0, "received": 0, "answered": 0,
              "answer_failed": 0, "answers_received": 0, "send_ack_ms": []}

    # sidewire's own default is 4 s; the interop test runs 20 messages in flight through
    # pure-Python ECDSA on a loaded machine and checks delivery, not latency.
    send_timeout = 4 if args.mode == "bench" else 30

    async def send_one(text, counter_ok, counter_failed):
        t0 = time.monotonic()
        n = await pipe.send(text, timeout=send_timeout)
        if n:
            result[counter_ok] += 1
            return (time.monotonic() - t0) * 1000.0
        result[counter_failed] += 1
        return None

    if args.mode == "bench":
        for i in range(args.count):
            ms = await send_one(f"bench {tag} {i}", "sent_acked", "send_failed")
            if ms is not None:
                result["send_ack_ms"].append(ms)
        emit("done", **result)
        await router.close()
        return 0

    limit = asyncio.Semaphore(10)

    async def send_limited(text):
        async with limit:
            ms = await send_one(text, "sent_acked", "send_failed")
            if ms is not None:
                result["send_ack_ms"].append(ms)

    async def answer(text):
        async with limit:
            await send_one("re: " + text, "answered", "answer_failed")

    senders = [asyncio.create_task(send_limited(f"sw-msg {i} {tag}")) for i in range(args.count)]
    answers = []
    seen = set()
    while result["received"] < args.count or result["answers_received"] < args.count:
        msg, src = await inbox.get()
        if src != args.peer or msg in seen:
            continue
        seen.add(msg)
        if msg.startswith("re: sw-msg "):
            result["answers_received"] += 1
        else:
            result["received"] += 1
            answers.append(asyncio.create_task(answer(msg)))
    await asyncio.gather(*senders, *answers)
    emit("done", **result)
    await router.close()
    return 0


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", required=True)
    p.add_argument("--peer")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--mode", choices=["interop", "bench", "listen"], default="interop")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    if args.mode != "listen" and not args.peer:
        p.error("--peer is required in this mode")
    return args


if __name__ == "__main__":
    arguments = parse()
    try:
        code = asyncio.run(asyncio.wait_for(main(arguments), arguments.timeout))
    except asyncio.TimeoutError:
        emit("error", error=f"did not finish within {arguments.timeout} s")
        code = 1
    sys.exit(code)
