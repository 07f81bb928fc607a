"""Is this stream really streaming? ``sluice probe`` as a library.

    from server.probe.measure import ProbeRequest
    from server.probe.report import summarise, table
    from server.probe.runs import probe_endpoints

    runs = await probe_endpoints([ProbeRequest("http://127.0.0.1:8000/v1", "m")], runs=5)
    print(table(summarise(runs)))

Modules, inside out: `timeline` (one run as the client saw it, and its
numbers), `verdict` (streaming, buffered, cut or error: the rule),
`measure` (one real request, recorded), `runs` (many, interleaved and
concurrent), `report` (summaries, the table, JSON, the progress line),
`plot` (the picture), `cli` (``sluice probe``). The probe needs httpx and
the picture vl-convert: the ``probe`` extra (``pip install 'sluice[probe]'``).
Nothing is imported here, so the ``sluice`` command (whose parser knows
``probe``) runs the gateway without either installed.
"""
