"""The HTTP side InTarget pulls from: ``GET /api/<feed>?from=...&to=...``.

Errors are Falcon ``HTTPError`` subclasses, rendered as JSON ``{"title", "description"}``
with a 4xx status for anything the client can fix; bad input is never logged as a
traceback. docs/api.md is the reference for clients and operators.

Modules, one job each: ``app`` (the factory and gunicorn's entry point), ``resources``
(one class per route), ``params`` (strict query parsing, content negotiation),
``auth`` (Basic/HMAC middleware), ``credentials`` (the credentials file), ``passwords``
(hashes), ``signing`` (the HMAC recipe), ``replay`` (used signatures), ``clientip``
(X-Forwarded-For trust), ``security`` (settings to authenticator; the open-API rule),
``observe`` (request ids, request logs and metrics), ``gate`` (pulls yield to ingest),
``accesslog`` (gunicorn's access log as JSON).
"""
