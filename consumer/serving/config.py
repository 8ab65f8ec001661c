"""TF Serving's model config: ``--model_config_file``, a ``ModelServerConfig`` in protobuf text
format, read with the real protos of ``tensorflow-serving-api``.

    model_config_list {
      config {
        name: "half_plus_two"
        base_path: "/models/half_plus_two"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }

Its rules are TF Serving's (``server_core.cc``): names unique, base paths absolute, platform
``tensorflow``, only a ``model_config_list``. A bad file is refused with one line. A base path
may be ``s3://bucket/prefix`` or ``gs://bucket/prefix``: its complete versions are mirrored
into the work dir (``consumer.mirror``); another scheme (``hdfs://``) is refused.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from consumer.loop import Policy, latest
from consumer.serving.models import ModelSpec
from consumer import remote_base

from tensorflow_serving.config import model_server_config_pb2  # noqa: E402


class ConfigError(Exception):
    """A model config that cannot be used, in one line."""


def specific(steps: set[int]) -> Policy:
    return lambda listing: [v for v in reversed(listing) if v.step in steps]


def every() -> Policy:
    return lambda listing: list(reversed(listing))


def policy_of(config) -> Policy:
    """A ``ModelConfig``'s ``model_version_policy`` (TF Serving's default: the latest one)."""
    choice = config.model_version_policy.WhichOneof("policy_choice")
    if choice == "specific":
        return specific(set(config.model_version_policy.specific.versions))
    if choice == "all":
        return every()
    if choice == "latest":
        return latest(max(1, config.model_version_policy.latest.num_versions))
    return latest(1)


def parse(text: str, where: str) -> list[ModelSpec]:
    """The models a config's text names, checked as TF Serving checks them."""
    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise ConfigError(f"Invalid protobuf file: '{where}': {err}") from None
    return from_proto(message, where)


def from_proto(message, where: str) -> list[ModelSpec]:
    """The models of a ``ModelServerConfig`` (a file's, or a reload request's)."""
    kind = message.WhichOneof("config")
    if kind is None:
        return []  # TF Serving: "Taking no action for empty config"
    if kind != "model_config_list":
        raise ConfigError("ServerModelConfig type not supported by HandleReloadConfigRequest. "
                          "Only ModelConfigList is currently supported" if where ==
                          "HandleReloadConfigRequest" else
                          f"{where}: only a model_config_list is supported, not {kind}")
    specs, names = [], set()
    for config in message.model_config_list.config:
        if config.name in names:
            raise ConfigError(f"Illegal to list model {config.name} multiple times in config list")
        names.add(config.name)
        _check(config)
        specs.append(ModelSpec(config.name, remote_base.parse(config.base_path), "base",
                               policy_of(config), dict(config.version_labels)))
    return specs


def _check(config) -> None:
    if not config.name:
        raise ConfigError("a model in the config list has no name")
    if not config.model_platform:
        raise ConfigError("Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                          f"ModelServerConfig::model_platform, model name is {config.name}")
    if config.model_platform != "tensorflow":
        raise ConfigError(f"Model {config.name} requests unsupported platform "
                          f"{config.model_platform}")
    try:  # s3:// and gs:// are mirrored into the work dir (consumer.mirror)
        base = remote_base.parse(config.base_path)
    except ValueError as err:
        raise ConfigError(f"model {config.name}: base_path {err}") from None
    if not base.is_absolute():
        raise ConfigError(f"Expected model {config.name} to have an absolute path or URI; got "
                          f"base_path()={config.base_path}")
    for label in config.version_labels:
        if not label:
            raise ConfigError(f"model {config.name} has an empty version label")


def load(path: Path) -> list[ModelSpec]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read model config file {path}: "
                          f"{getattr(err, 'strerror', None) or err}") from None
    return parse(text, str(path))
