#!/usr/bin/env python3
"""A stand-in for a TensorFlow Serving model (hack/local-loop.sh): answers the REST API's
`POST /v1/models/NAME:predict` with `{"predictions": [[scores...]]}`, one row of three
iris-class scores per instance, and `GET /v1/models/NAME` with an AVAILABLE status.

Usage: stand-in-model.py [PORT]   (0 or absent: any free port; the port is printed)
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def scores(instance):
    """A fixed rule on the petal length, so answers are deterministic."""
    petal = float(instance[2]) if len(instance) > 2 else 0.0
    if petal < 2.5:
        return [0.9, 0.05, 0.05]
    if petal < 5.0:
        return [0.1, 0.8, 0.1]
    return [0.05, 0.15, 0.8]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/v1/models/") or self.path == "/":
            self.answer(200, {"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not (self.path.startswith("/v1/models/") and self.path.endswith(":predict")):
            self.answer(404, {"error": "not found"})
            return
        try:
            instances = json.loads(raw)["instances"]
        except (ValueError, KeyError, TypeError):
            self.answer(400, {"error": "expected {\"instances\": [...]}"})
            return
        self.answer(200, {"predictions": [scores(i) for i in instances]})

    def log_message(self, fmt, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
