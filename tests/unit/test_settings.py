"""core/settings.py: every TRACEHOUSE_* setting declared once, read only there, shown by `tracehouse
config`, and rendered into the README (so the README cannot drift from the code)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from tracehouse.cli.main import main
from tracehouse.core import settings
from tracehouse.core.settings import SecretError, SettingError

REPO = Path(__file__).resolve().parents[2]
ENV_NAME = re.compile(r"TRACEHOUSE_[A-Z0-9_]+")
README_BLOCK = re.compile(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", re.DOTALL)
# Modules still naming their variables themselves, until their owners move the read to core/settings.py.
PENDING: set[str] = set()


def test_every_setting_is_declared_once_with_a_section_and_a_doc() -> None:
    assert len(settings.REGISTRY) >= 50
    for name, setting in settings.REGISTRY.items():
        assert ENV_NAME.fullmatch(name) and setting.name == name
        assert setting.section in settings.SECTIONS, name
        assert setting.doc and "\n" not in setting.doc, name
    assert {"Connection", "SDK", "Receiver", "Worker", "Sink", "Web", "Alerts", "Embedded servers"} <= set(
        settings.SECTIONS
    )
    assert "TRACEHOUSE_CLICKHOUSE_PASSWORD_FILE" in settings.declared_names()
    assert "TRACEHOUSE_RECEIVER_TOKENS_FILE" in settings.declared_names()


def test_values_parse_and_errors_name_the_variable_and_the_value() -> None:
    assert settings.get(settings.RECEIVER_ACK_TIMEOUT, {}) == 5.0
    assert settings.get(settings.RECEIVER_ACK_TIMEOUT, {"TRACEHOUSE_RECEIVER_ACK_TIMEOUT": "2.5"}) == 2.5
    assert settings.get(settings.RECEIVER_ACK_TIMEOUT, {"TRACEHOUSE_RECEIVER_ACK_TIMEOUT": ""}) == 5.0  # empty: unset
    assert settings.get(settings.WEB_WRITE_TOKEN, {"TRACEHOUSE_WEB_WRITE_TOKEN": " a, ,b "}) == ("a", "b")
    assert settings.get(settings.DISABLED, {"TRACEHOUSE_DISABLED": "yes"}) is True
    assert settings.get(settings.CAPTURE_IO, {"TRACEHOUSE_CAPTURE_IO": "0"}) is False
    assert settings.get(settings.SERVICE, {"OTEL_SERVICE_NAME": "otel-name"}) == "otel-name"
    assert settings.get(settings.SERVICE, {"OTEL_SERVICE_NAME": "x", "TRACEHOUSE_SERVICE": "mine"}) == "mine"
    with pytest.raises(SettingError) as caught:
        settings.get(settings.RECEIVER_ACK_TIMEOUT, {"TRACEHOUSE_RECEIVER_ACK_TIMEOUT": "abc"})
    assert str(caught.value) == "TRACEHOUSE_RECEIVER_ACK_TIMEOUT='abc': expected a number of seconds"
    for setting, text in (
        (settings.SPANS_PARTITIONS, "0"),
        (settings.WEB_PORT, "70000"),
        (settings.DISABLED, "maybe"),
        (settings.SINK_INSERT_LANES, "two"),
    ):
        with pytest.raises(SettingError, match=f"^{setting.name}='{text}': expected "):
            settings.get(setting, {setting.name: text})


def test_a_secret_comes_from_its_variable_or_its_file_not_both(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-the-file\n")
    file_env = {"TRACEHOUSE_CLICKHOUSE_PASSWORD_FILE": str(tmp_path / "pw")}
    assert settings.get(settings.CLICKHOUSE_PASSWORD, file_env) == "from-the-file"
    assert settings.is_set(settings.CLICKHOUSE_PASSWORD, file_env)
    (value,) = [v for v in settings.describe(file_env) if v.setting is settings.CLICKHOUSE_PASSWORD]
    assert (value.value, value.origin) == ("***", "file")
    with pytest.raises(SecretError, match="not both"):
        settings.get(settings.CLICKHOUSE_PASSWORD, {**file_env, "TRACEHOUSE_CLICKHOUSE_PASSWORD": "x"})


def test_the_declared_defaults_are_the_ones_the_code_uses() -> None:
    """Some option classes keep their defaults as dataclass fields (their owners' modules); the registry
    must say the same, or `tracehouse config` and the README would lie."""
    from tracehouse.core.config import Settings
    from tracehouse.producers.otlp import app as receiver_app
    from tracehouse.producers.payload import DEFAULT_MAX_PAYLOAD_BYTES
    from tracehouse.producers.span_limits import SpanLimits
    from tracehouse.web.app import DEFAULT_PORT as WEB_DEFAULT_PORT

    defaults = Settings()
    connection = Settings.from_env()  # environment of the test run may set some: compare with declarations
    assert connection.kafka_bootstrap == settings.get(settings.KAFKA_BOOTSTRAP)
    for field_name, setting in {
        "kafka_bootstrap": settings.KAFKA_BOOTSTRAP,
        "clickhouse_url": settings.CLICKHOUSE_URL,
        "data_dir": settings.DATA_DIR,
        "service": settings.SERVICE,
        "spans_partitions": settings.SPANS_PARTITIONS,
        "worker_group": settings.WORKER_GROUP,
        "sink_group": settings.SINK_GROUP,
        "topic_replication_factor": settings.TOPIC_REPLICATION_FACTOR,
        "worker_health_host": settings.WORKER_HEALTH_HOST,
        "worker_health_port": settings.WORKER_HEALTH_PORT,
        "sink_health_host": settings.SINK_HEALTH_HOST,
        "sink_health_port": settings.SINK_HEALTH_PORT,
    }.items():
        assert getattr(defaults, field_name) == setting.default, field_name
    receiver = receiver_app.ReceiverOptions()
    for field_name, setting in receiver_app._ENV_VARS.items():
        assert getattr(receiver, field_name) == setting.default, field_name
    assert (receiver_app.DEFAULT_HOST, receiver_app.DEFAULT_PORT) == (
        settings.RECEIVER_HOST.default,
        settings.RECEIVER_PORT.default,
    )
    limits = SpanLimits()
    assert (limits.attributes, limits.events, limits.event_attributes, limits.links) == (
        settings.SPAN_ATTRIBUTE_COUNT_LIMIT.default,
        settings.SPAN_EVENT_COUNT_LIMIT.default,
        settings.EVENT_ATTRIBUTE_COUNT_LIMIT.default,
        settings.SPAN_LINK_COUNT_LIMIT.default,
    )
    assert DEFAULT_MAX_PAYLOAD_BYTES == settings.MAX_PAYLOAD_BYTES.default
    assert DEFAULT_MAX_PAYLOAD_BYTES == settings.RECEIVER_MAX_PAYLOAD_BYTES.default
    assert WEB_DEFAULT_PORT == settings.WEB_PORT.default


def test_the_worker_defaults_match_the_processor_options() -> None:
    processor = pytest.importorskip("tracehouse.pipeline.processor")
    options = processor.ProcessorOptions()
    assert (
        options.quiet_s,
        options.max_age_s,
        options.revision_window_s,
        options.max_open_traces,
        options.checkpoint_interval_s,
    ) == (
        settings.TRACE_QUIET_S.default,
        settings.TRACE_MAX_AGE_S.default,
        settings.TRACE_REVISION_S.default,
        settings.MAX_OPEN_TRACES.default,
        settings.CHECKPOINT_S.default,
    )


def test_only_the_settings_module_names_the_variables() -> None:
    """No other module holds a TRACEHOUSE_* name as a string of its own (docstrings and help texts may
    mention them): so nothing reads a variable the registry does not declare, parse and show."""
    pyproject = (REPO / "pyproject.toml").read_text()
    folders = sorted({REPO / d for d in re.findall(r'^"tracehouse[.\w]*" = "([\w/]+)"$', pyproject, re.M)})
    assert REPO / "core" in folders
    found: dict[str, list[str]] = {}
    for folder in folders:
        for path in folder.glob("*.py"):
            relative = str(path.relative_to(REPO))
            if relative == "core/settings.py" or relative in PENDING:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.fullmatch(node.value):
                    found.setdefault(relative, []).append(node.value)
    assert not found, f"read these through core/settings.py: {found}"


def test_tracehouse_config_shows_values_and_where_they_came_from(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(settings.declared_names()):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRACEHOUSE_RECEIVER_TOKENS", "token-one,token-two")
    monkeypatch.setenv("TRACEHOUSE_CLICKHOUSE_URL", "http://writer:hunter22@ch:8123/db")
    monkeypatch.setenv("TRACEHOUSE_ALERT_WEBHOOK", "https://hooks.example/T0/secret-path")
    monkeypatch.setenv("TRACEHOUSE_SPANS_PARTITIONS", "12")
    assert main(["config", "--json", "--kafka", "broker:9093"]) == 0
    out = capsys.readouterr().out
    for secret in ("token-one", "hunter22", "secret-path"):
        assert secret not in out
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(rows) == set(settings.REGISTRY)
    assert rows["TRACEHOUSE_SPANS_PARTITIONS"] | {"doc": ""} == {
        "section": "Connection",
        "name": "TRACEHOUSE_SPANS_PARTITIONS",
        "value": "12",
        "source": "environment",
        "default": "4",
        "type": "count",
        "doc": "",
    }
    assert (rows["TRACEHOUSE_KAFKA_BOOTSTRAP"]["value"], rows["TRACEHOUSE_KAFKA_BOOTSTRAP"]["source"]) == (
        "broker:9093",
        "command line",
    )
    assert rows["TRACEHOUSE_RECEIVER_TOKENS"]["value"] == "***"
    assert rows["TRACEHOUSE_CLICKHOUSE_URL"]["value"] == "http://writer:***@ch:8123/db"
    assert (rows["TRACEHOUSE_WEB_PORT"]["value"], rows["TRACEHOUSE_WEB_PORT"]["source"]) == ("8787", "default")

    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "Receiver: " in text and "hunter22" not in text
    assert re.search(r"TRACEHOUSE_SPANS_PARTITIONS +12 +environment", text)

    monkeypatch.setenv("TRACEHOUSE_RECEIVER_ACK_TIMEOUT", "soon")
    assert main(["config"]) == 1
    captured = capsys.readouterr()
    assert "TRACEHOUSE_RECEIVER_ACK_TIMEOUT='soon': expected a number of seconds" in captured.err


def test_the_readme_settings_tables_are_rendered_from_the_registry() -> None:
    """Regenerate with: python -c 'from tracehouse.core.settings import render_markdown; print(render_markdown())'"""
    match = README_BLOCK.search((REPO / "README.md").read_text())
    assert match, "README.md has no <!-- settings:begin --> ... <!-- settings:end --> block"
    assert match.group(1) == settings.render_markdown()
    for name in settings.REGISTRY:
        assert f"`{name}`" in match.group(1)
