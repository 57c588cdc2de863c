"""A Standard Webhooks receiver: see deploy/local/webhook-receiver.

Every POST is verified with `standardwebhooks.Webhook(secret).verify(body, headers)` for each
`--secret` in turn (the library checks the signature and that the timestamp is within five
minutes). It answers 204 when one verifies, 400 otherwise, prints one line per delivery, and with
`--log` appends a JSON line: verified, which secret, the webhook headers, the body, the error.
The first line on stdout is `listening on http://HOST:PORT` (with `--port 0`, the port chosen).
"""

import argparse
import http.server
import json
import sys
import threading

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--secret", action="append", required=True, help="whsec_... (repeatable)")
    parser.add_argument("--log", help="append one JSON line per delivery to this file")
    args = parser.parse_args()
    hooks = [Webhook(secret) for secret in args.secret]
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {name: self.headers.get(name, "") for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}
            verified, which, error, event_type = False, None, "", None
            for index, hook in enumerate(hooks):
                try:
                    payload = hook.verify(body, headers)
                    verified, which = True, index
                    event_type = payload.get("type") if isinstance(payload, dict) else None
                    break
                except WebhookVerificationError as failure:
                    error = str(failure)
            record = {
                "verified": verified,
                "secret_index": which,
                "headers": headers,
                "body": body.decode("utf-8", errors="replace"),
                "error": "" if verified else error,
                "type": event_type,
            }
            with lock:
                if args.log:
                    with open(args.log, "a", encoding="utf-8") as log:
                        log.write(json.dumps(record) + "\n")
                state = "verified" if verified else f"REJECTED ({error})"
                print(f"{headers['webhook-id']} {event_type or '-'} {state}: {record['body'][:500]}", flush=True)
            self.send_response(204 if verified else 400)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *arguments: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
