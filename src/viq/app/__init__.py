"""``viq app``: a page to look at an image's codes, its reconstructions and what an LLM answers
from them (docs/design.md C35, docs/app.md).

Application code (docs/design.md D1): `viq.app.models` gathers what a run, the demo's folder,
published weights or a checkpoint give (the model that makes codes, every drawing path, the LLMs
that answer); `viq.app.analysis` does the work for one image with the library's functions and
renders the pictures; `viq.app.page` is the Gradio page (an optional extra: ``pip install -e
'.[app]'``), imported only when the page is built.
"""
