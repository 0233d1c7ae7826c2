"""Secrets in tracking URIs (issue 28): a password never reaches a message, a file, dvc.lock or an MLflow run.

Credentials live where MLflow and libpq read them (MLFLOW_TRACKING_USERNAME and _PASSWORD or _TOKEN, PGPASSWORD,
~/.pgpass); a tracking URI that carries one is refused, shown masked, before anything is written. Against real
things: a basic-auth `mlflow server` with one real training, a basic-auth proxy in front of it that guards /health
too, a password-protected PostgreSQL, real image files. A password found is reported as FAULT-LEAK.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.cluster import POSTGRES_BIN, POSTGRES_PACKAGES, PostgresServer, why_not_installed
from tests.faults import assert_kept, assert_refused, invoke, run, snapshot
from tests.helpers import REPO, SMALL_RUN, small_run_params, write_params
from tests.mlflow_server import MlflowServer, free_port

pytestmark = pytest.mark.xdist_group("faults-secrets")  # one worker: its tiny training is made once

SECRET = "S3cretPw"
ADMIN_PASSWORD = f"{SECRET}-admin-1"  # the basic-auth server's admin: MLflow wants 12 characters at least
PG_PASSWORD = f"{SECRET}-pg"
CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
HTTP_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
PASSWORD_URIS = {  # the finding's two stores, each on a port nobody listens on
    "postgresql": f"postgresql://u:{SECRET}@127.0.0.1:9/db",
    "http": f"http://u:{SECRET}@127.0.0.1:9",
}
WHERE_CREDENTIALS_GO = {"postgresql": "PGPASSWORD", "http": "MLFLOW_TRACKING_PASSWORD"}


def _files(root: Path) -> dict[str, str]:
    """Every file under `root` (not only data/, metrics/, plots/): a refusal creates no store or log either."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def assert_unleaked(text: str, where: str, secrets: tuple[str, ...] = (SECRET,)) -> None:
    found = [secret for secret in secrets if secret in text]
    assert not found, f"FAULT-LEAK: {found} in {where}: {text[-1500:]}"


def refused_masked(root: Path, *args: str, names: tuple[str, ...], secrets=(SECRET,), env=None) -> str:
    """tests/faults.py's promises (one line naming `names`, exit 2, nothing lost or RUNNING), plus: no file
    created or changed, and no secret in what the command printed or wrote. Every kind it breaks is reported."""
    before, files = snapshot(root), _files(root)
    result = invoke(*args, cwd=root, env=env)
    problems, line = [], ""
    try:
        line = assert_refused(result, *names)
    except AssertionError as failure:
        problems.append(str(failure))
    written = [path for path, digest in _files(root).items() if files.get(path) != digest]
    contents = "".join((root / path).read_text(errors="replace") for path in written)
    checks: list[Callable[[], None]] = [
        lambda: assert_kept(before, snapshot(root)),
        lambda: assert_unleaked(result.stdout + result.stderr, "the output", secrets),
        lambda: assert_unleaked(contents, f"the files it wrote ({written})", secrets),
        lambda: _assert_unwritten(written),
    ]
    for check in checks:
        try:
            check()
        except AssertionError as failure:
            problems.append(str(failure))
    assert not problems, " ".join(problem.split(":", 1)[0] for problem in problems) + " | " + " | ".join(problems)
    return line


def _assert_unwritten(written: list[str]) -> None:
    assert not written, f"FAULT-LOST: a refusal wrote {written}"


def params_with_uri(root: Path, uri: str) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["mlflow"]["tracking_uri"] = uri
    write_params(root / "params.yaml", raw)


# (a) a password in params.yaml: refused by every stage and by check, masked, before anything is written


@pytest.mark.parametrize("store", PASSWORD_URIS)
@pytest.mark.parametrize("command", ["train", "check"])
def test_a_password_in_params_is_refused_masked(workdir, command, store):
    params_with_uri(workdir, PASSWORD_URIS[store])
    line = refused_masked(workdir, command, names=("mlflow.tracking_uri", "u:***@127.0.0.1:9"))
    assert WHERE_CREDENTIALS_GO[store] in line


@pytest.mark.parametrize(  # own case
    "uri",
    [
        f"postgresql+psycopg://u@127.0.0.1:9/db?sslmode=disable&password={SECRET}",  # libpq's password parameter
        f"HTTPS://u:{SECRET}@127.0.0.1:9/mlflow",  # a scheme in capitals is the same scheme
        f"http://u:{SECRET}@bad@127.0.0.1:9",  # an unescaped @ in the password: all of it is the password
    ],
    ids=["query-password", "capital-scheme", "at-in-password"],
)
def test_other_spellings_of_a_password_are_refused_masked(workdir, uri):
    params_with_uri(workdir, uri)
    line = refused_masked(workdir, "check", names=("mlflow.tracking_uri", "***"), secrets=(SECRET, "bad@"))
    assert "PGPASSWORD" in line if uri.startswith("postgresql") else "MLFLOW_TRACKING_PASSWORD" in line


# (b) a password in --tracking-uri of compare and predict


@pytest.mark.parametrize("command", ["compare", "predict"])
def test_a_password_in_the_tracking_uri_argument_is_refused_masked(tmp_path, command):
    Image.new("L", (28, 28), 128).save(tmp_path / "shoe.png")
    uri = PASSWORD_URIS["http"]
    args = {
        "compare": ("compare", "--tracking-uri", uri, "--experiment", SMALL_RUN),
        "predict": ("predict", "shoe.png", "--model", f"models:/{SMALL_RUN}@champion", "--tracking-uri", uri),
    }[command]
    line = refused_masked(tmp_path, *args, names=("--tracking-uri", "u:***@127.0.0.1:9", *HTTP_VARIABLES))
    assert "mlflow.tracking_uri" not in line  # the argument is named, not the params key


# (c) a real basic-auth MLflow server: credentials in the environment work, and are kept nowhere


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth`, its users in a folder of its own; the admin logs in with
    ADMIN_PASSWORD, and every other user may only read."""
    root = tmp_path_factory.mktemp("auth-server")
    (root / "basic_auth.ini").write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root}/basic_auth.db\n"
        f"admin_username = admin\nadmin_password = {ADMIN_PASSWORD}\n"
    )
    server = MlflowServer(root, free_port(), app="basic-auth")
    settings = {"MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "tests-only"}
    try:
        with mock.patch.dict(os.environ, settings):  # the server's process inherits them
            server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_data, auth_server):
    """train, then evaluate, logging to the basic-auth server with the credentials in the environment only: the
    folder, and what the two commands printed (made once for this module)."""
    root = tmp_path_factory.mktemp("trained")
    raw = small_run_params(yaml.safe_load((REPO / "params.yaml").read_text()), root)
    raw["mlflow"]["tracking_uri"] = auth_server.url
    write_params(root / "params.yaml", raw)
    shutil.copytree(prepared_data, root / "data")
    return root, [run(stage, cwd=root, env=CREDENTIALS) for stage in ("train", "evaluate")]


@pytest.fixture
def trained_copy(tmp_path, trained) -> Path:
    root, _ = trained
    shutil.copytree(root, tmp_path / "copy")
    return tmp_path / "copy"


def server_runs(server: MlflowServer) -> list:
    with mock.patch.dict(os.environ, CREDENTIALS):
        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name(SMALL_RUN)
        return client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_basic_auth_server_works_with_the_credentials_in_the_environment(trained, auth_server):
    _, outputs = trained
    for result in outputs:
        assert result.returncode == 0, f"FAULT-UNCLEAR: {result.args[3:]}: {result.stderr[-2000:]}"
    statuses = {run.data.tags.get("cnnpipe.stage"): run.info.status for run in server_runs(auth_server)}
    assert statuses == {"train": "FINISHED", "evaluate": "FINISHED"}


def test_the_password_is_written_and_printed_nowhere(trained, auth_server, tmp_path):
    root, outputs = trained
    secrets = (ADMIN_PASSWORD, SECRET)
    for result in outputs:
        assert_unleaked(result.stdout + result.stderr, f"the output of {result.args[3:]}", secrets)
    for path in sorted(root.rglob("*")):  # data/, metrics/, plots/, run.json, state.json, dvc.lock if any
        if path.is_file():
            assert_unleaked(path.read_bytes().decode("latin-1"), str(path.relative_to(root)), secrets)
    runs = server_runs(auth_server)
    assert runs, "no runs to look in"
    with mock.patch.dict(os.environ, CREDENTIALS):
        client = MlflowClient(auth_server.url)
        for found in runs:
            fields = json.dumps({"params": found.data.params, "tags": found.data.tags})
            assert_unleaked(fields, f"the params and tags of run {found.info.run_name}", secrets)
            folder = Path(client.download_artifacts(found.info.run_id, "", str(tmp_path / found.info.run_id)))
            for path in (path for path in folder.rglob("*") if path.is_file()):
                assert_unleaked(path.read_bytes().decode("latin-1"), f"artifact {path.relative_to(folder)}", secrets)


def test_without_credentials_one_line_names_the_401_and_the_variables(trained_copy):
    for command in ("train", "evaluate"):
        refused_masked(trained_copy, command, names=("mlflow.tracking_uri", "401", *HTTP_VARIABLES))


def test_compare_without_credentials_names_the_401_and_the_variables(trained, auth_server, tmp_path):  # own case
    compare = ("compare", "--tracking-uri", auth_server.url, "--experiment", SMALL_RUN)
    refused_masked(tmp_path, *compare, names=("--tracking-uri", "401", *HTTP_VARIABLES))


def test_a_wrong_password_is_refused_and_not_printed(trained_copy):  # own case
    wrong = {**CREDENTIALS, "MLFLOW_TRACKING_PASSWORD": "wrong-guess-1234"}
    refused_masked(trained_copy, "train", names=("mlflow.tracking_uri", "401"), secrets=("wrong-guess",), env=wrong)


class _BasicAuthProxy(http.server.BaseHTTPRequestHandler):
    """A reverse proxy in front of the basic-auth server that asks for the admin's credentials on every path,
    /health included (as an nginx in front of MLflow may), and forwards the requests it lets through."""

    upstream = ""

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        expected = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self._answer(401, b"", "text/plain", {"WWW-Authenticate": 'Basic realm="mlflow"'})
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        headers = {key: value for key in ("Authorization", "Content-Type") if (value := self.headers.get(key))}
        request = urllib.request.Request(self.upstream + self.path, data=body, method=self.command, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                self._answer(response.status, response.read(), response.headers.get("Content-Type"))
        except urllib.error.HTTPError as error:
            self._answer(error.code, error.read(), error.headers.get("Content-Type"))

    def _answer(self, status: int, payload: bytes, kind: str | None, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": kind or "text/plain", **(extra or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        """Quiet: its access log would land in the stderr that the in-process command is judged by."""


def test_a_server_whose_health_needs_the_credentials(trained, auth_server, tmp_path):  # own case
    handler = type("Proxy", (_BasicAuthProxy,), {"upstream": auth_server.url})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    compare = ("compare", "--tracking-uri", f"http://127.0.0.1:{proxy.server_address[1]}", "--experiment", SMALL_RUN)
    try:
        refused_masked(tmp_path, *compare, names=("--tracking-uri", "401", *HTTP_VARIABLES))
        result = invoke(*compare, "--format", "csv", cwd=tmp_path, env=CREDENTIALS)
    finally:
        proxy.shutdown()
    assert result.returncode == 0, f"FAULT-UNCLEAR: with the credentials set: {result.stderr[-1500:]}"
    assert len(result.stdout.strip().splitlines()) == 2, result.stdout  # the header and the one training


def test_an_old_run_file_holding_a_password_is_shown_masked(trained_copy):  # own case
    run_file = trained_copy / "data/train/run.json"
    record = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**record, "tracking_uri": f"http://admin:{SECRET}@127.0.0.1:9"}))
    refused_masked(trained_copy, "evaluate", names=("admin:***@127.0.0.1:9",))


# (d) a real password-protected PostgreSQL as the tracking store


@pytest.fixture(scope="module")
def protected_postgres():
    """tests/cluster.py's PostgreSQL (trust authentication), switched to passwords: the role gets PG_PASSWORD
    and pg_hba.conf asks for it (scram-sha-256) on every connection."""
    if reason := why_not_installed(POSTGRES_PACKAGES, str(POSTGRES_BIN / "postgres")):
        pytest.skip(reason)
    postgres = PostgresServer()
    try:
        postgres.up()
        psql = ("psql", "-h", "127.0.0.1", "-p", str(postgres.port), "-d", "mlflow", "-w")
        postgres._as_postgres(*psql, "-c", f"ALTER ROLE postgres PASSWORD '{PG_PASSWORD}'")
        hba = postgres.root / "data/pg_hba.conf"
        hba.write_text(hba.read_text().replace("trust", "scram-sha-256"))
        postgres._as_postgres("pg_ctl", "-D", str(postgres.root / "data"), "reload")
        deadline = time.monotonic() + 20
        while _connects_without_password(postgres):  # the reload is asynchronous
            assert time.monotonic() < deadline, "pg_hba.conf was not reloaded"
            time.sleep(0.2)
        yield postgres
    finally:
        postgres.down()


def _connects_without_password(postgres: PostgresServer) -> bool:
    import psycopg

    try:
        psycopg.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="mlflow", password="").close()
    except psycopg.OperationalError:
        return False
    return True


@pytest.mark.cluster
def test_a_password_protected_postgres_without_pgpassword_is_one_line(protected_postgres, workdir):
    params_with_uri(workdir, protected_postgres.uri)
    refused_masked(workdir, "check", names=("mlflow.tracking_uri", "PGPASSWORD"), secrets=(SECRET,))


@pytest.mark.cluster
def test_a_password_protected_postgres_works_with_pgpassword(protected_postgres, workdir):
    params_with_uri(workdir, protected_postgres.uri)
    result = invoke("check", cwd=workdir, env={"PGPASSWORD": PG_PASSWORD})
    assert result.returncode == 0, f"FAULT-UNCLEAR: {result.stderr[-1500:]}"
    assert "params.yaml: valid" in result.stdout
    assert_unleaked(result.stdout + result.stderr, "the output")
