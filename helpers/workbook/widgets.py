"""ipywidgets controls shared by notebooks. Each builder runs its callback once on the default values,
so a headless run (papermill, nbval) still exercises the function behind the widget."""

from __future__ import annotations

from typing import Callable

import ipywidgets as W
from IPython.display import display

__all__ = ["prompt_box", "sliders"]


def prompt_box(respond: Callable[[str], str], default: str, description: str = "Prompt") -> W.VBox:
    """A text box + button; on click, shows ``respond(prompt)``. Shows the default's answer at once."""
    text = W.Textarea(value=default, description=description, layout=W.Layout(width="95%", height="60px"))
    button = W.Button(description="Generate", button_style="primary")
    out = W.Output(layout=W.Layout(border="1px solid #ddd"))

    def run(_=None) -> None:
        out.clear_output()
        with out:
            print(respond(text.value))

    button.on_click(run)
    box = W.VBox([text, button, out])
    display(box)
    run()
    return box


def sliders(
    compute: Callable[..., str], specs: dict[str, tuple[int, int, int, int]], button_label: str | None = None
) -> W.VBox:
    """Integer sliders ``{name: (min, max, step, value)}``; shows ``compute(**values)`` live, or on a
    button click when ``button_label`` is given (for slow computations). Runs once on the defaults."""
    controls = {n: W.IntSlider(min=a, max=b, step=s, value=v, description=n, continuous_update=False,
                               style={"description_width": "initial"}, layout=W.Layout(width="60%"))
                for n, (a, b, s, v) in specs.items()}
    out = W.Output()

    def run(_=None) -> None:
        out.clear_output()
        with out:
            print(compute(**{n: c.value for n, c in controls.items()}))

    items: list[W.Widget] = list(controls.values())
    if button_label:
        button = W.Button(description=button_label, button_style="primary")
        button.on_click(run)
        items.append(button)
    else:
        for c in controls.values():
            c.observe(run, names="value")
    box = W.VBox(items + [out])
    display(box)
    run()
    return box
