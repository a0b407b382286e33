"""Python: the app's types and a typed ``httpx`` client, as one module (``--format python``).

The module needs Python 3.11 and ``httpx``, and passes ``mypy --strict`` and
``ruff``. It declares a ``TypedDict`` per model (and ``<Model>WithRelations``
when ``include`` can embed documents in it), per endpoint a ``<Name>Params``
``TypedDict`` and a ``<Name>Result`` alias (``Page[...]`` or
``ValueResult[...]``), and two clients with one method per endpoint:
``DocraftClient`` (blocking) and ``AsyncDocraftClient`` (asyncio). A method
takes the endpoint's parameters as keyword arguments typed by its
``<Name>Params`` (``**params: Unpack[...]``, so a parameter left out takes the
server's default), plus ``consistency``, ``include`` and ``explain`` on reads
and ``idempotency_key`` on mutations.

The calling rules are the TypeScript client's (``query.schema.typescript``): a
JSON body when the endpoint accepts POST, a query string otherwise (lists
comma-joined); one ``Idempotency-Key`` per mutation call, the same on each of
its attempts; retries after 408, 429, 503 (``no_leader``, ...) or 504
(``outcome_unknown``) or when no answer came, waiting the answer's
``Retry-After`` (or its error's ``details.retry_after``) or a backoff, capped;
and every failure raised as one exception, ``DocraftError``, carrying the
docraft error ``code``, ``status``, ``message`` and ``details``. ``pages``
follows a query's ``next`` to its last page.

The fixed part of the module is the template ``_RUNTIME`` (and the clients'
heads); this module adds what depends on the app.
"""

from __future__ import annotations

import ast
import builtins
import json
import textwrap
from collections.abc import Iterable

from models.errors import ERROR_CLASSES
from models.model import Model
from query.app import App
from query.endpoints import CONSISTENCY_LEVELS, Endpoint
from query.schema.declarations import client_method, field_doc, model_doc, param_doc
from query.schema.shapes import (
    AnyOf,
    Array,
    Basic,
    Document,
    Key,
    MapOf,
    Nullable,
    PageOf,
    Shape,
    Unknown,
    pascal_case,
    result_shape,
    shape_of_type,
)

_WIDTH = 120  # the generated module's line length, as ruff checks it
_BASIC = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}
_MUTATION_OPTION = "idempotency_key"


def python_client(app: App) -> str:
    """The Python client module for ``app``.

    Raises ``ValueError`` when a generated name would clash: a model named
    like a generated or runtime name (``Page``, ``GetUserParams``, ``httpx``),
    an endpoint named like a client method (``pages``, ``close``, or private
    with a leading ``_``), or a mutation parameter named ``idempotency_key``.
    """
    _check_names(app)
    head = "\n\n".join([_module_doc(app), _imports(app).strip("\n"), _literals()])  # imports: one blank line each side
    parts = [
        head,
        _RUNTIME,
        *(_model(model) for model in app.models.values()),
        *(_endpoint_types(endpoint) for endpoint in app.endpoints.values()),
        _paged(app),
        _client(app, asynchronous=False),
        _client(app, asynchronous=True),
    ]
    return "\n\n\n".join(part.strip("\n") for part in parts) + "\n"


def annotation(shape: Shape) -> str:
    """``shape`` as a Python type expression, e.g. ``list[str | None]``."""
    if isinstance(shape, Basic):
        return _BASIC[shape.kind]
    if isinstance(shape, Unknown):
        return "Any"
    if isinstance(shape, Array):
        return f"list[{annotation(shape.item)}]"
    if isinstance(shape, MapOf):
        return f"dict[str, {annotation(shape.value)}]"
    if isinstance(shape, Nullable):
        return f"{annotation(shape.inner)} | None"
    if isinstance(shape, AnyOf):
        return " | ".join(annotation(option) for option in shape.options)
    if isinstance(shape, Document):
        return shape.model.name
    if isinstance(shape, Key):
        return annotation(shape.key)
    if isinstance(shape, PageOf):
        return f"Page[{_document_type(shape.model)}]"
    raise TypeError(f"unknown shape {shape!r}")


def docstring(text: str, indent: str = "") -> list[str]:
    """``text`` as the lines of a docstring at ``indent``, long lines wrapped to the module's width; none when
    ``text`` is empty."""
    if not text:
        return []
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if text.endswith('"'):
        text = text[:-1] + '\\"'
    width = _WIDTH - len(indent) - 3  # room for the opening quotes
    lines = [part for line in text.splitlines() for part in ([line] if len(line) <= width else _wrap(line, width))]
    if len(lines) == 1 and len(lines[0]) + 3 <= width:
        return [f'{indent}"""{lines[0]}"""']
    return [f'{indent}"""{lines[0]}', *(f"{indent}{line}".rstrip() for line in lines[1:]), f'{indent}"""']


def _wrap(line: str, width: int) -> list[str]:
    """A line too long for ``width`` as lines that fit, its indentation kept on each."""
    indent = line[: len(line) - len(line.lstrip())]
    return textwrap.wrap(line, width, initial_indent=indent, subsequent_indent=indent) or [line]


# -- what depends on the app -----------------------------------------------------------------------


def _module_doc(app: App) -> str:
    doc = (
        f"Generated by `docraft schema --app {app.module} --format python`. Do not edit; regenerate.\n\n"
        f"A typed client of the endpoints of `{app.module}`: `DocraftClient` (blocking) and "
        "`AsyncDocraftClient` (asyncio), one method per endpoint; a `TypedDict` per model, per endpoint's "
        "parameters, and an alias per endpoint's result. It needs Python 3.11 or later and `httpx`."
    )
    return "\n".join(docstring(doc))


def _literals() -> str:
    lines = [
        f"Consistency: TypeAlias = Literal[{', '.join(map(json.dumps, CONSISTENCY_LEVELS))}]",
        *docstring("How fresh a read must be: any replica (`stale`), the leader, or the leader after a Raft round."),
        "ErrorCode: TypeAlias = Literal[",
        *(f"    {json.dumps(code)}," for code in ERROR_CLASSES),
        "]",
        *docstring("Every error code docraft answers with (`DocraftError.code`)."),
    ]
    return "\n".join(lines)


def _typed_dict(name: str, doc: str, fields: Iterable[tuple[str, str, str]], base: str = "TypedDict") -> str:
    """``class name(base)`` with ``fields`` as (name, annotation, doc)."""
    lines = [f"class {name}({base}):", *docstring(doc, "    ")]
    body = [line for field, kind, about in fields for line in [f"    {field}: {kind}", *docstring(about, "    ")]]
    return "\n".join(lines + (["", *body] if body else [])) + "\n"


def _model(model: type[Model]) -> str:
    fields = [
        (spec.name, annotation(shape_of_type(spec.type)), field_doc(model, spec, repr))
        for spec in model.fields.values()
    ]
    declared = _typed_dict(model.name, model_doc(model), fields)
    if not model.relations:
        return declared
    embedded = [
        (
            name,
            f"list[{relation.model.name}]",
            f"`{relation.model.name}` documents whose `{relation.field}` references this one; present with "
            f"`include=[{json.dumps(name)}]`.",
        )
        for name, relation in model.relations.items()
    ]
    doc = f"A `{model.name}` with what `include` may embed in it."
    return declared + "\n\n" + _typed_dict(_with_relations(model), doc, embedded, f"{model.name}, total=False")


def _endpoint_types(endpoint: Endpoint) -> str:
    method = client_method(endpoint)
    params = []
    for param in endpoint.params.values():
        kind = annotation(shape_of_type(param.type))
        about = param_doc(endpoint, param.name, repr)
        params.append((param.name, kind if param.required else f"NotRequired[{kind}]", about))
    shape = result_shape(endpoint)
    result = annotation(shape) if isinstance(shape, PageOf) else f"ValueResult[{annotation(shape)}]"
    lines = [
        _typed_dict(method.params_type, f"Parameters of `{endpoint.name}`.", params),
        "",
        f"{method.result_type}: TypeAlias = {result}",
        *docstring(f"What `{endpoint.name}` answers."),
    ]
    return "\n".join(lines)


def _paged(app: App) -> str:
    names = ", ".join(json.dumps(e.name) for e in app.endpoints.values() if e.takes_cursor)
    return f"_PAGED: frozenset[str] = frozenset({{{names}}})" if names else "_PAGED: frozenset[str] = frozenset()"


def _client(app: App, asynchronous: bool) -> str:
    head = _ASYNC_CLIENT if asynchronous else _SYNC_CLIENT
    methods = [_method(endpoint, asynchronous) for endpoint in app.endpoints.values()]
    return "\n\n".join([head.replace("{app}", app.module).rstrip("\n"), *methods])


def _method(endpoint: Endpoint, asynchronous: bool) -> str:
    method = client_method(endpoint)
    if method.read:
        options = ["consistency: Consistency | None = None"]
        relations = _relations_of(endpoint)
        if relations:
            options.append(f"include: Sequence[Literal[{', '.join(map(json.dumps, relations))}]] = ()")
        options.append("explain: bool = False")
        include = "include" if relations else "()"
        call = f'_read("{endpoint.name}", "{method.http_method}", params, consistency, {include}, explain)'
    else:
        options = [f"{_MUTATION_OPTION}: str | None = None"]
        call = f'_write("{endpoint.name}", "{method.http_method}", params, {_MUTATION_OPTION})'
    arguments = ["self", "*", *options, f"**params: Unpack[{method.params_type}]"]
    define, wait = ("async def", "await ") if asynchronous else ("def", "")
    lines = [
        f"    {define} {endpoint.name}(",
        *(f"        {argument}," for argument in arguments),
        f"    ) -> {method.result_type}:",
        *docstring(method.doc, "        "),
        f"        call = {call}",
        f"        return cast({method.result_type}, {wait}self._send(call))",
    ]
    return "\n".join(lines)


def _relations_of(endpoint: Endpoint) -> list[str]:
    """The relation names ``include`` may name for ``endpoint``: those of the model it answers pages of."""
    shape = result_shape(endpoint)
    return list(shape.model.relations) if isinstance(shape, PageOf) and shape.model is not None else []


def _document_type(model: type[Model] | None) -> str:
    if model is None:
        return "dict[str, Any]"
    return _with_relations(model) if model.relations else model.name


def _with_relations(model: type[Model]) -> str:
    return f"{model.name}WithRelations"


def _check_names(app: App) -> None:
    generated = list(_RUNTIME_NAMES)
    for model in app.models.values():
        generated += [model.name, _with_relations(model)] if model.relations else [model.name]
    for endpoint in app.endpoints.values():
        stem = pascal_case(endpoint.name)
        generated += [f"{stem}Params", f"{stem}Result"]
    clashes = sorted({name for name in generated if generated.count(name) > 1})
    if clashes:
        raise ValueError(f"python export: more than one name would be {', '.join(clashes)}; rename the model")
    # A method named like a builtin or a module-level name would shadow it in the annotations of the class body.
    taken = _CLIENT_ATTRIBUTES | set(generated) | set(vars(builtins))
    for endpoint in app.endpoints.values():
        if endpoint.name in taken or endpoint.name.startswith("_"):
            raise ValueError(f"python export: an endpoint named {endpoint.name!r} cannot be a client method")
        # A read's own options (consistency, include, explain) are names no endpoint may take (RESERVED_PARAMS).
        own = {"self", _MUTATION_OPTION} if endpoint.kind == "mutation" else {"self"}
        clashing = sorted(own & set(endpoint.params))
        if clashing:
            raise ValueError(f"python export: {endpoint.name}: parameter {clashing[0]!r} is a name the method takes")


# -- the fixed part of the module ------------------------------------------------------------------


def _imports(app: App) -> str:
    """The module's imports; ``Unpack`` and ``cast`` only where a method uses them (ruff refuses unused ones)."""
    names = _TYPING_NAMES if app.endpoints else [name for name in _TYPING_NAMES if name not in ("Unpack", "cast")]
    return _IMPORTS.replace("{typing}", ", ".join(names))


_TYPING_NAMES = ["Any", "Generic", "Literal", "NotRequired", "ParamSpec", "Self", "TypeAlias", "TypedDict"]
_TYPING_NAMES += ["TypeVar", "Unpack", "cast"]


_IMPORTS = """\
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import {typing}

import httpx
"""

_RUNTIME = '''\
NoAnswer: TypeAlias = Literal["timeout", "network_error"]
"""`DocraftError.code` when no answer came: the attempt timed out, or the connection failed or was lost."""

_T = TypeVar("_T")
_P = ParamSpec("_P")

# Answers after which nothing was applied (408, 429, 503) or, sent again with the same key, at most once (504).
_RETRIED_STATUSES = frozenset({408, 429, 503, 504})
# What httpx raises when no answer came: the request may or may not have reached docraft.
_NO_ANSWER = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_TOKEN = re.compile(r"[\\x21-\\x7e]+")


class ServedBy(TypedDict):
    """The replica that answered for one shard, and where its log stood."""

    shard: str
    replica: str
    role: str
    term: int
    applied_index: int
    consistency: NotRequired[Consistency]
    """Reads only: the level used."""


class Page(TypedDict, Generic[_T]):
    """One page of documents; `pages` follows `next` to the last one."""

    items: list[_T]
    next: str | None
    """Pass it back as the endpoint's `cursor` for the following page; `None` on the last page."""
    served_by: list[ServedBy]
    plan: NotRequired[list[Any]]
    """With `explain=True`: each shard's plan."""


class ValueResult(TypedDict, Generic[_T]):
    """What an endpoint that returns a value (every mutation) answers."""

    result: _T
    served_by: list[ServedBy]


class DocraftError(Exception):
    """A failed call: docraft's last answer to it, or no answer at all.

    `status` is the HTTP status, 0 when no answer came. `code` is the answer's docraft error code; a `NoAnswer`
    code when no answer came; `None` when the answer was not docraft's error shape (a proxy's page, say).
    `message` and `details` are the error's. `idempotency_key` is the key a mutation was sent with: when its
    outcome is unknown (`outcome_unknown`, `timeout`, `network_error`), calling again with
    `idempotency_key=error.idempotency_key` applies it at most once.
    """

    def __init__(
        self,
        status: int,
        code: ErrorCode | NoAnswer | None,
        message: str,
        details: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        answer = f"HTTP {status}" if status else "no answer"
        super().__init__(f"{answer} {code}: {message}" if code else f"{answer}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.idempotency_key = idempotency_key


@dataclass(frozen=True)
class _Call:
    """One endpoint call, as each of its attempts sends it."""

    method: Literal["GET", "POST"]
    endpoint: str
    query: dict[str, str]
    body: dict[str, Any] | None
    idempotency_key: str | None


@dataclass(frozen=True)
class _Unanswered:
    code: NoAnswer
    reason: str


def _read(
    endpoint: str,
    method: Literal["GET", "POST"],
    params: Mapping[str, Any],
    consistency: Consistency | None,
    include: Sequence[str],
    explain: bool,
) -> _Call:
    """A query call: its read options always in the query string, as docraft reads them."""
    options = {"consistency": consistency, "include": ",".join(include) or None, "explain": "1" if explain else None}
    return _call(endpoint, method, params, {name: value for name, value in options.items() if value is not None})


def _write(
    endpoint: str, method: Literal["GET", "POST"], params: Mapping[str, Any], idempotency_key: str | None
) -> _Call:
    """A mutation call, under the caller's key or a new random one: the same on each attempt."""
    return _call(endpoint, method, params, {}, idempotency_key or uuid.uuid4().hex)


def _call(
    endpoint: str,
    method: Literal["GET", "POST"],
    params: Mapping[str, Any],
    options: dict[str, str],
    idempotency_key: str | None = None,
) -> _Call:
    """``params`` as a JSON body (POST keeps exact types) or in the query string (GET)."""
    if method == "POST":
        return _Call(method, endpoint, options, dict(params), idempotency_key)
    query = {name: _query_value(value) for name, value in params.items()}
    return _Call(method, endpoint, {**query, **options}, None, idempotency_key)


def _query_value(value: Any) -> str:
    """A parameter as docraft parses it from a query string: lists comma-joined, `None` empty."""
    if isinstance(value, list | tuple):
        return ",".join(_query_value(item) for item in value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _error_of(answer: httpx.Response) -> dict[str, Any]:
    """The `error` object of a docraft error answer; empty for any other answer."""
    try:
        body: object = answer.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) and isinstance(error.get("code"), str) else {}


def _result(outcome: httpx.Response | _Unanswered, idempotency_key: str | None) -> Any:
    """The JSON body of a 2xx answer; for anything else, `DocraftError`."""
    if isinstance(outcome, _Unanswered):
        raise DocraftError(0, outcome.code, outcome.reason, idempotency_key=idempotency_key)
    if outcome.is_success:
        try:
            return outcome.json()
        except ValueError:
            raise DocraftError(outcome.status_code, None, "the answer is not JSON", None, idempotency_key) from None
    error = _error_of(outcome)
    if not error:
        raise DocraftError(outcome.status_code, None, outcome.reason_phrase, None, idempotency_key)
    message = str(error.get("message", ""))
    raise DocraftError(outcome.status_code, error["code"], message, error.get("details"), idempotency_key)


def _retry_after(answer: httpx.Response) -> float | None:
    """The wait `answer` asks for, in seconds: its `Retry-After` (seconds or an HTTP date), else its error's
    `details.retry_after`; `None` when it asks for none."""
    header = answer.headers.get("Retry-After", "").strip()
    if header.isdigit():
        return float(header)
    if header:
        with contextlib.suppress(TypeError, ValueError):
            return email.utils.parsedate_to_datetime(header).timestamp() - time.time()
    details = _error_of(answer).get("details")
    asked = details.get("retry_after") if isinstance(details, dict) else None
    return float(asked) if isinstance(asked, int | float) and not isinstance(asked, bool) else None


def _check_paged(method: object) -> None:
    name = getattr(method, "__name__", repr(method))
    if name not in _PAGED:
        pageable = ", ".join(sorted(_PAGED)) or "none"
        raise TypeError(f"pages: {name} takes no cursor, so it cannot be paged (these can: {pageable})")


class _Settings:
    """What both clients share: their settings, each attempt's request, and when to try again."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float,
        retries: int,
        retry_delay: float,
        max_retry_delay: float,
    ) -> None:
        numbers = {"timeout": timeout, "retries": retries, "retry_delay": retry_delay}
        for name, value in {**numbers, "max_retry_delay": max_retry_delay}.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"DocraftClient: {name} must be a finite number >= 0, not {value!r}")
        if token is not None and not _TOKEN.fullmatch(token):
            raise ValueError("DocraftClient: token must be the printable characters of a docraft token, without spaces")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay

    def request(self, call: _Call) -> httpx.Request:
        """One attempt of `call`: its key and the token in the headers, timed out after `timeout` seconds."""
        headers = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        return httpx.Request(
            call.method,
            f"{self.url}/{call.endpoint}",
            params=call.query,
            json=call.body,
            headers=headers,
            extensions={"timeout": httpx.Timeout(self.timeout).as_dict()},
        )

    def unanswered(self, error: Exception) -> _Unanswered:
        if isinstance(error, httpx.TimeoutException):
            return _Unanswered("timeout", f"no answer within {self.timeout} s")
        return _Unanswered("network_error", str(error) or type(error).__name__)

    def retry_wait(self, retry: int, outcome: httpx.Response | _Unanswered) -> float | None:
        """Seconds to wait before trying again after `outcome`, that of retry number `retry` (0: the first
        attempt); `None` when `outcome` is final: an answer that is not retried, or the last attempt's."""
        if retry >= self.retries:
            return None
        if isinstance(outcome, httpx.Response):
            if outcome.status_code not in _RETRIED_STATUSES:
                return None
            asked = _retry_after(outcome)
            if asked is not None:
                return min(max(asked, 0.0), self.max_retry_delay)
        return min(self.retry_delay * 2.0**retry * (0.5 + random.random() / 2), self.max_retry_delay)
'''

_CLIENT_DOC = """\
    \"\"\"Calls the endpoints of `{app}` through a dispatcher (or any replica){how}.

    `url`: a dispatcher's, e.g. `http://127.0.0.1:8000`. `token`: a token of `docraft user add`, sent as
    `Authorization: Bearer <token>` (default: none, anonymous). Each HTTP attempt is abandoned after `timeout`
    seconds; a call is tried again, up to `retries` times and with the same `Idempotency-Key`, after a 408, 429,
    503 or 504 answer or when no answer came, waiting the answer's `Retry-After` (or its error's
    `details.retry_after`) or `retry_delay` doubled per retry with jitter, never more than `max_retry_delay`.
    A call so lasts at most `(retries + 1) * timeout + retries * max_retry_delay`. `transport`: httpx's, for
    tests. `ValueError` for a negative setting or a malformed token. Close it, or use it in `{with_}`.
    \"\"\"
"""

_SYNC_CLIENT = (
    "class DocraftClient:\n"
    + _CLIENT_DOC.replace("{how}", ", blocking").replace("{with_}", "with")
    + '''
    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        retry_delay: float = 0.1,
        max_retry_delay: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(url, token, timeout, retries, retry_delay, max_retry_delay)
        self._http = httpx.Client(transport=transport)

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def pages(self, method: Callable[_P, Page[_T]], /, *args: _P.args, **kwargs: _P.kwargs) -> Iterator[Page[_T]]:
        """Each page of `method(**kwargs)`, up to the last: after each, `method` is called again with the page's
        `next` as its `cursor`. `TypeError` for a method of an endpoint that takes no cursor."""
        _check_paged(method)
        while True:
            page = method(*args, **kwargs)
            yield page
            if page["next"] is None:
                return
            kwargs["cursor"] = page["next"]

    def _send(self, call: _Call) -> Any:
        """The JSON body answering `call`, tried and retried as the settings say; else `DocraftError`."""
        retry = 0
        while True:
            try:
                outcome: httpx.Response | _Unanswered = self._http.send(self._settings.request(call))
            except _NO_ANSWER as error:
                outcome = self._settings.unanswered(error)
            wait = self._settings.retry_wait(retry, outcome)
            if wait is None:
                return _result(outcome, call.idempotency_key)
            time.sleep(wait)
            retry += 1
'''
)

_ASYNC_CLIENT = (
    "class AsyncDocraftClient:\n"
    + _CLIENT_DOC.replace("{how}", ", with asyncio").replace("{with_}", "async with")
    + '''
    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        retry_delay: float = 0.1,
        max_retry_delay: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(url, token, timeout, retries, retry_delay, max_retry_delay)
        self._http = httpx.AsyncClient(transport=transport)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def pages(
        self, method: Callable[_P, Awaitable[Page[_T]]], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> AsyncIterator[Page[_T]]:
        """Each page of `await method(**kwargs)`, up to the last: after each, `method` is called again with the
        page's `next` as its `cursor`. `TypeError` for a method of an endpoint that takes no cursor."""
        _check_paged(method)
        while True:
            page = await method(*args, **kwargs)
            yield page
            if page["next"] is None:
                return
            kwargs["cursor"] = page["next"]

    async def _send(self, call: _Call) -> Any:
        """The JSON body answering `call`, tried and retried as the settings say; else `DocraftError`."""
        retry = 0
        while True:
            try:
                outcome: httpx.Response | _Unanswered = await self._http.send(self._settings.request(call))
            except _NO_ANSWER as error:
                outcome = self._settings.unanswered(error)
            wait = self._settings.retry_wait(retry, outcome)
            if wait is None:
                return _result(outcome, call.idempotency_key)
            await asyncio.sleep(wait)
            retry += 1
'''
)


def _defined_names(source: str) -> tuple[set[str], set[str]]:
    """The module-level names ``source`` binds, and the names its classes bind (methods, attributes)."""
    module: set[str] = set()
    members: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            module.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ClassDef | ast.FunctionDef):
            module.add(node.name)
            if isinstance(node, ast.ClassDef):
                members.update(n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
        elif isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            module.update(target.id for target in targets if isinstance(target, ast.Name))
    return module, members


# Names the fixed part binds: no model or generated type may take one, and no endpoint a client's method name.
_RUNTIME_NAMES, _CLIENT_ATTRIBUTES = _defined_names(
    "\n".join([_IMPORTS.replace("{typing}", ", ".join(_TYPING_NAMES)), _RUNTIME, _SYNC_CLIENT, _ASYNC_CLIENT])
)
_RUNTIME_NAMES |= {"Consistency", "ErrorCode", "_PAGED"}
