"""Constants of the TGI double: TGI's own defaults, the double's canned texts, integer bounds."""

from __future__ import annotations


DEFAULT_GENERATION_LENGTH = 1024  # validation.rs: max_new_tokens are validated/scheduled in chunks of this

DEFAULT_TOOL_PROMPT = (
    "\nGiven the functions available, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt. Respond in the format {name: function "
    "name, parameters: dictionary of argument name and its value}.Do not use variables.\n"
)

DEFAULT_ANSWER = "Hello from tgi, this is a streamed answer"

DEFAULT_FAILURE = "Server error: CUDA out of memory. Tried to allocate 2.00 GiB"

KEEP_ALIVE = b":\n\n"

U32, U64 = 2**32 - 1, 2**64 - 1
