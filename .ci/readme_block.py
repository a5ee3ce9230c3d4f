"""Print the commands of README.md's code block that follows `<!-- ci: NAME -->`, so CI runs them verbatim."""

import re
import sys
from pathlib import Path

name = sys.argv[1]
text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
match = re.search(rf"<!-- ci: {re.escape(name)} -->\s*```bash\n(.*?)```", text, re.S)
if match is None:
    sys.exit(f"README.md has no code block marked <!-- ci: {name} -->")
print(match.group(1), end="")
