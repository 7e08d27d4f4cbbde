#!/usr/bin/env python3
"""An exec hook for wstap (docs/hooks.md), in plain Python with no packages.

    wstap proxy --upstream ws://127.0.0.1:9000 --exec 'python3 docs/examples/hook.py'

wstap writes one JSON line per message to stdin and reads one verdict line per message from
stdout. Print logs to stderr: anything on stdout that is not a verdict restarts the hook.
"""
import json
import sys


def decide(request):
    message = request["message"]
    text = message.get("text")  # absent for binary messages: they carry "base64"
    if text is None:
        return {"verdict": "forward"}
    if message["from"] == "client" and text == "secret":
        return {"verdict": "drop"}
    if message["from"] == "client" and text.startswith("bye"):
        return {"verdict": "close", "code": 4000, "reason": "the hook says bye", "to": "both"}
    if "price" in text:
        return {"verdict": "replace", "text": text.replace("price", "PRICE"),
                "inject": [{"to": "client", "text": "the hook changed a price"}]}
    if text.startswith("slow"):
        return {"verdict": "delay", "ms": 200}
    return {"verdict": "forward"}


def main():
    for line in sys.stdin:  # one request a line; the loop ends when wstap goes away
        request = json.loads(line)
        verdict = decide(request)
        verdict["id"] = request["id"]  # say which message this answers
        sys.stdout.write(json.dumps(verdict) + "\n")
        sys.stdout.flush()  # wstap waits for the line: never leave it in a buffer


if __name__ == "__main__":
    main()
