"""Every top-level script is a thin CLI whose --help explains every flag."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["resample.py", "preprocess_flist_config.py", "preprocess_hubert_f0.py", "train.py", "inference_main.py",
           "compress_model.py", "quickstart.py", "train_index.py", "cluster/train_cluster.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_flag(script):
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("usage:")
    # Each option line in argparse's listing must carry some help text after the flag names.
    options = [line for line in text.splitlines() if re.match(r"^\s{2}-", line)]
    assert options, "no options listed"
    lines = text.splitlines()
    for line in options:
        index = lines.index(line)
        flags_and_help = line.strip()
        next_line = lines[index + 1] if index + 1 < len(lines) else ""
        has_inline_help = re.search(r"\S\s{2,}\S", flags_and_help) is not None
        has_wrapped_help = next_line.startswith(" " * 8) and next_line.strip() != ""
        assert has_inline_help or has_wrapped_help, f"{script}: option without help: {flags_and_help}"
