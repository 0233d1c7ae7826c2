"""Tracking URIs as cnnpipe shows them: never with a password.

params.yaml is committed to git, and DVC copies every param of the train stage into dvc.lock, `dvc exp show` and
each experiment's commit; cnnpipe logs them to MLflow too. So a URI that carries a password is refused (config's
MlflowConfig, the CLI's --tracking-uri) and credentials go where MLflow and the database drivers read them; a URI
read from an older file, or inside a library's error, is shown masked.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://USER:PASSWORD@: the password runs to the last @ before the path's query or the text's next blank, so
# an unescaped @ in it is masked too (over-masking a path is harmless; showing half a password is not)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][\w+.\-]*://[^\s:/?#@'\"]*:)[^\s?#'\"]+@")
# ?password=..., libpq's sslpassword, a token: query parameters that hold a secret
_QUERY = re.compile(r"(?P<head>[?&;][^=&#\s'\"]*(?:password|passwd|pwd|token|secret)[^=&#\s'\"]*=)[^&#\s'\"]+", re.I)


def mask_uri(text: str) -> str:
    """`text`, a URI or a message holding URIs, with every password as *** (scheme://user:***@host,
    ?password=***): what cnnpipe may print."""
    return _QUERY.sub(rf"\g<head>{MASK}", _USERINFO.sub(rf"\g<head>{MASK}@", text))


def credentials_hint(uri: str) -> str:
    """Where the credentials of `uri`'s kind of store go instead: what MLflow or the driver reads by itself."""
    scheme = uri.partition("://")[0].lower().partition("+")[0]
    if scheme in ("http", "https"):
        return (
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment "
            "and give http(s)://HOST"
        )
    if scheme in ("postgresql", "postgres"):
        return "set PGPASSWORD in the environment or put the password in ~/.pgpass, and give postgresql://USER@HOST/DB"
    return "give the password to the database driver through its environment or option file, not in the URI"


def password_refusal(uri: str) -> str | None:
    """Why `uri` cannot be used as written (it carries a password), or None when it carries none."""
    if not (_USERINFO.search(uri) or _QUERY.search(uri)):
        return None
    return f"holds a password, which cnnpipe never stores (git, dvc.lock, MLflow) or shows; {credentials_hint(uri)}"
