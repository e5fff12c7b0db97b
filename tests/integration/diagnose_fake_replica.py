"""A stand-in backend replica for the diagnose fault tests (tests/integration/
test_diagnose_local.py), run inside the backend image with `python3 -c <this file> DELAY
METRICS`: GET /health answers {"status": "ok", "database": "ok"} after DELAY seconds;
GET /metrics answers a Prometheus text only if METRICS is "yes"; anything else is 404."""

import http.server
import json
import sys
import time


def main():
    delay, metrics = float(sys.argv[1]), sys.argv[2] == "yes"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            if self.path == "/health":
                time.sleep(delay)
                body = json.dumps({"status": "ok", "database": "ok"})
                kind = "application/json"
            elif self.path == "/metrics" and metrics:
                body, kind = "# TYPE fake_up gauge\nfake_up 1\n", "text/plain; version=0.0.4"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.end_headers()
            self.wfile.write(body.encode())

    http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()


if __name__ == "__main__":
    main()
