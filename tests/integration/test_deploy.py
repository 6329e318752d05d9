"""The production deployment files (deploy/) and ClickHouse cluster mode (sinks/cluster.py), checked without
Docker or Kubernetes: every file parses, images are pinned, every `tracehouse` command line parses with the
real CLI parser, every TRACEHOUSE_* variable is a setting core/settings.py declares, ports agree, and every
SQL statement a dashboard or the cluster DDL holds runs on the real ClickHouse engine (chdb, in a
subprocess) against the schema the migrations create.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tracehouse.cli.main import COMMANDS, build_parser
from tracehouse.core.config import parse_clickhouse_url
from tracehouse.core.settings import declared_names
from tracehouse.read.queries import QUERIES
from tracehouse.sinks.cluster import (
    NODE_LOCAL_ENGINES,
    cluster_statements,
    cluster_tables,
    migrations_table_statements,
    transform_statement,
)
from tracehouse.sinks.ddl import MIGRATIONS, MIGRATIONS_TABLE, Migration, render

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
GRAFANA = DEPLOY / "grafana"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
ENV_NAME = re.compile(r"TRACEHOUSE_[A-Z0-9_]+")
DATASOURCE_UID = "tracehouse-clickhouse"


# ---- loading -------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


def k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def is_tracehouse_image(image: str) -> bool:
    return image.rsplit("/", 1)[-1].split(":")[0] == "tracehouse"


def tracehouse_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if is_tracehouse_image(s.get("image", ""))}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in k8s_docs():
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for where, spec in pod_specs():
        for container in spec["containers"]:
            yield f"{where}/{container['name']}", container


def k8s_env() -> dict[str, str]:
    (configmap,) = k8s("ConfigMap", "tracehouse-env")
    return dict(configmap["data"])


# ---- what the code reads -------------------------------------------------------------------------


def source_dirs() -> list[Path]:
    """Every folder pyproject.toml packages (so a new package is scanned without editing this test)."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    return sorted({REPO / d for d in mapping.values()})


def env_names_read_by_code() -> set[str]:
    """Every TRACEHOUSE_* name the code reads: the settings core/settings.py declares (the only module that
    reads them), with NAME_FILE where a file may stand in for a secret."""
    return declared_names()


def test_the_code_reads_the_security_variables() -> None:
    """The registry holds the variables the code is known to read."""
    names = env_names_read_by_code()
    assert {
        "TRACEHOUSE_KAFKA_BOOTSTRAP",
        "TRACEHOUSE_CLICKHOUSE_URL",
        "TRACEHOUSE_RECEIVER_TOKENS_FILE",
        "TRACEHOUSE_KAFKA_SECURITY_PROTOCOL",
        "TRACEHOUSE_KAFKA_SASL_PASSWORD_FILE",
        "TRACEHOUSE_CLICKHOUSE_PASSWORD_FILE",
        "TRACEHOUSE_CLICKHOUSE_CA",
    } <= names
    assert "TRACEHOUSE_TEST_KAFKA" not in names  # the tests' own variables are not settings


def env_names_used_by_deploy() -> dict[str, set[str]]:
    """Every TRACEHOUSE_* name a deploy file sets or references, with where."""
    used: dict[str, set[str]] = {}

    def add(name: str, where: str) -> None:
        used.setdefault(name, set()).add(where)

    for name, service in tracehouse_services().items():
        for key in service.get("environment", {}):
            add(key, f"compose:{name}")
    for name in ENV_NAME.findall((DEPLOY / "docker-compose.yml").read_text()):
        add(name, "compose")
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if ENV_NAME.match(line):
            add(line.split("=", 1)[0], ".env.example")
    for name in ENV_NAME.findall((DEPLOY / "Dockerfile").read_text()):
        add(name, "Dockerfile")
    for key in k8s_env():
        add(key, "k8s:tracehouse-env")
    for where, container in containers():
        for item in container.get("env", []):
            if ENV_NAME.fullmatch(item["name"]):
                add(item["name"], where)
        for name in ENV_NAME.findall(json.dumps([container.get("command"), container.get("args")])):
            add(name, where)
    return used


# ---- docker compose ------------------------------------------------------------------------------


def test_compose_services_and_start_order() -> None:
    services = compose()["services"]
    assert set(services) == {
        "kafka", "clickhouse", "migrate", "receiver", "worker", "sink", "grafana",
    }  # fmt: skip
    for name in ("kafka", "clickhouse", "receiver", "worker", "sink", "grafana"):
        assert "healthcheck" in services[name], name

    def needs(service: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[service]["depends_on"].items()}

    # `tracehouse migrate` makes the topics and the schema; no separate topics job.
    assert needs("migrate") == {"kafka": "service_healthy", "clickhouse": "service_healthy"}
    for name in ("receiver", "worker", "sink"):
        assert needs(name) == {"migrate": "service_completed_successfully"}, name
    assert needs("grafana") == {"clickhouse": "service_healthy"}
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["command"] == ["migrate"]
    for name, service in tracehouse_services().items():
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name


def test_compose_kafka_is_kraft_and_partitions_agree() -> None:
    services = compose()["services"]
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "zookeeper" not in json.dumps(services).lower()
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    env = services["sink"]["environment"]
    assert env["TRACEHOUSE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    default = re.fullmatch(r"\$\{TRACEHOUSE_SPANS_PARTITIONS:-(\d+)\}", env["TRACEHOUSE_SPANS_PARTITIONS"])
    assert default, "the worker's partition count must follow the same variable as the topic"
    assert services["migrate"]["environment"]["TRACEHOUSE_SPANS_PARTITIONS"] == env["TRACEHOUSE_SPANS_PARTITIONS"]
    # Only migrate creates topics: a topic a client merely asked about never appears with the wrong count.
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert int(env["TRACEHOUSE_TOPIC_REPLICATION_FACTOR"]) == 1  # one broker


def test_topics_are_declared_once_in_core_and_made_by_migrate() -> None:
    """No deploy file scripts topic creation: every one runs `tracehouse migrate`, which creates the
    topics from core/topics.py with the retention and message size the brokers are configured for."""
    from tracehouse.core import topics

    for path in [DEPLOY / "docker-compose.yml", *K8S.glob("*.yaml")]:
        assert "kafka-topics.sh" not in path.read_text(), f"{path.name} creates topics itself"
    specs = {spec.name: spec for spec in topics.topic_specs(12, 3)}
    assert set(specs) == set(topics.ALL)
    assert {name for name, spec in specs.items() if spec.partitions == 12 and spec.strict} == {
        topics.SPANS,
        topics.TRACES,
        topics.SCORES,
        topics.SPANS_KEPT,
    }
    kafka = compose()["services"]["kafka"]["environment"]
    for spec in specs.values():
        assert spec.replication_factor == 3 and spec.configs["min.insync.replicas"] == "2"
        assert int(spec.configs["max.message.bytes"]) == int(kafka["KAFKA_MESSAGE_MAX_BYTES"])
        assert int(spec.configs["retention.ms"]) == int(kafka["KAFKA_LOG_RETENTION_HOURS"]) * 3600 * 1000
    assert "min.insync.replicas" not in topics.topic_specs(4, 1)[0].configs
    (job,) = k8s("Job", "tracehouse-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "migrate" and "--skip-topics" not in container["args"]
    assert k8s_env()["TRACEHOUSE_TOPIC_REPLICATION_FACTOR"] == "3"


def test_worker_and_sink_health_is_probed_where_it_is_served() -> None:
    from tracehouse.core.config import DEFAULT_SINK_HEALTH_PORT, DEFAULT_WORKER_HEALTH_PORT
    from tracehouse.producers.otlp.app import DEFAULT_PORT as RECEIVER_PORT
    from tracehouse.web.app import DEFAULT_PORT as WEB_PORT

    defaults = {"worker": DEFAULT_WORKER_HEALTH_PORT, "sink": DEFAULT_SINK_HEALTH_PORT}
    assert len({*defaults.values(), RECEIVER_PORT, WEB_PORT, 8123, 9092, 9464}) == 7, "health ports clash"
    services = compose()["services"]
    env = k8s_env()
    deployments = {d["metadata"]["name"]: d for d in k8s("Deployment")}
    for name, default in defaults.items():
        variable = f"TRACEHOUSE_{name.upper()}_HEALTH_PORT"
        port = int(services[name]["environment"][variable])
        assert port == default, name
        assert f"127.0.0.1:{port}/health/ready" in " ".join(services[name]["healthcheck"]["test"]), name
        assert int(env[variable]) == default, name
        assert env[f"TRACEHOUSE_{name.upper()}_HEALTH_HOST"] == "0.0.0.0", name  # the kubelet probes the pod IP
        (container,) = deployments[f"tracehouse-{name}"]["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["health"] == default, name
        assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "health"}, name
        assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "health"}, name


# ---- images --------------------------------------------------------------------------------------

# Tags that exist upstream look like these (checked by hand; nothing here can pull): Apache Kafka images
# start at 3.7.0; ClickHouse tags are YY.M.patch.build, production on an LTS (YY.3 or YY.8); Grafana
# 10-12; the ClickHouse plugin's v4 is the one for Grafana 10+.
TAG_RULES = {
    "apache/kafka": re.compile(r"(3\.[789]|4\.\d)\.\d+"),
    "clickhouse/clickhouse-server": re.compile(r"2[4-9]\.[38]\.\d+\.\d+"),
    "grafana/grafana": re.compile(r"1[0-2]\.\d+\.\d+"),
}


def all_images() -> list[tuple[str, str]]:
    images = [(f"compose:{n}", s["image"]) for n, s in compose()["services"].items()]
    images += [(where, c["image"]) for where, c in containers()]
    for stage in re.findall(r"^FROM\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE):
        images.append(("Dockerfile", stage))
    return images


def test_images_are_pinned_to_real_looking_tags() -> None:
    for where, image in all_images():
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"{where}: {image} has no pinned tag"
        base = name.split("/", 1)[1] if name.startswith("registry.example.com/") else name
        if is_tracehouse_image(image):
            assert tag == VERSION, f"{where}: {image} should carry the package version {VERSION}"
        elif base in TAG_RULES:
            assert TAG_RULES[base].fullmatch(tag), f"{where}: {image}: tag does not look like a release"
        elif base == "python":
            assert tag == "3.11-slim", f"{where}: {image}"
        else:
            pytest.fail(f"{where}: unexpected image {image}")
    plugins = compose()["services"]["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    assert re.fullmatch(r"grafana-clickhouse-datasource 4\.\d+\.\d+", plugins)


# ---- commands ------------------------------------------------------------------------------------


def command_lines() -> list[tuple[str, list[str]]]:
    lines = [(f"compose:{name}", [str(a) for a in s["command"]]) for name, s in tracehouse_services().items()]
    lines += [(where, c["args"]) for where, c in containers() if is_tracehouse_image(c["image"])]
    return lines


def test_every_tracehouse_command_line_parses_with_the_cli() -> None:
    lines = command_lines()
    assert {args[0] for _, args in lines} == {"migrate", "receiver", "worker", "sink"}
    parser = build_parser()
    for where, args in lines:
        assert args[0] in COMMANDS, f"{where}: no command {args[0]!r}"
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: `tracehouse {' '.join(args)}` does not parse")
        assert parsed.command == args[0]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["tracehouse"]' in dockerfile


def test_dockerfile_builds_one_non_root_image_with_the_extras() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    install = re.search(r'pip install "\.\[([a-z,]+)\]"', text)
    assert install and install.group(1) == "pipeline,sinks,receiver,cli"
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert all(extra in extras for extra in install.group(1).split(","))
    user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "EXPOSE 4318" in text
    # The build context is the repository root, filtered: every packaged folder is sent, the rest is not.
    ignored = {
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "tests", ".git"} <= ignored
    for folder in source_dirs():
        assert folder.relative_to(REPO).parts[0] not in ignored, f"{folder.name} would be missing from the image"


# ---- environment variables -----------------------------------------------------------------------


def test_every_tracehouse_variable_in_deploy_is_read_by_the_code() -> None:
    read = env_names_read_by_code()
    unknown = {name: sorted(where) for name, where in env_names_used_by_deploy().items() if name not in read}
    assert not unknown, f"deploy files set variables no code reads: {unknown}"


# ---- ports ---------------------------------------------------------------------------------------


def test_ports_agree() -> None:
    from tracehouse.producers.otlp.app import DEFAULT_PORT

    assert DEFAULT_PORT == 4318
    services = compose()["services"]
    receiver = services["receiver"]
    assert "4318:4318" in receiver["ports"]
    assert int(receiver["environment"]["TRACEHOUSE_RECEIVER_PORT"]) == 4318
    assert "127.0.0.1:4318/health" in " ".join(receiver["healthcheck"]["test"])
    assert "127.0.0.1:8123:8123" in services["clickhouse"]["ports"]
    assert parse_clickhouse_url(services["sink"]["environment"]["TRACEHOUSE_CLICKHOUSE_URL"]).port == 8123
    assert int(services["grafana"]["environment"]["CLICKHOUSE_PORT"]) == 8123
    assert int(services["sink"]["environment"]["TRACEHOUSE_SINK_METRICS_PORT"]) == 9464

    env = k8s_env()
    assert env["TRACEHOUSE_RECEIVER_PORT"] == "4318"
    (service,) = k8s("Service", "tracehouse-receiver")
    assert service["spec"]["ports"][0]["port"] == 4318
    (receiver_deploy,) = k8s("Deployment", "tracehouse-receiver")
    (container,) = receiver_deploy["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == 4318
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    (sink,) = k8s("Deployment", "tracehouse-sink")
    annotations = sink["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == env["TRACEHOUSE_SINK_METRICS_PORT"]
    (sink_container,) = sink["spec"]["template"]["spec"]["containers"]
    assert str(sink_container["ports"][0]["containerPort"]) == env["TRACEHOUSE_SINK_METRICS_PORT"]
    target = parse_clickhouse_url(env["TRACEHOUSE_CLICKHOUSE_URL"])
    assert target.secure and target.port == 8443 and env["TRACEHOUSE_CLICKHOUSE_CA"]


# ---- kubernetes ----------------------------------------------------------------------------------


def test_k8s_manifests_parse_and_hold_what_production_needs() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in k8s_docs() if d["kind"] != "Kustomization")
    assert kinds == sorted(
        [
            ("Namespace", "tracehouse"),
            ("ConfigMap", "tracehouse-env"),
            ("ConfigMap", "tracehouse-alert-rules"),
            ("Secret", "tracehouse-secrets"),
            ("Job", "tracehouse-migrate"),
            ("Deployment", "tracehouse-receiver"),
            ("Service", "tracehouse-receiver"),
            ("HorizontalPodAutoscaler", "tracehouse-receiver"),
            ("PodDisruptionBudget", "tracehouse-receiver"),
            ("Deployment", "tracehouse-worker"),
            ("PodDisruptionBudget", "tracehouse-worker"),
            ("Deployment", "tracehouse-sink"),
            ("PodDisruptionBudget", "tracehouse-sink"),
        ]
    )
    deployments = {d["metadata"]["name"]: d for d in k8s("Deployment")}
    assert deployments["tracehouse-worker"]["spec"]["replicas"] >= 2
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items(), name
    for kind in ("PodDisruptionBudget", "Service"):
        for doc in k8s(kind):
            selector = doc["spec"]["selector"].get("matchLabels", doc["spec"]["selector"])
            assert any(
                selector.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values()
            ), f"{kind}/{doc['metadata']['name']} selects no pods"
    (hpa,) = k8s("HorizontalPodAutoscaler")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tracehouse-receiver"}
    assert hpa["spec"]["scaleTargetRef"] == target
    for doc in k8s_docs():
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"]["namespace"] == "tracehouse", doc["metadata"]["name"]
    for where, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: volume {mount['name']} is not defined"
            if is_tracehouse_image(container["image"]):
                assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
                assert container["envFrom"] == [{"configMapRef": {"name": "tracehouse-env"}}], where


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "tracehouse"


def test_k8s_secrets_are_files_from_the_one_secret() -> None:
    (secret,) = k8s("Secret", "tracehouse-secrets")
    keys = set(secret["stringData"])
    env = k8s_env()
    for name, value in env.items():
        if value.startswith("/var/run/secrets/tracehouse/"):
            assert value.rsplit("/", 1)[1] in keys, f"{name}: {value} is not a key of tracehouse-secrets"
        if "PASSWORD" in name or "TOKENS" in name:
            assert name.endswith("_FILE"), f"{name}: secrets go in files, not in the ConfigMap"
    for where, spec in pod_specs():
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] == "tracehouse-secrets", where


def test_alert_rules_are_the_same_everywhere_and_valid() -> None:
    from tracehouse.pipeline.alert_rules import load_rules

    rules_file = DEPLOY / "alerts.toml"
    assert len(load_rules(rules_file)) >= 4
    (configmap,) = k8s("ConfigMap", "tracehouse-alert-rules")
    assert configmap["data"]["alerts.toml"] == rules_file.read_text(), "deploy/k8s/configmap.yaml drifted"
    env = k8s_env()
    (worker,) = k8s("Deployment", "tracehouse-worker")
    mounts = {m["mountPath"]: m["name"] for m in worker["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[str(Path(env["TRACEHOUSE_ALERT_RULES"]).parent)] == "alert-rules"
    service = compose()["services"]["worker"]
    assert f"./alerts.toml:{service['environment']['TRACEHOUSE_ALERT_RULES']}:ro" in service["volumes"]


# ---- grafana -------------------------------------------------------------------------------------


def test_grafana_provisioning() -> None:
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning/datasources/clickhouse.yml").read_text())["datasources"]
    assert datasource["type"] == "grafana-clickhouse-datasource"
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["jsonData"]["protocol"] == "http"
    assert datasource["jsonData"]["defaultDatabase"] == "tracehouse"
    grafana = compose()["services"]["grafana"]
    for value in json.dumps(datasource).split('"'):
        for variable in re.findall(r"\$\{?([A-Z_]+)", value):
            assert variable in grafana["environment"], f"Grafana's environment lacks {variable}"
    # The read-only ClickHouse user the data source logs in as.
    users = ET.parse(DEPLOY / "clickhouse/users.d/grafana.xml").getroot()
    user = grafana["environment"]["CLICKHOUSE_GRAFANA_USER"]
    password = users.find(f"users/{user}/password")
    assert password is not None and password.get("from_env") == "CLICKHOUSE_GRAFANA_PASSWORD"
    assert "CLICKHOUSE_GRAFANA_PASSWORD" in compose()["services"]["clickhouse"]["environment"]
    assert users.findtext(f"profiles/{users.findtext(f'users/{user}/profile')}/readonly") == "1"
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/tracehouse.yml").read_text())["providers"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


def test_dashboards_parse_and_cover_the_six_questions() -> None:
    boards = dashboards()
    assert {"tracehouse-overview.json", "tracehouse-trace.json"} <= set(boards)
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    overview = boards["tracehouse-overview.json"]
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == DATASOURCE_UID
                assert target["rawSql"].strip()
    sql = "\n".join(t["rawSql"] for p in overview["panels"] for t in p.get("targets", []))
    titles = " ".join(p["title"] for p in overview["panels"]).lower()
    for needle in (
        "quantilesTDigestMerge",  # 1: latency percentiles over time, from spans_minutely
        "FROM rollups",  # 1: the worker's rollups
        "ORDER BY duration_ns DESC",  # 1: slowest calls
        "ORDER BY cost_usd DESC",  # 2: most expensive calls
        "reasoning_tokens",  # 2: every token class
        "exception.type",  # 3: exception events
        "rate_limit_count",  # 3: rate limits
        "ARRAY JOIN s.documents",  # 4: retrieved documents
        "temperature",  # 5: LLM parameters
        "prompt_variables",  # 6: prompt templates
        "FROM alerts",  # alerts
        "ingested_at",  # sink lag / freshness
    ):
        assert needle in sql, needle
    for word in ("throughput", "alerts", "lag", "latency", "prompt templates", "retrieved documents"):
        assert word in titles, word


def ddl_tables() -> set[str]:
    names = set()
    for migration in MIGRATIONS:
        for statement in migration.statements:
            match = re.search(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)", statement)
            if match:
                names.add(match.group(1))
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{name}: {panel['title']}", target["rawSql"]))
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                out.append((f"{name}: variable {variable['name']}", variable["query"]))
    return out


def test_dashboard_sql_reads_only_tables_of_the_schema() -> None:
    tables = ddl_tables()
    for where, sql in dashboard_queries():
        for table in re.findall(r"\b(?:FROM|(?<!ARRAY )JOIN)\s+([A-Za-z_][\w.]*)", sql):
            assert table.split(".")[-1] in tables, f"{where}: unknown table {table}"


# Grafana's ClickHouse macros, expanded the way plugin v4 does (fixed times, a 20 s interval).
MACROS = [
    (re.compile(r"\$__conditionalAll\((.*?),\s*\$\w+\)"), r"(\1)"),
    (
        re.compile(r"\$__timeFilter\(([\w.]+)\)"),
        r"(\1 >= fromUnixTimestamp64Milli(1700000000000) AND \1 <= fromUnixTimestamp64Milli(1700003600000))",
    ),
    (re.compile(r"\$__timeInterval\(([\w.]+)\)"), r"toStartOfInterval(toDateTime(\1), INTERVAL 20 second)"),
    (re.compile(r"\$__fromTime\b"), "fromUnixTimestamp64Milli(1700000000000)"),
    (re.compile(r"\$__toTime\b"), "fromUnixTimestamp64Milli(1700003600000)"),
    (re.compile(r"\$__interval_s\b"), "20"),
    (re.compile(r"\$\{service:singlequote\}"), "'support-bot'"),
    (re.compile(r"\$\{trace_id\}"), "0123456789abcdef0123456789abcdef"),
]


def expand_macros(sql: str) -> str:
    for pattern, replacement in MACROS:
        sql = pattern.sub(replacement, sql)
    assert "$" not in sql, f"a macro or variable this test does not know: {sql}"
    return sql


def test_dashboard_sql_runs_on_the_schema(tmp_path: Path) -> None:
    """Every panel's SQL against empty tables made by the migrations: ClickHouse's analyzer resolves
    every table, column and function, so a typo or a renamed column fails here."""
    setup = ["CREATE DATABASE IF NOT EXISTS tracehouse"]
    setup += [render(s, "tracehouse", None, None) for m in MIGRATIONS for s in m.statements]
    queries = dashboard_queries()
    results = run_chdb(tmp_path, [*setup, "USE tracehouse", *(expand_macros(sql) for _, sql in queries)])
    assert all(r["ok"] for r in results[: len(setup) + 1]), results
    answers = results[len(setup) + 1 :]
    failures = [f"{where}: {r['error']}" for (where, _), r in zip(queries, answers, strict=True) if not r["ok"]]
    assert not failures, "\n".join(failures)


# ---- chdb in a subprocess ------------------------------------------------------------------------

_CHDB_RUNNER = r"""
import json, os, sys
import chdb
job = json.loads(sys.stdin.read())
path = job["path"] + (("?config-file=" + job["config"]) if job.get("config") else "")
connection = chdb.connect(path)
cursor = connection.cursor()
out = []
for step in job["steps"]:
    try:
        for name, value in (step.get("params") or {}).items():
            cursor.execute(f"SET param_{name} = {value}")
        cursor.execute(step["sql"])
        rows = cursor.fetchall()
        out.append({"ok": True, "rows": [[str(v) for v in row] for row in rows] if rows else []})
    except Exception as exc:
        out.append({"ok": False, "error": str(exc)[:3000]})
sys.stdout.write("\n@@results@@" + json.dumps(out) + "\n")
sys.stdout.flush()
os._exit(0)  # skip chdb's teardown (with a test Keeper it can abort); the results are out
"""


def run_chdb(tmp_path: Path, steps: list[str | dict[str, Any]], config: str | None = None) -> list[dict[str, Any]]:
    """Run statements on the real ClickHouse engine (chdb) in a fresh process with its own data directory;
    one result per statement, in order. A step is SQL or {"sql": ..., "params": {name: SQL literal}}."""
    pytest.importorskip("chdb")
    data = tmp_path / f"chdb-{len(list(tmp_path.glob('chdb-*')))}"
    config_path = None
    if config is not None:
        config_path = tmp_path / "clickhouse-config.xml"
        config_path.write_text(config)
    job = {
        "path": str(data),
        "config": str(config_path) if config_path else None,
        "steps": [s if isinstance(s, dict) else {"sql": s} for s in steps],
    }
    proc = subprocess.run(
        [sys.executable, "-c", _CHDB_RUNNER], input=json.dumps(job), capture_output=True, text=True, timeout=600
    )
    marker = proc.stdout.rfind("@@results@@")
    assert marker >= 0, f"chdb runner failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout[marker + len("@@results@@") :])


# ---- ClickHouse cluster mode ---------------------------------------------------------------------

CLUSTER = "tracehouse_test"
CONTRACT_TABLES = {"spans", "traces", "rollups", "alerts"}


def single_node_create(table: str) -> str:
    for migration in MIGRATIONS:
        for statement in migration.statements:
            rendered = render(statement, "tracehouse", None, None)
            if re.match(rf"\s*CREATE TABLE IF NOT EXISTS `tracehouse`\.{table}\s*\(", rendered):
                return rendered
    raise KeyError(table)


def column_list(statement: str) -> str:
    start = statement.index("(")
    depth = 0
    for i in range(start, len(statement)):
        depth += {"(": 1, ")": -1}.get(statement[i], 0)
        if depth == 0:
            return statement[start : i + 1]
    raise ValueError("unbalanced")


def test_cluster_ddl_for_every_table() -> None:
    statements = cluster_statements("tracehouse", CLUSTER)
    tables = ddl_tables()
    assert CONTRACT_TABLES <= tables
    info = {t.name: t for t in cluster_tables()}
    assert set(info) == tables
    for table in tables:
        single = single_node_create(table)
        engine = re.search(r"ENGINE = (\w+)(?:\(([^()]*)\))?", single)
        assert engine is not None
        (local,) = [s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS `tracehouse`.{table}_local ")]
        if engine.group(1) in NODE_LOCAL_ENGINES:  # one per node, same engine, no Distributed table
            assert f"ON CLUSTER `{CLUSTER}`" in local and engine.group(0) in local, local
            assert not [s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS `tracehouse`.{table} ")]
            continue
        expected_args = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
        if engine.group(2):
            expected_args += f", {engine.group(2)}"
        assert f"ON CLUSTER `{CLUSTER}`" in local
        assert f"ENGINE = Replicated{engine.group(1)}({expected_args})" in local, local
        assert column_list(local) == column_list(single), f"{table}: columns differ from the single-node table"
        for clause in ("PARTITION BY", "ORDER BY"):
            found = re.search(rf"{clause} [^\n]+", single)
            if found:
                assert found.group(0) in local
        (distributed,) = [s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS `tracehouse`.{table} ")]
        assert distributed == (
            f"CREATE TABLE IF NOT EXISTS `tracehouse`.{table} ON CLUSTER `{CLUSTER}`\n"
            f"AS `tracehouse`.{table}_local\n"
            f"ENGINE = Distributed('{CLUSTER}', 'tracehouse', '{table}_local', {info[table].sharding_key})\n"
        )
    assert "non_replicated_deduplication_window" not in "".join(statements)
    assert "replicated_deduplication_window = 1000" in next(s for s in statements if "spans_local" in s)


def test_cluster_sharding_keys() -> None:
    keys = {t.name: t.sharding_key for t in cluster_tables()}
    assert keys["spans"] == "ingest_partition"  # one Kafka partition (and so every trace) per shard
    assert keys["traces"] == "cityHash64(trace_id)"
    assert keys["rollups"] == "cityHash64(window_seconds, service, kind, name, model, window_start)"
    assert keys["alerts"] == "cityHash64(rule, service, window_start, state)"
    for fed_by_a_view in ("trace_id_ts", "ingest_offsets", "spans_minutely"):
        assert keys[fed_by_a_view] == "rand()"


def test_cluster_views_read_and_write_local_tables_and_everything_is_on_cluster() -> None:
    statements = cluster_statements("tracehouse", CLUSTER)
    tables = ddl_tables()
    views = [s for s in statements if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(views) == sum(1 for m in MIGRATIONS for s in m.statements if "MATERIALIZED VIEW" in s)
    for view in views:
        referenced = re.findall(r"`tracehouse`\.(\w+)", view)[1:]  # after the view's own name
        assert referenced and all(name.endswith("_local") and name[:-6] in tables for name in referenced), view
        assert f"ON CLUSTER `{CLUSTER}`" in view
    for statement in statements:
        if statement.startswith("INSERT"):
            assert "ON CLUSTER" not in statement and "_local" not in statement  # through Distributed tables
        else:
            assert f"ON CLUSTER `{CLUSTER}`" in statement, statement[:80]
    database, migrations_table = migrations_table_statements("tracehouse", CLUSTER)
    assert database == f"CREATE DATABASE IF NOT EXISTS `tracehouse` ON CLUSTER `{CLUSTER}`"
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}')" in (
        migrations_table
    )
    assert column_list(migrations_table) == column_list(render(MIGRATIONS_TABLE, "tracehouse", None, None))


def test_cluster_ddl_is_a_pure_function_of_the_migrations() -> None:
    assert cluster_statements("tracehouse", CLUSTER) == cluster_statements("tracehouse", CLUSTER)
    extra = Migration(
        99,
        "test",
        (
            "CREATE TABLE IF NOT EXISTS {db}.feedback\n(\n    trace_id String,\n    score Float64\n)\n"
            "ENGINE = ReplacingMergeTree\nORDER BY trace_id\n",
            "ALTER TABLE {db}.spans ADD COLUMN IF NOT EXISTS region LowCardinality(String) DEFAULT ''",
            "ALTER TABLE {db}.spans ADD INDEX IF NOT EXISTS idx_region region TYPE set(100) GRANULARITY 1",
        ),
    )
    statements = cluster_statements("tracehouse", CLUSTER, (*MIGRATIONS, extra))
    tail = statements[len(cluster_statements("tracehouse", CLUSTER)) :]
    assert tail[0].startswith("CREATE TABLE IF NOT EXISTS `tracehouse`.feedback_local ON CLUSTER")
    assert "ReplicatedReplacingMergeTree(" in tail[0]
    assert "Distributed('tracehouse_test', 'tracehouse', 'feedback_local', cityHash64(trace_id))" in tail[1]
    # A column goes to the local and the Distributed table; an index only where the data is.
    assert tail[2].startswith("ALTER TABLE `tracehouse`.spans_local ON CLUSTER")
    assert tail[3].startswith("ALTER TABLE `tracehouse`.spans ON CLUSTER") and "ADD COLUMN" in tail[3]
    assert tail[4].startswith("ALTER TABLE `tracehouse`.spans_local ON CLUSTER") and "ADD INDEX" in tail[4]
    assert len(tail) == 5
    with pytest.raises(ValueError, match="cannot translate a 'DROP TABLE'"):
        transform_statement("DROP TABLE `tracehouse`.spans", "tracehouse", CLUSTER)
    with pytest.raises(ValueError, match="already replicated"):
        cluster_statements(
            "tracehouse",
            CLUSTER,
            [Migration(1, "x", ("CREATE TABLE {db}.t (a String) ENGINE = ReplicatedMergeTree ORDER BY a",))],
        )
    with pytest.raises(ValueError, match="not a plain identifier"):
        cluster_statements("tracehouse", "bad cluster; DROP")


def cluster_config(replicated: bool) -> str:
    """A one-shard cluster on this process's own engine (the shard is local, so inserts and reads through
    Distributed tables never leave the process), the {shard}/{replica} macros and, for Replicated
    engines, ClickHouse's in-memory test Keeper."""
    keeper = "<zookeeper><implementation>testkeeper</implementation></zookeeper>" if replicated else ""
    return f"""<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers><{CLUSTER}><shard><internal_replication>true</internal_replication>
    <replica><host>127.0.0.1</host><port>9000</port></replica></shard></{CLUSTER}></remote_servers>
  <macros><shard>01</shard><replica>replica-1</replica></macros>
  {keeper}
</clickhouse>"""


def without_on_cluster(statement: str) -> str:
    """ON CLUSTER needs the distributed DDL queue of a server; one process applies the statements itself."""
    return re.sub(rf" ON CLUSTER `{CLUSTER}`", "", statement)


def test_cluster_ddl_is_valid_clickhouse_and_creates_replicated_tables(tmp_path: Path) -> None:
    statements = migrations_table_statements("tracehouse", CLUSTER) + cluster_statements("tracehouse", CLUSTER)

    def literal(sql: str) -> str:
        return "'" + sql.replace("\\", "\\\\").replace("'", "\\'") + "'"

    parsed = [f"SELECT formatQuery({literal(s)})" for s in statements]  # the parser, ON CLUSTER included
    # ALTERs are only parsed here: the test Keeper leaves Replicated tables read-only (TABLE_IS_READ_ONLY);
    # test_cluster_tables_serve_the_pipeline_and_the_queries runs them on unreplicated shards.
    created = [without_on_cluster(s) for s in statements if not s.startswith(("INSERT", "ALTER"))]
    check = (
        "SELECT table, zookeeper_path, replica_name FROM system.replicas WHERE database = 'tracehouse' ORDER BY table"
    )
    results = run_chdb(tmp_path, [*parsed, *created, check], config=cluster_config(replicated=True))
    failures = [f"{s[:70]}: {r['error']}" for s, r in zip(parsed + created, results[:-1], strict=True) if not r["ok"]]
    assert not failures, "\n".join(failures)
    for statement, result in zip(statements, results[: len(parsed)], strict=True):
        assert f"ON CLUSTER {CLUSTER}" in result["rows"][0][0] or statement.startswith("INSERT")
    replicas = {row[0]: (row[1], row[2]) for row in results[-1]["rows"]}
    node_local = {t.name for t in cluster_tables() if t.engine in NODE_LOCAL_ENGINES}
    assert set(replicas) == {f"{t}_local" for t in ddl_tables() - node_local} | {"schema_migrations"}
    assert replicas["spans_local"] == ("/clickhouse/tables/01/tracehouse/spans_local", "replica-1")
    assert replicas["schema_migrations"] == ("/clickhouse/tables/all/tracehouse/schema_migrations", "01-replica-1")


def test_cluster_tables_serve_the_pipeline_and_the_queries(tmp_path: Path) -> None:
    """Shards without replication (`replicated=False`), the same layout otherwise: spans inserted through
    the Distributed table reach the local tables, the views fill theirs, and the sink's offset query and
    every named query run unchanged against the contract names."""
    statements = migrations_table_statements("tracehouse", CLUSTER, replicated=False)
    statements += cluster_statements("tracehouse", CLUSTER, replicated=False)
    setup = [without_on_cluster(s) for s in statements]
    insert = (
        "INSERT INTO tracehouse.spans (trace_id, span_id, name, kind, service, model, start_time, end_time, "
        "duration_ns, status, cost_usd, input_tokens, ingest_partition, ingest_offset) "
        "SETTINGS insert_distributed_sync = 1 VALUES "
        "('t1', 's1', 'chat', 'LLM', 'support-bot', 'gpt-4o', now64(9), now64(9), 5000000, 'OK', 0.01, 10, 3, 41), "
        "('t1', 's2', 'search', 'RETRIEVER', 'support-bot', '', now64(9), now64(9), 7000000, 'OK', 0, 0, 3, 42), "
        "('t2', 's3', 'chat', 'LLM', 'support-bot', 'gpt-4o', now64(9), now64(9), 9000000, 'ERROR', 0.02, 20, 1, 7)"
    )
    checks: list[str | dict[str, Any]] = [
        "SELECT count() FROM tracehouse.spans",
        "SELECT count() FROM tracehouse.spans_local",
        "SELECT partition, max(max_offset) FROM tracehouse.ingest_offsets WHERE topic = 'tracehouse.spans' "
        "GROUP BY partition ORDER BY partition",
        "SELECT trace_id FROM tracehouse.trace_id_ts ORDER BY trace_id",
        "SELECT kind, countMerge(calls) FROM tracehouse.spans_minutely GROUP BY kind ORDER BY kind",
        "USE tracehouse",
    ]
    names = sorted(QUERIES)
    for name in names:
        query = QUERIES[name]
        params = {}
        given = {"trace_id": "t1"} if "trace_id" in {p.name for p in query.params} else {}
        for key, value in query.bind(given).items():
            params[key] = str(value) if isinstance(value, int) else "'" + str(value).replace("'", "\\'") + "'"
        checks.append({"sql": query.sql, "params": params})
    results = run_chdb(tmp_path, [*setup, insert, *checks], config=cluster_config(replicated=False))
    failures = [r["error"] for r in results[: len(setup) + 1] if not r["ok"]]
    assert not failures, "\n".join(failures)
    counts, local_counts, offsets, lookup, minutely, use, *named = results[len(setup) + 1 :]
    assert counts["rows"] == [["3"]] and local_counts["rows"] == [["3"]]
    assert offsets["rows"] == [["1", "7"], ["3", "42"]]
    assert lookup["rows"] == [["t1"], ["t2"]]
    assert minutely["rows"] == [["LLM", "2"], ["RETRIEVER", "1"]]
    assert use["ok"]
    failures = [f"{name}: {r['error']}" for name, r in zip(names, named, strict=True) if not r["ok"]]
    assert not failures, "\n".join(failures)
    by_name = dict(zip(names, named, strict=True))
    assert len(by_name["trace"]["rows"]) == 2  # both spans of t1, through trace_id_ts
