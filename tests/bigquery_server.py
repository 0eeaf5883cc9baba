"""A local stand-in for BigQuery's REST API (the subset covidxray.backends.bigquery uses), backed by SQLite.

It speaks the official client's wire protocol: datasets insert/get, tables insert/get/patch,
tabledata insertAll (insertId de-duplication) and list, jobs insert/get/query and getQueryResults.
Only the SQL shapes our module issues are parsed; anything else gets a BigQuery-style error.
Rows younger than `buffer_seconds` are in the streaming buffer, which DML refuses, as BigQuery does.
"""

from __future__ import annotations

import json
import operator
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

Row = dict[str, Any]
STATUS = {
    400: "INVALID_ARGUMENT",
    500: "INTERNAL",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
}
CASTS: dict[str, type] = {"STRING": str, "INTEGER": int, "INT64": int, "FLOAT": float, "FLOAT64": float}
OPS = {
    "=": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    ">": operator.gt,
}
SELECT = re.compile(
    r"SELECT (?:\*|COUNT\(\*\) AS (?P<alias>\w+)) FROM `(?P<table>[\w.-]+)`(?: WHERE (?P<where>.+?))?"
    r"(?: ORDER BY (?P<order>\w+)(?: (?P<dir>ASC|DESC))?)?(?: LIMIT (?P<limit>\d+|@\w+))?"
)
DELETE = re.compile(r"DELETE FROM `(?P<table>[\w.-]+)` WHERE (?P<where>.+)")
COMPARE = re.compile(r"(\w+) (=|!=|>=|<=|<|>) @(\w+)")
EITHER = re.compile(r"\((\w+ = @\w+(?: OR \w+ = @\w+)+)\)")
UNNEST = re.compile(r"(\w+) (NOT )?IN UNNEST\(@(\w+)\)")
VIEW = re.compile(
    r"SELECT \* EXCEPT \(_n\) FROM \(SELECT \*, ROW_NUMBER\(\) OVER \(PARTITION BY (?P<cols>\w+(?:, \w+)*)\)"
    r" AS _n FROM `(?P<table>[\w.-]+)`\) WHERE _n = 1"
)


class ApiError(Exception):
    """An error answered in BigQuery's JSON shape."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def bad_query(message: str) -> ApiError:
    """The error BigQuery gives a query it cannot run."""
    return ApiError(400, "invalidQuery", message)


def to_micros(value: Any) -> int:
    """A TIMESTAMP (seconds since the epoch, or canonical text) as microseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(value * 1_000_000)
    if re.fullmatch(r"-?\d+(\.\d*)?([eE][-+]?\d+)?", value):
        return round(float(value) * 1_000_000)
    at = datetime.fromisoformat(value.replace(" UTC", "+00:00").replace("Z", "+00:00"))
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return round(at.timestamp() * 1_000_000)


def check_row(fields: list[Row], row: Any, where: str = "") -> Row:
    """The row with values normalized (timestamps as microseconds), or ValueError worded as BigQuery does."""
    if not isinstance(row, dict):
        raise ValueError(f"Repeated record or record expected: {where}")
    known = {f["name"]: f for f in fields}
    for name in row:
        if name not in known:
            raise ValueError(f"no such field: {where}{name}.")
    out: Row = {}
    for name, field in known.items():
        value, mode, at = row.get(name), field.get("mode", "NULLABLE"), f"{where}{name}"
        if value is None and mode == "REQUIRED":
            raise ValueError(f"Missing required field: {at}.")
        if mode == "REPEATED":
            if not isinstance(value, list | None):
                raise ValueError(f"Array specified for non-repeated field: {at}.")
            out[name] = [_value(field, v, at) for v in value or []]
        else:
            out[name] = None if value is None else _value(field, value, at)
    return out


def _value(field: Row, value: Any, at: str) -> Any:
    kind = field["type"]
    if kind in ("RECORD", "STRUCT"):
        return check_row(field["fields"], value, f"{at}.")
    try:
        if kind == "TIMESTAMP":
            return to_micros(value)
        if CASTS[kind] is str and not isinstance(value, str):
            raise TypeError
        return CASTS[kind](value)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"Cannot convert value to {kind.lower()}: {at}.") from exc


def encode(field: Row, value: Any, int64_ts: bool) -> Any:
    """A value in the f/v row format of the REST API."""
    if value is None:
        return None
    if field.get("mode") == "REPEATED":
        return [{"v": encode({**field, "mode": "NULLABLE"}, v, int64_ts)} for v in value]
    if field["type"] in ("RECORD", "STRUCT"):
        return {"f": [{"v": encode(f, value.get(f["name"]), int64_ts)} for f in field["fields"]]}
    if field["type"] == "TIMESTAMP":
        return str(value) if int64_ts else repr(value / 1e6)
    return str(value)


def _param(spec: Row, value: Row) -> Any:
    kind = spec["type"]
    if kind == "ARRAY":
        return [_param(spec["arrayType"], item) for item in value.get("arrayValues", [])]
    raw = value.get("value")
    if raw is None or kind not in (*CASTS, "TIMESTAMP"):
        raise bad_query(f"Query parameter of type {kind} is not supported by the test server")
    return to_micros(raw) if kind == "TIMESTAMP" else CASTS[kind](raw)


class Store:
    """Tables, rows and jobs in one SQLite file, so that a restarted server keeps its data."""

    def __init__(self, path: Path, buffer_seconds: float, dedup_seconds: float):
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS objects (path TEXT PRIMARY KEY, body TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS rows (seq INTEGER PRIMARY KEY, path TEXT, at REAL, row TEXT);"
            "CREATE TABLE IF NOT EXISTS seen (path TEXT, insert_id TEXT, at REAL,"
            " PRIMARY KEY (path, insert_id));"
        )
        self.lock = threading.Lock()
        self.buffer_seconds, self.dedup_seconds = buffer_seconds, dedup_seconds
        self.statements: list[tuple[str, dict[str, Any]]] = []  # what queries ran, for tests

    def get(self, path: str, what: str = "Table") -> Row:
        found = self.db.execute("SELECT body FROM objects WHERE path = ?", (path,)).fetchone()
        if found is None:
            raise ApiError(
                404, "notFound", f"Not found: {what} {path.replace('/', ':', 1).replace('/', '.')}"
            )
        return json.loads(found[0])  # type: ignore[no-any-return]

    def put(self, path: str, body: Row, create: bool = False) -> Row:
        body["etag"] = uuid.uuid4().hex[:16]
        try:
            self.db.execute(
                f"{'INSERT' if create else 'REPLACE'} INTO objects VALUES (?, ?)", (path, json.dumps(body))
            )
        except sqlite3.IntegrityError as exc:
            raise ApiError(409, "duplicate", f"Already Exists: {path.replace('/', ':', 1)}") from exc
        return body

    def rows(self, path: str) -> list[tuple[int, float, Row]]:
        found = self.db.execute("SELECT seq, at, row FROM rows WHERE path = ? ORDER BY seq", (path,))
        return [(seq, at, json.loads(row)) for seq, at, row in found]

    def insert(self, path: str, rows: list[tuple[str | None, Row]]) -> None:
        now = time.time()
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM seen WHERE at < ?", (now - self.dedup_seconds,))
        for insert_id, row in rows:
            seen = "SELECT 1 FROM seen WHERE path = ? AND insert_id = ?"
            if insert_id and self.db.execute(seen, (path, insert_id)).fetchone():
                continue  # best-effort de-duplication within a window, as BigQuery does
            if insert_id:
                self.db.execute("INSERT INTO seen VALUES (?, ?, ?)", (path, insert_id, now))
            self.db.execute("INSERT INTO rows (path, at, row) VALUES (?, ?, ?)", (path, now, json.dumps(row)))
        self.db.execute("COMMIT")

    def resolve(self, name: str) -> tuple[Row, list[tuple[int, float, Row]]]:
        """The table (or view) `project.dataset.table` and its rows (a view's: de-duplicated)."""
        table = self.get(name.replace(".", "/"))
        if "view" not in table:
            return table, self.rows(name.replace(".", "/"))
        view = VIEW.fullmatch(table["view"]["query"])
        assert view is not None  # checked when the view was created
        base, rows = self.resolve(view["table"])
        firsts: dict[tuple[Any, ...], tuple[int, float, Row]] = {}
        for item in rows:
            firsts.setdefault(tuple(item[2][c] for c in view["cols"].split(", ")), item)
        return {**table, "schema": base["schema"]}, sorted(firsts.values(), key=lambda item: item[0])

    def run(self, sql: str, parameters: list[Row]) -> tuple[list[Row], list[Row], int | None]:
        """Run one statement: (result schema, result rows, DML affected rows or None)."""
        sql = " ".join(sql.split())
        params = {p["name"]: _param(p["parameterType"], p["parameterValue"]) for p in parameters}
        self.statements.append((sql, params))
        shape = SELECT.fullmatch(sql) or DELETE.fullmatch(sql)
        if shape is None:
            raise bad_query("Syntax error: this statement's shape is not one the test server parses")
        table, rows = self.resolve(shape["table"])
        fields = table["schema"]["fields"]
        keep = _where(shape["where"], params, {f["name"] for f in fields})
        chosen = [item for item in rows if keep(item[2])]
        if shape.re is DELETE:
            if "view" in table:
                raise bad_query("DML statements are not supported over views")
            if any(at > time.time() - self.buffer_seconds for _, at, _ in chosen):
                raise bad_query(
                    f"UPDATE or DELETE statement over table {shape['table']} would affect rows in the "
                    "streaming buffer, which is not supported"
                )
            self.db.executemany("DELETE FROM rows WHERE seq = ?", [(seq,) for seq, _, _ in chosen])
            return [], [], len(chosen)
        if shape["alias"]:
            return (
                [{"name": shape["alias"], "type": "INTEGER", "mode": "NULLABLE"}],
                [{shape["alias"]: len(chosen)}],
                None,
            )
        result = [row for _, _, row in chosen]
        if shape["order"]:
            present = [r for r in result if r[shape["order"]] is not None]
            absent = [r for r in result if r[shape["order"]] is None]
            present.sort(key=lambda r: r[shape["order"]], reverse=shape["dir"] == "DESC")
            result = present + absent
        if shape["limit"]:
            limit = shape["limit"]
            result = result[: int(params[limit[1:]]) if limit.startswith("@") else int(limit)]
        return fields, result, None


def _where(text: str | None, params: dict[str, Any], columns: set[str]) -> Callable[[Row], bool]:
    """A predicate for a conjunction of the condition shapes our module writes."""
    tests: list[Callable[[Row], bool]] = []

    def value(name: str) -> Any:
        if name not in params:
            raise bad_query(f"Query parameter '{name}' not found")
        return params[name]

    def column(name: str) -> str:
        if name not in columns:
            raise bad_query(f"Unrecognized name: {name}")
        return name

    for part in text.split(" AND ") if text else []:
        if m := COMPARE.fullmatch(part):
            col, op, val = column(m[1]), OPS[m[2]], value(m[3])
            tests.append(lambda r, col=col, op=op, val=val: r[col] is not None and op(r[col], val))
        elif m := EITHER.fullmatch(part):
            pairs = [(column(c), value(p)) for c, p in re.findall(r"(\w+) = @(\w+)", m[1])]
            tests.append(lambda r, pairs=pairs: any(r[c] == v for c, v in pairs))
        elif m := UNNEST.fullmatch(part):
            col, negate, vals = column(m[1]), bool(m[2]), set(value(m[3]))
            tests.append(lambda r, col=col, negate=negate, vals=vals: (r[col] in vals) != negate)
        else:
            raise bad_query("Syntax error: this condition's shape is not one the test server parses")
    return lambda row: all(test(row) for test in tests)


class Api:
    """One method per REST call: (arguments) -> (HTTP status, JSON body)."""

    TABLE_KEYS = {"tableReference", "schema", "timePartitioning", "clustering", "view", "labels"}

    def __init__(self, store: Store):
        self.store = store

    def datasets_insert(self, p: str, body: Row, args: Row) -> Row:
        d = body["datasetReference"]["datasetId"]
        resource = {
            "kind": "bigquery#dataset",
            "id": f"{p}:{d}",
            "datasetReference": {"projectId": p, "datasetId": d},
        }
        return self.store.put(f"{p}/{d}", {**resource, "location": body.get("location") or "US"}, create=True)

    def datasets_get(self, p: str, d: str, body: Row, args: Row) -> Row:
        return self.store.get(f"{p}/{d}", "Dataset")

    def tables_insert(self, p: str, d: str, body: Row, args: Row) -> Row:
        self.store.get(f"{p}/{d}", "Dataset")
        unknown = set(body) - self.TABLE_KEYS
        if unknown:
            raise ApiError(
                400, "invalid", f"Table fields {sorted(unknown)} are not supported by the test server"
            )
        t = body["tableReference"]["tableId"]
        resource = {"kind": "bigquery#table", "id": f"{p}:{d}.{t}", **body, "type": "TABLE"}
        if "view" in body:
            view = VIEW.fullmatch(" ".join(body["view"].get("query", "").split()))
            if view is None or body["view"].get("useLegacySql", True):
                raise bad_query("Syntax error: this view's query is not one the test server parses")
            base = self.store.get(view["table"].replace(".", "/"))
            resource.update(type="VIEW", schema=base["schema"])
        fields = {f["name"]: f for f in resource.get("schema", {}).get("fields", [])}
        partition = body.get("timePartitioning")
        if partition and (
            partition.get("type") != "DAY"
            or fields.get(partition.get("field"), {}).get("type") not in ("TIMESTAMP", "DATE")
        ):
            raise ApiError(
                400,
                "invalid",
                "The field specified for time partitioning can only be of type TIMESTAMP or DATE",
            )
        if any(name not in fields for name in (body.get("clustering") or {}).get("fields", [])):
            raise ApiError(400, "invalid", "The field specified for clustering cannot be found in the schema")
        return self.store.put(f"{p}/{d}/{t}", resource, create=True)

    def tables_get(self, p: str, d: str, t: str, body: Row, args: Row) -> Row:
        return self.store.get(f"{p}/{d}/{t}")

    def tables_patch(self, p: str, d: str, t: str, body: Row, args: Row, if_match: str | None = None) -> Row:
        table = self.store.get(f"{p}/{d}/{t}")
        if if_match and if_match != table["etag"]:
            raise ApiError(412, "conditionNotMet", "Precondition check failed.")
        if set(body) - {"schema", "view", "etag"}:
            raise ApiError(400, "invalid", "Only schema and view patches are supported by the test server")
        if "schema" in body:
            old = {f["name"]: f for f in table["schema"]["fields"]}
            new = {f["name"]: f for f in body["schema"]["fields"]}
            changed = [n for n in old if n not in new or _norm(new[n]) != _norm(old[n])]
            required = [n for n in new if n not in old and new[n].get("mode") == "REQUIRED"]
            if changed or required:
                raise ApiError(400, "invalid", f"Provided Schema does not match Table {p}:{d}.{t}.")
            table["schema"] = body["schema"]
        if "view" in body:
            if "view" not in table or VIEW.fullmatch(" ".join(body["view"].get("query", "").split())) is None:
                raise bad_query("Syntax error: this view's query is not one the test server parses")
            table["view"] = body["view"]
        return self.store.put(f"{p}/{d}/{t}", table)

    def insert_all(self, p: str, d: str, t: str, body: Row, args: Row) -> Row:
        table = self.store.get(f"{p}/{d}/{t}")
        if "view" in table or set(body) - {"rows", "kind"}:
            raise ApiError(400, "invalid", "insertAll into a view, or with options, is not supported here")
        checked, errors = [], []
        for index, item in enumerate(body.get("rows", [])):
            try:
                checked.append((item.get("insertId"), check_row(table["schema"]["fields"], item.get("json"))))
            except ValueError as exc:
                errors.append(
                    {"index": index, "errors": [{"reason": "invalid", "location": "", "message": str(exc)}]}
                )
        if errors:  # the whole request fails; the good rows are "stopped"
            bad = {e["index"] for e in errors}
            stopped = [
                {"index": i, "errors": [{"reason": "stopped", "message": ""}]}
                for i in range(len(checked) + len(bad))
                if i not in bad
            ]
            return {
                "kind": "bigquery#tableDataInsertAllResponse",
                "insertErrors": sorted(errors + stopped, key=lambda e: e["index"]),
            }
        self.store.insert(f"{p}/{d}/{t}", checked)
        return {"kind": "bigquery#tableDataInsertAllResponse"}

    def tabledata_list(self, p: str, d: str, t: str, body: Row, args: Row) -> Row:
        table, rows = self.store.resolve(f"{p}.{d}.{t}")
        page = self._page(table["schema"]["fields"], [r for _, _, r in rows], args)
        return {"kind": "bigquery#tableDataList", **page}

    def jobs_query(self, p: str, body: Row, args: Row) -> Row:
        job = self._run(
            p, {"jobReference": {"projectId": p, "jobId": uuid.uuid4().hex}, "configuration": {"query": body}}
        )
        int64 = body.get("formatOptions", {}).get("useInt64Timestamp", False)
        return self._results(job, {"formatOptions.useInt64Timestamp": str(int64).lower(), **args})

    def jobs_insert(self, p: str, body: Row, args: Row) -> Row:
        return self._run(p, body)["job"]

    def jobs_get(self, p: str, j: str, body: Row, args: Row) -> Row:
        return self.store.get(f"jobs/{p}/{j}", "Job")["job"]  # type: ignore[no-any-return]

    def query_results(self, p: str, j: str, body: Row, args: Row) -> Row:
        return self._results(self.store.get(f"jobs/{p}/{j}", "Job"), args)

    def _run(self, p: str, body: Row) -> Row:
        config = body.get("configuration", {}).get("query")
        if (
            config is None
            or config.get("useLegacySql", True)
            or config.get("parameterMode", "NAMED") != "NAMED"
        ):
            raise ApiError(
                400, "invalid", "Only standard SQL query jobs with named parameters are supported here"
            )
        fields, rows, affected = self.store.run(config["query"], config.get("queryParameters", []))
        ref = {
            "projectId": p,
            "jobId": body.get("jobReference", {}).get("jobId") or uuid.uuid4().hex,
            "location": "US",
        }
        stats: Row = {"statementType": "SELECT" if affected is None else "DELETE"}
        if affected is not None:
            stats["numDmlAffectedRows"] = str(affected)
        now = str(int(time.time() * 1000))
        job = {
            "kind": "bigquery#job",
            "id": f"{p}:US.{ref['jobId']}",
            "jobReference": ref,
            "configuration": {"query": config, "jobType": "QUERY"},
            "status": {"state": "DONE"},
            "statistics": {"creationTime": now, "startTime": now, "endTime": now, "query": stats},
        }
        return self.store.put(
            f"jobs/{p}/{ref['jobId']}",
            {"job": job, "fields": fields, "rows": rows, "affected": affected},
            create=True,
        )

    def _results(self, stored: Row, args: Row) -> Row:
        job = stored["job"]
        answer: Row = {
            "kind": "bigquery#getQueryResultsResponse",
            "jobReference": job["jobReference"],
            "jobComplete": True,
        }
        answer.update(self._page(stored["fields"], stored["rows"], args))
        if stored["affected"] is not None:
            answer["numDmlAffectedRows"] = str(stored["affected"])
        return answer

    def _page(self, fields: list[Row], rows: list[Row], args: Row) -> Row:
        start = int(args.get("pageToken") or args.get("startIndex") or 0)
        size = int(args["maxResults"]) if "maxResults" in args else len(rows)
        int64 = str(args.get("formatOptions.useInt64Timestamp")).lower() == "true"
        page = {"schema": {"fields": fields}, "totalRows": str(len(rows))}
        page["rows"] = [
            {"f": [{"v": encode(f, row[f["name"]], int64)} for f in fields]}
            for row in rows[start : start + size]
        ]
        if start + size < len(rows):
            page["pageToken"] = str(start + size)
        return page


def _norm(field: Row) -> tuple[Any, ...]:
    kind = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "STRUCT": "RECORD"}.get(field["type"], field["type"])
    return (
        field["name"],
        kind,
        field.get("mode") or "NULLABLE",
        tuple(_norm(f) for f in field.get("fields", [])),
    )


ROUTES = [
    ("POST", "/datasets", "datasets_insert"),
    ("GET", "/datasets/(?P<d>[^/]+)", "datasets_get"),
    ("POST", "/datasets/(?P<d>[^/]+)/tables", "tables_insert"),
    ("GET", "/datasets/(?P<d>[^/]+)/tables/(?P<t>[^/]+)", "tables_get"),
    ("PATCH", "/datasets/(?P<d>[^/]+)/tables/(?P<t>[^/]+)", "tables_patch"),
    ("POST", "/datasets/(?P<d>[^/]+)/tables/(?P<t>[^/]+)/insertAll", "insert_all"),
    ("GET", "/datasets/(?P<d>[^/]+)/tables/(?P<t>[^/]+)/data", "tabledata_list"),
    ("POST", "/queries", "jobs_query"),
    ("POST", "/jobs", "jobs_insert"),
    ("GET", "/jobs/(?P<j>[^/]+)", "jobs_get"),
    ("GET", "/queries/(?P<j>[^/]+)", "query_results"),
]


class Handler(BaseHTTPRequestHandler):
    """Routes each request to the Api, under the store's lock."""

    server: BigQueryServer
    protocol_version = "HTTP/1.0"  # one request per connection: a stopped server answers nothing more

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        url = urlparse(self.path)
        args = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            for verb, pattern, name in ROUTES:
                found = re.fullmatch("/bigquery/v2/projects/(?P<p>[^/]+)" + pattern, url.path)
                if found and verb == method:
                    extra = {"if_match": self.headers.get("If-Match")} if name == "tables_patch" else {}
                    with self.server.store.lock:
                        if self.server.closed:
                            return  # stopped while this request waited: drop it, as a dead server would
                        status, answer = (
                            200,
                            getattr(self.server.api, name)(
                                body=body, args=args, **found.groupdict(), **extra
                            ),
                        )
                    break
            else:
                raise ApiError(
                    404, "notFound", f"Not found: {method} {url.path} is not served by the test server"
                )
        except ApiError as exc:
            detail = {"message": exc.message, "domain": "global", "reason": exc.reason}
            status, answer = (
                exc.code,
                {
                    "error": {
                        "code": exc.code,
                        "message": exc.message,
                        "errors": [detail],
                        "status": STATUS[exc.code],
                    }
                },
            )
        except Exception as exc:  # a malformed request (or a bug here): answered, never a dropped connection
            detail = {"message": f"Invalid request: {exc!r}", "domain": "global", "reason": "invalid"}
            status, answer = (
                400,
                {
                    "error": {
                        "code": 400,
                        "message": detail["message"],
                        "errors": [detail],
                        "status": STATUS[400],
                    }
                },
            )
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class BigQueryServer(ThreadingHTTPServer):
    """The stand-in on 127.0.0.1:`port` (0: a free one); `url` is the client's api_endpoint."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: Path, port: int = 0, buffer_seconds: float = 0.0, dedup_seconds: float = 600.0):
        super().__init__(("127.0.0.1", port), Handler)
        self.store = Store(path, buffer_seconds, dedup_seconds)
        self.closed = False
        self.api = Api(self.store)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(
            target=self.serve_forever, args=(0.05,), name="bigquery-stand-in", daemon=True
        )

    def start(self) -> BigQueryServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections' answers and release the port."""
        self.shutdown()
        self.server_close()
        with self.store.lock:
            self.closed = True
            self.store.db.close()
