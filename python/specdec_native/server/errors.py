"""Errors answered as OpenAI does: an HTTP status and {"error": {"message", "type", "param", "code"}}."""
import json
from typing import Optional, Sequence


class APIError(Exception):
    """An error answered as OpenAI does: an HTTP status and {"error": {...}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def aborted() -> APIError:
    return APIError(503, "the request was aborted", type="server_error", code="request_aborted")


def validation_error(errors: Sequence[dict]) -> APIError:
    """A 400 from pydantic's errors (malformed JSON, a missing or wrongly typed field)."""
    if not errors:
        return bad_request("invalid request body")
    e = errors[0]
    if e.get("type") == "json_invalid":
        detail = (e.get("ctx") or {}).get("error", "")
        return bad_request(f"the request body is not valid JSON: {detail}".rstrip(": "))
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    # Union members show up as loc parts like "str" or "list[int]": keep only the field path.
    path = ".".join(x for x in loc if "[" not in x and x not in ("str", "int", "float", "bool"))
    message = f"{path}: {e.get('msg', 'invalid value')}" if path else e.get("msg", "invalid request body")
    return bad_request(message, param=path or None)


def install_error_handlers(app) -> None:
    """Makes every error `app` answers (ours, validation, HTTP, unexpected) an OpenAI error body."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def error_response(err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request, exc: RequestValidationError):
        return error_response(validation_error(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _pydantic_validation(request, exc: ValidationError):
        return error_response(validation_error(exc.errors()))

    @app.exception_handler(json.JSONDecodeError)
    async def _json_error(request, exc: json.JSONDecodeError):
        return error_response(bad_request(f"the request body is not valid JSON: {exc}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(APIError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))
