#!/usr/bin/env python3
"""CRI calls to a runtime's Unix socket through clients other people wrote.

Runs in the venv `scripts/python-cri-env.sh` makes (grpcio, grpcio-tools, h2).

  cri_client.py grpc --socket SOCK --proto CRI.proto CALL...
      Generates Python stubs from the CRI proto (grpcio-tools, into a temp
      dir), connects with grpc.insecure_channel("unix:" + SOCK) -- grpcio's
      own default :authority unless --authority is given -- and makes each
      CALL in order on one channel. A CALL is `Service/Method` or
      `Service/Method=JSON`, the JSON being the request message with the
      proto's field names, e.g.
          RuntimeService/Version
          'ImageService/PullImage={"image": {"image": "127.0.0.1:5000/moat/busybox:latest"}}'
          'RuntimeService/RunPodSandbox={"config": {...}, "runtime_handler": "microvm"}'
      Prints one JSON line per call:
          {"call": ..., "ok": true, "response": {...proto field names...}}
          {"call": ..., "ok": false, "code": "NOT_FOUND", "details": "..."}
      Exit status 0 when every call succeeded, 1 otherwise.

  cri_client.py raw-version --socket SOCK --authority AUTH [--proto CRI.proto] [--requests N]
      Sends N (default 2) gRPC RuntimeService/Version requests on one raw
      HTTP/2 connection (hyper-h2: its HPACK encoder indexes headers, so
      the second request refers to the first's through the dynamic table)
      with `:authority` exactly AUTH (may be empty or a path). Prints one
      JSON line per request: HTTP status, grpc-status, grpc-message, the
      response message's length (and, with --proto, the decoded message),
      or the RST_STREAM / GOAWAY error code.

As a module: `stubs(proto)` returns (api_pb2, api_pb2_grpc); `Cri(socket,
proto)` has `.call("RuntimeService/Version", {})` returning a dict.
"""

import argparse
import atexit
import importlib
import json
import os
import shutil
import socket
import sys
import tempfile

_STUBS = None


def stubs(proto):
    """Generates and imports Python stubs for the CRI proto file `proto`."""
    global _STUBS
    if _STUBS is None:
        from grpc_tools import protoc

        out = tempfile.mkdtemp(prefix="cri-stubs-")
        atexit.register(shutil.rmtree, out, True)
        shutil.copy(proto, os.path.join(out, "api.proto"))
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                "-I" + out,
                "-I" + os.path.join(os.path.dirname(protoc.__file__), "_proto"),
                "--python_out=" + out,
                "--grpc_python_out=" + out,
                os.path.join(out, "api.proto"),
            ]
        )
        if rc != 0:
            raise RuntimeError("grpc_tools.protoc failed on %s" % proto)
        sys.path.insert(0, out)
        _STUBS = (importlib.import_module("api_pb2"), importlib.import_module("api_pb2_grpc"))
    return _STUBS


class Cri:
    """A grpcio channel to a CRI socket with RuntimeService/ImageService stubs."""

    def __init__(self, sock, proto, authority=None, timeout=300):
        import grpc

        self.grpc = grpc
        self.pb2, self.pb2_grpc = stubs(proto)
        options = []
        if authority is not None:
            options.append(("grpc.default_authority", authority))
        self.channel = grpc.insecure_channel("unix:" + sock, options=options)
        self.timeout = timeout

    def call(self, call, request=None):
        """Calls `Service/Method` with `request` (a dict); returns the response as a dict."""
        from google.protobuf import json_format

        service, method = call.split("/", 1)
        stub = getattr(self.pb2_grpc, service + "Stub")(self.channel)
        rpc = getattr(stub, method)
        descriptor = self.pb2.DESCRIPTOR.services_by_name[service].methods_by_name[method]
        req_cls = getattr(self.pb2, descriptor.input_type.name)
        req = json_format.ParseDict(request or {}, req_cls())
        resp = rpc(req, timeout=self.timeout)
        return json_format.MessageToDict(resp, preserving_proto_field_name=True)

    def close(self):
        self.channel.close()


def cmd_grpc(args):
    cri = Cri(args.socket, args.proto, args.authority, args.timeout)
    ok = True
    for c in args.calls:
        name, _, body = c.partition("=")
        try:
            resp = cri.call(name, json.loads(body) if body else {})
            print(json.dumps({"call": name, "ok": True, "response": resp}), flush=True)
        except cri.grpc.RpcError as e:
            ok = False
            print(
                json.dumps({"call": name, "ok": False, "code": e.code().name, "details": e.details()}),
                flush=True,
            )
    cri.close()
    return 0 if ok else 1


def cmd_raw_version(args):
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    )
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(args.timeout)
    s.connect(args.socket)
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    results = []
    for i in range(args.requests):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/runtime.v1.RuntimeService/Version"),
                (":authority", args.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        # One length-prefixed message: uncompressed, 0 bytes (an empty VersionRequest).
        conn.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
        s.sendall(conn.data_to_send())
        r = {"request": i + 1, "authority": args.authority, "status": None, "grpc_status": None,
             "grpc_message": None, "message_len": None, "reset": None, "goaway": None}
        body = b""
        done = False
        while not done:
            data = s.recv(65536)
            if not data:
                r["goaway"] = r["goaway"] or "connection closed"
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    for k, v in ev.headers:
                        if k == b":status":
                            r["status"] = int(v)
                        elif k == b"grpc-status":  # trailers-only response
                            r["grpc_status"] = v.decode()
                        elif k == b"grpc-message":
                            r["grpc_message"] = v.decode()
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    for k, v in ev.headers:
                        if k == b"grpc-status":
                            r["grpc_status"] = v.decode()
                        elif k == b"grpc-message":
                            r["grpc_message"] = v.decode()
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    done = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    r["reset"] = getattr(ev.error_code, "name", str(ev.error_code))
                    done = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    r["goaway"] = getattr(ev.error_code, "name", str(ev.error_code))
                    done = True
            out = conn.data_to_send()
            if out:
                s.sendall(out)
        if len(body) >= 5:
            n = int.from_bytes(body[1:5], "big")
            msg = body[5 : 5 + n]
            r["message_len"] = len(msg)
            if args.proto:
                from google.protobuf import json_format

                pb2, _ = stubs(args.proto)
                resp = pb2.VersionResponse.FromString(msg)
                r["response"] = json_format.MessageToDict(resp, preserving_proto_field_name=True)
        results.append(r)
        print(json.dumps(r), flush=True)
        if r["goaway"]:
            break
    s.close()
    ok = all(r["grpc_status"] == "0" and r["message_len"] for r in results) and len(results) == args.requests
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grpc", help="CRI calls with grpcio")
    g.add_argument("--socket", required=True)
    g.add_argument("--proto", required=True, help="the CRI api.proto (runtime.v1)")
    g.add_argument("--authority", help="override grpcio's default :authority")
    g.add_argument("--timeout", type=float, default=300)
    g.add_argument("calls", nargs="+", metavar="CALL")
    r = sub.add_parser("raw-version", help="raw HTTP/2 Version calls with hyper-h2")
    r.add_argument("--socket", required=True)
    r.add_argument("--authority", required=True)
    r.add_argument("--proto")
    r.add_argument("--requests", type=int, default=2)
    r.add_argument("--timeout", type=float, default=30)
    args = p.parse_args()
    return cmd_grpc(args) if args.cmd == "grpc" else cmd_raw_version(args)


if __name__ == "__main__":
    sys.exit(main())
