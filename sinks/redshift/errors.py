"""Driver and S3 errors -> zetl errors with what failed, where, and whether a retry can help."""

from __future__ import annotations

from typing import Any

from zetl.errors import SinkConnectionError, SinkError, ZetlError

__all__ = ["map_driver_error", "map_s3_error"]

# SQLSTATE classes and codes where running the same batch again can succeed.
_RETRYABLE_STATES = ("40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53")
_RETRYABLE_TEXT = ("serializable isolation violation", "connection", "terminating", "timeout", "timed out")


def _fields(exc: BaseException) -> dict[str, Any]:
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, dict) else {}


def map_driver_error(exc: BaseException, *, action: str, table: str | None = None) -> ZetlError:
    """A ``SinkError`` for an error raised by redshift-connector while doing ``action``."""
    if isinstance(exc, ZetlError):
        return exc
    import redshift_connector  # the caller got this error from the driver, so it is installed

    fields = _fields(exc)
    where = f" on {table}" if table else ""
    state = str(fields.get("C", ""))
    message = str(fields.get("M") or exc)
    detail = fields.get("D")
    column = fields.get("c")
    text = f"Redshift error while {action}{where}: {message}"
    if column:
        text += f" (column {column})"
    if detail:
        text += f"; detail: {detail}"
    if state:
        text += f" [SQLSTATE {state}]"
    if isinstance(exc, (redshift_connector.InterfaceError, OSError)) and not fields:
        return SinkConnectionError(f"lost or could not open the Redshift connection while {action}{where}: {exc}; zetl retries")
    if state.startswith("08"):
        return SinkConnectionError(text + "; zetl retries")
    # Redshift reports a serialization conflict as XX000 "1023" with the explanation in the detail.
    both = f"{message} {detail or ''}".lower()
    retryable = state.startswith(_RETRYABLE_STATES) or (state == "XX000" and any(t in both for t in _RETRYABLE_TEXT))
    if state.startswith("42") and "permission" in message.lower():
        text += "; grant the sink's user the needed privileges on the target schema"
    return SinkError(text + ("; zetl retries" if retryable else ""), retryable=retryable)


def map_s3_error(exc: BaseException, *, action: str, bucket: str) -> ZetlError:
    """A ``SinkError`` for a boto3/botocore error while staging to S3."""
    name = type(exc).__name__
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError") or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"):
        return SinkConnectionError(f"S3 unreachable while {action} (bucket {bucket}): {exc}; zetl retries")
    hint = ""
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        hint = "; check the s3 credentials and the bucket policy"
    elif code == "NoSuchBucket":
        hint = "; create the bucket or fix sink.s3.bucket"
    return SinkError(f"S3 error while {action} (bucket {bucket}): {exc}{hint}", retryable=False)
