"""ipywidgets controls shared by notebooks. Each builder runs its callback once on the default values,
so a headless run (papermill, nbval) still exercises the function behind the widget."""

from __future__ import annotations

from typing import Callable

import ipywidgets as W
from IPython.display import display

__all__ = ["prompt_box", "sliders", "valid_hidden_sizes", "width_sizer"]


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


def valid_hidden_sizes(num_attention_heads: int, current: int, lowest: int = 8) -> list[int]:
    """Hidden sizes a Llama-family config accepts with ``num_attention_heads`` heads (transformers requires
    ``hidden_size % num_attention_heads == 0``), from ``lowest`` times the head count up to ``current``."""
    step = num_attention_heads
    return list(range(step * lowest, current + 1, step)) or [current]


def _nearest(options: list[int], value: int) -> int:
    return min(options, key=lambda o: (abs(o - value), -o))


def width_sizer(teacher, importance, blocks, params_of: Callable[[dict], int], perplexity_of: Callable[..., float],
                prune: Callable[..., object], defaults: dict[str, int] | None = None) -> W.VBox:
    """Sliders for a width-pruned student: hidden size (snapped to the sizes the chosen head count allows), MLP
    size, query heads per KV group, KV groups. The parameter count (``params_of(sizes)``) updates live; the
    perplexity (``perplexity_of(model, blocks)``, the teacher's computed once) waits for the button. A combination
    the surgery refuses shows its message instead of raising. Runs both paths once on ``defaults``, so a headless
    run exercises them; the box's ``.result`` holds the last ``(sizes, perplexity)``."""
    c = teacher.config
    H, KV = c.num_attention_heads, c.num_key_value_heads
    slider = dict(continuous_update=False, style={"description_width": "initial"}, layout=W.Layout(width="60%"))
    heads_per_group = W.IntSlider(value=H // KV, min=1, max=H // KV, step=1, description="query_heads_per_group",
                                  **slider)
    kv_groups = W.IntSlider(value=KV, min=1, max=KV, step=1, description="kv_groups", **slider)
    hidden = W.SelectionSlider(options=valid_hidden_sizes(H, c.hidden_size), value=c.hidden_size,
                               description="hidden_size", **slider)
    inter = W.IntSlider(value=c.intermediate_size, min=64, max=c.intermediate_size, step=64,
                        description="intermediate_size", **slider)
    info, out = W.HTML(), W.Output()
    button = W.Button(description="perplexity", button_style="primary")
    teacher_ppl: list[float] = []

    def sizes() -> dict[str, int]:
        return {"hidden_size": hidden.value, "intermediate_size": inter.value,
                "num_attention_heads": kv_groups.value * heads_per_group.value, "num_key_value_heads": kv_groups.value}

    def snap_hidden(_=None) -> None:  # the head count decides which hidden sizes are valid
        options = valid_hidden_sizes(sizes()["num_attention_heads"], c.hidden_size)
        value = _nearest(options, hidden.value)
        hidden.options, hidden.value = options, value

    def show_params(_=None) -> None:
        n = params_of(sizes())
        info.value = f"<b>{n / 1e6:.1f}M parameters</b> ({n / params_of({}):.0%} of the teacher)"

    def show_ppl(_=None) -> None:
        out.clear_output()
        with out:
            try:
                student = prune(teacher, importance, **sizes())
            except (ValueError, TypeError) as err:
                print(f"not a valid student: {err}")
                return
            if not teacher_ppl:
                teacher_ppl.append(perplexity_of(teacher, blocks))
            ppl = perplexity_of(student, blocks)
            box.result = (sizes(), ppl)
            print(f"{sizes()}: perplexity {ppl:.2f} on {len(blocks)} windows (teacher {teacher_ppl[0]:.2f})")

    for s in (heads_per_group, kv_groups):
        s.observe(snap_hidden, names="value")
    for s in (hidden, inter, heads_per_group, kv_groups):
        s.observe(show_params, names="value")
    button.on_click(show_ppl)
    box = W.VBox([heads_per_group, kv_groups, hidden, inter, info, button, out])
    box.result = None
    display(box)
    for name, value in (defaults or {}).items():
        {"hidden_size": hidden, "intermediate_size": inter, "query_heads_per_group": heads_per_group,
         "kv_groups": kv_groups}[name].value = value if name != "hidden_size" else _nearest(hidden.options, value)
    show_params()
    show_ppl()
    return box
