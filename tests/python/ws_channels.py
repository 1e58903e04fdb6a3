"""A Kubernetes channel-protocol client (exec/attach over WebSocket) built on
Debian's python3-websocket (websocket-client), a client moat did not write.

Usage: ws_channels.py URL PROTOCOL ACTIONS_JSON
(an https:// URL is opened as wss://, trusting the CA in $MOAT_CA_FILE)

ACTIONS_JSON is a list run in order after the connection opens:
  ["send", channel, "text"]   data on a channel
  ["close", channel]          v5 close signal for a channel
  ["sleep", seconds]
  ["disconnect"]              drop the connection at once (no reading)
  ["digest"]                  report channels by length and SHA-256
Then everything the server sends is read until it closes the connection.
Prints one JSON object: the negotiated protocol, the first message's
channel and length, and each channel's bytes (latin-1; with "digest",
{"len", "sha256"}), or the HTTP status when the upgrade is refused.
"""
import hashlib
import json
import sys
import time

import websocket

from k8s_channels import connect, messages, send


def main():
    url, protocol, actions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    b64 = "base64" in protocol
    try:
        ws = connect(url, protocol)
    except websocket.WebSocketBadStatusException as e:
        print(json.dumps({"http_status": e.status_code}))
        return

    digest = False
    for a in actions:
        if a[0] == "digest":
            digest = True
        elif a[0] == "send":
            send(ws, b64, a[1], a[2].encode())
        elif a[0] == "close":
            ws.send_binary(bytes([255, a[1]]))
        elif a[0] == "sleep":
            time.sleep(a[1])
        elif a[0] == "disconnect":
            ws.sock.close()
            print(json.dumps({"disconnected": True}))
            return

    channels, first = {}, None
    hashes, lengths = {}, {}
    try:
        for channel, payload in messages(ws, b64):
            if first is None:
                first = [channel, len(payload)]
            key = str(channel)
            lengths[key] = lengths.get(key, 0) + len(payload)
            if digest:
                hashes.setdefault(key, hashlib.sha256()).update(payload)
            # The status (channel 3) is small: kept whole, also with "digest".
            if not digest or channel == 3:
                channels[key] = channels.get(key, b"") + payload
    except websocket.WebSocketTimeoutException:
        # Say how far the session got before the server went quiet.
        sys.exit(f"no message for {ws.gettimeout()} s after {lengths} bytes per channel")
    print(
        json.dumps(
            {
                "protocol": ws.getsubprotocol(),
                "first": first,
                "channels": (
                    {k: {"len": lengths[k], "sha256": h.hexdigest()} for k, h in hashes.items()}
                    if digest
                    else {k: v.decode("latin-1") for k, v in channels.items()}
                ),
                "status": channels.get("3", b"").decode("latin-1"),
            }
        )
    )


main()
