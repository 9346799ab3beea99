"""The command line's parser: training flags built once, and a name clash refused when built."""

from __future__ import annotations

import argparse

import pytest

from imagewise.cli import build_parser
from imagewise.config import OPTIONS, option_type


def verb_parser(verb: str) -> argparse.ArgumentParser:
    (verbs,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return verbs.choices[verb]


def flag_help(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    return {flag: action.help for action in parser._actions for flag in action.option_strings}


def test_tune_training_flags_have_the_same_help_as_train() -> None:
    train, tune = flag_help(verb_parser("train")), flag_help(verb_parser("tune"))
    booleans = [name for name in OPTIONS if option_type(name).startswith("bool")]
    assert "hflip" in booleans and "freeze_bn" in booleans
    for name in booleans:
        for flag in (f"--{name.replace('_', '-')}", f"--no-{name.replace('_', '-')}"):
            assert tune[flag] == train[flag], flag
            assert train[flag]
    for name in OPTIONS.keys() - {"sampler"}:
        flag = f"--{name.replace('_', '-')}"
        assert tune[flag] == train[flag], flag


def test_tunes_sampler_is_the_searchs_and_trains_is_the_data_samplers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert verb_parser("tune").parse_args(["digits", "--sampler", "random"]).sampler == "random"
    with pytest.raises(SystemExit):
        verb_parser("tune").parse_args(["digits", "--sampler", "balanced"])
    assert "invalid choice: 'balanced'" in capsys.readouterr().err
    assert verb_parser("train").parse_args(["--sampler", "balanced"]).sampler == "balanced"


def test_a_config_option_named_like_a_tune_flag_is_refused_when_the_parser_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(OPTIONS, "trials", ("train", "epochs"))
    with pytest.raises(ValueError) as refused:
        build_parser()
    assert str(refused.value) == (
        "the config option trials (train.epochs) would add --trials to 'imagewise tune', which "
        "declares --trials itself; rename the config option, or skip it in that verb's "
        "add_training_options call"
    )


def test_a_config_option_named_like_a_positional_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(OPTIONS, "data", ("data", "source"))
    with pytest.raises(ValueError, match=r"would add --data to 'imagewise train', which declares"):
        build_parser()


def test_serve_flags_reach_the_servers_connection_and_decoding_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from imagewise.cli import serve as serve_verb

    seen: dict[str, object] = {}
    # the package module (``imagewise.serve`` is the function at the package's root)
    monkeypatch.setattr(sys.modules["imagewise.serve"], "serve", lambda m, **kw: seen.update(kw))
    args = build_parser().parse_args(
        ["serve", "runs/x", "--header-timeout", "2.5", "--max-header-kb", "8",
         "--max-connections", "40", "--keep-alive", "1", "--max-request-megapixels", "3"]
    )  # fmt: skip
    assert serve_verb.run(args) == 0
    assert (seen["header_timeout_s"], seen["max_header_bytes"]) == (2.5, 8 * 1024)
    assert (seen["max_connections"], seen["keep_alive_s"]) == (40, 1.0)
    assert seen["max_request_pixels"] == 3_000_000
    defaults = build_parser().parse_args(["serve", "runs/x"])
    assert serve_verb.run(defaults) == 0 and seen["max_request_pixels"] is None
    assert (seen["header_timeout_s"], seen["max_connections"]) == (10.0, 1000)
