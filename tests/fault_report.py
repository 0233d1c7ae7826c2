"""The case table of docs/reliability.md, from a CNNPIPE_FAULT_REPORT file written by the fault suite:

CNNPIPE_FAULT_REPORT=/tmp/faults.jsonl pytest tests/test_faults_*.py
python -m tests.fault_report /tmp/faults.jsonl
"""

import json
import re
import sys
from pathlib import Path

from cnnpipe.console import printable
from cnnpipe.uris import mask_uri


def _cell(text: str) -> str:
    text = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/\s]+/", "", text)  # the test's folder, not a machine's
    return printable(mask_uri(text)).replace("|", "\\|")  # a command as typed may hold a password or an ESC


def table(report: Path) -> str:
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    lines = ["| file | case | command | what the user sees on stderr |", "|---|---|---|---|"]
    for row in rows:
        path, _, case = row["case"].partition("::")
        name = Path(path).stem.removeprefix("test_faults_")
        lines.append(f"| {name} | `{_cell(case)}` | `{_cell(row['command'])}` | {_cell(row['line'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(Path(sys.argv[1])), end="")
