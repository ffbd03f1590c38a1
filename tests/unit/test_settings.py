"""Settings: one place per setting, one precedence rule, one channel to a child process."""

from __future__ import annotations

from pathlib import Path

import pytest

from livealign.config import Settings
from streaming.processor import ProcessorConfig
from trainer.config import TrainerConfig

BOOTSTRAP = "localhost:9092"


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("LIVEALIGN_"):
            monkeypatch.delenv(name)


def test_precedence_defaults_toml_environment_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    toml = tmp_path / "livealign.toml"
    toml.write_text(
        'port = 9001\npartitions = 7\nmodel = "tiny"\n'
        "[fusion_overrides]\ndwell_half_point_ms = 9000\nrater_memory = 50\n"
    )
    monkeypatch.setenv("LIVEALIGN_PORT", "9002")
    monkeypatch.setenv("LIVEALIGN_PARTITIONS", "8")
    monkeypatch.setenv("LIVEALIGN_FUSION_OVERRIDES", '{"rater_memory": 60}')
    s = Settings.load(toml, port=9003, home=tmp_path)
    assert s.port == 9003  # an argument beats the environment
    assert s.partitions == 8  # the environment beats the file
    assert s.model == "tiny"  # the file beats the default
    assert s.kv_cache_gib == 1  # the default
    # A table merges key by key across the sources.
    fusion = s.processor_config(BOOTSTRAP).fusion
    assert (fusion.dwell_half_point_ms, fusion.rater_memory) == (9000, 60)


def test_defaults_are_the_parts_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    s = Settings(home=tmp_path)
    assert s.grace_s == ProcessorConfig().grace_s
    trainer = s.trainer_config(tmp_path / "model", BOOTSTRAP)
    fields = TrainerConfig.model_fields
    assert trainer.interval_s == fields["interval_s"].default
    assert trainer.min_new_records == fields["min_new_records"].default


@pytest.mark.parametrize(
    ("table", "key", "owner"),
    [("fusion_overrides", "mode", "fusion_mode"),
     ("trainer_overrides", "interval_s", "trainer_interval_s"),
     ("trainer_overrides", "registry_dir", "home")],
)  # fmt: skip
def test_a_table_refuses_a_key_a_flat_setting_owns(
    tmp_path: Path, table: str, key: str, owner: str
) -> None:
    with pytest.raises(ValueError, match=f"{key}.*{owner}"):
        Settings(home=tmp_path, **{table: {key: "x"}})


def test_overrides_reach_the_parts_and_misspellings_fail(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, fusion_mode="implicit",
                 fusion_overrides={"dwell_half_point_ms": 9000},
                 record_overrides={"pair_margin": 0.3},
                 trainer_overrides={"train": {"max_length": 99}})  # fmt: skip
    processor = s.processor_config(BOOTSTRAP)
    assert processor.fusion.mode == "implicit" and processor.fusion.dwell_half_point_ms == 9000
    assert processor.records.pair_margin == 0.3
    trainer = s.trainer_config(tmp_path / "model", BOOTSTRAP)
    assert trainer.train.max_length == 99 and trainer.train.batch_size == 8  # others kept
    with pytest.raises(ValueError, match="min_confidense"):
        Settings(home=tmp_path, fusion_overrides={"min_confidense": 0.2})
    with pytest.raises(ValueError, match="pair_margn"):
        Settings(home=tmp_path, record_overrides={"pair_margn": 0.2})
    with pytest.raises(ValueError, match="alpah"):
        Settings(home=tmp_path, canary_overrides={"alpah": 0.1})
    with pytest.raises(ValueError, match="enabeld"):
        Settings(home=tmp_path, status_overrides={"enabeld": False})
    off = Settings(home=tmp_path, status_overrides={"enabled": False, "refresh_s": 30})
    status = off.serving_config(tmp_path, BOOTSTRAP).status
    assert (status.enabled, status.refresh_s, status.cache_s) == (False, 30, 5.0)
    canary = Settings(home=tmp_path, canary_overrides={"alpha": 0.01})
    assert canary.controller_config(BOOTSTRAP).policy.alpha == 0.01
    assert canary.serving_config(tmp_path, BOOTSTRAP).canary_policy.alpha == 0.01
    typo = Settings(home=tmp_path, trainer_overrides={"train": {"max_lenght": 99}})
    with pytest.raises(ValueError, match="max_lenght"):
        typo.trainer_config(tmp_path / "model", BOOTSTRAP)


def test_a_child_process_gets_the_same_config_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    parent = Settings(home=tmp_path, fusion_mode="explicit", grace_s=12.5,
                      fusion_overrides={"dwell_half_point_ms": 9000},
                      record_overrides={"label_min_confidence": 0.2})  # fmt: skip
    for name, value in parent.to_env(kafka="broker:1234").items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.kafka == "broker:1234"
    assert child.processor_config("broker:1234") == parent.processor_config("broker:1234")


def test_secrets_come_from_the_secrets_folder_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mounted Secret: one file a setting, named as its variable in lower case; the
    environment still wins; nothing secret needs to be an environment variable."""
    _clean_env(monkeypatch)
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "livealign_store_url").write_text("postgresql+psycopg://u:pw@db/prefs")
    (folder / "livealign_feedback_secret").write_text("hmac-key-from-a-file")
    (folder / "livealign_admin_key").write_text("admin-from-a-file")
    toml = tmp_path / "livealign.toml"
    toml.write_text('admin_key = "admin-from-toml"\nuser_hash_salt = "salt-from-toml"\n')
    monkeypatch.setenv("LIVEALIGN_SECRETS_DIR", str(folder))
    monkeypatch.setenv("LIVEALIGN_ADMIN_KEY", "admin-from-env")
    s = Settings.load(toml, home=tmp_path)
    assert s.store_url == "postgresql+psycopg://u:pw@db/prefs"
    assert s.feedback_secret is not None
    assert s.feedback_secret.get_secret_value() == "hmac-key-from-a-file"
    assert s.admin_key is not None and s.admin_key.get_secret_value() == "admin-from-env"
    assert s.user_hash_salt is not None
    assert s.user_hash_salt.get_secret_value() == "salt-from-toml"  # the file beats TOML only
    serving = s.serving_config(tmp_path / "model", BOOTSTRAP)
    assert serving.feedback_secret.get_secret_value() == "hmac-key-from-a-file"
    assert serving.store_url == s.processor_config(BOOTSTRAP).store_url == s.store_url
    monkeypatch.delenv("LIVEALIGN_SECRETS_DIR")
    assert Settings(home=tmp_path).store_url is None  # no folder: not read


def test_a_clusters_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Helm chart sets: the API keys file in a Secret's folder, the metrics on
    fixed ports of every address, the processors' consumer group."""
    _clean_env(monkeypatch)
    monkeypatch.setenv("LIVEALIGN_API_KEYS", "true")
    monkeypatch.setenv("LIVEALIGN_API_KEYS_PATH", "/etc/livealign/api-keys/api_keys.json")
    monkeypatch.setenv("LIVEALIGN_METRICS_HOST", "0.0.0.0")
    monkeypatch.setenv("LIVEALIGN_SERVING_METRICS_PORT", "9100")
    monkeypatch.setenv("LIVEALIGN_PROCESSOR_GROUP", "lv-processor")
    s = Settings(home=tmp_path)
    serving = s.serving_config(tmp_path / "model", BOOTSTRAP)
    assert serving.api_keys_file == Path("/etc/livealign/api-keys/api_keys.json")
    assert (serving.metrics_host, serving.metrics_port) == ("0.0.0.0", 9100)
    assert s.processor_config(BOOTSTRAP).group_id == "lv-processor"
    monkeypatch.delenv("LIVEALIGN_API_KEYS_PATH")
    assert Settings(home=tmp_path).api_keys_file == (tmp_path / "api_keys.json").resolve()
