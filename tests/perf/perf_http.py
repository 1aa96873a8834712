"""What the perf scripts share: a JSON call to a broker's admin API."""

from __future__ import annotations

import json
import urllib.request


def http(admin: str, method: str, path: str, body=None, timeout=120):
    """`method admin+path` with a JSON body; the JSON answer, or None for an empty one."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(admin + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read().decode()
        return json.loads(text) if text else None
