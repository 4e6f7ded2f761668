import base64
import json
import re

from tests.conftest import tiny_params


def test_report_is_one_offline_html_file_with_every_section(pipeline_run):
    html = pipeline_run["report"].read_text()
    for heading in (
        "What was measured",
        "Methods at the last PPO checkpoint",
        "Overoptimization",
        "Best-of-n from the initial policy",
        "Reward models on the test split",
        "Is the uncertainty informative?",
        "Sample responses",
        "Stage wall times",
    ):
        assert heading in html
    # plots are inlined PNGs; nothing is fetched from the network
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 2
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert "http://" not in html and "https://" not in html


def test_report_has_a_row_and_a_paired_finding_per_method(pipeline_run):
    html = pipeline_run["report"].read_text()
    for method in tiny_params()["methods"]:
        assert f"<td>{method}</td>" in html
        assert f"<li>{method} vs the initial policy: gold " in html
        assert f"brme vs {method}: gold" in html or method == "brme"
        assert f"Best-of-n picked by {method}&#x27;s reward" in html
    assert "One PPO seed per method" in html and "<li>Power: " in html
    assert "Near-identical objectives: kl_dro" in html and "also the KL reference" in html


def test_report_lists_every_stage_wall_time(pipeline_run):
    html = pipeline_run["report"].read_text()
    for stage in ("prepare", "train_reward", *(f"ppo@{m}-0" for m in tiny_params()["methods"]), "evaluate"):
        assert f"<td>{stage}</td>" in html
    assert json.loads((pipeline_run["metrics"] / "report.json").read_text())["methods"] == len(tiny_params()["methods"])


def test_report_states_for_brme_and_the_ensemble_whether_their_uncertainty_is_informative(pipeline_run):
    html = pipeline_run["report"].read_text()
    assert re.search(r"<li>brme: (its uncertainty is informative|no sign that its uncertainty)", html)
    assert re.search(r"<li>ensemble: (its uncertainty is informative|no sign that its uncertainty)", html)
    assert "bootstrap resample of the training pairs" in html  # what differs between the members is named
