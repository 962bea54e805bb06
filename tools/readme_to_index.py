"""Write the documentation site's home page (docs/index.md) from README.md, so that the two never drift:
links into docs/ become links within the site, links to other files of the repository become links
to them on the repository's host. `make docs` runs it before building; docs/index.md is not committed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO_URL = "https://github.com/retinalab/retinalab/blob/main/"
HEADER = "<!-- written by tools/readme_to_index.py from README.md; edit README.md instead -->\n\n"


def convert(text: str) -> str:
    """README.md's markdown as the site's home page."""

    def link(m: re.Match) -> str:
        label, target = m.group(1), m.group(2)
        if re.match(r"^[a-z]+://|^#|^mailto:", target):
            return m.group(0)
        if target.startswith("docs/"):
            return f"[{label}]({target[len('docs/') :]})"
        return f"[{label}]({REPO_URL}{target})"

    return HEADER + re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", link, text)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "docs" / "index.md"
    out.write_text(convert((ROOT / "README.md").read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
