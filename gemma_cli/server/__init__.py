"""`gemma serve`: an Ollama- and OpenAI-compatible HTTP API over the engine.

Modules: settings (environment), app (routes, error boundary), ollama_api and
openai_api (the two API families), running/jobs (a generation between the
event loop and a model's worker thread), manager (loading, keep-alive, LRU,
queue), validate (request bodies), security (Host/Origin/body limit, access
log), metrics (Prometheus), models (store views), listen (bind and run).
"""
