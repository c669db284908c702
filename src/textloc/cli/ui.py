"""``textloc ui``: serve the local web app (``textloc.ui``) for generating, editing and safe generation.

Gradio is optional (``pip install "textloc[ui]"``): its absence is reported in one line before any model loads.
The model is loaded once, here, before the server starts, so the first request in the page is fast.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from textloc.cli.options import ModelOpt, OcrOrNoneOpt, count_option


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    """Add ``ui`` to the CLI."""

    @app.command("ui")
    def ui(
        model: ModelOpt = "embedded",
        host: Annotated[str, typer.Option(help="address to listen on (loopback: only this machine)")] = "127.0.0.1",
        port: Annotated[int, count_option("--port", "port to listen on", high=65535)] = 7860,
        ocr: OcrOrNoneOpt = "rapidocr",
    ) -> None:
        """Start the local web app: generate, edit the rendered text, generate safely (needs the ui extra)."""
        from rich.console import Console

        from textloc.errors import InputError
        from textloc.ui import launch, require_gradio

        require_gradio()  # fail in one line before the (slow) model load
        if not 1 <= port <= 65535:
            raise InputError(f"Expected --port in 1..65535, but got {port}")
        console = Console(stderr=True)
        if not _is_loopback(host):
            console.print(f"[yellow]warning:[/] listening on {host}: other machines on the network can use the app")
        console.print(f"loading {model} …")
        from textloc.models.loading import load_pipeline

        pipe = load_pipeline(model)
        console.print(f"open http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port} (Ctrl+C stops)")
        launch(pipe, model_name=model, host=host, port=port, ocr=None if ocr == "none" else ocr)
