"""kubelet's WebSocket port-forward, driven by Debian's python3-websocket
(websocket-client), a client moat did not write.

Usage: ws_portforward.py URL PROTOCOL SEND

URL names the ports in its query (?port=N&port=M). For the i-th port,
channel 2i carries data and 2i+1 errors, and each channel's first message
starts with the port (two bytes, little-endian). SEND (text) goes to the
first port's data channel; then everything is read until the server closes
the connection. Prints one JSON object: the negotiated protocol, each
channel's port prefix and the rest of its bytes (latin-1), or the HTTP
status when the upgrade is refused.
"""
import json
import struct
import sys

import websocket

from k8s_channels import connect, messages, send


def main():
    url, protocol, payload = sys.argv[1], sys.argv[2], sys.argv[3]
    b64 = "base64" in protocol
    try:
        ws = connect(url, protocol)
    except websocket.WebSocketBadStatusException as e:
        print(json.dumps({"http_status": e.status_code}))
        return
    send(ws, b64, 0, payload.encode())
    channels, ports = {}, {}
    for channel, data in messages(ws, b64):
        key = str(channel)
        if key not in ports:
            ports[key] = struct.unpack("<H", data[:2])[0]
            data = data[2:]
        channels[key] = channels.get(key, b"") + data
    print(
        json.dumps(
            {
                "protocol": ws.getsubprotocol(),
                "ports": ports,
                "channels": {k: v.decode("latin-1") for k, v in channels.items()},
            }
        )
    )


main()
