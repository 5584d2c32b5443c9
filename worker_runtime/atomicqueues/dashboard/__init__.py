"""`aq dashboard`: a web page over the same Redis (the `dashboard` extra: aiohttp, Jinja2).

A layer above the runtime, like `pools`: the runtime never imports it, and `aq dashboard`
reaches it lazily. Every read goes through the client's read methods (`Client`, `Queues`,
`Presence`, `Locks`); every action through the client's own calls.
"""
