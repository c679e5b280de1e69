"""Applications that are clients of a deployed pipeline, kept out of the control plane.

- `openai_http` (with `openai_service`, `openai_embeddings`): the OpenAI-compatible HTTP API.
- `dashboard` (+ `static/`): the live pipeline page served by `serve-http` and `serve`.
- `eval`, `datasets`: accuracy over ImageNet-style folders and GLUE CoLA.

They use the client SDK (pipeedge.client) and read the coordinator's pipeline files and
monitors; nothing in coordinator/ or stage_server/ imports them (only the CLI does).
"""
