#!/bin/sh
# An exec hook for wstap in shell with jq (docs/hooks.md):
#
#   wstap proxy --upstream ws://127.0.0.1:9000 --exec 'sh docs/examples/hook.sh'
#
# jq reads one request a line and writes one verdict a line; --unbuffered sends each line at once.
# Client text messages get "[hooked] " in front; everything else goes on as it came.
exec jq --unbuffered -c '
  if .message.from == "client" and (.message.text | type) == "string"
  then {id, verdict: "replace", text: ("[hooked] " + .message.text)}
  else {id, verdict: "forward"}
  end'
