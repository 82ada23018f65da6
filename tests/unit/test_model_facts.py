"""What servers say of their models, as the router's probes read it: Ollama's /api/show, llama.cpp's /v1/models
and /props (shapes as those servers answer them)."""

from __future__ import annotations

from switchyard_gateway.contracts.routing import ModelFacts
from switchyard_gateway.services.router.facts import ollama_facts, openai_facts

# llama-server (llama.cpp) answers, trimmed to what is read
LLAMA_MODELS = {
    "models": [{"name": "/models/x.gguf", "model": "/models/x.gguf", "capabilities": ["completion"]}],
    "object": "list",
    "data": [{"id": "/models/x.gguf", "object": "model", "owned_by": "llamacpp",
              "architecture": {"input_modalities": ["text", "image"], "output_modalities": ["text"]},
              "meta": {"n_ctx_train": 4096, "n_params": 138432}}],
}
LLAMA_PROPS = {"modalities": {"vision": False, "audio": False},
               "chat_template_caps": {"supports_tools": True, "supports_tool_calls": True}}


def test_ollama_show_gives_capabilities_architecture_and_context() -> None:
    show = {"capabilities": ["completion", "tools", "vision", "made-up"],
            "model_info": {"general.architecture": "qwen2", "qwen2.context_length": 32768}}
    assert ollama_facts("qwen2.5", show) == ModelFacts(
        model="qwen2.5", capabilities=("completion", "tools", "vision"), architecture="qwen2", context_length=32768)


def test_an_ollama_that_says_nothing_leaves_the_facts_empty() -> None:
    assert ollama_facts("m", {}) == ModelFacts(model="m")
    assert ollama_facts("m", ["not", "an", "object"]) == ModelFacts(model="m")


def test_llama_cpp_listing_and_props_give_tools_vision_and_context() -> None:
    facts = openai_facts(LLAMA_MODELS, LLAMA_PROPS)
    assert facts == {"/models/x.gguf": ModelFacts(model="/models/x.gguf",
                                                  capabilities=("completion", "tools", "vision"), context_length=4096)}
    assert openai_facts(LLAMA_MODELS)["/models/x.gguf"].capabilities == ("completion", "vision")


def test_vllm_listing_gives_the_context_and_no_capabilities() -> None:
    listing = {"object": "list", "data": [{"id": "meta-llama/Llama-3.1-8B", "owned_by": "vllm",
                                           "max_model_len": 131072}]}
    assert openai_facts(listing) == {"meta-llama/Llama-3.1-8B": ModelFacts(model="meta-llama/Llama-3.1-8B",
                                                                           context_length=131072)}
    assert openai_facts("not json") == {} and openai_facts({"data": [{"no": "id"}]}) == {}
