"""moto_server, with DynamoDB requests applied one at a time.

Usage: python3 tests/moto_server.py HOST PORT
(MOTO_TRACE=FILE appends each DynamoDB request's operation and time to FILE.
MOTO_HISTORY=FILE appends each DynamoDB write request, whole, with whether it
committed, as one JSON line, in the order the table applied them: the history
the tests' checker replays.)

moto applies a DynamoDB request in steps and undoes a failed transaction by
restoring a copy of the whole table taken when it began. Two requests at once
can therefore see each other half done, or one can wipe out the writes the
other just made. DynamoDB serializes them, and the agent's exactly-once
decisions rely on that, so here DynamoDB requests take one lock. The other
services stay concurrent: an SQS long poll must not hold up the rest.

Copying the whole table also makes each transaction cost time in proportion
to the table (hundreds of milliseconds at a few hundred items), which would
make the tests' deadlines and the benchmark measure moto. With requests
serialized, saving just the items a transaction touches undoes it as well,
so that is done instead (when this moto's internals are as expected).
"""

import copy
import io
import json
import os
import sys
import threading
import time

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    create_backend_app,
)
from werkzeug.serving import run_simple


class _CopyShim:
    """`copy` as moto's DynamoDB backend sees it: no table copies while a
    transaction runs under `_undo_by_item` (which saves items instead)."""

    skip_tables = False
    table_type = None

    def deepcopy(self, value, memo=None):
        if self.skip_tables and isinstance(value, self.table_type):
            return value
        return copy.deepcopy(value, memo)

    def __getattr__(self, name):
        return getattr(copy, name)


def _undo_by_item() -> None:
    try:
        import moto.dynamodb.models as models
        from moto.dynamodb.models.dynamo_type import DynamoType
        from moto.dynamodb.models.table import Table

        backend = models.DynamoDBBackend
        original = backend.transact_write_items
    except (ImportError, AttributeError):
        return  # another moto: keep its own (slow, correct when serialized)
    shim = _CopyShim()
    shim.table_type = Table
    models.copy = shim

    def transact_write_items(self, transact_items):
        saved = []
        try:
            for entry in transact_items:
                _, op = next(iter(entry.items()))
                table = self.get_table(op["TableName"])
                attrs = op.get("Item") or op["Key"]
                h = DynamoType(attrs[table.hash_key_attr])
                r = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
                saved.append((table, h, r, copy.deepcopy(table.get_item(h, r))))
        except Exception:
            # Malformed: moto's own checks answer it, copying as it does.
            return original(self, transact_items)
        shim.skip_tables = True
        try:
            return original(self, transact_items)
        except Exception:
            for table, h, r, item in reversed(saved):
                table.delete_item(h, r)
                if item is not None and r is not None:
                    table.items[h][r] = item
                elif item is not None:
                    table.items[h] = item
            raise
        finally:
            shim.skip_tables = False

    backend.transact_write_items = transact_write_items


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    _undo_by_item()
    app = DomainDispatcherApplication(create_backend_app)
    dynamodb = threading.Lock()
    trace = os.environ.get("MOTO_TRACE")
    history = os.environ.get("MOTO_HISTORY")
    writes = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
    seq = [0]

    def serialized(environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_"):
            op = target.split(".")[-1]
            request = None
            if history and op in writes:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                raw = environ["wsgi.input"].read(length)
                environ["wsgi.input"] = io.BytesIO(raw)
                request = raw
            status = []

            def recording_start_response(s, headers, *rest):
                status.append(s)
                return start_response(s, headers, *rest)

            with dynamodb:
                started = time.monotonic()
                # The whole response is built inside the lock.
                body = list(app(environ, recording_start_response))
                ms = (time.monotonic() - started) * 1000
                if request is not None:
                    seq[0] += 1
                    line = {
                        "seq": seq[0],
                        "ms": int(time.time() * 1000),
                        "op": op,
                        "ok": bool(status) and status[0].startswith("200"),
                        "request": json.loads(request or b"{}"),
                    }
                    with open(history, "a") as f:
                        f.write(json.dumps(line) + "\n")
            if trace:
                with open(trace, "a") as f:
                    f.write(f"{target.split('.')[-1]} {ms:.1f}\n")
            return body
        return app(environ, start_response)

    run_simple(host, port, serialized, threaded=True)


if __name__ == "__main__":
    main()
