"""`tracehouse config`: every setting, by section, with its value and where the value came from.

The answer to "what is this process going to use?" without reading code: the declarations in
core/settings.py, the values this environment gives them (or the defaults), and whether each came from
the environment, a `_FILE`, a command-line flag or the default. Secrets are masked; a value that does not
parse is shown with its error, and the command then exits 1, so it doubles as a check of a deployment's
environment. Plain text (no `rich`), so it works in the base install.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import TextIO

from tracehouse.core import settings as env

UNSET = "(unset)"


def print_config(
    *, as_json: bool = False, flags: Mapping[str, str | None] | None = None, out: TextIO = sys.stdout
) -> int:
    """Print every setting; 1 when any value does not parse (the errors also go to stderr), else 0."""
    values = env.describe(flags=flags)
    errors = [v.error for v in values if v.error]
    if as_json:
        json.dump([v.to_dict() for v in values], out, indent=2)
        out.write("\n")
    else:
        out.write(render_text(values))
    for error in errors:
        print(f"tracehouse config: {error}", file=sys.stderr)
    return 1 if errors else 0


def render_text(values: list[env.SettingValue]) -> str:
    width_name = max(len(v.setting.name) for v in values)
    shown = [v.value if v.value is not None else UNSET for v in values]
    width_value = min(48, max(len(text) for text in shown))
    lines: list[str] = []
    section = None
    for value, text in zip(values, shown, strict=True):
        if value.setting.section != section:
            section = value.setting.section
            if lines:
                lines.append("")
            lines.append(f"{section}: {env.SECTIONS[section]}")
        where = f"error: {value.error}" if value.error else value.origin
        lines.append(f"  {value.setting.name:<{width_name}}  {text:<{width_value}}  {where}")
    return "\n".join(lines) + "\n"
