"""Golden renderings of the tables (``pytest --update-golden`` rewrites them)."""

from __future__ import annotations

from collections.abc import Callable

import models
import torch
from reuse import Reuse
from rich.console import RenderableType
from seed import Model
from tied import TiedLM
from transformer import Transformer

import execorder
from execorder import eager
from execorder.analysis import explain_indices
from execorder.cli.words import CLI
from execorder.output.terminal import draw, plain_text, render_report
from execorder.output.views import ddp_view, report_view


def _text(renderable: RenderableType) -> str:
    return plain_text(renderable, width=100)


def test_seed_tables(golden: Callable[[str, str], None]) -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": True}, target="seed:Model")
    golden("seed.txt", _text(render_report(report)))


def test_tied_and_shared_tables(golden: Callable[[str, str], None]) -> None:
    text = _text(render_report(execorder.trace(TiedLM(), target="tied:TiedLM")))
    assert "embed.weight = lm_head.weight" in text
    golden("tied.txt", text)
    golden("reuse.txt", _text(render_report(execorder.trace(Reuse(), target="reuse:Reuse"))))


def test_liveness_categories(golden: Callable[[str, str], None]) -> None:
    frozen = _text(render_report(execorder.trace(models.Frozen(), target="models:Frozen")))
    assert "frozen" in frozen and "Dead parameters" in frozen
    golden("frozen.txt", frozen)
    external = execorder.trace(models.ExternalUse(), target="models:ExternalUse")
    golden("external.txt", _text(render_report(external)))


def test_ddp_explanation(golden: Callable[[str, str], None]) -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": True}, target="seed:Model")
    golden("ddp_seed.txt", _text(draw(ddp_view(explain_indices(report, (0, 1, 2, 5, 6, 7))))))


def test_large_model_is_cut_with_a_pointer(golden: Callable[[str, str], None]) -> None:
    report = execorder.trace(Transformer(n_layers=6), target="transformer:Transformer")
    # What the command line prints names its flag; render_report, Python's keyword.
    text = _text(draw(report_view(report, depth=2, max_rows=10, words=CLI)))
    assert "36 more calls (--max-rows 0 shows all)" in text
    assert "12 calls nested deeper than 2 hidden" in text
    golden("transformer_cut.txt", text)
    python = _text(render_report(report, depth=2, max_rows=10))
    assert python == text.replace("--max-rows 0", "max_rows=0")


def test_the_summary_says_how_a_use_was_assumed() -> None:
    """FX assumes what an opaque leaf reads; eager saw a gradient reach what no op read."""
    fx = _text(render_report(execorder.trace(models.OpaqueLeaf())))
    scripted = eager.trace(models.TorchScripted(), args=(torch.randn(2, 4),))
    ran = _text(render_report(scripted))
    assert "assumed used (opaque leaves)" in fx and "read unseen" not in fx
    assert "used, read unseen" in ran and "opaque leaves" not in ran
