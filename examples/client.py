#!/usr/bin/env python3
"""A ragpool API client in the standard library alone (Python 3.11+).

Submits one task of each kind, waits for each to end and prints its result:

  1. an image analysis of a small PNG made here (analyze-image),
  2. an answer whose context is that analysis, named by its task id (complete-answer),
  3. a full query with the same image (query).

Each submission carries an Idempotency-Key, so retrying it (after a 503 and its
Retry-After, or a dropped connection) can never create a second task. Waiting uses
`GET /api/async/task/{id}?wait=N`, which the API holds until the task ends; a task still
running after that is followed on its server-sent event stream until it ends.

  python3 examples/client.py --api http://127.0.0.1:8080
  RAGPOOL_API_URL=http://ragpool-api.ragpool.svc RAGPOOL_API_KEY=... python3 examples/client.py

Prints one line `finished <kind> <task id>` per task, then its result as JSON; exits 1 if
any task did not finish. See docs/client.md.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from base64 import b64encode
from typing import Any

ENDED = {"finished", "failed", "canceled"}
# Every request says it is a program, not a cross-site form (docs/api.md, "Browsers").
CLIENT_HEADER = ("X-Ragpool-Client", "examples/client.py")


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]):
        error = body.get("error") or {}
        super().__init__(f"{status} {error.get('code', '?')}: {error.get('message', body)}")
        self.status = status
        self.code = error.get("code")


class Client:
    def __init__(self, base: str, api_key: str | None, attempts: int = 8):
        self.base = base.rstrip("/")
        self.api_key = api_key
        self.attempts = attempts

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ):
        all_headers = {CLIENT_HEADER[0]: CLIENT_HEADER[1], "Accept": "application/json"}
        if self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        request = urllib.request.Request(self.base + path, data, all_headers, method=method)
        return urllib.request.urlopen(request, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        """One JSON call, retried on 503 and 429 after their Retry-After and on connection
        errors. Safe for submissions only with an Idempotency-Key in the headers."""
        for attempt in range(1, self.attempts + 1):
            try:
                with self._request(method, path, body, **kw) as response:
                    return json.load(response)
            except urllib.error.HTTPError as e:
                payload = _json_or_empty(e)
                if e.code not in (429, 503) or attempt == self.attempts:
                    raise ApiError(e.code, payload) from None
                delay = _retry_after(e.headers.get("Retry-After"), attempt)
                code = (payload.get("error") or {}).get("code")
                print(f"  {method} {path}: {e.code} {code}, retrying in {delay:g}s", file=sys.stderr)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if attempt == self.attempts:
                    raise
                delay = _retry_after(None, attempt)
                print(f"  {method} {path}: {e}, retrying in {delay:g}s", file=sys.stderr)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def submit(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a task; the Idempotency-Key stays the same across retries of this call."""
        key = str(uuid.uuid4())
        return self.call(
            "POST", f"/api/async/{endpoint}", body, headers={"Idempotency-Key": key}
        )

    def wait(self, task: dict[str, Any], wait_seconds: int, deadline: float) -> tuple[dict[str, Any], str]:
        """The task once it ended, and how that was learnt (`wait` or `events`)."""
        status_url = task["status_url"]
        view = self.call("GET", f"{status_url}?wait={wait_seconds}", timeout=wait_seconds + 30)
        if view["status"] in ENDED:
            return view, "wait"
        # Still running after the wait: follow its event stream (one connection, no polling)
        # until it ends. A stream also ends at --max-stream-seconds or an API restart; then
        # open it again, which starts with the current state.
        while time.monotonic() < deadline:
            if self._follow_events(task["events_url"], deadline):
                break
        return self.call("GET", status_url), "events"

    def _follow_events(self, events_url: str, deadline: float) -> bool:
        """Reads the stream until an event in an ended state (True) or its end (False)."""
        try:
            response = self._request(
                "GET", events_url, headers={"Accept": "text/event-stream"}, timeout=60
            )
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503):
                raise ApiError(e.code, _json_or_empty(e)) from None
            time.sleep(_retry_after(e.headers.get("Retry-After"), 1))
            return False
        with response:
            event = None
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[len("event:") :].strip()
                elif line == "":
                    if event in ENDED:
                        return True
                    event = None
                if time.monotonic() > deadline:
                    return False
        return False


def _json_or_empty(e: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        return json.loads(e.read() or b"{}")
    except ValueError:
        return {}


def _retry_after(header: str | None, attempt: int) -> float:
    """The server's Retry-After (seconds), else a capped exponential backoff."""
    if header and header.strip().isdigit():
        return min(float(header), 30.0)
    return min(0.5 * 2 ** (attempt - 1), 10.0)


def tiny_png() -> bytes:
    """A 16x8 PNG, left half red and right half blue, encoded by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    width, height = 16, 8
    row = b"\x00" + bytes([255, 0, 0]) * (width // 2) + bytes([0, 0, 255]) * (width // 2)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--api",
        default=os.environ.get("RAGPOOL_API_URL", "http://127.0.0.1:8080"),
        help="the API's base URL (env RAGPOOL_API_URL)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("RAGPOOL_API_KEY"),
        help="bearer key when the API has auth on (env RAGPOOL_API_KEY)",
    )
    parser.add_argument(
        "--wait", type=int, default=20, help="seconds one ?wait request holds (0 to 60)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds to wait for each task in all"
    )
    args = parser.parse_args()

    client = Client(args.api, args.api_key)
    image = b64encode(tiny_png()).decode()
    question = "How long is a task's lease?"

    analysis = client.submit("analyze-image", {"image": image, "prompt": "Which colours appear?"})
    # The answer's context is the analysis' result, named by its task id: the executor reads
    # it when the answer runs (the analysis need not have finished yet).
    answer = client.submit(
        "complete-answer", {"question": "Which colours does the image show?", "context": analysis["task_id"]}
    )
    query = client.submit("query", {"question": question, "image": image, "top_k": 2})

    ok = True
    for task in (analysis, answer, query):
        view, how = client.wait(task, args.wait, time.monotonic() + args.timeout)
        print(f"{view['status']} {view['kind']} {view['task_id']} (via {how})")
        if view["status"] == "finished":
            print(json.dumps(view["result"], indent=2, ensure_ascii=False))
        else:
            ok = False
            print(json.dumps(view.get("error"), indent=2), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ApiError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
