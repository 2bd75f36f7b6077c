"""The base of every settings model: unknown keys are an error (a typo must not be ignored)."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
