"""Input policy without servers: SEGQ_INPUT_PREFIXES, key rules, content sniffing, symlinks,
retention rules, the stack's secret-free command lines."""

from __future__ import annotations

import os

import pytest

from producer.inputs import expand
from segq import input_policy, retention
from segq.errors import ConfigError, InputError
from segq.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def settings(**env) -> Settings:
    return Settings.from_env({"SEGQ_ENV_FILE": "/nonexistent", **env})


@pytest.mark.parametrize("raw", ["segq/", "segq", "segq/outputs/", "segq/work/abc", "other/x,segq/"])
def test_prefixes_that_would_open_outputs_or_work_are_refused_at_config_time(raw):
    with pytest.raises(ConfigError, match="never inputs"):
        settings(SEGQ_INPUT_PREFIXES=raw)


def test_prefixes_parse_and_default_to_inputs_of_the_bucket():
    assert settings().input_prefixes == ()
    assert input_policy.effective_prefixes((), "segq") == ("segq/inputs/",)
    assert settings(SEGQ_INPUT_PREFIXES="s3://cams/day1, segq/inputs,other").input_prefixes == (
        "cams/day1/", "segq/inputs/", "other/")
    with pytest.raises(ConfigError):
        settings(SEGQ_INPUT_PREFIXES="cams/../x")


@pytest.mark.parametrize("uri, fragment", [
    ("s3://segq/outputs/abc/overlay.jpg", "outputs and work files"),
    ("s3://segq/work/abc/frames.json", "outputs and work files"),
    ("s3://other/x.png", "inputs must lie under s3://segq/inputs/"),
    ("s3://segq/inputs/../outputs/a/overlay.jpg", "'..'"),
    ("s3://segq/inputs//x.png", "empty path segments"),
    ("s3://segq/elsewhere/x.png", "SEGQ_INPUT_PREFIXES"),
])
def test_s3_inputs_outside_the_allowed_prefixes_are_refused_by_the_producer(uri, fragment):
    with pytest.raises(InputError, match="refused") as info:
        expand([uri], settings())
    assert fragment in str(info.value)


def test_s3_inputs_under_allowed_prefixes_pass():
    s = settings(SEGQ_INPUT_PREFIXES="segq/inputs/,cams/day1/")
    assert [i.s3.uri for i in expand(["s3://segq/inputs/a/x.png", "s3://cams/day1/y.mp4"], s)] == [
        "s3://segq/inputs/a/x.png", "s3://cams/day1/y.mp4"]
    with pytest.raises(InputError):
        expand(["s3://cams/day2/y.mp4"], s)
    with pytest.raises(InputError):
        input_policy.require_input(s, "segq", "outputs/j/overlay.jpg")


def test_a_file_named_as_an_image_must_be_one(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(InputError, match="not an image or video") as info:
        expand([str(text)])
    assert "root:" not in str(info.value)  # never quotes the content
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        expand([str(empty)])


def test_an_explicit_symlink_is_followed_only_to_an_image(tmp_path):
    (tmp_path / "secret.txt").write_text("password=hunter2\n")
    os.symlink(tmp_path / "secret.txt", tmp_path / "passwd.png")
    with pytest.raises(InputError, match="not an image or video"):
        expand([str(tmp_path / "passwd.png")])
    os.symlink("/etc/passwd", tmp_path / "etc.png")
    with pytest.raises(InputError):
        expand([str(tmp_path / "etc.png")])
    (tmp_path / "real.png").write_bytes(PNG)
    os.symlink(tmp_path / "real.png", tmp_path / "link.png")
    [item] = expand([str(tmp_path / "link.png")])
    assert item.path == (tmp_path / "real.png").resolve()  # the checked target is what is uploaded


def test_a_directory_does_not_follow_symlinks_out_of_it(tmp_path):
    photos, secrets_dir = tmp_path / "photos", tmp_path / "private"
    photos.mkdir(), secrets_dir.mkdir()
    (photos / "a.png").write_bytes(PNG)
    (secrets_dir / "key.png").write_bytes(PNG)  # even an image outside is not taken
    (secrets_dir / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.symlink(secrets_dir / "key.png", photos / "b.png")
    os.symlink(secrets_dir / "id_rsa", photos / "c.png")
    os.symlink(secrets_dir, photos / "more")
    os.symlink(photos / "a.png", photos / "same.png")  # inside: fine (and a duplicate)
    assert [i.path.name for i in expand([str(photos)])] == ["a.png"]
    followed = expand([str(photos)], follow_symlinks=True)
    assert sorted(i.path.name for i in followed) == ["a.png", "key.png"]  # id_rsa is no image
    with pytest.raises(InputError, match="follow-symlinks"):
        expand([str(photos / "more")])


def test_retention_rules_cover_inputs_and_outputs():
    rules = retention.lifecycle_rules(7)["Rules"]
    assert {r["Filter"]["Prefix"] for r in rules} == {"inputs/", "outputs/"}
    assert all(r["Expiration"] == {"Days": 7} and r["Status"] == "Enabled" for r in rules)
    with pytest.raises(ValueError):
        retention.lifecycle_rules(0)
    assert settings().retention_days == 0 and settings(SEGQ_RETENTION_DAYS="30").retention_days == 30


def test_the_stack_puts_no_secret_on_a_command_line(tmp_path, monkeypatch):
    """FlowerService passes the broker and basic auth by environment (checked live in e2e)."""
    from producer import stack

    seen = {}
    monkeypatch.setattr(stack.Service, "spawn", lambda self, argv, env=None, cwd=None: seen.update(argv=argv, env=env))
    monkeypatch.setattr(stack, "_wait", lambda *a, **k: None)
    stack.FlowerService("flower", tmp_path / "f.log").start("redis://:pw123456@h:1/0", {}, basic_auth="u:pw654321")
    assert not any("pw123456" in a or "pw654321" in a for a in seen["argv"])
    assert seen["env"]["SEGQ_REDIS_URL"] == "redis://:pw123456@h:1/0" and "producer.flower_app" in seen["argv"]
    assert seen["env"]["FLOWER_BASIC_AUTH"] == "u:pw654321"
    # `segq up --flower-auth` takes no password on its command line: it comes from the environment
    # (or is generated) and goes to the owner-only env file
    from click.testing import CliRunner

    from producer.cli import cli

    result = CliRunner().invoke(cli, ["up", "--flower-auth", "admin:secret"])
    assert result.exit_code == 2 and "unexpected extra argument" in result.output.lower()
    up_help = CliRunner().invoke(cli, ["up", "--help"]).output
    assert "SEGQ_FLOWER_PASSWORD" in up_help and "USER:PASSWORD" not in up_help
    toml = stack.seaweedfs_security_toml()
    assert toml.count("key = ") == 4 and "[jwt.filer_signing.read]" in toml


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "10.0.0.5", "exporter.example"])
def test_the_exporter_refuses_to_serve_beyond_the_loopback_without_credentials(address, monkeypatch):
    from click.testing import CliRunner

    from producer.cli import cli
    from producer.exporter import exposure_error

    monkeypatch.delenv("SEGQ_EXPORTER_AUTH", raising=False)
    result = CliRunner().invoke(cli, ["exporter", "--address", address, "--port", "1"])
    assert result.exit_code == 2 and "without credentials" in result.output and "SEGQ_EXPORTER_AUTH" in result.output
    assert exposure_error(address, "prom:secret") is None
    for bad in ("nocolon", ":pw", "prom:"):
        assert "user:password" in exposure_error(address, bad)
    for loopback in ("127.0.0.1", "::1", "localhost"):
        assert exposure_error(loopback, None) is None
