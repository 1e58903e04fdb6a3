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
import base64
import json
import struct
import sys

import websocket


def main():
    url, protocol, send = sys.argv[1], sys.argv[2], sys.argv[3]
    b64 = "base64" in protocol
    try:
        ws = websocket.create_connection(
            url.replace("http://", "ws://", 1),
            subprotocols=[protocol] if protocol else None,
            timeout=120,
        )
    except websocket.WebSocketBadStatusException as e:
        print(json.dumps({"http_status": e.status_code}))
        return
    if b64:
        ws.send("0" + base64.b64encode(send.encode()).decode())
    else:
        ws.send_binary(b"\x00" + send.encode())
    channels, ports = {}, {}
    while True:
        try:
            opcode, data = ws.recv_data()
        except websocket.WebSocketConnectionClosedException:
            break
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        if not data:
            continue
        if b64:
            channel, payload = data[0] - ord("0"), base64.b64decode(data[1:])
        else:
            channel, payload = data[0], data[1:]
        key = str(channel)
        if key not in ports:
            ports[key] = struct.unpack("<H", payload[:2])[0]
            payload = payload[2:]
        channels[key] = channels.get(key, b"") + payload
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
