"""Front protocols: APIs other than OpenAI's chat completions, served by translating to the chat path."""
