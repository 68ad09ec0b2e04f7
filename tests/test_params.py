"""The parameter rule engine: what each kind of rule does to a request, which requests a
model refuses, how rule sets merge, and the mistakes a rule set is refused for."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from leapasgi.params import ModelParams, ParamPolicy, ParamRules, merge
from leapasgi.providers.presets import PRESETS, get_preset
from leapasgi.types import ChatCompletionRequest, parse_chat_request

HI = [{"role": "user", "content": "hi"}]


def req(**fields: Any) -> ChatCompletionRequest:
    return parse_chat_request({"model": "m", "messages": HI, **fields})


def wire(request: ChatCompletionRequest) -> dict[str, Any]:
    return request.to_wire()


def rules_for(model: str, *sets: ParamRules) -> ModelParams:
    params = merge(sets, model)
    assert params is not None
    return params


def test_reasoning_models_of_openai_get_max_completion_tokens_and_no_sampling() -> None:
    params = ParamPolicy(get_preset("openai").params).for_model("o3-mini")
    assert params is not None
    request = req(max_tokens=100, temperature=0.2, top_p=0.5, seed=7)
    assert params.refusal(request) is None
    adapted, changed = params.adapt(request)
    assert changed == "renamed max_tokens -> max_completion_tokens, dropped temperature, top_p"
    assert wire(adapted) == {"model": "m", "messages": HI, "max_completion_tokens": 100, "seed": 7}
    # The client's request is never changed.
    assert request.max_tokens == 100
    assert request.temperature == 0.2


def test_other_openai_models_have_no_rules() -> None:
    policy = ParamPolicy(get_preset("openai").params)
    assert policy.for_model("gpt-4o") is None
    assert policy.for_model("gpt-4.1-mini") is None
    assert policy.for_model("gpt-5-mini") is not None


def test_a_request_with_nothing_to_change_is_the_same_object() -> None:
    params = rules_for("o1", *get_preset("openai").params)
    request = req(max_completion_tokens=10)
    assert params.adapt(request) == (request, "")


def test_both_token_limits_keep_max_completion_tokens_whichever_way_they_are_renamed() -> None:
    both = req(max_tokens=100, max_completion_tokens=50)
    to_new = rules_for("m", ParamRules(rename={"max_tokens": "max_completion_tokens"}))
    adapted, changed = to_new.adapt(both)
    assert wire(adapted)["max_completion_tokens"] == 50
    assert "max_tokens" not in wire(adapted)
    assert changed == "dropped max_tokens (max_completion_tokens given)"
    to_old = rules_for("m", ParamRules(rename={"max_completion_tokens": "max_tokens"}))
    adapted, changed = to_old.adapt(both)
    assert wire(adapted)["max_tokens"] == 50
    assert "max_completion_tokens" not in wire(adapted)
    assert changed == "renamed max_completion_tokens -> max_tokens (over max_tokens)"


def test_rename_to_a_name_the_wire_model_does_not_know() -> None:
    params = rules_for("m", ParamRules(rename={"seed": "random_seed"}))
    adapted, changed = params.adapt(req(seed=3))
    assert wire(adapted) == {"model": "m", "messages": HI, "random_seed": 3}
    assert changed == "renamed seed -> random_seed"


def test_defaults_are_set_only_when_absent_and_typed_like_the_field() -> None:
    rules = ParamRules(defaults={"keep_alive": "5m", "temperature": 0.3})
    params = rules_for("m", rules)
    adapted, changed = params.adapt(req())
    assert wire(adapted) == {"model": "m", "messages": HI, "keep_alive": "5m", "temperature": 0.3}
    assert changed == "set keep_alive, temperature"
    adapted, changed = params.adapt(req(keep_alive="1h", temperature=0.9))
    assert changed == ""
    assert wire(adapted)["keep_alive"] == "1h"
    assert adapted.model_dump_json(exclude_unset=True)  # no serialization warning (an error)


def test_clamp_lowers_and_says_from_what() -> None:
    params = rules_for("m", ParamRules(clamp={"temperature": 1}))
    adapted, changed = params.adapt(req(temperature=1.7))
    assert wire(adapted)["temperature"] == 1
    assert changed == "clamped temperature 1.7 -> 1"
    assert params.adapt(req(temperature=0.5))[1] == ""
    tokens = rules_for("m", ParamRules(clamp={"max_tokens": 8192}))
    adapted, changed = tokens.adapt(req(max_tokens=100_000))
    assert adapted.to_wire_json() == (
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":8192}'
    )
    assert changed == "clamped max_tokens 100000 -> 8192"


def test_unsupported_parameters_refuse_unless_the_value_asks_for_nothing() -> None:
    params = rules_for("m", *get_preset("groq").params)
    refusal = params.refusal(req(logprobs=True, top_logprobs=2))
    assert refusal is not None
    assert (refusal.param, refusal.code) == ("logprobs", "unsupported_parameter")
    assert refusal.reason == "does not take logprobs"
    # logprobs=false asks for nothing: dropped, so the provider's 400 never comes.
    quiet = req(logprobs=False)
    assert params.refusal(quiet) is None
    adapted, changed = params.adapt(quiet)
    assert "logprobs" not in wire(adapted)
    assert changed == "dropped logprobs"


def test_max_refuses_above_the_limit_and_passes_at_it() -> None:
    params = rules_for("m", ParamRules(max={"n": 1}))
    refusal = params.refusal(req(n=3))
    assert refusal is not None
    assert (refusal.param, refusal.reason, refusal.code) == (
        "n",
        "takes n up to 1",
        "unsupported_value",
    )
    assert params.refusal(req(n=1)) is None
    assert params.refusal(req()) is None


def test_unsupported_kinds_of_response_format_and_tool_choice() -> None:
    params = rules_for("m", *get_preset("anthropic").params)
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    refusal = params.refusal(req(response_format=schema))
    assert refusal is not None
    assert refusal.reason == "does not take a response_format of type json_schema"
    assert params.refusal(req(response_format={"type": "text"})) is None
    ollama = rules_for("llama3", *get_preset("ollama").params)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    forced = {"type": "function", "function": {"name": "f"}}
    assert ollama.refusal(req(tools=tools, tool_choice="auto")) is None
    assert ollama.refusal(req(tools=tools, tool_choice="required")) is not None
    assert ollama.refusal(req(tools=tools, tool_choice=forced)) is not None
    assert ollama.refusal(req(tools=tools, parallel_tool_calls=False)) is not None
    assert ollama.refusal(req(tools=tools, parallel_tool_calls=True)) is None


def test_later_sets_win_and_allow_lifts_earlier_rules() -> None:
    preset = get_preset("openai").params
    # A newer reasoning model that takes temperature: the preset's drop is lifted for it.
    mine = ParamRules(models=["o9*"], allow=["temperature", "logprobs"])
    params = rules_for("o9-pro", *preset, ParamRules(models=["o9*"], drop=["top_p"]), mine)
    request = req(temperature=0.2, logprobs=True, top_p=0.5)
    assert params.refusal(request) is None
    adapted, changed = params.adapt(request)
    assert changed == "dropped top_p"
    assert wire(adapted)["temperature"] == 0.2
    # Allowing one kind of an unsupported parameter keeps the others refused.
    anthropic = get_preset("anthropic").params
    opened = rules_for("c", *anthropic, ParamRules(allow=["response_format:json_object"]))
    assert opened.refusal(req(response_format={"type": "json_object"})) is None
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert opened.refusal(req(response_format=schema)) is not None


def test_a_policy_merges_once_per_model() -> None:
    policy = ParamPolicy(get_preset("openai").params)
    first = policy.for_model("o3")
    assert first is not None
    assert policy.for_model("o3") is first


def test_every_preset_compiles_for_a_model_it_serves() -> None:
    for preset in PRESETS.values():
        for model in ("any-model", "o3-mini", "deepseek-reasoner"):
            params = ParamPolicy(preset.params).for_model(model)
            assert params is None or params.describe()


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"drop": ["n"]}, "would change what the client gets back"),
        ({"drop": ["logprobs"]}, "list it under unsupported"),
        ({"clamp": {"n": 1}}, "cannot be lowered"),
        ({"max": {"stop": 2}}, "does not hold a number"),
        ({"rename": {"max_tokens": "stop"}}, "hold different kinds of value"),
        ({"rename": {"seed": "seed"}}, "renamed to itself"),
        ({"drop": ["model"]}, "the gateway's own"),
        ({"drop": ["max tokens"]}, "not a parameter name"),
        ({"unsupported": ["response_format:xml"]}, "the kinds of response_format"),
        ({"unsupported": ["seed:big"]}, "take a ':kind'"),
        ({"drop": ["seed"], "unsupported": ["seed"]}, "under both drop and unsupported"),
        ({"defaults": {"temperature": "hot"}}, "not a valid value for temperature"),
        ({"defaults": {"n": 2}}, "would change the answer"),
        ({"models": [""]}, "a pattern cannot be empty"),
        ({"dorp": ["seed"]}, "Extra inputs are not permitted"),
    ],
)
def test_rule_sets_that_cannot_work_are_refused(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ParamRules.model_validate(rules)


def tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def forced(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def test_lm_studio_takes_tool_choice_only_as_a_string() -> None:
    params = ParamPolicy(get_preset("lmstudio").params).for_model("qwen3-4b")
    assert params is not None
    assert "tool_choice as a string" in params.describe()
    # Forced to the only tool given: the same as "required", and sent so.
    sole = req(tools=[tool("f")], tool_choice=forced("f"))
    assert params.refusal(sole) is None
    adapted, changed = params.adapt(sole)
    assert changed == "sent tool_choice as required (the only tool)"
    assert wire(adapted)["tool_choice"] == "required"
    assert wire(adapted)["tools"] == [tool("f")]
    assert wire(sole)["tool_choice"] == forced("f")  # the client's request is unchanged
    # One of several tools: "required" would let the model call another, so it is refused.
    one_of_two = req(tools=[tool("f"), tool("g")], tool_choice=forced("f"))
    refusal = params.refusal(one_of_two)
    assert refusal is not None
    assert refusal.param == "tool_choice"
    assert refusal.code == "unsupported_value"
    # Strings go as they are, at no cost.
    for choice in ("none", "auto", "required"):
        plain = req(tools=[tool("f")], tool_choice=choice)
        assert params.refusal(plain) is None
        assert params.adapt(plain) == (plain, "")


def test_string_tool_choice_is_lifted_by_allow_and_set_by_config() -> None:
    preset = get_preset("lmstudio").params
    assert merge([*preset, ParamRules(allow=("tool_choice",))], "m") is None
    assert merge([*preset, ParamRules(string_tool_choice=False)], "m") is None
    mine = merge([ParamRules(string_tool_choice=True)], "m")
    assert mine is not None
    assert mine.refusal(req(tools=[tool("f"), tool("g")], tool_choice=forced("g"))) is not None
