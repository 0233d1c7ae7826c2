"""Write the page template that `dvc plots show` and `dvc plots diff` fill (.dvc/config: plots.html_template).

    python tools/dvc_plots_template.py OUT          vega, vega-lite and vega-embed inlined from node_modules/
    python tools/dvc_plots_template.py OUT --cdn    no npm: DVC's own CDN <script> tags, which need internet

The scripts are inlined, not linked, because DVC copies the template into whatever folder `-o` names: a relative
src would break there, and an absolute one would tie the committed setting to this checkout. `make setup` runs this.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

NODE_MODULES = Path(__file__).resolve().parents[1] / "node_modules"
BUILDS = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")

# DVC's default page (dvc_render.html.PAGE_HTML), with the scripts where its `{scripts}` placeholder was. DVC fills
# `{refresh_tag}` and `{plot_divs}`; each plot div calls `vegaEmbed(el, spec)` with no options, so the wrapper below
# makes vega draw SVG rather than canvas: every mark is then an element of the page (the test counts them) and
# stays sharp when zoomed or printed.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    @SCRIPTS@
    <script>
        window.vegaEmbed = (function (embed) {
            return function (el, spec, opt) { return embed(el, spec, Object.assign({renderer: "svg"}, opt)); };
        })(window.vegaEmbed);
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def inline(build: str) -> str:
    code = (NODE_MODULES / build).read_text(encoding="utf8")
    if "</script" in code.lower():  # would end the inline <script> early
        raise SystemExit(f"{build} contains '</script' and cannot be inlined")
    # the .map files stay in node_modules/, so a browser's developer tools would only fail to load them
    code = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", code)
    return f"<script>/* {build} */\n{code}</script>"


def main(out: str, *flags: str) -> None:
    scripts = "{scripts}" if flags == ("--cdn",) else "\n".join(inline(build) for build in BUILDS)
    Path(out).write_text(PAGE.replace("@SCRIPTS@", scripts), encoding="utf8")


if __name__ == "__main__":
    main(*sys.argv[1:])
