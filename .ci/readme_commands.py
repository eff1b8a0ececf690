"""Print the commands of the README's "Quick start" block, one per line (what CI and users run)."""

import re
import sys
from pathlib import Path

text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
block = re.search(r"^#+\s*quick\s*start.*?$(.*?)^```(?:bash|sh|console|shell)?\s*$(.*?)^```", text, re.I | re.M | re.S)
if not block:
    sys.exit("README.md has no 'Quick start' section with a fenced bash block")
for line in block.group(2).splitlines():
    line = line.strip().removeprefix("$ ").strip()
    if line and not line.startswith("#") and not line.startswith(("git clone", "cd ")):
        print(line)
