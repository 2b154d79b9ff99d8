"""``viq bench mllm-speedup --quick`` runs in-process and reports both paths side by side."""

from __future__ import annotations

import json
import math


def test_mllm_speedup_quick(capsys):
    from viq.cli.main import main

    assert main(["bench", "mllm-speedup", "--quick", "--repeats", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    rows = json.loads(line)["rows"]
    assert rows and all(math.isfinite(r["step_speedup"]) and r["step_online_s"] > 0
                        and r["step_stored_s"] > 0 for r in rows)
