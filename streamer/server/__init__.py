"""The network front end: a websocket for questions, HTTP for health, metrics and streams, and a web page.

It drives the same `Engine` as the replay CLI; nothing here changes how frames are ingested or how
questions are answered. Modules: `config` (the YAML config tree), `protocol` (websocket messages),
`streams` (the streams the server hosts), `session` (one websocket connection), `websocket` (the
`/ws` handler), `metrics` (Prometheus), `app` (the aiohttp application) and `cli` (`streamer serve`
and `streamer ask`).
"""
