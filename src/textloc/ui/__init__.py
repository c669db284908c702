"""A local web app (Gradio) for generating text images, editing their text and generating safely.

``build_app(pipe)`` is the testable core: it takes an already-loaded pipeline (loaded once, at startup, by
``textloc ui``) and returns a ``gr.Blocks``. Every control maps onto the public Python API -- Generate calls the
pipeline (``textloc.apps.safety.pipeline.SafeTextPipeline`` in safe mode), Edit calls
``textloc.apps.edit.edit.edit_text`` and shows its verdict -- so the app adds no behaviour of its own beyond
validation and display.

One concept per module:

* ``app``     -- the page: components, events, ``build_app`` and ``launch``;
* ``actions`` -- what Generate and Edit do (validation, API calls, downloads), without Gradio;
* ``state``   -- the one loaded model (the picker loads another on selection), its lock, OCR, detector;
* ``render``  -- what the page shows: display images, Markdown, plain-language errors.

Gradio is an optional dependency (``pip install "textloc[ui]"``): importing this package does not need it, only
``build_app`` and ``launch`` do, and they fail with a one-line ``InputError`` saying how to install it.
"""

from __future__ import annotations

from textloc.ui.actions import EXAMPLE_PROMPT
from textloc.ui.app import INSTALL_HINT, build_app, launch, require_gradio
from textloc.ui.render import DISPLAY_HEIGHT, display_image

__all__ = ["DISPLAY_HEIGHT", "EXAMPLE_PROMPT", "INSTALL_HINT", "build_app", "display_image", "launch",
           "require_gradio"]
