"""SimConfig validation, partial updates and the CLI flags that build it."""

import pytest

from switchyard_gateway.simulator import ConfigError, SimConfig
from switchyard_gateway.simulator.cli import build_parser, config_from_args


def test_defaults_advertise_a_chat_and_an_embedding_model_all_loaded():
    cfg = SimConfig()
    assert cfg.models == ("llama3.2", "nomic-embed-text")
    assert cfg.loaded_models == cfg.models
    assert (cfg.tokens, cfg.embedding_dims, cfg.failure_rate) == (16, 768, 0.0)


def test_with_changes_returns_a_validated_copy():
    cfg = SimConfig()
    changed = cfg.with_changes({"tokens": 4, "models": ["a", "b"], "loaded": ["a"]})
    assert changed.tokens == 4
    assert changed.models == ("a", "b")
    assert changed.loaded_models == ("a",)
    assert cfg.tokens == 16


@pytest.mark.parametrize(
    "changes",
    [
        {"failure_rate": 1.5},
        {"failure_kind": "explode"},
        {"tokens": -1},
        {"embedding_dims": 0},
        {"latency_ms": -5},
        {"end_delay_ms": -1},
        {"end_delay_ms": "later"},
        {"models": []},
        {"loaded": ["not-advertised"]},
        {"tokens": "many"},
        {"image_tokens": -1},
        {"image_tokens": 10**9},
        {"no_such_knob": 1},
    ],
)
def test_bad_or_unknown_knobs_are_rejected(changes):
    with pytest.raises(ConfigError):
        SimConfig().with_changes(changes)


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError):
        SimConfig(failure_rate=-0.1)


def test_model_names_match_with_or_without_the_latest_tag():
    cfg = SimConfig(models=("llama3.2", "qwen2.5:7b"))
    assert cfg.has_model("llama3.2")
    assert cfg.has_model("llama3.2:latest")
    assert cfg.has_model("qwen2.5:7b")
    assert not cfg.has_model("qwen2.5")
    assert not cfg.has_model("mistral")


def test_refuse_needs_a_rate_above_zero():
    assert not SimConfig(failure_kind="refuse").refusing
    assert SimConfig(failure_kind="refuse", failure_rate=0.1).refusing
    assert not SimConfig(failure_kind="http_500", failure_rate=1.0).refusing


def test_cli_flags_build_the_config_and_omitted_flags_keep_defaults():
    args = build_parser().parse_args(
        [
            "--models",
            "a, b,c",
            "--loaded",
            "b",
            "--tokens",
            "3",
            "--failure-kind",
            "http_429",
            "--failure-rate",
            "0.25",
            "--latency-ms",
            "5",
            "--seed",
            "9",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.models == ("a", "b", "c")
    assert cfg.loaded == ("b",)
    assert (cfg.tokens, cfg.failure_kind, cfg.failure_rate) == (3, "http_429", 0.25)
    assert (cfg.latency_ms, cfg.seed, cfg.embedding_dims) == (5.0, 9, 768)
    assert build_parser().parse_args([]).port == 11434


def test_cli_rejects_an_invalid_knob_with_usage_error(capsys):
    from switchyard_gateway.simulator import main

    with pytest.raises(SystemExit) as exc:
        main(["--failure-rate", "2"])
    assert exc.value.code == 2
    assert "failure_rate" in capsys.readouterr().err


def test_cli_help_names_the_command_and_every_knob(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "switchyard simulate-upstream" in text
    for flag in (
        "--control-port",
        "--models",
        "--loaded",
        "--latency-ms",
        "--token-interval-ms",
        "--tokens",
        "--embedding-dims",
        "--failure-rate",
        "--failure-kind",
        "--seed",
    ):
        assert flag in text
    flat = " ".join(text.split())                  # a default said once, and never as an empty one
    assert "(default: )" not in flat and "every route) (default" not in flat and "(default: every route)" in flat
