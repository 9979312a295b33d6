"""The HTTP side InTarget pulls from: ``GET /api/<feed>?from=...&to=...``.

Errors are Falcon ``HTTPError`` subclasses, rendered as JSON ``{"title", "description"}``
with a 4xx status for anything the client can fix; bad input is never logged as a
traceback.
"""
