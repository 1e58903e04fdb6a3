"""Kubernetes' channel framing over WebSocket (`channel.k8s.io` and its
base64 form), on Debian's python3-websocket, shared by the streaming test
clients: connecting, sending on a channel, and reading (channel, payload)
messages until the server closes the connection.
"""
import base64
import os

import websocket


def connect(url, protocol):
    """Opens URL (http -> ws, https -> wss trusting only $MOAT_CA_FILE) with
    PROTOCOL; raises websocket.WebSocketBadStatusException when refused."""
    return websocket.create_connection(
        url.replace("http://", "ws://", 1).replace("https://", "wss://", 1),
        subprotocols=[protocol] if protocol else None,
        timeout=120,
        sslopt={"ca_certs": os.environ["MOAT_CA_FILE"]} if "MOAT_CA_FILE" in os.environ else None,
    )


def send(ws, b64, channel, data):
    """Sends DATA (bytes) on CHANNEL."""
    if b64:
        ws.send(str(channel) + base64.b64encode(data).decode())
    else:
        ws.send_binary(bytes([channel]) + data)


def messages(ws, b64):
    """Yields (channel, payload) until the server closes the connection."""
    while True:
        try:
            opcode, data = ws.recv_data()
        except websocket.WebSocketConnectionClosedException:
            return
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return
        if not data:
            continue
        if b64:
            yield data[0] - ord("0"), base64.b64decode(data[1:])
        else:
            yield data[0], data[1:]
