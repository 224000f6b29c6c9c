"""The deployment and monitoring files agree with the code they deploy and watch.

Procfile, Dockerfile, docker-compose.yml, k8s/*.yaml and monitoring/** are only text until
something runs them; these tests read them (no Docker, no cluster) and check them against bday
itself: every environment variable is a real setting, every `bday ...` and `celery -A bday ...`
command exists and parses, every metric in an alert or a panel is one bday (or an exporter it
runs) actually exports, ports and names line up across files, and Prometheus' own `promtool`
accepts the configuration and makes every alert fire on the condition it describes.

`promtool` comes from Debian's `prometheus` package (`apt-get install prometheus`).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROCFILE = ROOT / "Procfile"
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "k8s"
MONITORING = ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "bday.json"
GRAFANA_PROVISIONING = MONITORING / "grafana" / "provisioning"

YAML_FILES = sorted(
    [COMPOSE, PROMETHEUS_CONFIG, ALERTS, *K8S.rglob("*.yaml"), *GRAFANA_PROVISIONING.rglob("*.yml")]
)

# Variables bday processes read that are not fields of bday.config.Settings.
EXTRA_SETTINGS = {
    "FLOWER_BASIC_AUTH",
    "PROMETHEUS_MULTIPROC_DIR",
    "WORKER_METRICS_PORT",
    "LOG_FORMAT",
    "LOG_LEVEL",
}
CELERY_SUBCOMMANDS = {"worker", "beat", "flower", "inspect"}
BDAY_IMAGE = "bday:latest"
EMAIL_SERVICE_TIMEOUT_S = 10
BRIEFED_ALERTS = {
    "QueueDepthHigh",
    "DLQGrowing",
    "ConsumerDown",
    "MessagesOverdue",
    "EmailServiceErrors",
    "BeatStale",
    "EmailServiceDown",
}
PROMTOOL_MISSING = (
    "promtool is not on PATH. It ships with Debian's Prometheus package: "
    "`apt-get install -y --no-install-recommends prometheus` (as root)."
)


# --- loading ---------------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def load_yaml(path: Path):
    documents = load_yaml_documents(path)
    assert len(documents) == 1, f"{path.name}: expected one YAML document, found {len(documents)}"
    return documents[0]


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def k8s_objects() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.rglob("*.yaml"))
        for doc in load_yaml_documents(path)
    ]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def promtool_path() -> str:
    """promtool's path; a missing promtool fails the calling test (it is never skipped)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(PROMTOOL_MISSING)
    return path


def bday_services(compose: dict) -> dict[str, dict]:
    """Compose services that run bday's own image (built from the Dockerfile)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if "build" in service or service.get("image") == BDAY_IMAGE
    }


def k8s_workloads(k8s_objects) -> list[tuple[str, dict]]:
    return [(source, obj) for source, obj in k8s_objects if obj["kind"] in ("Deployment", "Job")]


def k8s_containers(k8s_objects) -> list[tuple[str, dict]]:
    return [
        (f"{source}:{obj['metadata']['name']}/{container['name']}", container)
        for source, obj in k8s_workloads(k8s_objects)
        for container in obj["spec"]["template"]["spec"]["containers"]
    ]


def bday_containers(k8s_objects) -> list[tuple[str, dict]]:
    return [(where, c) for where, c in k8s_containers(k8s_objects) if c["image"] == BDAY_IMAGE]


def known_settings() -> set[str]:
    """Every environment variable name bday.config.Settings reads (its `_env(NAME, ...)`)."""
    from pydantic import AliasChoices

    from bday.config import Settings

    names = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
    assert {"RABBITMQ_URL", "DATABASE_URL", "EMAIL_SERVICE_URL"} <= names, "Settings not read"
    return names | EXTRA_SETTINGS


def compose_environment(service: dict) -> dict:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(entry.split("=", 1) if "=" in entry else (entry, None) for entry in environment)
    return dict(environment)


# --- shell command lines -> argument vectors --------------------------------------------------

_SEPARATORS = {"&&", "||", ";", "|", "&", "{", "}", "(", ")", "!"}
# `>/dev/null`, `2>&1`, `< in`: a word that starts with an optional fd and a redirection operator,
# with its target (not meant for `>` inside quoted strings, which these files do not use).
_REDIRECTION = re.compile(r"(?<!\S)\d*[<>]+&?\s*[^\s;&|]+")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def simple_commands(script: str) -> list[list[str]]:
    """Split a shell line into its simple commands' argv (without `exec`, env prefixes and
    redirections). Enough shell for Procfile lines and probe commands, no more."""
    script = _REDIRECTION.sub(" ", script)
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in _SEPARATORS:
            commands.append(current)
            current = []
        elif not current and (token == "exec" or _ASSIGNMENT.match(token)):
            continue
        else:
            current.append(token)
    commands.append(current)
    return [command for command in commands if command]


def argvs_of(command) -> list[list[str]]:
    """argv lists of a compose `command`/healthcheck `test` or a k8s `command` + `args`."""
    if command is None:
        return []
    if isinstance(command, str):
        return simple_commands(command)
    command = list(command)
    if command and command[0] == "CMD-SHELL":
        return simple_commands(" ".join(command[1:]))
    if command and command[0] == "CMD":
        command = command[1:]
    if len(command) >= 3 and command[0] in ("sh", "/bin/sh", "bash") and command[1] == "-c":
        return simple_commands(command[2])
    return [command] if command else []


def procfile_processes() -> dict[str, str]:
    processes = {}
    for line in PROCFILE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match:
            processes[match[1]] = match[2]
    return processes


def every_command_line() -> list[tuple[str, list[str]]]:
    """(where, argv) for every command that Procfile, compose and k8s run in bday's image."""
    found = []
    for name, line in procfile_processes().items():
        line = _ENV_DEFAULT.sub(lambda match: match[2], line)  # as the shell expands an unset one
        found += [(f"Procfile:{name}", argv) for argv in simple_commands(line)]
    compose_file = load_yaml(COMPOSE)
    for name, service in bday_services(compose_file).items():
        found += [(f"docker-compose.yml:{name}", argv) for argv in argvs_of(service.get("command"))]
        test = (service.get("healthcheck") or {}).get("test")
        found += [(f"docker-compose.yml:{name} healthcheck", argv) for argv in argvs_of(test)]
    objects = [(p.name, doc) for p in sorted(K8S.rglob("*.yaml")) for doc in load_yaml_documents(p)]
    for where, container in bday_containers(objects):
        run = list(container.get("command") or []) + list(container.get("args") or [])
        found += [(where, argv) for argv in argvs_of(run)]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            exec_ = (container.get(probe) or {}).get("exec")
            if exec_:
                found += [(f"{where} {probe}", argv) for argv in argvs_of(exec_["command"])]
    return found


def resolve_bday_command(argv: list[str]) -> click.Command:
    """Walk `bday a b c --opt v` through the click groups; parse the options of the leaf."""
    from bday.cli.main import main

    command, path, args = main, ["bday"], list(argv[1:])
    while isinstance(command, click.Group):
        assert args and not args[0].startswith("-"), (
            f"`{' '.join(argv)}`: {' '.join(path)} needs a subcommand"
        )
        sub = command.get_command(click.Context(command, info_name=path[-1]), args[0])
        assert sub is not None, (
            f"`{' '.join(argv)}`: {' '.join(path)} has no subcommand {args[0]!r} "
            f"(it has: {', '.join(sorted(command.list_commands(click.Context(command))))})"
        )
        path.append(args.pop(0))
        command = sub
    try:
        command.make_context(" ".join(path), args)
    except click.ClickException as exc:
        pytest.fail(f"`{' '.join(argv)}` does not parse: {exc.format_message()}")
    return command


# --- PromQL ----------------------------------------------------------------------------------

_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "Inf",
    "NaN",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (enough PromQL for alerts and panels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.])", " ", text)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match[0] in _PROMQL_KEYWORDS:
            continue  # a function, an aggregation or a keyword
        names.add(match[0])
    return names


def exported_metric_names() -> set[str]:
    """Sample names bday exports: bday.telemetry.metrics' Counter/Histogram/... objects with the suffixes
    prometheus_client adds, plus the state gauges of `bday metrics`."""
    from prometheus_client.metrics import MetricWrapperBase

    from bday.telemetry import metrics

    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_count", "_sum"],
        "gauge": [""],
        "summary": ["", "_count", "_sum"],
        "info": ["_info"],
        "enum": [""],
    }
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    names.update(metrics.STATE_METRICS)
    names.add("bday_breaker_state")
    return names


def unknown_metrics(expr: str, known: set[str]) -> set[str]:
    return {
        name
        for name in promql_metric_names(expr)
        if name not in known and not name.startswith(("celery_", "rabbitmq_")) and name != "up"
    }


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    found = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return found


# --- every file parses -----------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_deploy_yaml_file_parses(path: Path) -> None:
    assert load_yaml_documents(path), f"{path.name} is empty"


def test_deploy_file_set_is_complete() -> None:
    expected = {
        "configmap.yaml",
        "migrate-job.yaml",
        "worker-deployment.yaml",
        "beat-deployment.yaml",
        "flower-deployment.yaml",
        "metrics-deployment.yaml",
        "celery-exporter-deployment.yaml",
    }
    assert expected <= {p.name for p in K8S.glob("*.yaml")}
    for path in (
        PROCFILE,
        DOCKERFILE,
        COMPOSE,
        PROMETHEUS_CONFIG,
        ALERTS,
        DASHBOARD,
        GRAFANA_PROVISIONING / "datasources" / "prometheus.yml",
        GRAFANA_PROVISIONING / "dashboards" / "bday.yml",
        MONITORING / "rabbitmq" / "enabled_plugins",
    ):
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"


def test_dashboard_is_grafana_json_on_the_provisioned_prometheus_datasource(dashboard) -> None:
    datasources = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    prometheus = next(ds for ds in datasources if ds["type"] == "prometheus")
    assert prometheus["uid"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"

    assert dashboard["uid"] == "bday" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": prometheus["uid"]}, panel[
            "title"
        ]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == prometheus["uid"], panel["title"]
            assert target["refId"] and target["expr"], panel["title"]


def test_dashboard_has_the_briefed_panels(dashboard) -> None:
    exprs = " ".join(expr for _, expr in dashboard_exprs(dashboard))
    for needed in (
        "bday_queue_depth",
        "bday_email_service_latency_seconds_bucket",
        "bday_delivery_lateness_seconds_bucket",
        "bday_messages_failed_total",
        "bday_messages_sent_total",
        "bday_email_service_errors_total",
        "bday_dlq_depth",
        "bday_queue_consumers",
        "bday_messages",
        "bday_breaker_state",
    ):
        assert re.search(rf"\b{needed}\b", exprs), f"no panel queries {needed}"
    for quantile in ("0.50", "0.95", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (le, type) (rate(bday_delivery_lateness_seconds_bucket"
            in exprs
        )


def test_grafana_provisioning_loads_the_dashboard_from_where_compose_mounts_it(compose) -> None:
    providers = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "bday.yml")["providers"]
    paths = {provider["options"]["path"] for provider in providers}
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["grafana"]["volumes"])
    assert mounts["./monitoring/grafana/dashboards"] in paths
    assert (
        mounts["./monitoring/grafana/provisioning/dashboards"]
        == "/etc/grafana/provisioning/dashboards"
    )
    assert (
        mounts["./monitoring/grafana/provisioning/datasources"]
        == "/etc/grafana/provisioning/datasources"
    )


# --- configuration names ---------------------------------------------------------------------


def test_compose_sets_only_known_bday_settings(compose) -> None:
    known = known_settings()
    services = bday_services(compose)
    assert {"migrate", "worker", "beat", "flower", "metrics"} <= set(services)
    for name, service in services.items():
        unknown = set(compose_environment(service)) - known
        assert not unknown, (
            f"docker-compose.yml service {name} sets unknown settings {sorted(unknown)}"
        )


def test_compose_points_bday_at_the_compose_broker_and_database(compose) -> None:
    for name, service in bday_services(compose).items():
        environment = compose_environment(service)
        assert "@rabbitmq:5672/" in environment["RABBITMQ_URL"], name
        assert "@postgres:5432/bday" in environment["DATABASE_URL"], name
        assert environment["DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert environment["EMAIL_SERVICE_URL"], name


def test_k8s_configmap_and_secret_set_only_known_bday_settings(k8s_objects) -> None:
    known = known_settings()
    by_kind = {obj["kind"]: obj for _, obj in k8s_objects if obj["kind"] in ("ConfigMap", "Secret")}
    config_names = set(by_kind["ConfigMap"]["data"])
    secret_names = set(by_kind["Secret"].get("stringData") or {}) | set(
        by_kind["Secret"].get("data") or {}
    )
    assert not config_names - known, (
        f"configmap.yaml: unknown settings {sorted(config_names - known)}"
    )
    assert not secret_names - known, (
        f"k8s/examples/secret.yaml: unknown settings {sorted(secret_names - known)}"
    )
    assert {"RABBITMQ_URL", "DATABASE_URL", "FLOWER_BASIC_AUTH"} <= secret_names
    assert not config_names & {"RABBITMQ_URL", "DATABASE_URL", "FLOWER_BASIC_AUTH"}, (
        "credentials belong in the Secret, not the ConfigMap"
    )
    for where, container in bday_containers(k8s_objects):
        names = {entry["name"] for entry in container.get("env", [])}
        assert not names - known, f"{where}: unknown settings {sorted(names - known)}"


def test_k8s_bday_containers_read_the_configmap_and_secret_that_exist(k8s_objects) -> None:
    names = {(obj["kind"], obj["metadata"]["name"]) for _, obj in k8s_objects}
    for where, container in bday_containers(k8s_objects):
        refs = container.get("envFrom", [])
        config = [ref["configMapRef"]["name"] for ref in refs if "configMapRef" in ref]
        secret = [ref["secretRef"]["name"] for ref in refs if "secretRef" in ref]
        assert config and secret, f"{where} must read both the ConfigMap and the Secret"
        assert all(("ConfigMap", name) in names for name in config), where
        assert all(("Secret", name) in names for name in secret), where


def test_repository_holds_no_real_secret(compose, k8s_objects) -> None:
    secret = next(obj for _, obj in k8s_objects if obj["kind"] == "Secret")
    for key, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, f"k8s/examples/secret.yaml {key} must be a placeholder"
    postgres = compose_environment(compose["services"]["postgres"])
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD"), "password from env only"
    flower = compose_environment(compose["services"]["flower"])
    assert flower["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH"), (
        "Flower's basic auth comes from the env (bday refuses to start it on 0.0.0.0 without)"
    )


# --- commands --------------------------------------------------------------------------------


def test_every_bday_subcommand_used_exists_and_parses() -> None:
    used = [(where, argv) for where, argv in every_command_line() if argv[0] == "bday"]
    assert {" ".join(argv[:3]) for _, argv in used} >= {"bday db upgrade"}
    assert any(argv[1] == "metrics" for _, argv in used)
    for _where, argv in used:
        resolve_bday_command(argv)  # fails with the missing subcommand or bad option named


def test_every_celery_command_uses_the_bday_app_and_a_real_subcommand() -> None:
    from celery.app.control import Inspect
    from celery.bin.celery import celery

    used = [(where, argv) for where, argv in every_command_line() if argv[0] == "celery"]
    assert {argv[3] for _, argv in used} >= {"worker", "beat", "flower"}
    for where, argv in used:
        assert argv[1:3] in (["-A", "bday"], ["--app", "bday"]), (
            f"{where}: `{' '.join(argv)}` must use -A bday"
        )
        subcommand = argv[3]
        assert subcommand in CELERY_SUBCOMMANDS, (
            f"{where}: unexpected celery subcommand {subcommand!r}"
        )
        assert subcommand in celery.commands, f"{where}: celery has no subcommand {subcommand!r}"
        if subcommand == "inspect":
            assert hasattr(Inspect, argv[4]), f"{where}: celery inspect has no {argv[4]!r}"


def test_procfile_runs_every_process_and_says_to_migrate_first() -> None:
    processes = procfile_processes()
    assert set(processes) == {"worker", "beat", "flower", "metrics", "celery_exporter"}
    assert simple_commands(processes["worker"]) == [
        [
            "celery",
            "-A",
            "bday",
            "worker",
            # one name per honcho process: `honcho start -c worker=2` must not start two
            # workers of one name (the second exits on Celery's exclusive control queue)
            "-n",
            "${HONCHO_PROCESS_NAME:-celery}@%h",
            "--loglevel=INFO",
            "--concurrency=${QUEUE_CONCURRENCY:-64}",
        ]
    ]
    assert simple_commands(processes["beat"]) == [
        ["celery", "-A", "bday", "beat", "--loglevel=INFO"]
    ]
    flower = simple_commands(processes["flower"])[0]
    assert flower[:4] == ["celery", "-A", "bday", "flower"] and "--address=127.0.0.1" in flower
    metrics = simple_commands(processes["metrics"])[0]
    assert metrics[:2] == ["bday", "metrics"] and "--address" in metrics
    comments = [
        line for line in PROCFILE.read_text(encoding="utf-8").splitlines() if line.startswith("#")
    ]
    assert any("bday db upgrade" in line for line in comments), (
        "Procfile must say to run `bday db upgrade` first"
    )


def test_procfile_celery_exporter_runs_the_pypi_exporter_against_the_broker() -> None:
    assert procfile_processes()["celery_exporter"] == "scripts/celery-exporter"
    script = (ROOT / "scripts/celery-exporter").read_text(encoding="utf-8").replace("\\\n", " ")
    argvs = [
        argv
        for line in script.splitlines()
        if not line.lstrip().startswith("#")
        for argv in simple_commands(line)
    ]
    exporter = next(argv for argv in argvs if "from src.cli import cli; cli()" in argv)
    assert exporter[1:3] == ["-c", "from src.cli import cli; cli()"], exporter
    assert any(arg.startswith("--broker-url=") and "RABBITMQ_URL" in arg for arg in exporter)
    assert env_default(exporter[exporter.index("--port") + 1]) == ("TASK_EXPORTER_PORT", "9808")
    assert any("prometheus-exporter-celery" in " ".join(argv) for argv in argvs), (
        "the line installs the exporter it runs"
    )


_ENV_DEFAULT = re.compile(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}")


def env_default(word: str) -> tuple[str, str] | None:
    """(NAME, default) of a word that is exactly `${NAME:-default}` (or `--opt=${...}`)."""
    match = _ENV_DEFAULT.fullmatch(word.split("=", 1)[-1] if word.startswith("--") else word)
    return (match[1], match[2]) if match else None


def _option(argv: list[str], name: str) -> str:
    """The value of `--name V` or `--name=V` in argv."""
    for index, word in enumerate(argv):
        if word == name:
            return argv[index + 1]
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
    raise AssertionError(f"no {name} in {argv}")


def test_procfile_ports_come_from_the_environment_with_the_defaults_deployed_elsewhere(
    compose, k8s_objects
) -> None:
    processes = procfile_processes()
    flower = simple_commands(processes["flower"])[0]
    metrics = simple_commands(processes["metrics"])[0]
    assert env_default(_option(flower, "--port")) == ("FLOWER_PORT", "5555")
    assert env_default(_option(metrics, "--port")) == ("METRICS_PORT", "9750")
    comments = "\n".join(line for line in PROCFILE.read_text().splitlines() if line.startswith("#"))
    for name in ("FLOWER_PORT", "METRICS_PORT", "TASK_EXPORTER_PORT", "WORKER_METRICS_PORT"):
        assert name in comments, f"the Procfile's comments name {name}"
    # compose and k8s serve the same defaults inside; compose publishes Flower on FLOWER_PORT
    services = compose["services"]
    assert _option(argvs_of(services["flower"]["command"])[0], "--port") == "5555"
    assert services["flower"]["ports"] == ["127.0.0.1:${FLOWER_PORT:-5555}:5555"]
    assert _option(argvs_of(services["metrics"]["command"])[0], "--port") == "9750"
    assert "9808" in services["celery-exporter"]["expose"]
    ports = {
        obj["metadata"]["name"]: {p["port"] for p in obj["spec"]["ports"]}
        for _, obj in k8s_objects
        if obj["kind"] == "Service"
    }
    assert {"bday-flower": {5555}, "bday-metrics": {9750}}.items() <= ports.items()
    assert 9808 in set().union(*ports.values())


def test_simple_commands_understands_the_shell_used_in_these_files() -> None:
    assert simple_commands("exec FOO=1 bday metrics --port 9750 >/dev/null 2>&1") == [
        ["bday", "metrics", "--port", "9750"]
    ]
    assert simple_commands("[ -x a ] || { b c; } && exec d 'e f'") == [
        ["[", "-x", "a", "]"],
        ["b", "c"],
        ["d", "e f"],
    ]
    assert argvs_of(["sh", "-c", 'celery -A bday inspect ping -d "celery@$HOSTNAME"']) == [
        ["celery", "-A", "bday", "inspect", "ping", "-d", "celery@$HOSTNAME"]
    ]


# --- compose ---------------------------------------------------------------------------------


def _depends_on(service: dict) -> dict:
    depends = service.get("depends_on") or {}
    return (
        {name: {"condition": "service_started"} for name in depends}
        if isinstance(depends, list)
        else depends
    )


def test_compose_runs_migrations_before_worker_and_beat(compose) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert argvs_of(migrate["command"]) == [["bday", "db", "upgrade"]]
    assert _depends_on(migrate)["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "beat"):
        assert (
            _depends_on(services[name])["migrate"]["condition"] == "service_completed_successfully"
        ), name


def test_compose_keeps_long_running_services_up_and_one_beat(compose) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name != "migrate":
            assert service.get("restart") == "unless-stopped", name
    assert services["migrate"].get("restart", "no") == "no"
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert "scale" not in services["beat"]


def test_compose_health_checks_broker_database_and_worker(compose) -> None:
    services = compose["services"]
    assert services["rabbitmq"]["healthcheck"]["test"] == [
        "CMD",
        "rabbitmq-diagnostics",
        "-q",
        "ping",
    ]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    worker_check = argvs_of(services["worker"]["healthcheck"]["test"])
    assert worker_check[0][:5] == ["celery", "-A", "bday", "inspect", "ping"]
    assert "celery@$$HOSTNAME" in worker_check[0], "ping this worker only ($$ escapes compose)"


def test_compose_builds_bday_from_the_dockerfile_and_mounts_files_that_exist(compose) -> None:
    for name, service in bday_services(compose).items():
        assert service["build"] in (".", {"context": "."}), name
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    rabbitmq_mounts = {v.split(":")[1] for v in compose["services"]["rabbitmq"]["volumes"]}
    assert "/etc/rabbitmq/enabled_plugins" in rabbitmq_mounts
    plugins = (MONITORING / "rabbitmq" / "enabled_plugins").read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"\[[a-z_,]+\]\.", plugins) and "rabbitmq_prometheus" in plugins
    prometheus_mounts = {
        v.split(":")[0]: v.split(":")[1] for v in compose["services"]["prometheus"]["volumes"]
    }
    assert prometheus_mounts["./monitoring/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert prometheus_mounts["./monitoring/alerts.yml"] == "/etc/prometheus/alerts.yml"


def test_prometheus_scrapes_the_compose_services_on_the_ports_they_serve(compose) -> None:
    services = compose["services"]
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    targets = {}
    for job in config["scrape_configs"]:
        hosts = [t for static in job.get("static_configs", []) for t in static["targets"]]
        hosts += [
            f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]
        ]
        targets[job["job_name"]] = hosts
    assert targets == {
        "bday": ["metrics:9750"],
        "bday-worker": ["worker:9751"],
        "celery": ["celery-exporter:9808"],
        "rabbitmq": ["rabbitmq:15692"],
    }
    for hosts in targets.values():
        for host in hosts:
            assert host.split(":")[0] in services, f"scrape target {host} is not a compose service"
    metrics_argv = argvs_of(services["metrics"]["command"])[0]
    assert metrics_argv[metrics_argv.index("--port") + 1] == "9750"
    assert compose_environment(services["worker"])["WORKER_METRICS_PORT"] == "9751"
    exporter_args = " ".join(services["celery-exporter"]["command"])
    assert "--broker-url=amqp://" in exporter_args and "@rabbitmq:5672/" in exporter_args


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_installs_bday_as_non_root_and_runs_the_worker() -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(line.startswith("RUN pip install .") for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    cmd = next(line for line in reversed(lines) if line.startswith("CMD "))
    assert json.loads(cmd[4:]) == ["celery", "-A", "bday", "worker", "--loglevel=INFO"]
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    copied = {
        source.rstrip("/")
        for line in lines
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    assert {"pyproject.toml", "README.md", "bday", "migrations"} <= copied, (
        "pip install . needs pyproject.toml, its readme, the package and the migrations it ships"
    )


# --- Kubernetes ------------------------------------------------------------------------------


def _workload(k8s_objects, name: str) -> dict:
    return next(
        obj
        for _, obj in k8s_objects
        if obj["kind"] in ("Deployment", "Job") and obj["metadata"]["name"] == name
    )


def test_k8s_workloads_are_well_formed(k8s_objects) -> None:
    for source, obj in k8s_objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), source
    for source, obj in k8s_workloads(k8s_objects):
        template_labels = obj["spec"]["template"]["metadata"]["labels"]
        if obj["kind"] == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= template_labels.items(), (
                f"{source}: selector misses its pods"
            )
    deployments = [obj for _, obj in k8s_objects if obj["kind"] == "Deployment"]
    for source, service in ((s, o) for s, o in k8s_objects if o["kind"] == "Service"):
        pods = [
            d
            for d in deployments
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"{source}: Service {service['metadata']['name']} selects no Deployment"
        port_names = {
            p.get("name")
            for d in pods
            for c in d["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert isinstance(target, int) or target in port_names, (
                f"{source}: no container port {target}"
            )


def test_k8s_bday_containers_use_the_bday_image(k8s_objects) -> None:
    for where, container in k8s_containers(k8s_objects):
        if "celery-exporter" in where:
            assert container["image"].startswith("danihodovic/celery-exporter")
            assert any(arg.startswith("--broker-url=") for arg in container["args"])
        else:
            assert container["image"] == BDAY_IMAGE, where


def test_k8s_migrate_job_upgrades_the_database(k8s_objects) -> None:
    job = _workload(k8s_objects, "bday-migrate")
    assert job["kind"] == "Job"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["bday", "db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_k8s_workers_drain_sends_before_being_killed(k8s_objects) -> None:
    from bday.config import Settings

    worker = _workload(k8s_objects, "bday-worker")
    assert worker["spec"]["replicas"] == 2
    pod = worker["spec"]["template"]["spec"]
    configmap = next(o for _, o in k8s_objects if o["kind"] == "ConfigMap")
    timeout_ms = int(
        configmap["data"].get(
            "EMAIL_SERVICE_TIMEOUT", Settings.model_fields["email_service_timeout_ms"].default
        )
    )
    assert timeout_ms / 1000 == EMAIL_SERVICE_TIMEOUT_S
    assert pod["terminationGracePeriodSeconds"] >= 60 > timeout_ms / 1000
    (container,) = pod["containers"]
    assert container["command"] == ["celery", "-A", "bday", "worker", "--loglevel=INFO"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    metrics_port = int(env.get("WORKER_METRICS_PORT", 9751))
    assert metrics_port == 9751
    assert metrics_port in {p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        spec = container[probe]
        assert spec["timeoutSeconds"] >= 10 and spec["periodSeconds"] >= spec["timeoutSeconds"], (
            probe
        )
        (argv,) = argvs_of(spec["exec"]["command"])
        assert argv[:5] == ["celery", "-A", "bday", "inspect", "ping"] or argv[:2] == [
            "bday",
            "health",
        ], probe


def test_k8s_runs_exactly_one_beat_even_during_rollouts(k8s_objects) -> None:
    beat = _workload(k8s_objects, "bday-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    (container,) = beat["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["celery", "-A", "bday", "beat", "--loglevel=INFO"]


def test_k8s_flower_and_metrics_are_reachable_through_services(k8s_objects) -> None:
    services = {obj["metadata"]["name"]: obj for _, obj in k8s_objects if obj["kind"] == "Service"}
    assert {p["port"] for p in services["bday-flower"]["spec"]["ports"]} == {5555}
    assert {p["port"] for p in services["bday-metrics"]["spec"]["ports"]} == {9750}
    (metrics,) = _workload(k8s_objects, "bday-metrics")["spec"]["template"]["spec"]["containers"]
    assert metrics["command"][:2] == ["bday", "metrics"]
    assert metrics["command"][metrics["command"].index("--port") + 1] == "9750"


# --- metric names ----------------------------------------------------------------------------


def test_promql_metric_name_extraction() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="y"}[5m]))) / clamp_min(b, 1e-9)'
    ) == {"a_bucket", "b"}
    assert promql_metric_names('(c{state!="closed"} == 1) and ignoring(state) (d > 180)') == {
        "c",
        "d",
    }
    assert promql_metric_names('time() - e{name="beat"} > 180') == {"e"}


def test_every_metric_in_the_alerts_is_exported(alert_rules) -> None:
    known = exported_metric_names()
    for rule in alert_rules:
        assert not unknown_metrics(rule["expr"], known), (
            f"alert {rule['alert']} uses metrics bday does not export: {sorted(unknown_metrics(rule['expr'], known))}"
        )


def test_every_metric_on_the_dashboard_is_exported(dashboard) -> None:
    known = exported_metric_names()
    for title, expr in dashboard_exprs(dashboard):
        assert not unknown_metrics(expr, known), (
            f"panel {title!r} uses metrics bday does not export: {sorted(unknown_metrics(expr, known))}"
        )


def test_alerts_cover_the_brief_with_severity_and_text(alert_rules) -> None:
    names = {rule["alert"] for rule in alert_rules}
    assert names >= BRIEFED_ALERTS, f"missing alerts {sorted(BRIEFED_ALERTS - names)}"
    for rule in alert_rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule.get("for"), f"{rule['alert']} must hold for a while before it fires"


# --- promtool --------------------------------------------------------------------------------


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = promtool_path()
    result = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = promtool_path()
    result = run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(dashboard, tmp_path) -> None:
    promtool = promtool_path()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": expr}
                    for index, (_, expr) in enumerate(dashboard_exprs(dashboard))
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# Series as Prometheus stores them after scraping: target labels job/instance added.
_BDAY = 'job="bday", instance="metrics:9750"'
_WORKER = 'job="bday-worker", instance="worker:9751"'
ALERT_CASES = {
    "QueueDepthHigh": ([(f"bday_queue_depth{{{_BDAY}}}", "1001x15")], "7m", {}),
    "DLQGrowing": ([(f"bday_dlq_depth{{{_BDAY}}}", "0+1x15")], "7m", {}),
    "ConsumerDown": ([(f"bday_queue_consumers{{{_BDAY}}}", "0x15")], "3m", {}),
    "MessagesOverdue": ([(f"bday_oldest_overdue_seconds{{{_BDAY}}}", "301x15")], "7m", {}),
    "EmailServiceErrors": (
        [
            (f'bday_email_service_errors_total{{{_WORKER}, kind="http_5xx"}}', "0+60x20"),
            (f"bday_email_service_latency_seconds_count{{{_WORKER}}}", "0+90x20"),
        ],
        "12m",
        None,
    ),
    "BeatStale": (
        [(f'bday_heartbeat_timestamp_seconds{{{_BDAY}, name="beat"}}', "0x15")],
        "8m",
        {"name": "beat"},
    ),
    "EmailServiceDown": (
        [
            (f'bday_breaker_state{{{_BDAY}, state="open"}}', "1x15"),
            (f'bday_breaker_state{{{_BDAY}, state="closed"}}', "0x15"),
            (f'bday_breaker_state{{{_BDAY}, state="half_open"}}', "0x15"),
            (f"bday_breaker_open_seconds{{{_BDAY}}}", "0+60x15"),
        ],
        "6m",
        {"state": "open"},
    ),
    "BdayExporterDown": ([(f"up{{{_BDAY}}}", "0x15")], "4m", {}),
    "BdayExporterCannotRead": ([(f"bday_exporter_errors{{{_BDAY}}}", "1x15")], "7m", {}),
    "PeakForecastLate": (
        [
            (f"bday_forecast_peak_lateness_seconds{{{_BDAY}}}", "3700x15"),
            (f"bday_lateness_budget_seconds{{{_BDAY}}}", "3600x15"),
        ],
        "12m",
        {},
    ),
    "MessagesInDefaultPartition": (
        [(f"bday_messages_default_partition_rows{{{_BDAY}}}", "3x15")],
        "12m",
        {},
    ),
    "MessagePartitionsMissing": (
        [(f"bday_message_partition_months{{{_BDAY}}}", "1x80")],
        "70m",
        {},
    ),
}
# The same alerts on a healthy system: nothing may fire.
HEALTHY_SERIES = [
    (f"bday_queue_depth{{{_BDAY}}}", "1000x15"),
    (f"bday_dlq_depth{{{_BDAY}}}", "3x15"),
    (f"bday_queue_consumers{{{_BDAY}}}", "2x15"),
    (f"bday_oldest_overdue_seconds{{{_BDAY}}}", "299x15"),
    (f'bday_email_service_errors_total{{{_WORKER}, kind="http_5xx"}}', "0+6x15"),
    (f"bday_email_service_latency_seconds_count{{{_WORKER}}}", "0+60x15"),
    (f'bday_heartbeat_timestamp_seconds{{{_BDAY}, name="beat"}}', "0+60x15"),
    (f'bday_breaker_state{{{_BDAY}, state="closed"}}', "1x15"),
    (f'bday_breaker_state{{{_BDAY}, state="open"}}', "0x15"),
    (f"bday_breaker_open_seconds{{{_BDAY}}}", "0x15"),
    (f"up{{{_BDAY}}}", "1x15"),
    (f"bday_exporter_errors{{{_BDAY}}}", "0x15"),
    (f"bday_forecast_peak_lateness_seconds{{{_BDAY}}}", "3500x15"),
    (f"bday_lateness_budget_seconds{{{_BDAY}}}", "3600x15"),
    (f"bday_messages_default_partition_rows{{{_BDAY}}}", "0x15"),
    (f"bday_message_partition_months{{{_BDAY}}}", "2x15"),
]


def _labels_of(series: str) -> dict:
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


def test_every_alert_fires_on_its_condition_and_not_on_a_healthy_system(
    alert_rules, tmp_path
) -> None:
    promtool = promtool_path()
    assert set(ALERT_CASES) == {rule["alert"] for rule in alert_rules}, "one case per alert"
    # promtool compares annotations too; the rules are tested without them (their templates
    # are checked by `promtool check rules`).
    stripped = {
        "groups": [
            {
                "name": "bday",
                "rules": [
                    {key: value for key, value in rule.items() if key != "annotations"}
                    for rule in alert_rules
                ],
            }
        ]
    }
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(stripped), encoding="utf-8")
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules}
    tests = []
    for alert, (series, at, extra_labels) in ALERT_CASES.items():
        if extra_labels is None:  # an aggregated alert keeps no series labels
            labels = {}
        else:
            labels = {k: v for k, v in _labels_of(series[0][0]).items() if k in ("job", "instance")}
            labels.update(extra_labels)
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": alert,
                        "exp_alerts": [{"exp_labels": {**labels, "severity": severities[alert]}}],
                    }
                ],
            }
        )
    tests.append(
        {
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in HEALTHY_SERIES],
            "alert_rule_test": [
                {"eval_time": "14m", "alertname": alert, "exp_alerts": []} for alert in ALERT_CASES
            ],
        }
    )
    unit = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "alerts.test.yml").write_text(yaml.safe_dump(unit), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
