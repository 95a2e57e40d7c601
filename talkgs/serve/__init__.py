"""``talkgs serve``: live talking-head sessions and render jobs for many clients, embedded or on Ray Serve.

- ``config``: ``ServeConfig`` (limits, token, queues) and ``RayConfig`` (replicas, multiplexing, batch tasks);
- ``models``: the catalog of servable models (names, never paths) and the loaded-model cache;
- ``session``: one live session, speech chunks in, encoded frames out (``TalkingRenderer.stream``);
- ``app``: the FastAPI app (HTTP + WebSocket routes), the same embedded and on Ray;
- ``server``: running it, embedded (uvicorn) or as a Ray Serve deployment;
- ``batch``: a manifest of render jobs, run locally or as Ray tasks.

docs/serve.md has the protocol, the architecture and the measured capacity.
"""
