"""The Ray Serve application: one ingress deployment wrapping vLLM's AsyncLLM.

Routes: ``POST /v1/chat/completions`` (OpenAI-compatible, streaming and not),
``GET /v1/models``, ``POST /v1/feedback`` (with its CORS preflight), the chat page ``GET /``
with its files and the embeddable feedback widget ``GET /widget.js`` (``serving.pages``),
``GET /healthz``, ``GET /metrics``, the status
page ``GET /status`` with its JSON ``GET /v1/status`` (public, as /metrics is: no user
content), and the admin API under ``/admin`` (adapter versions, the canary rollout).
One method is no route: ``sample``, the trainer's sampling path, called through a
deployment handle. One deployment on purpose: chat, feedback and the producer share a
process with the engine, so a request costs no extra actor hop (see
bench/serving_overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve
from ray.serve.deployment import Application
from starlette.exceptions import HTTPException

from monitoring import logs
from monitoring import metrics as m
from monitoring.targets import Exporter
from serving import auth, chat, cors, pages, sampling, status, tokens
from serving.adapters import AdapterManager
from serving.canary import assign, commands
from serving.config import DEPLOYMENT_NAME, ServingConfig
from serving.engine import Engine
from serving.feedback import TRANSPORTS, FeedbackDesk, FeedbackResult
from serving.limits import LIMITS
from serving.middleware import BodySizeLimit, StrictJSONRoute, error_response
from serving.openapi import (
    CHAT_RESPONSES,
    FEEDBACK_BODY,
    FEEDBACK_RESPONSES,
    SET_WEIGHT_BODY,
    STATUS_PAGE_RESPONSES,
    STATUS_RESPONSES,
    AdapterRef,
    AdminCredentials,
    AdminKeyHeader,
    ApiCredentials,
    ArmHeader,
    ConversationHeader,
    LiveAlignAPI,
    errors,
)
from serving.protocol import (
    APIError,
    ChatCompletion,
    ChatCompletionRequest,
    LiveAlignInfo,
    ModelCard,
    ModelList,
)
from serving.status import StatusReport
from streaming.events import TOPIC_INTERACTIONS, InteractionEvent, new_id, now_ms
from streaming.producer import EventProducer
from streaming.spool import SpoolError
from trainer.registry import Registry, RegistryError, UnknownVersion

log = logging.getLogger(__name__)

api = LiveAlignAPI(
    title="LiveAlign",
    summary="OpenAI-compatible chat that learns from its users' feedback.",
    version="0.1.0",
)
# Set here, before ``serve.ingress`` below freezes a copy of the app: every body is read
# under the size limit, and every typed one parsed as strict JSON.
api.add_middleware(BodySizeLimit, max_bytes=LIMITS.max_body_bytes)
api.router.route_class = StrictJSONRoute


@api.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


@api.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    # Starlette's and FastAPI's own (unknown route, wrong method, a body too large or that
    # could not be read), in this API's error shape.
    code = getattr(exc, "code", None)
    return error_response(
        APIError(exc.status_code, str(exc.detail), code=code, headers=exc.headers)
    )


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # OpenAI answers malformed requests with 400 invalid_request_error.
    problems = list(exc.errors())
    invalid = [e for e in problems if e.get("type") == "json_invalid"]
    if invalid:
        why = invalid[0].get("ctx", {}).get("error")
        message = (
            f"request body is not valid JSON: {why}" if why else "request body is not valid JSON"
        )
        err = APIError(400, message, code="invalid_json")
    else:
        parts = []
        for e in problems:
            loc = ".".join(str(p) for p in e["loc"][1:]) or "body"  # drop "body", "header"...
            parts.append(f"{loc}: {str(e['msg']).removeprefix('Value error, ')}")
        err = APIError(400, "; ".join(parts), param=parts[0].split(":")[0] if parts else None)
    return error_response(err)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class ChatServer:
    async def __init__(self, config: ServingConfig) -> None:  # type: ignore[misc]  # Ray Serve awaits it
        logs.setup()
        self.config = config
        self.engine = Engine(config.engine)
        self.secret = config.feedback_secret.get_secret_value().encode()
        self.salt = config.user_hash_salt.get_secret_value().encode()
        self.keys = auth.KeyRing(config.api_keys_file)
        registry = Registry(config.registry_dir) if config.registry_dir else None
        # The user-hash salt keys the canary assignment too: a secret the server has anyway.
        self.adapters = AdapterManager(self.engine, registry, self.salt, config.drain_timeout_s)
        self._stop = asyncio.Event()
        self._watcher = asyncio.create_task(
            self.adapters.follow_registry(self._stop, config.registry_poll_s)
        )
        self.producer = EventProducer(config.producer).start()
        self.feedback = FeedbackDesk(
            self.producer, self.secret, LIMITS.max_feedback_batch, config.delivery_timeout_s
        )
        self.board = status.board(config, registry)
        self.exporter = self._export_metrics(config)

    @staticmethod
    def _export_metrics(config: ServingConfig) -> Exporter | None:
        """This replica's own scrape endpoint: GET /metrics through the Serve proxy reaches
        one replica of many, Prometheus must reach each."""
        if config.metrics_targets_dir is None:
            return None
        replica = serve.get_replica_context().replica_id.unique_id
        return Exporter(
            config.metrics_targets_dir, "serving", replica, {"replica": replica},
            host=config.metrics_host, port=config.metrics_port,
        )  # fmt: skip

    # --- chat ---------------------------------------------------------------------------
    @api.post("/v1/chat/completions", response_model=ChatCompletion, responses=CHAT_RESPONSES)
    async def chat_completions(
        self,
        body: ChatCompletionRequest,
        credentials: ApiCredentials,
        conversation_id: ConversationHeader = None,
        arm: ArmHeader = None,
        admin_key: AdminKeyHeader = None,
    ) -> JSONResponse | StreamingResponse:
        principal = self._caller(credentials, "chat")
        pin = self._pin(arm, admin_key) or self._model_pin(body.model)
        turn = self._turn(body, body.conversation_id or conversation_id, pin, principal)
        headers = {
            "X-LiveAlign-Response-Id": turn.info.response_id,
            "X-LiveAlign-Conversation-Id": turn.info.conversation_id,
            "X-LiveAlign-Feedback-Token": turn.info.feedback_token,
            "X-LiveAlign-Adapter": turn.info.adapter,
            "X-LiveAlign-Arm": turn.info.arm,
        }
        if body.stream:
            return StreamingResponse(
                chat.stream(self.engine, turn, self._emit),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache"},
            )
        result = await chat.complete(self.engine, turn, self._emit)
        return JSONResponse(result.model_dump(mode="json"), headers=headers)

    def _turn(
        self,
        body: ChatCompletionRequest,
        conversation_id: str | None,
        pin: str | None,
        principal: str,
    ) -> chat.Turn:
        conversation_id = conversation_id or new_id("conv")
        user_hash = tokens.hash_user(self.salt, principal, body.user) if body.user else None
        prompt_ids = self.engine.render(body.chat_messages())
        params = chat.sampling_params(
            body,
            len(prompt_ids),
            self.config.engine.max_model_len,
            self.config.default_max_tokens,
            self.engine.sampling_defaults,
        )
        key = assign.unit_key(self.config.canary_unit, conversation_id, user_hash)
        route, slot = self.adapters.route(key, pin)  # last: from here on release the slot
        response_id = chat.new_response_id()
        token = tokens.issue(
            self.secret,
            response_id,
            conversation_id,
            user_hash,
            self.config.feedback_token_ttl_s,
            principal,
        )
        info = LiveAlignInfo(
            response_id=response_id,
            conversation_id=conversation_id,
            adapter=route.adapter,
            arm=route.arm,
            feedback_token=token,
        )
        return chat.Turn(
            body, info, route, prompt_ids, params, user_hash, principal, release=slot.release
        )

    def _model_pin(self, model: str) -> str | None:
        """The arm a ``model`` naming a loaded adapter version (as GET /v1/models lists
        them) asks for: compare mode sets two versions side by side this way. Such an
        answer's arm is "pinned", so it never counts as either arm's traffic."""
        served = self.config.engine.served_model_name
        if model == served:
            return None
        if model == self.adapters.canary_ref:
            return chat.CANARY_ARM
        if model == self.adapters.stable.ref and model != chat.BASE_ADAPTER:
            return chat.STABLE_ARM
        raise APIError(
            404,
            f"The model `{model}` does not exist; this server serves `{served}` (and the "
            "adapter versions GET /v1/models lists).",
            code="model_not_found",
            param="model",
        )

    def _pin(self, arm: str | None, admin_key: str | None) -> str | None:
        """The arm an operator pinned this request to (``X-LiveAlign-Arm``), if any."""
        if arm is None:
            return None
        if not self._is_admin_key(admin_key):
            raise APIError(
                403,
                "X-LiveAlign-Arm pins an arm for debugging: it needs a valid admin key in "
                "X-LiveAlign-Admin-Key",
                type_="permission_error",
                code="auth",
            )
        return arm

    def _emit(self, event: InteractionEvent) -> None:
        # A full spool is counted and logged by the producer; the user still gets the answer.
        with contextlib.suppress(SpoolError):
            self.producer.submit(TOPIC_INTERACTIONS, event.conversation_id, event)

    # --- samples for the trainer's teacher (not user traffic) --------------------------
    async def sample(self, body: dict[str, Any]) -> dict[str, Any]:
        """k samples per prompt from a loaded adapter (``serving.sampling``). No route:
        called through a deployment handle from inside the Ray cluster only."""
        return await sampling.sample(self.engine, self.adapters, body, self.config.sampling)

    # --- feedback -----------------------------------------------------------------------
    @api.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackResult,
        responses=FEEDBACK_RESPONSES,
        openapi_extra=FEEDBACK_BODY,
    )
    async def post_feedback(self, request: Request, credentials: ApiCredentials) -> JSONResponse:
        origin = request.headers.get("origin")
        allow = cors.response_headers(origin, self.config.feedback_origins)
        try:
            result, batch = await self._feedback(request, credentials)
        except APIError as err:  # readable by an allowed page too: it tells 4xx from 503
            err.headers = {**(err.headers or {}), **allow}
            raise
        if not batch and result.rejected:
            first = result.rejected[0]
            raise APIError(first.status, first.error, code=None, headers=allow)
        status = 202 if result.accepted else max(r.status for r in result.rejected)
        return JSONResponse(result.model_dump(mode="json"), status_code=status, headers=allow)

    async def _feedback(
        self, request: Request, credentials: HTTPAuthorizationCredentials | None
    ) -> tuple[FeedbackResult, bool]:
        """Feedback auth: an API key as before, or with keys on and none sent, each event's
        own token (see serving.feedback), charged under the principals they name."""
        if not cors.body_type_ok(request.headers.get("content-type")):
            raise APIError(
                415,
                "send the feedback as JSON (Content-Type application/json or text/plain)",
                code="unsupported_media_type",
            )
        by_token = credentials is None and self.keys.enabled
        principal = None if by_token else self._caller(credentials, "feedback", charge=False)
        # The body is bounded by BodySizeLimit while it is read.
        items, batch = self.feedback.parse(await request.body())
        if principal is not None:
            self._charge(principal, "feedback", len(items))  # each event of a batch counts
        else:
            vouched = self.feedback.principals(items)
            if not vouched:  # no key and no valid token: as without tokens, a 401
                self._authenticate(None, "feedback")
            for name, n in vouched.items():
                self._charge(name, "feedback", n)
        via = request.query_params.get("via")
        transport = via.removeprefix("widget-") if via else None
        result = await self.feedback.accept(
            items, principal, transport if transport in TRANSPORTS else None
        )
        return result, batch

    @api.options("/v1/feedback", include_in_schema=False)
    async def feedback_preflight(self, request: Request) -> Response:
        """CORS preflight (serving.cors): 204, with the allow headers for a listed origin."""
        headers = cors.preflight_headers(
            request.headers.get("origin"), self.config.feedback_origins
        )
        return Response(status_code=204, headers=headers)

    # --- API keys (serving.auth) --------------------------------------------------------
    def _caller(
        self,
        credentials: HTTPAuthorizationCredentials | None,
        route: auth.Route,
        charge: bool = True,
    ) -> str:
        """The principal of this request, charged one request against its rate limit
        (429 over it) unless ``charge`` is off."""
        principal = self._authenticate(credentials, route)
        if charge:
            self._charge(principal, route, 1)
        return principal

    def _authenticate(self, credentials: HTTPAuthorizationCredentials | None, route: str) -> str:
        """The principal of this request; 401 without a valid key while keys are on."""
        try:
            return self.keys.authenticate(credentials.credentials if credentials else None)
        except auth.Refused as exc:
            m.API_CALLS.labels("none", route, "unauthenticated").inc()
            raise APIError(
                exc.status, str(exc), code=exc.code, headers={"WWW-Authenticate": "Bearer"}
            ) from exc

    def _charge(self, principal: str, route: auth.Route, n: int) -> None:
        try:
            self.keys.charge(principal, route, n)
        except auth.Refused as exc:
            m.API_CALLS.labels(principal, route, "rate_limited").inc()
            raise APIError(
                429,
                str(exc),
                type_="rate_limit_error",
                code=exc.code,
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from exc
        m.API_CALLS.labels(principal, route, "ok").inc()

    # --- admin ------------------------------------------------------------------------------
    def _is_admin_key(self, given: str | None) -> bool:
        key = self.config.admin_key
        return key is not None and tokens.same_secret(given, key.get_secret_value())

    def _admin(self, credentials: HTTPAuthorizationCredentials | None) -> Registry:
        if self.config.admin_key is None or self.adapters.registry is None:
            raise APIError(
                403,
                "the admin API is off (no admin key or no registry configured)",
                type_="permission_error",
            )
        if credentials is None:
            raise APIError(
                401,
                "admin API: send Authorization: Bearer <admin key>",
                code="auth",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not self._is_admin_key(credentials.credentials):
            raise APIError(403, "admin API: wrong admin key", type_="permission_error", code="auth")
        return self.adapters.registry

    @api.get("/admin/adapters", responses=errors(401, 403))
    async def list_adapters(self, credentials: AdminCredentials) -> dict[str, Any]:
        """Every published version with its manifest, the registry state, what serves."""
        registry = self._admin(credentials)
        return {
            "serving": self.adapters.stable.ref,
            "canary": self.adapters.canary_ref,
            "state": registry.state().model_dump(mode="json"),
            "refused": self.adapters.refused,
            "versions": [v.model_dump(mode="json") for v in registry.versions()],
        }

    @api.post("/admin/adapters/{ref}/{action}", responses=errors(400, 401, 403, 404, 409))
    async def set_adapter(
        self,
        ref: AdapterRef,
        action: Literal["promote", "rollback"],
        credentials: AdminCredentials,
    ) -> dict[str, Any]:
        """``promote`` a version, or ``rollback`` to an earlier one (or to ``base``)."""
        registry = self._admin(credentials)
        try:
            if ref != chat.BASE_ADAPTER:
                ref = registry.get(ref).ref
            self.adapters.refused.pop(ref, None)  # an operator asking again gets a new try
            await self.adapters.swap_to(ref)
        except UnknownVersion as exc:
            raise APIError(404, str(exc), code="unknown_version") from exc
        except RegistryError as exc:
            raise APIError(409, f"{ref} refused: {exc}", code="adapter_refused") from exc
        stable = None if ref == chat.BASE_ADAPTER else ref
        state = registry.set_state(stable=stable, action=action, reason="admin API")
        return {"serving": self.adapters.stable.ref, "state": state.model_dump(mode="json")}

    # --- canary (the rollout's transitions are in serving.canary.rollout) ----------------
    @api.get("/admin/canary", responses=errors(401, 403))
    async def canary_status(self, credentials: AdminCredentials) -> dict[str, Any]:
        """Stable, canary, its weight and rollout, the last decisions, what this replica
        has loaded."""
        return commands.status(self._admin(credentials), self.adapters.loaded())

    @api.post("/admin/canary/promote", responses=errors(401, 403, 409))
    async def canary_promote(self, credentials: AdminCredentials) -> dict[str, Any]:
        """Make the canary stable now (moved into the stable slot, not reloaded)."""
        return await self._canary_command(credentials, "promote")

    @api.post("/admin/canary/abort", responses=errors(401, 403, 409))
    async def canary_abort(self, credentials: AdminCredentials) -> dict[str, Any]:
        """Roll the canary back now: its conversations go to stable, then it is unloaded."""
        return await self._canary_command(credentials, "abort")

    @api.post("/admin/canary/pause", responses=errors(401, 403, 409))
    async def canary_pause(self, credentials: AdminCredentials) -> dict[str, Any]:
        """Stop the controller's promotions (it still rolls back a harmful canary)."""
        return await self._canary_command(credentials, "pause")

    @api.post("/admin/canary/resume", responses=errors(401, 403, 409))
    async def canary_resume(self, credentials: AdminCredentials) -> dict[str, Any]:
        """Let the controller promote again."""
        return await self._canary_command(credentials, "resume")

    @api.post(
        "/admin/canary/set-weight",
        responses=errors(401, 403, 409, 413, 422),
        openapi_extra=SET_WEIGHT_BODY,
    )
    async def canary_set_weight(
        self, request: Request, credentials: AdminCredentials
    ) -> dict[str, Any]:
        """Move the rollout to the step of this weight (one of the policy's steps)."""
        registry = self._admin(credentials)
        body = await request.body()
        commands.set_weight(registry, self.config.canary_policy, body, now_ms())
        return await self._canary_applied(registry)

    async def _canary_command(
        self, credentials: HTTPAuthorizationCredentials | None, command: commands.Command
    ) -> dict[str, Any]:
        registry = self._admin(credentials)
        commands.run(registry, command)
        return await self._canary_applied(registry)

    async def _canary_applied(self, registry: Registry) -> dict[str, Any]:
        # This replica follows at once; the others at their next registry poll.
        await self.adapters.sync()
        return commands.status(registry, self.adapters.loaded())

    # --- the status page (serving.status) ---------------------------------------------------
    @api.get("/status", response_class=HTMLResponse, responses=STATUS_PAGE_RESPONSES)
    async def status_page(self) -> HTMLResponse:
        """A page for people without Grafana: what serves, versions over time with their
        gate metrics and live score, the canary arms, feedback, fusion weights. It
        fetches ``/v1/status`` again every ``refresh_s``."""
        return self.board.page()

    @api.get("/v1/status", response_model=StatusReport, responses=STATUS_RESPONSES)
    async def status_report(self) -> StatusReport:
        """What the status page shows, as JSON (at most ``cache_s`` old)."""
        return await self.board.report(self.adapters.loaded())

    # --- the chat page and the widget (serving.pages) -------------------------------------
    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page(self) -> HTMLResponse:
        """A chat page with every feedback control on each answer, and compare mode."""
        return pages.chat_page()

    @api.get("/widget.js", include_in_schema=False)
    async def widget_script(self) -> Response:
        """The embeddable feedback widget: one ES module, for any site's chat UI."""
        return pages.asset("widget.js")

    @api.get("/chat.js", include_in_schema=False)
    async def chat_script(self) -> Response:
        return pages.asset("chat.js")

    @api.get("/chat.css", include_in_schema=False)
    async def chat_style(self) -> Response:
        return pages.asset("chat.css")

    # --- the rest -----------------------------------------------------------------------
    @api.get("/v1/models", response_model=ModelList, responses=errors(401))
    async def models(self, credentials: ApiCredentials) -> ModelList:
        self._authenticate(credentials, "models")
        name = self.config.engine.served_model_name
        card = ModelCard(id=name, root=self.config.engine.model_path)
        loaded = (self.adapters.stable, self.adapters.canary)
        extra = [
            ModelCard(id=slot.ref, parent=name)
            for slot in loaded
            if slot is not None and slot.ref != chat.BASE_ADAPTER
        ]
        return ModelList(data=[card, *extra])

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 ``status: ok`` while answers are served and accepted events are delivered
        or spooled (a broker outage alone is fine); 503 ``status: degraded``, with
        ``delivery`` saying why, when accepted events could be neither."""
        await self.engine.check_health()
        problem = self.producer.delivery_problem()
        body = {
            "status": "ok" if problem is None else "degraded",
            "delivery": problem or "ok",
            "adapter": self.adapters.stable.ref,
            "canary": self.adapters.canary_ref,
            "spooled_events": len(self.producer.spool),
        }
        return JSONResponse(body, status_code=200 if problem is None else 503)

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics(self) -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def check_health(self) -> None:
        """Ray Serve's own liveness probe: an engine that died takes the replica down."""
        if self.engine.llm.errored:
            raise RuntimeError("vLLM engine is dead")

    def __del__(self) -> None:
        if hasattr(self, "_stop"):
            self._stop.set()
        exporter = getattr(self, "exporter", None)
        if exporter is not None:
            exporter.close()
        producer = getattr(self, "producer", None)
        if producer is not None:
            producer.close()
        board = getattr(self, "board", None)
        if board is not None:
            with contextlib.suppress(Exception):  # at interpreter exit SQLAlchemy may be gone
                board.sources.close()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def build_app(config: ServingConfig) -> Application:
    return ChatServer.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": config.replica_num_cpus},
        max_ongoing_requests=config.max_ongoing_requests,
    ).bind(config)
