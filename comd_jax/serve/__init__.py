"""Batched generation (engine), the OpenAI-compatible teacher server, and the client
the distillation loop uses for teacher, judge and augmentor."""
