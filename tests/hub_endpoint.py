"""A small Hugging Face Hub endpoint on 127.0.0.1 for tests: it answers the requests that
create_repo, create_branch and upload_folder of small files make, and records what it receives.

It stands in for huggingface.co, which cannot be reached here; the client under test is the real
huggingface_hub.
"""

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubEndpoint:
    def __init__(self, received_dir: str, failing_commits: int = 0):
        self.received_dir = received_dir
        self.requests: list[dict] = []  # method, path, headers, body of every request
        self.failing_commits = failing_commits  # answer the first N commits with HTTP 503
        self.commits: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, payload=None, headers=None):
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                endpoint.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
                return body

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                self._record()
                if "/discussions/" in self.path:  # details of the pull request opened by create_pr
                    repo = self.path.split("/api/models/")[1].split("/discussions/")[0]
                    return self._reply(200, {
                        "title": "upload", "num": 1, "createdAt": "2026-01-01T00:00:00.000Z", "status": "open",
                        "repo": {"name": repo, "type": "model"}, "isPullRequest": True, "events": [],
                        "changes": {"base": "refs/heads/main"}, "filesWithConflicts": []})
                self._reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})

            def do_POST(self):
                body = self._record()
                base = f"http://127.0.0.1:{self.server.server_port}"
                if self.path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
                    return self._reply(200, {"url": f"{base}/{repo}", "name": repo})
                if self.path == "/api/validate-yaml":
                    return self._reply(200, {})
                if "/branch/" in self.path:
                    return self._reply(200, {})
                if self.path.endswith("/discussions"):  # create_pr opens the pull request first
                    return self._reply(200, {"num": 1})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                       for f in files]})
                if "/commit/" in self.path:
                    if endpoint.failing_commits > 0:
                        endpoint.failing_commits -= 1
                        # an outage the client retries at once (Retry-After 0), not after its 1-8 s backoff
                        return self._reply(503, {"error": "simulated outage"}, {"Retry-After": "0"})
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            path = os.path.join(endpoint.received_dir, item["value"]["path"])
                            os.makedirs(os.path.dirname(path), exist_ok=True)
                            with open(path, "wb") as f:
                                f.write(base64.b64decode(item["value"]["content"]))
                    repo = self.path.split("/api/models/")[1].split("/commit/")[0]
                    endpoint.commits.append(self.path)
                    pr = f"{base}/{repo}/discussions/1" if "refs%2Fpr" in self.path or "refs/pr" in self.path else None
                    return self._reply(200, {"commitUrl": f"{base}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40,
                                             "pullRequestUrl": pr})
                self._reply(404, {"error": f"unknown endpoint {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
