"""gunicorn's access log as one JSON object per line, like the rest of Feedstore's logs.

gunicorn's ``access_log_format`` pastes atoms into a template without escaping, so a
quote in a User-Agent would break a JSON template; this logger builds the object and
lets ``json.dumps`` escape it. It never logs request headers wholesale (Authorization
stays out) nor the Basic user name gunicorn would decode from it: a mistyped password
in the user field must not reach a log.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger


class JsonAccessLogger(Logger):  # type: ignore[misc]
    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        headers = dict((k.lower(), v) for k, v in (resp.headers or []))
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "level": "INFO",
            "name": "gunicorn.access",
            "message": "access",
            "remote_addr": environ.get("REMOTE_ADDR"),
            "forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING"),
            "protocol": environ.get("SERVER_PROTOCOL"),
            "status": int(status) if str(status).isdigit() else status,
            "bytes": getattr(resp, "sent", None),
            "ms": round(request_time.total_seconds() * 1000, 1),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "request_id": headers.get("x-request-id"),
            "content_encoding": headers.get("content-encoding"),
        }
        try:
            self.access_log.info(json.dumps({k: v for k, v in record.items() if v not in (None, "")}))
        except Exception:  # noqa: BLE001 - as gunicorn does: an access-log failure must not fail the request
            self.exception("access log failed")
