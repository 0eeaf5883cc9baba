"""Domain exceptions; each carries the HTTP status and error code it becomes."""

from __future__ import annotations


class ApiError(Exception):
    """Base class: an error the client is told about (status 500 `internal`)."""

    status = 500
    code = "internal"
    message = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = headers or {}
        self.request_id: str | None = None  # set once a request record exists


class MissingImage(ApiError):
    """400: the request carries no image."""

    status, code, message = 400, "missing_image", "no image was uploaded"


class InvalidImage(ApiError):
    """400: the bytes are of a known format but not a usable image."""

    status, code, message = 400, "invalid_image", "the image could not be decoded"


class InvalidField(ApiError):
    """400: a form field or query parameter is invalid."""

    status, code, message = 400, "invalid_field", "invalid field"

    def __init__(self, message: str | None = None, *, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.fields = fields or {}


class TooManyImages(ApiError):
    """400: more images than COVIDXRAY_MAX_BATCH."""

    status, code, message = 400, "too_many_images", "too many images in one request"


class CsrfFailed(ApiError):
    """400: the form's CSRF token is missing or wrong."""

    status, code, message = 400, "csrf_failed", "the form expired; please reload the page and try again"


class Unauthorized(ApiError):
    """401: missing or invalid token."""

    status, code, message = 401, "unauthorized", "a valid bearer token is required"

    def __init__(self, reason: str = "invalid_token"):
        super().__init__(headers={"WWW-Authenticate": 'Bearer realm="covidxray", error="invalid_token"'})
        self.reason = reason


class Forbidden(ApiError):
    """403: the token lacks the scope or does not own the resource."""

    status, code, message = 403, "forbidden", "this token may not do that"


class NotFound(ApiError):
    """404: no such resource."""

    status, code, message = 404, "not_found", "not found"


class MethodNotAllowed(ApiError):
    """405: the route does not accept this method."""

    status, code, message = 405, "method_not_allowed", "method not allowed"


class TooLarge(ApiError):
    """413: the body exceeds COVIDXRAY_MAX_UPLOAD_MB."""

    status, code, message = 413, "too_large", "the upload is too large"


class UnsupportedType(ApiError):
    """415: the bytes are not PNG, JPEG, DICOM or still GIF."""

    status, code, message = 415, "unsupported_type", "only PNG, JPEG, DICOM and still GIF images are accepted"


class UnsupportedModality(ApiError):
    """422: a DICOM file that is not a plain radiograph."""

    status, code, message = 422, "unsupported_modality", "only CR/DX radiographs with pixel data are accepted"


class NotChestRadiograph(ApiError):
    """The gate found the image unlike a frontal chest radiograph (COVIDXRAY_OOD=refuse)."""

    status, code = 422, "not_chest_radiograph"
    message = "this image is not a frontal chest radiograph; send a frontal (PA or AP) chest X-ray"


class RateLimited(ApiError):
    """429: too many requests for this token or client address."""

    status, code, message = 429, "rate_limited", "too many requests; retry later"


class BackendUnavailable(ApiError):
    """503: the prediction backend cannot answer now."""

    status, code, message = 503, "backend_unavailable", "the prediction backend is unavailable"


class BurnedInText(ApiError):
    """422: text is burnt into the pixels and COVIDXRAY_BURNED_IN=refuse."""

    status, code = 422, "burned_in_text"
    message = "the image has text burnt into its pixels (names, dates); send it without, or ask for redaction"
