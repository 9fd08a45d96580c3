"""moto_server, with DynamoDB requests applied one at a time.

Usage: python3 tests/moto_server.py HOST PORT

moto applies a DynamoDB request in steps and undoes a failed transaction by
restoring a copy of the whole table taken when it began. Two requests at once
can therefore see each other half done, or one can wipe out the writes the
other just made. DynamoDB serializes them, and the agent's exactly-once
decisions rely on that, so here DynamoDB requests take one lock. The other
services stay concurrent: an SQS long poll must not hold up the rest.
"""

import os
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    dynamodb = threading.Lock()

    def serialized(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with dynamodb:
                # The whole response is built inside the lock.
                return list(app(environ, start_response))
        return app(environ, start_response)

    run_simple(host, port, serialized, threaded=True)


if __name__ == "__main__":
    main()
