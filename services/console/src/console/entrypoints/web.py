"""The web application: pages, sign-in, CSRF-checked actions. Thin: the app layer decides."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from billing_common.errors import (
    BillingError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from billing_common.money import MINOR_DIGITS
from console.app.actions import Actions
from console.app.pages import Pages
from console.app.signin import SignIn
from console.domain.sessions import Session
from console.domain.tiers import ReviewFilter

HERE = Path(__file__).parent
COOKIE = "console_session"
STATUS = {NotFound: 404, PermissionDenied: 403, FailedPrecondition: 409, InvalidArgument: 400}


@dataclass(frozen=True)
class Console:
    pages: Pages
    actions: Actions
    signin: SignIn
    ready: Callable[[], Awaitable[bool]]
    cookie_secure: bool


def _money(value: Any) -> str:
    if not value:
        return "—"
    digits = MINOR_DIGITS.get(value.get("currency", ""), 2)
    amount = value.get("amount_minor", 0)
    sign, whole = ("-" if amount < 0 else ""), abs(amount)
    major, minor = divmod(whole, 10**digits) if digits else (whole, 0)
    fraction = f".{minor:0{digits}d}" if digits else ""
    return f"{sign}{major:,}{fraction} {value.get('currency', '')}"


def _label(value: Any) -> str:
    return str(value or "").replace("_", " ").lower()


def _when(value: Any) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M UTC") if hasattr(value, "hour") else str(value)


def _period(start: datetime, end: datetime) -> str:
    """A usage period as people say it: one day by its date, days as dates (`to` the next period's
    start, as invoices and subscriptions show their periods), anything else to the minute."""
    if start.time() == end.time() == time.min:
        return str(start.date()) if end - start == timedelta(days=1) else f"{start.date()} to {end.date()}"
    return f"{_when(start)} to {_when(end)}"


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        enable_async=False,
    )
    env.filters.update(
        money=_money, label=_label, when=_when, period=_period, url=lambda v: quote(str(v), safe="")
    )
    env.filters["json"] = _script_json
    return env


def _script_json(value: Any) -> Markup:
    """JSON to sit inside <script type="application/json">: not entity-escaped (the browser does not
    decode entities there), with <, > and & written as escapes so it can never close the element."""
    text = json.dumps(value, default=str)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))  # noqa: S704


def build_app(console: Console) -> Starlette:
    templates = _templates()

    async def session_of(request: Request) -> Session:
        session: Session = await console.signin.current(request.cookies.get(COOKIE))
        return session

    def remember(response: Response, session: Session) -> Response:
        response.set_cookie(
            COOKIE,
            session.session_id,
            httponly=True,
            samesite="strict",
            secure=console.cookie_secure,
            path="/",
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def render(request: Request, session: Session, name: str, code: int = 200, **values: Any) -> Response:
        html = templates.get_template(name).render(
            request=request,
            person=session.person,
            csrf_token=session.csrf_token,
            notice=request.query_params.get("done", ""),
            problem=request.query_params.get("error", ""),
            **values,
        )
        return remember(HTMLResponse(html, status_code=code), session)

    def page(
        name: str, load: Callable[[Request], Awaitable[dict[str, Any] | Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = await session_of(request)
            if session.person is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return remember(RedirectResponse(f"/signin?{urlencode({'next': target})}", 303), session)
            try:
                values = await load(request)
            except BillingError as exc:
                status = STATUS.get(type(exc), 503)
                return render(request, session, "error.html", status, status=status, message=exc.message)
            if isinstance(values, Response):
                return remember(values, session)
            return render(request, session, name, **values)

        return endpoint

    def action(
        act: Callable[[Request, Session, Any], Awaitable[str]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """A form post: signed in, CSRF token checked, then back to the page with what happened."""

        async def endpoint(request: Request) -> Response:
            session = await session_of(request)
            form = await request.form()
            back = str(request.url.path).rsplit("/", 1)[0] if request.url.path.count("/") > 2 else "/"
            if session.person is None or not session.accepts(str(form.get("csrf_token", ""))):
                return render(
                    request, session, "error.html", 403, status=403, message="Sign in again and retry."
                )
            try:
                done = await act(request, session, form)
            except BillingError as exc:
                return remember(RedirectResponse(f"{back}?{urlencode({'error': exc.message})}", 303), session)
            return remember(RedirectResponse(f"{back}?{urlencode({'done': done})}", 303), session)

        return endpoint

    # ----------------------------------------------------------------------- sign-in

    async def signin_form(request: Request) -> Response:
        session = await session_of(request)
        return render(request, session, "signin.html", next=request.query_params.get("next", "/"))

    async def signin_post(request: Request) -> Response:
        session = await session_of(request)
        form = await request.form()
        target = str(form.get("next", "/"))
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        if not session.accepts(str(form.get("csrf_token", ""))):
            return render(
                request, session, "signin.html", 403, next=target, failed="The form expired: try again."
            )
        signed_in = await console.signin.sign_in(
            session, str(form.get("name", "")), str(form.get("password", ""))
        )
        if signed_in is None:
            return render(request, session, "signin.html", 401, next=target, failed="Wrong name or password.")
        return remember(RedirectResponse(target, 303), signed_in)

    async def signout(request: Request) -> Response:
        session = await session_of(request)
        form = await request.form()
        if session.accepts(str(form.get("csrf_token", ""))):
            await console.signin.sign_out(session)
        response = RedirectResponse("/signin", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ----------------------------------------------------------------------- pages

    async def overview(_: Request) -> dict[str, Any]:
        return {"o": await console.pages.overview()}

    async def accounts(request: Request) -> dict[str, Any] | Response:
        wanted = request.query_params.get("q", "").strip()
        if wanted:
            return RedirectResponse(f"/accounts/{quote(wanted, safe='')}", 303)
        return {"accounts": await console.pages.accounts(), "query": request.query_params.get("q", "")}

    async def account(request: Request) -> dict[str, Any]:
        return {"a": await console.pages.account(request.path_params["account_id"])}

    async def subscription(request: Request) -> dict[str, Any]:
        return {"s": await console.pages.subscription(request.path_params["subscription_id"])}

    async def runs(_: Request) -> dict[str, Any]:
        return {"runs": await console.pages.runs()}

    async def run(request: Request) -> dict[str, Any]:
        return await console.pages.run(request.path_params["run_id"])

    async def invoice(request: Request) -> dict[str, Any]:
        return await console.pages.invoice(request.path_params["invoice_id"])

    async def cases(request: Request) -> dict[str, Any]:
        state = request.query_params.get("state", "")
        return {**await console.pages.cases(state), "state": state}

    async def case(request: Request) -> dict[str, Any]:
        return await console.pages.case(request.path_params["case_id"])

    async def tier_changes(request: Request) -> dict[str, Any]:
        query = request.query_params
        where = ReviewFilter(
            since=_day(query.get("since", ""), "since"),
            until=_day(query.get("until", ""), "until"),
            rule_id=query.get("rule", ""),
            tier=query.get("tier", ""),
        )
        return {**await console.pages.tier_changes(where), "where": where}

    # ----------------------------------------------------------------------- actions

    async def case_action(request: Request, session: Session, form: Any) -> str:
        assert session.person is not None
        what = request.path_params["action"]
        await console.actions.case(
            session.person, request.path_params["case_id"], what, str(form.get("reason", ""))
        )
        return f"{what}: done"

    async def resume_run(request: Request, session: Session, form: Any) -> str:
        assert session.person is not None
        gateway = str(form.get("gateway", ""))
        await console.actions.resume_run(session.person, request.path_params["run_id"], gateway)
        return f"{gateway} resumed"

    # ----------------------------------------------------------------------- probes

    async def alive(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def ready(_: Request) -> Response:
        ok = await console.ready()
        return PlainTextResponse("ok" if ok else "not ready", status_code=200 if ok else 503)

    routes = [
        Route("/", page("overview.html", overview)),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin_post, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/accounts", page("accounts.html", accounts)),
        Route("/accounts/{account_id}", page("account.html", account)),
        Route("/subscriptions/{subscription_id}", page("subscription.html", subscription)),
        Route("/runs", page("runs.html", runs)),
        Route("/runs/{run_id}", page("run.html", run)),
        Route("/runs/{run_id}/resume", action(resume_run), methods=["POST"]),
        Route("/invoices/{invoice_id}", page("invoice.html", invoice)),
        Route("/dunning", page("cases.html", cases)),
        Route("/dunning/{case_id}", page("case.html", case)),
        Route("/dunning/{case_id}/{action}", action(case_action), methods=["POST"]),
        Route("/tier-changes", page("tier_changes.html", tier_changes)),
        Route("/healthz", alive),
        Route("/readyz", ready),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes)


def _day(text: str, field: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument.of(field, "must be a date, YYYY-MM-DD") from None
