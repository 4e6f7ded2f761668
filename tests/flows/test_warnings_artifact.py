"""The flow's reward-hacking artifact: the warnings the ppo stages wrote, published and stopped runs."""

import json

from flows.pipeline import warnings_markdown


def test_warnings_markdown_lists_every_runs_warnings(tmp_path):
    assert warnings_markdown(tmp_path) is None
    published = tmp_path / "models" / "policy" / "brme-seed0"
    stopped = tmp_path / ".resume" / "ppo@mean-0" / "policy"
    for folder in (published, stopped):
        folder.mkdir(parents=True)
    (published / "monitor.json").write_text(json.dumps({"fired": {}}))
    warning = {"signal": "kl_growth", "step": 3, "value": 2.5, "threshold": 1.0}
    (stopped / "monitor.json").write_text(json.dumps({"fired": {"kl_growth": warning}}))
    lines = warnings_markdown(tmp_path).splitlines()
    assert lines[-2:] == [
        "| brme-seed0 | none fired | - | - | - |",
        "| ppo@mean-0 (stopped) | kl_growth | 3 | 2.5 | 1 |",
    ]
