"""Front-door protocols other than chat completions, translated to and from the chat core."""
