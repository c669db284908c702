"""Text editing: change the text an image renders and keep the rest, by patching only the localized layers.

One concept per module:

* ``edit``     -- ``edit_text`` (the method), ``check_new_text``, quoted-span replacement;
* ``invert`` / ``image_edit`` -- ``edit_image``: edit a real image (inversion, then the patch);
* ``blend``    -- the local blend mask from the localized layers' attention;
* ``start``    -- the default first patched step (preset, the model profile's tuned step, or 8 %);
* ``scoring``  -- what an edit is scored against and with which reader (numbers from ``eval.scoring``);
* ``verdict``  -- did the edit miss? the one-line verdict and what to try (``textloc edit`` exit code 3);
* ``outputs``  -- the all-or-nothing output folder of one edit, and reusing its source (``--source-dir``);
* ``tune``     -- ``tune_start_step`` (``textloc edit-tune``);
* ``pairs``    -- edit-benchmark pairs (a model's own, through its profile, or prompt files);
* ``bench``    -- the benchmark harness (``textloc bench edit``) in a resumable run folder;
* ``summary``  -- its per-method means, table and grid;
* ``calls``    -- pipeline kwargs shared by the runs of one edit.
"""

from __future__ import annotations

from textloc.apps.edit.bench import BenchConfig, parse_methods, run_edit_bench
from textloc.apps.edit.calls import to_pil
from textloc.apps.edit.edit import EditResult, check_new_text, edit_text, quoted_spans, replace_quoted
from textloc.apps.edit.image_edit import ImageEditResult, edit_image
from textloc.apps.edit.pairs import bench_pairs, glyph_bench_pairs, renderable_pairs, sample_pairs
from textloc.apps.edit.scoring import SSIM_KEPT, Scorer
from textloc.apps.edit.start import default_start_step
from textloc.apps.edit.summary import METHODS
from textloc.apps.edit.tune import TuneResult, tune_start_step
from textloc.apps.edit.verdict import MISS_EXIT_CODE, Verdict, verdict_of

__all__ = [
    "BenchConfig", "EditResult", "ImageEditResult", "METHODS", "MISS_EXIT_CODE", "SSIM_KEPT", "Scorer", "TuneResult",
    "Verdict", "bench_pairs", "check_new_text", "default_start_step", "edit_image", "edit_text", "glyph_bench_pairs",
    "parse_methods",
    "quoted_spans", "renderable_pairs", "replace_quoted", "run_edit_bench", "sample_pairs", "to_pil",
    "tune_start_step", "verdict_of",
]
